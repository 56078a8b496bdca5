"""Hamiltonian Neural Networks vs a baseline Neural ODE on the ideal mass-spring and the ideal pendulum.

The paper's recipe (data generated in code): trajectories from random initial energies, observed at
regular times over a short window with Gaussian noise on (q, p); the models are trained to match the
true time derivatives at the noisy observations (train/test loss = MSE between true and predicted
derivatives; half of the trajectories are the test set). Both models are then rolled out from the
test trajectories' initial states far beyond the training window, and the energy MSE is the mean
squared difference between the true energy (constant: the systems are ideal) and the true energy
function evaluated along the model's rollout.

- mass-spring: H = q^2 + p^2, initial radius |(q, p)| uniform in [0.1, 1], t in [0, 3], 30 points.
- pendulum: H = 3 (1 - cos q) + p^2, radius uniform in [1.3, 2.3], t in [0, 3], 45 points.

These are the systems, ranges and windows of the authors' code (github.com/greydanus/hamiltonian-nn,
``experiment-spring/data.py`` and ``experiment-pend/data.py``), which produced the paper's Table 1.
The paper's equations (4) and (5) with m = l = 1, k = 1, g = 3 (H = q^2/2 + p^2/2 and
6 (1 - cos q) + p^2/2) are other scalings of the same motions: q(t) is the same pendulum, but p is
twice as large and the spring twice as slow, so the derivative targets and hence the losses differ
(a noise std s on (q, p) alone leaves a test loss of about s^2 |dF/dx|^2 / 2 at the noisy points:
4e-2 on the code's spring, 1e-2 on the equation's); only the code's systems give losses comparable
with Table 1. See docs/hnn.md for the remaining differences from the reference code.

Reference: Greydanus, Dzamba, Yosinski, "Hamiltonian Neural Networks", NeurIPS 2019, Section 3 and
Table 1 (MLP 200-200 tanh, Adam lr 1e-3 with weight decay 1e-4 (Appendix A), 2000 full-batch steps,
noise std 0.1, 50 trajectories).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._api import odeint
from .._errors import SolverError
from .._registry import build_solver
from ..controllers import ConstantStepSize
from ..nn.hamiltonian import BaselineODE, HamiltonianNN
from ._args import SettingsError, method_name, nonnegative_float, positive_float, positive_int, random_seed
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

HELP = "Greydanus et al. 2019: HNN vs baseline Neural ODE on the ideal mass-spring and pendulum (loss, energy)."
TASKS = ("spring", "pendulum")

#: Default training iterations between checkpoints.
CHECKPOINT_EVERY = 100
#: The settings of a run, as the command's arguments name them.
SETTINGS = (
    "tasks",
    "iters",
    "hidden",
    "lr",
    "weight_decay",
    "trajectories",
    "noise",
    "rollout_factor",
    "method",
    "step_size",
    "seed",
    "checkpoint_every",
)
#: Settings a resumed run may change: how often it checkpoints, and the rollouts after training.
RESUMABLE_SETTINGS = frozenset({"checkpoint_every", "rollout_factor", "method", "step_size"})

#: Adam's weight decay for both models: the paper's Appendix A ("weight decay of 1e-4 on the first three
#: tasks") and its code's ``train.py``
WEIGHT_DECAY = 1e-4
#: the paper's Table 1 (test loss and energy MSE, baseline and HNN), from docs REFERENCE
PAPER = {
    "spring": {"baseline": (3.67e-2, 1.71e-1), "hnn": (3.59e-2, 3.84e-4)},
    "pendulum": {"baseline": (3.53e-2, 4.15e-2), "hnn": (3.56e-2, 2.49e-2)},
}


@dataclasses.dataclass(frozen=True)
class System:
    """An ideal one-degree-of-freedom Hamiltonian system and the paper's sampling of its trajectories."""

    name: str
    energy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    velocity: Callable[[torch.Tensor], torch.Tensor]  #: dq/dt = dH/dp, a function of p (H is separable)
    force: Callable[[torch.Tensor], torch.Tensor]  #: dp/dt = -dH/dq, a function of q
    radius: tuple[float, float]  #: the initial state's distance from the origin, uniform in this range
    t_end: float
    n_points: int

    def field(self, t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        q, p = y
        return self.velocity(p), self.force(q)


SYSTEMS = {
    "spring": System("spring", lambda q, p: q**2 + p**2, lambda p: 2.0 * p, lambda q: -2.0 * q, (0.1, 1.0), 3.0, 30),
    "pendulum": System(
        "pendulum",
        lambda q, p: 3.0 * (1.0 - torch.cos(q)) + p**2,
        lambda p: 2.0 * p,
        lambda q: -3.0 * torch.sin(q),
        (1.3, 2.3),
        3.0,
        45,
    ),
}


def exact_trajectories(system: System, q0: torch.Tensor, p0: torch.Tensor, t: torch.Tensor):
    """The true trajectories at the evenly spaced times ``t`` (yoshida6, far more accurate than any model).

    The step divides the output spacing, so every output is a step end: between steps a fixed-step
    solve interpolates linearly, which was off by up to 6e-3 on the pendulum (steps of 0.05 against
    outputs every 0.068); on step ends the error is below 1e-6 over the rollouts (measured against
    dopri8 at rtol 1e-12 from the largest initial radius: 2e-7 on the spring, 4e-7 on the pendulum
    over [0, 30]).
    """
    spacing = abs(float(t[1] - t[0]))
    step = spacing / math.ceil(spacing / 0.05 - 1e-9)  # the largest step <= 0.05 that divides the spacing
    return odeint(system.field, (q0, p0), t, method="yoshida6", options={"step_size": step})


def make_data(system: System, n_traj: int, noise: float, seed: int) -> dict[str, torch.Tensor]:
    """Noisy observations and true derivatives of ``n_traj`` trajectories; half train, half test.

    Returns:
        dict with ``x_train``, ``dx_train``, ``x_test``, ``dx_test`` (points (N, 2) as (q, p) and their
        true time derivatives) and ``y0_test`` (the test trajectories' clean initial states, (n, 2)).

    Raises:
        ValueError: ``n_traj`` < 2, which leaves no training trajectory (a NaN loss, not an error, else).
    """
    if n_traj < 2:
        raise ValueError(f"need at least 2 trajectories (half train, half test), got {n_traj}.")
    gen = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.rand(n_traj, generator=gen, dtype=torch.float64)
    lo, hi = system.radius
    r = lo + (hi - lo) * torch.rand(n_traj, generator=gen, dtype=torch.float64)
    q0, p0 = r * torch.cos(angle), r * torch.sin(angle)
    t = torch.linspace(0.0, system.t_end, system.n_points, dtype=torch.float64)
    q, p = exact_trajectories(system, q0, p0, t)  # (T, n_traj)
    dq, dp = system.field(t, (q, p))  # derivatives of the clean states, as the paper's generator
    q = q + noise * torch.randn(q.shape, generator=gen, dtype=torch.float64)
    p = p + noise * torch.randn(p.shape, generator=gen, dtype=torch.float64)
    x = torch.stack([q, p], -1).transpose(0, 1).float()  # (n_traj, T, 2)
    dx = torch.stack([dq, dp], -1).transpose(0, 1).float()
    half = n_traj // 2
    return {
        "x_train": x[:half].reshape(-1, 2),
        "dx_train": dx[:half].reshape(-1, 2),
        "x_test": x[half:].reshape(-1, 2),
        "dx_test": dx[half:].reshape(-1, 2),
        "y0_test": torch.stack([q0[half:], p0[half:]], -1).float(),
    }


def train_model(
    model: nn.Module,
    data: dict[str, torch.Tensor],
    iters: int,
    lr: float,
    progress: bool,
    label: str,
    ckpts: Checkpoints | None = None,
    job: str = "model",
    weight_decay: float = WEIGHT_DECAY,
) -> dict[str, Any]:
    """Fit the model's field to the true derivatives (full batch, Adam), as the paper does.

    Args:
        model: the baseline or the HNN.
        data: from :func:`make_data`.
        iters: Adam steps.
        lr: learning rate.
        progress: show a progress bar.
        label: its label.
        ckpts: where to checkpoint the training state (weights, optimizer, history) and whether to
            resume (None: no checkpoints).
        job: the checkpoint's name (``checkpoints/<job>.pt``).
        weight_decay: Adam's weight decay (the paper's 1e-4).

    Returns:
        dict with ``train_loss``, ``test_loss``, the loss ``history`` and ``seconds`` (the training time
        over every invocation of a resumed run).

    Raises:
        CheckpointError, ResumeError: resuming from a damaged checkpoint, or one of other settings.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    zero = torch.zeros(())
    history: list[float] = []
    objects = {"model": model, "optimizer": opt}
    ckpt, done, history, before = resume_loop(ckpts, job, objects, history, timed=True)
    start = time.perf_counter()
    bar = progress_bar(range(done + 1, iters + 1), desc=label, enabled=progress)
    for step in bar:
        opt.zero_grad()
        loss = ((model(zero, data["x_train"]) - data["dx_train"]) ** 2).mean()
        loss.backward()
        opt.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{history[-1]:.3g}")
        if ckpts is not None and ckpts.due(ckpt, step, iters):
            seconds = before + time.perf_counter() - start
            ckpts.save(ckpt, step, iters, objects, history=history, seconds=seconds)
    seconds = before + time.perf_counter() - start
    out = {"history": history, "seconds": seconds}
    for split in ("train", "test"):
        with torch.enable_grad():  # the HNN's field is a gradient
            pred = model(zero, data[f"x_{split}"]).detach()
        out[f"{split}_loss"] = float(((pred - data[f"dx_{split}"]) ** 2).mean())
    return out


def rollout(model: nn.Module, y0: torch.Tensor, t: torch.Tensor, method: str, step: float) -> torch.Tensor:
    """The model's trajectories from ``y0`` (n, 2) at times ``t``: shape (len(t), n, 2).

    A fixed-step method takes steps of ``step``; an adaptive one chooses its own (odeint's default
    tolerances; ``step`` is not an option it takes); a partitioned one (``leapfrog``, ``yoshida4``...)
    steps the pair (q, p), so it gets the state as that pair.

    Raises:
        ValueError, BackendError: ``method`` cannot run here (e.g. a Julia-only method).
    """
    solver, controller, _ = build_solver(method, {}, 1e-7, 1e-9)
    options = {"step_size": step} if isinstance(controller, ConstantStepSize) else {}
    with torch.no_grad():
        if getattr(solver, "partitioned", False):
            q, p = odeint(model, (y0[..., :1], y0[..., 1:]), t, method=method, options=options)
            return torch.cat((q, p), dim=-1)
        return odeint(model, y0, t, method=method, options=options)


def run_task(task: str, s: argparse.Namespace, progress: bool, ckpts: Checkpoints | None = None) -> dict[str, Any]:
    """Data, both models, rollouts and metrics of one task.

    Args:
        task: a key of :data:`SYSTEMS`.
        s: the command's arguments.
        progress: show progress bars.
        ckpts: where each model's training is checkpointed (``checkpoints/<task>-<model>.pt``) and
            whether it resumes (None: no checkpoints).

    Returns:
        The rollout times, the true trajectories, and per model its fit, trajectory and energy errors.
    """
    system = SYSTEMS[task]
    data = make_data(system, s.trajectories, s.noise, s.seed)
    t_roll = torch.linspace(0.0, s.rollout_factor * system.t_end, int(s.rollout_factor * system.n_points) + 1)
    y0 = data["y0_test"]
    true_q, true_p = exact_trajectories(system, y0[:, 0].double(), y0[:, 1].double(), t_roll.double())
    true_energy = system.energy(y0[:, 0], y0[:, 1]).double()  # conserved by the ideal systems
    models: dict[str, nn.Module] = {}
    results: dict[str, Any] = {"t": t_roll, "true": torch.stack([true_q, true_p], -1), "system": system}
    for kind in ("baseline", "hnn"):
        torch.manual_seed(s.seed)
        model = BaselineODE(1, s.hidden) if kind == "baseline" else HamiltonianNN(1, s.hidden)
        label, job = f"{task} {kind}", f"{task}-{kind}"
        fit = train_model(model, data, s.iters, s.lr, progress, label, ckpts, job, s.weight_decay)
        try:
            traj = rollout(model, y0, t_roll, s.method, s.step_size)
        except SolverError as err:
            # The solver's own advice (an implicit method, jump_t) is beside the point for a learned field
            # that a too large learning rate made stiff or explosive.
            raise SettingsError(
                f"the trained {task} {kind} model's {s.method} rollout failed at t={err.t:.6g} "
                f"({err.status.symptom.lower()}): its learned field is too stiff or explosive, as after a "
                f"diverged training; lower --lr (now {s.lr:g}), or roll out with a fixed-step --method such as rk4."
            ) from err
        energy = system.energy(traj[..., 0], traj[..., 1]).double()
        inside = t_roll <= system.t_end
        fit.update(
            trajectory=traj,
            energy=energy,
            energy_mse=float(((energy - true_energy) ** 2).mean()),
            energy_mse_window=float(((energy[inside] - true_energy) ** 2).mean()),
            state_mse=float(((traj.double() - results["true"]) ** 2).mean()),
        )
        models[kind] = model
        results[kind] = fit
    results["true_energy"] = true_energy
    return results


def plot_task(folder: Path, task: str, res: dict[str, Any]) -> None:
    """``<task>_trajectories.png`` (phase space and q(t) of one test trajectory) and ``<task>_energy.png``."""
    plt = pyplot()
    t = res["t"].numpy()
    true = res["true"][:, 0].numpy()
    styles = {"baseline": ("r--", "baseline NN"), "hnn": ("b-", "HNN")}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.plot(true[:, 0], true[:, 1], "k-", lw=2, alpha=0.4, label="true")
    ax2.plot(t, true[:, 0], "k-", lw=2, alpha=0.4, label="true")
    for kind, (style, label) in styles.items():
        traj = res[kind]["trajectory"][:, 0].numpy()
        ax1.plot(traj[:, 0], traj[:, 1], style, lw=1, label=label)
        ax2.plot(t, traj[:, 0], style, lw=1, label=label)
    ax1.set_xlabel("q")
    ax1.set_ylabel("p")
    ax1.set_aspect("equal")
    ax1.set_title(f"{task}: phase space, one test trajectory")
    ax2.axvline(res["system"].t_end, color="0.5", lw=0.8, ls=":", label="end of training window")
    ax2.set_xlabel("t")
    ax2.set_ylabel("q")
    ax2.legend(fontsize=8)
    save_figure(fig, folder / f"{task}_trajectories.png", dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, t * 0 + float(res["true_energy"][0]), "k-", lw=2, alpha=0.4, label="true")
    for kind, (style, label) in styles.items():
        ax.plot(t, res[kind]["energy"][:, 0].numpy(), style, lw=1, label=label)
    ax.axvline(res["system"].t_end, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("t")
    ax.set_ylabel("true energy along the rollout")
    ax.set_title(f"{task}: energy of one test trajectory")
    ax.legend(fontsize=8)
    save_figure(fig, folder / f"{task}_energy.png", dpi=110)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument(
        "--iters", type=positive_int, default=2000, help="full-batch Adam steps per model (paper: 2000)"
    )
    parser.add_argument("--hidden", type=positive_int, default=200, help="hidden width of both MLPs (paper: 200)")
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    parser.add_argument(
        "--weight-decay", type=nonnegative_float, default=WEIGHT_DECAY, help="Adam weight decay (paper: 1e-4)"
    )
    parser.add_argument("--trajectories", type=positive_int, default=50, help="trajectories per task, half for testing")
    parser.add_argument("--noise", type=nonnegative_float, default=0.1, help="observation noise std (paper: 0.1)")
    parser.add_argument("--rollout-factor", type=positive_float, default=10.0, help="rollout length / training window")
    parser.add_argument("--method", type=method_name, default="rk4", help="rollout method (paper: RK4)")
    parser.add_argument(
        "--step-size", type=positive_float, default=0.02, help="rollout step size of a fixed-step --method"
    )
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--out", default=None, help="run folder (default runs/hnn-<timestamp>)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_resume_arguments(parser, CHECKPOINT_EVERY)


@interruptible("hnn")
def run(args: argparse.Namespace) -> int:
    if args.trajectories < 2:
        raise SettingsError(f"--trajectories must be >= 2 (half train, half test), got {args.trajectories}.")
    try:  # before training: a method that cannot roll out failed only after both models were trained
        rollout(BaselineODE(1, 2), torch.zeros(1, 2), torch.tensor([0.0, args.step_size]), args.method, args.step_size)
    except Exception as err:
        raise SettingsError(f"--method {args.method} cannot roll out the models: {err}") from err
    torch.set_num_threads(1)  # small tensors: one thread is fastest and leaves the other core free
    settings = {name: getattr(args, name) for name in SETTINGS}
    folder, ckpts = open_checkpointed_run(args, "hnn", settings, RESUMABLE_SETTINGS)
    rows = []
    for task in args.tasks:
        res = run_task(task, args, progress=not args.no_progress, ckpts=ckpts)
        for kind in ("baseline", "hnn"):
            r = res[kind]
            paper_test, paper_energy = PAPER[task][kind]
            rows.append(
                {
                    "task": task,
                    "model": kind,
                    "train loss": r["train_loss"],
                    "test loss": r["test_loss"],
                    "energy MSE (training window)": r["energy_mse_window"],
                    f"energy MSE (x{args.rollout_factor:g} window)": r["energy_mse"],
                    "state MSE": r["state_mse"],
                    "paper test loss": paper_test,
                    "paper energy MSE": paper_energy,
                    "train s": r["seconds"],
                }
            )
        plot_task(folder, task, res)
    meta = {
        "command": "hnn",  # what `--resume` of another command is refused by (see _output.open_run)
        "paper": "Greydanus, Dzamba, Yosinski 2019, Table 1 (mean of their runs)",
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "torch": torch.__version__,
    }
    table = write_results(folder, "results", rows, list(rows[0]), meta)
    print(table)
    print(f"results and plots in {folder}")
    return 0
