"""Checkpoints of training runs: atomic writes and exact resumption.

A checkpoint holds whatever state dict the caller passes (model and optimizer state, step counter,
history) plus the random number generator states of torch, numpy and Python, and of every CUDA device
once this process has initialised CUDA, so that a resumed run continues with the same random draws as an
uninterrupted one. Where the machine that loads a checkpoint has another number of CUDA devices than the
one that saved it, the devices both have (the first ones, as numbered in each process) get their stored
states and the others keep theirs; on a machine without CUDA the stored CUDA states are left unused (no
draw there can come from them), and a checkpoint saved before CUDA was initialised, or by an older
version, restores the other generators alone. Writing goes to a temporary file in the
same folder followed by ``os.replace``, which is atomic on POSIX and Windows: an interruption leaves
either the old checkpoint or the new one, never a truncated file. A file that is damaged anyway (a disk
problem, a copy cut short) is reported by :func:`load_checkpoint` as a :class:`CheckpointError` naming it.

Loading is safe by default: :func:`load_checkpoint` reads with ``torch.load(..., weights_only=True)``,
which rebuilds tensors, numbers, strings and containers only and never runs code a file names (a
pickle can name any function to call). The generator states are stored in that form (numpy's state
array as a list of ints), so ``torch.load(path)`` with torch's own default (``weights_only=True`` since
torch 2.6) reads a checkpoint too; the numpy arrays of checkpoints written by earlier versions are
allowed as well. A checkpoint holding other objects (a user's class, a function) is refused with a
message naming them, unless the caller passes ``weights_only=False`` for a file it trusts.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._errors import CheckpointError
from .atomic import atomic_write, remove_stale_temp_files, unreadable

PathLike = str | os.PathLike


#: The global generators a checkpoint restores: key -> (read the state, set the state). The one list
#: that :func:`rng_state`, :func:`set_rng_state` and the layout check of a stored ``"rng"`` all follow.
_GENERATORS: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    "torch": (torch.get_rng_state, torch.set_rng_state),
    # as plain Python values (numpy's set_state takes the key as a list): a weights-only load refuses arrays
    "numpy": (lambda: _plain(np.random.get_state()), np.random.set_state),
    "python": (random.getstate, random.setstate),
}


def _plain(value: Any) -> Any:
    """``value`` with every numpy array and scalar replaced by Python lists and numbers, through tuples,
    lists and dicts: what ``torch.load(..., weights_only=True)`` reads without allowing numpy."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def _numpy_globals() -> list[Any]:
    """The numpy names a pickled array refers to (``numpy.core`` became ``numpy._core`` in numpy 2),
    which a weights-only load may rebuild: checkpoints of earlier versions stored numpy's generator
    state as an array. (Arrays of Python objects stay refused: their items go through the same
    restricted unpickler.)"""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


#: The key of the CUDA devices' generator states in :func:`rng_state` (one state per device), present
#: only once CUDA is initialised: reading them earlier would initialise CUDA in a run that never uses it.
_CUDA = "cuda"


