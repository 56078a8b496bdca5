"""The knots off the grid of a :class:`~hybrid_node.sde.brownian.BrownianInterval`: a bounded store of their
values, re-derived bit for bit from their parents when evicted, and the Brownian bridge that draws them.

The values (W, K) of the ends t0 and t1 are pinned; those of every other knot sit in an LRU cache of
``cache_size`` entries (as torchsde's). Every knot is drawn from the bridge between two parent knots with a
draw seeded by (entropy, knot time), so an evicted value is re-derived from its parents, themselves
re-derived as far as evicted. Off the halfway tree a knot's parents are its two neighbours when it was
inserted, kept in ``parents`` (two floats per knot); the halfway tree needs none (a grid time's parents are
the ends of its dyadic parent cell).

:class:`_KnotCache` is owned by the Brownian interval (composition). Re-deriving a knot needs the values of
parents that may lie on the ``dt`` grid and the interval's bridge draw; both are passed to
:meth:`_KnotCache.rederive` as callables at the call, so that the store keeps no reference back to the
interval and a bridge draw replaced on the interval (as tests do to count draws) is the one used.

References:
    P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992,
    section 10.4 (the joint law of (Delta W, int W du) used for the space-time Levy area).
    J. T. Wilson et al., "Efficiently sampling functions from Gaussian process posteriors", ICML 2020
    (pathwise conditioning, used to bridge W and its time integral jointly).
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Callable

import torch

from ._brownian_draws import _Sampling, _Value

# Off the grid, a new knot's dyadic ancestors are inserted down to cells of about this many times the
# distance to its nearest knot (see BrownianInterval._scaffold), so that a knot's chain of parents to
# re-derive after eviction stays under about this many knots, plus its dyadic ancestors: about 30 for
# 10^4 steps, within torchsde's default cache of 45 values.
_CHAIN = 16
# The default knot cache (cache_size="auto"): as many knot values as fit in this many bytes, within the
# counts below. 16 MiB hold 2048 knots of a 16 x 64 float64 state (1024 with a Levy area, whose K doubles a
# knot): a whole adaptive solve of 10^3 steps, so that its backward pass re-derives nothing, and the top
# ten levels of a halfway tree. The floor is torchsde's default count (a chain of ``_CHAIN`` knots and its
# ancestors fit), the ceiling bounds the per-entry overhead of tiny states.
_CACHE_BYTES = 16 * 2**20
_CACHE_KNOTS = (45, 4096)
# How many knots of the dyadic tree ``_spacing`` looks past on each side for a queried knot.
_SPACING_SCAN = 4


def _auto_cache_size(s: _Sampling) -> int:
    """The default cache size: the knots that fit in ``_CACHE_BYTES`` (W, and K with a Levy area), within
    ``_CACHE_KNOTS``."""
    numel = max(1, math.prod(s.size))
    knot = numel * s.dtype.itemsize + (numel * s.kdtype.itemsize if s.levy else 0)
    return min(max(_CACHE_BYTES // knot, _CACHE_KNOTS[0]), _CACHE_KNOTS[1])


class _KnotCache:
    """Pinned end values, an LRU cache of the other knots' values, and each inserted knot's parents.

    Args:
        cache_size: how many values besides the pinned ones are kept (None: all, 0: none).
    """

    def __init__(self, cache_size: int | None):
        self.cache_size = cache_size
        self.pinned: dict[float, _Value] = {}
        self.cache: OrderedDict[float, _Value] = OrderedDict()
        self.parents: dict[float, tuple[float, float]] = {}

    def __len__(self) -> int:
        """How many knot values are in memory: the pinned ones and the cache."""
        return len(self.pinned) + len(self.cache)

    def held(self, t: float) -> _Value | None:
        """The value of knot t if it is in memory (a cache hit becomes the most recently used), else None."""
        v = self.pinned.get(t)
        if v is not None:
            return v
        v = self.cache.get(t)
        if v is not None:
            self.cache.move_to_end(t)
        return v

    def keep(self, t: float, v: _Value) -> None:
        """Cache the value of knot t, evicting the least recently used values beyond ``cache_size``."""
        if self.cache_size == 0:
            return
        self.cache[t] = v
        self.cache.move_to_end(t)
        if self.cache_size is not None:
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)

    def rederive(
        self,
        t: float,
        value: Callable[[float], _Value],
        bridge: Callable[[float, float, float, _Value, _Value], _Value],
    ) -> _Value:
        """Re-create the evicted value of knot t from its parents, re-creating those first as far as evicted.

        Each knot was drawn by ``bridge`` from its parents' values and its own seed, so repeating the draw
        from the same parent values gives the same bits. The walk uses an explicit stack (a chain of knots
        can be longer than Python's recursion limit) and holds the values it finds until it is done,
        whatever the cache evicts meanwhile.

        Args:
            t: an inserted knot (one with parents).
            value: the value of a knot that is no inserted one (a pinned end or a grid knot).
            bridge: the bridge draw ``bridge(t, a, b, va, vb)`` that made the knots.

        Returns:
            (W, K) at t.
        """
        found: dict[float, _Value] = {}

        def at_hand(s: float) -> bool:
            if s not in found:
                # Pinned ends and grid knots are always at hand; an inserted knot only while cached.
                v = self.held(s) if s in self.parents else value(s)
                if v is None:
                    return False
                found[s] = v
            return True

        stack = [t]
        while stack:
            s = stack[-1]
            a, b = self.parents[s]
            missing = [p for p in (a, b) if not at_hand(p)]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            if s not in found:
                found[s] = bridge(s, a, b, found[a], found[b])
                self.keep(s, found[s])
        return found[t]


def _spacing(times: list[float], tree: set[float], t: float, a: float, b: float, i: int | None = None) -> float:
    """The spacing of the queries around a new time t between knots a and b, for ``_scaffold``.

    The distance from t to the nearest knot that is no knot of the dyadic tree (t0, t1 and those
    ``_scaffold`` put in), looking past at most ``_SPACING_SCAN`` tree knots on each side; the distance to
    the nearer neighbour if there is none. In a sweep of queries in time order t often falls just past a
    dyadic knot, and the distance to it made the scaffold split cells far below the step (levels down to
    2^-16 for steps of 10^-4: 24% more draws than queries instead of about 10%).

    Args:
        times: the knot times off the grid, sorted.
        tree: the knots of the dyadic tree among them.
        t, a, b: the new time and the knots just below and above it.
        i: ``bisect_left(times, t)`` if the caller has it.

    Returns:
        The spacing (positive).
    """
    if i is None:
        i = bisect.bisect_left(times, t)
    gap = math.inf
    for j in range(i - 1, max(i - 1 - _SPACING_SCAN, -1), -1):
        if times[j] not in tree:
            gap = t - times[j]
            break
    for j in range(i, min(i + _SPACING_SCAN, len(times))):
        if times[j] not in tree:
            gap = min(gap, times[j] - t)
            break
    return gap if gap < math.inf else min(t - a, b - t)


def _bridge_coefficients(h1: float, h2: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Weights of the left half's increment w1 and integral i1 in a bridge of (W, int W du) over [a, b].

    The halves [a, t] and [t, b] (lengths h1, h2, h = h1 + h2) get unconditioned draws x = (w1, i1, w2, i2)
    from four standard normals z: w_j = sqrt(h_j) z_{2j}, i_j = h_j sqrt(h_j) (z_{2j} / 2 + z_{2j+1} / sqrt(12))
    (Kloeden & Platen 1992, section 10.4), then x += G (r - A x) with A x = (w1 + w2, i1 + i2 + h2 w1) and r
    the parent's (dw, di), G = C A^T (A C A^T)^{-1} the gain of the prior covariance C (Wilson et al. 2020).
    A C A^T is the covariance (h, h^2 / 2; h^2 / 2, h^3 / 3) of (W, int W du) over [a, b], so with s = h1 / h
    the rows of G used are (3 s^2 - 2 s, 6 s (1 - s) / h) and (-s^2 h2, 3 s^2 - 2 s^3).

    Args:
        h1, h2: the lengths of the two halves (positive).

    Returns:
        Two rows of six weights, for w1 and for i1, of (z0, z1, z2, z3, dw, di).
    """
    h = h1 + h2
    s = h1 / h
    g00, g01 = 3 * s * s - 2 * s, 6 * s * (1 - s) / h
    g10, g11 = -s * s * h2, 3 * s * s - 2 * s**3
    r1, r2, q = math.sqrt(h1), math.sqrt(h2), 1 / math.sqrt(12)
    # res_w = dw - x0 - x2 and res_i = di - x1 - x3 - h2 x0 expanded in z.
    w1 = (r1 * (1 - g00 - g01 * (h1 / 2 + h2)), -g01 * h1 * r1 * q, -r2 * (g00 + g01 * h2 / 2), -g01 * h2 * r2 * q)
    i1 = (
        r1 * (h1 / 2 - g10 - g11 * (h1 / 2 + h2)),
        (1 - g11) * h1 * r1 * q,
        -r2 * (g10 + g11 * h2 / 2),
        -g11 * h2 * r2 * q,
    )
    return (*w1, g00, g01), (*i1, g10, g11)


def _bridge_value(s: _Sampling, t: float, a: float, b: float, va: _Value, vb: _Value) -> _Value:
    """The value at t of the Brownian bridge from value ``va`` at a to ``vb`` at b (a < t < b).

    A function of its arguments, the entropy and t only (the draw is seeded by (entropy, t)), so that an
    evicted knot is re-derived bit for bit from its parents.

    Args:
        s: the shape, precision and seed of the draws.
        t, a, b: the new knot's time and those of its parents.
        va, vb: (W, K) at a and b (K None without a Levy area).

    Returns:
        (W, K) at t, as stored (see ``_Sampling.pair``).
    """
    (wa, ka), (wb, kb) = va, vb
    h, h1, h2 = b - a, t - a, b - t
    if not s.levy:
        # Two tensor operations (lerp, then the scaled draw added in place): a draw is the hot spot of
        # adaptive solves and their backward passes, and every temporary of the size costs about as much
        # as the arithmetic.
        return torch.lerp(wa, wb, h1 / h).add_(s.randn(t), alpha=math.sqrt(h1 * h2 / h)), None
    # Pathwise conditioning (Wilson et al. 2020): the increments and local integrals (w1, i1, w2, i2) of
    # the two halves, drawn unconditionally from z, corrected linearly so that they reproduce the
    # parent's increment dw = w1 + w2 and integral di = i1 + i2 + h2 w1 exactly. The left half's
    # (w1, i1) is linear in (z, dw, di); ``_bridge_coefficients`` gives the weights in closed form.
    assert ka is not None and kb is not None
    cw, ci = _bridge_coefficients(h1, h2)
    z = s.randn(t, 4)
    dw = (wb - wa).to(s.kdtype)  # the correction in K's precision (see kdtype), as it was with K
    di = (kb - ka).sub_(wa, alpha=h)
    w1 = torch.mul(dw, cw[4]).add_(di, alpha=cw[5])
    i1 = torch.mul(dw, ci[4]).add_(di, alpha=ci[5])
    for j in range(4):
        w1.add_(z[j], alpha=cw[j])
        i1.add_(z[j], alpha=ci[j])
    return wa + w1.to(s.dtype), ka.add(wa, alpha=h1).add_(i1)
