"""Is a trained spirals latent ODE limited by its encoder or by its dynamics and decoder?

Loads the kept latent ODE of a `hybrid-node spirals` run folder and, on test spirals, compares the
extrapolation RMSE from the encoder's z0 with the RMSE from a z0 fitted per series to the noise-free
spiral (dynamics and decoder frozen). See `hybrid_node.experiments.spirals.inference_gap`.

Run: python examples/spirals_inference_gap.py RUN_FOLDER N [--series 200]
"""

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from hybrid_node.data.spirals import SpiralConfig, make_spirals
from hybrid_node.experiments.spirals import SpiralsSettings, build_model, inference_gap
from hybrid_node.irregular import select
from hybrid_node.training.checkpoint import load_checkpoint

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run", type=Path, help="run folder written by hybrid-node spirals")
parser.add_argument("n", type=int, help="observed points per series of the model to load")
parser.add_argument("--series", type=int, default=200, help="test spirals to score")
args = parser.parse_args()
torch.set_num_threads(1)

stored = json.loads((args.run / "results.json").read_text())["settings"]
stored.setdefault("cell", "rnn")  # runs written before the cell setting used the Elman cell
s = SpiralsSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
state = load_checkpoint(args.run / "checkpoints" / f"latent_ode-n{args.n}.pt", restore_rng=False)
if state is None:
    raise SystemExit(f"no latent ODE checkpoint for n={args.n} in {args.run}")
model = build_model("latent_ode", s)
model.load_state_dict(state["best"]["model"] if state.get("best") else state["model"])
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
