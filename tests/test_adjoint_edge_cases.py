"""Edge cases of the adjoint sensitivities (BacksolveAdjoint, InterpolatingAdjoint), each against an
independent reference: direct backpropagation, an adjoint solve of the part that succeeded, or
torchdiffeq's odeint_adjoint on the same inputs."""

from __future__ import annotations

import pytest
import torch
from _gradient_problems import Tanh

import hybrid_node as hn

F64 = torch.float64

ADJOINTS = {
    "backsolve": hn.BacksolveAdjoint(),
    "interpolating": hn.InterpolatingAdjoint(),
    "interpolating-3": hn.InterpolatingAdjoint(checkpoints=3),
}


@pytest.mark.parametrize("name", list(ADJOINTS))
def test_failed_forward_solve_with_throw_false_keeps_the_gradients_of_the_reached_outputs(name):
    """A solve that runs out of steps with ``throw=False`` returns NaN where it did not arrive; the
    outputs it reached keep their gradients, as direct backpropagation and the replaying
    sensitivities give them, instead of a backward solve started from the NaN padding."""
    sensitivity = ADJOINTS[name]
    field = Tanh()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0, 50.0], dtype=F64)  # 40 steps reach t = 1 but not t = 50
    ctrl = hn.PIDController(rtol=1e-9, atol=1e-11, max_num_steps=40)
    lands = (0.5, 1.0)  # steps end at the reached outputs, so the solve over t[:3] takes the same ones
    sol = hn.solve(field, y0, t, controller=ctrl, sensitivity=sensitivity, throw=False, step_t=lands)
    assert sol.status is hn.Status.MAX_STEPS
    assert bool(sol.ys[-1].isnan().all()) and bool(sol.ys[:3].isfinite().all())

    def loss(ys):
        return (ys[1] ** 2).sum() + ys[2].sum()

    got = torch.autograd.grad(loss(sol.ys), [y0, field.a])
    # the same adjoint over the times the failed solve reached: it takes the same forward steps (the
    # three checkpoint segments of [0, 50] end past t = 1, so there the checkpoints are the outputs)
    same = hn.InterpolatingAdjoint() if name == "interpolating-3" else sensitivity
    part = hn.solve(field, y0, t[:3], controller=ctrl, sensitivity=same, step_t=lands)
    want = torch.autograd.grad(loss(part.ys), [y0, field.a])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)  # the same two solves: rounding only
    direct = hn.solve(field, y0, t, controller=ctrl, throw=False, step_t=lands)
    exact = torch.autograd.grad(loss(direct.ys), [y0, field.a])
    for g, w in zip(got, exact):
        # continuous adjoint vs discrete gradient: both within the tolerances (1e-9) of the true one
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["backsolve", "interpolating"])
def test_failed_forward_solve_gives_time_gradients_of_the_reached_outputs(name):
    """dL/dt of a failed solve: the reached outputs' as a successful solve of them gives, zero for
    the rest (their NaN padding does not move with t)."""
    sensitivity = ADJOINTS[name]
    field = Tanh()
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0, 50.0], dtype=F64, requires_grad=True)
    ctrl = hn.PIDController(rtol=1e-9, atol=1e-11, max_num_steps=40)
    lands = (0.5, 1.0)  # as above: the same steps as the solve over t[:3]
    sol = hn.solve(field, y0, t, controller=ctrl, sensitivity=sensitivity, throw=False, step_t=lands)
    (got,) = torch.autograd.grad(sol.ys[:3].pow(2).sum(), [t])
    t3 = t.detach()[:3].clone().requires_grad_(True)
    part = hn.solve(field, y0, t3, controller=ctrl, sensitivity=sensitivity, step_t=lands)
    (want,) = torch.autograd.grad(part.ys.pow(2).sum(), [t3])
    torch.testing.assert_close(got[:3], want, rtol=1e-12, atol=1e-12)  # the same solves: rounding only
    assert float(got[3]) == 0.0


@pytest.mark.parametrize("name", list(ADJOINTS))
def test_event_solve_that_finds_no_event_with_throw_false_has_gradients(name):
    """An event solve that reaches event_t_end without the event (``throw=False``, status NO_EVENT)
    returns the state there; its gradients (y0, parameters and t) are those of a plain solve, as
    direct backpropagation gives them."""
    sensitivity = ADJOINTS[name]
    field = Tanh()
    ctrl = hn.PIDController(rtol=1e-10, atol=1e-12)

    def never(tt, y):
        return y[..., 0] - 100.0  # |y| stays below 2

    def grads(sens):
        y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
        t = torch.tensor([0.0, 2.0], dtype=F64, requires_grad=True)
        kw = dict(controller=ctrl, sensitivity=sens, event_fn=never, event_t_end=2.0, throw=False)
        sol = hn.solve(field, y0, t, **kw)
        assert sol.status is hn.Status.NO_EVENT
        return torch.autograd.grad(sol.ys[-1].pow(2).sum(), [y0, field.a, t])

    for g, w in zip(grads(sensitivity), grads(hn.DirectBackprop())):
        # continuous adjoint vs discrete gradient: both within the tolerances (1e-10) of the true one
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9)


