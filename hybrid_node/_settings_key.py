"""Equality and hashing of frozen settings objects whose fields hold options dicts and tensors.

A frozen dataclass hashes the tuple of its fields, so ``hash(SolveSettings(options={...}))`` raised
"unhashable type: 'dict'" while ``hash(SolveSettings())`` worked, and ``==`` of two settings with
tolerance tensors of several elements raised torch's "Boolean value of Tensor with more than one value
is ambiguous". :func:`value_semantics` gives a settings class ``==`` and ``hash`` over one frozen view of
its fields instead: mappings as sorted items, lists and tuples as tuples, tensors and arrays by dtype,
shape and values, other values as they are (callables by identity).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def frozen(value: Any, where: str = "value") -> Any:
    """A hashable view of a setting's value that two equal settings share.

    Args:
        value: a field's value: a number, string, None, callable, mapping, list/tuple/set, tensor or array.
        where: how an error names the value (e.g. "options['grid']").

    Returns:
        ``value`` itself where it is hashable and not a container, else a tuple tagged with its kind.

    Raises:
        TypeError: a value (or a part of one) that is neither hashable nor one of the containers
            above, naming where it is.
    """
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return ("mapping", tuple((k, frozen(v, f"{where}[{k!r}]")) for k, v in items))
    if isinstance(value, (list, tuple)):
        return ("sequence", tuple(frozen(v, f"{where}[{i}]") for i, v in enumerate(value)))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(frozen(v, where) for v in value))
    if isinstance(value, torch.Tensor):
        # by value: two settings built from equal tensors are equal (a tensor's own hash is its identity)
        data = value.detach().cpu()
        return ("tensor", str(data.dtype), tuple(data.shape), tuple(data.reshape(-1).tolist()))
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, tuple(value.reshape(-1).tolist()))
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"{where} holds a value of type {type(value).__name__}, which has no hash, so the settings cannot "
            "be hashed or compared; give a number, string, tensor, list, dict or a hashable object there."
        ) from None
    return value


def settings_key(obj: Any) -> tuple:
    """The frozen view of a dataclass instance's compared fields (:func:`frozen`), with its type."""
    fields = (f for f in dataclasses.fields(obj) if f.compare)
    return (type(obj), tuple(frozen(getattr(obj, f.name), f"{type(obj).__name__}.{f.name}") for f in fields))


def _eq(self, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return settings_key(self) == settings_key(other)


def _hash(self) -> int:
    return hash(settings_key(self))


def value_semantics(cls: type[T]) -> type[T]:
    """Class decorator (outside ``@dataclasses.dataclass``): ``==`` and ``hash`` over :func:`settings_key`.

    Each decorated dataclass needs it itself: ``@dataclass`` on a subclass writes its own ``__eq__``
    and ``__hash__`` over the raw fields again.

    Args:
        cls: a frozen dataclass.

    Returns:
        ``cls``, with ``__eq__`` and ``__hash__`` replaced.
    """
    cls.__eq__ = _eq  # type: ignore[method-assign]
    cls.__hash__ = _hash  # type: ignore[method-assign]
    return cls
