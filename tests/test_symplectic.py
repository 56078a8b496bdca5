"""Symplectic kick-drift compositions: orders, bounded energy error, time-reversibility, validation."""

from __future__ import annotations

import math

import pytest
import torch
from _hamiltonian_fields import oscillator, oscillator_energies, pendulum

import hybrid_node as hn

F64 = torch.float64
ORDERS = {"symplectic_euler": 1, "leapfrog": 2, "yoshida4": 4, "yoshida6": 6}


def _state(dtype=F64):
    return torch.tensor([1.0, 0.5, -2.0], dtype=dtype), torch.tensor([0.0, 0.3, 0.1], dtype=dtype)


def _end(method, y0, t0, t1, n, func=pendulum):
    t = torch.tensor([t0, t1], dtype=y0[0].dtype)
    ys = hn.odeint(func, y0, t, method=method, options={"step_size": abs(t1 - t0) / n})
    return torch.cat([ys[0][-1], ys[1][-1]])


def _slope(method, y0, t0, t1, func):
    """The end-point errors of ``method`` at 8, 16 and 32 steps against dopri8 at 1e-13, and their log-log slope."""
    exact = hn.odeint(func, y0, torch.tensor([t0, t1], dtype=F64), method="dopri8", rtol=1e-13, atol=1e-13)
    exact = torch.cat([exact[0][-1], exact[1][-1]])
    ns = (8, 16, 32)
    errors = [float((_end(method, y0, t0, t1, n, func) - exact).abs().max()) for n in ns]
    return errors, math.log(errors[0] / errors[-1]) / math.log(ns[-1] / ns[0])


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("method", list(ORDERS))
def test_order_by_log_log_slope(method, backward):
    y0 = _state()
    t0, t1 = (2.0, 0.0) if backward else (0.0, 2.0)
    errors, slope = _slope(method, y0, t0, t1, pendulum)
    assert abs(slope - ORDERS[method]) < 0.15, (errors, slope)


def varying_mass(t, y):
    """Separable at every fixed time, with dq/dt depending on t: H = (1 + sin(t) / 2) p^2 / 2 - cos(q)."""
    q, p = y
    return p * (1 + 0.5 * torch.sin(t)), -torch.sin(q) * (1 + 0.3 * t)


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("method", list(ORDERS))
def test_order_holds_when_dq_dt_depends_on_time(method, backward):
    # a drift evaluated at its start time (not its midpoint) made every method first order here
    y0 = _state()
    t0, t1 = (2.0, 0.5) if backward else (0.5, 2.0)
    errors, slope = _slope(method, y0, t0, t1, varying_mass)
    assert abs(slope - ORDERS[method]) < 0.15, (errors, slope)  # as the autonomous slopes above


@pytest.mark.parametrize("method", ["leapfrog", "yoshida4", "yoshida6"])
def test_symmetric_methods_are_time_reversible_on_a_time_dependent_field(method):
    y0 = _state()
    t = torch.tensor([0.0, 3.0], dtype=F64)
    q1, p1 = hn.odeint(varying_mass, y0, t, method=method, options={"step_size": 0.01})
    back = hn.odeint(varying_mass, (q1[-1], p1[-1]), t.flip(0), method=method, options={"step_size": 0.01})
    error = max(float((back[0][-1] - y0[0]).abs().max()), float((back[1][-1] - y0[1]).abs().max()))
    assert error < 1e-12  # 300 steps of float64 rounding; drifts at their start time were off by 5e-3 to 3e-2


def test_registry_and_float32_batched():
    assert hn.METHODS["yoshida6"].solver().order == 6
    assert not hn.METHODS["leapfrog"].solver().adaptive
    q = torch.randn(5, 3)  # a batch of 5 three-dimensional systems
    p = torch.randn(5, 3)
    ys = hn.odeint(oscillator, (q, p), torch.linspace(0.0, 1.0, 4), method="yoshida4", options={"step_size": 0.05})
    assert ys[0].shape == (4, 5, 3) and ys[0].dtype == torch.float32
    exact_q = q * math.cos(1.0) + p * math.sin(1.0)
    assert torch.allclose(ys[0][-1], exact_q, atol=1e-5)


def _one_step_map(method: str, h: float) -> torch.Tensor:
    """The 2x2 matrix of one step of ``method`` on q' = p, p' = -q (the map is linear), by stepping the basis."""
    q0 = torch.tensor([1.0, 0.0], dtype=F64)
    p0 = torch.tensor([0.0, 1.0], dtype=F64)
    q1, p1 = hn.odeint(oscillator, (q0, p0), torch.tensor([0.0, h], dtype=F64), method=method, options={"step_size": h})
    return torch.stack([q1[-1], p1[-1]])  # column j: the image of basis vector j


