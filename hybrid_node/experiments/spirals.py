"""`hybrid-node spirals`: latent ODE against RNN baselines on irregularly sampled spirals (Table 2).

For every n in ``--n`` the latent ODE, an RNN and an RNN with time gaps are trained on n randomly kept
points of each noisy training window; each is then scored on a separate test set by the RMSE of its
predictions on the 100 points that follow the window against the noise-free spiral. Training state is
checkpointed atomically; ``--resume`` continues an interrupted run in the same ``--out`` folder.

Training objective (``objective``): "window" trains on the observed window points only (the latent ODE
on its ELBO, the RNNs on one-step-ahead prediction). "forecast" (default) also scores the 100 points
that follow each *training* window, which are known for training series: the latent ODE's likelihood
covers the window and those points while its encoder still reads only the n observed window points
(as Rubanova et al. 2019 train latent ODEs for extrapolation), and the RNNs are trained on the same
points: by default one-step-ahead over window + future with the true previous point as input
(``rnn_forecast="teacher"``), or on their free-running forecast of them (``"rollout"``, which on the
spirals collapses to predicting each spiral's centre). Test series and the score are the same under
both objectives; at test time every model extrapolates from the n observed window points alone.

Recurrent cell (``cell``): the latent ODE's recognition network and both RNN baselines use the same
cell with 25 units, a GRU by default (Cho et al. 2014; the paper's Elman cell with "rnn"). With the
Elman cell the latent ODE's amortised inference is its weak part: the trained decoder and dynamics fit
the test spirals to 0.06 RMSE from a z0 optimised per series, while the encoder's z0 extrapolates at 0.25.

Inference at test time (``refine``): besides the encoder's posterior mean, the latent ODE is scored
with z0 moved by a few Adam steps towards the posterior mode of its generative model given the
observed points (:meth:`LatentODE.refine_z0`; semi-amortised inference, Kim et al. 2018); the
validation RMSE picks the number of steps among ``refine`` (0 keeps the encoder's mean). And with the
empirical prior: the posterior mean of the extrapolation when the prior on z0 is the aggregate
posterior of the training windows (:class:`~hybrid_node.nn.empirical_prior.EmpiricalPrior`; nothing
tuned).

Training schedule: Adam on minibatches of ``batch_size`` series, the gradient's global norm clipped
at ``grad_clip`` (Pascanu et al. 2013: the latent ODE's loss, a sum over about 130 points per series,
has gradient norms of 1e3-1e4 and rare far larger spikes that otherwise undo hundreds of steps), the
learning rate decayed from ``lr`` to ``lr * lr_final_ratio`` (cosine, Loshchilov and Hutter 2017, or
exponential), and, every ``val_every`` steps, the extrapolation RMSE on a
separate validation set (never the test set) decide which iterate is kept and scored ("keep the best
iterate", i.e. early stopping by held-out error; Prechelt 1998): by default the one with the lowest
validation loss (negative ELBO for the latent ODE, one-step-ahead loss for the RNNs). Selecting by
validation extrapolation RMSE can keep an almost untrained model that predicts each spiral's centre.

References: Y. Rubanova, R. T. Q. Chen, D. Duvenaud, "Latent ODEs for Irregularly-Sampled Time Series",
NeurIPS 2019 (extrapolation training); R. J. Williams, D. Zipser, "A Learning Algorithm for
Continually Running Fully Recurrent Neural Networks", Neural Computation 1 (1989) (teacher forcing);
I. Loshchilov, F. Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017;
Y. Kim, S. Wiseman, A. C. Miller, D. Sontag, A. M. Rush, "Semi-Amortized Variational Autoencoders",
ICML 2018; L. Prechelt, "Early Stopping - But When?", Neural Networks: Tricks of the Trade, 1998; R. Pascanu,
T. Mikolov, Y. Bengio, "On the difficulty of training recurrent neural networks", ICML 2013; K. Cho et al.,
"Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine Translation",
EMNLP 2014.

Reference: R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural Ordinary Differential
Equations", NeurIPS 2018, Section 5.1, Table 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch

from .._errors import CheckpointError
from ..data.spirals import SpiralConfig, SpiralData, bayes_forecast, make_spirals
from ..irregular import IrregularBatch, select
from ..nn.empirical_prior import EmpiricalPrior
from ..nn.latent_ode import LatentODE, RecognitionRNN, descend_z0
from ..nn.rnn_baselines import RNNBaseline
from ..training.atomic import atomic_savefig, atomic_write_json, atomic_write_text, read_json
from ..training.checkpoint import load_checkpoint
from ._args import (
    checked_settings,
    given_settings,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    random_seed,
)
from ._output import Checkpoints, check_same_settings, has_run_files, interruptible, open_run, resume_settings
from ._output import check_resumable as _check_resumable
from ._output import settings_differences as _settings_differences
from ._progress import progress_bar

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
    iters: int = 15000
    rnn_iters: int = 6000
    nspiral: int = 1000
    ntest: int = 1000
    batch_size: int = 100
    lr: float = 0.01
    rtol: float = 1e-7
    atol: float = 1e-9
    seed: int = 0
    checkpoint_every: int = 50
    lr_decay: str = "cosine"
    lr_final_ratio: float = 0.1
    nval: int = 1000
    val_every: int = 50
    select: str = "val_loss"
    objective: str = "forecast"
    rnn_forecast: str = "teacher"
    grad_clip: float = 1000.0
    cell: str = "gru"
    restarts: int = 2
    refine: tuple = (0, 10, 25, 50, 100)
    refine_lr: float = 0.05


QUICK = {
    "iters": 300,
    "rnn_iters": 300,
    "nspiral": 300,
    "ntest": 300,
    "batch_size": 300,
    "rtol": 1e-5,
    "atol": 1e-6,
    "nval": 100,
    "val_every": 25,
    "restarts": 1,
}
LR_DECAYS = ("none", "cosine", "exp")
SELECTIONS = ("val_loss", "val_rmse", "last")
OBJECTIVES = ("window", "forecast")
RNN_FORECASTS = ("teacher", "rollout")
CELLS = RecognitionRNN.CELLS


@dataclasses.dataclass(frozen=True)
class Future:
    """The points after each training window: what the forecasting objective scores.

    Attributes:
        times: (T,) times after the window, on the window's clock.
        values: (B, T, D) noisy observations there (one row per series of the batch).
    """

    times: torch.Tensor
    values: torch.Tensor

    def select(self, index: torch.Tensor) -> Future:
        return Future(self.times, self.values[index])


def with_future(batch: IrregularBatch, future: Future) -> IrregularBatch:
    """The batch's observations followed by the future points: the forecasting likelihood's targets.

    Raises:
        ValueError: if the future does not match the batch or starts before its last time.
    """
    if future.values.shape[:1] != (batch.batch_size,) or future.values.shape[1:] != (
        future.times.numel(),
        batch.obs_dim,
    ):
        raise ValueError(
            f"future values must have shape ({batch.batch_size}, {future.times.numel()}, {batch.obs_dim}); "
            f"got {tuple(future.values.shape)}."
        )
    if bool((future.times[0] <= batch.times[:, -1]).any()):
        raise ValueError("future times must come after every observation of the batch.")
    times = torch.cat([batch.times, future.times.to(batch.times.dtype).expand(batch.batch_size, -1)], dim=1)
    values = torch.cat([batch.values, future.values.to(batch.values.dtype)], dim=1)
    mask = torch.cat([batch.mask, torch.ones_like(future.values, dtype=batch.mask.dtype)], dim=1)
    return IrregularBatch(times=times, values=values, mask=mask)


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


#: Settings a resumed run may change: the budget, which models and n run, and what happens after
#: training. Every other setting shapes the trained weights, so a checkpoint only continues under it.
RESUMABLE_SETTINGS = frozenset(
    {"ns", "models", "iters", "rnn_iters", "checkpoint_every", "ntest", "restarts", "refine", "refine_lr"}
)
_OPTIONS = {"ns": "--n", "refine": "--refine-steps"}


def training_settings(s: SpiralsSettings) -> dict[str, Any]:
    """The settings that shape the trained weights (all but :data:`RESUMABLE_SETTINGS`), JSON-compatible.

    Args:
        s: the run's settings.

    Returns:
        A dict of plain values (tuples as lists), as stored in checkpoints and ``results.json``.
    """
    return resume_settings(s, RESUMABLE_SETTINGS)


def settings_differences(stored: Mapping[str, Any], s: SpiralsSettings) -> list[str]:
    """The command-line options whose value differs between a stored run and ``s``.

    Args:
        stored: settings saved by an earlier invocation (:func:`training_settings` or the full dict of
            ``results.json``); keys in :data:`RESUMABLE_SETTINGS` are ignored.
        s: the settings given now.

    Returns:
        One ``"--option stored (now given)"`` string per differing setting, empty when they agree.
    """
    return _settings_differences(stored, training_settings(s), RESUMABLE_SETTINGS, _OPTIONS)


def _check_same_settings(stored: Mapping[str, Any], s: SpiralsSettings, where: Path) -> None:
    check_same_settings(stored, training_settings(s), where, RESUMABLE_SETTINGS, _OPTIONS)


def _checkpoints(s: SpiralsSettings, resume: bool, folder: Path | None = None) -> Checkpoints:
    """How the training runs of ``s`` checkpoint and resume (their files are named by :func:`checkpoint_path`)."""
    return Checkpoints(
        folder, "spirals", training_settings(s), RESUMABLE_SETTINGS, s.checkpoint_every, resume, _OPTIONS
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SpiralsSettings()
    parser.add_argument("--n", type=positive_int, nargs="+", default=list(d.ns), help="observed points per series")
    parser.add_argument("--models", nargs="+", default=list(d.models), choices=list(MODEL_NAMES))
    parser.add_argument(
        "--iters", type=nonnegative_int, default=None, help=f"latent ODE iterations (default {d.iters})"
    )
    parser.add_argument(
        "--rnn-iters", type=nonnegative_int, default=None, help=f"RNN iterations (default {d.rnn_iters})"
    )
    parser.add_argument("--nspiral", type=positive_int, default=None, help=f"training series (default {d.nspiral})")
    parser.add_argument("--ntest", type=positive_int, default=None, help=f"test series (default {d.ntest})")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help=f"minibatch size (default {d.batch_size}; --quick: all series)",
    )
    parser.add_argument("--lr", type=positive_float, default=d.lr)
    parser.add_argument(
        "--lr-decay",
        choices=LR_DECAYS,
        default=d.lr_decay,
        help=f"learning-rate schedule over the run (default {d.lr_decay})",
    )
    parser.add_argument(
        "--lr-final-ratio",
        type=positive_float,
        default=d.lr_final_ratio,
        help=f"final lr / --lr for the decay (default {d.lr_final_ratio})",
    )
    parser.add_argument(
        "--nval",
        type=positive_int,
        default=None,
        help=f"validation series for choosing the kept iterate (default {d.nval})",
    )
    parser.add_argument(
        "--val-every", type=positive_int, default=None, help=f"steps between validation scores (default {d.val_every})"
    )
    parser.add_argument(
        "--select",
        choices=SELECTIONS,
        default=d.select,
        help="iterate to keep and score: lowest validation loss (negative ELBO for the latent "
        "ODE), lowest validation extrapolation RMSE, or the last one (default "
        f"{d.select})",
    )
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=d.objective,
        help="training targets: the observed window points only ('window', the plain ELBO / "
        "one-step-ahead loss), or also the 100 points after each training window "
        f"('forecast'; the encoder still sees only the window) (default {d.objective})",
    )
    parser.add_argument(
        "--rnn-forecast",
        choices=RNN_FORECASTS,
        default=d.rnn_forecast,
        help="how the RNNs learn the future points under --objective forecast: one-step-ahead "
        "prediction over window + future with the true previous point as input "
        "('teacher'), or their free-running forecast after the window ('rollout') "
        f"(default {d.rnn_forecast})",
    )
    parser.add_argument(
        "--grad-clip",
        type=nonnegative_float,
        default=d.grad_clip,
        help=f"clip the gradient's global norm to this before each Adam step, 0 to turn off (default {d.grad_clip:g})",
    )
    parser.add_argument(
        "--cell",
        choices=CELLS,
        default=d.cell,
        help="recurrent cell (25 units) of the latent ODE's recognition network and of both RNN "
        "baselines: Elman tanh cell or GRU (default %(default)s)",
    )
    parser.add_argument(
        "--restarts",
        type=positive_int,
        default=None,
        help="independently initialised training runs per model and n; the one with the best "
        f"validation score (the --select score of its kept iterate) is scored (default {d.restarts})",
    )
    parser.add_argument(
        "--refine-steps",
        type=nonnegative_int,
        nargs="+",
        default=list(d.refine),
        help="candidate numbers of Adam steps that move the latent ODE's z0 from the encoder's "
        "mean towards the posterior mode given the observed points (LatentODE.refine_z0); "
        "the validation RMSE picks one, 0 alone turns it off (default %(default)s)",
    )
    parser.add_argument(
        "--refine-lr",
        type=positive_float,
        default=d.refine_lr,
        help="Adam learning rate of that refinement (default %(default)s)",
    )
    parser.add_argument("--rtol", type=nonnegative_float, default=None, help=f"latent solve rtol (default {d.rtol})")
    parser.add_argument("--atol", type=nonnegative_float, default=None, help=f"latent solve atol (default {d.atol})")
    parser.add_argument("--seed", type=random_seed, default=d.seed)
    parser.add_argument("--checkpoint-every", type=positive_int, default=d.checkpoint_every)
    parser.add_argument("--quick", action="store_true", help="small budget (under 10 minutes on 2 CPU cores)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (default 1: ops on networks 20-25 units wide are too small to split, and "
        "on a busy machine more threads mostly wait for each other)",
    )
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/spirals-<timestamp>)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoints (with --iters 0 --rnn-iters 0: "
        "only evaluate the stored checkpoints)",
    )
    parser.add_argument("--no-plots", action="store_true")


def settings_from_args(args: argparse.Namespace) -> SpiralsSettings:
    base = given_settings(
        args,
        QUICK,
        ("iters", "rnn_iters", "nspiral", "ntest", "batch_size", "rtol", "atol", "nval", "val_every", "restarts"),
    )
    s = SpiralsSettings(
        ns=tuple(args.n),
        models=tuple(args.models),
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        lr_decay=args.lr_decay,
        lr_final_ratio=args.lr_final_ratio,
        select=args.select,
        objective=args.objective,
        rnn_forecast=args.rnn_forecast,
        grad_clip=args.grad_clip,
        cell=args.cell,
        refine=tuple(sorted(set(args.refine_steps))),
        refine_lr=args.refine_lr,
        **base,
    )
    if min(s.ns) < 2 or max(s.ns) > 100:
        raise ValueError("--n values must lie between 2 and 100 (the window has 100 points).")
    if s.iters < 0 or s.rnn_iters < 0 or min(s.nspiral, s.ntest, s.batch_size, s.restarts) < 1:
        raise ValueError("--iters/--rnn-iters must be >= 0 and --nspiral/--ntest/--batch-size/--restarts >= 1.")
    if s.nval < 1 or s.val_every < 1 or not 0 < s.lr_final_ratio <= 1 or not s.grad_clip >= 0:
        raise ValueError("--nval and --val-every must be >= 1, --lr-final-ratio in (0, 1] and --grad-clip >= 0.")
    if min(s.refine) < 0 or not s.refine_lr > 0:
        raise ValueError("--refine-steps must be >= 0 and --refine-lr > 0.")
    if not (math.isfinite(s.lr) and s.lr > 0) or s.checkpoint_every < 1:
        raise ValueError("--lr must be a finite number > 0 and --checkpoint-every >= 1.")
    if (
        s.select not in SELECTIONS
        or s.lr_decay not in LR_DECAYS
        or s.objective not in OBJECTIVES
        or s.rnn_forecast not in RNN_FORECASTS
        or s.cell not in CELLS
    ):
        raise ValueError(
            f"--select must be one of {SELECTIONS}, --lr-decay one of {LR_DECAYS}, --objective "
            f"one of {OBJECTIVES}, --rnn-forecast one of {RNN_FORECASTS} and --cell one of {CELLS}."
        )
    return s


def _latent(model: torch.nn.Module) -> LatentODE:
    if not isinstance(model, LatentODE):
        raise TypeError(f"the latent_ode model must be a LatentODE, got {type(model).__name__}.")
    return model


def _rnn(model: torch.nn.Module) -> RNNBaseline:
    if not isinstance(model, RNNBaseline):
        raise TypeError(f"an RNN model must be an RNNBaseline, got {type(model).__name__}.")
    return model


def build_model(name: str, s: SpiralsSettings) -> LatentODE | RNNBaseline:
    if name == "latent_ode":
        return LatentODE(rtol=s.rtol, atol=s.atol, encoder=s.cell)
    return RNNBaseline(obs_dim=2, hidden=25, use_time_gaps=(name == "rnn_gaps"), cell=s.cell)


def model_loss(
    name: str,
    model: torch.nn.Module,
    batch: IrregularBatch,
    future: Future | None = None,
    generator: torch.Generator | None = None,
    rnn_forecast: str = "teacher",
) -> torch.Tensor:
    """Training loss: on the window only, or with ``future`` also on the points after it.

    Latent ODE: negative ELBO whose likelihood covers the window (and the future points; the encoder
    reads only the window). RNNs: one-step-ahead error on the window; with ``future`` and
    ``rnn_forecast`` "teacher" the same error over window + future (teacher forcing, Williams and Zipser
    1989), with "rollout" the window's error plus that of the free-running forecast of the future.
    """
    if name == "latent_ode":
        targets = None if future is None else with_future(batch, future)
        return _latent(model).elbo(batch, generator=generator, targets=targets).loss
    rnn = _rnn(model)
    if future is None:
        return rnn.loss(batch)
    if rnn_forecast == "teacher":
        return rnn.loss(with_future(batch, future))
    return rnn.forecast_loss(batch, future.times, future.values)


def predict(name: str, model: torch.nn.Module, batch: IrregularBatch, times: torch.Tensor) -> torch.Tensor:
    """(B, T, 2) predictions at shared future ``times``."""
    with torch.no_grad():
        if name == "latent_ode":
            return _latent(model).predict(batch, times)
        return _rnn(model).extrapolate(batch, times)


def rmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(torch.sqrt(((pred - target) ** 2).mean()))


HORIZONS = (10, 25, 50)


def breakdown(pred: torch.Tensor, data: SpiralData) -> dict:
    """Extrapolation RMSE split by horizon, direction and window start (all against noise-free targets).

    Returns:
        ``rmse_first`` (over the first k targets, k in ``HORIZONS``), ``rmse_direction`` (clockwise /
        counter-clockwise series) and ``rmse_start`` (windows starting before / from grid index 200:
        the later ones extrapolate into the last stretch of the grid, where the clockwise radius grows
        fastest).
    """
    target, cw, early = data.extrap, data.clockwise, data.start_index < 200

    def part(mask: torch.Tensor) -> float | None:
        return rmse(pred[mask], target[mask]) if bool(mask.any()) else None

    return {
        "rmse_first": {k: rmse(pred[:, :k], target[:, :k]) for k in HORIZONS},
        "rmse_direction": {"clockwise": part(cw), "counter_clockwise": part(~cw)},
        "rmse_start": {"before_200": part(early), "from_200": part(~early)},
    }


def inference_gap(
    model: LatentODE, data: SpiralData, batch: IrregularBatch, steps: int = 400, lr: float = 0.02
) -> dict:
    """How much of a latent ODE's extrapolation error its encoder causes.

    Scores the extrapolation from the encoder's posterior mean, then optimises z0 per series (Adam,
    decoder and dynamics frozen) to fit the noise-free spiral over the window and the 100 following
    points, and scores again. A small fitted error beside a large encoder error means the amortised
    inference, not the generative model, limits the extrapolation.

    Args:
        model: a trained latent ODE.
        data: the spirals (noise-free window and targets) behind ``batch``.
        batch: the observed points the encoder reads.
        steps, lr: Adam iterations and learning rate of the fit.

    Returns:
        ``{"encoder": RMSE from the encoder's z0, "fitted": RMSE from the fitted z0}`` on the
        extrapolation targets, and ``"encoder_window"``, ``"fitted_window"``: the same on the window.
    """
    times = torch.cat([data.times, data.extrap_times])
    target = torch.cat([data.clean, data.extrap], dim=1)
    with torch.no_grad():
        z0 = model.encode(batch)[0]
        encoded = model.decode(z0, times)
        *_, z0 = descend_z0(z0, lambda z: ((model.decode(z, times) - target) ** 2).mean(), steps, lr)
        fitted = model.decode(z0, times)
    w = data.times.numel()
    return {
        "encoder": rmse(encoded[:, w:], data.extrap),
        "fitted": rmse(fitted[:, w:], data.extrap),
        "encoder_window": rmse(encoded[:, :w], data.clean),
        "fitted_window": rmse(fitted[:, :w], data.clean),
    }


def refinement(model: LatentODE, s: SpiralsSettings, val: tuple, test: tuple) -> dict:
    """Extrapolation RMSE of a latent ODE whose z0 is refined (:meth:`LatentODE.refine_z0`) for each of
    ``s.refine`` steps; the validation RMSE picks the number of steps.

    Args:
        model: a trained latent ODE.
        s: settings (``refine``, ``refine_lr``).
        val, test: (observed series, target times, noise-free targets).

    Returns:
        ``{"steps": the chosen number, "rmse": test RMSE with it, "val_rmse": {steps: RMSE},
        "test_rmse": {steps: RMSE}}``.
    """

    def scores(batch: IrregularBatch, times: torch.Tensor, target: torch.Tensor) -> dict:
        out = {}
        for k, z0 in enumerate(model.refine_z0(batch, max(s.refine), s.refine_lr)):
            if k in s.refine:
                with torch.no_grad():
                    out[k] = rmse(model.decode(z0, times), target)
        return out

    val_rmse, test_rmse = scores(*val), scores(*test)
    steps = min(s.refine, key=val_rmse.__getitem__)
    return {"steps": steps, "rmse": test_rmse[steps], "val_rmse": val_rmse, "test_rmse": test_rmse}


def empirical_prior_scores(model: LatentODE, train: IrregularBatch, val: tuple, test: tuple) -> dict:
    """Extrapolation RMSE of the posterior mean under the empirical prior of the training series
    (:class:`~hybrid_node.nn.empirical_prior.EmpiricalPrior` at the encoder's means of their windows).

    Args:
        model: a trained latent ODE.
        train: the training series (only their windows are read, as the encoder reads them).
        val, test: (observed series, target times, noise-free targets).

    Returns:
        ``{"rmse": test RMSE, "val_rmse": validation RMSE}``; nothing is tuned on either.
    """
    prior = EmpiricalPrior.from_series(model, train)
    return {
        "rmse": rmse(prior.predict(model, test[0], test[1]), test[2]),
        "val_rmse": rmse(prior.predict(model, val[0], val[1]), val[2]),
    }


def train_one(
    name: str,
    n: int,
    s: SpiralsSettings,
    train: IrregularBatch,
    ckpt: Path,
    resume: bool,
    on_step: Callable[[int, float], None],
    val: tuple[IrregularBatch, torch.Tensor, torch.Tensor] | None = None,
    future: Future | None = None,
    val_future: Future | None = None,
    restart: int = 0,
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
        future: the points after the training windows (one row per series of ``train``); given, the
            model trains on the forecasting objective (see :func:`model_loss`).
        val_future: the same for the validation series; the validation loss then uses it too.
        restart: index of an independent run (another initialisation and minibatch order).

    Returns:
        The trained model, with ``history`` (losses), ``val_history`` ([step, loss, RMSE] rows) and
        ``best_step`` (the step of the returned weights).
    """
    iters = s.iters if name == "latent_ode" else s.rnn_iters
    torch.manual_seed(s.seed * 1000 + n + 100_003 * restart)
    model = build_model(name, s)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    start, history, val_history, best = 0, [], [], None
    ckpts = _checkpoints(s, resume)
    objects = {"model": model, "optimizer": opt}
    state = ckpts.load(
        ckpt,
        objects,
        ("step", "history"),
        what=MODEL_NAMES.get(name, name),
        hint="; it was written with other settings (e.g. another --cell)",
    )
    if state is not None:
        start, history = state["step"], state["history"]
        val_history, best = state.get("val_history", []), state.get("best")
        on_step(start, history[-1] if history else float("nan"))

    def validate(done: int) -> None:
        nonlocal best
        if val is None or (val_history and val_history[-1][0] == done):
            return
        score = rmse(predict(name, model, val[0], val[1]), val[2])
        with torch.no_grad():
            # A fixed generator: the latent ODE gets the same z0 draws at every validation.
            vloss = float(model_loss(name, model, val[0], val_future, torch.Generator().manual_seed(0), s.rnn_forecast))
        val_history.append([done, vloss, score])
        key = vloss if s.select == "val_loss" else score
        if best is None or "score" not in best or key < best["score"]:
            best = {"step": done, "score": key, "model": copy.deepcopy(model.state_dict())}

    for step in range(start, iters):
        batch, fut = train, future
        if s.batch_size < train.batch_size:
            index = torch.randperm(train.batch_size)[: s.batch_size]
            batch, fut = select(train, index), None if future is None else future.select(index)
        for group in opt.param_groups:
            group["lr"] = learning_rate(s, step, iters)
        opt.zero_grad()
        loss = model_loss(name, model, batch, fut, rnn_forecast=s.rnn_forecast)
        loss.backward()
        if s.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        history.append(loss.item())
        on_step(1, history[-1])
        done = step + 1
        if done % s.val_every == 0 or done == iters:
            validate(done)
        if ckpts.due(ckpt, done, iters):
            ckpts.save(ckpt, done, iters, objects, history=history, val_history=val_history, best=best)
    # Plain Python attributes: torch's stubs type Module.__setattr__ for tensors and modules only.
    model.best_step = len(history)  # type: ignore[assignment]
    if s.select != "last" and best is not None:
        model.load_state_dict(best["model"])
        model.best_step = best["step"]
    model.history = history  # type: ignore[assignment]
    model.val_history = val_history  # type: ignore[assignment]
    return model


def validation_score(kept: list | None, select: str) -> float:
    """The score that picks one of several restarts: validation RMSE of the kept iterate under
    ``select`` "val_rmse", else its validation loss (inf without a validation record)."""
    if kept is None:
        return math.inf
    return kept[1] if select == "val_rmse" else kept[0]


def checkpoint_path(out: Path, name: str, n: int, restart: int) -> Path:
    """The checkpoint file of one training run.

    Args:
        out: run folder.
        name: model name.
        n: observed points per series.
        restart: index of the independent restart.

    Returns:
        ``out/checkpoints/<name>-n<n>[-r<restart>].pt``.
    """
    return out / "checkpoints" / (f"{name}-n{n}.pt" if restart == 0 else f"{name}-n{n}-r{restart}.pt")


def checkpoint_paths(out: Path, s: SpiralsSettings) -> list[Path]:
    """The checkpoint files of the run ``s`` in ``out`` that exist.

    Args:
        out: run folder.
        s: settings (which models, n and restarts run).

    Returns:
        The existing checkpoint files, in training order.
    """
    paths = (checkpoint_path(out, m, n, r) for n in s.ns for m in s.models for r in range(s.restarts))
    return [p for p in paths if p.exists()]


def run_experiment(
    s: SpiralsSettings, out: Path, resume: bool = False, plots: bool = True, progress: bool = True
) -> dict:
    """Train and score every (model, n); returns the results dict also written to ``results.json``.

    ``results.json`` (with the settings) is written before training starts and after each model, every
    file atomically, so a killed run can always be resumed from its folder.

    Args:
        s: settings.
        out: run folder (created if needed).
        resume: continue from the checkpoints and ``results.json`` in ``out``.
        plots: draw the example plots.
        progress: show a progress bar.

    Returns:
        The results dict.

    Raises:
        CheckpointError: ``results.json`` or a checkpoint is damaged (the message names it).
        ResumeError: with ``resume``, the run in ``out`` was started with settings that shape the trained
            weights differently (the message names them).
    """
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = {}
    if resume and results_path.exists():
        results = read_json(
            results_path,
            "results file",
            "Delete it and resume again: the finished models are scored again from their checkpoints "
            "(only the recorded training seconds are lost).",
        )
        if not isinstance(results, dict):
            raise CheckpointError(
                results_path,
                f"The results file {str(results_path)!r} does not hold a JSON object. Delete it and resume "
                "again: the finished models are scored again from their checkpoints.",
            )
        if isinstance(results.get("settings"), dict):
            _check_same_settings(results["settings"], s, results_path)
    # Before anything is written or trained: every checkpoint this run continues must be readable and
    # from the same settings.
    _checkpoints(s, resume, out).check_stored(checkpoint_paths(out, s))
    results["settings"] = dataclasses.asdict(s)
    results["command"] = "spirals"  # what `--resume` of another command is refused by (see _output.open_run)
    atomic_write_json(results_path, results, indent=2)
    rows = results.setdefault("rmse", {})
    cfg = SpiralConfig(nspiral=s.nspiral)
    train_data = make_spirals(cfg, seed=s.seed)
    test_data = make_spirals(dataclasses.replace(cfg, nspiral=s.ntest), seed=s.seed + 10_000)
    val_data = make_spirals(dataclasses.replace(cfg, nspiral=s.nval), seed=s.seed + 20_000)
    total = sum((s.iters if m == "latent_ode" else s.rnn_iters) for m in s.models) * len(s.ns) * s.restarts
    bar = progress_bar(total=total, desc="spirals", enabled=progress)
    models: dict[tuple, torch.nn.Module] = {}
    for n in s.ns:
        train = train_data.subsample(n, seed=s.seed + n)
        test = test_data.subsample(n, seed=s.seed + 10_000 + n)
        val = (val_data.subsample(n, seed=s.seed + 20_000 + n), val_data.extrap_times, val_data.extrap)
        # The floor no learner can beat on this data (it knows the generator): a yardstick for the table.
        results.setdefault("bayes_optimal", {})[str(n)] = rmse(bayes_forecast(test_data.config, test), test_data.extrap)
        forecast = s.objective == "forecast"
        future = Future(train_data.extrap_times, train_data.extrap_observed) if forecast else None
        val_future = Future(val_data.extrap_times, val_data.extrap_observed) if forecast else None
        for name in s.models:
            key = f"{name}/n={n}"
            bar.set_postfix_str(key)
            t_start = time.time()

            def on_step(k: int, loss: float, key: str = key) -> None:
                bar.update(k)
                bar.set_postfix_str(f"{key} loss={loss:.4g}")

            runs = []
            for r in range(s.restarts):
                ckpt = checkpoint_path(out, name, n, r)
                m = train_one(name, n, s, train, ckpt, resume, on_step, val, future, val_future, restart=r)
                rows_m = cast(list[list[float]], m.val_history)  # [step, loss, RMSE] rows from train_one
                kept = next((row[1:] for row in rows_m if row[0] == m.best_step), None)
                runs.append((m, kept))
            choice = min(range(len(runs)), key=lambda r: validation_score(runs[r][1], s.select))
            model, kept = runs[choice]
            history = cast(list[float], model.history)  # the losses train_one recorded
            preds = [predict(name, m, test, test_data.extrap_times) for m, _ in runs]
            pred = preds[choice]
            entry = {
                "rmse": rmse(pred, test_data.extrap),
                **breakdown(pred, test_data),
                "final_loss": history[-1] if history else None,
                "iterations": len(history),
                "kept_step": model.best_step,
                "val": kept,
                "val_history": model.val_history,
                "restart": choice,
                "restarts": [
                    {"kept_step": m.best_step, "val": v, "test_rmse": rmse(p, test_data.extrap)}
                    for (m, v), p in zip(runs, preds)
                ],
                # Over every invocation (a resumed run adds to what the interrupted one spent).
                "seconds": round(rows.get(key, {}).get("seconds", 0.0) + time.time() - t_start, 1),
            }
            if name == "latent_ode":
                entry["recon_rmse"] = rmse(predict(name, model, test, test_data.times), test_data.clean)
                scored = (test, test_data.extrap_times, test_data.extrap)
                if max(s.refine) > 0:
                    entry["refined"] = refinement(_latent(model), s, val, scored)
                entry["empirical_prior"] = empirical_prior_scores(_latent(model), train, val, scored)
            rows[key] = entry
            models[(name, n)] = model
            atomic_write_json(results_path, results, indent=2)
    bar.close()
    table = format_table(results, s)
    atomic_write_text(out / "table2.md", table + "\n")
    if plots:
        for n in s.ns:
            plot_examples(out / f"spirals_n{n}.png", n, s, test_data, models)
    return results


def format_table(results: dict, s: SpiralsSettings) -> str:
    """Markdown Table 2: our RMSE beside the paper's for every model and n."""
    header = "| model | " + " | ".join(f"n={n} ours | n={n} paper" for n in s.ns) + " |"
    lines = [header, "|" + " --- |" * (1 + 2 * len(s.ns))]
    for name in s.models:
        cells, cells_paper = [], []
        for n in s.ns:
            entry = results["rmse"].get(f"{name}/n={n}")
            paper = PAPER_RMSE.get(name, {}).get(n)
            cells_paper.append(f"{paper:.4f}" if paper else "-")
            cells += [f"{entry['rmse']:.4f}" if entry else "-", cells_paper[-1]]
        lines.append(f"| {MODEL_NAMES[name]} | " + " | ".join(cells) + " |")
        # Other inference of the same kept model: (results key, row label, cell text).
        for key, label, text in (
            ("refined", "z0 refined", lambda r: f"{r['rmse']:.4f} ({r['steps']} steps)"),
            ("empirical_prior", "empirical prior", lambda r: f"{r['rmse']:.4f}"),
        ):
            found = [results["rmse"].get(f"{name}/n={n}", {}).get(key) for n in s.ns]
            if any(found):
                cells = []
                for r, paper_cell in zip(found, cells_paper):
                    cells += ["-" if not r else text(r), paper_cell]
                lines.append(f"| {MODEL_NAMES[name]}, {label} | " + " | ".join(cells) + " |")
    floor = [results.get("bayes_optimal", {}).get(str(n)) for n in s.ns]
    if any(f is not None for f in floor):
        lines.append(
            "| Bayes-optimal (knows the generator) | "
            + " | ".join(("-" if f is None else f"{f:.4f}") + " | -" for f in floor)
            + " |"
        )
    recon = [results["rmse"].get(f"latent_ode/n={n}", {}).get("recon_rmse") for n in s.ns]
    if any(r is not None for r in recon):
        lines += [
            "",
            "Latent ODE reconstruction RMSE of the whole 100-point window from n points:",
            "| " + " | ".join(f"n={n}" for n in s.ns) + " |",
            "|" + " --- |" * len(s.ns),
            "| " + " | ".join("-" if r is None else f"{r:.4f}" for r in recon) + " |",
        ]
    lines += [
        "",
        "Extrapolation RMSE by direction, window start and horizon (first k of the 100 targets):",
        "| model | n | clockwise | counter-clockwise | start < 200 | start >= 200 | "
        + " | ".join(f"first {k}" for k in HORIZONS)
        + " |",
        "|" + " --- |" * (6 + len(HORIZONS)),
    ]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    for name in s.models:
        for n in s.ns:
            e = results["rmse"].get(f"{name}/n={n}")
            if not e or "rmse_direction" not in e:
                continue
            first = [e["rmse_first"].get(str(k), e["rmse_first"].get(k)) for k in HORIZONS]
            values = [
                e["rmse_direction"]["clockwise"],
                e["rmse_direction"]["counter_clockwise"],
                e["rmse_start"]["before_200"],
                e["rmse_start"]["from_200"],
                *first,
            ]
            lines.append(f"| {MODEL_NAMES[name]} | {n} | " + " | ".join(fmt(v) for v in values) + " |")
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
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def load_kept_model(out: Path, name: str, n: int) -> tuple[LatentODE | RNNBaseline, SpiralsSettings]:
    """The model a finished run scored for ``name`` and ``n``: its chosen restart, its kept iterate.

    Args:
        out: the run folder (``results.json`` and ``checkpoints/``).
        name: model name (a key of :data:`MODEL_NAMES`).
        n: observed points per series.

    Returns:
        ``(model, settings)``: the model with the weights its row of ``results.json`` was scored with
        (the restart recorded there, and the iterate ``select`` kept), and the run's settings.

    Raises:
        CheckpointError: ``results.json`` or the checkpoint is missing or damaged, or the run has not
            scored that model yet.
    """
    results_path = out / "results.json"
    results = read_json(results_path, "results file", "Pass the folder of a finished `hybrid-node spirals` run.")
    entry = results.get("rmse", {}).get(f"{name}/n={n}") if isinstance(results, dict) else None
    if entry is None:
        raise CheckpointError(
            results_path, f"{str(results_path)!r} has no scored {name} for n={n}: that model has not finished training."
        )
    stored = dict(results["settings"])
    stored.setdefault("cell", "rnn")  # runs written before the cell setting used the Elman cell
    fields = {f.name for f in dataclasses.fields(SpiralsSettings)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in fields}
    settings = SpiralsSettings(**values)
    ckpt = checkpoint_path(out, name, n, entry.get("restart", 0))
    state = load_checkpoint(ckpt, restore_rng=False)
    if state is None:
        raise CheckpointError(ckpt, f"The checkpoint {str(ckpt)!r} of the scored {name} for n={n} is missing.")
    model = build_model(name, settings)
    # As train_one returns it: the kept iterate unless the run kept the last one.
    best = state.get("best")
    model.load_state_dict(best["model"] if settings.select != "last" and best else state["model"])
    return model, settings


def has_run(out: Path) -> bool:
    """Whether ``out`` holds a spirals run: its ``results.json`` or a checkpoint.

    Args:
        out: the run folder.

    Returns:
        True when there is something to resume.
    """
    return has_run_files(out)


def check_resumable(out: Path) -> None:
    """Refuse ``--resume`` when ``out`` holds no run to continue.

    Args:
        out: the ``--out`` folder.

    Raises:
        ResumeError: ``out`` does not exist, is not a folder, or holds neither ``results.json`` nor
            checkpoints; the message says what to do.
    """
    _check_resumable(out, out.is_dir() and has_run(out), "results.json nor checkpoints/*.pt of a spirals run")


@interruptible("spirals")
def run(args: argparse.Namespace) -> int:
    # One thread by default: two threads made a training step 15-20x slower on a shared 2-core machine
    # (docs/reproductions/spirals.md, "Where the time goes").
    torch.set_num_threads(args.threads)
    with checked_settings():
        s = settings_from_args(args)
    out = open_run(args.out, "spirals", args.resume)
    results = run_experiment(s, out, resume=args.resume, plots=not args.no_plots)
    print(format_table(results, s))
    print(f"results written to {out}")
    return 0
