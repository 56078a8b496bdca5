"""Gradients through terminal events (implicit function theorem), for every gradient method (float64).

Problem: y' = -theta y from y0 until y = c, so t_e = t0 + log(y0 / c) / theta exactly, with
dt_e/dtheta = -(t_e - t0) / theta, dt_e/dy0 = 1 / (theta y0), dt_e/dt0 = 1, and the state at the event
is c whatever the parameters (its total gradient is zero). Backwards in time y grows, so there the
level is c > y0 and t_e < t0 (the same formula).
"""

from __future__ import annotations

import math

import pytest
import torch

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default")  # tensors built in float64


class Decay(torch.nn.Module):
    def __init__(self, theta):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(theta))

    def forward(self, t, y):
        return -self.theta * y


@pytest.mark.parametrize("name", ["direct", "backsolve", "interpolating"])
@pytest.mark.parametrize("reverse", [False, True])
def test_event_time_gradient_is_exact(name, reverse):
    func = Decay(1.5)
    y0 = torch.tensor([2.0], requires_grad=True)
    t0 = torch.tensor(0.3, requires_grad=True)
    level = torch.tensor(8.0 if reverse else 0.5, requires_grad=True)  # the event's own parameter
    event = lambda t, y: y[0] - level
    kw = {"event_fn": event, "reverse_time": reverse, "rtol": 1e-10, "atol": 1e-12}
    if name == "direct":
        t_e, ys = hn.odeint_event(func, y0, t0, **kw)
    elif name == "backsolve":
        t_e, ys = hn.odeint_event(func, y0, t0, odeint_interface=hn.odeint_adjoint, **kw)
    else:
        t = torch.cat([t0.reshape(1), t0.detach().reshape(1) + (-1 if reverse else 1)])
        sol = hn.solve(
            func,
            y0,
            t,
            event_fn=event,
            sensitivity=hn.InterpolatingAdjoint(),
            controller=hn.PIDController(rtol=1e-10, atol=1e-12),
        )
        t_e, ys = sol.t_final, sol.ys
    c = float(level.detach())
    theta, duration = 1.5, math.log(2.0 / c) / 1.5
    g_theta, g_y0, g_t0, g_c = torch.autograd.grad(t_e, (func.theta, y0, t0, level), retain_graph=True)
    torch.testing.assert_close(float(g_c), -1.0 / (theta * c), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(float(t_e.detach()) - 0.3, duration, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(float(g_t0), 1.0, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(float(g_theta), -duration / theta, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(float(g_y0), 1.0 / (theta * 2.0), rtol=1e-6, atol=1e-9)
    g_state = torch.autograd.grad(ys[-1].sum(), (func.theta, y0), allow_unused=True)
    for g in g_state:
        assert g is None or abs(float(g)) < 1e-6
