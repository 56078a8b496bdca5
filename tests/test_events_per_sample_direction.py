"""Per-sample terminal events with a direction (``event_direction``), and the fixed-step ``interp`` the event
loops refuse.

References: scipy's ``solve_ivp(events=...)`` with ``event.terminal = True`` and ``event.direction``, row by
row (DOP853, rtol 1e-12); scipy counts the direction along the integration, ours in the user's time ``t``, so a
solve backwards in time compares our ``d`` with scipy's ``-d``. Gradients of the event times against central
differences of scipy's event times. The non-terminal ``hn.Event(direction=...)`` (a separate loop) gives each
row's crossings of one direction, whose first must be the terminal event's time.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import solve_ivp

import hybrid_node as hn
from hybrid_node._errors import BackendError

pytestmark = pytest.mark.usefixtures("float64_default")

W = [1.0, 2.0, 1.5, 0.7, 1.2, 0.9, 1.0]
DAMP = 0.1
Y0 = [[1.0, 0.0], [0.5, 1.0], [0.2, 0.0], [1.0, 0.3], [0.3, -0.2], [-0.4, 0.8], [1.0, 0.0]]
# row 0 falls through 0.3 first, then rises through it; row 1 rises through 0.6 first; row 2 never reaches 5;
# row 3 starts on its level moving up (scipy reports t0 for +1, the later fall for -1); rows 4 and 5 cross 0
# downwards and upwards first; row 6 falls through 0.97 once and, damped (its next maximum is
# exp(-0.1 pi) = 0.73), never rises through it again on [0, 10]
LEVEL = [0.3, 0.6, 5.0, 1.0, 0.0, 0.0, 0.97]
SPAN = 10.0


def _oscillators(w: torch.Tensor):
    """Damped oscillators x'' = -w_i^2 x - 0.1 x', one per row: y = (batch, [x, x'])."""

    def field(t, y):
        return torch.stack([y[:, 1], -(w**2) * y[:, 0] - DAMP * y[:, 1]], 1)

    return field


def _scipy_first(i: int, w: float, end: float, direction: int) -> float | None:
    """Row i's terminal event time by scipy (direction along the integration), None where it never fires."""
    c = LEVEL[i]

    def event(t, y):
        return y[0] - c

    event.terminal = True
    event.direction = direction
    sol = solve_ivp(
        lambda t, y: [y[1], -w * w * y[0] - DAMP * y[1]],
        (0.0, end),
        Y0[i],
        method="DOP853",
        rtol=1e-12,
        atol=1e-14,
        events=event,
    )
    return float(sol.t_events[0][0]) if sol.t_events[0].size else None


