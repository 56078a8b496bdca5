"""A terminal event stops at the first root of its function, also where the value comes back inside one step.

A sign test at the ends of a step alone misses an element whose value crosses zero and crosses back
within the step (a ball whose height barely reaches a level at its apex), and for three crossings
in one step its bisection may close on the third. Per-sample events and the single terminal event
of ``odeint_event`` (``hybrid_node/loop/host.py``) therefore also check the signs at interior points of
each step's dense output; torchdiffeq 0.2.5 checks the steps' ends only and misses such a root. The
references are closed forms: for x = sin t the level c is first reached at asin(c); for
g = cos(w t) + 1/2 the first root is 2 pi / (3 w).
"""

from __future__ import annotations

import math

import pytest
import torch

import hybrid_node as hn

F64 = torch.float64


def rotation(t, y):
    """x' = v, v' = -x for a batch: (x, v) = (sin t, cos t) from (0, 1)."""
    return torch.stack([y[:, 1], -y[:, 0]], 1)


@pytest.mark.parametrize(("level", "rtol"), [(0.99, 1e-4), (0.999, 1e-6)])
def test_per_sample_event_whose_value_returns_within_one_step_is_found(level, rtol):
    # x = sin t exceeds the level only on (asin c, pi - asin c), 0.28 and 0.09 wide: narrower than the
    # steps at these tolerances, so both ends of every step lie below it (the search used to reach t_end)
    y0 = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64)
    t_e, ys = hn.odeint_event(
        rotation,
        y0,
        0.0,
        event_fn=lambda t, y: y[:, 0] - level,
        per_sample=True,
        t_end=20.0,
        rtol=rtol,
        atol=rtol * 1e-2,
    )
    exact = math.asin(level)
    # near the root x' = sqrt(1 - c^2) (0.14 and 0.045), so a state error of order rtol moves the
    # root by about rtol / x' (7e-4 and 2e-5); the next crossing lies 2 pi later
    tol = 10 * rtol / math.sqrt(1 - level**2)
    torch.testing.assert_close(t_e, torch.full((2,), exact, dtype=F64), rtol=0.0, atol=tol)
    torch.testing.assert_close(ys[-1][:, 0], torch.full((2,), level, dtype=F64), rtol=0.0, atol=1e-12)


def test_per_sample_event_with_three_roots_in_one_step_stops_at_the_first():
    # a constant state, so the first step ([0, 3], from first_step) is accepted whole; g = cos(w t) + 1/2
    # has its roots at 2 pi / (3 w) (first), 4 pi / (3 w), 8 pi / (3 w), ...: three of them inside [0, 3]
    # for w = 3 (0.70, 1.40, 2.79; the bisection on the step's ends alone closed on 2.79)
    w = torch.tensor([3.0, 2.0], dtype=F64, requires_grad=True)
    t_e, _ = hn.odeint_event(
        lambda t, y: torch.zeros_like(y),
        torch.ones(2, 1, dtype=F64),
        0.0,
        event_fn=lambda t, y: torch.cos(w * t) + 0.5 + 0.0 * y[:, 0],
        per_sample=True,
        t_end=10.0,
        rtol=1e-10,
        atol=1e-12,
        options={"first_step": 3.0},
    )
    exact = 2 * math.pi / (3 * w.detach())
    # bisection closes the bracket to a few ulps, and the event function is exact in t
    torch.testing.assert_close(t_e.detach(), exact, rtol=1e-13, atol=0.0)
    # the implicit function theorem at the first root: dt_e/dw = -t_e / w
    (grad,) = torch.autograd.grad(t_e.sum(), w)
    torch.testing.assert_close(grad, -exact / w.detach(), rtol=1e-10, atol=0.0)


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_single_terminal_event_whose_value_returns_within_one_step_is_found(interface):
    # the per-sample case above with one sample: x = sin t is above 0.99 on a stretch narrower than the steps
    rtol, level = 1e-4, 0.99
    t_e, ys = hn.odeint_event(
        lambda t, y: torch.stack([y[1], -y[0]]),
        torch.tensor([0.0, 1.0], dtype=F64),
        0.0,
        event_fn=lambda t, y: y[0] - level,
        t_end=20.0,
        rtol=rtol,
        atol=rtol * 1e-2,
        odeint_interface=getattr(hn, interface),
        **({"adjoint_params": ()} if interface == "odeint_adjoint" else {}),
    )
    # as above: a state error of order rtol moves the root by about rtol / sqrt(1 - c^2)
    tol = 10 * rtol / math.sqrt(1 - level**2)
    torch.testing.assert_close(float(t_e), math.asin(level), rtol=0.0, atol=tol)
    torch.testing.assert_close(float(ys[-1][0]), level, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_single_terminal_event_with_three_roots_in_one_step_stops_at_the_first(method):
    # the per-sample case above with one sample, adaptive (first step [0, 3] accepted whole: the state
    # is constant) and on a fixed grid of one step of 3: three roots of cos(3 t) + 1/2 lie inside it
    w = torch.tensor(3.0, dtype=F64, requires_grad=True)
    options = {"first_step": 3.0} if method == "dopri5" else {"step_size": 3.0}
    t_e, _ = hn.odeint_event(
        lambda t, y: torch.zeros_like(y),
        torch.ones(1, dtype=F64),
        0.0,
        event_fn=lambda t, y: torch.cos(w * t) + 0.5 + 0.0 * y[0],
        t_end=10.0,
        method=method,
        rtol=1e-10,
        atol=1e-12,
        options=options,
    )
    exact = 2 * math.pi / (3 * 3.0)
    # bisection closes the bracket to a few ulps, and the event function is exact in t
    assert float(t_e.detach()) == pytest.approx(exact, rel=1e-13, abs=0.0)
    # the implicit function theorem at the first root: dt_e/dw = -t_e / w
    (grad,) = torch.autograd.grad(t_e, w)
    assert float(grad) == pytest.approx(-exact / 3.0, rel=1e-10)
