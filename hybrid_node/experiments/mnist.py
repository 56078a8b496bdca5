"""Table 1 of Chen et al. (2018): ODE-Net against a 6-block ResNet and RK-Net on MNIST.

All three share the same downsampling stem (three convolutions, 28x28 -> 6x6) and head (GroupNorm,
ReLU, global average pooling, linear). In between:

- ResNet: six pre-activation residual blocks (He et al., "Identity Mappings in Deep Residual
  Networks", ECCV 2016), memory O(L);
- RK-Net: one ODE block solved by fixed-step RK4, backpropagated through the solver, memory O(L~)
  with L~ the number of function evaluations;
- ODE-Net: the same ODE block solved by dopri5 (rtol = atol = 1e-3) with the adjoint method, memory O(1).

The full recipe follows the paper's code: 64 channels, SGD with momentum 0.9, batch 128, learning
rate 0.1 divided by 10 at epochs 60, 100 and 140 of 160, random-crop augmentation. ``--quick`` trains
small models briefly with Adam so the comparison runs on two CPU cores in minutes; there ODE-Net
backpropagates through dopri5 by default (exact gradients of the discrete solve, cheaper per iteration
than the adjoint at this size), and ``--adjoint`` restores the adjoint method.

Memory: on CUDA the peak allocated memory of one training step; on the CPU the size of the tensors
the forward pass saves for backward (activations, not parameters), which is the quantity the paper's
O(L) / O(1) column is about.

Reference: Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations",
NeurIPS 2018, Section 3 and Table 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._errors import CheckpointError
from ..data.mnist import load_mnist, to_float
from ..nn._checks import positive_int as positive_size
from ..nn.layers import ConvDynamics
from ..nn.ode_block import ODEBlock, SolveSettings
from ..sensitivity.settings import BacksolveAdjoint, DirectBackprop
from ..training.atomic import read_json
from ..training.checkpoint import load_checkpoint
from ._args import checked_settings, device_name, given_settings, positive_float, positive_int, random_seed
from ._output import (
    Checkpoints,
    check_same_settings,
    interruptible,
    open_run,
    pyplot,
    resume_settings,
    save_figure,
    write_results,
)
from ._progress import progress_bar

HELP = "Table 1: ODE-Net vs ResNet vs RK-Net on MNIST (test error, parameters, memory, NFE)."
MODELS = ("resnet", "rknet", "odenet")
PAPER = {  # Chen et al. 2018, Table 1: test error (%), parameters (millions), memory
    "resnet": (0.41, 0.60, "O(L)"),
    "rknet": (0.47, 0.22, "O(L~)"),
    "odenet": (0.42, 0.22, "O(1)"),
}


@dataclasses.dataclass(frozen=True)
class MNISTConfig:
    """Settings of one Table-1 run (defaults: the paper's full recipe)."""

    models: Sequence[str] = MODELS
    channels: int = 64
    epochs: int = 160
    iters: int | None = None  #: stop each model after this many training iterations
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    lr_milestones: Sequence[int] = (60, 100, 140)  #: epochs at which the learning rate is divided by 10
    augment: bool = True
    train_subset: int | None = None
    test_subset: int | None = None
    tol: float = 1e-3
    rk_steps: int = 4
    adjoint: bool = True
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 100  #: training iterations between checkpoints (with a run folder)

    def __post_init__(self):
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ValueError(f"models must be a non-empty subset of {MODELS}, got {list(self.models)}.")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}.")
        for name in ("channels", "epochs", "batch_size", "rk_steps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("iters", "train_subset", "test_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("lr", "tol"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}.")
        check_architecture(self.channels, self.rk_steps)


#: Settings a resumed run may change: which models run, how often it checkpoints, and the device (the
#: checkpoint loads onto any device; a run resumed on another device is not bit-identical to one that
#: stayed). Every other setting shapes the trained weights, so a checkpoint only continues under it.
RESUMABLE_SETTINGS = frozenset({"models", "checkpoint_every", "device"})
#: The option that sets a field whose option is not ``--`` plus its name (--quick sets the recipe).
_OPTIONS = {
    "optimizer": "--quick (optimizer)",
    "lr_milestones": "--quick (lr milestones)",
    "augment": "--quick (augment)",
    "rk_steps": "--quick (rk steps)",
    "adjoint": "--adjoint/--no-adjoint",
}


def training_settings(cfg: MNISTConfig) -> dict[str, Any]:
    """The settings that shape the trained weights (all but :data:`RESUMABLE_SETTINGS`), JSON-compatible.

    Args:
        cfg: the run's settings.

    Returns:
        A dict of plain values, as stored in checkpoints and compared on ``--resume``.
    """
    return resume_settings(cfg, RESUMABLE_SETTINGS)


def _check_same_settings(stored: Any, cfg: MNISTConfig, where: Path) -> None:
    if isinstance(stored, dict):
        check_same_settings(stored, training_settings(cfg), where, RESUMABLE_SETTINGS, _OPTIONS)


# Small models, one epoch, Adam with a one-cycle schedule, ODE-Net trained by backpropagating through
# dopri5: the three models beat 95% test accuracy (ResNet and RK-Net 97%+) in about 5 minutes of CPU
# time on one thread (see docs/reproductions/mnist.md for measured numbers).
QUICK: dict[str, Any] = {
    "channels": 16,
    "epochs": 1,
    "batch_size": 64,
    "optimizer": "adam",
    "lr": 1e-2,
    "lr_milestones": (),
    "augment": False,
    "train_subset": None,
    "rk_steps": 4,
    "adjoint": False,
}


def check_architecture(channels: int, rk_steps: int) -> None:
    """Check the sizes that shape a Table-1 model.

    Args:
        channels: feature channels; GroupNorm takes min(32, channels) groups, which must divide them.
        rk_steps: RK4 steps of RK-Net over [0, 1]; a fraction would silently take another number of steps.

    Raises:
        TypeError: either is not an int.
        ValueError: either is not positive, or ``channels`` is above 32 and no multiple of 32.
    """
    positive_size("channels", channels)
    positive_size("rk_steps", rk_steps)
    if channels % min(32, channels):
        raise ValueError(f"channels ({channels}) must be a multiple of 32 or at most 32 (GroupNorm).")


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, c), c)


