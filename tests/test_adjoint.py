"""Adjoint-specific behaviour: drift, seminorm, stats, options, parameters and errors (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from _gradient_problems import Linear, MLPField, solve, weighted_loss

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default")  # tensors built in float64


def test_backsolve_drifts_on_a_contracting_problem_and_interpolating_does_not():
    """y' = A y, A = diag(-1, -30): the backward reconstruction of the fast component grows like
    e^{29 (T - s)} from tolerance-level errors. dL/dA[0, 1] = int_0^1 e^{-(1-s)} e^{-30 s} ds (L = sum y(1),
    y0 = (1, 1)) pairs the slow adjoint with that fast state, so backsolve gets it badly wrong."""
    exact = math.exp(-1) * (1 - math.exp(-29)) / 29
    errors = {}
    for name, sens in (("backsolve", hn.BacksolveAdjoint()), ("interpolating", hn.InterpolatingAdjoint())):
        func = Linear([[-1.0, 0.0], [0.0, -30.0]])
        y0 = torch.tensor([1.0, 1.0])
        sol = solve(func, y0, torch.tensor([0.0, 1.0]), sens, rtol=1e-8, atol=1e-10)
        (g,) = torch.autograd.grad(sol.ys[-1].sum(), (func.A,))
        errors[name] = abs(float(g[0, 1]) - exact) / exact
    assert errors["interpolating"] < 1e-6
    assert errors["backsolve"] > 1.0  # more than 100% off: visibly drifted


def test_seminorm_needs_fewer_backward_evaluations():
    """Kidger et al. (2021): leaving the parameter channels out of the error norm saves backward steps."""
    nfe = {}
    for norm in ("default", "seminorm"):
        func = MLPField(width=16, seed=2)
        y0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
        sol = hn.solve(
            func,
            y0,
            torch.linspace(0, 2, 4),
            sensitivity=hn.BacksolveAdjoint(norm=norm),
            controller=hn.PIDController(rtol=1e-6, atol=1e-8),
        )
        weighted_loss(sol.ys).backward()
        nfe[norm] = sol.stats.nfe_backward
    assert nfe["seminorm"] < nfe["default"], nfe


def test_seminorm_through_odeint_adjoint_keeps_the_gradient():
    func = MLPField(seed=4)
    y0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0, 2, 3)
    grads = []
    for options in (None, {"norm": "seminorm"}):
        ys = hn.odeint_adjoint(func, y0, t, rtol=1e-9, atol=1e-11, adjoint_options=options)
        grads.append(torch.autograd.grad(weighted_loss(ys), tuple(func.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_backward_stats_are_reported():
    func = MLPField()
    sol = hn.solve(func, torch.ones(2, 2), torch.linspace(0, 1, 5), sensitivity=hn.InterpolatingAdjoint())
    assert sol.stats.nfe > 0 and sol.stats.nfe_backward == 0 and sol.stats.n_steps_backward == 0
    weighted_loss(sol.ys).backward()
    first = sol.stats.nfe_backward
    assert first > sol.stats.nfe // 2 and sol.stats.n_steps_backward > 0


def test_one_backward_solve_over_many_outputs():
    """50 output times must not cost a fresh step-size search per interval: the backward solve takes
    about as many steps as the forward (torchdiffeq's per-interval restarts cost ~20x here)."""
    func = MLPField()
    sol = hn.solve(
        func,
        torch.ones(4, 2),
        torch.linspace(0, 5, 50),
        sensitivity=hn.BacksolveAdjoint(),
        controller=hn.PIDController(rtol=1e-5, atol=1e-6),
    )
    weighted_loss(sol.ys).backward()
    assert sol.stats.n_steps_backward <= 49 + 3 * sol.stats.n_accepted, sol.stats


def test_adjoint_tolerances_and_method():
    func = MLPField()
    y0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(5))
    t = torch.linspace(0, 2, 4)
    ref = torch.autograd.grad(weighted_loss(hn.odeint(func, y0, t, rtol=1e-10, atol=1e-12)), tuple(func.parameters()))
    loose = hn.solve(
        func,
        y0,
        t,
        controller=hn.PIDController(rtol=1e-10, atol=1e-12),
        sensitivity=hn.BacksolveAdjoint(rtol=1e-4, atol=1e-6),
    )
    tight = hn.solve(
        func, y0, t, controller=hn.PIDController(rtol=1e-10, atol=1e-12), sensitivity=hn.BacksolveAdjoint()
    )
    g_loose = torch.autograd.grad(weighted_loss(loose.ys), tuple(func.parameters()))
    g_tight = torch.autograd.grad(weighted_loss(tight.ys), tuple(func.parameters()))
    assert loose.stats.nfe_backward < tight.stats.nfe_backward
    err = lambda g: max(float((a - b).abs().max()) for a, b in zip(g, ref))
    assert err(g_tight) < 1e-7 < err(g_loose) < 1e-2
    ys = hn.odeint_adjoint(
        func, y0, t, rtol=1e-10, atol=1e-12, adjoint_method="rk4", adjoint_options={"step_size": 0.01}
    )
    g_rk4 = torch.autograd.grad(weighted_loss(ys), tuple(func.parameters()))
    assert err(g_rk4) < 1e-6


