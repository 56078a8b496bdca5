"""A latent SDE (Li et al. 2020) fitted to noisy sample paths of an Ornstein-Uhlenbeck process.

The data are generated in code: ``n_paths`` paths of dy = theta (mu - y) dt + sigma dW from y0 drawn
around ``y0_mean``, solved with hn.sdeint on a fine grid and observed at ``n_obs`` times in [0, t_max]
with Gaussian noise. The model (:class:`hybrid_node.nn.LatentSDE`) is trained by maximising the ELBO
with Adam, the KL weight annealed from 0 to 1 over the first third of training. Writes
``posterior_samples.png`` (data vs posterior sample paths of a few series), ``prior_samples.png``
(samples of the learned prior SDE vs fresh OU paths, with their mean and spread), ``loss.png`` and
``results.md``/``results.json`` into the run folder.

Reference:
    X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud, "Scalable Gradients for Stochastic Differential
    Equations", AISTATS 2020, section 7.2 (latent SDE on time series).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import torch

from ..nn.neural_sde import LatentSDE
from ..sde import BrownianInterval, sdeint
from ._args import SettingsError, checked_settings, diverged_if_solve_fails, positive_float, positive_int, random_seed
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

HELP = "Train a latent SDE (Li et al. 2020) on noisy Ornstein-Uhlenbeck sample paths; plots posterior samples."


@dataclasses.dataclass(frozen=True)
class LatentSDESettings:
    """Settings of one run (defaults: about a minute on one CPU core)."""

    iters: int = 400
    n_paths: int = 64
    n_obs: int = 25
    t_max: float = 2.0
    theta: float = 2.0
    mu: float = 0.5
    sigma: float = 0.3
    y0_mean: float = -0.5
    obs_noise: float = 0.03
    batch_size: int = 32
    latent_dim: int = 4
    hidden: int = 32
    lr: float = 1e-2
    dt: float = 0.04
    seed: int = 0
    checkpoint_every: int = 100  #: training iterations between checkpoints (with a run folder)

    def __post_init__(self):
        for name in ("iters", "n_paths", "n_obs", "batch_size", "latent_dim", "hidden", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        finite = all(math.isfinite(v) for v in (self.t_max, self.lr, self.dt, self.obs_noise))
        if self.n_obs < 2 or not finite or min(self.t_max, self.lr, self.dt, self.obs_noise) <= 0:
            raise ValueError("need n_obs >= 2 and positive finite t_max, lr, dt and obs_noise.")


class _OU:
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, s: LatentSDESettings):
        self.s = s

    def f(self, t, y):
        return self.s.theta * (self.s.mu - y)

    def g(self, t, y):
        return torch.full_like(y, self.s.sigma)


def make_data(s: LatentSDESettings, n: int | None = None, seed: int | None = None):
    """Observation times (n_obs,), clean paths and noisy observations, each (n_obs, n, 1)."""
    gen = torch.Generator().manual_seed(s.seed if seed is None else seed)
    n = s.n_paths if n is None else n
    ts = torch.linspace(0.0, s.t_max, s.n_obs)
    y0 = s.y0_mean + 0.2 * torch.randn(n, 1, generator=gen)
    entropy = int(torch.randint(0, 2**31, (), generator=gen))
    bm = BrownianInterval(0.0, s.t_max, (n, 1), entropy=entropy, dt=s.t_max / 400)
    with torch.no_grad():
        clean = sdeint(_OU(s), y0, ts, bm=bm, method="milstein", dt=s.t_max / 400)
    noisy = clean + s.obs_noise * torch.randn(clean.shape, generator=gen)
    return ts, clean, noisy


#: Settings a resumed run may change; every other one shapes the trained weights.
RESUMABLE_SETTINGS = frozenset({"checkpoint_every"})
_OPTIONS = {"iters": "--iters (--quick)"}


def _diverged(s: LatentSDESettings, when: str, detail: str) -> SettingsError:
    """The error that ends a run whose weights have diverged: the message names ``--lr``.

    Without it a run with a too large learning rate stopped with a traceback from the solver about a NaN
    "y0" and "the initial state", which the command's user never chose.
    """
    return SettingsError(f"training diverged {when} ({detail}); lower --lr (now {s.lr:g}).")


def train(s: LatentSDESettings, progress: bool = True, ckpts: Checkpoints | None = None) -> dict:
    """Generate the data, train the model and draw samples for the plots.

    Args:
        s: the settings.
        progress: show a progress bar.
        ckpts: where the training state (weights, optimizer, schedule, minibatch and global generators,
            history) is checkpointed (``checkpoints/latent_sde.pt``) and whether an interrupted run
            continues, to the same weights as one that was not interrupted (None: no checkpoints).

    Returns:
        dict with ``model``, ``ts``, ``clean``, ``noisy``, ``history`` and ``metrics``.

    Raises:
        CheckpointError, ResumeError: resuming from a damaged checkpoint, or one of other settings.
        SettingsError: the loss or q(z0 | x) stopped being finite (the learning rate is too large).
    """

    torch.manual_seed(s.seed)
    ts, clean, noisy = make_data(s)
    model = LatentSDE(1, s.latent_dim, hidden=s.hidden, obs_std=s.obs_noise, dt=s.dt)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.01 ** (1 / s.iters))
    hist: dict[str, list[float]] = {"iter": [], "loss": [], "kl": []}
    gen = torch.Generator().manual_seed(s.seed + 1)
    objects = {"model": model, "optimizer": opt, "scheduler": sched, "generator": gen}
    ckpt, done, hist, before = resume_loop(ckpts, "latent_sde", objects, hist, timed=True)
    start = time.perf_counter()
    bar = progress_bar(range(done + 1, s.iters + 1), desc="latent sde", enabled=progress)
    for it in bar:
        idx = torch.randperm(s.n_paths, generator=gen)[: s.batch_size]
        kl_weight = min(1.0, 3.0 * it / s.iters)
        try:
            with diverged_if_solve_fails(it, s.lr):
                out = model(noisy[:, idx], ts, kl_weight=kl_weight)
        except FloatingPointError:
            raise _diverged(s, f"at iteration {it}", "q(z0 | x) overflowed") from None
        if not bool(torch.isfinite(out.loss)):  # a NaN step would turn every weight NaN
            raise _diverged(s, f"at iteration {it}", f"the loss is {out.loss.item()}")
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        hist["iter"].append(it)
        hist["loss"].append(out.loss.item())
        hist["kl"].append(float((out.kl_path + out.kl_z0).detach()))
        bar.set_postfix(loss=f"{out.loss.item():.3f}")
        if ckpts is not None and ckpts.due(ckpt, it, s.iters):
            ckpts.save(ckpt, it, s.iters, objects, history=hist, seconds=before + time.perf_counter() - start)
    seconds = before + time.perf_counter() - start
    try:  # the last step may have diverged
        with torch.no_grad():
            post = model.sample_posterior(noisy, ts, n=1)
            prior = model.sample_prior(ts, 256)
            _, fresh, _ = make_data(s, n=256, seed=s.seed + 7)
            final = model(noisy, ts)
    except FloatingPointError:
        raise _diverged(s, "in the last iteration", "q(z0 | x) overflowed") from None
    metrics = {
        "iterations": s.iters,
        "final_loss": final.loss.item(),
        "posterior_mae": float((post - clean).abs().mean()),
        "obs_noise_mae": float((noisy - clean).abs().mean()),
        "prior_mean_error": float((prior.mean(1) - fresh.mean(1)).abs().mean()),
        "prior_std_error": float((prior.std(1) - fresh.std(1)).abs().mean()),
        "train_seconds": seconds,
    }
    return {
        "model": model,
        "ts": ts,
        "clean": clean,
        "noisy": noisy,
        "post": post,
        "prior": prior,
        "fresh": fresh,
        "history": hist,
        "metrics": metrics,
    }


def plot_results(folder: Path, r: dict) -> None:
    """Write posterior_samples.png (the first four series, or all of fewer), prior_samples.png and loss.png."""
    plt = pyplot()
    ts = r["ts"].numpy()
    model = r["model"]
    shown = min(4, r["noisy"].shape[1])  # --n-paths may be below 4
    rows, cols = (2, 2) if shown == 4 else (1, shown)
    fig, axes = plt.subplots(rows, cols, figsize=(9, 6 if rows == 2 else 3.5), sharex=True, squeeze=False)
    torch.manual_seed(1)
    for k, ax in enumerate(axes.flat):
        samples = model.sample_posterior(r["noisy"][:, k : k + 1], r["ts"], n=20)[..., 0].numpy()
        ax.plot(ts, samples, color="tab:blue", alpha=0.25, lw=0.8)
        ax.plot(ts, r["clean"][:, k, 0].numpy(), "g-", lw=1.5, label="true path")
        ax.plot(ts, r["noisy"][:, k, 0].numpy(), "k.", ms=4, label="observed")
        ax.set_title(f"series {k}: 20 posterior samples", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    save_figure(fig, folder / "posterior_samples.png", dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, paths, color in (("learned prior", r["prior"], "tab:blue"), ("true OU", r["fresh"], "tab:green")):
        p = paths[..., 0]
        ax.plot(ts, p[:, :15].numpy(), color=color, alpha=0.2, lw=0.7)
        mean, std = p.mean(1).numpy(), p.std(1).numpy()
        ax.plot(ts, mean, color=color, lw=2, label=f"{name} mean +- std")
        ax.fill_between(ts, mean - std, mean + std, color=color, alpha=0.15)
    ax.set_xlabel("t")
    ax.legend(fontsize=8)
    save_figure(fig, folder / "prior_samples.png", dpi=120)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(r["history"]["iter"], r["history"]["loss"], lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("negative ELBO per value")
    save_figure(fig, folder / "loss.png", dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LatentSDESettings()
    parser.add_argument("--iters", type=positive_int, default=d.iters, help=f"training iterations (default {d.iters})")
    parser.add_argument("--quick", action="store_true", help="a small budget (100 iterations)")
    parser.add_argument("--n-paths", type=positive_int, default=d.n_paths)
    parser.add_argument("--lr", type=positive_float, default=d.lr)
    parser.add_argument("--dt", type=positive_float, default=d.dt, help="SDE solver step")
    parser.add_argument("--seed", type=random_seed, default=d.seed)
    parser.add_argument("--out", default=None, help="run folder (default runs/sde-<timestamp>)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_resume_arguments(parser, d.checkpoint_every)


@interruptible("sde")
def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # small tensors: one thread is fastest
    iters = 100 if args.quick and args.iters == LatentSDESettings.iters else args.iters
    with checked_settings():
        s = LatentSDESettings(
            iters=iters,
            n_paths=args.n_paths,
            lr=args.lr,
            dt=args.dt,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
        )
    folder, ckpts = open_checkpointed_run(args, "sde", s, RESUMABLE_SETTINGS, _OPTIONS, run_kind="an sde run")
    r = train(s, progress=not args.no_progress, ckpts=ckpts)
    m = r["metrics"]
    meta = {
        "command": "sde",  # what `--resume` of another command is refused by (see _output.open_run)
        "data": f"OU dy = {s.theta} ({s.mu} - y) dt + {s.sigma} dW, noise std {s.obs_noise}",
        "settings": dataclasses.asdict(s),
    }
    table = write_results(folder, "results", [m], list(m), meta)
    plot_results(folder, r)
    print(table)
    print(
        f"final loss {m['final_loss']:.4f}; posterior MAE vs true paths {m['posterior_mae']:.4f} "
        f"(observation noise MAE {m['obs_noise_mae']:.4f})"
    )
    print(f"results and plots in {folder}")
    return 0
