"""Events with the adjoint methods (BacksolveAdjoint, InterpolatingAdjoint), float64.

The adjoint gradients are checked against the analytic derivatives of bouncing balls and of first
passage times of a decay (closed forms in tests/test_events_jumps.py and tests/test_events_per_sample.py),
against central finite differences, and against direct backpropagation through the same solve.

Tolerances: the forward and backward solves run at rtol 1e-10, atol 1e-12, so an adjoint gradient
differs from the exact (and from the direct) one by about that relative amount times the problem's
growth; rtol 1e-6 leaves three orders of margin. For the bouncing balls under gravity the field is
linear and the dense output exact, so every method agrees to rounding (rtol 1e-8 is generous).
"""

from __future__ import annotations

import math

import pytest
import torch
from bouncing import Decay, G, fall, ground

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default")

TOL = {"rtol": 1e-10, "atol": 1e-12}
ADJOINTS = {
    "backsolve": hn.BacksolveAdjoint(),
    "interpolating": hn.InterpolatingAdjoint(),
    "interpolating_checkpoints": hn.InterpolatingAdjoint(checkpoints=4),
}


def impact_derivatives(h: float, e: float, k: int) -> tuple[float, float]:
    """d t_k / dh and d t_k / de of the k-th impact (k = 1, 2, ...) of a ball dropped from h."""
    t1 = math.sqrt(2 * h / G)
    d_h = (1 + 2 * sum(e**j for j in range(1, k))) / math.sqrt(2 * G * h)
    d_e = t1 * 2 * sum(j * e ** (j - 1) for j in range(1, k))
    return d_h, d_e


def bouncing(h, e, t, sensitivity):
    y0 = torch.stack([h, torch.zeros_like(h)], 1)

    return hn.solve(
        fall,
        y0,
        t,
        event=ground(e),
        controller=hn.PIDController(**TOL),
        sensitivity=sensitivity,
        adjoint_params=(),
    )


