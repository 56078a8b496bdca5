"""Bounded knot storage of Brownian motions queried off a ``dt`` grid, with exact re-derivation.

Knot values besides those at t0 and t1 sit in an LRU cache of ``cache_size`` entries; an evicted one is
re-derived from its parents' values and its own seed. These tests check that (1) the memory held stays
under the bound after many queries, counted as the tensors reachable from the object (which counts the
old storage too, where every knot was kept), (2) the increments, space-time areas U and Levy areas A are
bit for bit the same whatever was evicted and, for the halfway tree, whatever the query order, and (3)
the path keeps the law of Brownian motion with its time integral, and re-deriving stays cheap.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
import torch

import hybrid_node as hn

F64 = torch.float64


def _tensors_held(obj: object) -> int:
    """How many tensors (of any shape) are reachable from the attributes of ``obj``."""
    seen: set[int] = set()
    count = 0
    stack: list[object] = [vars(obj)]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            count += 1
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif hasattr(x, "__dataclass_fields__"):
            stack.extend(vars(x).values())
    return count


def _intervals(n: int, seed: int, t1: float = 1.0) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = sorted((rng.uniform(0, t1), rng.uniform(0, t1)))
        out.append((a, b))
    return out


def _adaptive_like(n: int, seed: int) -> list[tuple[float, float]]:
    """The queries of an adaptive solve on [0, 1]: a step, sometimes rejected and retried at half the size."""
    rng = random.Random(seed)
    t, out = 0.0, []
    while 1.0 - t > 1e-12:
        h = min(rng.uniform(0.5, 1.5) / n, 1.0 - t)
        out.append((t, t + h))
        if rng.random() < 0.2:  # rejected: retried with half the step
            h /= 2
            out.append((t, t + h))
        t += h
    return out


def _answers(bm: Callable, queries: list[tuple[float, float]], order: list[int], **kw) -> list[tuple]:
    """The answers to ``queries`` asked in ``order``, listed in the queries' order."""
    got: dict[int, tuple] = {}
    for i in order:
        out = bm(*queries[i], **kw)
        got[i] = out if isinstance(out, tuple) else (out,)
    return [got[i] for i in range(len(queries))]


def _same(x: list[tuple], y: list[tuple]) -> bool:
    return all(torch.equal(p, q) for xs, ys in zip(x, y) for p, q in zip(xs, ys, strict=True))


def test_random_tree_queries_hold_a_bounded_number_of_knots():
    # 1000 random times at tol 2^-14 of the interval: each new time inserts up to 14 dyadic ancestors. The
    # old storage kept them all (thousands of tensors); now the cache's 20 values and the two ends remain.
    w0 = torch.zeros(4, 8, dtype=F64)
    bm = hn.BrownianTree(0.0, w0, t1=1.0, entropy=3, tol=2.0**-14, cache_size=20)
    rng = random.Random(0)
    for _ in range(1000):
        bm(rng.random())
    # W at each knot held, plus w0: nothing grows with the queries.
    assert _tensors_held(bm) <= 20 + 2 + 1
    assert bm.knots_held <= 20 + 2


@pytest.mark.parametrize("levy", ["none", "space-time"])
def test_an_adaptive_solve_and_its_backward_pass_hold_a_bounded_number_of_knots(levy):
    queries = _adaptive_like(1000, seed=1)
    bm = hn.BrownianInterval(0.0, 1.0, (4, 8), dtype=F64, entropy=2, levy_area_approximation=levy, cache_size=30)
    for q in queries + queries[::-1]:
        bm(*q, return_U=levy != "none")
    assert bm.num_knots > 1000  # every step end became a knot ...
    per_knot = 2 if levy != "none" else 1  # W, and K with a space-time area
    assert _tensors_held(bm) <= per_knot * (30 + 2)  # ... but only the cache's values and the two ends stay
    assert bm.knots_held <= 30 + 2


