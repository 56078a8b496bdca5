"""Fixed-step solves (``ConstantStepSize``) with ``jump_t`` and ``step_t``: the steps land on those times and
a jump restarts the solver, so the result keeps the method's order on a piecewise-smooth field.

References are analytic solutions; convergence orders are measured by halving the step.
"""

import math

import pytest
import torch

import hybrid_node as hn

S0 = 0.4321  # the jump: on no grid point of the step sizes used here


def _piecewise(t, y):
    """y' = y before S0, -2 y after: y(1) = exp(S0) exp(-2 (1 - S0)) from y(0) = 1."""
    return torch.where(t < S0, 1.0, -2.0) * y


EXACT = math.exp(S0) * math.exp(-2 * (1 - S0))


def _error(solver, controller, **kw) -> float:
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    sol = hn.solve(_piecewise, torch.ones(1, dtype=torch.float64), t, solver=solver, controller=controller, **kw)
    return abs(sol.ys[-1].item() - EXACT)


def _order(solver, make_controller, **kw) -> float:
    return math.log2(_error(solver, make_controller(0.02), **kw) / _error(solver, make_controller(0.01), **kw))


JUMP = {"jump_t": torch.tensor([S0], dtype=torch.float64)}


@pytest.mark.parametrize(
    "solver, order",
    [
        (hn.Euler(), 1),
        (hn.Midpoint(), 2),
        (hn.RK4(), 4),
        (hn.Tsit5(), 5),  # first-same-as-last: its derivative at the jump must be taken afresh
        (hn.AdamsBashforth(), 4),  # a history of derivatives from before the jump must be dropped
        (hn.AdamsBashforthMoulton(), 4),
        (hn.GaussLegendre4(), 4),
    ],
    ids=lambda x: getattr(x, "name", str(x)),
)
@pytest.mark.parametrize("perturb", [False, True])
def test_jump_t_keeps_the_order(solver, order, perturb):
    def make(h):
        return hn.ConstantStepSize(step_size=h, perturb=perturb)

    if order > 1:  # a step across the jump is of first order: its error is O(h), 1.3e-3 for rk4 at h = 0.01
        assert _error(solver, make(0.01), **JUMP) < _error(solver, make(0.01)) / 10
    # measured within 0.05 of the method's order; 0.3 leaves room for the next term of the expansion
    assert abs(_order(solver, make, **JUMP) - order) < 0.3


def test_jump_t_piecewise_constant_field_is_exact():
    # the measured bug: rk4, h = 0.1, f = +1 before 0.43 and -1 after: -0.175 with or without jump_t
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def f(t, y):
        return torch.where(t < 0.43, 1.0, -1.0) * torch.ones_like(y)

    ctrl = hn.ConstantStepSize(step_size=0.1)
    sol = hn.solve(f, torch.zeros(1, dtype=torch.float64), t, solver=hn.RK4(), controller=ctrl, jump_t=[0.43])
    # rk4 is exact on a constant field on each side: only rounding remains
    assert sol.ys[-1].item() == pytest.approx(-0.14, abs=1e-12)
    assert sol.stats.n_accepted == 11  # the ten steps, one of them split at the jump


def test_jump_t_with_grid_constructor_and_output_grid():
    def constructor(h):
        def grid(func, y0, t):
            return torch.linspace(float(t[0]), float(t[-1]), round(float(t[-1] - t[0]) / h) + 1, dtype=torch.float64)

        return grid

    def user_grid(h):
        return hn.ConstantStepSize(grid_constructor=constructor(h))

    # measured 4.02; without jump_t 1.30
    assert abs(_order(hn.RK4(), user_grid, **JUMP) - 4) < 0.3
    # no step_size: the output times are the grid, and the jump is added to it
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    sol = hn.solve(
        _piecewise, torch.ones(1, dtype=torch.float64), t, solver=hn.RK4(), controller=hn.ConstantStepSize(), **JUMP
    )
    # rk4 at h = 0.01: measured 7.4e-10 (1.3e-3 without jump_t)
    assert abs(sol.ys[-1].item() - EXACT) < 1e-8