def rng_state() -> dict[str, Any]:
    """The current states of the torch, numpy and Python global generators, and of each CUDA device's
    generator (under ``"cuda"``, a list in device order) when this process has initialised CUDA."""
    state = {key: get() for key, (get, _) in _GENERATORS.items()}
    # Looked up at each call (not bound at import, as _GENERATORS is): CUDA may be initialised any time.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state[_CUDA] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`rng_state`.

    The CUDA states, when stored, go to the devices this machine has, by index: with fewer devices than
    were saved, the extra states are dropped; with more, the devices beyond them keep their states.
    Without CUDA they are not used. A state stored without them leaves the CUDA generators as they are.

    Args:
        state: as :func:`rng_state` returns it.

    Raises:
        KeyError: a generator of :data:`_GENERATORS` is missing.
        TypeError: the CUDA states are not a list of tensors.
        RuntimeError, ValueError: a state does not fit its generator.
    """
    for key, (_, set_state) in _GENERATORS.items():
        set_state(state[key])
    if _CUDA in state:
        devices = state[_CUDA]
        if not _is_cuda_states(devices):
            raise TypeError(f"the CUDA generator states are a list of tensors, got {type(devices).__name__}")
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all(devices[: torch.cuda.device_count()])


def _is_cuda_states(value: Any) -> bool:
    """Whether ``value`` is a list of per-device generator states, as ``torch.cuda.get_rng_state_all`` gives."""
    return isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value)


def _is_rng_state(value: Any) -> bool:
    """Whether ``value`` has the layout of :func:`rng_state` (a loaded checkpoint's ``"rng"``)."""
    if not isinstance(value, dict):
        return False
    return set(value) - {_CUDA} == set(_GENERATORS) and (_CUDA not in value or _is_cuda_states(value[_CUDA]))


def object_state(obj: Any) -> Any:
    """The state of one stateful training object, as :func:`restore_object_state` takes it back.

    Args:
        obj: a module, optimizer or learning-rate scheduler (``state_dict``), a ``torch.Generator``
            (``get_state``), a numpy ``Generator`` (its bit generator's state), or None.

    Returns:
        The state (None for None).
    """
    if obj is None:
        return None
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if isinstance(obj, np.random.Generator):
        return _plain(obj.bit_generator.state)  # MT19937's key is an array; numpy takes a list back
    return obj.state_dict()


def restore_object_state(obj: Any, state: Any) -> None:
    """Set ``obj`` to a state that :func:`object_state` returned.

    Args:
        obj: as for :func:`object_state` (None: nothing to restore).
        state: its stored state.

    Raises:
        RuntimeError, ValueError, KeyError, TypeError: the state does not fit ``obj`` (another
            architecture, optimizer or generator kind).
    """
    if obj is None:
        return
    if isinstance(obj, torch.Generator):
        obj.set_state(state)
    elif isinstance(obj, np.random.Generator):
        if not isinstance(state, dict):
            raise TypeError(f"a numpy generator state is a dict, got {type(state).__name__}")
        obj.bit_generator.state = state
    else:
        obj.load_state_dict(state)


def save_checkpoint(path: PathLike, state: dict[str, Any], include_rng: bool = True) -> Path:
    """Write ``state`` (plus the generator states) to ``path`` atomically.

    The payload goes to ``<name>.<pid>-<random>.tmp`` beside ``path`` and replaces it only once complete
    and fsynced; temporary files that killed writers left behind are removed (see
    :mod:`hybrid_node.training.atomic`).

    Args:
        path: destination file; its folder is created if needed.
        state: anything ``torch.save`` accepts (typically state dicts and counters).
        include_rng: also store the global generator states under ``"rng"``.

    Returns:
        The path written.

    Raises:
        ValueError: ``include_rng`` and ``state`` has a ``"rng"`` key of its own (not generator states
            such as :func:`load_checkpoint` returns), which the generator states would silently replace.
    """
    if include_rng and "rng" in state and not _is_rng_state(state["rng"]):
        raise ValueError(
            'state has a key "rng", where save_checkpoint stores the generator states (include_rng=True). '
            "Rename that key, or pass include_rng=False."
        )
    payload = dict(state)
    if include_rng:
        payload["rng"] = rng_state()
    return atomic_write(path, lambda f: torch.save(payload, f))


def _damaged(path: Path, reason: str) -> CheckpointError:
    # One line, one full stop: torch's own reasons span lines and end with ".", which the sentence below
    # would double.
    reason = " ".join(reason.split()).rstrip(".")
    return CheckpointError(
        path,
        f"The checkpoint {str(path)!r} cannot be loaded: {reason}. It is damaged (cut short by an interrupted "
        "write of an older version, or by a disk problem) or is not a hybrid_node checkpoint. Delete it to "
        "train that model again from the start, or put back an earlier copy of it, then resume.",
    )


def load_checkpoint(path: PathLike, restore_rng: bool = True, *, weights_only: bool = True) -> dict[str, Any] | None:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Temporary files left beside it by writes that were killed are removed first.

    Args:
        path: the file.
        restore_rng: set the global generators to the stored states.
        weights_only: read with ``torch.load(..., weights_only=True)`` (tensors, numbers, strings,
            containers and numpy arrays only), so that a file from elsewhere cannot run code when
            loaded. Pass False only for a file you trust that holds other objects.

    Returns:
        The stored dict, or None if ``path`` does not exist.

    Raises:
        CheckpointError: the file is empty, truncated, damaged or not a checkpoint, cannot be opened
            (no read permission), or (``weights_only``) holds objects other than the above; the message
            names it and says what to do.
    """
    path = Path(path)
    remove_stale_temp_files(path)
    if not path.exists():
        return None
    if path.is_dir():
        raise _damaged(path, "it is a folder, not a file")
    if path.stat().st_size == 0:
        raise _damaged(path, "the file is empty")
    try:
        f = open(path, "rb")
    except OSError as e:
        # Not a sign of damage (no read permission, a disk that went away): the file may be intact,
        # and the advice to delete it would throw away the training it holds.
        raise unreadable(path, "checkpoint", e) from e
    with f:
        try:
            payload = _torch_load(f, weights_only)
        except Exception as e:  # noqa: BLE001 - damaged pickles raise almost anything
            refused = _refused_global(e) if weights_only else None
            if refused is not None:
                raise _untrusted(path, refused) from e
            raise _damaged(path, f"{type(e).__name__}: {e}") from e
    if not isinstance(payload, dict):
        raise _damaged(path, f"it holds a {type(payload).__name__}, not a dict of training state")
    if restore_rng and "rng" in payload:
        try:
            set_rng_state(payload["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise _damaged(path, f"its generator states are invalid ({type(e).__name__}: {e})") from e
    return payload


def _torch_load(f: Any, weights_only: bool) -> Any:
    """``torch.load`` of an open checkpoint onto the CPU; weights-only with numpy arrays allowed where
    this torch can allow them (``safe_globals``, torch >= 2.5; older ones read our plain states)."""
    if not weights_only:
        return torch.load(f, map_location="cpu", weights_only=False)
    allow = getattr(torch.serialization, "safe_globals", None)
    if allow is None:
        return torch.load(f, map_location="cpu", weights_only=True)
    with allow(_numpy_globals()):
        return torch.load(f, map_location="cpu", weights_only=True)


def _refused_global(error: BaseException) -> str | None:
    """The name a weights-only load refused (``"module.Name"``), or None for another failure (damage)."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    # "Unsupported global: GLOBAL mod.Name" (torch >= 2.4), "Unsupported class mod.Name" (earlier)
    match = re.search(r"Unsupported (?:global: GLOBAL|class) (\S+)", str(error))
    return match.group(1) if match else None


def _untrusted(path: Path, name: str) -> CheckpointError:
    return CheckpointError(
        path,
        f"The checkpoint {str(path)!r} holds a {name}, which a safe load refuses: only tensors, numbers, strings, "
        "containers and numpy arrays are read without running code named in the file. Store state dicts "
        f"and plain values in checkpoints; or, for a file you trust, load it with load_checkpoint({str(path)!r}, "
        "weights_only=False).",
    )
