"""Events whose function has no derivative along the solution (float64): terminal, per-sample, non-terminal.

An event function such as ``(y > c).long()`` (an integer tensor) or ``torch.sign(y - c)`` (a float with
a zero derivative) still changes sign where y crosses c, so the event is located as for ``y - c``;
the implicit function theorem does not apply to it (its denominator is zero). torchdiffeq's
``odeint_event`` returns the event time with a zero gradient and the event state with its gradient at
the fixed event time; these tests compare with torchdiffeq run on the same problem. Per-sample and
non-terminal events (which torchdiffeq lacks) are compared with the analytic values and with the
terminal event of the same problem.

Problem: y' = -theta y from y0 = (1, 1) until y[0] = 0.5 (t_e = log 2 / theta), and backwards in
time until y[0] = 2 (t_e = -log 2 / theta).
"""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from bouncing import Decay, G, bounce, fall

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default")  # tensors built in float64

# each built from d = y - level forwards and level - y backwards, positive at the start (torchdiffeq
# reads a zero start value as no sign, hence the orientation)
EVENT_FNS = {
    "long": lambda d: (d[0] > 0).long(),
    "int32": lambda d: (d > 0).int() * 2 - 1,  # every component; the first to cross stops the solve
    "sign": lambda d: torch.sign(d[0]),
    "no-graph float": lambda d: d[0].detach(),
}


def _event_and_gradients(lib, interface: str, kind: str, reverse: bool):
    """The event time, event state and the gradients of (t_e, sum of the event state) by ``lib``."""
    func = Decay(1.5)
    y0 = torch.ones(2, requires_grad=True)
    level = 2.0 if reverse else 0.5
    t_e, ys = lib.odeint_event(
        func,
        y0,
        torch.tensor(0.0),
        event_fn=lambda t, y: EVENT_FNS[kind](level - y if reverse else y - level),
        reverse_time=reverse,
        odeint_interface=getattr(lib, interface),
        rtol=1e-10,
        atol=1e-12,
    )
    grads_t = torch.autograd.grad(t_e, (func.theta, y0), retain_graph=True, allow_unused=True)
    grads_y = torch.autograd.grad(ys[-1].sum(), (func.theta, y0))
    return t_e.detach(), ys[-1].detach(), grads_t, grads_y


