"""Non-terminal events and state jumps (``hn.solve(..., event=hn.Event(...))``), float64.

Bouncing balls: a ball dropped from h under gravity g with restitution e hits the ground at
t_1 = sqrt(2 h / g) and then at t_k = t_1 (1 + 2 e + ... + 2 e^(k-1)) (each flight after an impact of
speed v lasts 2 e v / g), so dt_k/dh = (1 + 2 sum_{j<k} e^j) / sqrt(2 g h) and
dt_k/de = t_1 * 2 sum_{j=1}^{k-1} j e^(j-1).
"""

from __future__ import annotations

import math

import pytest
import torch
from bouncing import G, fall, ground, impacts

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default")


def ctrl():
    return hn.PIDController(rtol=1e-10, atol=1e-12)


def bouncing(h, e, t):
    y0 = torch.stack([h, torch.zeros_like(h)], 1)

    return hn.solve(fall, y0, t, event=ground(e), controller=ctrl())


def test_a_batch_of_bouncing_balls_matches_the_analytic_impact_times_of_every_bounce():
    h = torch.tensor([1.0, 2.0, 3.0])
    sol = bouncing(h, 0.8, torch.linspace(0.0, 2.5, 6))
    for i in range(3):
        got = [float(r.t) for r in sol.events if r.index == (i,)]
        assert len(got) >= 2
        torch.testing.assert_close(got, impacts(float(h[i]), 0.8, len(got)), rtol=1e-8, atol=1e-8)
        for r in sol.events:
            if r.index == (i,):
                assert abs(float(r.y[i, 0])) < 1e-8 and float(r.y[i, 1]) < 0  # on the ground, falling
    times = [float(r.t) for r in sol.events]
    assert times == sorted(times)
    # the outputs between bounces lie on the analytic parabolas
    t_out = 2.0
    for i in range(3):
        ts = [s for s in impacts(float(h[i]), 0.8, 20) if s < t_out]
        v_up = math.sqrt(2 * G * float(h[i])) * 0.8 ** len(ts)
        tau = t_out - ts[-1]
        torch.testing.assert_close(float(sol.ys[4, i, 0]), v_up * tau - 0.5 * G * tau**2, rtol=1e-7, atol=1e-8)


