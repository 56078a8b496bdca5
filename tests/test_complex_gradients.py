"""Gradients of solves with complex states or complex parameters, against independent references.

The references: the analytic solution of y' = lam y (y = y0 exp(lam (t - t0))) differentiated by
torch's own autograd, direct backpropagation through ``hn.odeint`` (torch's autograd through the
solver's steps), and central finite differences taken on the real and the imaginary part of each
input separately. torch's convention for the gradient of a real loss L with respect to a complex
z is dL/dRe(z) + i dL/dIm(z); every reference here follows it.
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

LAM = -0.3 + 2.0j
Y0 = [1.0 + 0.5j, -0.2 + 0.3j]
C = torch.tensor([0.4 - 1.1j, 0.7 + 0.2j], dtype=torch.complex128)


def loss(ys: torch.Tensor) -> torch.Tensor:
    """A real loss that depends on the real and the imaginary parts (not only on magnitudes)."""
    return (ys.abs() ** 2).sum() + (C * ys).real.sum()


def analytic(y0: torch.Tensor, lam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The solution of y' = lam y at the times t, shape (len(t), *y0.shape)."""
    return y0 * torch.exp(lam * (t - t[0])[:, None])


def finite_difference(fn, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """The central difference of the real scalar fn(x), on each real (and imaginary) part of x."""
    x = x.detach()
    out = torch.zeros_like(x)
    flat = out.reshape(-1)
    for i in range(x.numel()):
        for unit in (1.0, 1j) if x.is_complex() else (1.0,):
            e = torch.zeros_like(x).reshape(-1)
            e[i] = unit * h
            e = e.reshape(x.shape)
            slope = (float(fn(x + e)) - float(fn(x - e))) / (2 * h)
            flat[i] += unit * slope
    return out


def test_complex_state_time_gradients_match_the_analytic_solution():
    # dL/dt_i pairs the gradient with the velocity as Re(conj(dL/dy) f); the product without the
    # conjugate, Re(dL/dy f), was up to 5.9 off here (6.62, -1.06, 3.91, 0.72 against 4.55, -1.28,
    # -1.99, -1.27)
    lam = torch.tensor(LAM, dtype=torch.complex128)
    y0 = torch.tensor(Y0, dtype=torch.complex128)
    t = torch.tensor([0.1, 0.6, 1.1, 1.6], dtype=torch.float64, requires_grad=True)
    (ours,) = torch.autograd.grad(loss(hn.odeint(lambda t, y: lam * y, y0, t, rtol=1e-11, atol=1e-12)), t)
    (exact,) = torch.autograd.grad(loss(analytic(y0, lam, t)), t)
    # the solve's error at rtol 1e-11 is ~1e-10 of the state, carried into the loss
    torch.testing.assert_close(ours, exact, rtol=1e-8, atol=1e-8)


class ComplexRate(torch.nn.Module):
    """y' = w lam y on a real state holding (Re y, Im y), with a complex parameter lam."""

    def __init__(self):
        super().__init__()
        self.lam = torch.nn.Parameter(torch.tensor(LAM, dtype=torch.complex128))
        self.w = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))

    def forward(self, t, y):
        return torch.view_as_real(self.w * self.lam * torch.view_as_complex(y.contiguous()))


@pytest.mark.parametrize("sensitivity", [hn.BacksolveAdjoint(), hn.InterpolatingAdjoint()], ids=type)
def test_adjoint_keeps_the_imaginary_part_of_a_complex_parameters_gradient(sensitivity):
    # a real state's augmented state is real: the complex parameter's gradient was cast to it and
    # lost its imaginary part (2.93 + 0j where direct backpropagation gives 2.93 - 0.52j)
    func = ComplexRate()
    y0 = torch.view_as_real(torch.tensor(Y0, dtype=torch.complex128))
    t = torch.tensor([0.0, 0.5, 1.2], dtype=torch.float64)
    settings = dict(solver=hn.Dopri5(), controller=hn.PIDController(rtol=1e-10, atol=1e-12))

    def real_loss(ys):
        return loss(torch.view_as_complex(ys.contiguous()))

    ours = torch.autograd.grad(real_loss(hn.solve(func, y0, t, sensitivity=sensitivity, **settings).ys), [func.lam])
    direct = torch.autograd.grad(real_loss(hn.solve(func, y0, t, **settings).ys), [func.lam])
    exact = torch.autograd.grad(loss(analytic(torch.tensor(Y0), func.w * func.lam, t)), [func.lam])
    # adjoint and direct gradients are two approximations at rtol 1e-10: ~1e-9 apart here
    torch.testing.assert_close(ours[0], direct[0], rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(ours[0], exact[0], rtol=1e-7, atol=1e-7)
    assert abs(ours[0].imag) > 0.1  # the case the test is about: a gradient with an imaginary part