@pytest.mark.parametrize("kind", list(EVENT_FNS))
@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("reverse", [False, True])
def test_event_function_without_a_derivative_matches_torchdiffeq(kind, interface, reverse):
    t_e, y_e, grads_t, grads_y = _event_and_gradients(hn, interface, kind, reverse)
    ref_t, ref_y, ref_grads_t, ref_grads_y = _event_and_gradients(torchdiffeq, interface, kind, reverse)
    exact = (-1 if reverse else 1) * math.log(2) / 1.5
    # both locate the crossing to the solve's tolerance (rtol 1e-10) plus their bisection's (~1e-9 here)
    assert float(t_e) == pytest.approx(exact, abs=1e-8)
    assert float(ref_t) == pytest.approx(exact, abs=1e-8)
    torch.testing.assert_close(y_e, ref_y, rtol=1e-8, atol=0)  # the same state to the event times' 1e-8
    # the event time carries a zero gradient, as torchdiffeq's (not a NaN, not a crash)
    for ours, ref in zip(grads_t, ref_grads_t):
        assert ref is not None and float(ref.abs().max()) == 0.0
        assert ours is not None and float(ours.abs().max()) == 0.0
    # the event state's gradient is the state's at the fixed event time: d/dtheta sum(exp(-theta t)) and
    # d/dy0 = exp(-theta t_e) per component; torchdiffeq's adjoint is run at its own default tolerances
    for ours, ref in zip(grads_y, ref_grads_y):
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(grads_y[0], -2 * exact * y_e[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_event_at_a_fixed_time_has_a_zero_gradient(interface):
    # event_fn = t - 0.3 depends on nothing with a gradient: t_e = 0.3 whatever theta and y0, so its
    # gradient is zero (torchdiffeq's too); it used to come back without a graph, failing autograd.grad
    for lib in (hn, torchdiffeq):
        func = Decay(1.5)
        y0 = torch.ones(2, requires_grad=True)
        t_e, ys = lib.odeint_event(
            func,
            y0,
            torch.tensor(0.0),
            event_fn=lambda t, y: t - 0.3,
            odeint_interface=getattr(lib, interface),
            rtol=1e-10,
            atol=1e-12,
        )
        assert float(t_e.detach()) == pytest.approx(0.3, abs=1e-8)  # bisection to ~1e-9 (see above)
        grads = torch.autograd.grad(t_e, (func.theta, y0), allow_unused=True, retain_graph=True)
        assert all(g is not None and float(g.abs().max()) == 0.0 for g in grads), lib.__name__
        # the state at the fixed time 0.3: d/dy0 exp(-theta 0.3) y0 per component
        grad_y0 = torch.autograd.grad(ys[-1].sum(), y0)[0]
        torch.testing.assert_close(grad_y0, torch.full((2,), math.exp(-0.45)), rtol=1e-8, atol=0)  # solve rtol 1e-10


# Per-sample events (odeint_event(..., per_sample=True)): every sample's event time is located as for
# y_i - level and gets a zero gradient, its event state the gradient at its fixed event time, as the
# terminal event above. Decay from y0_i reaches the level at t_i = log(y0_i / level) / theta (negative
# backwards in time), where d y_i(t)/dtheta = -t y_i(t) and d y_i(t)/dy0_i = exp(-theta t) at fixed t.
PER_SAMPLE_FNS = {
    "long": lambda d: (d > 0).long(),
    "int32": lambda d: (d > 0).int() * 2 - 1,
    "sign": torch.sign,
    "no-graph float": lambda d: d.detach(),
}


def _per_sample_event(interface: str, event_fn, y0: torch.Tensor, reverse: bool):
    """Decay(1.5) from ``y0`` until each sample's event: (t_e, event states, grads of t_e, grads of the states)."""
    func = Decay(1.5)
    y0 = y0.clone().requires_grad_(True)
    t_e, ys = hn.odeint_event(
        func,
        y0,
        torch.tensor(0.0),
        event_fn=event_fn,
        reverse_time=reverse,
        odeint_interface=getattr(hn, interface),
        per_sample=True,
        rtol=1e-10,
        atol=1e-12,
    )
    grads_t = torch.autograd.grad(t_e.sum(), (func.theta, y0), retain_graph=True, allow_unused=True)
    grads_y = torch.autograd.grad(ys[-1].sum(), (func.theta, y0))
    return t_e.detach(), ys[-1].detach(), grads_t, grads_y


@pytest.mark.parametrize("kind", list(PER_SAMPLE_FNS))
@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("reverse", [False, True])
def test_per_sample_events_without_a_derivative_have_zero_time_gradients(kind, interface, reverse):
    # an integer event function used to fail in autograd.grad, torch.sign to give NaN event times
    level = 8.0 if reverse else 0.5
    y0 = torch.tensor([[1.0], [2.0], [4.0]])
    fn = PER_SAMPLE_FNS[kind]
    t_e, y_e, grads_t, grads_y = _per_sample_event(
        interface, lambda t, y: fn(level - y[:, 0] if reverse else y[:, 0] - level), y0, reverse
    )
    exact = torch.log(y0[:, 0] / level) / 1.5
    torch.testing.assert_close(t_e, exact, rtol=0, atol=1e-8)  # the solve's rtol 1e-10 plus the search's ~1e-9
    torch.testing.assert_close(y_e[:, 0], torch.full((3,), level), rtol=1e-8, atol=0)  # at t_e to 1e-8
    for g in grads_t:
        assert g is not None and float(g.abs().max()) == 0.0
    # the states' gradients at the fixed event times (rtol 1e-6: adjoint solves at rtol 1e-10 and the
    # event times' 1e-8 scaled by theta)
    torch.testing.assert_close(grads_y[0], -(exact * level).sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(grads_y[1][:, 0], level / y0[:, 0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_per_sample_events_at_fixed_times_have_zero_time_gradients(interface):
    # t - c moves with nothing that has a gradient; the event times came back without a graph
    c = torch.tensor([0.3, 0.6])
    t_e, _, grads_t, grads_y = _per_sample_event(interface, lambda t, y: t - c, torch.ones(2, 1), False)
    torch.testing.assert_close(t_e, c, rtol=0, atol=1e-8)  # the search's ~1e-9
    for g in grads_t:
        assert g is not None and float(g.abs().max()) == 0.0
    torch.testing.assert_close(grads_y[1][:, 0], torch.exp(-1.5 * c), rtol=1e-8, atol=0)  # solve rtol 1e-10


def test_per_sample_event_functions_with_and_without_a_derivative_in_one_batch():
    # sample 0's event value y - 0.5 has the implicit-function gradient dt/dtheta = -t / theta and
    # dt/dy0 = 1 / (theta y0); sample 1's torch.sign(...) a zero one, not a NaN
    y0 = torch.tensor([[1.0], [2.0]])
    t_e, _, grads_t, _ = _per_sample_event(
        "odeint", lambda t, y: torch.stack([y[0, 0] - 0.5, torch.sign(y[1, 0] - 0.5)]), y0, False
    )
    exact = torch.log(y0[:, 0] / 0.5) / 1.5
    torch.testing.assert_close(t_e, exact, rtol=0, atol=1e-8)  # as above
    # per sample: d(t_0 + t_1)/dtheta = dt_0/dtheta; rtol 1e-6 for the gradients' solve (see above)
    torch.testing.assert_close(grads_t[0], -exact[0] / 1.5, rtol=1e-6, atol=0)
    torch.testing.assert_close(grads_t[1][:, 0], torch.tensor([1 / 1.5, 0.0]), rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", list(PER_SAMPLE_FNS))
@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_one_sample_per_sample_event_equals_the_terminal_event(kind, interface):
    # the batch of one sample has the state (1, 2) and one event value, the terminal event the same
    y0 = torch.tensor([[1.0, 1.0]])

    def event_fn(t, y):
        return PER_SAMPLE_FNS[kind](y[:, 0] - 0.5)

    ours = _per_sample_event(interface, event_fn, y0, False)
    func = Decay(1.5)
    y0 = y0.clone().requires_grad_(True)
    t_e, ys = hn.odeint_event(
        func, y0, torch.tensor(0.0), event_fn=event_fn, odeint_interface=getattr(hn, interface), rtol=1e-10, atol=1e-12
    )
    grads_t = torch.autograd.grad(t_e, (func.theta, y0), retain_graph=True, allow_unused=True)
    grads_y = torch.autograd.grad(ys[-1].sum(), (func.theta, y0))
    # the two loops locate the crossing by their own searches, each to ~1e-9 (see above)
    torch.testing.assert_close(ours[0], t_e.detach().reshape(1), rtol=0, atol=1e-8)
    torch.testing.assert_close(ours[1], ys[-1].detach(), rtol=1e-8, atol=0)
    for a, b in zip(ours[2], grads_t):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # both exactly zero
    for a, b in zip(ours[3], grads_y):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)  # fixed-time gradients at times 1e-8 apart


# Non-terminal events (hn.solve(..., event=hn.Event(...))): each crossing is recorded as for y - level,
# its time with a zero gradient and the state there with its gradient at the fixed time, as the terminal
# event; a jump at such an event acts at that fixed time. A non-terminal crossing is a change to the
# opposite nonzero sign, so a 0/1 function such as (d > 0).long() never crosses: (d > 0).long() * 2 - 1 does.
SENSITIVITIES = {"direct": None, "backsolve": hn.BacksolveAdjoint(), "interpolating": hn.InterpolatingAdjoint()}


@pytest.mark.parametrize("kind", ["int32", "sign", "no-graph float"])  # "long" goes 1 -> 0: no crossing
@pytest.mark.parametrize("sensitivity", list(SENSITIVITIES))
@pytest.mark.parametrize("reverse", [False, True])
def test_non_terminal_events_without_a_derivative_have_zero_time_gradients(kind, sensitivity, reverse):
    # an integer event function used to fail in autograd.grad, torch.sign to record NaN times and states
    level = 8.0 if reverse else 0.5
    fn = PER_SAMPLE_FNS[kind]
    func = Decay(1.5)
    y0 = torch.tensor([[1.0], [2.0]], requires_grad=True)
    sol = hn.solve(
        func,
        y0,
        torch.tensor([0.0, -2.0 if reverse else 2.0]),
        event=hn.Event(lambda t, y: fn(level - y[:, 0] if reverse else y[:, 0] - level)),
        controller=hn.PIDController(rtol=1e-10, atol=1e-12),
        sensitivity=SENSITIVITIES[sensitivity],
    )
    exact = torch.log(y0.detach()[:, 0] / level) / 1.5
    assert sorted(r.index for r in sol.events) == [(0,), (1,)]
    for r in sol.events:
        t_e = float(r.t.detach())
        assert t_e == pytest.approx(float(exact[r.index[0]]), abs=1e-8)  # solve rtol 1e-10, search ~1e-9
        grads_t = torch.autograd.grad(r.t, (func.theta, y0), retain_graph=True, allow_unused=True)
        assert all(g is not None and float(g.abs().max()) == 0.0 for g in grads_t)
        # the whole state at the fixed time t_e: d/dtheta = -t_e sum(y(t_e)), d/dy0_j = exp(-theta t_e);
        # rtol 1e-6 for the adjoint's rtol 1e-10 solves and t_e's 1e-8 scaled by theta
        g_theta, g_y0 = torch.autograd.grad(r.y.sum(), (func.theta, y0), retain_graph=True)
        torch.testing.assert_close(float(g_theta), -t_e * float(r.y.detach().sum()), rtol=1e-6, atol=0)
        torch.testing.assert_close(g_y0[:, 0], torch.full((2,), math.exp(-1.5 * t_e)), rtol=1e-6, atol=0)
    # the crossing of element 0 is the terminal event of element 0 on the same problem
    func_t = Decay(1.5)
    y0_t = y0.detach().clone().requires_grad_(True)
    t_t, ys_t = hn.odeint_event(
        func_t,
        y0_t,
        torch.tensor(0.0),
        event_fn=lambda t, y: fn(level - y[0, 0] if reverse else y[0, 0] - level),
        reverse_time=reverse,
        rtol=1e-10,
        atol=1e-12,
    )
    first = next(r for r in sol.events if r.index == (0,))
    assert float(first.t.detach()) == pytest.approx(float(t_t.detach()), abs=1e-8)  # each search's ~1e-9
    torch.testing.assert_close(first.y.detach(), ys_t[-1].detach(), rtol=1e-8, atol=0)  # at times 1e-8 apart
    ours = torch.autograd.grad(first.y.sum(), (func.theta, y0))
    ref = torch.autograd.grad(ys_t[-1].sum(), (func_t.theta, y0_t))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)  # as above


@pytest.mark.parametrize("kind", ["long", "sign"])
@pytest.mark.parametrize("sensitivity", list(SENSITIVITIES))
def test_a_bounce_at_an_event_without_a_derivative_acts_at_its_fixed_time(kind, sensitivity):
    # a ball dropped from h bounces with restitution e at t_1 = sqrt(2 h / g); with t_1 held fixed (its
    # gradient is zero), at T after the bounce: height h - g t_1^2 / 2 + e g t_1 (T - t_1) - g (T - t_1)^2 / 2
    # and velocity e g t_1 - g (T - t_1), so d/dh = (1, 0) and d/de = (g t_1 (T - t_1), g t_1)
    fns = {"long": lambda t, y: (y[:, 0] > 0).long() * 2 - 1, "sign": lambda t, y: torch.sign(y[:, 0])}
    h = torch.tensor([2.0], requires_grad=True)
    e = torch.tensor(0.8, requires_grad=True)
    T = 1.2
    sol = hn.solve(
        fall,
        torch.stack([h, torch.zeros_like(h)], 1),
        torch.tensor([0.0, T]),
        event=hn.Event(fns[kind], direction=-1, on_event=bounce(e)),
        controller=hn.PIDController(rtol=1e-10, atol=1e-12),
        sensitivity=SENSITIVITIES[sensitivity],
        adjoint_params=(),
    )
    t1 = math.sqrt(2 * 2.0 / G)
    assert len(sol.events) == 1 and float(sol.events[0].t.detach()) == pytest.approx(t1, abs=1e-8)  # as above
    (g_t,) = torch.autograd.grad(sol.events[0].t, h, retain_graph=True)  # e acts after t_1: not in its graph
    assert float(g_t) == 0.0
    # the field is linear and the dense output exact: rounding plus t_1's error (< 1e-8) times g ~ 10
    for j, (d_h, d_e) in enumerate([(1.0, G * t1 * (T - t1)), (0.0, G * t1)]):
        g_h, g_e = torch.autograd.grad(sol.ys[-1, 0, j], (h, e), retain_graph=True)
        torch.testing.assert_close(float(g_h), d_h, rtol=0, atol=1e-7)
        torch.testing.assert_close(float(g_e), d_e, rtol=0, atol=1e-7)


@pytest.mark.parametrize("sensitivity", list(SENSITIVITIES))
def test_non_terminal_events_at_fixed_times_have_zero_time_gradients(sensitivity):
    # t - c moves with nothing that has a gradient; the recorded times came back without a graph
    c = torch.tensor([0.3, 0.6])
    func = Decay(1.5)
    y0 = torch.ones(2, requires_grad=True)
    sol = hn.solve(
        func,
        y0,
        torch.tensor([0.0, 1.0]),
        event=hn.Event(lambda t, y: t - c),
        controller=hn.PIDController(rtol=1e-10, atol=1e-12),
        sensitivity=SENSITIVITIES[sensitivity],
    )
    assert [r.index for r in sol.events] == [(0,), (1,)]
    for r, c_k in zip(sol.events, c.tolist()):
        assert float(r.t.detach()) == pytest.approx(c_k, abs=1e-8)  # the search's ~1e-9
        grads_t = torch.autograd.grad(r.t, (func.theta, y0), retain_graph=True, allow_unused=True)
        assert all(g is not None and float(g.abs().max()) == 0.0 for g in grads_t)
        (g_y0,) = torch.autograd.grad(r.y.sum(), y0, retain_graph=True)
        torch.testing.assert_close(g_y0, torch.full((2,), math.exp(-1.5 * c_k)), rtol=1e-6, atol=0)  # as above
