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


# ----------------------------------------------------------------------------------------------------
# the adjoints on complex states: the augmented state [z, a, q] is complex; real parameters' parts of q
# have a zero imaginary part, and the error norm is on magnitudes, as the forward solve's
# ----------------------------------------------------------------------------------------------------

ADJOINTS = [hn.BacksolveAdjoint(), hn.InterpolatingAdjoint(), hn.InterpolatingAdjoint(checkpoints=3)]


class Linear(torch.nn.Module):
    """y' = w lam y: a complex rate lam and a real factor w."""

    def __init__(self, dtype: torch.dtype = torch.complex128):
        super().__init__()
        self.lam = torch.nn.Parameter(torch.tensor(LAM, dtype=dtype))
        self.w = torch.nn.Parameter(torch.tensor(0.7, dtype=dtype.to_real()))

    def forward(self, t, y):
        return self.w * self.lam * y


@pytest.mark.parametrize("sensitivity", ADJOINTS, ids=repr)
@pytest.mark.parametrize("reverse", [False, True])
def test_adjoint_of_a_complex_linear_ode_matches_the_analytic_solution(sensitivity, reverse):
    func = Linear()
    y0 = torch.tensor(Y0, dtype=torch.complex128, requires_grad=True)
    t = torch.tensor([0.1, 0.6, 1.1, 1.6], dtype=torch.float64)
    t = (t.flip(0) if reverse else t).requires_grad_(True)
    control = hn.PIDController(rtol=1e-11, atol=1e-12)
    ys = hn.solve(func, y0, t, solver=hn.Dopri5(), controller=control, sensitivity=sensitivity).ys
    inputs = (y0, t, func.lam, func.w)
    ours = torch.autograd.grad(loss(ys), inputs)
    exact = torch.autograd.grad(loss(analytic(y0, func.w * func.lam, t)), inputs)
    direct = torch.autograd.grad(loss(hn.solve(func, y0, t, solver=hn.Dopri5(), controller=control).ys), inputs)
    assert ours[2].imag.abs() > 0.1 and ours[0].imag.abs().min() > 0.1  # complex gradients, not only real parts
    for mine, theirs, ref in zip(ours, direct, exact):
        assert mine.dtype == ref.dtype
        # the adjoint's backward solve at rtol 1e-11 against exact and direct gradients: ~1e-10 apart
        torch.testing.assert_close(mine, ref, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-8)


class Nonlinear(torch.nn.Module):
    """A nonlinear, time-dependent field with no closed-form solution."""

    def __init__(self):
        super().__init__()
        self.lam = torch.nn.Parameter(torch.tensor([LAM, 0.1 - 1.0j], dtype=torch.complex128))
        self.w = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))

    def forward(self, t, y):
        return self.lam * y * self.w + 0.1 * torch.sin(t) * y**2 + 0.2j * y.conj()