class Oscillator(torch.nn.Module):
    """A damped oscillator on a tuple state (x, v): x' = v, v' = -k x - c v."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(2.0, dtype=F64))
        self.c = torch.nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, t, state):
        x, v = state
        return v, -self.k * x - self.c * v


@pytest.mark.parametrize("name", ["backsolve", "interpolating"])
def test_tensor_tolerances_of_the_adjoint_on_a_tuple_state(name):
    """A tensor ``rtol``/``atol`` of the adjoint settings is read as the forward PIDController reads it
    on a tuple state: one entry per state tensor, or one per element of the joined tensors."""
    field = Oscillator()
    t = torch.linspace(0.0, 2.0, 4, dtype=F64)
    ctrl = hn.PIDController(rtol=1e-10, atol=1e-12)
    settings = {"backsolve": hn.BacksolveAdjoint, "interpolating": hn.InterpolatingAdjoint}[name]

    def grads(sensitivity):
        x0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
        v0 = torch.tensor([0.0, 0.2], dtype=F64, requires_grad=True)
        xs, vs = hn.solve(field, (x0, v0), t, controller=ctrl, sensitivity=sensitivity).ys
        return torch.autograd.grad((xs**2).sum() + vs[-1].sum(), [x0, v0, field.k, field.c])

    want = grads(hn.DirectBackprop())
    per_tensor = torch.tensor([1e-10, 1e-11], dtype=F64)  # x, v
    per_element = torch.tensor([1e-10, 1e-10, 1e-11, 1e-11], dtype=F64)
    for tol in (per_tensor, per_element):
        for g, w in zip(grads(settings(rtol=tol, atol=tol * 1e-2)), want):
            torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9)  # both solves to ~1e-10 tolerances
    with pytest.raises(ValueError, match="rtol"):
        grads(settings(rtol=torch.full((3,), 1e-8, dtype=F64)))  # neither reading fits


class Forced(torch.nn.Module):
    """y' = sin(t) A y + 0.1 y^2: time-dependent and nonlinear, so coarse steps show in the gradient."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=F64))

    def forward(self, t, y):
        return torch.sin(t) * y @ self.a.T + 0.1 * y**2


@pytest.mark.parametrize(
    "method, options, tol",
    [
        # fixed steps with the outputs on the step grid: torchdiffeq's backward grid is the same
        ("rk4", {"step_size": 0.1}, 1e-12),
        ("euler", {"step_size": 0.05}, 1e-12),
        # adaptive: torchdiffeq restarts the backward solve at each output, ours carries on (rtol 1e-6)
        ("dopri5", {"first_step": 0.3}, 1e-5),
    ],
)
def test_adjoint_method_equal_to_the_forward_one_keeps_the_forward_options(method, options, tol):
    """torchdiffeq's rule: with ``adjoint_method == method`` and no ``adjoint_options`` the backward
    solve takes the forward ``options``, so naming the method changes nothing. The backward solve
    had dropped them (rk4 and euler then took one step per output interval)."""
    field = Forced()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)

    def grads(lib, **adjoint):
        y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
        kw = dict(rtol=1e-6, atol=1e-8, method=method, options=dict(options), **adjoint)
        ys = lib.odeint_adjoint(field, y0, t, **kw)
        return torch.autograd.grad((ys**2).sum(), [y0, field.a])

    got = grads(hn, adjoint_method=method)
    for g, w in zip(got, grads(hn)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)  # the same backward solve
    torchdiffeq = pytest.importorskip("torchdiffeq")
    for g, w in zip(got, grads(torchdiffeq, adjoint_method=method)):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


class _VanDerPol(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, t, y):
        return torch.stack([y[1], self.mu * (1 - y[0] ** 2) * y[1] - y[0]])


@pytest.mark.parametrize("solver", [hn.VariableAdams, hn.BDF], ids=["adams", "bdf"])
def test_a_multistep_backward_solve_plans_its_steps_with_the_adjoint_tolerances(solver):
    # the backward solve by the forward's method kept the forward's tolerances for the method's own step
    # and order choice, while the loop accepted steps by the adjoint's: after a forward at 1e-6, adams
    # took 22,347 backward evaluations for adjoint tolerances of 1e-9 and bdf 254,252
    f = _VanDerPol()
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.0, 10.0, 11, dtype=torch.float64)

    def backward_cost(forward_tol: float) -> tuple[int, torch.Tensor]:
        ctrl = hn.PIDController(rtol=forward_tol, atol=forward_tol)
        adjoint = hn.BacksolveAdjoint(rtol=1e-9, atol=1e-9)
        sol = hn.solve(f, y0, t, solver=solver(), controller=ctrl, sensitivity=adjoint)
        (grad,) = torch.autograd.grad(sol.ys[-1].sum(), f.mu)
        return sol.stats.nfe_backward, grad

    loose, grad_loose = backward_cost(1e-6)
    tight, grad_tight = backward_cost(1e-9)
    # the same backward tolerances plan the same backward steps (measured: adams 1014 and bdf 2256 after
    # either forward; the forwards' solutions differ by their tolerances, hence the slack)
    assert loose < 2 * tight, (loose, tight)
    torch.testing.assert_close(grad_loose, grad_tight, rtol=1e-4, atol=0.0)  # measured 1e-5 apart
