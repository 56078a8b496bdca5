"""The ``dt`` grid of a BrownianInterval: bounded memory, exact re-creation of evicted cells, unchanged law.

The grid is drawn in chunks seeded by (entropy, chunk index) and only the last few chunks are held, so
these tests use a wide noise (many numbers per cell), which makes the chunks short (64 cells) and a
solve of a few hundred steps crosses many of them.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

import hybrid_node as hn

WIDE = (2, 8192)  # 16384 numbers per cell: 64 cells per chunk


def _grid(bm: hn.BrownianInterval, n: int, dt: float) -> list[float]:
    """The grid's times as sdeint steps through them (repeated addition, the last step stretched to t1)."""
    times = [bm.start]
    for _ in range(n - 1):
        times.append(times[-1] + dt)
    return [*times, bm.end]


class _Linear(torch.nn.Module):
    """dy = -a y dt + b y o dW (diagonal, Stratonovich): a smooth field with a parameter to differentiate."""

    noise_type, sde_type = "diagonal", "stratonovich"

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def f(self, t, y):
        return -self.a * y

    def g(self, t, y):
        return self.b * torch.sin(y)


def test_a_long_sequential_solve_holds_a_bounded_number_of_cells():
    n = 2000
    bm = hn.BrownianInterval(0.0, 1.0, WIDE, entropy=1, dt=1 / n)
    y0 = torch.ones(WIDE)
    with torch.no_grad():
        hn.sdeint(_Linear().float(), y0, [0.0, 1.0], bm=bm, method="midpoint", dt=1 / n)
    assert bm.num_knots == n + 1  # every step was one whole grid cell: no knot was inserted off the grid
    # Before chunking all 2000 cells (260 MB here) stayed; now at most the chunks kept (3 of 64 cells).
    assert 0 < bm.cells_held <= 3 * 64
    assert not bm._materialised  # nor was a knot value summed: only whole cells were read


def test_cells_re_created_after_eviction_are_bit_identical_in_any_query_order():
    n, dt = 700, 1 / 700
    bm = hn.BrownianInterval(
        0.0, 1.0, WIDE, dtype=torch.float64, entropy=3, dt=dt, levy_area_approximation="space-time"
    )
    times = _grid(bm, n, dt)
    cells = list(zip(times[:-1], times[1:]))
    first = [tuple(x.clone() for x in bm(a, b, return_U=True)) for a, b in cells]  # forward, as a solve
    assert bm.cells_held < n  # the early chunks were dropped
    order = list(range(n))[::-1] + random.Random(0).sample(range(n), 60)  # an adjoint's order, then random
    for i in order:
        w, u = bm(*cells[i], return_U=True)
        assert torch.equal(w, first[i][0]) and torch.equal(u, first[i][1]), f"cell {i} changed"
    # Another object of the same entropy queried at random first agrees bit for bit, spans of many
    # cells (knot values: chunk starts plus partial sums) included.
    other = hn.BrownianInterval(
        0.0, 1.0, WIDE, dtype=torch.float64, entropy=3, dt=dt, levy_area_approximation="space-time"
    )
    spans = [(times[i], times[j]) for i, j in ((650, 699), (0, 700), (10, 500), (63, 65), (128, 129))]
    late = [other(a, b, return_U=True) for a, b in reversed(spans)][::-1]
    for i in random.Random(1).sample(range(n), 30):
        assert torch.equal(other(*cells[i]), first[i][0])
    for (a, b), (w, u) in zip(spans, late):
        w2, u2 = bm(a, b, return_U=True)
        assert torch.equal(w, w2) and torch.equal(u, u2)


def test_queries_off_the_grid_are_consistent_with_its_cells():
    # Bridged knots between grid knots (an output time inside a step) must glue to the cells: increments
    # add up (to rounding of the partial sums: 1e-12 on values of size 1 in float64) and U satisfies
    # U[a, c] = U[a, b] + U[b, c] + (c - b) W[a, b].
    n, dt = 300, 1 / 300
    bm = hn.BrownianInterval(
        0.0, 1.0, WIDE, dtype=torch.float64, entropy=4, dt=dt, levy_area_approximation="space-time"
    )
    times = _grid(bm, n, dt)
    a, c = times[127], times[129]  # 128 is a chunk boundary (64-cell chunks)
    mid = 0.5 * (times[128] + times[129])
    w_ab, u_ab = bm(a, mid, return_U=True)
    w_bc, u_bc = bm(mid, c, return_U=True)
    w_ac, u_ac = bm(a, c, return_U=True)
    torch.testing.assert_close(w_ab + w_bc, w_ac, rtol=0, atol=1e-12)
    torch.testing.assert_close(u_ab + u_bc + (c - mid) * w_ab, u_ac, rtol=0, atol=1e-12)
    total = sum(bm(s, t) for s, t in zip(times[:-1], times[1:]))
    torch.testing.assert_close(total, bm(0.0, 1.0), rtol=0, atol=1e-11)