def test_jump_t_backwards_in_time():
    t = torch.tensor([1.0, 0.0], dtype=torch.float64)
    y1 = torch.tensor([EXACT], dtype=torch.float64)
    ctrl = hn.ConstantStepSize(step_size=0.01)
    sol = hn.solve(_piecewise, y1, t, solver=hn.RK4(), controller=ctrl, **JUMP)
    # measured 1.4e-9 (2.5e-3 without jump_t): rk4's error at h = 0.01
    assert abs(sol.ys[-1].item() - 1.0) < 1e-8


def test_step_t_lands_on_a_kink():
    # y' = |t - S0|: rk4 integrates each linear piece exactly once a step ends at the kink
    def f(t, y):
        return (t - S0).abs() * torch.ones_like(y)

    exact = (S0**2 + (1 - S0) ** 2) / 2
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ctrl = hn.ConstantStepSize(step_size=0.02)
    y0 = torch.zeros(1, dtype=torch.float64)
    without = hn.solve(f, y0, t, solver=hn.RK4(), controller=ctrl)
    with_stop = hn.solve(f, y0, t, solver=hn.RK4(), controller=ctrl, step_t=[S0])
    assert abs(without.ys[-1].item() - exact) > 1e-6  # measured 4.4e-6: the kink inside a step
    assert with_stop.ys[-1].item() == pytest.approx(exact, abs=1e-14)  # rounding only


def test_stop_within_rounding_of_a_grid_point_is_no_extra_step():
    # float32 0.43 lies 7e-9 from the float64 grid point 0.43: no sliver step is added for it
    t = torch.tensor([0.0, 1.0], dtype=torch.float32)
    ctrl = hn.ConstantStepSize(step_size=0.01)
    y0 = torch.zeros(1, dtype=torch.float64)

    def f(t, y):
        return torch.ones_like(y)

    sol = hn.solve(f, y0, t, solver=hn.RK4(), controller=ctrl, jump_t=torch.tensor([0.43]), step_t=torch.tensor([0.5]))
    assert sol.stats.n_accepted == 100


def test_partitioned_method_with_jump_t():
    # q'' = +1 before S0, -1 after: leapfrog is exact on a constant force once a step ends at the jump
    def f(t, y):
        q, p = y
        return p, torch.where(t < S0, 1.0, -1.0) * torch.ones_like(q)

    q_exact = S0**2 / 2 + S0 * (1 - S0) - (1 - S0) ** 2 / 2
    y0 = (torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ctrl = hn.ConstantStepSize(step_size=0.01)
    sol = hn.solve(f, y0, t, solver=hn.Leapfrog(), controller=ctrl, jump_t=[S0])
    assert sol.ys[0][-1].item() == pytest.approx(q_exact, abs=1e-13)  # rounding only (3.3e-3 without)


def test_event_search_on_a_fixed_grid_lands_on_jump_t():
    # y' = +1 before S0, -1 after, y(0) = 0; the event y - t + 0.2 = 0 is at S0 + 0.1
    def f(t, y):
        return torch.where(t < S0, 1.0, -1.0) * torch.ones_like(y)

    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    ctrl = hn.ConstantStepSize(step_size=0.02)
    sol = hn.solve(
        f,
        torch.zeros(1, dtype=torch.float64),
        t,
        solver=hn.RK4(),
        controller=ctrl,
        event_fn=lambda t, y: y[0] - t + 0.2,
        jump_t=[S0],
    )
    # rk4 and the linear interpolant are exact on the linear pieces: rounding only (2.1e-3 without)
    assert float(sol.t_final) == pytest.approx(S0 + 0.1, abs=1e-12)


def test_odeint_rk4_still_refuses_jump_t_option():
    # torchdiffeq's fixed-grid methods take no jump_t; hn.solve(jump_t=...) is the way to pass it
    with pytest.raises(ValueError, match="jump_t"):
        hn.odeint(_piecewise, torch.ones(1), torch.tensor([0.0, 1.0]), method="rk4", options={"jump_t": [S0]})
