"""The step limit the Julia backend sends is the torch backend's, so the backend flag does not change when a
solve stops (against the stand-in engine, tests/julia_standin.py, which counts attempts as upstream does).

Upstream's default is ``maxiters = anyadaptive(alg) ? 1000000 : typemax(Int)`` (OrdinaryDiffEqCore
src/solve.jl:161); the torch backend's is ``PIDController.max_num_steps = 2**31 - 1`` for adaptive
steps and ``EVENT_MAX_STEPS = 10**5`` for a terminal event search. Both count every attempt, rejected
ones included, and stop before the attempt past the limit (torch: ``hybrid_node.loop.core.precheck``;
Julia: ``loopheader!`` increments ``integrator.iter``, then ``check_error`` stops once ``iter > maxiters``).
"""

from __future__ import annotations

import math

import julia_standin
import numpy as np
import pytest
import torch
from julia_standin import StandinEngine

import hybrid_node as hn
from hybrid_node._errors import SolverError, Status
from hybrid_node.julia import backend as jb
from hybrid_node.julia import events as julia_events
from hybrid_node.loop.dispatch import EVENT_MAX_STEPS

TIGHT = {"rtol": 1e-10, "atol": 1e-12}

# Upstream's default of 10^6 attempts, scaled down so that a solve that exceeds it runs in a moment:
# the stand-in reads julia_standin.DEFAULT_MAXITERS where no maxiters is sent, as Julia applies its
# default where the keyword is missing.
SCALED_UPSTREAM_DEFAULT = 20


def _rotation(t, y):
    return torch.stack([y[..., 1], -y[..., 0]], -1)  # y = (cos t, -sin t) from (1, 0)