class ResidualBlock(nn.Module):
    """Pre-activation residual block ``x + conv(relu(norm(conv(relu(norm(x))))))`` (He et al. 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.norm2 = _norm(channels), _norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(torch.relu(self.norm1(x)))
        return x + self.conv2(torch.relu(self.norm2(h)))


def build_model(
    kind: str, channels: int, *, tol: float = 1e-3, rk_steps: int = 4, adjoint: bool = True
) -> nn.Sequential:
    """One of the three Table-1 classifiers.

    Args:
        kind: "resnet", "rknet" or "odenet".
        channels: feature channels after the stem (64 in the paper).
        tol: rtol = atol of the ODE-Net's dopri5 solve.
        rk_steps: RK4 steps of RK-Net over [0, 1].
        adjoint: train ODE-Net with the adjoint method (else backpropagate through dopri5).

    Returns:
        An ``nn.Sequential`` mapping (N, 1, 28, 28) images to (N, 10) logits.

    Raises:
        ValueError: for an unknown ``kind``, a ``channels`` or ``rk_steps`` below 1 (a division by zero
            before) or a ``channels`` that GroupNorm cannot split; TypeError: either is not an int.
    """
    if kind not in MODELS:
        raise ValueError(f"kind must be one of {MODELS}, got {kind!r}.")
    check_architecture(channels, rk_steps)
    c = channels
    stem = [
        nn.Conv2d(1, c, 3, 1),
        _norm(c),
        nn.ReLU(),
        nn.Conv2d(c, c, 4, 2, 1),
        _norm(c),
        nn.ReLU(),
        nn.Conv2d(c, c, 4, 2, 1),
    ]
    features: list[nn.Module]
    if kind == "resnet":
        features = [ResidualBlock(c) for _ in range(6)]
    elif kind == "rknet":
        rk = SolveSettings(method="rk4", options={"step_size": 1.0 / rk_steps}, sensitivity=DirectBackprop())
        features = [ODEBlock(ConvDynamics(c), (0.0, 1.0), train_settings=rk)]
    else:
        sens = BacksolveAdjoint() if adjoint else DirectBackprop()
        features = [
            ODEBlock(ConvDynamics(c), (0.0, 1.0), train_settings=SolveSettings("dopri5", tol, tol, sensitivity=sens))
        ]
    head = [_norm(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*stem, *features, *head)


def ode_block(model: nn.Module) -> ODEBlock | None:
    """The model's ODEBlock, or None (ResNet)."""
    return next((m for m in model.modules() if isinstance(m, ODEBlock)), None)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class SavedActivationMeter:
    """Counts the bytes of the tensors autograd saves for backward while the context is active.

    Parameters are excluded and a storage saved several times is counted once. Used around a forward
    pass, the total is the activation memory the backward pass will need: O(L) for a ResNet of L
    blocks, O(NFE) when backpropagating through a solver, O(1) in the solver's steps with an adjoint.
    """

    def __init__(self, exclude: Sequence[torch.Tensor] = ()):
        self._exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self._seen: dict[int, int] = {}

    @property
    def total(self) -> int:
        return sum(self._seen.values())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in self._exclude:
            # A view (e.g. a batch sliced from the data set) counts as its own extent, not its base storage.
            self._seen[key] = max(self._seen.get(key, 0), t.numel() * t.element_size())
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def measure_training_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Memory of one training step in MB.

    On CUDA: the peak allocated memory of forward and backward above what was allocated before. On
    the CPU (no allocator statistics): the activations the forward pass saves for backward.
    """
    model.train()
    model.zero_grad(set_to_none=True)
    loss_fn = nn.CrossEntropyLoss()
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss_fn(model(x), y).backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with SavedActivationMeter(list(model.parameters())) as meter:
            loss = loss_fn(model(x), y)
        loss.backward()
        peak = meter.total
    model.zero_grad(set_to_none=True)
    return peak / 2**20


def _random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random-crop augmentation: pad by ``pad`` and crop back at a random offset per image.

    As torchvision's ``RandomCrop(28, padding=4)`` in the paper's code: each image has its own offset,
    uniform in [0, 2 * pad] along each axis (one offset for the whole batch moved every image alike).

    Args:
        x: images (N, C, H, W); the padding is the batch's minimum, the background of standardised images.
        pad: padding on each side.
        generator: draws the offsets.

    Returns:
        The shifted images, shaped like ``x``.
    """
    n, _, h, w = x.shape
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    padded = nn.functional.pad(x, (pad, pad, pad, pad), value=float(x.min()))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    # advanced indexing puts the indexed (N, H, W) first and the channels last
    return padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Test error (%) and the mean forward NFE per batch of the model's ODE block (0 for ResNet)."""
    model.eval()
    wrong, nfes = 0, []
    block = ode_block(model)
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        wrong += int((logits.argmax(1) != y[i : i + batch_size]).sum())
        if block is not None:
            nfes.append(block.nfe_forward)
    model.train()
    return {"error": 100.0 * wrong / len(x), "nfe": sum(nfes) / len(nfes) if nfes else 0.0}


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: MNISTConfig,
    *,
    desc: str = "train",
    checkpoint: Path | None = None,
    resume: bool = False,
    command: str = "mnist",
) -> dict[str, list]:
    """Train ``model`` on ``(x, y)`` with ``cfg``'s recipe; returns per-iteration loss and NFE history.

    Args:
        model: the classifier (freshly built: its initial weights are the run's).
        x, y: training images and labels.
        cfg: the recipe.
        desc: progress bar label.
        checkpoint: where to save the training state (model, optimizer, scheduler, the minibatch
            generator and the global generators, the epoch's permutation, the step, the history), atomically,
            every ``cfg.checkpoint_every`` iterations and at the end; None saves nothing.
        resume: continue from ``checkpoint`` if it exists. The continued run draws the same minibatches
            and augmentations and ends with the same weights and losses as one that was not interrupted.
        command: the subcommand the checkpoint belongs to (another's is refused on resume).

    Returns:
        The history: ``loss``, ``nfe_forward``, ``nfe_backward``, ``epoch`` per iteration, and ``seconds``
        (one value: the training time over every invocation).

    Raises:
        CheckpointError: the checkpoint is damaged or not one of this command's.
        ResumeError: the checkpoint was written with other settings (the message names them).
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = cfg.epochs * per_epoch if cfg.iters is None else min(cfg.iters, cfg.epochs * per_epoch)
    milestones = [m * per_epoch for m in cfg.lr_milestones]
    sched: torch.optim.lr_scheduler.LRScheduler
    if cfg.optimizer == "adam" and not milestones:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.05)
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    block = ode_block(model)
    loss_fn = nn.CrossEntropyLoss()
    hist: dict[str, list] = {"loss": [], "nfe_forward": [], "nfe_backward": [], "epoch": []}
    it, seconds = 0, 0.0
    perm = torch.empty(0, dtype=torch.long)
    ckpts = Checkpoints(
        None, command, training_settings(cfg), RESUMABLE_SETTINGS, cfg.checkpoint_every, resume, _OPTIONS
    )
    objects = {"model": model, "optimizer": opt, "scheduler": sched, "generator": gen}
    state = ckpts.load(checkpoint, objects, ("perm", "step", "history"))
    if state is not None:
        it, perm, seconds = state["step"], state["perm"], state.get("seconds", 0.0)
        hist = {k: list(v) for k, v in state["history"].items() if k in hist}
    start = time.perf_counter()

    def save(done: int) -> None:
        history = {**hist, "seconds": [seconds + time.perf_counter() - start]}
        ckpts.save(checkpoint, done, total, objects, perm=perm, history=history, seconds=history["seconds"][0])

    model.train()
    with progress_bar(total=total, desc=desc, leave=False, initial=it) as bar:
        # One iteration per pass: the epoch's permutation is drawn at its first iteration, so a run
        # resumed mid-epoch continues from the stored permutation at the stored position.
        while it < total:
            if it % per_epoch == 0:
                perm = torch.randperm(len(x), generator=gen)
            j = (it % per_epoch) * cfg.batch_size
            idx = perm[j : j + cfg.batch_size]
            xb = x[idx].to(cfg.device)
            if cfg.augment:
                xb = _random_shift(xb, 4, gen)
            loss = loss_fn(model(xb), y[idx].to(cfg.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hist["loss"].append(loss.item())
            hist["epoch"].append(it / per_epoch)
            if block is not None:
                hist["nfe_forward"].append(block.nfe_forward)
                hist["nfe_backward"].append(block.nfe_backward)
            it += 1
            bar.update(1)
            bar.set_postfix(loss=f"{hist['loss'][-1]:.3f}", nfe=hist["nfe_forward"][-1] if block is not None else "-")
            if ckpts.due(checkpoint, it, total):
                save(it)
    hist["seconds"] = [seconds + time.perf_counter() - start]
    return hist


NAMES = {"resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net"}


def checkpoint_path(folder: Path, kind: str) -> Path:
    """The checkpoint file of one model's training: ``folder/checkpoints/<kind>.pt``."""
    return folder / "checkpoints" / f"{kind}.pt"


