"""One field object per model, settings and thread, kept across solves.

``compile=True`` caches its graphs per field object (:mod:`hybrid_node.loop`): a wrapper a model
builds anew around its dynamics for every solve (one counting the evaluations, adding a channel or a
per-sample time scale) would compile the graphs anew for every solve. The models keep such wrappers
here instead and set what changes between solves (a tensor of time gaps, probe noise) on the kept
object before each solve; the compiled graphs take those tensors as inputs.

Because the kept object carries per-solve state, every thread that solves with a model has its own:
shared, one thread's time gaps could be replaced by another's between being set and being solved with
(four threads evolving one ``ODERNN`` gave silently wrong states in 114 runs of 120), and the threads'
evaluation counts would mix. With ``compile=True`` each thread compiles its graphs once. And every
model object has its own: ``nn.DataParallel``'s replicas copy the model's ``__dict__`` shallowly, so a
dict shared with them would have the model's entries dropped by every replica's solve (as fields of
modules that are not the replica's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

from torch import nn

from .._traced_solve import untraced
from .._tracing import traced

F = TypeVar("F")

#: guards the changes to the kept fields (threads solving with one model may miss at once)
_LOCK = threading.Lock()


def kept_field(model: nn.Module, key: Hashable, make: Callable[[], F]) -> F:
    """The object ``make()`` built for ``model`` under ``key`` in this thread, the same one on every call.

    Kept in the model's instance dict, not registered as a submodule, so the model's parameter names
    and state dict are unchanged. Modules in ``key`` compare by identity: a replaced submodule gets a
    new field, and the fields built for modules that are no longer the model's are dropped then (with
    the graphs compiled for them), so replacing a submodule again and again keeps no old one alive. Each
    thread gets its own field (the caller sets per-solve state on it), dropped once that thread has
    ended; a copy of the model that shares its instance dict (``nn.DataParallel``'s replicas) gets
    fields of its own.

    Args:
        model: the model the field belongs to.
        key: what the field is built from (its submodules and settings).
        make: builds the field.

    Returns:
        The kept field (a new one on every call when ``key`` cannot be hashed, e.g. a user's callable
        that defines ``__eq__`` only).
    """
    if traced():  # in the user's torch.compile: Dynamo cannot trace the thread's identity or the lock
        return _kept_field_untraced(model, key, make)
    return _kept_field(model, key, make)


def _kept_field(model: nn.Module, key: Hashable, make: Callable[[], F]) -> F:
    try:
        hash(key)
    except TypeError:
        return make()
    thread = threading.current_thread()
    fields = _own_fields(model)
    field = None if fields is None else fields.get((key, thread))
    if field is None:
        field = make()
        with _LOCK:
            fields = _own_fields(model)
            if fields is None:
                fields = model.__dict__["_kept_fields"] = _Fields(id(model))
            live = {id(m) for m in model.modules()}
            for stale in [k for k in fields if not _live(k, live)]:
                del fields[stale]
            field = fields.setdefault((key, thread), field)
    return field


class _Fields(dict):
    """The kept fields of one model object: ``{(key, thread): field}``; ``owner`` is the model's ``id``."""

    def __init__(self, owner: int):
        super().__init__()
        self.owner = owner

    def __reduce__(self):
        # a copied or unpickled model is another object, which keeps fields of its own
        return (_Fields, (-1,))


def _own_fields(model: nn.Module) -> _Fields | None:
    """``model``'s kept fields; None when it has none yet, or has the dict of the model it was copied
    from (or a plain dict, from a model pickled before the fields were kept per thread)."""
    fields = model.__dict__.get("_kept_fields")
    return fields if isinstance(fields, _Fields) and fields.owner == id(model) else None


def _live(entry: tuple, live: set[int]) -> bool:
    key, thread = entry
    parts = key if isinstance(key, tuple) else (key,)
    return thread.is_alive() and all(id(part) in live for part in parts if isinstance(part, nn.Module))


#: :func:`_kept_field` run by the interpreter when the user's torch.compile reaches it
_kept_field_untraced = untraced(_kept_field)