def _ours(method: str, direction: int, reverse: bool, w: torch.Tensor | None = None, **kwargs):
    w = torch.tensor(W) if w is None else w
    level = torch.tensor(LEVEL)
    options = {"step_size": 0.01} if method == "rk4" else None
    return hn.odeint_event(
        _oscillators(w),
        torch.tensor(Y0),
        0.0,
        event_fn=lambda t, y: y[:, 0] - level,
        per_sample=True,
        event_direction=direction,
        reverse_time=reverse,
        t_end=-SPAN if reverse else SPAN,
        throw=False,
        method=method,
        options=options,
        **{"rtol": 1e-10, "atol": 1e-12, **kwargs},
    )


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4"])
@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize("reverse", [False, True])
def test_terminal_direction_matches_scipy_row_by_row(method, direction, reverse):
    t_e, ys = _ours(method, direction, reverse)
    end = -SPAN if reverse else SPAN
    along = -direction if reverse else direction  # scipy's direction counts along the integration
    passed_over = never = 0
    for i in range(len(W)):
        ref = _scipy_first(i, W[i], end, along)
        either = _scipy_first(i, W[i], end, 0)
        ours = float(t_e[i])
        if ref is None:  # scipy never fires in this direction: ours a NaN time (throw=False)
            assert math.isnan(ours), (i, ours)
            never += 1
        elif ref == 0.0:  # on its level at t0, leaving it this way: scipy t0 exactly, ours a few ulps past it
            assert abs(ours) < 1e-14, (i, ours)
        else:
            # both to rtol 1e-10 or better (rk4: its cubic Hermite dense output on h = 0.01, ~1e-10); the slopes
            # at these roots are above 0.05, so the times agree to ~1e-9
            assert abs(ours - ref) < 1e-8, (i, ours, ref)
            passed_over += ref != either
    # the rows whose first crossing goes the other way, or who never cross this way, are the point of the
    # test: without the direction each stopped at its first root either way
    assert passed_over >= 2 and (never >= 2 if direction == 1 and not reverse else never >= 1)
    fired = ~torch.isnan(t_e)
    torch.testing.assert_close(ys[-1, fired, 0], torch.tensor(LEVEL)[fired], rtol=0.0, atol=1e-8)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_direction_event_time_gradients_match_central_differences_of_scipy(reverse, interface):
    w = torch.tensor(W, requires_grad=True)
    kwargs = {"rtol": 1e-11, "atol": 1e-13}
    if interface == "odeint_adjoint":
        kwargs |= {"odeint_interface": hn.odeint_adjoint, "adjoint_params": (w,)}
    t_e, _ = _ours("dopri5", 1, reverse, w=w, **kwargs)
    end, along = (-SPAN, -1) if reverse else (SPAN, 1)
    times = t_e.detach()
    rows = [i for i in range(len(W)) if not math.isnan(float(times[i])) and abs(float(times[i])) > 1e-3]
    assert len(rows) >= 4
    (g,) = torch.autograd.grad(t_e[rows].sum(), w)  # each row's time depends on its own w only
    h = 1e-5
    for i in rows:
        fd = (_scipy_first(i, W[i] + h, end, along) - _scipy_first(i, W[i] - h, end, along)) / (2 * h)
        # scipy at rtol 1e-12: errors of ~1e-12 over 2h = 2e-5 give ~1e-7, the truncation h^2 t''' ~ 1e-9
        torch.testing.assert_close(float(g[i]), fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("direction", [1, -1])
def test_terminal_direction_is_the_first_record_of_a_non_terminal_event(direction):
    # the workaround the direction replaces: a non-terminal Event of the same direction, each row's first record
    level = torch.tensor(LEVEL)
    w = torch.tensor(W)
    controller = hn.PIDController(rtol=1e-10, atol=1e-12)
    sol = hn.solve(
        _oscillators(w),
        torch.tensor(Y0),
        torch.tensor([0.0, SPAN]),
        controller=controller,
        event_fn=lambda t, y: y[:, 0] - level,
        per_sample_events=True,
        event_direction=direction,
        event_t_end=SPAN,
        throw=False,
    )
    records = hn.solve(
        _oscillators(w),
        torch.tensor(Y0),
        torch.tensor([0.0, SPAN]),
        controller=controller,
        event=hn.Event(lambda t, y: y[:, 0] - level, direction=direction),
    ).events
    assert sol.status == hn.Status.NO_EVENT  # row 2 never fires (and row 6 not upwards)
    for i in range(len(W)):
        first = [float(r.t) for r in records if r.index == (i,)][:1]
        if i == 3:  # on its level at t0: the non-terminal loop does not report t0, the terminal one may
            continue
        assert bool(sol.event_fired[i]) == bool(first), i
        if first:  # both at rtol 1e-10, on other steps (the terminal loop restarts where a row freezes): ~1e-10
            assert abs(float(sol.t_final[i]) - first[0]) < 1e-9, (i, float(sol.t_final[i]), first[0])


@pytest.mark.parametrize("bad", [2, -2, 0.5, True, "up"])
def test_event_direction_must_be_minus_one_zero_or_one(bad):
    with pytest.raises(ValueError, match="event_direction must be -1, 0 or \\+1"):
        _ours("dopri5", bad, False)


def test_event_direction_is_refused_where_it_would_not_act():
    y0 = torch.tensor([1.0])
    down = lambda t, y: -y  # noqa: E731
    # the single terminal event (torchdiffeq's), on either backend: the message names the fix
    for backend in ("torch", "julia"):
        with pytest.raises(ValueError, match="per_sample=True"):
            hn.odeint_event(down, y0, 0.0, event_fn=lambda t, y: y[0] - 0.5, event_direction=1, backend=backend)
    with pytest.raises(ValueError, match="per_sample_events=True"):
        hn.solve(down, y0, torch.tensor([0.0, 1.0]), event_fn=lambda t, y: y[0] - 0.5, event_direction=-1)
    with pytest.raises(ValueError, match="hn.Event\\(fn, direction=...\\)"):
        hn.solve(down, y0, torch.tensor([0.0, 1.0]), event=hn.Event(lambda t, y: y - 0.5), event_direction=1)
    # per-sample events are torch-only: the Julia backend refuses them, direction or not
    with pytest.raises(BackendError, match="backend='torch'"):
        hn.solve(
            down,
            y0[None],
            torch.tensor([0.0, 1.0]),
            event_fn=lambda t, y: y[:, 0] - 0.5,
            per_sample_events=True,
            event_direction=1,
            backend="julia",
        )


# ---- interp: the event loops locate on the solver's own dense output and refuse the setting ------------------


def _fall(t, y):
    return torch.stack([y[:, 1], torch.full_like(y[:, 1], -9.81)], 1)


@pytest.mark.parametrize("interp", ["linear", "cubic"])
def test_per_sample_events_refuse_options_interp(interp):
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="do not read options\\['interp'\\].*drop interp"):
        hn.odeint_event(
            _fall,
            y0,
            0.0,
            event_fn=lambda t, y: y[:, 0],
            per_sample=True,
            t_end=5.0,
            method="rk4",
            options={"step_size": 0.01, "interp": interp},
        )