def has_run(folder: Path) -> bool:
    """Whether ``folder`` holds checkpoints of an mnist run (something ``--resume`` continues)."""
    return any(checkpoint_path(folder, kind).is_file() for kind in MODELS)


def _finished_rows(folder: Path, cfg: MNISTConfig) -> dict[str, dict]:
    """The result rows of the models an earlier invocation finished, after checking every stored setting.

    Raises:
        CheckpointError: ``results.json`` or a checkpoint is damaged.
        ResumeError: they were written with settings that shape the result differently.
    """
    results_path = folder / "results.json"
    done: dict[str, dict] = {}
    if results_path.exists():
        results = read_json(
            results_path,
            "results file",
            "Delete it and resume again: the finished models are evaluated again from their checkpoints.",
        )
        if not isinstance(results, dict) or not isinstance(results.get("rows", []), list):
            raise CheckpointError(
                results_path,
                f"The results file {str(results_path)!r} is not an mnist results file. Delete it and resume again.",
            )
        meta = results.get("meta")
        _check_same_settings(meta.get("config") if isinstance(meta, dict) else None, cfg, results_path)
        kinds = {name: kind for kind, name in NAMES.items()}
        done = {
            kinds[r["model"]]: r for r in results.get("rows", []) if isinstance(r, dict) and r.get("model") in kinds
        }
    # Before anything is trained: every checkpoint this run continues must be readable and from the same settings.
    for kind in MODELS:
        path = checkpoint_path(folder, kind)
        state = load_checkpoint(path, restore_rng=False)
        if state is not None:
            _check_same_settings(state.get("settings"), cfg, path)
    return done


