"""A bounded memo for the per-call objects a loop of solves asks for again and again."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


def memoized(cache: dict, key: Hashable, build: Callable[[], T], limit: int) -> T:
    """``cache[key]``, built by ``build()`` on a miss; the oldest entry goes once ``cache`` holds ``limit``.

    Args:
        cache: the module's memo (insertion-ordered, so its first key is the oldest).
        key: what the result depends on.
        build: makes the result (not called on a hit; an exception leaves nothing in the cache).
        limit: the most entries kept.

    Returns:
        The cached or newly built result.
    """
    out = cache.get(key)
    if out is None:
        if len(cache) >= limit:
            cache.pop(next(iter(cache)))
        out = cache[key] = build()
    return out