@pytest.mark.parametrize("name", list(ADJOINTS))
def test_bouncing_ball_batch_gradients_by_the_adjoint_match_the_analytic_ones_and_direct_backprop(name):
    hs, e0 = [1.0, 2.0, 3.0], 0.8
    t = torch.tensor([0.0, 1.0, 2.5])
    grads = {}
    for key, sensitivity in (("adjoint", ADJOINTS[name]), ("direct", None)):
        h = torch.tensor(hs, requires_grad=True)
        e = torch.tensor(e0, requires_grad=True)
        sol = bouncing(h, e, t, sensitivity)
        # every impact of every ball against its analytic derivatives
        seen = {i: 0 for i in range(3)}
        for r in sol.events:
            (i,) = r.index
            seen[i] += 1
            g_h, g_e = torch.autograd.grad(r.t, (h, e), retain_graph=True, allow_unused=True)
            d_h, d_e = impact_derivatives(hs[i], e0, seen[i])
            torch.testing.assert_close(float(g_h[i]), d_h, rtol=1e-8, atol=1e-10)
            torch.testing.assert_close(0.0 if g_e is None else float(g_e), d_e, rtol=1e-8, atol=1e-10)
            assert float(g_h.abs().sum() - g_h[i].abs()) == 0.0  # other balls do not move this impact
        assert min(seen.values()) >= 2
        loss = sol.ys[1:].pow(2).sum() + sum(r.y[:, 1].sum() for r in sol.events)
        grads[key] = torch.autograd.grad(loss, (h, e))
        if key == "adjoint":
            assert sol.stats.nfe_backward > 0  # the adjoint solves ran (not a graph through the loop)
    for a, b in zip(grads["adjoint"], grads["direct"]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_the_adjoint_through_jumps_matches_finite_differences():
    t = torch.tensor([0.0, 3.0])
    h = torch.tensor([2.0, 1.2], requires_grad=True)
    e = torch.tensor(0.8, requires_grad=True)
    sol = bouncing(h, e, t, hn.InterpolatingAdjoint())
    g_h, g_e = torch.autograd.grad(sol.ys[-1].sum(), (h, e))
    eps = 1e-6

    def final(hh, ee):
        with torch.no_grad():
            return float(bouncing(hh, ee, t, None).ys[-1].sum())

    for i in range(2):
        dh = torch.zeros(2)
        dh[i] = eps
        fd = (final(h.detach() + dh, e.detach()) - final(h.detach() - dh, e.detach())) / (2 * eps)
        torch.testing.assert_close(float(g_h[i]), fd, rtol=1e-5, atol=1e-7)
    fd_e = (final(h.detach(), e.detach() + eps) - final(h.detach(), e.detach() - eps)) / (2 * eps)
    torch.testing.assert_close(float(g_e), fd_e, rtol=1e-5, atol=1e-7)


class Field(torch.nn.Module):
    """Gravity plus a small learned force: the adjoint's parameter gradients have something to find."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    def forward(self, t, y):
        return self.net(y) + torch.stack([y[:, 1], torch.full_like(y[:, 1], -3.0)], 1)


def ground_and_apex():
    apex = hn.Event(lambda t, y: y[:, 1])  # recorded only
    return {"jumps": ground(0.8), "records": apex, "both": (ground(0.8), apex)}


@pytest.mark.parametrize("events", ["jumps", "records", "both"])
@pytest.mark.parametrize("name", ["backsolve", "interpolating_checkpoints"])
def test_parameter_gradients_through_events_by_the_adjoint_match_direct_backprop(events, name):
    func = Field()
    params = tuple(func.parameters())
    grads = []
    for sensitivity in (ADJOINTS[name], None):
        y0 = torch.tensor([[1.0, 0.0], [1.5, 0.2], [0.7, -0.1]], requires_grad=True)
        sol = hn.solve(
            func,
            y0,
            torch.tensor([0.0, 0.5, 2.0]),
            event=ground_and_apex()[events],
            controller=hn.PIDController(**TOL),
            sensitivity=sensitivity,
        )
        assert len(sol.events) >= 1
        loss = (
            sol.ys[1:].pow(2).sum()
            + sum((k + 1) * r.t for k, r in enumerate(sol.events))
            + sum(r.y.pow(2).sum() for r in sol.events)
        )
        grads.append(torch.autograd.grad(loss, (y0,) + params))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(ADJOINTS))
def test_per_sample_first_passage_gradients_by_the_adjoint_match_the_closed_form(name):
    # y' = -theta y reaches the level c_i at t_i = log(y0_i / c_i) / theta
    func = Decay(1.3)
    y0 = torch.tensor([[2.0], [5.0], [1.5], [40.0]], requires_grad=True)
    level = torch.tensor([0.5, 1.0, 1.2, 0.1], requires_grad=True)
    sol = hn.solve(
        func,
        y0,
        torch.tensor([0.0, 1.0]),
        event_fn=lambda t, y: y[:, 0] - level,
        per_sample_events=True,
        controller=hn.PIDController(**TOL),
        sensitivity=ADJOINTS[name],
    )
    t_e = sol.t_final
    exact = torch.log(y0.detach()[:, 0] / level.detach()) / 1.3
    torch.testing.assert_close(t_e.detach(), exact, rtol=1e-8, atol=1e-8)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])  # each sample's own derivative, not only their sum
    g_theta, g_y0, g_c = torch.autograd.grad((weights * t_e).sum(), (func.theta, y0, level))
    torch.testing.assert_close(float(g_theta), float(-(weights * exact).sum() / 1.3), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g_y0[:, 0], weights / (1.3 * y0.detach()[:, 0]), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g_c, -weights / (1.3 * level.detach()), rtol=1e-6, atol=1e-9)
    assert sol.stats.nfe_backward > 0


@pytest.mark.parametrize("reverse_time", [False, True])
def test_odeint_event_per_sample_with_odeint_adjoint_matches_direct_backprop(reverse_time):
    func = Field()
    params = tuple(func.parameters())
    y0 = torch.tensor([[1.0, 0.0], [1.5, 0.2], [0.7, -0.1]], requires_grad=True)
    grads = []
    for interface in (hn.odeint_adjoint, hn.odeint):
        t_e, ys = hn.odeint_event(
            func,
            y0,
            torch.tensor(0.0),
            event_fn=lambda t, y: y[:, 0] - 0.2 * t,  # the parabolas fall both ways in time
            per_sample=True,
            reverse_time=reverse_time,
            odeint_interface=interface,
            **TOL,
        )
        assert bool(torch.isfinite(t_e).all())
        loss = (t_e * torch.tensor([1.0, 2.0, 3.0])).sum() + ys[-1].pow(2).sum()
        grads.append(torch.autograd.grad(loss, (y0,) + params))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reverse", [False, True])
def test_dose_jumps_on_a_tuple_state_backwards_in_time_match_direct_backprop_with_the_adjoint(reverse):
    # time events at t = +-1.5 add a dose to y[0] and halve y[1]; the field couples them
    k = torch.tensor(0.7, requires_grad=True)
    sign = -1.0 if reverse else 1.0
    event = hn.Event(lambda t, y: torch.stack([t - 1.5, t + 1.5]), on_event=lambda t, y: (y[0] + 1.0, 0.5 * y[1]))
    grads = []
    for sensitivity in (None, hn.BacksolveAdjoint(), hn.InterpolatingAdjoint(checkpoints=3)):
        sol = hn.solve(
            lambda t, y: (-k * y[0], -k * y[1] + y[0]),
            (torch.tensor([1.0]), torch.tensor([0.5])),
            torch.tensor([0.0, sign * 1.0, sign * 3.0]),
            event=event,
            controller=hn.PIDController(**TOL),
            sensitivity=sensitivity,
            adjoint_params=(k,),
        )
        assert [r.index for r in sol.events] == [(1,) if reverse else (0,)]
        loss = sol.ys[0][1:].sum() + sol.ys[1][-1].sum()
        grads.append(float(torch.autograd.grad(loss, k)[0]))
    torch.testing.assert_close(grads[1:], grads[:1] * 2, rtol=1e-6, atol=1e-9)