def run_table1(
    cfg: MNISTConfig, data_root: str | None = None, folder: Path | str | None = None, resume: bool = False
) -> dict[str, Any]:
    """Train and evaluate every model of ``cfg``; returns result rows and training histories.

    Args:
        cfg: the settings.
        data_root: folder with the MNIST IDX files (None: the offline copy).
        folder: run folder; given, each model's training state is checkpointed to
            ``folder/checkpoints/<model>.pt`` every ``cfg.checkpoint_every`` iterations and
            ``results.json`` / ``results.md`` are rewritten (atomically) after each model.
        resume: continue the run in ``folder``: finished models (a row in ``results.json`` and a final
            checkpoint) are not trained again, the interrupted one continues from its checkpoint.

    Returns:
        ``rows`` (one per model: this run's models in order, then finished models of the earlier
        invocations that this one does not run), ``histories``, ``source``, ``n_train``, ``n_test``.

    Raises:
        CheckpointError: with ``resume``, ``results.json`` or a checkpoint is damaged (the message names it).
        ResumeError: with ``resume``, the run in ``folder`` was started with settings that shape the
            result differently (the message names them).
    """
    wall = time.perf_counter()
    folder = None if folder is None else Path(folder)
    done = _finished_rows(folder, cfg) if folder is not None and resume else {}
    torch.manual_seed(cfg.seed)
    train, test = load_mnist(data_root, train=True), load_mnist(data_root, train=False)
    gen = torch.Generator().manual_seed(cfg.seed)
    xtr, ytr = to_float(train.images), train.labels
    if cfg.train_subset is not None and cfg.train_subset < len(xtr):
        idx = torch.randperm(len(xtr), generator=gen)[: cfg.train_subset]
        xtr, ytr = xtr[idx], ytr[idx]
    xte, yte = to_float(test.images).to(cfg.device), test.labels.to(cfg.device)
    if cfg.test_subset is not None:
        xte, yte = xte[: cfg.test_subset], yte[: cfg.test_subset]
    rows: dict[str, dict] = {}
    histories: dict[str, dict] = {}

    def ordered() -> list[dict]:
        return [rows[k] for k in cfg.models if k in rows] + [r for k, r in done.items() if k not in cfg.models]

    for kind in cfg.models:
        ckpt = None if folder is None else checkpoint_path(folder, kind)
        if kind in done and ckpt is not None:
            state = load_checkpoint(ckpt, restore_rng=False)
            if state is not None and state.get("step") == state.get("total"):
                rows[kind], histories[kind] = done[kind], state["history"]
                continue  # finished by an earlier invocation
        torch.manual_seed(cfg.seed)
        model = build_model(kind, cfg.channels, tol=cfg.tol, rk_steps=cfg.rk_steps, adjoint=cfg.adjoint).to(cfg.device)
        mem_batch = xtr[: cfg.batch_size].clone().to(cfg.device), ytr[: cfg.batch_size].clone().to(cfg.device)
        memory = measure_training_memory(model, *mem_batch)
        hist = train_model(model, xtr, ytr, cfg, desc=kind, checkpoint=ckpt, resume=resume)
        result = evaluate(model, xte, yte)
        nf, nb = hist["nfe_forward"], hist["nfe_backward"]
        paper = PAPER[kind]
        rows[kind] = {
            "model": NAMES[kind],
            "gradients": {
                "resnet": "backprop",
                "rknet": "backprop (rk4)",
                "odenet": "adjoint" if cfg.adjoint else "backprop (dopri5)",
            }[kind],
            "test error (%)": round(result["error"], 2),
            "params": count_parameters(model),
            "memory (MB)": round(memory, 2),
            "NFE fwd (train)": round(sum(nf) / len(nf), 1) if nf else "-",
            "NFE bwd (train)": round(sum(nb) / len(nb), 1) if nb and kind == "odenet" and cfg.adjoint else "-",
            "NFE fwd (test)": round(result["nfe"], 1) if kind != "resnet" else "-",
            "train time (s)": round(hist["seconds"][0], 1),  # over every invocation of a resumed run
            "iterations": len(hist["loss"]),
            "paper error (%)": paper[0],
            "paper params": f"{paper[1]}M",
            "paper memory": paper[2],
        }
        histories[kind] = hist
        if folder is not None:
            # After each model: a later --resume keeps this row and does not train the model again.
            meta = results_meta(cfg, train.source, len(xtr), len(xte), time.perf_counter() - wall)
            write_results(folder, "results", ordered(), COLUMNS, meta)
    return {"rows": ordered(), "histories": histories, "source": train.source, "n_train": len(xtr), "n_test": len(xte)}


