"""The classic Neural ODE demo: learn the dynamics of a 2-D spiral from one noisy trajectory.

The true system is dy/dt = (y^3) A with A = [[-0.1, 2.0], [-2.0, -0.1]] (row vector y), from
y(0) = (2, 0) over t in [0, 25] (the toy problem of Chen et al., NeurIPS 2018, and of torchdiffeq's
example). One trajectory is observed at ``data_size`` times with Gaussian noise. The model is
dy/dt = MLP(y^3) (the cube is a fixed input feature, as in the original demo); it is trained on short
random windows of the noisy trajectory: each window starts at an observed state and is integrated
``batch_time`` observations ahead with ``odeint`` (or ``odeint_adjoint``), and the mean absolute error
to the observations is minimised with Adam.

Reports the error of the learned trajectory over the whole interval against the noise-free truth
(sensitive to small phase drift over the long horizon) and the relative error of the learned vector
field at the points of the true trajectory and over its bounding box. A learning rate of 1e-2 with a
cosine decay to 1e-4 over 1000 iterations takes about 15 s of CPU time. Writes
``results.md``/``results.json``, ``trajectories.png`` (true, observed and learned x(t), y(t)),
``phase_portrait.png`` (true vs learned trajectory in the phase plane), ``vector_field.png`` (true vs
learned field) and ``loss.png`` into the run folder.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from .._api import odeint, odeint_adjoint
from .._registry import build_solver, check_solve_settings
from ..solvers.symplectic import PartitionedComposition
from ._args import (
    check_backprop,
    checked_settings,
    diverged_if_solve_fails,
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
    open_checkpointed_run,
    pyplot,
    resume_job,
    save_figure,
    write_results,
)
from ._progress import progress_bar

HELP = "Train a Neural ODE to recover a 2-D spiral ODE from one noisy trajectory (the classic demo)."

SPIRAL_A = ((-0.1, 2.0), (-2.0, -0.1))
SPIRAL_Y0 = (2.0, 0.0)


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Settings of one demo run (defaults: the classic demo's sizes, on a budget of about a minute)."""

    iters: int = 1000
    data_size: int = 1000
    t_max: float = 25.0
    noise: float = 0.02  #: standard deviation of the observation noise
    batch_time: int = 10  #: observations per training window
    batch_size: int = 20  #: windows per iteration
    hidden: int = 50
    lr: float = 1e-2
    cosine: bool = True  #: decay the learning rate to 1% by a cosine schedule (steadier final fit)
    method: str = "dopri5"
    rtol: float = 1e-6
    atol: float = 1e-7
    adjoint: bool = False
    test_every: int = 50  #: evaluate the full trajectory every this many iterations
    seed: int = 0
    #: cosine cycles of ``iters`` iterations at most: while the learned trajectory misses ``target_mae``
    #: after a cycle, the learning rate restarts (a warm restart) and another cycle runs
    max_cycles: int = 1
    #: the goal: mean absolute error of the whole learned trajectory against the observations
    target_mae: float = 0.15
    checkpoint_every: int = 100  #: training iterations between checkpoints (with a run folder)

    def __post_init__(self):
        for name in ("iters", "data_size", "batch_size", "hidden", "test_every", "max_cycles", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 2 <= self.batch_time < self.data_size:
            raise ValueError(f"batch_time must be in [2, data_size), got {self.batch_time}.")
        if not (self.noise >= 0 and self.t_max > 0 and self.lr > 0):  # written so that NaN fails too
            raise ValueError("noise must be >= 0, t_max and lr positive.")
        # Before anything is trained: these methods failed at the first training step, with a traceback.
        solver, _, _ = build_solver(self.method, {}, self.rtol, self.atol)
        if isinstance(solver, PartitionedComposition):
            raise ValueError(
                f"--method {self.method} steps q and p separately and needs a state (q, p); the spiral's state is "
                "one 2-vector: use a method such as dopri5 or rk4 (implicit_midpoint or gl4 are symplectic too)."
            )
        check_backprop(self.method, solver, self.adjoint)


def true_field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The spiral dynamics dy/dt = (y^3) A for a row-vector state y of shape (..., 2)."""
    return (y**3) @ torch.tensor(SPIRAL_A, dtype=y.dtype, device=y.device)


class SpiralField(nn.Module):
    """The learned dynamics dy/dt = MLP(y^3), a tanh MLP 2 -> hidden -> 2.

    Args:
        hidden: width of the hidden layer.
    """

    def __init__(self, hidden: int = 50):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        for layer in self.net:
            if isinstance(layer, nn.Linear):  # small initial field: the first windows stay well-posed
                nn.init.normal_(layer.weight, std=0.1)
                nn.init.zeros_(layer.bias)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y**3)


def make_data(s: DemoSettings):
    """The observation times, the noise-free trajectory and the noisy observations (float32).

    Returns:
        (t, y_true, y_obs) with shapes (data_size,), (data_size, 2), (data_size, 2).
    """
    t = torch.linspace(0.0, s.t_max, s.data_size, dtype=torch.float64)
    y0 = torch.tensor([SPIRAL_Y0], dtype=torch.float64)
    with torch.no_grad():
        y_true = odeint(true_field, y0, t, rtol=1e-10, atol=1e-12)[:, 0]
    gen = torch.Generator().manual_seed(s.seed)
    y_obs = y_true + s.noise * torch.randn(y_true.shape, generator=gen, dtype=torch.float64)
    return t.float(), y_true.float(), y_obs.float()


def sample_windows(t: torch.Tensor, y_obs: torch.Tensor, s: DemoSettings, gen: torch.Generator):
    """Random training windows: start states (B, 1, 2), relative times (T,), targets (T, B, 1, 2)."""
    starts = torch.randperm(len(t) - s.batch_time, generator=gen)[: s.batch_size]
    y0 = y_obs[starts][:, None, :]
    times = t[: s.batch_time] - t[0]
    targets = torch.stack([y_obs[starts + i] for i in range(s.batch_time)], dim=0)[:, :, None, :]
    return y0, times, targets


#: Steps one of the demo's solves may take. A healthy solve of the whole trajectory takes about 300
#: (dopri5) to 30,000 (adaptive_heun) at the default tolerances; weights thrown far by a too large --lr
#: make the field so stiff that an explicit method crawled on for odeint's default of a million steps
#: per solve (hours) before any error.
STEP_BUDGET = 10**5


def _solve_options(s: DemoSettings) -> dict | None:
    """``{"max_num_steps": STEP_BUDGET}`` where ``s.method`` takes that option, else None (every
    torch method takes it today)."""
    options = {"max_num_steps": STEP_BUDGET}
    try:
        check_solve_settings(s.method, options, backend="torch")
    except ValueError:
        return None
    return options


def _solve(model: SpiralField, y0: torch.Tensor, t: torch.Tensor, s: DemoSettings) -> torch.Tensor:
    """The model's trajectory from ``y0`` at ``t`` (no adjoint), within the step budget."""
    return odeint(model, y0, t, rtol=s.rtol, atol=s.atol, method=s.method, options=_solve_options(s))


def _integrate(model: SpiralField, y0: torch.Tensor, t: torch.Tensor, s: DemoSettings) -> torch.Tensor:
    if s.adjoint:
        options = _solve_options(s)
        return odeint_adjoint(
            model,
            y0,
            t,
            rtol=s.rtol,
            atol=s.atol,
            method=s.method,
            options=options,
            adjoint_options=options,
            adjoint_params=tuple(model.parameters()),
        )
    return _solve(model, y0, t, s)


def field_error(model: SpiralField, pts: torch.Tensor) -> float:
    """Relative L2 error ||f_learned - f_true|| / ||f_true|| of the learned field at the points ``pts``
    (N, 2): on the true trajectory it measures how well the dynamics the data show were recovered;
    on a grid over the plane, how far that knowledge extends."""
    with torch.no_grad():
        learned = model(torch.tensor(0.0), pts)
        true = true_field(torch.tensor(0.0), pts)
    return float((learned - true).norm() / true.norm())


def _box_grid(y: torch.Tensor, n: int = 25) -> torch.Tensor:
    """An n x n grid over the bounding box of the points y (N, 2)."""
    lo, hi = y.min(dim=0).values, y.max(dim=0).values
    xs = torch.linspace(float(lo[0]), float(hi[0]), n)
    gx, gy = torch.meshgrid(xs, torch.linspace(float(lo[1]), float(hi[1]), n), indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


#: Settings a resumed run may change; every other one shapes the trained weights.
RESUMABLE_SETTINGS = frozenset({"checkpoint_every"})
_OPTIONS = {"iters": "--iters (--quick)", "test_every": "--iters (--quick)"}


def train(s: DemoSettings, progress: bool = True, ckpts: Checkpoints | None = None) -> dict:
    """Generate the data, train the model and evaluate it.

    Args:
        s: the settings.
        progress: show a progress bar.
        ckpts: where the training state (weights, optimizer, schedule, window generator, cycle, best
            cycle so far, history) is checkpointed (``checkpoints/demo.pt``) every ``s.checkpoint_every``
            iterations and after each cycle, and whether an interrupted run continues, to the same
            weights as one that was not interrupted (None: no checkpoints).

    Returns:
        dict with ``model``, the data (``t``, ``y_true``, ``y_obs``), the learned trajectory ``y_pred``,
        the loss and evaluation history and the final metrics.

    Raises:
        CheckpointError, ResumeError: resuming from a damaged checkpoint, or one of other settings.
    """
    torch.manual_seed(s.seed)
    t, y_true, y_obs = make_data(s)
    model = SpiralField(s.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    gen = torch.Generator().manual_seed(s.seed + 1)
    hist: dict[str, list[float]] = {"iter": [], "loss": [], "eval_iter": [], "eval_mae": []}
    y0_full = y_obs[:1]  # the model only ever sees the noisy data, starting state included

    def new_cycle() -> CosineAnnealingLR | None:
        for group in opt.param_groups:  # a warm restart: every cycle decays from the full rate again
            group["lr"] = s.lr
        return CosineAnnealingLR(opt, T_max=s.iters, eta_min=0.01 * s.lr) if s.cosine else None

    total = s.iters * s.max_cycles
    objects: dict[str, Any] = {"model": model, "optimizer": opt, "scheduler": new_cycle(), "generator": gen}
    required = ("step", "total", "history", "seconds", "best", "stop", "observation_mae")
    ckpt, state = resume_job(ckpts, "demo", objects, required)
    it, before = 0, 0.0
    best: tuple[float, dict, int] | None = None  # (error vs data, parameters, cycle) of the best cycle so far
    stop: str | None = None  # why training ended; set once it has (a resumed finished run trains no more)
    obs_mae = float("nan")
    if state is not None:
        it, before, hist, best = state["step"], state["seconds"], state["history"], state["best"]
        stop, obs_mae = state["stop"], state["observation_mae"]
    start = time.perf_counter()

    def save() -> None:
        if ckpts is not None:
            extra = {"best": best, "stop": stop, "observation_mae": obs_mae}
            ckpts.save(ckpt, it, total, objects, history=hist, seconds=before + time.perf_counter() - start, **extra)

    while stop is None:
        finished, done = divmod(it, s.iters)  # cycles finished, iterations done in the current one
        cycle = finished + 1
        if done == 0 and it > 0:
            # a new cycle, also after resuming: a checkpoint at a cycle's end holds that cycle's spent schedule
            objects["scheduler"] = new_cycle()
        sched = objects["scheduler"]
        desc = "spiral demo" if s.max_cycles == 1 else f"spiral demo, cycle {cycle}"
        for k in progress_bar(range(done + 1, s.iters + 1), desc=desc, enabled=progress):
            it += 1
            y0, times, targets = sample_windows(t, y_obs, s, gen)
            opt.zero_grad()
            with diverged_if_solve_fails(it, s.lr):
                pred = _integrate(model, y0, times, s)
                loss = (pred - targets).abs().mean()
                loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            hist["iter"].append(it)
            hist["loss"].append(loss.item())
            if it % s.test_every == 0 or k == s.iters:
                with torch.no_grad():
                    full = _solve(model, y0_full, t, s)[:, 0]
                hist["eval_iter"].append(it)
                hist["eval_mae"].append(float((full - y_true).abs().mean()))
            if k < s.iters and ckpts is not None and ckpts.due(ckpt, it, total):
                save()  # the end of a cycle is saved below, after its evaluation
        with torch.no_grad():  # the stopping test sees only what a user has: the observations
            obs_mae = float((_solve(model, y0_full, t, s)[:, 0] - y_obs).abs().mean())
        if best is None or obs_mae < best[0]:
            best = (obs_mae, copy.deepcopy(model.state_dict()), cycle)
        if obs_mae <= s.target_mae:
            stop = f"target reached after {it} iterations: trajectory error vs data {obs_mae:.3g} <= {s.target_mae:g}"
        elif cycle == s.max_cycles:
            # a warm restart can also make the fit worse: the model keeps the best cycle's parameters
            obs_mae = best[0]
            model.load_state_dict(best[1])
            stop = (
                f"budget used ({it} iterations): trajectory error vs data {obs_mae:.3g} > target {s.target_mae:g} "
                f"(kept cycle {best[2]}, the best)"
            )
        save()
    seconds = before + time.perf_counter() - start
    with torch.no_grad():
        y_pred = _solve(model, y0_full, t, s)[:, 0]
    metrics = {
        "iterations": it,
        "stop": stop,
        "observation_mae": obs_mae,
        "final_loss": hist["loss"][-1],
        "trajectory_mae": float((y_pred - y_true).abs().mean()),
        "noise_mae": float((y_obs - y_true).abs().mean()),
        "field_rel_error": field_error(model, y_true),
        "field_rel_error_box": field_error(model, _box_grid(y_true)),
        "train_seconds": seconds,
    }
    return {
        "model": model,
        "t": t,
        "y_true": y_true,
        "y_obs": y_obs,
        "y_pred": y_pred,
        "history": hist,
        "metrics": metrics,
    }


def plot_results(folder: Path, result: dict) -> None:
    """Write trajectories.png, phase_portrait.png, vector_field.png and loss.png."""
    plt = pyplot()
    t, y_true, y_obs, y_pred = (result[k].numpy() for k in ("t", "y_true", "y_obs", "y_pred"))
    model, hist = result["model"], result["history"]

    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for i, (ax, name) in enumerate(zip(axes, ("x", "y"))):
        ax.plot(t, y_obs[:, i], ".", ms=2, color="0.6", label="observed (noisy)")
        ax.plot(t, y_true[:, i], "g-", lw=1.5, label="true")
        ax.plot(t, y_pred[:, i], "b--", lw=1.5, label="learned")
        ax.set_ylabel(name)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].set_xlabel("t")
    fig.suptitle("Spiral: true vs learned trajectories")
    save_figure(fig, folder / "trajectories.png", dpi=120)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(y_obs[:, 0], y_obs[:, 1], ".", ms=2, color="0.6", label="observed")
    ax.plot(y_true[:, 0], y_true[:, 1], "g-", lw=1.5, label="true")
    ax.plot(y_pred[:, 0], y_pred[:, 1], "b--", lw=1.5, label="learned")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_aspect("equal")
    ax.legend(fontsize=8)
    ax.set_title("Phase portrait")
    save_figure(fig, folder / "phase_portrait.png", dpi=120)

    lim = 1.1 * float(np.abs(y_true).max())
    g = torch.linspace(-lim, lim, 21)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
    with torch.no_grad():
        fields = {"true": true_field(torch.tensor(0.0), pts), "learned": model(torch.tensor(0.0), pts)}
    vmax = max(float(f.norm(dim=-1).max()) for f in fields.values())  # one colour scale for both panels
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, (name, f) in zip(axes, fields.items()):
        u = f[:, 0].reshape(gx.shape).numpy()
        v = f[:, 1].reshape(gx.shape).numpy()
        speed = np.hypot(u, v)
        scale = np.maximum(speed, 1e-12) ** 0.5  # arrows drawn at sqrt(speed) so slow regions stay visible
        arrows = ax.quiver(gx.numpy(), gy.numpy(), u / scale, v / scale, speed, cmap="viridis", clim=(0.0, vmax))
        ax.plot(y_true[:, 0], y_true[:, 1], "g-", lw=0.8, alpha=0.7, label="true trajectory")
        ax.set_title(f"{name} vector field")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.colorbar(arrows, ax=list(axes), shrink=0.8, label="speed |f(x, y)|")
    save_figure(fig, folder / "vector_field.png", dpi=120, layout=False)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(hist["iter"], hist["loss"], lw=0.8, label="training loss (window MAE)")
    ax.semilogy(hist["eval_iter"], hist["eval_mae"], "o-", ms=3, label="full trajectory MAE vs truth")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean absolute error (log scale)")
    ax.set_title("Training")
    ax.legend(fontsize=8)
    save_figure(fig, folder / "loss.png", dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    parser.add_argument("--iters", type=positive_int, default=d.iters, help=f"training iterations (default {d.iters})")
    parser.add_argument("--quick", action="store_true", help="a small budget (300 iterations)")
    parser.add_argument(
        "--noise", type=nonnegative_float, default=d.noise, help=f"observation noise std (default {d.noise})"
    )
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    parser.add_argument("--batch-time", type=int, default=d.batch_time)
    parser.add_argument("--lr", type=positive_float, default=d.lr)
    parser.add_argument("--method", type=method_name, default=d.method, help="odeint method (default dopri5)")
    parser.add_argument("--rtol", type=nonnegative_float, default=d.rtol)
    parser.add_argument("--atol", type=nonnegative_float, default=d.atol)
    parser.add_argument("--adjoint", action="store_true", help="gradients by the adjoint method (odeint_adjoint)")
    parser.add_argument("--seed", type=random_seed, default=d.seed)
    parser.add_argument(
        "--max-cycles",
        type=positive_int,
        default=3,
        help="cosine cycles of --iters iterations at most, restarting while the fit misses --target-mae (default 3)",
    )
    parser.add_argument(
        "--target-mae",
        type=nonnegative_float,
        default=d.target_mae,
        help=f"stop once the learned trajectory's mean absolute error against the data is below this "
        f"(default {d.target_mae})",
    )
    parser.add_argument("--out", default=None, help="run folder (default runs/demo-<timestamp>)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_resume_arguments(parser, d.checkpoint_every)


@interruptible("demo")
def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # small tensors: one thread is fastest and leaves the other core free
    iters = 300 if args.quick and args.iters == DemoSettings.iters else args.iters
    with checked_settings():
        s = DemoSettings(
            iters=iters,
            noise=args.noise,
            batch_size=args.batch_size,
            batch_time=args.batch_time,
            lr=args.lr,
            method=args.method,
            rtol=args.rtol,
            atol=args.atol,
            adjoint=args.adjoint,
            seed=args.seed,
            test_every=max(1, min(50, iters)),
            max_cycles=args.max_cycles,
            target_mae=args.target_mae,
            checkpoint_every=args.checkpoint_every,
        )
    folder, ckpts = open_checkpointed_run(args, "demo", s, RESUMABLE_SETTINGS, _OPTIONS)
    result = train(s, progress=not args.no_progress, ckpts=ckpts)
    m = result["metrics"]
    row = {
        k: m[k]
        for k in (
            "iterations",
            "observation_mae",
            "final_loss",
            "trajectory_mae",
            "noise_mae",
            "field_rel_error",
            "field_rel_error_box",
            "train_seconds",
        )
    }
    meta = {
        "command": "demo",  # what `--resume` of another command is refused by (see _output.open_run)
        "stop": m["stop"],
        "system": "dy/dt = (y^3) A, A = [[-0.1, 2.0], [-2.0, -0.1]], y0 = (2, 0), t in [0, 25]",
        "settings": dataclasses.asdict(s),
    }
    table = write_results(folder, "results", [row], list(row), meta)
    plot_results(folder, result)
    print(table)
    print(
        f"final loss {m['final_loss']:.4f}; learned trajectory MAE vs truth {m['trajectory_mae']:.4f} "
        f"(observation noise MAE {m['noise_mae']:.4f}); vector field relative error {m['field_rel_error']:.3f} "
        f"on the trajectory, {m['field_rel_error_box']:.3f} over its bounding box"
    )
    print(m["stop"])
    print(f"results and plots in {folder}")
    return 0
