"""Augmented Neural ODEs on the two toy tasks of Dupont et al. (2019): g1d and concentric spheres.

- g1d: learn the 1-D map g(-1) = 1, g(1) = -1 with the flow itself. The flow of an ODE in one
  dimension preserves order, so a plain Neural ODE cannot represent g (the best it can do is map both
  points to 0, loss 1); with augmented dimensions the trajectories can pass each other and the
  projection of the flow onto the input coordinate represents g.
- spheres: classify points of the plane by radius (inner disc r <= 0.5, label -1; outer annulus
  1 <= r <= 1.5, label +1; radii drawn as by the reference's ``random_point_in_sphere``) with a linear
  readout after the flow. A 2-D flow must squeeze the outer annulus through itself, which it can only
  approximate with a stiff, high-NFE field; augmenting gives an easy, low-NFE solution.

Both models use the reference code's vector field (``anode/models.py``, ``ODEFunc``): a time-independent
MLP with two hidden layers of 32 units and ReLU, solved by dopri5 at rtol = atol = 1e-3, and MSE loss
(docs/models.md lists where the runs differ from the reference's experiments).

Reference: Dupont, Doucet, Teh, "Augmented Neural ODEs", NeurIPS 2019, Sections 3-5.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn

from ..nn.augmented import AugmentedNeuralODE
from ..nn.layers import MLPDynamics
from ..nn.ode_block import SolveSettings
from ._args import SettingsError, diverged_if_solve_fails, positive_float, positive_int, random_seed
from ._output import (
    Checkpoints,
    add_resume_arguments,
    interruptible,
    open_checkpointed_run,
    pyplot,
    resume_loop,
    save_figure,
    write_results,
)
from ._progress import progress_bar

HELP = "Dupont et al. 2019: plain vs augmented Neural ODEs on g1d and concentric spheres (loss, NFE, trajectories)."
TASKS = ("g1d", "spheres")

#: Default training iterations between checkpoints.
CHECKPOINT_EVERY = 100
#: Settings a resumed run may change; every other one shapes the trained weights or what runs.
RESUMABLE_SETTINGS = frozenset({"checkpoint_every"})
_OPTIONS = {"iters": "--iters (--quick)"}


def g1d_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The two points of g1d: inputs (2, 1) = [[-1], [1]], targets [[1], [-1]]."""
    x = torch.tensor([[-1.0], [1.0]])
    return x, -x


def spheres_data(n_inner: int = 500, n_outer: int = 1500, dim: int = 2, seed: int = 0):
    """Concentric spheres: radius in [0, 0.5] (label -1) and in [1, 1.5] (label +1).

    A point of the shell [r0, r1] has a uniform direction and radius ``r0 + (r1 - r0) * U**(1/dim)``,
    U uniform in [0, 1], as the reference's ``random_point_in_sphere`` draws it: uniform in the ball for
    the inner class, and close to uniform in the annulus for the outer one.

    Args:
        n_inner, n_outer: points per class.
        dim: dimension of the space.
        seed: random seed.

    Returns:
        ``(x, y)`` of shapes (n_inner + n_outer, dim) and (n_inner + n_outer, 1).
    """
    gen = torch.Generator().manual_seed(seed)

    def shell(n, r0, r1):
        d = torch.randn(n, dim, generator=gen)
        d = d / d.norm(dim=1, keepdim=True)
        # U**(1/dim): a radius uniform in [r0, r1] would crowd the inner disc's points around the centre
        return d * (r0 + (r1 - r0) * torch.rand(n, 1, generator=gen) ** (1.0 / dim))

    x = torch.cat([shell(n_inner, 0.0, 0.5), shell(n_outer, 1.0, 1.5)])
    y = torch.cat([-torch.ones(n_inner, 1), torch.ones(n_outer, 1)])
    return x, y


class FlowModel(nn.Module):
    """(Augmented) Neural ODE followed by a readout: projection onto the input coordinates or linear.

    The field is the reference's ``ODEFunc`` (``time_dependent=False``): input -> hidden -> hidden ->
    input, ReLU after both hidden layers.
    """

    def __init__(self, in_dim: int, augment_dim: int, hidden: int, readout: str, tol: float):
        super().__init__()
        settings = SolveSettings("dopri5", tol, tol)
        self.ode = AugmentedNeuralODE(
            MLPDynamics(in_dim + augment_dim, hidden, layers=2, time_dependent=False),
            augment_dim,
            train_settings=settings,
        )
        self.in_dim = in_dim
        self.readout = nn.Linear(in_dim + augment_dim, 1) if readout == "linear" else None

    def forward(self, x):
        h = self.ode(x)
        return self.readout(h) if self.readout is not None else h[:, : self.in_dim]

    def trajectory(self, x, steps: int = 30):
        """States at ``steps`` times in [0, 1] (no gradient), shape (steps, N, in_dim + augment_dim)."""
        block = self.ode.block
        with torch.no_grad():
            block.return_trajectory = True
            try:
                return self.ode(x, torch.linspace(0, 1, steps))
            finally:
                block.return_trajectory = False


