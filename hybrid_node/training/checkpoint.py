"""Checkpoints of training runs: atomic writes and exact resumption.

A checkpoint holds whatever state dict the caller passes (model and optimizer state, step counter,
history) plus the random number generator states of torch, numpy and Python, so that a resumed run
continues with the same random draws as an uninterrupted one. Writing goes to a temporary file in the
same folder followed by ``os.replace``, which is atomic on POSIX and Windows: an interruption leaves
either the old checkpoint or the new one, never a truncated file.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

PathLike = str | os.PathLike


def rng_state() -> dict[str, Any]:
    """The current states of the torch, numpy and Python global generators."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: PathLike, state: dict[str, Any], include_rng: bool = True) -> Path:
    """Write ``state`` (plus the generator states) to ``path`` atomically.

    Args:
        path: destination file; its folder is created if needed.
        state: anything ``torch.save`` accepts (typically state dicts and counters).
        include_rng: also store the global generator states under ``"rng"``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(state)
    if include_rng:
        payload["rng"] = rng_state()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: PathLike, restore_rng: bool = True) -> dict[str, Any] | None:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        restore_rng: set the global generators to the stored states.

    Returns:
        The stored dict, or None if ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        return None
    # weights_only=False: the payload holds numpy/Python generator states, and the file is our own.
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if restore_rng and "rng" in payload:
        set_rng_state(payload["rng"])
    return payload