def test_event_loops_refuse_a_constant_step_size_interp():
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([0.0, 1.0])
    ctrl = hn.ConstantStepSize(step_size=0.01, interp="cubic")
    with pytest.raises(ValueError, match="do not read hn.ConstantStepSize\\(interp=...\\).*drop interp"):
        hn.solve(_fall, y0, t, solver=hn.RK4(), controller=ctrl, event=hn.Event(lambda t, y: y[:, 0]))
    with pytest.raises(ValueError, match="do not read hn.ConstantStepSize\\(interp=...\\)"):
        hn.solve(_fall, y0, t, solver=hn.RK4(), controller=ctrl, event_fn=lambda t, y: y[:, 0], per_sample_events=True)


def test_without_interp_the_event_loops_locate_on_the_cubic_hermite_output():
    # a ball dropped from 2 m and 1 m on rk4, h = 0.01: the steps are exact on the quadratic, and so is the
    # cubic Hermite dense output, so both loops give sqrt(2 h / g) to a few ulps (a linear interpolant: 1e-5 off)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    exact = torch.sqrt(2 * y0[:, 0] / 9.81)
    ctrl = hn.ConstantStepSize(step_size=0.01)
    sol = hn.solve(
        _fall,
        y0,
        torch.tensor([0.0, 1.0]),
        solver=hn.RK4(),
        controller=ctrl,
        event_fn=lambda t, y: y[:, 0],
        per_sample_events=True,
    )
    torch.testing.assert_close(sol.t_final, exact, rtol=0.0, atol=1e-14)
    records = hn.solve(
        _fall, y0, torch.tensor([0.0, 1.0]), solver=hn.RK4(), controller=ctrl, event=hn.Event(lambda t, y: y[:, 0])
    ).events
    assert [r.index for r in records] == [(1,), (0,)]  # in time order: the lower ball lands first
    torch.testing.assert_close(torch.stack([r.t for r in records]), exact.flip(0), rtol=0.0, atol=1e-14)


def test_an_external_solver_refuses_a_non_terminal_event():
    # scipy_solver runs its own loop without event checks: a non-terminal Event was dropped unseen (no records)
    with pytest.raises(BackendError, match="does not support events"):
        hn.solve(
            lambda t, y: -y,
            torch.tensor([1.0]),
            torch.linspace(0.0, 2.0, 3),
            solver=hn.ScipySolver("RK45"),
            event=hn.Event(lambda t, y: y - 0.5),
        )
