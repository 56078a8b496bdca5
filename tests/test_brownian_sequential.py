"""Sequential queries of a BrownianInterval without a grid: the answers are the bridge path of its knots, bit for bit.

The path is rebuilt here from the knots' times and parents alone: each knot is the Brownian bridge between
its two parents with a standard normal draw seeded by (entropy, knot time) (Revuz & Yor 1999, ch. I.3), the
end value W(t1) = sqrt(t1 - t0) z(t1). Every parent pair must have been the knot's neighbours when it went in.
This pins down the values whatever the lookup code does (one search per new knot, the cache's evictions).
"""

from __future__ import annotations

import bisect
import math

import pytest
import torch

import hybrid_node as hn
from hybrid_node.sde._brownian_draws import _seed

T0, T1 = 0.0, 1.0
ENTROPY = 7
SIZE = (3, 4)


def _draw(t: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_seed(ENTROPY, t))
    return torch.randn(SIZE, generator=gen, dtype=torch.float64)


def _rebuild(parents: dict[float, tuple[float, float]]) -> dict[float, torch.Tensor]:
    """W at every knot from the parents, in insertion order; checks each knot went in between neighbours."""
    w = {T0: torch.zeros(SIZE, dtype=torch.float64), T1: math.sqrt(T1 - T0) * _draw(T1)}
    times = [T0, T1]
    for t, (a, b) in parents.items():  # dicts keep insertion order
        i = bisect.bisect_left(times, t)
        assert (times[i - 1], times[i]) == (a, b), f"knot {t} was not bridged from its neighbours"
        times.insert(i, t)
        h, h1 = b - a, t - a
        # The bridge's mean and standard deviation sqrt(h1 h2 / h), in the operations the interval uses
        # (lerp, then the scaled draw added), so that the rebuild is exact to the bit.
        w[t] = torch.lerp(w[a], w[b], h1 / h).add_(_draw(t), alpha=math.sqrt(h1 * (b - t) / h))
    return w


def _queries(n: int) -> list[tuple[float, float]]:
    """n increments in time order (a forward solve), then in reverse (its backward pass), then a few repeats."""
    forward = [(k / n, (k + 1) / n) for k in range(n)]
    return forward + forward[::-1] + forward[:: max(1, n // 7)]


@pytest.mark.parametrize("cache_size", [None, "auto", 3, 0])
def test_sequential_increments_are_the_bridge_path_of_the_knots(cache_size):
    n = 1000  # 49 dyadic knots go in ahead of the sweep, so both insertion paths of a new knot run
    bm = hn.BrownianInterval(T0, T1, SIZE, dtype=torch.float64, entropy=ENTROPY, cache_size=cache_size)
    answers = [bm(a, b) for a, b in _queries(n)]
    parents = bm._knots.parents
    assert len(parents) > n  # dyadic knots were put in, not only the queried times
    w = _rebuild(parents)
    for (a, b), got in zip(_queries(n), answers):
        assert torch.equal(got, w[b] - w[a]), (a, b)


def test_bounded_and_keep_all_caches_answer_sequential_queries_alike():
    n = 3000  # more knots than a cache of 45 holds: the backward pass re-derives them
    queries = _queries(n)
    answers = {}
    for cache_size in (None, 45):
        bm = hn.BrownianInterval(T0, T1, SIZE, dtype=torch.float64, entropy=ENTROPY, cache_size=cache_size)
        answers[cache_size] = [bm(a, b) for a, b in queries]
        if cache_size is not None:
            assert bm.knots_held <= cache_size + 2  # the memory bound still holds
    assert all(torch.equal(x, y) for x, y in zip(answers[None], answers[45]))
