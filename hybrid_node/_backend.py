"""The process-wide default backend: the one global setting of the library."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

BACKENDS = ("torch", "julia")
_ENV = "HYBRID_NODE_BACKEND"
_default: str | None = None


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"Unknown backend {name!r}; choose one of {BACKENDS}.")
    return name


def get_backend() -> str:
    """Return the default backend: set_backend's value, else $HYBRID_NODE_BACKEND, else "torch".

    Returns:
        "torch" or "julia".

    Raises:
        ValueError: $HYBRID_NODE_BACKEND names no backend.
    """
    if _default is not None:
        return _default
    env = os.environ.get(_ENV)
    if env:
        try:
            return _check(env.strip().lower())
        except ValueError as e:
            raise ValueError(f"{_ENV}={env!r} is invalid: {e}") from None
    return "torch"


def set_backend(name: str | None) -> None:
    """Set the process default backend; None restores the environment default.

    Args:
        name: "torch" or "julia", or None.

    Raises:
        ValueError: ``name`` is not a backend.
    """
    global _default
    _default = None if name is None else _check(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager that sets the default backend inside a ``with`` block (the previous one after it).

    Args:
        name: "torch" or "julia".

    Raises:
        ValueError: ``name`` is not a backend.
    """
    global _default
    previous = _default
    _default = _check(name)
    try:
        yield
    finally:
        _default = previous


def resolve_backend(name: str | None) -> str:
    """The backend a call uses: its own ``backend=`` argument, else the default."""
    return get_backend() if name is None else _check(name)
