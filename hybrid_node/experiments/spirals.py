"""`hybrid-node spirals`: latent ODE against RNN baselines on irregularly sampled spirals (Table 2).

For every n in ``--n`` the latent ODE, an RNN and an RNN with time gaps are trained on n randomly kept
points of each noisy training window; each is then scored on a separate test set by the RMSE of its
predictions on the 100 points that follow the window against the noise-free spiral. Training state is
checkpointed atomically; ``--resume`` continues an interrupted run in the same ``--out`` folder.

Training schedule: Adam with the learning rate decayed from ``lr`` to ``lr * lr_final_ratio`` (cosine,
Loshchilov and Hutter 2017, or exponential), and, every ``val_every`` steps, the extrapolation RMSE on a
separate validation set (never the test set) decide which iterate is kept and scored ("keep the best
iterate", i.e. early stopping by held-out error; Prechelt 1998): by default the one with the lowest
validation loss (negative ELBO for the latent ODE, one-step-ahead loss for the RNNs). Selecting by
validation extrapolation RMSE can keep an almost untrained model that predicts each spiral's centre.

References: I. Loshchilov, F. Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017;
L. Prechelt, "Early Stopping - But When?", Neural Networks: Tricks of the Trade, 1998.

Reference: R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural Ordinary Differential
Equations", NeurIPS 2018, Section 5.1, Table 2.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.irregular import IrregularBatch, select
from ..data.spirals import SpiralConfig, SpiralData, make_spirals
from ..nn.latent_ode import LatentODE
from ..nn.rnn_baselines import RNNBaseline
from ..training.checkpoint import load_checkpoint, save_checkpoint

HELP = "Latent ODE vs RNN baselines on irregularly sampled bi-directional spirals (paper's Table 2)."

PAPER_RMSE = {
    "rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813},
    "latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346},
}
MODEL_NAMES = {"latent_ode": "Latent ODE", "rnn": "RNN", "rnn_gaps": "RNN + time gaps"}


@dataclasses.dataclass(frozen=True)
class SpiralsSettings:
    """Budget and hyperparameters of one run (defaults: the paper's full run)."""

    ns: tuple = (30, 50, 100)
    models: tuple = ("latent_ode", "rnn", "rnn_gaps")
    iters: int = 2000
    rnn_iters: int = 2000
    nspiral: int = 1000
    ntest: int = 1000
    batch_size: int = 1000
    lr: float = 0.01
    rtol: float = 1e-7
    atol: float = 1e-9
    seed: int = 0
    checkpoint_every: int = 50
    lr_decay: str = "cosine"
    lr_final_ratio: float = 0.1
    nval: int = 200
    val_every: int = 50
    select: str = "val_loss"


QUICK = {"iters": 300, "rnn_iters": 300, "nspiral": 300, "ntest": 300, "batch_size": 300, "rtol": 1e-5, "atol": 1e-6,
         "nval": 100, "val_every": 25}
LR_DECAYS = ("none", "cosine", "exp")
SELECTIONS = ("val_loss", "val_rmse", "last")


def learning_rate(s: SpiralsSettings, step: int, iters: int) -> float:
    """Learning rate of step ``step`` (0-based) of ``iters``: ``s.lr`` decayed to ``s.lr * s.lr_final_ratio``.

    "cosine": lr_min + (lr - lr_min) (1 + cos(pi step / iters)) / 2 (Loshchilov and Hutter 2017, without
    restarts); "exp": lr * ratio^(step / iters); "none": constant. Stateless, so a resumed run follows
    the same schedule (as long as ``iters`` is unchanged).
    """
    frac = step / max(iters, 1)
    low = s.lr * s.lr_final_ratio
    if s.lr_decay == "cosine":
        return low + (s.lr - low) * 0.5 * (1.0 + math.cos(math.pi * frac))
    if s.lr_decay == "exp":
        return s.lr * s.lr_final_ratio**frac
    return s.lr


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SpiralsSettings()
    parser.add_argument("--n", type=int, nargs="+", default=list(d.ns), help="observed points per series")
    parser.add_argument("--models", nargs="+", default=list(d.models), choices=list(MODEL_NAMES))
    parser.add_argument("--iters", type=int, default=None, help=f"latent ODE iterations (default {d.iters})")
    parser.add_argument("--rnn-iters", type=int, default=None, help=f"RNN iterations (default {d.rnn_iters})")
    parser.add_argument("--nspiral", type=int, default=None, help=f"training series (default {d.nspiral})")
    parser.add_argument("--ntest", type=int, default=None, help=f"test series (default {d.ntest})")
    parser.add_argument("--batch-size", type=int, default=None, help="minibatch size (default: all series)")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--lr-decay", choices=LR_DECAYS, default=d.lr_decay,
                        help=f"learning-rate schedule over the run (default {d.lr_decay})")
    parser.add_argument("--lr-final-ratio", type=float, default=d.lr_final_ratio,
                        help=f"final lr / --lr for the decay (default {d.lr_final_ratio})")
    parser.add_argument("--nval", type=int, default=None,
                        help=f"validation series for choosing the kept iterate (default {d.nval})")
    parser.add_argument("--val-every", type=int, default=None,
                        help=f"steps between validation scores (default {d.val_every})")
    parser.add_argument("--select", choices=SELECTIONS, default=d.select,
                        help="iterate to keep and score: lowest validation loss (negative ELBO for the latent "
                             "ODE), lowest validation extrapolation RMSE, or the last one (default "
                             f"{d.select})")
    parser.add_argument("--rtol", type=float, default=None, help=f"latent solve rtol (default {d.rtol})")
    parser.add_argument("--atol", type=float, default=None, help=f"latent solve atol (default {d.atol})")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--quick", action="store_true", help="small budget (under 10 minutes on 2 CPU cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/spirals-<timestamp>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoints (with --iters 0 --rnn-iters 0: "
                             "only evaluate the stored checkpoints)")
    parser.add_argument("--no-plots", action="store_true")


def settings_from_args(args: argparse.Namespace) -> SpiralsSettings:
    base = dict(QUICK) if args.quick else {}
    for key in ("iters", "rnn_iters", "nspiral", "ntest", "batch_size", "rtol", "atol", "nval", "val_every"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if args.batch_size is None:  # full batch, as in the reference
        base["batch_size"] = base.get("nspiral", SpiralsSettings.nspiral)
    s = SpiralsSettings(
        ns=tuple(args.n), models=tuple(args.models), lr=args.lr, seed=args.seed,
        checkpoint_every=args.checkpoint_every, lr_decay=args.lr_decay, lr_final_ratio=args.lr_final_ratio,
        select=args.select, **base,
    )
    if min(s.ns) < 2 or max(s.ns) > 100:
        raise ValueError("--n values must lie between 2 and 100 (the window has 100 points).")
    if s.iters < 0 or s.rnn_iters < 0 or s.nspiral < 1 or s.ntest < 1 or s.batch_size < 1:
        raise ValueError("--iters/--rnn-iters must be >= 0 and --nspiral/--ntest/--batch-size >= 1.")
    if s.nval < 1 or s.val_every < 1 or not 0 < s.lr_final_ratio <= 1:
        raise ValueError("--nval and --val-every must be >= 1 and --lr-final-ratio in (0, 1].")
    if s.select not in SELECTIONS or s.lr_decay not in LR_DECAYS:
        raise ValueError(f"--select must be one of {SELECTIONS} and --lr-decay one of {LR_DECAYS}.")
    return s


def build_model(name: str, s: SpiralsSettings) -> torch.nn.Module:
    if name == "latent_ode":
        return LatentODE(rtol=s.rtol, atol=s.atol)
    return RNNBaseline(obs_dim=2, hidden=25, use_time_gaps=(name == "rnn_gaps"))


def model_loss(name: str, model: torch.nn.Module, batch: IrregularBatch) -> torch.Tensor:
    return model(batch) if name == "latent_ode" else model.loss(batch)


def predict(name: str, model: torch.nn.Module, batch: IrregularBatch, times: torch.Tensor) -> torch.Tensor:
    """(B, T, 2) predictions at shared future ``times``."""
    with torch.no_grad():
        if name == "latent_ode":
            return model.predict(batch, times)
        return model.extrapolate(batch, times)


def rmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(torch.sqrt(((pred - target) ** 2).mean()))


def train_one(
    name: str, n: int, s: SpiralsSettings, train: IrregularBatch, ckpt: Path, resume: bool,
    on_step: Callable[[int, float], None], val: tuple[IrregularBatch, torch.Tensor, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Train one model, checkpointing every ``s.checkpoint_every`` steps; resumes from ``ckpt``.

    Args:
        name, n, s: model name, observed points per series, settings.
        train: training series.
        ckpt: checkpoint file.
        resume: continue from ``ckpt`` if it exists.
        on_step: progress callback (steps done, last loss).
        val: optional validation (series, target times, noise-free targets). Every ``s.val_every``
            steps and at the end the loss and the extrapolation RMSE on it are recorded in
            ``model.val_history``; with ``s.select`` "val_loss" / "val_rmse" the returned model holds
            the iterate with the lowest of that score.

    Returns:
        The trained model, with ``history`` (losses), ``val_history`` ([step, loss, RMSE] rows) and
        ``best_step`` (the step of the returned weights).
    """
    iters = s.iters if name == "latent_ode" else s.rnn_iters
    torch.manual_seed(s.seed * 1000 + n)
    model = build_model(name, s)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    start, history, val_history, best = 0, [], [], None
    state = load_checkpoint(ckpt) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        val_history, best = state.get("val_history", []), state.get("best")
        on_step(start, history[-1] if history else float("nan"))

    def validate(done: int) -> None:
        nonlocal best
        if val is None or (val_history and val_history[-1][0] == done):
            return
        score = rmse(predict(name, model, val[0], val[1]), val[2])
        with torch.no_grad():
            if name == "latent_ode":  # a fixed generator: the same z0 draws at every validation
                vloss = float(model.elbo(val[0], generator=torch.Generator().manual_seed(0)).loss)
            else:
                vloss = float(model.loss(val[0]))
        val_history.append([done, vloss, score])
        key = vloss if s.select == "val_loss" else score
        if best is None or "score" not in best or key < best["score"]:
            best = {"step": done, "score": key, "model": copy.deepcopy(model.state_dict())}

    for step in range(start, iters):
        if s.batch_size < train.batch_size:
            batch = select(train, torch.randperm(train.batch_size)[: s.batch_size])
        else:
            batch = train
        for group in opt.param_groups:
            group["lr"] = learning_rate(s, step, iters)
        opt.zero_grad()
        loss = model_loss(name, model, batch)
        loss.backward()
        opt.step()
        history.append(loss.item())
        on_step(1, history[-1])
        done = step + 1
        if done % s.val_every == 0 or done == iters:
            validate(done)
        if done % s.checkpoint_every == 0 or done == iters:
            save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done,
                                   "history": history, "val_history": val_history, "best": best})
    model.best_step = len(history)
    if s.select != "last" and best is not None:
        model.load_state_dict(best["model"])
        model.best_step = best["step"]
    model.history = history
    model.val_history = val_history
    return model


def run_experiment(s: SpiralsSettings, out: Path, resume: bool = False, plots: bool = True, progress: bool = True) -> dict:
    """Train and score every (model, n); returns the results dict also written to ``results.json``."""
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if resume and results_path.exists() else {}
    results["settings"] = dataclasses.asdict(s)
    rows = results.setdefault("rmse", {})
    cfg = SpiralConfig(nspiral=s.nspiral)
    train_data = make_spirals(cfg, seed=s.seed)
    test_data = make_spirals(dataclasses.replace(cfg, nspiral=s.ntest), seed=s.seed + 10_000)
    val_data = make_spirals(dataclasses.replace(cfg, nspiral=s.nval), seed=s.seed + 20_000)
    total = sum((s.iters if m == "latent_ode" else s.rnn_iters) for m in s.models) * len(s.ns)
    bar = tqdm(total=total, desc="spirals", disable=not progress)
    models: dict[tuple, torch.nn.Module] = {}
    for n in s.ns:
        train = train_data.subsample(n, seed=s.seed + n)
        test = test_data.subsample(n, seed=s.seed + 10_000 + n)
        val = (val_data.subsample(n, seed=s.seed + 20_000 + n), val_data.extrap_times, val_data.extrap)
        for name in s.models:
            key = f"{name}/n={n}"
            bar.set_postfix_str(key)
            t_start = time.time()

            def on_step(k: int, loss: float, key: str = key) -> None:
                bar.update(k)
                bar.set_postfix_str(f"{key} loss={loss:.4g}")

            model = train_one(name, n, s, train, out / "checkpoints" / f"{name}-n{n}.pt", resume, on_step, val)
            pred = predict(name, model, test, test_data.extrap_times)
            entry = {"rmse": rmse(pred, test_data.extrap), "final_loss": model.history[-1] if model.history else None,
                     "iterations": len(model.history), "kept_step": model.best_step,
                     "val": next((r[1:] for r in model.val_history if r[0] == model.best_step), None),
                     "val_history": model.val_history,
                     "seconds": round(time.time() - t_start, 1),
                     # Error grows with the horizon: RMSE over the first k targets only.
                     "rmse_first": {k: rmse(pred[:, :k], test_data.extrap[:, :k]) for k in (10, 25, 50)}}
            if name == "latent_ode":
                entry["recon_rmse"] = rmse(predict(name, model, test, test_data.times), test_data.clean)
            rows[key] = entry
            models[(name, n)] = model
            results_path.write_text(json.dumps(results, indent=2))
    bar.close()
    table = format_table(results, s)
    (out / "table2.md").write_text(table + "\n")
    if plots:
        for n in s.ns:
            plot_examples(out / f"spirals_n{n}.png", n, s, test_data, models)
    return results


def format_table(results: dict, s: SpiralsSettings) -> str:
    """Markdown Table 2: our RMSE beside the paper's for every model and n."""
    header = "| model | " + " | ".join(f"n={n} ours | n={n} paper" for n in s.ns) + " |"
    lines = [header, "|" + " --- |" * (1 + 2 * len(s.ns))]
    for name in s.models:
        cells = []
        for n in s.ns:
            entry = results["rmse"].get(f"{name}/n={n}")
            paper = PAPER_RMSE.get(name, {}).get(n)
            cells.append(f"{entry['rmse']:.4f}" if entry else "-")
            cells.append(f"{paper:.4f}" if paper else "-")
        lines.append(f"| {MODEL_NAMES[name]} | " + " | ".join(cells) + " |")
    recon = [results["rmse"].get(f"latent_ode/n={n}", {}).get("recon_rmse") for n in s.ns]
    if any(r is not None for r in recon):
        lines += ["", "Latent ODE reconstruction RMSE of the whole 100-point window from n points:",
                  "| " + " | ".join(f"n={n}" for n in s.ns) + " |", "|" + " --- |" * len(s.ns),
                  "| " + " | ".join("-" if r is None else f"{r:.4f}" for r in recon) + " |"]
    return "\n".join(lines)


def plot_examples(path: Path, n: int, s: SpiralsSettings, data: SpiralData, models: dict) -> None:
    """Observed points, latent ODE reconstruction and extrapolation, RNN extrapolation: one cw, one cc."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = data.subsample(n, seed=s.seed + 10_000 + n)
    picks = [int(torch.nonzero(data.clockwise)[0]), int(torch.nonzero(~data.clockwise)[0])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, i, title in zip(axes, picks, ["clockwise", "counter-clockwise"]):
        one = select(test, torch.tensor([i]))
        ax.plot(*data.clean[i].T, color="0.6", lw=1, label="true (window)")
        ax.plot(*data.extrap[i].T, color="0.6", lw=1, ls="--", label="true (extrapolation)")
        ax.scatter(*one.values[0].T, s=10, color="k", label=f"observed (n={n})", zorder=3)
        if ("latent_ode", n) in models:
            m = models[("latent_ode", n)]
            rec = predict("latent_ode", m, one, data.times)[0]
            ext = predict("latent_ode", m, one, data.extrap_times)[0]
            ax.plot(*rec.T, color="tab:blue", label="latent ODE reconstruction")
            ax.plot(*ext.T, color="tab:red", label="latent ODE extrapolation")
        for name, color in (("rnn", "tab:olive"), ("rnn_gaps", "tab:green")):
            if (name, n) in models:
                ext = predict(name, models[(name, n)], one, data.extrap_times)[0]
                ax.plot(*ext.T, color=color, ls=":", label=f"{MODEL_NAMES[name]} extrapolation")
        ax.set_title(f"{title} spiral, n={n}")
        ax.set_aspect("equal", adjustable="datalim")
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    s = settings_from_args(args)
    out = args.out or Path("runs") / f"spirals-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out pointing at the run folder to continue.")
    results = run_experiment(s, out, resume=args.resume, plots=not args.no_plots)
    print(format_table(results, s))
    print(f"results written to {out}")
    return 0
