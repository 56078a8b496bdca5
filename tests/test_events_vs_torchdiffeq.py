"""``hn.odeint_event`` against ``torchdiffeq.odeint_event`` run on the same problems (float64).

The event time, the state there and their gradients with respect to y0, the field's parameters and
t0, by direct backpropagation and by the adjoint, forwards and backwards in time; and torchdiffeq's
bouncing-ball example (a terminal event, a jump, a restart from the event time) over several
bounces, against torchdiffeq and central differences. Where the two differ on purpose (an event
function's own parameters, an event at t0) the reference is the closed form.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default")  # tensors built in float64


class Drag(torch.nn.Module):
    """A ball under gravity with linear drag and a small time-dependent push: x' = v, v' = -g - k v + sin(t) / 10."""

    def __init__(self):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(9.81))
        self.k = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, t, y):
        return torch.stack([y[1], -self.g - self.k * y[1] + 0.1 * torch.sin(t)])


def _event_and_gradients(lib, interface: str, reverse: bool):
    func = Drag()
    # forwards: dropped from 5 m with v = 1; backwards: on the ground at t0 with v = -6, from where it rose
    y0 = torch.tensor([0.0, -6.0] if reverse else [5.0, 1.0], requires_grad=True)
    t0 = torch.tensor(0.7, requires_grad=True)
    kwargs = {"rtol": 1e-10, "atol": 1e-12}
    if interface == "odeint_adjoint":
        kwargs["adjoint_params"] = tuple(func.parameters())
    t_e, ys = lib.odeint_event(
        func,
        y0,
        t0,
        event_fn=lambda t, y: y[0] - 0.5 * (1 + 0.1 * t),  # a level that moves with t
        reverse_time=reverse,
        odeint_interface=getattr(lib, interface),
        **kwargs,
    )
    wrt = (y0, t0, func.g, func.k)
    grads_t = torch.autograd.grad(t_e, wrt, retain_graph=True)
    grads_y = torch.autograd.grad((ys[-1] * torch.tensor([0.3, -0.7])).sum(), wrt)
    return t_e.detach(), ys[-1].detach(), grads_t, grads_y


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("reverse", [False, True])
def test_event_time_state_and_gradients_match_torchdiffeq(interface, reverse):
    ours = _event_and_gradients(hn, interface, reverse)
    theirs = _event_and_gradients(torchdiffeq, interface, reverse)
    # both solve to rtol 1e-10 on different steps and locate the root on their dense outputs
    torch.testing.assert_close(ours[0], theirs[0], rtol=0.0, atol=1e-9)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0.0, atol=1e-9)
    # gradients of two discretisations at rtol 1e-10 (measured to agree to 1e-10); t0's too
    for a, b in zip(ours[2] + ours[3], theirs[2] + theirs[3]):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


class BouncingBall(torch.nn.Module):
    """torchdiffeq's ``examples/bouncing_ball.py``: a tuple state, a terminal event, a jump, a restart."""

    def __init__(self, lib, interface: str):
        super().__init__()
        self.gravity = torch.nn.Parameter(torch.tensor([9.8]))
        self.log_radius = torch.nn.Parameter(torch.log(torch.tensor([0.2])))
        self.t0 = torch.nn.Parameter(torch.tensor([0.0]))
        self.init_pos = torch.nn.Parameter(torch.tensor([10.0]))
        self.init_vel = torch.nn.Parameter(torch.tensor([0.0]))
        self.absorption = torch.nn.Parameter(torch.tensor([0.2]))
        self.lib = lib
        self.odeint = getattr(lib, interface)

    def forward(self, t, state):
        _, vel, log_radius = state
        return vel, -self.gravity, torch.zeros_like(log_radius)

    def event_fn(self, t, state):
        pos, _, log_radius = state
        return pos - torch.exp(log_radius)

    def collision_times(self, n: int) -> list[torch.Tensor]:
        t0, state = self.t0, (self.init_pos, self.init_vel, self.log_radius)
        times = []
        for _ in range(n):
            t_e, sol = self.lib.odeint_event(
                self, state, t0, event_fn=self.event_fn, rtol=1e-10, atol=1e-10, odeint_interface=self.odeint
            )
            pos, vel, log_radius = (s[-1] for s in sol)
            state = (pos + 1e-7, -vel * (1 - self.absorption), log_radius)
            times.append(t_e)
            t0 = t_e
        return times