def test_odeint_adjoint_on_a_complex_state_matches_finite_differences():
    # y.conj() makes the field non-holomorphic: the gradient is the real one of (Re y, Im y), not a
    # complex derivative, so real and imaginary parts are checked separately
    func = Nonlinear()
    y0 = torch.tensor(Y0, dtype=torch.complex128, requires_grad=True)
    t = torch.linspace(0.0, 1.5, 4, dtype=torch.float64)
    tol = dict(rtol=1e-11, atol=1e-12)
    ys = hn.odeint_adjoint(func, y0, t, **tol)
    ours = torch.autograd.grad(loss(ys), (y0, func.lam, func.w))
    direct = torch.autograd.grad(loss(hn.odeint(func, y0, t, **tol)), (y0, func.lam, func.w))

    def loss_at(y0=y0, lam=func.lam, w=func.w):
        with torch.no_grad():
            field = lambda t, y: lam * y * w + 0.1 * torch.sin(t) * y**2 + 0.2j * y.conj()  # noqa: E731
            return loss(hn.odeint(field, y0, t, **tol))

    fds = (
        finite_difference(lambda x: loss_at(y0=x), y0),
        finite_difference(lambda x: loss_at(lam=x), func.lam),
        finite_difference(lambda x: loss_at(w=x), func.w),
    )
    for mine, theirs, fd in zip(ours, direct, fds):
        # central differences with h = 1e-6 on solves at rtol 1e-11: ~1e-7 of truncation and rounding
        torch.testing.assert_close(mine, fd, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("method, options", [("rk4", {"step_size": 0.01}), ("dopri5", {})])
def test_odeint_adjoint_on_complex64_matches_odeint(method, options):
    # torchdiffeq's TestSolverError::test_adjoint and TestDiscontinuities cases with complex64
    func = Linear(torch.complex64)
    y0 = torch.tensor(Y0, dtype=torch.complex64, requires_grad=True)
    t = torch.linspace(0.0, 1.5, 4)
    inputs = (y0, func.lam, func.w)
    ys = hn.odeint_adjoint(func, y0, t, method=method, options=options)
    assert ys.dtype == torch.complex64
    ours = torch.autograd.grad(loss(ys), inputs)
    direct = torch.autograd.grad(loss(hn.odeint(func, y0, t, method=method, options=options)), inputs)
    for mine, theirs in zip(ours, direct):
        assert mine.dtype == theirs.dtype
        # float32 rounding and (dopri5) the default tolerances rtol 1e-7, atol 1e-9 on gradients ~10
        torch.testing.assert_close(mine, theirs, rtol=2e-5, atol=2e-5)


def test_odeint_adjoint_on_a_tuple_of_complex_states_matches_odeint():
    lam = torch.tensor([LAM, 0.1 - 1.0j], dtype=torch.complex128, requires_grad=True)

    def field(t, y):
        a, b = y
        return lam[0] * a + b.sum(), lam[1] * b * a

    a0 = torch.tensor([1 + 1j], dtype=torch.complex128, requires_grad=True)
    b0 = torch.tensor([0.5 - 0.2j, 0.1j], dtype=torch.complex128, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    tol = dict(rtol=1e-11, atol=1e-12)

    def tuple_loss(ys):
        return sum((y.abs() ** 2).sum() + (C[0] * y).real.sum() for y in ys)

    ys = hn.odeint_adjoint(field, (a0, b0), t, adjoint_params=(lam,), **tol)
    ours = torch.autograd.grad(tuple_loss(ys), (a0, b0, lam))
    direct = torch.autograd.grad(tuple_loss(hn.odeint(field, (a0, b0), t, **tol)), (a0, b0, lam))
    for mine, theirs in zip(ours, direct):
        # two approximations of the same gradient at rtol 1e-11
        torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-8)


def test_odeint_adjoint_on_a_complex_state_agrees_with_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")

    class Complex(torch.nn.Module):
        # complex parameters only: torchdiffeq's adjoint refuses a real parameter of a complex state
        def __init__(self):
            super().__init__()
            self.lam = torch.nn.Parameter(torch.tensor([LAM, 0.1 - 1.0j], dtype=torch.complex128))

        def forward(self, t, y):
            return self.lam * y + 0.1 * torch.sin(t) * y**2

    func = Complex()
    y0 = torch.tensor(Y0, dtype=torch.complex128, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    tol = dict(rtol=1e-10, atol=1e-10)
    ours = torch.autograd.grad(loss(hn.odeint_adjoint(func, y0, t, **tol)), (y0, func.lam))
    theirs = torch.autograd.grad(loss(torchdiffeq.odeint_adjoint(func, y0, t, **tol)), (y0, func.lam))
    for mine, peer in zip(ours, theirs):
        # each adjoint's gradient is ~1e-9 from the exact one at rtol 1e-10
        torch.testing.assert_close(mine, peer, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(
    "solver, controller, sensitivity",
    [
        (hn.Reversible(hn.Midpoint()), hn.ConstantStepSize(0.01), hn.ReversibleAdjoint()),
        (hn.Dopri5(), hn.PIDController(rtol=1e-10, atol=1e-12), hn.DirectBackprop(checkpoints=2)),
    ],
    ids=["ReversibleAdjoint", "DirectBackprop(checkpoints=2)"],
)
def test_the_discrete_gradient_methods_on_a_complex_state_match_direct_backpropagation(solver, controller, sensitivity):
    # both differentiate the discrete solve: equal to backpropagation through the same steps
    func = Nonlinear()
    y0 = torch.tensor(Y0, dtype=torch.complex128, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    inputs = (y0, func.lam, func.w)
    ys = hn.solve(func, y0, t, solver=solver, controller=controller, sensitivity=sensitivity).ys
    ours = torch.autograd.grad(loss(ys), inputs)
    direct = torch.autograd.grad(loss(hn.solve(func, y0, t, solver=solver, controller=controller).ys), inputs)
    for mine, theirs in zip(ours, direct):
        # rounding; the checkpointed gradient is ~1e-9 from plain backpropagation at rtol 1e-10, for real states alike
        torch.testing.assert_close(mine, theirs, rtol=1e-7, atol=1e-7)