@pytest.mark.parametrize("levy", ["none", "space-time", "foster"])
def test_halfway_tree_answers_are_bit_identical_in_any_order_and_under_any_eviction(levy):
    queries = _intervals(30, seed=4, t1=2.0)
    kw = {"return_U": levy != "none", "return_A": levy == "foster"}
    n = len(queries)
    orders = {
        "forward": list(range(n)),
        "backward": list(range(n))[::-1],
        "random": random.Random(5).sample(range(n), n),
    }

    def tree(cache_size: int | None) -> hn.BrownianInterval:
        return hn.BrownianInterval(
            0.0,
            2.0,
            (3, 4),
            dtype=F64,
            entropy=9,
            halfway_tree=True,
            tol=1e-3,
            levy_area_approximation=levy,
            cache_size=cache_size,
        )

    reference = _answers(tree(None), queries, orders["forward"], **kw)
    for name, order in orders.items():
        for cache_size in (0, 3, 10**6):
            bm = tree(cache_size)
            assert _same(_answers(bm, queries, order, **kw), reference), (name, cache_size)
            # Asked again after everything else: re-derived from the ends where evicted.
            assert _same(_answers(bm, queries, orders["random"], **kw), reference), (name, cache_size)


def test_brownian_tree_values_are_bit_identical_under_eviction_and_order():
    w0 = torch.full((2, 3), 0.5, dtype=F64)
    times = [random.Random(6).uniform(0.0, 1.0) for _ in range(200)]
    ref_tree = hn.BrownianTree(0.0, w0, t1=1.0, entropy=11, cache_size=None)
    reference = [ref_tree(t) for t in times]
    for cache_size in (0, 3, 45):
        bm = hn.BrownianTree(0.0, w0, t1=1.0, entropy=11, cache_size=cache_size)
        got = {i: bm(times[i]) for i in reversed(range(len(times)))}
        assert all(torch.equal(got[i], reference[i]) for i in range(len(times))), cache_size


@pytest.mark.parametrize("levy", ["none", "space-time", "davie"])
@pytest.mark.parametrize("pattern", ["adaptive", "random"])
def test_free_knots_are_bit_identical_under_any_eviction(levy, pattern):
    # Off the halfway tree a knot is drawn from its neighbours at the time it is inserted, so the path is
    # a function of the entropy and the sequence of queries; the cache size must not change it. The
    # backward pass re-asks every query after the cache has evicted the early knots.
    queries = _adaptive_like(60, seed=7) if pattern == "adaptive" else _intervals(60, seed=8)
    kw = {"return_U": levy != "none", "return_A": levy == "davie"}
    n = len(queries)
    forward, backward = list(range(n)), list(range(n))[::-1]

    def interval(cache_size: int | None) -> hn.BrownianInterval:
        return hn.BrownianInterval(
            0.0, 1.0, (3, 4), dtype=F64, entropy=13, levy_area_approximation=levy, cache_size=cache_size
        )

    reference = _answers(interval(None), queries, forward, **kw)
    for cache_size in (0, 2, 45):
        bm = interval(cache_size)
        assert _same(_answers(bm, queries, forward, **kw), reference), cache_size
        assert _same(_answers(bm, queries, backward, **kw), reference), cache_size


def test_free_knots_off_a_dt_grid_are_re_derived_exactly():
    # With a grid hint, knots off the grid are bridged from grid knots (drawn by chunks) and from each other.
    queries = _intervals(400, seed=12)
    ref = hn.BrownianInterval(0.0, 1.0, (3, 4), dtype=F64, entropy=14, dt=0.01, cache_size=None)
    small = hn.BrownianInterval(0.0, 1.0, (3, 4), dtype=F64, entropy=14, dt=0.01, cache_size=1)
    order = list(range(len(queries)))
    reference = _answers(ref, queries, order)
    assert _same(_answers(small, queries, order), reference)
    assert _same(_answers(small, queries, order[::-1]), reference)
    assert small.knots_held <= 1


