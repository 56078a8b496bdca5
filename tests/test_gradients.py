"""Every gradient method against analytic gradients, finite differences and each other (float64).

Tolerances: the solves run at rtol=1e-10, atol=1e-12, so the discrete solution and its derivative are
within ~1e-8 of the continuous ones; finite differences with eps=1e-6 on smooth problems carry
O(eps^2) ~ 1e-12 truncation error plus ~1e-10/eps ~ 1e-4 * |L| from the solver's tolerance-level
noise, hence the 1e-6 to 1e-5 relative tolerances below.
"""

from __future__ import annotations

import pytest
import scipy.linalg
import torch
from _gradient_problems import (
    METHODS,
    Linear,
    MLPField,
    Oscillator,
    VanDerPol,
    central_difference,
    solve,
    weighted_loss,
)

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default")  # tensors built in float64

A0 = [[-0.2, 1.3], [-1.1, -0.4]]


def linear_reference(a, y0, ts, w):
    """L = sum_i <w_i, y(t_i)> for y' = A y: value, dL/dy0, dL/dA, dL/dt (exact, via expm and its
    Frechet derivative: d/dA expm(A s) y0 along E is the Frechet derivative of expm at A s on E s)."""
    a, y0, ts, w = (x.detach().numpy() for x in (a, y0, ts, w))
    t0 = ts[0]
    dy0 = 0 * y0
    dA = 0 * a
    dt = 0 * ts
    for i in range(1, len(ts)):
        s = ts[i] - t0
        m = scipy.linalg.expm(a * s)
        dy0 += m.T @ w[i]
        # dL/dA = sum_i s * Frechet(A s)^T applied to w_i y0^T
        dA += scipy.linalg.expm_frechet(a.T * s, (w[i][:, None] * y0[None, :]) * s, compute_expm=False)
        yi = m @ y0
        dt[i] = w[i] @ (a @ yi)
        dt[0] -= w[i] @ (m @ (a @ y0))
    dy0 += w[0]
    return torch.tensor(dy0), torch.tensor(dA), torch.tensor(dt)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_against_exact(name, reverse):
    func = Linear(A0)
    y0 = torch.tensor([0.7, -0.3], requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.1, 2.0])
    t = (-t if reverse else t).requires_grad_(True)
    w = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    ys = solve(func, y0, t, METHODS[name]).ys
    gy0, gA, gt = torch.autograd.grad((w * ys).sum(), (y0, func.A, t))
    ry0, rA, rt = linear_reference(func.A, y0, t, w)
    torch.testing.assert_close(gy0, ry0, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gA, rA, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gt, rt, rtol=1e-7, atol=1e-9)


def _grads(name, func, y0, t, loss=weighted_loss, **kw):
    sol = solve(func, y0, t, METHODS[name], **kw)
    inputs = [p for p in func.parameters()] + ([y0] if isinstance(y0, torch.Tensor) else list(y0))
    return torch.autograd.grad(loss(sol.ys), inputs)


@pytest.mark.parametrize("name", list(METHODS))
def test_van_der_pol_against_finite_differences(name):
    func = VanDerPol(1.3)
    y0 = torch.tensor([1.5, 0.2], requires_grad=True)
    t = torch.linspace(0.0, 1.5, 4)
    g_mu, g_y0 = _grads(name, func, y0, t)

    def loss_mu(mu):
        with torch.no_grad():
            return weighted_loss(solve(VanDerPol(float(mu)), y0.detach(), t, hn.DirectBackprop()).ys)

    def loss_y0(y):
        with torch.no_grad():
            return weighted_loss(solve(func, y, t, hn.DirectBackprop()).ys)

    torch.testing.assert_close(g_mu, central_difference(loss_mu, func.mu.detach()), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_y0, central_difference(loss_y0, y0.detach()), rtol=1e-5, atol=1e-7)


