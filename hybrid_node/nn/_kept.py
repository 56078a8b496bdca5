"""One field object per model and settings, kept across solves.

``compile=True`` caches its graphs per field object (:mod:`hybrid_node.loop`): a wrapper a model
builds anew around its dynamics for every solve (one counting the evaluations, adding a channel or a
per-sample time scale) would compile the graphs anew for every solve. The models keep such wrappers
here instead and set what changes between solves (a tensor of time gaps, probe noise) on the kept
object before each solve; the compiled graphs take those tensors as inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from torch import nn

F = TypeVar("F")


def kept_field(model: nn.Module, key: Hashable, make: Callable[[], F]) -> F:
    """The object ``make()`` built for ``model`` under ``key``, the same one on every call.

    Kept in the model's instance dict, not registered as a submodule, so the model's parameter names
    and state dict are unchanged. Modules in ``key`` compare by identity: a replaced submodule gets a
    new field, and the fields built for modules that are no longer the model's are dropped then (with
    the graphs compiled for them), so replacing a submodule again and again keeps no old one alive.

    Args:
        model: the model the field belongs to.
        key: what the field is built from (its submodules and settings).
        make: builds the field.

    Returns:
        The kept field (a new one on every call when ``key`` cannot be hashed, e.g. a user's callable
        that defines ``__eq__`` only).
    """
    try:
        hash(key)
    except TypeError:
        return make()
    fields = model.__dict__.setdefault("_kept_fields", {})
    field = fields.get(key)
    if field is None:
        live = {id(m) for m in model.modules()}
        for stale in [k for k in fields if not _modules_live(k, live)]:
            del fields[stale]
        field = fields[key] = make()
    return field


def _modules_live(key: Hashable, live: set[int]) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return all(id(part) in live for part in parts if isinstance(part, nn.Module))