def test_leapfrog_energy_bounded_over_1e5_steps_while_rk4_drifts():
    # Both one-step maps are linear on the oscillator, so the steps' own matrices (computed by the
    # solvers) raised to every power up to 10^5 are the 10^5-step trajectories, in 17 products.
    h, n = 0.2, 10**5
    leap = (oscillator_energies(_one_step_map("leapfrog", h), n) - 0.5).abs()
    rk4 = (oscillator_energies(_one_step_map("rk4", h), n) - 0.5).abs()
    first, last = slice(0, n // 10), slice(n - n // 10, n)
    # leapfrog: an O(h^2) oscillation that does not grow (backward error analysis: a modified energy is
    # conserved exactly by the linear map)
    assert float(leap.max()) < h**2 / 4
    assert float(leap[last].max()) < 1.01 * float(leap[first].max())
    # rk4: |R(ih)| < 1, the energy decays secularly, about ten times further in the last tenth
    assert float(rk4[last].max()) > 5 * float(rk4[first].max())
    assert float(rk4[-1]) > 5 * float(leap.max())  # the drift dwarfs the bounded oscillation


@pytest.mark.slow
def test_leapfrog_energy_bounded_over_1e5_real_steps():
    y0 = (torch.tensor([1.0], dtype=F64), torch.tensor([0.0], dtype=F64))
    t = torch.linspace(0.0, 1e4, 11, dtype=F64)
    q, p = hn.odeint(oscillator, y0, t, method="leapfrog", options={"step_size": 0.1})
    energy = 0.5 * (q**2 + p**2)
    assert float((energy - 0.5).abs().max()) < 0.1**2 / 4


def test_leapfrog_is_time_reversible():
    y0 = _state()
    n, h = 1000, 0.01
    t = torch.tensor([0.0, n * h], dtype=F64)
    q1, p1 = hn.odeint(pendulum, y0, t, method="leapfrog", options={"step_size": h})
    back = hn.odeint(pendulum, (q1[-1], p1[-1]), t.flip(0), method="leapfrog", options={"step_size": h})
    error = max(float((back[0][-1] - y0[0]).abs().max()), float((back[1][-1] - y0[1]).abs().max()))
    assert error < 1e-12  # rounding only: a non-symmetric method (rk4) is off by its truncation error
    rk = hn.odeint(pendulum, y0, t, method="rk4", options={"step_size": h})
    rk_back = hn.odeint(pendulum, (rk[0][-1], rk[1][-1]), t.flip(0), method="rk4", options={"step_size": h})
    assert float((rk_back[0][-1] - y0[0]).abs().max()) > 100 * error


def test_gradients_flow_through_a_symplectic_solve():
    k = torch.tensor(2.0, dtype=F64, requires_grad=True)

    def spring(t, y):
        return y[1], -k * y[0]

    y0 = (torch.tensor([1.0], dtype=F64), torch.tensor([0.0], dtype=F64))
    q, _ = hn.odeint(spring, y0, torch.tensor([0.0, 1.0], dtype=F64), method="yoshida4", options={"step_size": 0.01})
    q[-1].sum().backward()
    # q(1) = cos(sqrt(k)); d/dk = -sin(sqrt(k)) / (2 sqrt(k))
    expected = -math.sin(math.sqrt(2.0)) / (2 * math.sqrt(2.0))
    assert abs(float(k.grad) - expected) < 1e-6


def test_partitioned_method_needs_a_pair():
    with pytest.raises(ValueError, match=r"tuple state y0 = \(q, p\)"):
        hn.odeint(
            lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), method="leapfrog", options={"step_size": 0.1}
        )
    three = (torch.ones(1), torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="needs a tuple state"):
        hn.odeint(lambda t, y: y, three, torch.tensor([0.0, 1.0]), method="leapfrog", options={"step_size": 0.1})


def test_adjoint_refuses_a_partitioned_backward_method_before_the_forward_solve():
    calls = []
    k = torch.tensor(2.0, dtype=F64, requires_grad=True)

    def spring(t, y):
        calls.append(t)
        return y[1], -k * y[0]

    y0 = (torch.tensor([1.0], dtype=F64), torch.tensor([0.0], dtype=F64))
    t = torch.tensor([0.0, 1.0], dtype=F64)
    opts = {"step_size": 0.01}
    # the backward method defaults to the forward's, and a named partitioned one is refused the same way
    for extra in ({}, {"adjoint_method": "yoshida4", "adjoint_options": opts}):
        with pytest.raises(ValueError, match="adjoint_method='rk4'"):
            hn.odeint_adjoint(spring, y0, t, method="leapfrog", options=opts, adjoint_params=(k,), **extra)
    assert not calls  # refused before any evaluation, not after a forward solve
    # the remedy the message names works: q(1) = cos(sqrt(k)), dq/dk = -sin(sqrt(k)) / (2 sqrt(k))
    q, _ = hn.odeint_adjoint(
        spring, y0, t, method="leapfrog", options=opts, adjoint_params=(k,), adjoint_method="rk4", adjoint_options=opts
    )
    q[-1].sum().backward()
    expected = -math.sin(math.sqrt(2.0)) / (2 * math.sqrt(2.0))
    assert abs(float(k.grad) - expected) < 1e-4  # leapfrog's O(h^2) error at h = 0.01 on a unit-size solution
