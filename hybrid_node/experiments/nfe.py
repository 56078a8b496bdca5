"""Figure 3 of Chen et al. (2018): what the tolerance buys and costs in a trained ODE-Net.

Trains a (small) MNIST ODE-Net with the adjoint method, recording forward and backward NFE at every
iteration, then sweeps the tolerance of the trained model and measures, per tolerance:

(a) the numerical error of the ODE block's output against a tight-tolerance solve, vs forward NFE;
(b) the wall time of a forward pass vs forward NFE;
(c) the backward (adjoint) NFE vs the forward NFE;
(d) and, from training, the forward NFE against the epoch.

Reference: Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations",
NeurIPS 2018, Figure 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..data.mnist import load_mnist, to_float
from ..nn.ode_block import SolveSettings
from ..sensitivity.settings import BacksolveAdjoint
from ._args import SettingsError, checked_settings, positive_int, random_seed
from ._output import add_resume_arguments, interruptible, open_run, pyplot, save_figure, write_results
from .mnist import (
    MNISTConfig,
    add_device_argument,
    add_threads_argument,
    build_model,
    ode_block,
    train_model,
    use_threads,
)

HELP = "Figure 3: error and time vs tolerance, backward vs forward NFE, NFE during training (MNIST ODE-Net)."
TOLERANCES = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)


def tolerance_sweep(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    tolerances: Sequence[float],
    *,
    reference_tol: float = 1e-7,
    repeats: int = 3,
) -> list[dict[str, float]]:
    """Measure NFE, error, forward time and adjoint backward NFE of the trained model per tolerance.

    Args:
        model: a trained ODE-Net from :func:`hybrid_node.experiments.mnist.build_model`.
        x, y: one batch of images and labels.
        tolerances: rtol = atol values to sweep.
        reference_tol: tolerance of the reference solve the error is measured against.
        repeats: forward passes timed per tolerance (the median is reported).

    Returns:
        One dict per tolerance.

    Raises:
        ValueError: if the model has no ODEBlock.
    """
    block = ode_block(model)
    if block is None:
        raise ValueError("tolerance_sweep needs an ODE-Net: the model has no ODEBlock.")
    stem_end = list(model).index(block)
    stem, head = nn.Sequential(*list(model)[:stem_end]), nn.Sequential(*list(model)[stem_end + 1 :])
    old_train, old_eval = block.train_settings, block.eval_settings
    model.eval()
    try:
        with torch.no_grad():
            h0 = stem(x)
            block.eval_settings = SolveSettings("dopri5", reference_tol, reference_tol)
            reference = block(h0)
        rows = []
        for tol in tolerances:
            block.eval_settings = SolveSettings("dopri5", tol, tol)
            times = []
            with torch.no_grad():
                for _ in range(repeats):
                    start = time.perf_counter()
                    out = block(h0)
                    times.append(time.perf_counter() - start)
                nfe_forward = block.nfe_forward
                error = float((out - reference).abs().max())
                wrong = int((head(out).argmax(1) != y).sum())
            # Backward pass with the adjoint at the same tolerance (training mode selects train_settings).
            block.train_settings = SolveSettings("dopri5", tol, tol, sensitivity=BacksolveAdjoint())
            block.train()
            h = h0.detach().requires_grad_(True)
            nn.functional.cross_entropy(head(block(h)), y).backward()
            block.eval()
            rows.append(
                {
                    "tolerance": tol,
                    "NFE forward": nfe_forward,
                    "NFE backward": block.nfe_backward,
                    "max abs error": error,
                    "forward time (ms)": 1e3 * sorted(times)[len(times) // 2],
                    "test error (%)": 100.0 * wrong / len(y),
                }
            )
        return rows
    finally:
        block.train_settings, block.eval_settings = old_train, old_eval
        model.zero_grad(set_to_none=True)


def checkpoint_path(folder: Path) -> Path:
    """The checkpoint of the ODE-Net's training: ``folder/checkpoints/odenet.pt``."""
    return folder / "checkpoints" / "odenet.pt"