def test_jump_gradients_match_the_analytic_derivatives_and_finite_differences():
    h = torch.tensor([2.0], requires_grad=True)
    e = torch.tensor(0.8, requires_grad=True)
    sol = bouncing(h, e, torch.tensor([0.0, 3.0]))
    t3 = sol.events[2].t
    g_h, g_e = torch.autograd.grad(t3, (h, e), retain_graph=True)
    t1 = math.sqrt(2 * 2.0 / G)
    torch.testing.assert_close(float(g_h), (1 + 2 * 0.8 + 2 * 0.8**2) / math.sqrt(2 * G * 2.0), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(float(g_e), t1 * (2 + 4 * 0.8), rtol=1e-6, atol=1e-9)
    # the state at the last output, after two jumps, against central differences
    (g_h_y, g_e_y) = torch.autograd.grad(sol.ys[-1].sum(), (h, e))
    eps = 1e-6
    with torch.no_grad():
        fd_h = (
            bouncing(h + eps, e, torch.tensor([0.0, 3.0])).ys[-1].sum()
            - bouncing(h - eps, e, torch.tensor([0.0, 3.0])).ys[-1].sum()
        ) / (2 * eps)
        fd_e = (
            bouncing(h, e + eps, torch.tensor([0.0, 3.0])).ys[-1].sum()
            - bouncing(h, e - eps, torch.tensor([0.0, 3.0])).ys[-1].sum()
        ) / (2 * eps)
    torch.testing.assert_close(float(g_h_y), float(fd_h), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(float(g_e_y), float(fd_e), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("direction", [0, 1, -1])
def test_crossings_without_jumps_are_recorded_in_order_and_filtered_by_direction(direction):
    # x = sin t, v = cos t: x crosses zero upwards at 2k pi and downwards at (2k + 1) pi
    osc = lambda t, y: torch.stack([y[1], -y[0]])
    sol = hn.solve(
        osc,
        torch.tensor([0.0, 1.0]),
        torch.tensor([0.0, 10.0]),
        event=hn.Event(lambda t, y: y[:1] - 0.0, direction=direction),
        controller=ctrl(),
    )
    roots = [k * math.pi for k in range(1, 4)]  # the root at t0 itself is not reported
    want = {0: roots, 1: [2 * math.pi], -1: [math.pi, 3 * math.pi]}[direction]
    torch.testing.assert_close([float(r.t) for r in sol.events], want, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(float(sol.ys[-1, 0]), math.sin(10.0), rtol=1e-8, atol=1e-8)  # no jump: undisturbed


def test_several_elements_crossing_inside_one_step_are_reported_in_time_order():
    # y = t for every element; the levels are so close that one step holds all crossings
    sol = hn.solve(
        lambda t, y: torch.ones_like(y),
        torch.zeros(1),
        torch.tensor([0.0, 1.0]),
        event=hn.Event(lambda t, y: y - torch.tensor([0.5003, 0.5001, 0.5002])),
        controller=ctrl(),
    )
    assert [r.index for r in sol.events] == [(1,), (2,), (0,)]
    torch.testing.assert_close([float(r.t) for r in sol.events], [0.5001, 0.5002, 0.5003], rtol=1e-12, atol=1e-12)


def test_a_dose_jump_restarts_the_solver_and_the_elimination_continues():
    # y' = -k y with a dose of 1 whenever t crosses 1 or 2 (time events): y(3) = e^-3k + e^-2k + e^-k
    k = torch.tensor(0.7, requires_grad=True)
    event = hn.Event(lambda t, y: torch.stack([t - 1.0, t - 2.0]), on_event=lambda t, y: y + 1.0)
    sol = hn.solve(lambda t, y: -k * y, torch.tensor([1.0]), torch.tensor([0.0, 3.0]), event=event, controller=ctrl())
    kk = 0.7
    torch.testing.assert_close(
        float(sol.ys[-1, 0].detach()), math.exp(-3 * kk) + math.exp(-2 * kk) + math.exp(-kk), rtol=1e-8, atol=1e-9
    )
    (g,) = torch.autograd.grad(sol.ys[-1, 0], k)
    torch.testing.assert_close(
        float(g), -3 * math.exp(-3 * kk) - 2 * math.exp(-2 * kk) - math.exp(-kk), rtol=1e-6, atol=1e-9
    )


def test_invalid_event_settings_are_named():
    with pytest.raises(ValueError, match="direction"):
        hn.Event(lambda t, y: y, direction=2)
    with pytest.raises(ValueError, match="terminal"):
        hn.Event(lambda t, y: y, terminal=True)
    with pytest.raises(ValueError, match="DirectBackprop"):
        hn.solve(
            lambda t, y: -y,
            torch.ones(1),
            torch.tensor([0.0, 1.0]),
            event=hn.Event(lambda t, y: y - 0.5),
            sensitivity=hn.DirectBackprop(checkpoints=2),
        )


@pytest.mark.parametrize("transform", ["vmap", "grad"])
def test_inside_torch_func_transforms_the_refusal_says_what_to_do(transform):
    """The search decides on the host after every step: inside vmap (or grad) it raised torch's bare
    data-dependence (or data pointer) RuntimeError; now a ValueError that says what to do instead."""

    def last_state(y0):
        return hn.solve(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]), event=hn.Event(lambda t, y: y - 0.5)).ys[-1]

    with pytest.raises(ValueError, match=r"solve\(event=...\) cannot run inside torch.func transforms"):
        if transform == "vmap":
            torch.func.vmap(last_state)(torch.ones(3, 1))
        else:
            torch.func.grad(lambda y0: last_state(y0).sum())(torch.ones(1))
    # the same problems as one batch state: each element's crossing recorded with its index
    sol = hn.solve(lambda t, y: -y, torch.ones(3), torch.tensor([0.0, 1.0]), event=hn.Event(lambda t, y: y - 0.5))
    assert sorted(r.index for r in sol.events) == [(0,), (1,), (2,)]


@pytest.mark.parametrize("times", ["jump_t", "step_t"])
def test_jump_or_step_times_are_refused_with_the_fix(times):
    """The event loop lays its own steps: forced step ends are refused (check_event_search), naming them."""
    with pytest.raises(ValueError, match=r"solve\(event=...\) cannot take jump_t or step_t; drop them"):
        hn.solve(
            lambda t, y: -y,
            torch.ones(1),
            torch.tensor([0.0, 1.0]),
            event=hn.Event(lambda t, y: y - 0.5),
            **{times: [0.3]},
        )


def test_two_roots_of_one_element_inside_one_step_are_both_reported_in_order():
    # y = t in one exact step to t = 1; g = (y - 0.5)(y - 0.65) changes sign at 0.5 and back at 0.65,
    # with the interior sign check at 0.6 between them
    sol = hn.solve(
        lambda t, y: torch.ones_like(y),
        torch.zeros(1),
        torch.tensor([0.0, 1.0]),
        event=hn.Event(lambda t, y: (y - 0.5) * (y - 0.65)),
        controller=hn.PIDController(rtol=1e-10, atol=1e-12, first_step=1.0),
    )
    assert sol.stats.n_accepted == 1  # both roots inside one step
    torch.testing.assert_close([float(r.t) for r in sol.events], [0.5, 0.65], rtol=1e-12, atol=1e-12)
    down = hn.solve(
        lambda t, y: torch.ones_like(y),
        torch.zeros(1),
        torch.tensor([0.0, 1.0]),
        event=hn.Event(lambda t, y: (y - 0.5) * (y - 0.65), direction=1),
        controller=hn.PIDController(rtol=1e-10, atol=1e-12, first_step=1.0),
    )
    torch.testing.assert_close([float(r.t) for r in down.events], [0.65], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("touch", [0.5, 0.4])
def test_a_grazing_event_is_not_a_crossing_and_does_not_hide_a_later_one(touch):
    # g = (y - touch)^2 touches zero at t = touch without crossing; y - 0.75 crosses at 0.75. With one
    # step over [0, 1], 0.4 is an interior sign check (a zero exactly at a check point).
    sol = hn.solve(
        lambda t, y: torch.ones_like(y),
        torch.zeros(1),
        torch.tensor([0.0, 1.0]),
        event=hn.Event(lambda t, y: torch.cat([(y - touch) ** 2, y - 0.75])),
        controller=hn.PIDController(rtol=1e-10, atol=1e-12, first_step=1.0),
    )
    assert [r.index for r in sol.events] == [(1,)]
    torch.testing.assert_close(float(sol.events[0].t), 0.75, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_the_bouncing_balls_example_runs_and_writes_its_plot(tmp_path):
    import runpy
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "bouncing_balls.py"
    argv = sys.argv
    sys.argv = [str(path), "--out", str(tmp_path)]
    try:
        with pytest.raises(SystemExit) as info:
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = argv
    assert info.value.code == 0
    assert (tmp_path / "bouncing_balls.png").stat().st_size > 0


def test_tuple_states_get_events_and_jumps_in_their_own_layout():
    h, e = 2.0, 0.8
    field = lambda t, y: (y[1], torch.full_like(y[1], -G))
    event = hn.Event(lambda t, y: y[0][0], direction=-1, on_event=lambda t, y: (y[0], -e * y[1]))
    sol = hn.solve(
        field, (torch.tensor([h]), torch.tensor([0.0])), torch.tensor([0.0, 2.0]), event=event, controller=ctrl()
    )
    assert isinstance(sol.ys, tuple) and isinstance(sol.events[0].y, tuple)
    torch.testing.assert_close([float(r.t) for r in sol.events], impacts(h, e, len(sol.events)), rtol=1e-8, atol=1e-8)


def test_several_events_at_once_are_reported_in_time_order_with_their_own_jumps_and_directions():
    h, e = 2.0, 0.8
    y0 = torch.tensor([[h, 0.0]])

    clock = hn.Event(lambda t, y: torch.stack([t - 1.0, t - 2.0]), direction=1)  # records only
    apex = hn.Event(lambda t, y: y[:, 1], direction=-1)  # the top of each flight: velocity + to -
    sol = hn.solve(fall, y0, torch.tensor([0.0, 2.4]), event=(ground(e), clock, apex), controller=ctrl())
    hits = impacts(h, e, 3)
    v1 = math.sqrt(2 * G * h) * e
    want = sorted(
        [(s, 0) for s in hits if s < 2.4] + [(1.0, 1), (2.0, 1)] + [(hits[0] + v1 / G, 2), (hits[1] + e * v1 / G, 2)]
    )
    got = [(float(r.t), r.event) for r in sol.events]
    assert [w[1] for w in want] == [g[1] for g in got]
    torch.testing.assert_close([g[0] for g in got], [w[0] for w in want], rtol=1e-8, atol=1e-8)
    assert [r.index for r in sol.events if r.event == 1] == [(0,), (1,)]


@pytest.mark.parametrize("method", ["rodas4", "kvaerno5", "bdf", "adams"])
def test_implicit_and_multistep_methods_restart_at_jumps(method):
    solver = {"rodas4": hn.Rodas4(), "kvaerno5": hn.Kvaerno5(), "bdf": hn.BDF(), "adams": hn.VariableAdams()}[method]
    h = torch.tensor([2.0])
    y0 = torch.stack([h, torch.zeros(1)], 1)

    sol = hn.solve(
        fall,
        y0,
        torch.tensor([0.0, 2.0]),
        solver=solver,
        controller=hn.PIDController(rtol=1e-8, atol=1e-10),
        event=ground(0.8),
    )
    got = [float(r.t) for r in sol.events]
    torch.testing.assert_close(got, impacts(2.0, 0.8, len(got)), rtol=1e-7, atol=1e-7)
    assert len(got) == 2
