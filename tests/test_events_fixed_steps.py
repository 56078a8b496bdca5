"""Events on fixed steps (ConstantStepSize) and the guard against an accumulation of events, float64.

Under gravity the state is a quadratic polynomial in t between impacts, which RK4 integrates exactly
and its cubic Hermite dense output reproduces exactly: with fixed steps the impact times are then
exact to rounding (the bisection's few ulps), whatever the step. Euler is exact for neither: its
impact times converge at order 1.
"""

from __future__ import annotations

import math

import pytest
import torch
from bouncing import G, fall, ground, impacts

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default")


def bouncing(h, e, solver, controller, sensitivity=None, t_end=2.5, max_events=10_000):
    y0 = torch.stack([h, torch.zeros_like(h)], 1)

    return hn.solve(
        fall,
        y0,
        torch.tensor([0.0, 1.0, t_end]),
        solver=solver,
        controller=controller,
        event=ground(e, max_events=max_events),
        sensitivity=sensitivity,
        adjoint_params=(),
    )


def test_rk4_on_fixed_steps_finds_every_bounce_of_a_batch_at_the_analytic_times():
    hs = [1.0, 2.0, 3.0]
    sol = bouncing(torch.tensor(hs), 0.8, hn.RK4(), hn.ConstantStepSize(step_size=0.01))
    for i, h in enumerate(hs):
        got = [float(r.t) for r in sol.events if r.index == (i,)]
        assert len(got) >= 2
        torch.testing.assert_close(got, impacts(h, 0.8, len(got)), rtol=1e-10, atol=1e-10)
    assert sol.stats.n_rejected == 0 and sol.stats.n_accepted >= 250  # steps of 0.01 over [0, 2.5]


def test_euler_impact_times_on_fixed_steps_converge_at_order_one():
    errors = []
    for step in (0.01, 0.005, 0.0025):
        sol = bouncing(torch.tensor([2.0]), 0.8, hn.Euler(), hn.ConstantStepSize(step_size=step))
        errors.append(abs(float(sol.events[1].t) - impacts(2.0, 0.8, 2)[1]))
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.8 < coarse / fine < 2.2


@pytest.mark.parametrize("sensitivity", [None, hn.BacksolveAdjoint(), hn.InterpolatingAdjoint(checkpoints=3)])
def test_gradients_through_jumps_on_fixed_steps_match_the_analytic_derivatives(sensitivity):
    h = torch.tensor([2.0], requires_grad=True)
    e = torch.tensor(0.8, requires_grad=True)
    sol = bouncing(h, e, hn.RK4(), hn.ConstantStepSize(step_size=0.01), sensitivity)
    g_h, g_e = torch.autograd.grad(sol.events[2].t, (h, e))
    t1 = math.sqrt(2 * 2.0 / G)
    torch.testing.assert_close(float(g_h), (1 + 2 * 0.8 + 2 * 0.8**2) / math.sqrt(2 * G * 2.0), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(float(g_e), t1 * (2 + 4 * 0.8), rtol=1e-8, atol=1e-10)


def test_per_sample_events_on_fixed_steps():
    h = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    y0 = torch.stack([h, torch.zeros(3)], 1)
    t_e, ys = hn.odeint_event(
        fall, y0, 0.0, event_fn=lambda t, y: y[:, 0], per_sample=True, method="rk4", options={"step_size": 0.01}
    )
    torch.testing.assert_close(t_e.detach(), torch.sqrt(2 * h.detach() / G), rtol=1e-10, atol=1e-10)
    (g,) = torch.autograd.grad(t_e.sum(), h)
    torch.testing.assert_close(g, 1 / torch.sqrt(2 * G * h.detach()), rtol=1e-8, atol=1e-10)


def test_an_accumulation_of_bounces_ends_with_a_status_that_names_max_events():
    # e = 0.8: the bounces accumulate at 9 t_1 = 4.06; with max_events=20 the 21st impact ends the solve
    ctrl = hn.PIDController(rtol=1e-10, atol=1e-12)
    with pytest.raises(hn.SolverError, match="max_events=20") as info:
        bouncing(torch.tensor([1.0]), 0.8, hn.Dopri5(), ctrl, t_end=5.0, max_events=20)
    assert info.value.status is hn.Status.TOO_MANY_EVENTS
    torch.testing.assert_close(info.value.t, impacts(1.0, 0.8, 21)[-1], rtol=1e-8, atol=1e-8)
    flip = lambda t, y: torch.stack([y[:, 0], -0.8 * y[:, 1]], 1)  # noqa: E731
    sol = hn.solve(
        fall,
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([0.0, 1.0, 5.0]),
        event=hn.Event(lambda t, y: y[:, 0], direction=-1, on_event=flip, max_events=20),
        controller=ctrl,
        throw=False,
    )
    assert sol.status is hn.Status.TOO_MANY_EVENTS and len(sol.events) == 21
    assert bool(torch.isfinite(sol.ys[1]).all()) and bool(torch.isnan(sol.ys[2]).all())  # reached / not reached


def test_invalid_fixed_step_event_settings_are_named():
    with pytest.raises(ValueError, match="step_size"):
        hn.solve(
            fall, torch.ones(1, 2), torch.tensor([0.0, 1.0]), solver=hn.RK4(), event=hn.Event(lambda t, y: y[:, 0])
        )
    with pytest.raises(ValueError, match="max_events"):
        hn.Event(lambda t, y: y, max_events=0)


def test_one_attempt_of_the_event_loops_lands_on_the_end_and_is_judged_by_the_controller():
    """_Steps.attempt (shared by both event loops): a constant step is always accepted and shortened to land
    on the search's end, its dense output runs from y to the step's end state; an adaptive attempt far too
    long for the tolerance is rejected and carries no state or dense output."""
    from hybrid_node._problem import make_problem
    from hybrid_node.loop.events import _Steps

    y0 = torch.tensor([1.0], dtype=torch.float64)
    problem = make_problem(
        lambda t, y: -y, y0, torch.tensor([0.0, 1.0]), hn.Tsit5(), hn.ConstantStepSize(step_size=0.25)
    )
    term, solver = problem.term(), problem.solver
    state = solver.init(term, 0.0, y0)
    steps = _Steps(problem.controller, solver, y0.dtype)
    att = steps.attempt(term, 0.9, y0, state, 0.25, 1.0, 1e-6, 1e-9, problem.norm)
    assert att.accepted and att.t1 == 1.0 and att.step_dt == pytest.approx(0.1)
    torch.testing.assert_close(att.seg(0.9), y0)
    torch.testing.assert_close(att.seg(1.0), att.step.y1)
    # Tsit5's local error on y' = -y over 0.1 is about 0.1^5 / 5! ~ 1e-7: the exact decay to that
    torch.testing.assert_close(att.step.y1, y0 * math.exp(-0.1), rtol=1e-6, atol=0)

    adaptive = _Steps(hn.PIDController(rtol=1e-10, atol=1e-12), solver, y0.dtype)
    big = adaptive.attempt(term, 0.0, y0, solver.init(term, 0.0, y0), 5.0, 10.0, 1e-10, 1e-12, problem.norm)
    # a step of 5 on a decay of rate 1 has an error estimate of order 1, far above the 1e-10 tolerance
    assert not big.accepted and big.ratio > 1.0 and big.seg is None and big.new_state is None