def test_mlp_field_methods_agree():
    """Batch state, time-dependent MLP: every method against direct backprop and finite differences."""
    func = MLPField()
    y0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.5])
    reference = _grads("direct", func, y0, t)
    for name in ("backsolve", "interpolating", "interpolating-3"):
        for got, want in zip(_grads(name, func, y0, t), reference):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    bias = func.l2.bias

    def loss_bias(b):
        with torch.no_grad():
            old = bias.detach().clone()
            bias.copy_(b)
            value = weighted_loss(solve(func, y0.detach(), t, hn.DirectBackprop()).ys)
            bias.copy_(old)
            return value

    torch.testing.assert_close(reference[3], central_difference(loss_bias, bias.detach()), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(METHODS))
def test_tuple_state_against_direct_and_finite_differences(name):
    func = Oscillator()
    y0 = (torch.tensor([1.0, -0.5], requires_grad=True), torch.tensor([0.0, 0.3], requires_grad=True))
    t = torch.tensor([0.0, 0.7, 1.8], requires_grad=True)

    def full(method):
        sol = solve(func, y0, t, METHODS[method])
        assert isinstance(sol.ys, tuple) and sol.ys[0].shape == (3, 2)
        return torch.autograd.grad(weighted_loss(sol.ys), (func.k, func.c, *y0, t))

    got, want = full(name), full("direct")
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-8)

    def loss_t(tt):
        with torch.no_grad():
            return weighted_loss(solve(func, tuple(y.detach() for y in y0), tt, hn.DirectBackprop()).ys)

    torch.testing.assert_close(got[-1], central_difference(loss_t, t.detach()), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(METHODS))
def test_gradcheck(name):
    """torch.autograd.gradcheck on y0, a parameter and the times, through odeint-level calls."""
    k = torch.tensor(0.8, requires_grad=True)

    def field(t, y):
        return torch.stack([y[1], -k * torch.sin(y[0]) + 0.1 * t])

    def fn(y0, kk, t):
        with torch.no_grad():
            k.copy_(kk)
        sens = METHODS[name]
        params = () if isinstance(sens, hn.DirectBackprop) else (k,)
        sol = hn.solve(
            field, y0, t, sensitivity=sens, adjoint_params=params, controller=hn.PIDController(rtol=1e-10, atol=1e-12)
        )
        return sol.ys

    # the parameter enters through a closure, so differentiate k itself and check y0 and t by gradcheck
    y0 = torch.tensor([0.4, -0.2], requires_grad=True)
    t = torch.tensor([0.0, 0.3, 0.7], requires_grad=True)
    kk = k.detach().clone()
    assert torch.autograd.gradcheck(lambda y, tt: fn(y, kk, tt), (y0, t), eps=1e-6, atol=1e-6, rtol=1e-5)
    if name != "direct":
        ys = fn(y0.detach(), kk, t.detach())
        (g,) = torch.autograd.grad(ys.sum(), (k,))
        fd = central_difference(lambda v: fn(y0.detach(), v, t.detach()).sum().detach(), kk)
        torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["backsolve", "interpolating"])
def test_fixed_step_adjoint_matches_direct(name):
    """rk4 with fixed steps: the adjoint (continuous) and direct (discrete) gradients agree to O(h^4)."""
    func = VanDerPol(0.8)
    y0 = torch.tensor([1.0, 0.0], requires_grad=True)
    t = torch.tensor([0.0, 0.55, 2.0])  # 0.55 is not a grid point
    ctrl = hn.ConstantStepSize(step_size=0.01)
    got = _grads(name, func, y0, t, solver=hn.RK4(), controller=ctrl)
    want = _grads("direct", func, y0, t, solver=hn.RK4(), controller=ctrl)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_direct_time_gradient_only_when_asked():
    func = Linear(A0)
    y0 = torch.tensor([1.0, 0.0], requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    ys = hn.odeint(func, y0, t)
    (g,) = torch.autograd.grad(ys.sum(), (y0,))
    assert torch.isfinite(g).all()
    with pytest.raises(RuntimeError):
        torch.autograd.grad(hn.odeint(func, y0, t).sum(), (t,))