def test_the_increments_keep_their_law_across_chunks():
    # 100,000 cells of 4 channels (25 chunks of 4096): the standardised increments have mean 0 and
    # variance 1, U has variance h^3/3 and covariance h^2/2 with dW, and consecutive cells (across chunk
    # boundaries too) are uncorrelated. Bounds: 5 standard errors (1/sqrt(N) for a mean or correlation,
    # sqrt(2/N) for a variance ratio of normals); a chunk seeded like its neighbour would give correlation 1.
    n, dt = 100_000, 1e-5
    bm = hn.BrownianInterval(
        0.0, 1.0, (4,), dtype=torch.float64, entropy=5, dt=dt, levy_area_approximation="space-time"
    )
    times = _grid(bm, n, dt)
    pairs = [bm(a, b, return_U=True) for a, b in zip(times[:-1], times[1:])]
    hs = torch.tensor([b - a for a, b in zip(times[:-1], times[1:])], dtype=torch.float64).unsqueeze(1)
    w = torch.stack([p[0] for p in pairs]) / hs.sqrt()
    u = torch.stack([p[1] for p in pairs]) / hs**1.5
    big = w.numel()
    assert abs(float(w.mean())) < 5 / math.sqrt(big)
    assert abs(float(w.var()) - 1) < 5 * math.sqrt(2 / big)
    # U / h^1.5 = Z / 2 + Z' / sqrt(12): normal with variance 1/3; W U / h^2 has mean 1/2 and standard
    # deviation sqrt(1/2 + 1/12) (Var Z^2 / 4 + Var Z Z' / 12).
    assert abs(float(u.var()) * 3 - 1) < 5 * math.sqrt(2 / big)
    assert abs(float((w * u).mean()) - 0.5) < 5 * math.sqrt(7 / 12) / math.sqrt(big)
    lag = float((w[1:] * w[:-1]).mean())
    assert abs(lag) < 5 / math.sqrt(big)
    boundary = w[4095:4097]  # the last cell of chunk 0 and the first of chunk 1
    assert not torch.equal(boundary[0], boundary[1])
    assert not torch.equal(w[:4096], w[4096:8192])


def test_the_adjoint_replays_the_forward_path_and_its_gradient_matches_finite_differences():
    # reversible_heun's adjoint is the exact gradient of the discrete solve, so it matches central finite
    # differences of the forward solve on the same path (eps 1e-6: truncation error ~ eps^2, rounding
    # ~ 1e-16 / eps: both far below the tolerance 1e-7). The backward solve reads the cells in reverse,
    # re-creating the chunks the forward solve dropped; 0.35 is an output time inside a step (a bridge).
    n = 300
    sde = _Linear()
    bm = hn.BrownianInterval(0.0, 1.0, WIDE, dtype=torch.float64, entropy=6, dt=1 / n)
    y0 = torch.full(WIDE, 0.5, dtype=torch.float64)
    ts = torch.tensor([0.0, 0.35, 1.0], dtype=torch.float64)

    def loss(solve) -> torch.Tensor:
        ys = solve(sde, y0, ts, bm=bm, method="reversible_heun", dt=1 / n)
        return ys[1].mean() + (ys[2] ** 2).mean()

    with torch.no_grad():
        forward = hn.sdeint(sde, y0, ts, bm=bm, method="reversible_heun", dt=1 / n)
    replay = hn.sdeint_adjoint(sde, y0, ts, bm=bm, method="reversible_heun", dt=1 / n)
    assert torch.equal(forward, replay.detach())
    assert bm.cells_held < n
    grads = torch.autograd.grad(loss(hn.sdeint_adjoint), list(sde.parameters()))
    eps = 1e-6
    for p, g in zip(sde.parameters(), grads):
        with torch.no_grad():
            p += eps
            up = float(loss(hn.sdeint))
            p -= 2 * eps
            down = float(loss(hn.sdeint))
            p += eps
        assert abs(float(g) - (up - down) / (2 * eps)) < 1e-7


@pytest.mark.parametrize("size", [(), (3,)])
def test_a_grid_of_two_cells_and_a_narrow_noise_still_answer(size):
    # Two cells, the last one stretched to t1, and a scalar noise (chunks capped at 4096 cells).
    bm = hn.BrownianInterval(0.0, 1.0, size, dtype=torch.float64, entropy=7, dt=0.6)
    assert bm.num_knots == 3 and torch.equal(bm(0.0, 1.0), bm(1.0))
    torch.testing.assert_close(bm(0.0, 0.6) + bm(0.6, 1.0), bm(1.0), rtol=0, atol=1e-15)
    assert bm(0.0, 0.5).shape == torch.Size(size)