def results_meta(cfg: MNISTConfig, source: str, n_train: int, n_test: int, elapsed: float) -> dict[str, Any]:
    """The settings listed above the results table and stored under ``"meta"`` of ``results.json``."""
    return {
        "command": "mnist",  # what `--resume` of another command is refused by (see _output.open_run)
        "data": source,
        "train images": n_train,
        "test images": n_test,
        "device": cfg.device,
        "torch threads": torch.get_num_threads(),
        "wall time (s)": round(elapsed, 1),
        "config": dataclasses.asdict(cfg),
        "memory": "peak CUDA allocation of one training step"
        if cfg.device.startswith("cuda")
        else "activations saved for backward by one training forward pass (CPU)",
    }


COLUMNS = [
    "model",
    "gradients",
    "test error (%)",
    "params",
    "memory (MB)",
    "NFE fwd (train)",
    "NFE bwd (train)",
    "NFE fwd (test)",
    "train time (s)",
    "iterations",
    "paper error (%)",
    "paper params",
    "paper memory",
]


def _plots(folder, histories) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, hist in histories.items():
        loss = torch.tensor(hist["loss"])
        k = max(1, len(loss) // 50)
        smooth = loss.unfold(0, k, k).mean(1) if len(loss) >= k else loss
        ax.plot(torch.arange(len(smooth)) * k, smooth, label=kind)
    ax.set_xlabel("iteration"), ax.set_ylabel("training loss"), ax.set_yscale("log"), ax.legend()
    save_figure(fig, folder / "mnist_loss.png", dpi=120)
    if "odenet" in histories and histories["odenet"]["nfe_forward"]:
        h = histories["odenet"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(h["epoch"], h["nfe_forward"], label="forward")
        if any(h["nfe_backward"]):
            ax.plot(h["epoch"], h["nfe_backward"], label="backward (adjoint)")
        ax.set_xlabel("epoch"), ax.set_ylabel("NFE per batch"), ax.legend()
        save_figure(fig, folder / "mnist_nfe.png", dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="16 channels, one epoch with Adam, batch 64, ODE-Net without the adjoint (minutes on a CPU)",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of resnet,rknet,odenet")
    parser.add_argument("--data-root", default=None, help="folder with the MNIST IDX files (else the offline copy)")
    parser.add_argument("--out", default=None, help="run folder (default runs/mnist-<timestamp>)")
    parser.add_argument("--channels", type=positive_int, default=None)
    parser.add_argument("--epochs", type=positive_int, default=None)
    parser.add_argument("--iters", type=positive_int, default=None, help="stop each model after this many iterations")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--lr", type=positive_float, default=None)
    parser.add_argument("--train-subset", type=positive_int, default=None)
    parser.add_argument("--test-subset", type=positive_int, default=None)
    parser.add_argument("--tol", type=positive_float, default=None, help="ODE-Net rtol = atol (paper: 1e-3)")
    parser.add_argument(
        "--adjoint",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train ODE-Net with the adjoint method (default: on, off with --quick); "
        "--no-adjoint backpropagates through dopri5",
    )
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=None,
        help=f"training iterations between checkpoints in --out (default {MNISTConfig.checkpoint_every})",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out: finished models are kept, the interrupted one continues from its checkpoint",
    )
    add_device_argument(parser)
    add_threads_argument(parser)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` of the MNIST commands (mnist, nfe): cuda where available, else cpu."""
    parser.add_argument(
        "--device",
        type=device_name,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device: cpu, cuda, cuda:<index> or mps (default: cuda when available)",
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads`` of the MNIST commands (mnist, nfe), applied by :func:`use_threads`."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: 1 with --quick, otherwise torch's choice)",
    )


def use_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from ``--threads``, or to one for ``--quick``; else leave torch's choice."""
    # One thread for --quick: its small convolutions gain little from more, and with another process on the
    # CPU oversubscribed threads ran 35x slower per step (issue 26).
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None:
        torch.set_num_threads(threads)


def config_from_args(args: argparse.Namespace) -> MNISTConfig:
    """Build the config: the paper's recipe, or QUICK with ``--quick``, then explicit flags on top."""
    values = given_settings(
        args,
        QUICK,
        (
            "channels",
            "epochs",
            "iters",
            "batch_size",
            "lr",
            "train_subset",
            "test_subset",
            "tol",
            "checkpoint_every",
            "adjoint",
        ),
    )
    values.update(
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()), seed=args.seed, device=args.device
    )
    return MNISTConfig(**values)


@interruptible("mnist")
def run(args: argparse.Namespace) -> int:
    use_threads(args)
    with checked_settings():
        cfg = config_from_args(args)
    folder = open_run(
        args.out,
        "mnist",
        args.resume,
        has_run=has_run,
        run_kind="an mnist run",
        holds="checkpoints/",
        neither="results nor checkpoints/<model>.pt of an mnist run",
    )
    start = time.perf_counter()
    res = run_table1(cfg, args.data_root, folder, resume=args.resume)
    elapsed = time.perf_counter() - start
    meta = results_meta(cfg, res["source"], res["n_train"], res["n_test"], elapsed)
    table = write_results(folder, "results", res["rows"], COLUMNS, meta)
    _plots(folder, res["histories"])
    print(table)
    print(f"\nwall time {elapsed:.1f} s; results, loss and NFE plots in {folder}")
    return 0
