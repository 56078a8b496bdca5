"""Details of the adaptive loop and of dopri5's error estimate that decide how many steps a solve takes."""

import math

import pytest
import torch

import hybrid_node as hn
from hybrid_node._problem import all_finite
from hybrid_node.solvers.dopri5 import DOPRI5_DP_TABLEAU, DOPRI5_TABLEAU, Dopri5

T01 = torch.tensor([0.0, 1.0], dtype=torch.float64)


def decay(t, y):
    return -y


def _solve(first_step, solver=None, t=T01, rtol=1e-2, atol=1e-2, **options):
    y0 = torch.ones(1, dtype=torch.float64)
    ctrl = hn.PIDController(rtol=rtol, atol=atol, first_step=first_step, **options)
    return hn.solve(decay, y0, t, solver=solver, controller=ctrl)


def test_a_step_ending_within_one_percent_of_the_end_is_stretched_onto_it():
    # 0.995 * 1.01 >= 1: one step of length 1 instead of 0.995 and a sliver of 0.005
    sol = _solve(0.995)
    assert sol.stats.n_accepted == 1 and sol.stats.n_rejected == 0
    assert abs(float(sol.ys[-1, 0]) - math.exp(-1.0)) < 1e-2  # still within the tolerance (exact: ~5e-5)
    # 0.98 * 1.01 < 1: the step keeps its size and a second one closes the interval
    sol = _solve(0.98)
    assert sol.stats.n_accepted == 2


def test_stretching_applies_to_inner_stops_and_respects_max_step():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    # step_t stops: a step of 0.4975 reaches 0.5 when stretched by 1%
    y0 = torch.ones(1, dtype=torch.float64)
    sol = hn.solve(decay, y0, t, controller=hn.PIDController(rtol=1e-2, atol=1e-2, first_step=0.4975), step_t=(0.5,))
    assert abs(float(sol.ys[1, 0]) - math.exp(-0.5)) < 1e-3
    assert sol.stats.n_accepted == 2  # 0 -> 0.5 -> 1, no sliver steps
    # max_step caps the stretch: 0.995 may not grow to 1 when max_step is 0.995
    assert _solve(0.995, max_step=0.995).stats.n_accepted == 2


def test_dopri5_error_estimates():
    # both embedded solutions are fourth order (tests/test_tableaus.py checks the order conditions);
    # Shampine's estimate is the default and is about 2/3 of Dormand and Prince's on smooth problems
    assert Dopri5().tableau is DOPRI5_TABLEAU
    assert Dopri5("dormand-prince").tableau is DOPRI5_DP_TABLEAU
    assert DOPRI5_TABLEAU.b_error != DOPRI5_DP_TABLEAU.b_error
    with pytest.raises(ValueError, match="shampine"):
        Dopri5("fehlberg")
    y0 = torch.ones(1, dtype=torch.float64)
    solver = Dopri5()
    f0 = solver.init(decay, 0.0, y0)
    errs = {}
    for name in ("shampine", "dormand-prince"):
        errs[name] = float(Dopri5(name).step(decay, 0.0, y0, f0, 0.1).error.abs())
    # for y' = -y the error estimate of one step is |sum_i b_error_i k_i| * h = c h^6 + O(h^7)
    assert errs["shampine"] / errs["dormand-prince"] == pytest.approx(2 / 3, rel=0.05)


def test_dopri5_shampine_estimate_keeps_the_error_within_tolerance():
    # y' = -y on [0, 5]: the global error stays near the tolerance with either estimate, and the
    # default (smaller) estimate never takes more steps
    y0 = torch.ones(1, dtype=torch.float64)
    t = torch.linspace(0, 5, 11, dtype=torch.float64)
    exact = torch.exp(-t).reshape(-1, 1)
    for tol in (1e-4, 1e-6, 1e-8):
        ctrl = hn.PIDController(rtol=tol, atol=tol)
        sh = hn.solve(decay, y0, t, solver=Dopri5(), controller=ctrl)
        dp = hn.solve(decay, y0, t, solver=Dopri5("dormand-prince"), controller=ctrl)
        assert float((sh.ys - exact).abs().max()) < 10 * tol
        assert float((dp.ys - exact).abs().max()) < 10 * tol
        assert sh.stats.nfe <= dp.stats.nfe


def test_all_finite_survives_an_overflowing_sum():
    big = torch.full((4,), 3e38, dtype=torch.float32)  # finite, but the sum overflows to inf
    assert all_finite(big)
    assert not all_finite(torch.tensor([1.0, math.nan]))
    assert not all_finite(torch.tensor([math.inf, -math.inf]))  # the sum is NaN
    assert not all_finite(torch.tensor([1.0, math.inf]))
    ys = hn.odeint(
        lambda t, y: torch.zeros_like(y), big, torch.tensor([0.0, 1.0]), method="rk4", options={"step_size": 0.5}
    )
    assert torch.equal(ys[-1], big)  # large finite states are not mistaken for a failure
