"""A bounded memo for the per-call objects a loop of solves asks for again and again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

T = TypeVar("T")

#: guards the memos' insertions and evictions: threads solving at once missed together, and the
#: eviction of one (``pop(next(iter(cache)))``) raised KeyError or "dictionary changed size during
#: iteration" in the other, or left the memo over its limit
_LOCK = threading.Lock()


def memoized(cache: dict, key: Hashable, build: Callable[[], T], limit: int) -> T:
    """``cache[key]``, built by ``build()`` on a miss; the oldest entry goes once ``cache`` holds ``limit``.

    Safe to call from several threads at once: threads that miss together may each call ``build()``,
    and all of them get the result kept first.

    Args:
        cache: the module's memo (insertion-ordered, so its first key is the oldest).
        key: what the result depends on.
        build: makes the result (not called on a hit; an exception leaves nothing in the cache).
        limit: the most entries kept.

    Returns:
        The cached or newly built result.
    """
    out = cache.get(key)
    if out is None and torch.compiler.is_dynamo_compiling():
        # Dynamo (torch.compile, strict torch.export) cannot enter a lock, and keeping an object made
        # inside its trace would need that object rebuilt after the graph: build and use it uncached
        return build()
    if out is None:
        built = build()  # outside the lock: building may take long (tables of a grid, a solver)
        with _LOCK:
            out = cache.get(key)
            if out is None:
                while len(cache) >= limit:
                    cache.pop(next(iter(cache)))
                out = cache[key] = built
    return out