def test_an_adaptive_solve_without_max_num_steps_gets_the_torch_backends_limit_not_upstreams(monkeypatch):
    monkeypatch.setattr(julia_standin, "DEFAULT_MAXITERS", SCALED_UPSTREAM_DEFAULT)
    t = torch.linspace(0.0, 40.0, 5, dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    want = np.stack([np.cos(t.numpy()), -np.sin(t.numpy())], -1)
    engine = StandinEngine()
    sol = jb.solve_with_engine(engine, _rotation, y0, t, method="dopri5", **TIGHT)
    sent = engine.forward_calls[0]["config"].maxiters
    assert sent == hn.PIDController.max_num_steps == 2**31 - 1
    # the solve needs more attempts than the (scaled) upstream default, so it would have stopped there
    assert sol.stats.n_accepted + sol.stats.n_rejected > SCALED_UPSTREAM_DEFAULT
    assert sol.status is Status.SUCCESS
    # rtol 1e-10 per step over about six periods: a global error far below 1e-6 on either backend
    np.testing.assert_allclose(sol.ys.numpy(), want, atol=1e-6)
    on_torch = hn.odeint(_rotation, y0, t, method="dopri5", **TIGHT)  # the torch backend solves it too
    np.testing.assert_allclose(on_torch.numpy(), want, atol=1e-6)


def test_resolve_options_sends_the_torch_limits_for_every_kind_of_step():
    ts = np.linspace(0.0, 1.0, 3)
    assert jb.resolve_options(None, "Tsit5", ts)[1] == hn.PIDController.max_num_steps
    assert jb.resolve_options({"adaptive": True}, "TRBDF2", ts)[1] == hn.PIDController.max_num_steps
    assert jb.resolve_options({"max_num_steps": 7}, "Tsit5", ts)[1] == 7
    assert jb.resolve_options({"step_size": 0.1}, "RK4", ts)[1] == hn.ConstantStepSize.max_num_steps


def test_max_num_steps_counts_rejected_attempts_on_both_backends():
    # y' = -50 y with a first step of 1 is rejected (error ratio far above 1) before an accepted one;
    # a limit of one attempt stops both backends with MAX_STEPS at t = 0.
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    stiff = lambda t, y: -50.0 * y
    options = {"max_num_steps": 1, "first_step": 1.0}
    with pytest.raises(SolverError) as on_torch:
        hn.odeint(stiff, y0, t, method="dopri5", options=options, **TIGHT)
    with pytest.raises(SolverError) as on_julia:
        jb.solve_with_engine(StandinEngine(), stiff, y0, t, method="dopri5", options=options, **TIGHT)
    assert on_torch.value.status is on_julia.value.status is Status.MAX_STEPS


def _falling(t, y):
    return torch.full_like(y, -1.0)  # y = y0 - t: the event y = 0 is at t = y0


def test_a_terminal_event_search_gets_the_torch_backends_cap_of_event_max_steps():
    engine = StandinEngine()
    y0, t = torch.tensor([[2.0]], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        sol = julia_events.solve_events(
            _falling, y0, t, method="dopri5", engine=engine, event_fn=lambda t, y: y[:, 0], event_t_end=10.0, **TIGHT
        )
    assert engine.forward_calls[0]["config"].maxiters == EVENT_MAX_STEPS
    assert sol.status is Status.EVENT and math.isclose(float(sol.t_final), 2.0, rel_tol=1e-9)


def test_a_terminal_event_search_out_of_steps_is_no_event_on_both_backends():
    # The torch backend reports an event search that used up max_num_steps as NO_EVENT; Julia's
    # MaxIters reached the user as MAX_STEPS. With 2 attempts neither reaches the event at t = 50.
    y0, t = torch.tensor([[50.0]], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    options = {"max_num_steps": 2, "first_step": 1e-3}
    with pytest.raises(SolverError) as on_torch:
        hn.odeint(_falling, y0, t[:1], event_fn=lambda t, y: y[:, 0], options={**options, "event_t_end": 100.0})
    with torch.no_grad(), pytest.raises(SolverError, match="max_num_steps=2") as on_julia:
        julia_events.solve_events(
            _falling, y0, t, method="dopri5", engine=StandinEngine(), options=options,
            event_fn=lambda t, y: y[:, 0], event_t_end=100.0, **TIGHT,
        )  # fmt: skip
    assert on_torch.value.status is on_julia.value.status is Status.NO_EVENT
    assert 0.0 < on_julia.value.t < 50.0


def test_the_backward_solve_of_a_fixed_step_solve_takes_the_forward_grids_steps():
    # Upstream's backward solve gets the forward's keywords (adaptive = false, dt, tstops = ts,
    # maxiters; SciMLSensitivity concrete_solve.jl's kwargs_init), so it steps back on the same grid:
    # 6 steps of 0.5 over [0, 3], within max_num_steps = 6. The stand-in counted its own adaptive
    # DOP853 attempts instead (more than 6 at rtol 1e-10) and failed the backward pass.
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 3.0], dtype=torch.float64)
    options = {"step_size": 0.5, "max_num_steps": 6}
    sol = jb.solve_with_engine(StandinEngine(), _rotation, y0, t, method="rk4", options=options, **TIGHT)
    sol.ys[-1].sum().backward()
    # y(3) = R(3) y0 for the rotation, so d sum(y(3)) / d y0 = (cos 3 - sin 3, sin 3 + cos 3). The
    # stand-in integrates the adjoint with DOP853 at rtol 1e-10 over a span of 3: error far below 1e-7.
    want = torch.tensor([math.cos(3.0) - math.sin(3.0), math.sin(3.0) + math.cos(3.0)], dtype=torch.float64)
    torch.testing.assert_close(y0.grad, want, rtol=0.0, atol=1e-7)


def test_the_stand_ins_backward_grid_has_the_forward_grids_steps():
    # Each gap of the output grid costs the forward's fixed steps on the way back too
    # (julia_standin._backward_steps, counted against maxiters as check_error counts integrator.iter).
    assert julia_standin._backward_steps(3.0, 0.0, 0.5) == 6
    assert julia_standin._backward_steps(1.0, 0.25, 0.5) == 2  # the last step shortened to land on 0.25
    assert julia_standin._backward_steps(0.3, 0.0, 0.1) == 3  # 0.3 / 0.1 rounds to 2.9999999999999996: still 3
