"""Density estimation on toy 2-D data with continuous normalizing flows.

Trains a CNF by maximum likelihood on fresh samples of a toy density each iteration (FFJORD's toy
protocol, Grathwohl et al. 2019, Section 5.1: MLP 64-64-64, dopri5 with rtol = atol = 1e-5, Adam with
lr 1e-3 and weight decay 1e-5, batch 100, 10,000 iterations; ``--quick`` is a small CPU budget).
Reports the test negative log-likelihood (exact trace) and the number of function evaluations (NFE).

- ``--model planar`` uses the gated planar CNF with M hidden units of Chen et al. 2018 (Section 4.1).
- ``--compare-nf`` also trains a discrete planar normalizing flow with K layers (Rezende & Mohamed
  2015), the baseline of Chen et al.'s comparison (K defaults to M).
- ``--regularize`` also trains the same CNF with RNODE's kinetic-energy and Jacobian-Frobenius
  penalties (Finlay et al. 2020) and shows their effect on NFE and training time.
- ``--method`` picks the ODE method: an adaptive one steps by ``--tol``; a fixed-step one (rk4,
  euler, ...) needs ``--step-size``, the step in each block's solver time s in [0, 1].

Writes into the run folder: ``results.md``/``results.json``, ``density.png`` (data and learned
densities), ``samples.png``, ``flow_evolution.png`` (samples moving from the base to the data) and
``training.png`` (loss and NFE per iteration).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .._registry import build_solver
from ..controllers import ConstantStepSize
from ..data.toy2d import TOY2D_NAMES, sample_toy2d
from ..nn.cnf import CNF, CNFBlock, CNFSolver, ExactTrace, HutchinsonTrace, RNODERegularization
from ..nn.cnf_fields import PlanarCNFField, TimeMLPField
from ..nn.planar_flow import PlanarFlow
from ..solvers.symplectic import PartitionedComposition
from ._args import (
    check_backprop,
    checked_settings,
    method_name,
    nonnegative_float,
    positive_float,
    positive_int,
    random_seed,
)
from ._output import (
    Checkpoints,
    add_resume_arguments,
    interruptible,
    open_run,
    pyplot,
    resume_loop,
    resume_settings,
    save_figure,
    write_results,
)
from ._progress import progress_bar

HELP = "Continuous normalizing flows on toy 2-D densities (test NLL, NFE; --compare-nf, --regularize)."
_LIMIT = 4.5  # half-width of the plotted square; the toy data lie in about [-4, 4]^2


@dataclasses.dataclass(frozen=True)
class CNFExperimentConfig:
    """Settings of one run (defaults: FFJORD's toy architecture on a CPU-sized budget)."""

    data: str = "two_moons"
    model: str = "mlp"  #: "mlp" (FFJORD) or "planar" (Chen et al.)
    hidden: Sequence[int] = (64, 64, 64)
    width: int = 64  #: hidden units M of the planar CNF
    blocks: int = 1
    iters: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    trace: str = "exact"  #: training trace: "exact" or "hutchinson" (the test NLL always uses the exact one)
    noise: str = "rademacher"
    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    #: step of a fixed-step method (rk4, euler, ...) in each block's solver time s in [0, 1]; None for adaptive
    step_size: float | None = None
    adjoint: bool = False
    compare_nf: bool = False
    nf_layers: int | None = None  #: K of the planar NF; default M (= width)
    nf_lr: float = 1e-2
    regularize: bool = False
    kinetic_weight: float = 0.01
    jacobian_weight: float = 0.01
    n_test: int = 2000
    grid: int = 100
    seed: int = 0
    checkpoint_every: int = 100  #: training iterations between checkpoints (with a run folder)

    def __post_init__(self):
        if self.data not in TOY2D_NAMES:
            raise ValueError(f"Unknown data {self.data!r}; choose one of {', '.join(TOY2D_NAMES)}.")
        if self.model not in ("mlp", "planar"):
            raise ValueError(f"model must be 'mlp' or 'planar', got {self.model!r}.")
        if self.trace not in ("exact", "hutchinson"):
            raise ValueError(f"trace must be 'exact' or 'hutchinson', got {self.trace!r}.")
        for name in ("width", "blocks", "iters", "batch_size", "n_test", "grid", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {tuple(self.hidden)}.")
        cnf_solver(self)  # a method the CNF cannot run is refused before anything is trained


def cnf_solver(cfg: CNFExperimentConfig) -> CNFSolver:
    """The :class:`CNFSolver` of ``cfg``: ``step_size`` for a fixed-step method, the Jacobian by
    loops for the implicit ones (the CNF's dynamics call torch.autograd, which torch.func cannot vectorise).

    Args:
        cfg: the run's settings.

    Returns:
        The solver settings of every block.

    Raises:
        ValueError: a fixed-step method without ``step_size``, ``step_size`` with an adaptive method
            (it chooses its own steps by the tolerance), ``scipy_solver`` without ``adjoint``, or a
            method a CNF cannot use.
        BackendError: a method of the Julia backend only (the CNF runs on the torch backend).
    """
    solver, controller, _ = build_solver(cfg.method, {}, cfg.rtol, cfg.atol)
    if isinstance(solver, PartitionedComposition):  # refused whatever the step: not "give --step-size" first
        CNFSolver(method=cfg.method, options={"step_size": 1.0})
    check_backprop(cfg.method, solver, cfg.adjoint)
    fixed = isinstance(controller, ConstantStepSize)
    if fixed and cfg.step_size is None:
        raise ValueError(
            f"--method {cfg.method} takes fixed steps: give --step-size, the step in each block's solver time "
            "s in [0, 1] (e.g. 0.05 for 20 steps per block), or use an adaptive method such as dopri5."
        )
    if not fixed and cfg.step_size is not None:
        raise ValueError(
            f"--step-size is for fixed-step methods (rk4, euler, ...); --method {cfg.method} chooses its own "
            "steps by the tolerance (--tol): leave --step-size out."
        )
    if cfg.step_size is not None and not (math.isfinite(cfg.step_size) and 0 < cfg.step_size <= 1):
        raise ValueError(f"step_size must be in (0, 1] (each block's solver time is [0, 1]), got {cfg.step_size}.")
    options: dict[str, Any] = {"step_size": cfg.step_size} if fixed else {}
    # fixed steps measure no error: CNFSolver refuses tolerances there, so the run's own are left out
    solver = CNFSolver(method=cfg.method, options=options or None, adjoint=cfg.adjoint)
    return solver if fixed else dataclasses.replace(solver, rtol=cfg.rtol, atol=cfg.atol)


def build_cnf(cfg: CNFExperimentConfig, regularization: RNODERegularization | None = None) -> CNF:
    """The CNF of ``cfg`` (float32, fresh parameters); ``regularization`` defaults to none."""
    regularization = RNODERegularization() if regularization is None else regularization
    fields: list[nn.Module]
    if cfg.model == "planar":
        fields = [PlanarCNFField(2, cfg.width) for _ in range(cfg.blocks)]
    else:
        fields = [TimeMLPField(2, tuple(cfg.hidden)) for _ in range(cfg.blocks)]
    trace = ExactTrace() if cfg.trace == "exact" else HutchinsonTrace(cfg.noise)
    return CNF(fields, dim=2, trace=trace, solver=cnf_solver(cfg), regularization=regularization)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


#: Settings a resumed run may change: how often it checkpoints, and the evaluation after training (the
#: test set's size and the plotted grid). Every other setting shapes the trained weights.
RESUMABLE_SETTINGS = frozenset({"checkpoint_every", "n_test", "grid"})
#: The option that sets a field, where it is not ``--`` plus the field's name.
_OPTIONS = {
    "rtol": "--tol (--quick)",
    "atol": "--tol (--quick)",
    "iters": "--iters (--quick)",
    "hidden": "--hidden (--quick)",
    "width": "--width (--quick)",
    "lr": "--lr (--quick)",
}


def checkpoints(cfg: CNFExperimentConfig, folder: Path | None, resume: bool = False) -> Checkpoints:
    """How the trainings of ``cfg`` checkpoint into ``folder`` (None: not at all) and resume.

    Args:
        cfg: the run's settings.
        folder: the run folder.
        resume: continue from the checkpoints in ``folder``.

    Returns:
        The :class:`~hybrid_node.experiments._output.Checkpoints` of the run.
    """
    settings = resume_settings(cfg, RESUMABLE_SETTINGS)
    if cfg.step_size is None:  # an adaptive run stores no step_size: checkpoints written without the setting match
        del settings["step_size"]
    return Checkpoints(
        folder,
        "cnf",
        settings,
        RESUMABLE_SETTINGS,
        cfg.checkpoint_every,
        resume,
        _OPTIONS,
    )


def _fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    cfg: CNFExperimentConfig,
    label: str,
    step: Callable[[torch.Tensor], dict[str, float]],
    hist: dict[str, list[float]],
    ckpts: Checkpoints | None,
    job: str,
) -> dict[str, list[float]]:
    """The training loop of every model: a fresh batch of the data stream per iteration, checkpointed.

    Args:
        model: the model (its weights are checkpointed).
        opt: its optimizer.
        cfg: the settings (data, batch size, iterations, seed of the data stream).
        label: progress bar label.
        step: computes the loss of a batch and calls ``backward``; returns the values to record.
        hist: the history to append to (``seconds`` and the keys ``step`` returns).
        ckpts: where to checkpoint and whether to resume (None: no checkpoints).
        job: the checkpoint's name.

    Returns:
        The history (a resumed run's includes the iterations of earlier invocations).
    """
    rng = np.random.default_rng(cfg.seed)  # the data stream: its state is checkpointed with the weights
    objects = {"model": model, "optimizer": opt, "data": rng}
    ckpt, done, hist, _ = resume_loop(ckpts, job, objects, hist)
    bar = progress_bar(range(done + 1, cfg.iters + 1), desc=label, leave=False)
    for it in bar:
        x = torch.from_numpy(sample_toy2d(cfg.data, cfg.batch_size, rng=rng))
        start = time.perf_counter()
        opt.zero_grad()
        record = step(x)
        opt.step()
        hist["seconds"].append(time.perf_counter() - start)
        for key, value in record.items():
            hist[key].append(value)
        bar.set_postfix({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in record.items() if k != "loss"})
        if ckpts is not None and ckpts.due(ckpt, it, cfg.iters):
            ckpts.save(ckpt, it, cfg.iters, objects, history=hist)
    return hist


def train_cnf(
    model: CNF, cfg: CNFExperimentConfig, label: str, ckpts: Checkpoints | None = None, job: str = "cnf"
) -> dict[str, list[float]]:
    """Maximum-likelihood training; returns per-iteration loss, NLL, forward NFE and wall time.

    Args:
        model: the CNF.
        cfg: the settings.
        label: progress bar label.
        ckpts: where to checkpoint the training state and whether to resume (None: no checkpoints).
        job: the checkpoint's name (``checkpoints/<job>.pt``).

    Returns:
        The history: ``loss``, ``nll``, ``nfe`` and ``seconds`` per iteration.

    Raises:
        CheckpointError, ResumeError: resuming from a damaged checkpoint, or one of other settings.
    """
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step(x: torch.Tensor) -> dict[str, float]:
        loss, res = model.loss(x)
        loss.backward()
        return {"loss": loss.item(), "nll": -res.log_prob.mean().item(), "nfe": res.nfe}

    return _fit(model, opt, cfg, label, step, {"loss": [], "nll": [], "nfe": [], "seconds": []}, ckpts, job)


def train_planar_nf(
    model: PlanarFlow, cfg: CNFExperimentConfig, ckpts: Checkpoints | None = None, job: str = "planar-nf"
) -> dict[str, list[float]]:
    """Maximum-likelihood training of the discrete planar flow on the same data stream.

    Args:
        model: the planar flow.
        cfg: the settings.
        ckpts: where to checkpoint the training state and whether to resume (None: no checkpoints).
        job: the checkpoint's name (``checkpoints/<job>.pt``).

    Returns:
        The history: ``loss``, ``nll`` and ``seconds`` per iteration.

    Raises:
        CheckpointError, ResumeError: resuming from a damaged checkpoint, or one of other settings.
    """
    opt = torch.optim.Adam(model.parameters(), lr=cfg.nf_lr)

    def step(x: torch.Tensor) -> dict[str, float]:
        loss = -model.log_prob(x).mean()
        loss.backward()
        return {"loss": loss.item(), "nll": loss.item()}

    return _fit(model, opt, cfg, "planar NF", step, {"loss": [], "nll": [], "seconds": []}, ckpts, job)


def _test_data(cfg: CNFExperimentConfig) -> torch.Tensor:
    # A seed disjoint from the training stream's.
    return torch.from_numpy(sample_toy2d(cfg.data, cfg.n_test, seed=cfg.seed + 10_000))


def _grid(cfg: CNFExperimentConfig):
    axis = torch.linspace(-_LIMIT, _LIMIT, cfg.grid)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    return xx, yy, torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


@torch.no_grad()
def _log_density_on(log_prob, points: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    return torch.cat([log_prob(points[i : i + chunk]) for i in range(0, len(points), chunk)])


def _mean_tail(values: Sequence[float]) -> float:
    tail = values[-max(1, len(values) // 10) :]
    return float(sum(tail) / len(tail))


def evaluate_cnf(model: CNF, cfg: CNFExperimentConfig, hist, name: str) -> dict:
    x = _test_data(cfg)
    with torch.no_grad():
        # The test NLL and NFE are those of the density solve alone (``log_prob``, RNODE's test-time
        # solve): the regularised solve also controls the error of the two integrals, which can take
        # more steps than the log-density needs. The integrals come from a solve of their own.
        density = model.to_base(x, trace=ExactTrace(), regularize=False)
        res = model.to_base(x, trace=ExactTrace(), regularize=True)
    assert res.kinetic is not None and res.jacobian is not None  # regularize=True integrates both
    return {
        "model": name,
        "params": _n_params(model),
        "test NLL": -density.log_prob.mean().item(),
        "train NFE": _mean_tail(hist["nfe"]),
        "test NFE": density.nfe,
        "kinetic": res.kinetic.mean().item(),
        "jacobian": res.jacobian.mean().item(),
        "T": ", ".join(f"{cast(CNFBlock, b).end_time.item():.3g}" for b in model.blocks),
        "train s": sum(hist["seconds"]),
        "ms/iter": 1000 * _mean_tail(hist["seconds"]),
    }


def evaluate_nf(model: PlanarFlow, cfg: CNFExperimentConfig, hist) -> dict:
    x = _test_data(cfg)
    with torch.no_grad():
        nll = -model.log_prob(x).mean().item()
    return {
        "model": f"planar NF, K={model.n_layers}",
        "params": _n_params(model),
        "test NLL": nll,
        "train NFE": "-",
        "test NFE": "-",
        "kinetic": "-",
        "jacobian": "-",
        "T": "-",
        "train s": sum(hist["seconds"]),
        "ms/iter": 1000 * _mean_tail(hist["seconds"]),
    }


def _plot_density(plt, folder, cfg, entries):
    xx, yy, pts = _grid(cfg)
    data = sample_toy2d(cfg.data, 20_000, seed=cfg.seed + 20_000)
    fig, axes = plt.subplots(1, 1 + len(entries), figsize=(3.2 * (1 + len(entries)), 3.3))
    axes = np.atleast_1d(axes)
    axes[0].hist2d(data[:, 0], data[:, 1], bins=cfg.grid, range=[[-_LIMIT, _LIMIT]] * 2, cmap="viridis")
    axes[0].set_title(f"data: {cfg.data}")
    for ax, (title, log_prob) in zip(axes[1:], entries):
        dens = _log_density_on(log_prob, pts).exp().reshape(xx.shape)
        ax.pcolormesh(xx.numpy(), yy.numpy(), dens.numpy(), cmap="viridis", shading="auto")
        ax.set_title(title)
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, folder / "density.png", dpi=110)


def _plot_samples(plt, folder, cfg, entries):
    fig, axes = plt.subplots(1, len(entries), figsize=(3.2 * len(entries), 3.3))
    axes = np.atleast_1d(axes)
    for ax, (title, pts) in zip(axes, entries):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
        ax.set_xlim(-_LIMIT, _LIMIT)
        ax.set_ylim(-_LIMIT, _LIMIT)
        ax.set_aspect("equal")
        ax.set_title(title)
    save_figure(fig, folder / "samples.png", dpi=110)


def _plot_evolution(plt, folder, model: CNF, n_panels: int = 6):
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(2000, 2, generator=gen) * model.base_std
    with torch.no_grad():
        path = model.from_base(z, n_times=n_panels).path
    assert path is not None  # n_times asks for the path
    idx = np.linspace(0, len(path) - 1, n_panels).round().astype(int)
    fig, axes = plt.subplots(1, n_panels, figsize=(2.4 * n_panels, 2.6))
    colour = torch.atan2(z[:, 1], z[:, 0]).numpy()  # colour by the base angle to show how points move
    for ax, i in zip(axes, idx):
        pts = path[i].numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=1, c=colour, cmap="hsv")
        ax.set_xlim(-_LIMIT, _LIMIT)
        ax.set_ylim(-_LIMIT, _LIMIT)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"s = {i / (len(path) - 1):.2f}")
    fig.suptitle("CNF samples from base (left) to data (right)")
    save_figure(fig, folder / "flow_evolution.png", dpi=110)


def _plot_training(plt, folder, histories):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, hist in histories.items():
        ax1.plot(hist["nll"], label=name)
        if "nfe" in hist:
            ax2.plot(hist["nfe"], label=name)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("training NLL")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("forward NFE")
    ax1.legend()
    ax2.legend()
    save_figure(fig, folder / "training.png", dpi=110)


def run_experiment(cfg: CNFExperimentConfig, folder: Path, resume: bool = False) -> list[dict]:
    """Train the requested models, write tables and plots into ``folder``, return the result rows.

    Args:
        cfg: the settings.
        folder: the run folder; each model's training state is checkpointed to
            ``folder/checkpoints/<model>.pt`` every ``cfg.checkpoint_every`` iterations and at its end.
        resume: continue the run in ``folder``: finished models are not trained again, the interrupted
            one continues from its checkpoint to the same weights as a run that was not interrupted.

    Returns:
        One result row per model.

    Raises:
        CheckpointError: with ``resume``, a checkpoint is damaged (the message names it).
        ResumeError: with ``resume``, the run in ``folder`` was started with settings that shape the
            trained weights differently (the message names them).
    """
    ckpts = checkpoints(cfg, folder, resume)
    ckpts.check_stored()  # before anything is trained: a run of other settings is refused
    torch.manual_seed(cfg.seed)
    rows: list[dict] = []
    histories: dict[str, dict] = {}
    densities: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = []
    samples: list[tuple[str, np.ndarray]] = []
    name = f"CNF ({f'planar, M={cfg.width}' if cfg.model == 'planar' else 'MLP'})"

    def add_cnf(label: str, cnf: CNF, job: str) -> None:
        histories[label] = train_cnf(cnf, cfg, label, ckpts, job)
        rows.append(evaluate_cnf(cnf, cfg, histories[label], label))
        densities.append((label, functools.partial(cnf.log_prob, trace=ExactTrace())))
        with torch.no_grad():
            samples.append((label, cnf.sample(2000, generator=torch.Generator().manual_seed(2))[0].numpy()))

    cnf = build_cnf(cfg)
    add_cnf(name, cnf, "cnf")
    if cfg.regularize:
        torch.manual_seed(cfg.seed)
        reg = RNODERegularization(kinetic=cfg.kinetic_weight, jacobian=cfg.jacobian_weight)
        add_cnf(f"{name} + RNODE", build_cnf(cfg, reg), "cnf-rnode")

    if cfg.compare_nf:
        torch.manual_seed(cfg.seed)
        nf = PlanarFlow(2, cfg.nf_layers or cfg.width)
        hist = train_planar_nf(nf, cfg, ckpts)
        histories[f"planar NF, K={nf.n_layers}"] = hist
        rows.append(evaluate_nf(nf, cfg, hist))
        densities.append((f"planar NF, K={nf.n_layers}", nf.log_prob))
        with torch.no_grad():
            samples.append(
                (f"planar NF, K={nf.n_layers}", nf.sample(2000, generator=torch.Generator().manual_seed(2)).numpy())
            )

    plt = pyplot()
    _plot_density(plt, folder, cfg, densities)
    _plot_samples(plt, folder, cfg, samples)
    _plot_evolution(plt, folder, cnf)
    _plot_training(plt, folder, histories)
    return rows


COLUMNS = ("model", "params", "test NLL", "train NFE", "test NFE", "kinetic", "jacobian", "T", "train s", "ms/iter")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = CNFExperimentConfig()
    parser.add_argument("--data", default=d.data, choices=TOY2D_NAMES, help="toy density")
    parser.add_argument("--model", default=d.model, choices=("mlp", "planar"), help="CNF vector field")
    parser.add_argument("--hidden", default=None, help="MLP widths (default 64,64,64; --quick 32,32)")
    parser.add_argument(
        "--width", type=positive_int, default=None, help=f"hidden units M of the planar CNF (default {d.width})"
    )
    parser.add_argument("--blocks", type=positive_int, default=d.blocks, help="stacked CNF blocks")
    parser.add_argument("--iters", type=positive_int, default=None, help=f"training iterations (default {d.iters})")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    parser.add_argument("--lr", type=positive_float, default=None, help=f"Adam learning rate (default {d.lr})")
    parser.add_argument("--trace", default=d.trace, choices=("exact", "hutchinson"), help="training trace")
    parser.add_argument("--noise", default=d.noise, choices=("rademacher", "gaussian"), help="Hutchinson noise")
    parser.add_argument(
        "--method", type=method_name, default=d.method, help=f"ODE method (default {d.method}; fixed-step: --step-size)"
    )
    parser.add_argument(
        "--step-size",
        type=positive_float,
        default=None,
        help="step of a fixed-step --method (rk4, euler, ...) in each block's solver time s in [0, 1], e.g. 0.05 "
        "for 20 steps per block; refused for adaptive methods",
    )
    parser.add_argument("--tol", type=positive_float, default=None, help="rtol = atol (default 1e-5)")
    parser.add_argument("--adjoint", action="store_true", help="adjoint gradients (O(1) memory)")
    parser.add_argument("--compare-nf", action="store_true", help="also train a planar NF with K layers")
    parser.add_argument("--nf-layers", type=positive_int, default=None, help="K of the planar NF (default: --width)")
    parser.add_argument("--regularize", action="store_true", help="also train with RNODE regularisers")
    parser.add_argument("--kinetic-weight", type=nonnegative_float, default=d.kinetic_weight)
    parser.add_argument("--jacobian-weight", type=nonnegative_float, default=d.jacobian_weight)
    parser.add_argument("--n-test", type=positive_int, default=None, help=f"test points (default {d.n_test})")
    parser.add_argument("--grid", type=positive_int, default=None, help=f"density grid per side (default {d.grid})")
    parser.add_argument("--seed", type=random_seed, default=d.seed)
    parser.add_argument("--quick", action="store_true", help="small models and budget (minutes on a CPU)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (default 1: small 2-D batches gain nothing from more)",
    )
    parser.add_argument("--out", default=None, help="run folder (default runs/cnf-<data>-<timestamp>)")
    add_resume_arguments(parser, d.checkpoint_every)


def config_from_args(args: argparse.Namespace) -> CNFExperimentConfig:
    """Translate command-line arguments into a config: explicit flags, then ``--quick``, then defaults."""
    d = CNFExperimentConfig()
    quick = dict(iters=300, n_test=1000, grid=80, hidden="32,32", width=16, tol=1e-4, lr=5e-3) if args.quick else {}

    def pick(name, default):
        value = getattr(args, name)
        return value if value is not None else quick.get(name, default)

    hidden_text = pick("hidden", ",".join(map(str, d.hidden)))
    try:
        hidden = tuple(int(h) for h in str(hidden_text).split(",") if h.strip())
    except ValueError:
        raise ValueError(f"--hidden must be comma-separated integers such as 64,64,64, got {hidden_text!r}.") from None
    tol = pick("tol", d.rtol)
    return CNFExperimentConfig(
        data=args.data,
        model=args.model,
        hidden=hidden,
        width=pick("width", d.width),
        blocks=args.blocks,
        iters=pick("iters", d.iters),
        batch_size=args.batch_size,
        lr=pick("lr", d.lr),
        trace=args.trace,
        noise=args.noise,
        method=args.method,
        rtol=tol,
        atol=tol,
        step_size=args.step_size,
        adjoint=args.adjoint,
        compare_nf=args.compare_nf,
        nf_layers=args.nf_layers,
        regularize=args.regularize,
        kinetic_weight=args.kinetic_weight,
        jacobian_weight=args.jacobian_weight,
        n_test=pick("n_test", d.n_test),
        grid=pick("grid", d.grid),
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )


@interruptible("cnf")
def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    with checked_settings():
        cfg = config_from_args(args)
    folder = open_run(args.out, f"cnf-{cfg.data}", args.resume, run_kind="a cnf run", command="cnf")
    rows = run_experiment(cfg, folder, resume=args.resume)
    meta = {
        "command": "cnf",  # what `--resume` of another command is refused by (see _output.open_run)
        "data": cfg.data,
        "iters": cfg.iters,
        "batch": cfg.batch_size,
        "method": cfg.method,
        **({"step_size": cfg.step_size} if cfg.step_size is not None else {"rtol=atol": cfg.rtol}),
        "training trace": cfg.trace,
        "test trace": "exact",
        "n_test": cfg.n_test,
    }
    table = write_results(folder, "results", rows, COLUMNS, meta)
    print(table)
    print(f"\nResults and plots in {folder}")
    return 0
