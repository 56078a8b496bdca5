"""Brownian intervals: consistency of increments in any query order, reproducibility and statistics."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from _sde_problems import GBM, fine_grid_levy_area

import hybrid_node as hn


def test_increments_add_up_and_repeat_in_any_order():
    bm = hn.BrownianInterval(0.0, 1.0, (4, 3), dtype=torch.float64, entropy=7, levy_area_approximation="space-time")
    late = bm(0.6, 0.9).clone()  # queried first: later queries must stay consistent with it
    parts = [bm(a, b) for a, b in ((0.0, 0.25), (0.25, 0.6), (0.6, 0.75), (0.75, 0.9), (0.9, 1.0))]
    torch.testing.assert_close(parts[2] + parts[3], late)
    torch.testing.assert_close(sum(parts), bm(0.0, 1.0))
    torch.testing.assert_close(bm(0.25, 0.6), parts[1])
    torch.testing.assert_close(bm(0.3), bm(0.0, 0.3))  # a point query is W(t) - W(t0)
    # The time integrals add up too: U[a,c] = U[a,b] + U[b,c] + (c - b) W[a,b].
    _, u_ac = bm(0.25, 0.75, return_U=True)
    w_ab, u_ab = bm(0.25, 0.6, return_U=True)
    _, u_bc = bm(0.6, 0.75, return_U=True)
    torch.testing.assert_close(u_ac, u_ab + u_bc + 0.15 * w_ab)


def test_same_entropy_same_path_and_other_entropy_other_path():
    make = lambda e: hn.BrownianInterval(0.0, 2.0, (3,), dtype=torch.float64, entropy=e, dt=0.1)
    a, b, c = make(1), make(1), make(2)
    for t0, t1 in ((0.0, 0.3), (0.35, 1.7), (1.2, 1.25)):
        torch.testing.assert_close(a(t0, t1), b(t0, t1))
    assert not torch.equal(a(0.0, 2.0), c(0.0, 2.0))


@pytest.mark.parametrize("dt", [None, 0.01])
def test_increment_statistics(dt):
    n, h = 20000, 0.1
    bm = hn.BrownianInterval(
        0.0, 1.0, (n,), dtype=torch.float64, entropy=3, dt=dt, levy_area_approximation="space-time"
    )
    bm(0.0, 1.0)
    w, u = bm(0.3, 0.3 + h, return_U=True)  # a bridge inside a sampled interval (or grid lookups)
    tol = 4 / math.sqrt(n)
    assert abs(float(w.mean())) < tol * math.sqrt(h)
    assert abs(float(w.var()) / h - 1) < 5 * tol
    assert abs(float(u.var()) / (h**3 / 3) - 1) < 5 * tol  # Var int (W - W_a) du = h^3 / 3
    assert abs(float((w * u).mean()) / (h**2 / 2) - 1) < 5 * tol  # Cov(dW, U) = h^2 / 2
    w1, w2 = bm(0.0, 0.5), bm(0.5, 1.0)
    assert abs(float((w1 * w2).mean())) < tol * 0.5 * 4  # independent increments


def test_path_and_tree_values():
    w0 = torch.full((2, 3), 5.0, dtype=torch.float64)
    path = hn.BrownianPath(0.0, w0, entropy=1)
    torch.testing.assert_close(path(0.4), w0 + path(0.0, 0.4))
    w1 = torch.zeros(2, 3, dtype=torch.float64)
    tree = hn.BrownianTree(0.0, w0, t1=2.0, w1=w1, entropy=1)
    torch.testing.assert_close(tree(2.0), w1)  # pinned at the end
    torch.testing.assert_close(tree(0.7, 1.1) + tree(0.7), tree(1.1))


def test_bad_inputs_raise_with_fixes():
    with pytest.raises(ValueError, match="t0 < t1"):
        hn.BrownianInterval(1.0, 0.0, (2,))
    with pytest.raises(ValueError, match="unknown levy_area_approximation"):
        hn.BrownianInterval(0.0, 1.0, (2,), levy_area_approximation="spacetime")
    bm = hn.BrownianInterval(0.0, 1.0, (2,))
    with pytest.raises(ValueError, match="whole solve interval"):
        bm(0.5, 1.5)
    with pytest.raises(ValueError, match="ta <= tb"):
        bm(0.6, 0.5)
    with pytest.raises(ValueError, match="space-time"):
        bm(0.0, 0.5, return_U=True)
    with pytest.raises(ValueError, match="foster"):
        hn.BrownianInterval(0.0, 1.0, (2, 2), levy_area_approximation="space-time")(0.0, 0.5, return_A=True)


@pytest.mark.parametrize("kind", ["davie", "foster"])
def test_levy_area_approximations_match_the_conditional_law_of_the_true_area(kind):
    # The true area (from a fine grid of the same path) given (W, H) has mean H_0 W_1 - W_0 H_1 and
    # variance h^2/20 + h (H_0^2 + H_1^2)/5; Davie's noise has the average of that variance (h^2/12),
    # Foster's the conditional one. Both give Var A = h^2/4.
    n, h, cells = 20000, 0.5, 128
    bm = hn.BrownianInterval(0.0, h, (n, 2), dtype=torch.float64, entropy=1, dt=h / cells, levy_area_approximation=kind)
    true = fine_grid_levy_area(bm, h, cells)
    w, u, area = bm(0.0, h, return_U=True, return_A=True)
    torch.testing.assert_close(bm(0.0, h, return_A=True)[1], area)  # a repeated query: the same draw
    assert area.shape == (n, 2, 2) and bool((area + area.transpose(1, 2) == 0).all())
    hh = u / h - w / 2
    mean = hh[:, 0] * w[:, 1] - w[:, 0] * hh[:, 1]
    tol = 5 / math.sqrt(n)
    assert abs(float((true * mean).mean() / (mean * mean).mean()) - 1) < 2 * tol  # E[A | W, H] = mean
    assert abs(float(true.var()) / (h * h / 4 * (1 - 1 / cells)) - 1) < 2 * tol
    assert abs(float(area[:, 0, 1].var()) / (h * h / 4) - 1) < 2 * tol
    # Residual variance as a linear function of h (H_0^2 + H_1^2): intercept / h^2 and slope.
    x = torch.stack([torch.full((n,), h * h), h * (hh[:, 0] ** 2 + hh[:, 1] ** 2)], 1)

    def fit(r):
        return torch.linalg.lstsq(x, (r * r).unsqueeze(1)).solution.squeeze(1)

    truth = fit(true - mean)
    law = torch.tensor([1 / 20 - 1 / (4 * cells), 1 / 5], dtype=torch.float64)
    torch.testing.assert_close(truth, law, rtol=0.1, atol=0.0)
    expected = torch.tensor([1 / 12, 0.0] if kind == "davie" else [1 / 20, 1 / 5], dtype=torch.float64)
    torch.testing.assert_close(fit(area[:, 0, 1] - mean), expected, rtol=0.1, atol=0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_space_time_area_of_a_short_interval_late_in_a_long_one(dtype):
    # U over [a, a + h] is K(a + h) - K(a) - h W(a) with K = int W du of size |W| (t1 - t0); in float32 that
    # difference of numbers ~3 left U mostly rounding (~3e-7 against U ~ h^1.5 = 3e-8): Var U was 80 times
    # h^3 / 3 here. The knots' K are kept in float64, so the float32 law is right too.
    n, t1, h = 20000, 10.0, 1e-5
    bm = hn.BrownianInterval(0.0, t1, (n,), dtype=dtype, entropy=5, levy_area_approximation="space-time")
    bm(0.0, t1)
    w, u = bm(5.0, 5.0 + h, return_U=True)  # both ends bridged into [0, t1]
    assert w.dtype == u.dtype == dtype
    w, u = w.double(), u.double()
    tol = 5 / math.sqrt(n)  # sampling error of a variance ratio is sqrt(2 / n); 5 / sqrt(n) is ~3.5 sigma
    assert abs(float(w.var()) / h - 1) < tol
    assert abs(float(u.var()) / (h**3 / 3) - 1) < tol
    assert abs(float((w * u).mean()) / (h**2 / 2) - 1) < tol  # Cov(dW, U) = h^2 / 2


@pytest.mark.parametrize("dt", [None, 0.1])
def test_a_given_end_value_and_space_time_area_are_conditioned_on(dt):
    # torchsde's W and H: the increment and space-time area over [t0, t1]. A dt hint used to drop W (the
    # grid was drawn unconditioned), and H was always dropped. For h = 1 and W(1) = 0 the path is a bridge
    # B with H = int B ds, and (B(s), H) is Gaussian with Var B(s) = s (1 - s), Cov(B(s), H) = s (1 - s) / 2,
    # Var H = 1/12: so E[W(1/2) | H] = 3/2 H and Var[W(1/2) | H] = 1/4 - 3/16 = 1/16.
    n, hh = 40000, 0.2
    w_end, h_end = torch.zeros(n, dtype=torch.float64), torch.full((n,), hh, dtype=torch.float64)
    bm = hn.BrownianInterval(
        0.0, 1.0, (n,), dtype=torch.float64, entropy=4, dt=dt, levy_area_approximation="space-time", W=w_end, H=h_end
    )
    w, u = bm(0.0, 1.0, return_U=True)
    torch.testing.assert_close(w, w_end, rtol=0, atol=0)
    torch.testing.assert_close(u, 0.5 * w_end + h_end, rtol=1e-12, atol=1e-12)  # U = h (W / 2 + H), torchsde's
    mid = bm(0.0, 0.5)
    torch.testing.assert_close(mid + bm(0.5, 1.0), w_end, rtol=0, atol=1e-12)  # the halves add up to W
    # 5 standard errors: of the mean sqrt(1/16 / n), of a variance ratio sqrt(2 / n)
    assert abs(float(mid.mean()) - 1.5 * hh) < 5 * math.sqrt(1 / 16 / n)
    assert abs(float(mid.var()) * 16 - 1) < 5 * math.sqrt(2 / n)
    # W alone, with the grid hint: the bridge law Var W(0.3) = 0.3 * 0.7 (not 0.3, the unconditioned one)
    bm = hn.BrownianInterval(0.0, 1.0, (n,), dtype=torch.float64, entropy=5, dt=dt, W=w_end)
    torch.testing.assert_close(bm(0.0, 1.0), w_end, rtol=0, atol=0)
    assert abs(float(bm(0.3).var()) / 0.21 - 1) < 5 * math.sqrt(2 / n)
    with pytest.raises(ValueError, match="H must have shape"):
        hn.BrownianInterval(0.0, 1.0, (n,), H=torch.zeros(2), levy_area_approximation="space-time")


def test_brownian_tree_is_a_function_of_the_entropy_alone():
    # torchsde's BrownianTree (a halfway tree) gives one path per entropy, however it is queried: two
    # solves with different steps on two trees of one entropy see the same noise. Here the values depended
    # on which times had been queried before (W(0.5) differed by ~0.5 between two trees after one query).
    n = 20000
    w0 = torch.zeros(n, dtype=torch.float64)
    a, b = hn.BrownianTree(0.0, w0, 1.0, entropy=5), hn.BrownianTree(0.0, w0, 1.0, entropy=5)
    a(0.77, 0.9)
    for t in (0.3, 0.45):
        a(t)
    for ta, tb in ((0.3, 0.5), (0.0, 0.123), (0.6, 0.61), (0.9, 1.0)):
        torch.testing.assert_close(a(ta, tb), b(tb) - b(ta), rtol=0, atol=1e-12)  # rounding of the difference
    assert not torch.equal(a(0.5), hn.BrownianTree(0.0, w0, 1.0, entropy=6)(0.5))
    # Still a Brownian motion, with its space-time area: variances to 5 standard errors sqrt(2 / n).
    bm = hn.BrownianInterval(
        0.0,
        2.0,
        (n,),
        dtype=torch.float64,
        entropy=2,
        levy_area_approximation="space-time",
        halfway_tree=True,
        tol=1e-6,
    )
    bm(1.7)
    for ta, tb in ((0.3, 0.31), (0.31, 1.9)):
        w, u = bm(ta, tb, return_U=True)
        h = tb - ta
        assert abs(float(w.var()) / h - 1) < 5 * math.sqrt(2 / n)
        assert abs(float((u / h - w / 2).var()) / (h / 12) - 1) < 5 * math.sqrt(2 / n)
    with pytest.raises(ValueError, match="positive tol"):
        hn.BrownianInterval(0.0, 1.0, (2,), halfway_tree=True)
    with pytest.raises(ValueError, match="no dt hint"):
        hn.BrownianInterval(0.0, 1.0, (2,), halfway_tree=True, tol=1e-6, dt=0.1)


def test_solves_with_different_steps_on_brownian_trees_of_one_entropy_see_one_path():
    # Strong convergence on GBM with a fresh tree per step size, the way torchsde's examples use it: each
    # solve is compared with the exact solution on the same tree's W(1), and the error falls with dt.
    sde = GBM("ito")
    y0 = torch.ones(200, 1, dtype=torch.float64)
    paths, errors = [], []
    for dt in (2**-3, 2**-6):
        bm = hn.BrownianTree(0.0, torch.zeros(200, 1, dtype=torch.float64), 1.0, entropy=8)
        with torch.no_grad():
            ys = hn.sdeint(sde, y0, [0.0, 1.0], bm=bm, method="milstein", dt=dt)
            exact = sde.exact(y0, 1.0, bm(0.0, 1.0))
        errors.append(float((ys[-1] - exact).abs().mean()))
        paths.append(torch.stack([bm(t) for t in (0.25, 0.5, 0.75, 1.0)]))
    torch.testing.assert_close(paths[0], paths[1], rtol=0, atol=0)  # one path (before: one W(1) only)
    assert errors[1] < errors[0] / 4  # strong order 1 over a factor 8 in dt: ~8x, 4x leaves room for noise


@pytest.mark.parametrize("size", [(), (50,)])
def test_levy_area_of_a_motion_without_channels_is_zeros_of_its_shape(size):
    # With fewer than two dimensions the one dimension is the batch (torchsde's convention): no area, and
    # torchsde returns zeros shaped like W. Here it was (batch, batch), drawn from (batch, batch) noise first:
    # 3.4 GB and 27 s for a batch of 20000.
    bm = hn.BrownianInterval(0.0, 1.0, size, dtype=torch.float64, entropy=1, levy_area_approximation="foster")
    w, u, area = bm(0.2, 0.7, return_U=True, return_A=True)
    assert area.shape == w.shape == size and not bool(area.any())
    torch.testing.assert_close(bm(0.2, 0.7, return_A=True)[0], w, rtol=0, atol=0)
    torchsde = pytest.importorskip("torchsde")
    theirs = torchsde.BrownianInterval(0.0, 1.0, size, dtype=torch.float64, levy_area_approximation="foster")
    assert theirs(0.2, 0.7, return_A=True)[1].shape == area.shape


@pytest.mark.parametrize("t0,t1,ta,tb", [(1e6, 1e6 + 1, 1e6 + 0.5, 1e6 + 0.5 + 1e-5), (0.0, 1e-9, 2e-10, 2.5e-10)])
def test_short_increments_far_from_zero_or_on_a_short_interval_are_not_swallowed(t0, t1, ta, tb):
    # Query times within 1e-10 max(1, |t0|, |t1|) of a knot were snapped onto it: on [1e6, 1e6 + 1] every
    # increment over 1e-5, and on [0, 1e-9] every one over 5e-11, was exactly zero.
    n = 20000
    bm = hn.BrownianInterval(t0, t1, (n,), dtype=torch.float64, entropy=1, levy_area_approximation="space-time")
    w, u = bm(ta, tb, return_U=True)
    h = tb - ta
    assert abs(float(w.var()) / h - 1) < 5 * math.sqrt(2 / n)  # 5 standard errors of a variance ratio
    assert abs(float(u.var()) / (h**3 / 3) - 1) < 5 * math.sqrt(2 / n)
    torch.testing.assert_close(bm(t0, ta) + w + bm(tb, t1), bm(t0, t1), rtol=0, atol=1e-12)


def test_the_grid_hint_keeps_the_solver_steps_as_its_cells():
    # dt = 1e-4 on [0, 1]: repeated addition stops 9e-14 short of 1, which sdeint's loop stretches to 1; the
    # grid's last cell must be that same last step (a whole-cell lookup, not a sum of knot values). This
    # guards the snap tolerance's fix above, which must not split off a 9e-14 cell.
    bm = hn.BrownianInterval(0.0, 1.0, (3,), dtype=torch.float64, entropy=1, dt=1e-4)
    t = 0.0
    for _ in range(9999):
        t += 1e-4
    assert 0 < 1.0 - (t + 1e-4) < 1e-12
    bm(t, 1.0)
    assert bm.num_knots == 10001 and not bm._materialised  # no knot values needed: the lookup found the cell


def test_the_constructor_takes_torchsdes_arguments_in_torchsdes_order():
    # torchsde's order is (t0, t1, size, dtype, device, entropy, dt, tol, pool_size, cache_size,
    # halfway_tree, levy_area_approximation, W, H); a dt passed in its place was read as the Levy area
    # approximation and refused. A given W (or H) also gives the size, dtype and device, as in torchsde.
    args = (0.0, 1.0, (3,), torch.float64, "cpu", 5, 0.1)
    keywords = hn.BrownianInterval(0.0, 1.0, (3,), torch.float64, entropy=5, dt=0.1)
    torch.testing.assert_close(hn.BrownianInterval(*args)(0.2, 0.3), keywords(0.2, 0.3), rtol=0, atol=0)
    w = torch.ones(2, 4, dtype=torch.float64)
    bm = hn.BrownianInterval(0.0, 1.0, W=w)
    assert bm.shape == w.shape and bm.dtype == torch.float64
    torch.testing.assert_close(bm(0.0, 1.0), w, rtol=0, atol=0)
    torchsde = pytest.importorskip("torchsde")
    assert list(inspect.signature(hn.BrownianInterval).parameters) == list(
        inspect.signature(torchsde.BrownianInterval).parameters
    )


def test_brownian_path_takes_torchsdes_positional_window_size():
    # torchsde's BrownianPath(t0, w0, window_size): the third argument was read as the end time here, so
    # BrownianPath(5.0, w0, 2) raised "needs t0 < t1" (and BrownianPath(0.0, w0, 8) spanned [0, 8]).
    w0 = torch.zeros(3, dtype=torch.float64)
    path = hn.BrownianPath(5.0, w0, 2, entropy=1)
    assert (path.start, path.end) == (5.0, 6.0)  # torchsde's [t0, t0 + 1]
    torch.testing.assert_close(path(5.5), path(5.0, 5.5), rtol=0, atol=0)