def test_plain_function_with_adjoint_params():
    w = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], requires_grad=True)

    def field(t, y):
        return y @ w.T

    y0 = torch.tensor([1.0, 0.0])
    t = torch.linspace(0, 1, 3)
    (g_adj,) = torch.autograd.grad(hn.odeint_adjoint(field, y0, t, adjoint_params=(w,)).sum(), (w,))
    (g_dir,) = torch.autograd.grad(hn.odeint(field, y0, t).sum(), (w,))
    torch.testing.assert_close(g_adj, g_dir, rtol=1e-6, atol=1e-8)
    sol = hn.solve(field, y0, t, sensitivity=hn.InterpolatingAdjoint(), adjoint_params=[w])
    (g_int,) = torch.autograd.grad(sol.ys.sum(), (w,))
    torch.testing.assert_close(g_int, g_dir, rtol=1e-6, atol=1e-8)


def test_clear_errors_for_parameters():
    def field(t, y):
        return -y

    y0, t = torch.ones(2), torch.linspace(0, 1, 3)
    with pytest.raises(ValueError, match="adjoint_params"):
        hn.odeint_adjoint(field, y0, t)
    with pytest.raises(ValueError, match="adjoint_params"):
        hn.solve(field, y0, t, sensitivity=hn.BacksolveAdjoint())
    with pytest.raises(TypeError, match="tuple of tensors"):
        hn.solve(field, y0, t, sensitivity=hn.BacksolveAdjoint(), adjoint_params=torch.ones(2))
    with pytest.raises(TypeError, match="must be a tensor"):
        hn.solve(field, y0, t, sensitivity=hn.InterpolatingAdjoint(), adjoint_params=(1.0,))
    with pytest.raises(ValueError, match="seminorm"):
        hn.BacksolveAdjoint(norm="semi")


def test_y0_only_gradient_without_parameters():
    """No parameters at all (an empty adjoint_params): gradients for y0 and t still flow."""
    y0 = torch.tensor([2.0], requires_grad=True)
    t = torch.tensor([0.0, 1.0], requires_grad=True)
    ys = hn.odeint_adjoint(lambda t, y: -y, y0, t, adjoint_params=())
    g_y0, g_t = torch.autograd.grad(ys[-1].sum(), (y0, t))
    torch.testing.assert_close(g_y0, torch.tensor([math.exp(-1)]), rtol=1e-6, atol=0)
    torch.testing.assert_close(g_t, torch.tensor([2 * math.exp(-1), -2 * math.exp(-1)]), rtol=1e-6, atol=0)


def test_float32_adjoint():
    func = MLPField().float()
    y0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)).float()
    t = torch.linspace(0, 1, 3, dtype=torch.float32)
    ys = hn.odeint_adjoint(func, y0, t, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(ys.square().sum(), tuple(func.parameters()))
    ys_d = hn.odeint(func, y0, t, rtol=1e-5, atol=1e-6)
    ref = torch.autograd.grad(ys_d.square().sum(), tuple(func.parameters()))
    for g, r in zip(grads, ref):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4)