def test_a_backward_pass_re_derives_each_knot_about_once():
    # Queries in time order make a chain (each knot bridged from the one before); without the dyadic
    # knots that break it, re-deriving the knot k of the backward pass would re-derive the k knots before
    # it (2 * 10^5 draws here). Counted, not timed: the draws made during the backward pass.
    n = 2000
    bm = hn.BrownianInterval(0.0, 1.0, (2,), dtype=F64, entropy=15, cache_size=45)
    draws = _count_draws(bm)
    for k in range(n):
        bm(k / n, (k + 1) / n)
    forward = draws[0]
    assert forward <= 1.5 * n  # the step ends plus their dyadic ancestors (about n / 8 of them)
    for k in reversed(range(n)):
        bm(k / n, (k + 1) / n)
    assert draws[0] - forward <= 2 * n


@pytest.mark.parametrize("levy", ["none", "space-time"])
def test_the_law_of_increments_and_integrals_is_kept(levy):
    # 20000 independent components of one path; a forward sweep of 40 steps with rejected steps between,
    # with a cache of 5 so that the backward sweep re-derives. Each step h: Var dW = h, and with the
    # space-time area Var U = h^3 / 3, Cov(dW, U) = h^2 / 2 (Kloeden & Platen 1992, section 10.4);
    # adjacent increments uncorrelated. The sample variance of N normals has relative standard error
    # sqrt(2 / N) = 1.0%: 5% is 5 standard errors. A correlation has standard error 1 / sqrt(N) = 0.7%.
    big = 20000
    bm = hn.BrownianInterval(0.0, 1.0, (big,), dtype=F64, entropy=16, levy_area_approximation=levy, cache_size=5)
    times = [0.0]
    rng = random.Random(17)
    while times[-1] < 1.0:
        h = min(rng.uniform(0.01, 0.04), 1.0 - times[-1])
        bm(times[-1], times[-1] + 2 * h if times[-1] + 2 * h <= 1.0 else 1.0)  # a rejected trial step
        times.append(times[-1] + h)
    steps = list(zip(times[:-1], times[1:]))
    outs = [bm(a, b, return_U=levy != "none") for a, b in reversed(steps)][::-1]
    previous = None
    for (a, b), out in zip(steps, outs):
        h = b - a
        dw, u = (out, None) if levy == "none" else out
        assert float(dw.var()) == pytest.approx(h, rel=0.05)
        if u is not None:
            assert float(u.var()) == pytest.approx(h**3 / 3, rel=0.05)
            cov = float((dw * u).mean() - dw.mean() * u.mean())
            assert cov == pytest.approx(h**2 / 2, rel=0.05)
        if previous is not None:
            corr = float(torch.corrcoef(torch.stack([previous, dw]))[0, 1])
            assert abs(corr) < 5 / math.sqrt(big)
        previous = dw


@pytest.mark.parametrize("bad", [-1, 2.5, True, "45"])
def test_a_bad_cache_size_is_refused(bad):
    with pytest.raises(ValueError, match="cache_size"):
        hn.BrownianInterval(0.0, 1.0, (2,), cache_size=bad)
    with pytest.raises(ValueError, match="cache_size"):
        hn.BrownianTree(0.0, torch.zeros(2), cache_size=bad)


def _count_draws(bm: hn.BrownianInterval) -> list[int]:
    """Count the bridge draws of ``bm`` from now on (the list's one entry)."""
    draws = [0]
    draw = bm._bridge_value

    def counted(*args):
        draws[0] += 1
        return draw(*args)

    bm._bridge_value = counted  # type: ignore[method-assign]
    return draws


def test_a_sweep_in_time_order_adds_few_dyadic_knots():
    # The dyadic knots that keep chains short go down to cells of about _CHAIN = 16 steps: about
    # 2 n / 16 = n / 8 of them. A step that ends just past a dyadic knot used to count its distance to
    # that knot as the spacing and split cells down to 2^-16 (2416 extra knots for 10^4 steps, 24%).
    n = 10000
    bm = hn.BrownianInterval(0.0, 1.0, (2,), dtype=F64, entropy=15, cache_size=None)
    for k in range(n):
        bm(k / n, (k + 1) / n)
    assert bm.num_knots - (n + 1) <= 0.15 * n


