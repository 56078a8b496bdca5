"""`hybrid-node spirals`: latent ODE against RNN baselines on irregularly sampled spirals (Table 2).

For every n in ``--n`` the latent ODE, an RNN and an RNN with time gaps are trained on n randomly kept
points of each noisy training window; each is then scored on a separate test set by the RMSE of its
predictions on the 100 points that follow the window against the noise-free spiral. Training state is
checkpointed atomically; ``--resume`` continues an interrupted run in the same ``--out`` folder.

Reference: R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural Ordinary Differential
Equations", NeurIPS 2018, Section 5.1, Table 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
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


QUICK = {"iters": 300, "rnn_iters": 300, "nspiral": 300, "ntest": 300, "batch_size": 300, "rtol": 1e-5, "atol": 1e-6}


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
    for key in ("iters", "rnn_iters", "nspiral", "ntest", "batch_size", "rtol", "atol"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if args.batch_size is None:  # full batch, as in the reference
        base["batch_size"] = base.get("nspiral", SpiralsSettings.nspiral)
    s = SpiralsSettings(
        ns=tuple(args.n), models=tuple(args.models), lr=args.lr, seed=args.seed,
        checkpoint_every=args.checkpoint_every, **base,
    )
    if min(s.ns) < 2 or max(s.ns) > 100:
        raise ValueError("--n values must lie between 2 and 100 (the window has 100 points).")
    if s.iters < 0 or s.rnn_iters < 0 or s.nspiral < 1 or s.ntest < 1 or s.batch_size < 1:
        raise ValueError("--iters/--rnn-iters must be >= 0 and --nspiral/--ntest/--batch-size >= 1.")
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
    on_step: Callable[[int, float], None],
) -> torch.nn.Module:
    """Train one model, checkpointing every ``s.checkpoint_every`` steps; resumes from ``ckpt``."""
    iters = s.iters if name == "latent_ode" else s.rnn_iters
    torch.manual_seed(s.seed * 1000 + n)
    model = build_model(name, s)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    start, history = 0, []
    state = load_checkpoint(ckpt) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        on_step(start, history[-1] if history else float("nan"))
    for step in range(start, iters):
        if s.batch_size < train.batch_size:
            batch = select(train, torch.randperm(train.batch_size)[: s.batch_size])
        else:
            batch = train
        opt.zero_grad()
        loss = model_loss(name, model, batch)
        loss.backward()
        opt.step()
        history.append(loss.item())
        on_step(1, history[-1])
        done = step + 1
        if done % s.checkpoint_every == 0 or done == iters:
            save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done, "history": history})
    model.history = history
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
    total = sum((s.iters if m == "latent_ode" else s.rnn_iters) for m in s.models) * len(s.ns)
    bar = tqdm(total=total, desc="spirals", disable=not progress)
    models: dict[tuple, torch.nn.Module] = {}
    for n in s.ns:
        train = train_data.subsample(n, seed=s.seed + n)
        test = test_data.subsample(n, seed=s.seed + 10_000 + n)
        for name in s.models:
            key = f"{name}/n={n}"
            bar.set_postfix_str(key)
            t_start = time.time()

            def on_step(k: int, loss: float, key: str = key) -> None:
                bar.update(k)
                bar.set_postfix_str(f"{key} loss={loss:.4g}")

            model = train_one(name, n, s, train, out / "checkpoints" / f"{name}-n{n}.pt", resume, on_step)
            pred = predict(name, model, test, test_data.extrap_times)
            entry = {"rmse": rmse(pred, test_data.extrap), "final_loss": model.history[-1] if model.history else None,
                     "iterations": len(model.history), "seconds": round(time.time() - t_start, 1),
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
