"""Is a trained spirals latent ODE limited by its encoder or by its dynamics and decoder?

Loads the latent ODE that a `hybrid-node spirals` run scored (its chosen restart and kept iterate)
and, on test spirals, compares the extrapolation RMSE from the encoder's z0 with the RMSE from a z0
fitted per series to the noise-free spiral (dynamics and decoder frozen). See
`hybrid_node.experiments.spirals.inference_gap`.

Run: python examples/spirals_inference_gap.py RUN_FOLDER N [--series 200]
"""

import argparse
import dataclasses
from pathlib import Path

import torch

from hybrid_node import HybridNodeError
from hybrid_node.data.spirals import SpiralConfig, make_spirals
from hybrid_node.experiments.spirals import inference_gap, load_kept_model
from hybrid_node.irregular import select


def count(text: str) -> int:
    """A whole number >= 1: --series 0 printed a table of NaN, a negative one failed in torch.arange."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run", type=Path, help="run folder written by hybrid-node spirals")
parser.add_argument("n", type=count, help="observed points per series of the model to load")
parser.add_argument("--series", type=count, default=200, help="test spirals to score")
args = parser.parse_args()
if not (args.run / "results.json").is_file():  # else the message asked for read permission on a missing file
    parser.error(f"{str(args.run)!r} holds no results.json: pass the folder of a finished `hybrid-node spirals` run.")
torch.set_num_threads(1)

try:
    # The restart and iterate the run scored (not always restart 0's best iterate).
    model, s = load_kept_model(args.run, "latent_ode", args.n)
except HybridNodeError as e:  # a missing or damaged run folder: its message, no traceback
    raise SystemExit(str(e)) from None
# The same test spirals and observed points as the run's own scoring (first `--series` of them).
test = make_spirals(SpiralConfig(nspiral=s.ntest), seed=s.seed + 10_000)
batch = test.subsample(args.n, seed=s.seed + 10_000 + args.n)
keep = torch.arange(min(args.series, s.ntest))
test = dataclasses.replace(test, clean=test.clean[keep], extrap=test.extrap[keep])
batch = select(batch, keep)
gap = inference_gap(model, test, batch)
print(f"n={args.n}, {len(keep)} test spirals, RMSE against the noise-free spiral")
print("| z0 from | window | extrapolation |\n| --- | --- | --- |")
print(f"| encoder (posterior mean) | {gap['encoder_window']:.4f} | {gap['encoder']:.4f} |")
print(f"| fitted per series | {gap['fitted_window']:.4f} | {gap['fitted']:.4f} |")