def train_flow(
    task: str,
    augment_dim: int,
    *,
    iters: int,
    hidden: int = 32,
    lr: float = 1e-3,
    batch: int = 128,
    tol: float = 1e-3,
    seed: int = 0,
    checkpoints: Checkpoints | None = None,
    job: str = "model",
) -> dict[str, Any]:
    """Train one model on one task with Adam and MSE loss.

    Args:
        task: "g1d" or "spheres".
        augment_dim: appended zero dimensions (0: a plain Neural ODE).
        iters: training iterations.
        hidden: hidden units of the vector field.
        lr: Adam learning rate.
        batch: minibatch size (g1d always uses its two points).
        tol: rtol = atol of dopri5.
        seed: random seed of data, initialisation and batches.
        checkpoints: where the training state (weights, optimizer, minibatch generator, history) is
            checkpointed, and whether an interrupted run continues (None: no checkpoints).
        job: the checkpoint's name (``checkpoints/<job>.pt``).

    Returns:
        A dict with the trained ``model``, the data ``x``, ``y``, the ``hist`` of loss and forward NFE per
        iteration, and the final full-data ``loss``, ``accuracy`` (sign agreement) and ``nfe``.

    Raises:
        ValueError: for an unknown task, or ``iters``, ``hidden`` or ``batch`` below 1.
        CheckpointError, ResumeError: resuming from a damaged checkpoint, or one of other settings.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    if min(iters, hidden, batch) < 1:
        raise ValueError(f"iters, hidden and batch must be >= 1, got {iters}, {hidden} and {batch}.")
    torch.manual_seed(seed)
    if task == "g1d":
        x, y = g1d_data()
        model = FlowModel(1, augment_dim, hidden, "identity", tol)
    else:
        x, y = spheres_data(seed=seed)
        model = FlowModel(2, augment_dim, hidden, "linear", tol)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    hist: dict[str, list[float]] = {"loss": [], "nfe": []}
    objects = {"model": model, "optimizer": opt, "generator": gen}
    ckpt, done, hist, _ = resume_loop(checkpoints, job, objects, hist)
    for step in range(done + 1, iters + 1):
        idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=gen) if len(x) > batch else torch.arange(len(x))
        with diverged_if_solve_fails(step, lr):
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        hist["loss"].append(loss.item())
        hist["nfe"].append(model.ode.nfe_forward)
        if checkpoints is not None and checkpoints.due(ckpt, step, iters):
            checkpoints.save(ckpt, step, iters, objects, history=hist)
    with torch.no_grad():
        pred = model(x)
        final = float(nn.functional.mse_loss(pred, y))
        acc = float(((pred > 0) == (y > 0)).float().mean())
    return {"model": model, "x": x, "y": y, "hist": hist, "loss": final, "accuracy": acc, "nfe": model.ode.nfe_forward}


def _plot_g1d(folder, results):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    starts = torch.linspace(-1.2, 1.2, 9).unsqueeze(1)
    for ax, (name, res) in zip(axes[0], results.items()):
        traj = res["model"].trajectory(starts)[..., 0]
        ts = torch.linspace(0, 1, traj.shape[0])
        for i in range(traj.shape[1]):
            highlight = abs(abs(float(starts[i])) - 1.0) < 1e-6
            ax.plot(ts, traj[:, i], color="C3" if highlight else "0.7", lw=2 if highlight else 1)
        ax.set_title(f"{name}: final loss {res['loss']:.3g}"), ax.set_xlabel("t"), ax.set_ylabel("h(t)")
    save_figure(fig, folder / "g1d_trajectories.png", dpi=120)


def _plot_spheres(folder, results):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.5), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        x, y = res["x"][::4], res["y"][::4]
        traj = res["model"].trajectory(x)
        colors = ["C0" if v < 0 else "C1" for v in y[:, 0].tolist()]
        for i in range(0, traj.shape[1], 4):
            ax.plot(traj[:, i, 0], traj[:, i, 1], color=colors[i], lw=0.4, alpha=0.5)
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], c=colors, s=4)
        ax.set_title(f"{name}: loss {res['loss']:.3g}, NFE {res['nfe']}\n(first two state coordinates)")
        ax.set_xlabel("state coordinate 1")
        ax.set_ylabel("state coordinate 2")
        ax.set_aspect("equal")
        for color, label in (("C0", "inner disc (label -1)"), ("C1", "outer annulus (label +1)")):
            ax.scatter([], [], c=color, s=12, label=label)
        ax.legend(loc="upper right", fontsize=8)
    save_figure(fig, folder / "spheres_trajectories.png", dpi=120)


def _plot_curves(folder, all_results):
    plt = pyplot()
    fig, axes = plt.subplots(2, len(all_results), figsize=(5 * len(all_results), 6), squeeze=False)
    for col, (task, results) in enumerate(all_results.items()):
        for name, res in results.items():
            axes[0][col].plot(res["hist"]["loss"], label=name)
            axes[1][col].plot(res["hist"]["nfe"], label=name)
        axes[0][col].set_title(task), axes[0][col].set_ylabel("MSE loss"), axes[0][col].set_yscale("log")
        axes[1][col].set_ylabel("forward NFE"), axes[1][col].set_xlabel("iteration")
        axes[0][col].legend(), axes[1][col].legend()
    save_figure(fig, folder / "anode_loss_nfe.png", dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about a minute on a CPU)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of g1d,spheres")
    parser.add_argument("--iters", type=positive_int, default=None, help="training iterations per model")
    parser.add_argument("--augment-dim", type=positive_int, default=5)
    parser.add_argument("--hidden", type=positive_int, default=32)
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--out", default=None, help="run folder (default runs/anode-<timestamp>)")
    add_resume_arguments(parser, CHECKPOINT_EVERY)


@interruptible("anode")
def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # 32-unit MLPs: a second thread doubled the time on a 2-core machine
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks or any(t not in TASKS for t in tasks):
        raise SettingsError(f"--tasks must be a comma-separated subset of {TASKS}, got {args.tasks!r}.")
    iters = args.iters if args.iters is not None else (300 if args.quick else 1500)
    settings = {
        "tasks": tasks,
        "iters": iters,
        "augment_dim": args.augment_dim,
        "hidden": args.hidden,
        "lr": args.lr,
        "seed": args.seed,
        "checkpoint_every": args.checkpoint_every,
    }
    folder, checkpoints = open_checkpointed_run(
        args, "anode", settings, RESUMABLE_SETTINGS, _OPTIONS, run_kind="an anode run"
    )
    rows: list[dict[str, Any]] = []
    all_results: dict[str, dict[str, dict[str, Any]]] = {}
    jobs = [
        (task, name, aug)
        for task in tasks
        for name, aug in (("NODE", 0), (f"ANODE (aug {args.augment_dim})", args.augment_dim))
    ]
    start = time.perf_counter()
    for task, name, aug in progress_bar(jobs, desc="anode"):
        t0 = time.perf_counter()
        res = train_flow(
            task,
            aug,
            iters=iters,
            hidden=args.hidden,
            lr=args.lr,
            seed=args.seed,
            checkpoints=checkpoints,
            job=f"{task}-{'anode' if aug else 'node'}",
        )
        all_results.setdefault(task, {})[name] = res
        nfe = res["hist"]["nfe"]
        tail = nfe[-max(1, len(nfe) // 10) :]
        rows.append(
            {
                "task": task,
                "model": name,
                "final loss": res["loss"],
                "accuracy": res["accuracy"] if task == "spheres" else "-",
                "NFE (last 10%)": round(sum(tail) / len(tail), 1),
                "params": sum(p.numel() for p in res["model"].parameters()),
                "time (s)": round(time.perf_counter() - t0, 1),
            }
        )
    columns = ["task", "model", "final loss", "accuracy", "NFE (last 10%)", "params", "time (s)"]
    meta = {
        "command": "anode",  # what `--resume` of another command is refused by (see _output.open_run)
        "iterations": iters,
        "hidden": args.hidden,
        "augment_dim": args.augment_dim,
        "lr": args.lr,
        "solver": "dopri5 rtol=atol=1e-3, direct backprop",
        "wall time (s)": round(time.perf_counter() - start, 1),
    }
    table = write_results(folder, "results", rows, columns, meta)
    _plot_curves(folder, all_results)
    if "g1d" in all_results:
        _plot_g1d(folder, all_results["g1d"])
    if "spheres" in all_results:
        _plot_spheres(folder, all_results["spheres"])
    print(table)
    print(f"\nresults and plots in {folder}")
    return 0