def _plots(folder, rows, hist) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    nf = [r["NFE forward"] for r in rows]
    axes[0].loglog(nf, [max(r["max abs error"], 1e-12) for r in rows], "o-")
    axes[0].set_xlabel("NFE forward"), axes[0].set_ylabel("numerical error"), axes[0].set_title("(a) error vs NFE")
    axes[1].plot(nf, [r["forward time (ms)"] for r in rows], "o-")
    axes[1].set_xlabel("NFE forward"), axes[1].set_ylabel("forward time (ms)"), axes[1].set_title("(b) time vs NFE")
    axes[2].plot(nf, [r["NFE backward"] for r in rows], "o-", label="measured")
    top = max(nf + [1])
    axes[2].plot([0, top], [0, 0.5 * top], "k--", lw=0.8, label="backward = forward / 2")
    axes[2].plot([0, top], [0, top], "k:", lw=0.8, label="backward = forward")
    axes[2].set_xlabel("NFE forward"), axes[2].set_ylabel("NFE backward"), axes[2].legend()
    axes[2].set_title("(c) backward vs forward NFE")
    axes[3].plot(hist["epoch"], hist["nfe_forward"], lw=0.8)
    axes[3].set_xlabel("epoch"), axes[3].set_ylabel("NFE forward"), axes[3].set_title("(d) NFE during training")
    save_figure(fig, folder / "nfe_figure3.png", dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="16 channels, 300 iterations of batch 64 on 19.2k images")
    parser.add_argument("--data-root", default=None, help="folder with the MNIST IDX files (else the offline copy)")
    parser.add_argument("--out", default=None, help="run folder (default runs/nfe-<timestamp>)")
    parser.add_argument("--channels", type=positive_int, default=None)
    parser.add_argument("--epochs", type=positive_int, default=None)
    parser.add_argument("--iters", type=positive_int, default=None, help="training iterations")
    parser.add_argument("--train-subset", type=positive_int, default=None)
    parser.add_argument("--eval-batch", type=positive_int, default=256, help="images used in the tolerance sweep")
    parser.add_argument("--tolerances", default=",".join(f"{t:g}" for t in TOLERANCES))
    parser.add_argument("--seed", type=random_seed, default=0)
    add_device_argument(parser)
    add_resume_arguments(parser, MNISTConfig.checkpoint_every)
    add_threads_argument(parser)


@interruptible("nfe")
def run(args: argparse.Namespace) -> int:
    use_threads(args)
    try:
        tolerances = [float(v) for v in args.tolerances.split(",") if v.strip()]
    except ValueError:
        raise SettingsError(f"--tolerances must be comma-separated numbers, got {args.tolerances!r}.") from None
    if not tolerances or not all(math.isfinite(t) and t > 0 for t in tolerances):
        raise SettingsError(f"--tolerances must be finite numbers > 0, got {args.tolerances!r}.")
    values = {
        "models": ("odenet",),
        "channels": 32,
        "epochs": 10,
        "optimizer": "adam",
        "lr": 3e-3,
        "lr_milestones": (),
        "augment": False,
        "seed": args.seed,
        "device": args.device,
        "checkpoint_every": args.checkpoint_every,
    }
    if args.quick:
        values.update(channels=16, epochs=1, batch_size=64, lr=5e-3, iters=300, train_subset=19200)
    for name in ("channels", "epochs", "iters", "train_subset"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    with checked_settings():
        cfg = MNISTConfig(**values)
    folder = open_run(args.out, "nfe", args.resume, run_kind="an nfe run")
    torch.manual_seed(cfg.seed)
    train, test = load_mnist(args.data_root, train=True), load_mnist(args.data_root, train=False)
    xtr, ytr = to_float(train.images), train.labels
    if cfg.train_subset is not None:
        xtr, ytr = xtr[: cfg.train_subset], ytr[: cfg.train_subset]
    model = build_model("odenet", cfg.channels, tol=cfg.tol, adjoint=True).to(cfg.device)
    # Training is checkpointed and resumes exactly (see mnist.train_model); the tolerance sweep after it is
    # a measurement of seconds, done again by a resumed run.
    hist = train_model(
        model, xtr, ytr, cfg, desc="odenet", checkpoint=checkpoint_path(folder), resume=args.resume, command="nfe"
    )
    train_time = hist["seconds"][0]  # over every invocation of a resumed run
    xte = to_float(test.images[: args.eval_batch]).to(cfg.device)
    rows = tolerance_sweep(model, xte, test.labels[: args.eval_batch].to(cfg.device), tolerances)
    columns = ["tolerance", "NFE forward", "NFE backward", "max abs error", "forward time (ms)", "test error (%)"]
    n = max(1, len(hist["nfe_forward"]) // 10)
    meta = {
        "data": train.source,
        "config": dataclasses.asdict(cfg),
        "train time (s)": round(train_time, 1),
        "NFE forward, first 10% of training": round(sum(hist["nfe_forward"][:n]) / n, 1),
        "NFE forward, last 10% of training": round(sum(hist["nfe_forward"][-n:]) / n, 1),
        "NFE backward / forward over training": round(sum(hist["nfe_backward"]) / max(1, sum(hist["nfe_forward"])), 2),
        "error reference": "dopri5 at rtol = atol = 1e-7 on the same batch",
        "command": "nfe",  # what `--resume` of another command is refused by (see _output.open_run)
    }
    table = write_results(folder, "results", rows, columns, meta)
    _plots(folder, rows, hist)
    print(table)
    for key in list(meta)[3:6]:
        print(f"{key}: {meta[key]}")
    print(f"\nresults and figure in {folder}")
    return 0
