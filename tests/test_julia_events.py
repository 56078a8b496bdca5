"""Events on the Julia backend: the Python side, against the stand-in engine (tests/julia_standin.py).

The stand-in runs the Python bridge the way julia/events.jl and SciMLBase's VectorContinuousCallback
do (affect! at every crossing with its index and DiffEqBase's direction, left root, nudge after an
event; see StandinEngine.forward_events), with scipy's DOP853. The results are checked against
closed forms and against the torch backend. Julia itself runs these paths in julia/test/runtests.jl
("events through Python callbacks").
"""

from __future__ import annotations

import math

import julia_standin
import numpy as np
import pytest
import torch
from bouncing import fall, ground, impacts
from julia_standin import StandinEngine

import hybrid_node as hn
from hybrid_node._errors import BackendError, SolverError, Status
from hybrid_node.julia import events as julia_events

pytestmark = pytest.mark.usefixtures("float64_default")

TOL = {"rtol": 1e-10, "atol": 1e-12}


def standin(func, y0, t, **kw):
    with torch.no_grad():
        return julia_events.solve_events(func, y0, t, method="dopri5", engine=StandinEngine(), **TOL, **kw)


def test_a_batch_of_bouncing_balls_on_the_julia_side_matches_the_analytic_times_and_the_torch_backend():
    hs = [1.0, 2.0, 3.0]
    y0 = torch.tensor([[h, 0.0] for h in hs])
    t = torch.tensor([0.0, 1.0, 2.5])
    event = ground(0.8)
    sol = standin(fall, y0, t, event=event)
    assert sol.status is Status.SUCCESS
    for i, h in enumerate(hs):
        got = [float(r.t) for r in sol.events if r.index == (i,)]
        assert len(got) >= 2
        torch.testing.assert_close(got, impacts(h, 0.8, len(got)), rtol=1e-8, atol=1e-8)
    torch_sol = hn.solve(fall, y0, t, event=event, controller=hn.PIDController(**TOL))
    assert [r.index for r in sol.events] == [r.index for r in torch_sol.events]
    torch.testing.assert_close(sol.ys, torch_sol.ys.detach(), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("direction", [0, 1, -1])
@pytest.mark.parametrize("reverse", [False, True])
def test_directions_are_filtered_in_python_as_on_the_torch_backend(direction, reverse):
    # x = sin t, solved forwards to 10 or backwards to -10
    osc = lambda t, y: torch.stack([y[..., 1], -y[..., 0]], -1)
    sign = -1.0 if reverse else 1.0
    t = torch.tensor([0.0, sign * 10.0])
    event = hn.Event(lambda t, y: y[..., :1], direction=direction)
    sol = standin(osc, torch.tensor([0.0, 1.0]), t, event=event)
    roots = [k * math.pi for k in range(1, 4)]
    # sin t crosses upwards (as t increases) at 2k pi and downwards at (2k + 1) pi, for negative t too
    up = [r for k, r in enumerate(roots, 1) if k % 2 == 0]
    down = [r for r in roots if r not in up]
    want = {0: roots, 1: up, -1: down}[direction]
    torch.testing.assert_close([abs(float(r.t)) for r in sol.events], want, rtol=1e-8, atol=1e-8)
    torch_sol = hn.solve(osc, torch.tensor([0.0, 1.0]), t, event=event, controller=hn.PIDController(**TOL))
    assert len(torch_sol.events) == len(sol.events)


def test_a_terminal_event_stops_the_julia_solve_at_the_first_passage():
    # y' = -theta y from y0 reaches c at log(y0 / c) / theta
    y0 = torch.tensor([[2.0], [5.0]])
    sol = standin(
        lambda t, y: -1.3 * y,
        y0,
        torch.tensor([0.0, 1.0]),
        event_fn=lambda t, y: (y[:, 0] - torch.tensor([0.5, 4.0])).prod().reshape(1),
        event_t_end=10.0,
    )
    assert sol.status is Status.EVENT
    first = min(math.log(2.0 / 0.5), math.log(5.0 / 4.0)) / 1.3
    torch.testing.assert_close(float(sol.t_final), first, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(sol.ys[1, 1, 0], torch.tensor(4.0), rtol=1e-8, atol=1e-10)


def test_too_many_events_and_missing_events_are_reported():
    y0 = torch.tensor([[1.0, 0.0]])
    flip = ground(0.8, max_events=3)
    with pytest.raises(SolverError, match="max_events"):
        standin(fall, y0, torch.tensor([0.0, 5.0]), event=flip)
    sol = standin(fall, y0, torch.tensor([0.0, 5.0]), event=flip, throw=False)
    assert sol.status is Status.TOO_MANY_EVENTS and len(sol.events) == 4
    with pytest.raises(SolverError, match="event not found"):
        standin(fall, y0, torch.tensor([0.0, 1.0]), event_fn=lambda t, y: y[:, 0] + 100.0, event_t_end=1.0)


def test_a_step_size_underflow_ends_an_event_solve_where_it_stopped():
    # y' = y^2 blows up at t = 1 before the event (never crossed) fires. Upstream's solve stops with
    # ReturnCode.Unstable (SciMLBase check_error's dt_epsilon branch, the default dtmin being 0) and
    # events.jl's run_events reports the integrator's time and its finite state.
    event = hn.Event(lambda t, y: y[..., :1] + 1.0)
    t = torch.tensor([0.0, 0.5, 2.0])
    sol = standin(lambda t, y: y**2, torch.ones(1, 1), t, event=event, throw=False)
    assert sol.status is Status.STEP_UNDERFLOW and not sol.events
    # y(0.5) = 1 / (1 - 0.5) = 2 exactly; rtol=1e-10 over a smooth half-interval: 1e-8 is ample
    torch.testing.assert_close(sol.ys[:2, 0, 0], torch.tensor([1.0, 2.0]), rtol=1e-8, atol=0.0)
    assert torch.isnan(sol.ys[2]).all()  # the last output time was never reached
    with pytest.raises(SolverError) as info:
        standin(lambda t, y: y**2, torch.ones(1, 1), t, event=event)
    # the computed blow-up is off t = 1 by the accumulated error (far below 1e-3)
    assert info.value.status is Status.STEP_UNDERFLOW and abs(info.value.t - 1.0) < 1e-3


def test_an_event_function_that_reaches_zero_and_stays_fires_where_diffeqbase_sees_the_zero():
    # DiffEqBase 7.18 findall_events! (lib/DiffEqBase/src/callbacks.jl) marks a component when
    # prev_sign != 0 && prev_sign * next_sign <= 0: relu(height) reaching 0 counts as a crossing,
    # placed at the checked point where the value is zero (find_callback_time: iszero(top_sign) ->
    # cbi_t = top_t), not at the root, and a zero at a step's start never fires. The torch backend
    # sees no change of sign and records nothing (docs/julia.md says so).
    event = hn.Event(lambda t, y: torch.relu(y[:, :1]))
    y0, t = torch.tensor([[1.0, 0.0]]), torch.tensor([0.0, 1.0])
    sol = standin(fall, y0, t, event=event)
    root = math.sqrt(2.0 / 9.81)
    assert len(sol.events) == 1
    t_e, y_e = float(sol.events[0].t), sol.events[0].y
    assert root < t_e <= 1.0 and float(y_e[0, 0]) <= 0.0
    assert not hn.solve(fall, y0, t, event=event, controller=hn.PIDController(**TOL)).events


def test_the_julia_backend_refuses_event_gradients_per_sample_events_and_an_open_ended_terminal_event():
    y0 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    event = hn.Event(lambda t, y: y[:, 0])
    with pytest.raises(BackendError, match="no_grad"):
        julia_events.solve_events(fall, y0, t, event=event, engine=StandinEngine())
    with pytest.raises(BackendError, match="torch backend"):
        hn.solve(fall, y0.detach(), t, event_fn=lambda t, y: y[:, 0], per_sample_events=True, backend="julia")
    with pytest.raises(BackendError, match="t_end"):
        julia_events.solve_events(fall, y0.detach(), t, event_fn=lambda t, y: y[:, 0], engine=StandinEngine())


def test_simultaneous_crossings_are_all_handled_as_diffeqbase_7_reports_them():
    # Two identical balls hit the ground at the same time: DiffEqBase 7 marks both components in one
    # affect!(integrator, simultaneous_events) call, and events.jl's act! hands each to Python in
    # index order (the second sees the state after the first one's jump). Both bounce.
    y0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([0.0, 1.5])
    event = ground(0.8)
    sol = standin(fall, y0, t, event=event)
    want = impacts(1.0, 0.8, 2)
    for i in range(2):
        got = [float(r.t) for r in sol.events if r.index == (i,)]
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
    torch_sol = hn.solve(fall, y0, t, event=event, controller=hn.PIDController(**TOL))
    assert sorted(r.index for r in sol.events) == sorted(r.index for r in torch_sol.events)
    torch.testing.assert_close(sol.ys[:, 0], sol.ys[:, 1])
    torch.testing.assert_close(sol.ys, torch_sol.ys.detach(), rtol=1e-7, atol=1e-8)


def test_the_standin_calls_affect_with_diffeqbase_7s_int8_vector():
    seen = []

    def affect(t, x, idx, crossing):
        seen.append((idx, crossing))
        return julia_events.RECORD if idx < 2 else julia_events.TERMINATE

    events = np.array([0, 1, -1, 1, 1], dtype=np.int8)
    code, _ = julia_standin._act_events(affect, None, events, 1.0, np.ones(2))
    # index order, each with its direction; nothing after a terminal one
    assert seen == [(1, 1), (2, -1)] and code == julia_events.TERMINATE
    with pytest.raises(TypeError, match="Int8"):
        julia_standin._act_events(affect, None, 2, 1.0, np.ones(2))  # DiffEqBase 6's Int index


@pytest.mark.parametrize("samples", [0, 1, 2, 4])
def test_event_samples_are_the_interior_points_of_diffeqbase_s_range(samples):
    # DiffEqBase checks range(tprev, stop = t, length = interp_points)[2:end] (check_event_occurrence,
    # src/callbacks.jl): interp_points - 2 interior points, and length 1 throws. `samples` interior
    # points are sent as samples + 2 (0 stays 0); they were sent as `samples` (two points short, and a
    # Julia error for samples=1).
    event = hn.Event(lambda t, y: y[:, 0], samples=samples)
    y0 = torch.tensor([[1.0, 0.0]])
    bridge = julia_events.EventBridge(event, None, None, y0, False, torch.float64)
    points = julia_standin._check_points(0.0, 1.0, bridge.interp_points)
    assert points[-1] == 1.0 and len(points) - 1 == samples
    assert bridge.interp_points == (samples + 2 if samples else 0)
    sol = standin(fall, y0, torch.tensor([0.0, 1.0]), event=ground(0.8, samples=samples))
    torch.testing.assert_close([float(r.t) for r in sol.events], impacts(1.0, 0.8, 1), rtol=1e-8, atol=1e-8)


def test_a_terminal_event_keeps_scimlbase_s_default_points_and_the_standin_refuses_one_point():
    bridge = julia_events.EventBridge(None, lambda t, y: y[:, 0], None, torch.zeros(1, 1), False, torch.float64)
    assert bridge.interp_points == 10  # SciMLBase's default: 8 interior points
    with pytest.raises(julia_standin.JuliaError):  # Julia: range(0.0, stop=1.0, length=1) throws
        julia_standin._check_points(0.0, 1.0, 1)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("direction", [1, -1, 0])
def test_a_crossing_back_in_the_step_after_an_event_gets_the_direction_it_really_has(direction, reverse, monkeypatch):
    # y = t dips g = (y - 1)^2 - d^2 below zero on (1 - d, 1 + d): down at 1 - d, up at 1 + d. After
    # the event at 1 - d the next step starts at its left root (apply_callback! keeps the step's dt,
    # so that step reaches past 1 + d), where g still has the sign from before the crossing; DiffEqBase
    # nudges past it and sees the crossing back as upwards. The direction was taken from that step
    # start: the upward crossing was dropped for direction=1 and recorded for direction=-1.
    d, sign = 0.3, -1.0 if reverse else 1.0
    event = hn.Event(lambda t, y: (sign * y[..., :1] - 1.0) ** 2 - d * d, direction=direction, samples=8)
    field = lambda t, y: torch.ones_like(y)  # y = t: a step of any size is exact
    t = torch.tensor([0.0, sign * 3.0])
    crossings = []
    affect = julia_events.EventBridge.affect

    def spy(self, s, u, idx, crossing):
        crossings.append(crossing)
        return affect(self, s, u, idx, crossing)

    monkeypatch.setattr(julia_events.EventBridge, "affect", spy)
    sol = standin(field, torch.tensor([0.0]), t, event=event)
    assert crossings == [-1, 1]  # in engine time (s = -t when reversed): down into the dip, then up out
    # g crosses downwards (as t increases) at 1 - d and upwards at 1 + d; for t < 0 at -(1 + d) downwards
    # and at -(1 - d) upwards. As |t|:
    up, down = (1 - d, 1 + d) if reverse else (1 + d, 1 - d)
    want = {1: [up], -1: [down], 0: [1 - d, 1 + d]}[direction]
    # rtol=1e-10 on an exactly integrated y = t: the roots are found to rounding, 1e-9 is ample
    torch.testing.assert_close([abs(float(r.t)) for r in sol.events], want, rtol=1e-9, atol=1e-9)
    torch_sol = hn.solve(field, torch.tensor([0.0]), t, event=event, controller=hn.PIDController(**TOL))
    torch.testing.assert_close([abs(float(r.t)) for r in torch_sol.events], want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("direction", [1, -1, 0])
def test_a_zero_at_the_first_checked_point_after_an_event_gets_diffeqbases_direction(direction):
    # g(t) = 1 - t until t = 1, then (t - 1)(t - 1.5) clamped to at most 0: down through zero at t = 1,
    # negative on (1, 1.5), exactly zero from 1.5 on. With y' = 0 the stand-in's steps grow tenfold
    # (1e-6, 1e-5, ...), the one from 0.111111 to 1.111111 holds the root at 1, and the next step keeps
    # its dt of 1 (apply_callback!), from the root to 2, where g is exactly 0. DiffEqBase compares
    # that zero with the sign nudged past the last event (negative) and reports an upcrossing at the
    # step's end (findall_events!: prev_sign * next_sign <= 0; find_callback_time: iszero(top_sign)
    # -> the root is that point; simultaneous_events = -sign(bottom_sign) = +1). The direction read
    # in Python from the signs fell back to the step's start, the left root of the last event where
    # g > 0, and called it a downcrossing: dropped for direction=1, recorded for direction=-1.
    def g(t, y):
        dip = torch.clamp((t - 1.0) * (t - 1.5), max=0.0)
        return torch.where(t < 1.0, 1.0 - t, dip) * torch.ones_like(y)

    event = hn.Event(g, direction=direction)
    sol = standin(lambda t, y: torch.zeros_like(y), torch.tensor([0.0]), torch.tensor([0.0, 3.0]), event=event)
    times = [float(r.t) for r in sol.events]
    assert sol.status is Status.SUCCESS
    # the root at 1 is found to bisection accuracy; the zero is reported where it was checked (t = 2)
    if direction <= 0:
        assert times[0] == pytest.approx(1.0, abs=1e-9)
    ups = times[1:] if direction <= 0 else times
    assert len(ups) == (0 if direction == -1 else 1)
    assert all(u == pytest.approx(2.0, abs=1e-9) for u in ups)


def test_one_output_time_with_events_returns_y0_as_the_torch_backend_does():
    # bridge.jl's `prepare` (called by forward_mlp and forward_callback, events or not) throws an
    # ArgumentError for fewer than two output times, and the stand-in now does the same; a single
    # time reached the engine and came back as a JuliaError instead of y0.
    y0 = torch.tensor([[1.0, 0.0], [2.0, 0.5]])
    t = torch.tensor([0.0])
    engine = StandinEngine()
    with torch.no_grad():
        sol = julia_events.solve_events(fall, y0, t, event=ground(0.8), engine=engine)
    torch_sol = hn.solve(fall, y0, t, event=ground(0.8))
    assert not engine.forward_calls and sol.status is Status.SUCCESS
    assert sol.events == torch_sol.events == []
    torch.testing.assert_close(sol.ys, torch_sol.ys, rtol=0.0, atol=0.0)  # y0 itself on both backends
    with pytest.raises(julia_standin.JuliaError, match="two output times"):
        engine.forward_events(None, y0.numpy().T, np.zeros(1), np.zeros(1), None, None)


def test_an_event_solve_stops_at_max_num_steps_as_run_events_passes_maxiters_on():
    # run_events (julia/events.jl) hands the solve's options, maxiters among them, to init; DiffEqBase's
    # check_error then ends the solve with MaxIters. The stand-in ignored maxiters with events.
    y0, t = torch.tensor([[1.0, 0.0]]), torch.tensor([0.0, 0.5, 5.0])
    sol = standin(fall, y0, t, event=ground(0.8), options={"max_num_steps": 8}, throw=False)
    assert sol.status is Status.MAX_STEPS
    reached = torch.isfinite(sol.ys[:, 0, 0])
    assert reached[0] and not reached[-1]  # the states stop at the last output time passed
    with pytest.raises(SolverError) as info:
        standin(fall, y0, t, event=ground(0.8), options={"max_num_steps": 8})
    assert info.value.status is Status.MAX_STEPS and 0.0 < info.value.t < 5.0
    with pytest.raises(SolverError) as info:  # the torch backend stops as well
        hn.solve(fall, y0, t, event=ground(0.8), controller=hn.PIDController(**TOL, max_num_steps=8))
    assert info.value.status is Status.MAX_STEPS
    assert standin(fall, y0, t, event=ground(0.8), options={"max_num_steps": 10_000}).status is Status.SUCCESS


def _decay(t, y):
    return -y


def test_non_terminal_events_on_a_step_size_grid_stop_at_max_num_steps_as_upstream_and_torch_do():
    # Upstream does not refuse a fixed-dt solve longer than maxiters: check_error ends it with
    # MaxIters once integrator.iter > maxiters (DiffEqBase check_error.jl:81), after maxiters steps of
    # dt; the torch backend's event loop stops with MAX_STEPS at the limit too. The Julia side refused
    # the grid before the solve. y' = -y from 1 crosses 1/2 at ln 2, past the 100 steps of 1e-3.
    y0, t = torch.ones(1, 1), torch.tensor([0.0, 1.0])
    half = hn.Event(lambda t, y: y[:, 0] - 0.5)
    options = {"step_size": 1e-3, "max_num_steps": 100}

    def julia(**kw):
        with torch.no_grad():
            return julia_events.solve_events(
                _decay, y0, t, method="euler", engine=StandinEngine(), event=half, options=options, **kw
            )

    with pytest.raises(SolverError) as on_julia:
        julia()
    with pytest.raises(SolverError) as on_torch:
        hn.solve(_decay, y0, t, solver=hn.Euler(), controller=hn.ConstantStepSize(1e-3, max_num_steps=100), event=half)
    assert on_julia.value.status is on_torch.value.status is Status.MAX_STEPS
    # 100 steps of 1e-3 on both (the tolerance: the rounding of 100 sums of 1e-3)
    assert on_julia.value.t == pytest.approx(0.1, rel=1e-12) and on_torch.value.t == pytest.approx(0.1, rel=1e-12)
    sol = julia(throw=False)
    assert sol.status is Status.MAX_STEPS and not sol.events
    assert float(sol.ys[0, 0, 0]) == 1.0 and math.isnan(float(sol.ys[-1, 0, 0]))  # no state past the stop


def test_an_event_restarts_the_fixed_step_grid_that_the_step_limit_counts():
    # The step that holds an event is counted, and the integrator moves back to the event
    # (apply_callback!'s change_t_via_interpolation!), whence the steps of dt start again: with the
    # crossing of 0.95 at ln(1/0.95) = 0.0513 (inside step 52), the 100th step ends 48 steps after it.
    y0, t = torch.ones(1, 1), torch.tensor([0.0, 1.0])
    root = math.log(1 / 0.95)
    with torch.no_grad():
        sol = julia_events.solve_events(
            _decay, y0, t, method="euler", engine=StandinEngine(), event=hn.Event(lambda t, y: y[:, 0] - 0.95),
            options={"step_size": 1e-3, "max_num_steps": 100}, throw=False, **TOL,
        )  # fmt: skip
    assert sol.status is Status.MAX_STEPS and len(sol.events) == 1
    assert float(sol.events[0].t) == pytest.approx(root, rel=1e-8)  # DOP853 at rtol 1e-10 locates it
    engine = StandinEngine()
    with torch.no_grad(), pytest.raises(SolverError) as info:
        julia_events.solve_events(
            _decay, y0, t, method="euler", engine=engine, event=hn.Event(lambda t, y: y[:, 0] - 0.95),
            options={"step_size": 1e-3, "max_num_steps": 100}, **TOL,
        )  # fmt: skip
    assert info.value.t == pytest.approx(root + 48e-3, rel=1e-8)
    assert engine.forward_calls[0]["config"].maxiters == 100  # the limit is sent, not refused


def test_a_terminal_search_on_a_step_size_grid_longer_than_max_num_steps_finds_no_event_on_both_backends():
    # The search is cut at max_num_steps on the torch backend (NO_EVENT); Julia refused the grid.
    y0 = torch.ones(1, 1)
    options = {"step_size": 1e-3, "max_num_steps": 100}
    below = lambda t, y: y[:, 0] - 0.5  # noqa: E731 - crosses at ln 2, past the 100 steps
    with torch.no_grad(), pytest.raises(SolverError) as on_julia:
        julia_events.solve_events(
            _decay, y0, torch.tensor([0.0, 1.0]), method="euler", engine=StandinEngine(), event_fn=below,
            event_t_end=1.0, options=options,
        )  # fmt: skip
    with pytest.raises(SolverError) as on_torch:
        hn.odeint_event(_decay, y0, torch.tensor(0.0), event_fn=below, t_end=1.0, method="euler", options=options)
    assert on_julia.value.status is on_torch.value.status is Status.NO_EVENT
    assert on_julia.value.t == pytest.approx(0.1, rel=1e-12) and on_torch.value.t == pytest.approx(0.1, rel=1e-9)


def test_a_nan_vector_field_ends_an_event_solve_as_nonfinite_before_the_nan():
    # run_events passes the solve's options to init, so the events' solve fails as the plain one:
    # the attempt meeting the NaN makes the PIController's dt NaN and check_error returns DtNaN
    # (see tests/julia_standin.py NAN_DT_ALGORITHMS), at the last accepted step. scipy shrinks the
    # step to an underflow instead, which the stand-in called a step-size underflow.
    def field(t, y):
        return torch.where(t > 0.5, torch.full_like(y, float("nan")), -y)

    event = hn.Event(lambda t, y: y[..., :1] + 1.0)  # never crossed: y stays in (0, 1]
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    sol = standin(field, torch.ones(1, 1, dtype=torch.float64), t, event=event, throw=False)
    assert sol.status is Status.NONFINITE and not sol.events
    # y(0.25) = exp(-0.25): rtol=1e-10 over a smooth quarter interval, 1e-8 is ample
    torch.testing.assert_close(float(sol.ys[1, 0, 0]), math.exp(-0.25), rtol=1e-8, atol=0.0)
    assert torch.isnan(sol.ys[2]).all()
    with pytest.raises(SolverError) as info:
        standin(field, torch.ones(1, 1, dtype=torch.float64), t, event=event)
    assert info.value.status is Status.NONFINITE and 0.25 <= info.value.t <= 0.5
    assert "the state here is finite" in str(info.value)  # the field's NaN named, not an overflow


def test_a_nan_field_at_the_start_of_an_event_solve_is_named_as_on_the_torch_backend():
    # Upstream stops before any step (initdt's NaN f0 -> dt = 0 -> eps(t0) -> check_error's
    # Unstable with u0 finite, see tests/julia_standin.py _initial_nonfinite_stop); the glue
    # evaluates the field at (t0, y0) instead of reporting a step-size underflow.
    event = hn.Event(lambda t, y: y[..., :1] + 1.0)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    field = lambda t, y: y * float("nan")  # noqa: E731
    sol = standin(field, torch.ones(1, 1, dtype=torch.float64), t, event=event, throw=False)
    assert sol.status is Status.NONFINITE and not sol.events
    with pytest.raises(SolverError, match="returned NaN at t=0 on a finite state") as info:
        standin(field, torch.ones(1, 1, dtype=torch.float64), t, event=event)
    assert info.value.status is Status.NONFINITE and info.value.t == 0.0


class _ThrowingEventEngine(StandinEngine):
    """Raises a Julia error from every event solve (as a one-point solution's interpolation might)."""

    def forward_events(self, *args):
        raise julia_standin.JuliaError(ValueError("BoundsError"), None)


def test_a_julia_error_of_an_event_solve_with_a_nan_field_at_the_start_names_the_field():
    event = hn.Event(lambda t, y: y[..., :1] + 1.0)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(1, 1, dtype=torch.float64)
    run = lambda field: julia_events.solve_events(  # noqa: E731
        field, y0, t, method="dopri5", engine=_ThrowingEventEngine(), event=event, **TOL
    )
    with torch.no_grad():
        with pytest.raises(SolverError, match="returned NaN at t=0 on a finite state") as info:
            run(lambda t, y: y * float("nan"))
        assert info.value.status is Status.NONFINITE
        with pytest.raises(julia_standin.JuliaError):  # a finite field: the engine's error as it is
            run(lambda t, y: -y)