def _bounce_loss(lib, interface: str, shift: tuple[str, float] | None = None):
    ball = BouncingBall(lib, interface)
    if shift is not None:
        with torch.no_grad():
            getattr(ball, shift[0]).add_(shift[1])
    times = ball.collision_times(4)
    loss = sum(t.sum() for t in times) + 0.1 * times[-1].sum() ** 2
    return loss, ball


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_bouncing_ball_restarts_match_torchdiffeq_and_central_differences(interface):
    loss, ball = _bounce_loss(hn, interface)
    ours = dict(zip(dict(ball.named_parameters()), torch.autograd.grad(loss, list(ball.parameters()))))
    ref_loss, ref_ball = _bounce_loss(torchdiffeq, interface)
    theirs = dict(zip(dict(ref_ball.named_parameters()), torch.autograd.grad(ref_loss, list(ref_ball.parameters()))))
    # four impacts located to rtol 1e-10 by both
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-9, atol=0.0)
    for name, g in ours.items():
        # two discretisations at rtol 1e-10 (measured to agree to 2e-11 relative)
        torch.testing.assert_close(g, theirs[name], rtol=1e-8, atol=1e-10)
        if interface == "odeint":
            h = 1e-6
            plus = float(_bounce_loss(hn, interface, (name, h))[0].detach())
            minus = float(_bounce_loss(hn, interface, (name, -h))[0].detach())
            # central differences: an O(h^2) = 1e-12 truncation, and the solves' rtol 1e-10 errors
            # divided by 2h; they vary smoothly with the parameters, measured agreement 1.3e-7 relative
            torch.testing.assert_close(float(g), (plus - minus) / (2 * h), rtol=1e-6, atol=1e-7)


def test_an_event_at_t0_has_the_implicit_function_theorems_gradient():
    # y' = -theta y from y0 = 2 with the level c = 2: the root is t0 itself, and t_e = t0 + log(y0 / c) / theta
    # for y0 >= c; torchdiffeq returns t_e = t0 with a zero gradient there (its combined event function
    # is min(g * sign(g(t0))), identically zero), hybrid_node the one-sided derivatives below
    theta = torch.tensor(1.5, requires_grad=True)
    y0 = torch.tensor([2.0], requires_grad=True)
    t0 = torch.tensor(0.3, requires_grad=True)
    level = torch.tensor(2.0, requires_grad=True)
    t_e, ys = hn.odeint_event(
        lambda t, y: -theta * y, y0, t0, event_fn=lambda t, y: y[0] - level, rtol=1e-10, atol=1e-12
    )
    # the root is found within a few ulps past t0
    assert 0.0 <= float(t_e.detach()) - 0.3 < 1e-14
    g_y0, g_t0, g_level, g_theta = torch.autograd.grad(t_e, (y0, t0, level, theta), retain_graph=True)
    # closed forms at y0 = c: dt_e/dy0 = 1 / (theta y0), dt_e/dc = -1 / (theta c), dt_e/dt0 = 1,
    # dt_e/dtheta = -log(y0 / c) / theta^2 = 0; up to the few ulps of the located time
    torch.testing.assert_close(float(g_y0), 1 / 3, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(float(g_level), -1 / 3, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(float(g_t0), 1.0, rtol=1e-12, atol=0.0)
    assert abs(float(g_theta)) < 1e-12
    # the state at the event is the level whatever y0: its total gradient is zero
    (g_state,) = torch.autograd.grad(ys[-1].sum(), y0)
    assert abs(float(g_state)) < 1e-12
    ref_t, _ = torchdiffeq.odeint_event(
        lambda t, y: -1.5 * y, y0.detach(), t0.detach(), event_fn=lambda t, y: y[0] - 2.0, rtol=1e-10, atol=1e-12
    )
    assert float(ref_t) == 0.3  # torchdiffeq's rule: an event function zero at t0 stops there
    assert math.isclose(float(t_e.detach()), float(ref_t), abs_tol=1e-14)