def test_the_default_cache_holds_a_thousand_step_solve():
    # cache_size="auto" keeps 16 MiB of knots: 2048 of a 16 x 64 float64 state, 1024 with a space-time
    # area (K doubles a knot). A forward pass of 1000 steps (about 1100 knots with the dyadic ones) then
    # stays in memory and its backward pass draws nothing; the old default of 45 re-derived every knot.
    # A state of a million numbers keeps torchsde's 45, a tiny one at most 4096 knots.
    bm = hn.BrownianInterval(0.0, 1.0, (16, 64), dtype=F64, entropy=1)
    assert bm.cache_size == 2048
    st = hn.BrownianInterval(0.0, 1.0, (16, 64), dtype=F64, entropy=1, levy_area_approximation="space-time")
    assert st.cache_size == 1024
    assert hn.BrownianInterval(0.0, 1.0, (1000, 1000), dtype=F64).cache_size == 45
    assert hn.BrownianInterval(0.0, 1.0, (2,), dtype=F64).cache_size == 4096
    assert hn.BrownianTree(0.0, torch.zeros(16, 64, dtype=F64)).cache_size == 2048
    n = 1000
    for k in range(n):
        bm(k / n, (k + 1) / n)
    draws = _count_draws(bm)
    for k in reversed(range(n)):
        bm(k / n, (k + 1) / n)
    assert draws[0] == 0
    assert bm.knots_held <= 2048 + 2


@pytest.mark.parametrize(("h1", "h2"), [(0.3, 0.7), (1e-3, 2.0), (5.0, 1e-4), (0.5, 0.5)])
def test_bridge_coefficients_match_the_gain_solved_numerically(h1, h2):
    # The closed-form weights of the space-time bridge against the gain C A^T (A C A^T)^-1 solved by
    # torch.linalg (Wilson et al. 2020) and the draws x(z) of Kloeden & Platen (1992, section 10.4),
    # expanded column by column. Relative 1e-9: the solve of a 2 x 2 system with condition number up to
    # about (h / min(h1, h2))^2 ~ 1e8 here loses up to 8 of the 16 digits.
    from hybrid_node.sde.brownian import _bridge_coefficients

    f = torch.float64
    cov = torch.zeros(4, 4, dtype=f)
    for j, hj in ((0, h1), (2, h2)):
        cov[j : j + 2, j : j + 2] = torch.tensor([[hj, hj**2 / 2], [hj**2 / 2, hj**3 / 3]], dtype=f)
    a_mat = torch.tensor([[1.0, 0.0, 1.0, 0.0], [h2, 1.0, 0.0, 1.0]], dtype=f)
    gain = torch.linalg.solve(a_mat @ cov @ a_mat.T, a_mat @ cov).T  # (4, 2)
    # x = L z with L the map of the four standard normals to (w1, i1, w2, i2).
    q = 1 / math.sqrt(12)
    lmap = torch.zeros(4, 4, dtype=f)
    for j, hj in ((0, h1), (2, h2)):
        r = math.sqrt(hj)
        lmap[j, j] = r
        lmap[j + 1, j], lmap[j + 1, j + 1] = hj * r / 2, hj * r * q
    # x + G (r - A x) = (I - G A) L z + G r: weights of z, then of r = (dw, di).
    weights = torch.cat([(torch.eye(4, dtype=f) - gain @ a_mat) @ lmap, gain], dim=1)  # (4, 6)
    cw, ci = _bridge_coefficients(h1, h2)
    scale = weights[:2].abs().max(dim=1).values
    assert torch.allclose(torch.tensor([cw, ci], dtype=f) / scale[:, None], weights[:2] / scale[:, None], atol=1e-9)
