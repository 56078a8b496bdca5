"""Edge cases of the gradient methods, each against an independent reference (direct backpropagation
through the same solve, or central finite differences)."""

from __future__ import annotations

import pytest
import torch
from _gradient_problems import Tanh

import hybrid_node as hn

F64 = torch.float64


#: the sensitivities that replay the forward steps (their own parameter handling), with their solver
REPLAYING = {
    "checkpointed": (hn.DirectBackprop(checkpoints=2), hn.Tsit5()),
    "reversible": (hn.ReversibleAdjoint(), hn.Reversible(hn.Tsit5())),
}


def _param_grad(sensitivity, solver, adjoint_params):
    """dL/dA with A given to the sensitivity as ``adjoint_params(module)``, the field a plain function."""
    field = Tanh()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)  # on the step grid: direct backprop takes the same steps
    sol = hn.solve(
        lambda tt, y: field(tt, y),
        y0,
        t,
        solver=solver,
        controller=hn.ConstantStepSize(step_size=0.05),
        sensitivity=sensitivity,
        adjoint_params=adjoint_params(field),
    )
    sol.ys.sum().backward()
    return field.a.grad


@pytest.mark.parametrize("name", list(REPLAYING))
def test_replaying_sensitivities_check_adjoint_params_as_the_adjoints_do(name):
    sensitivity, solver = REPLAYING[name]
    reference = _param_grad(sensitivity, solver, lambda m: (m.a,))
    # direct backpropagation through the same discrete solve: the replay equals it to rounding
    direct = _param_grad(hn.DirectBackprop(), solver, lambda m: (m.a,))
    torch.testing.assert_close(reference, direct, rtol=1e-12, atol=1e-12)  # same steps, rounding only
    # a list or a generator is a sequence of tensors like the tuple
    torch.testing.assert_close(_param_grad(sensitivity, solver, lambda m: [m.a]), reference, rtol=0, atol=0)
    torch.testing.assert_close(_param_grad(sensitivity, solver, lambda m: m.parameters()), reference, rtol=0, atol=0)
    # listed twice, A gets its gradient once (it was doubled)
    torch.testing.assert_close(_param_grad(sensitivity, solver, lambda m: (m.a, m.a)), reference, rtol=0, atol=0)
    # a bare tensor is refused (its rows were differentiated instead, and A silently got zero)
    with pytest.raises(TypeError, match="single tensor"):
        _param_grad(sensitivity, solver, lambda m: m.a)
    with pytest.raises(TypeError, match=r"adjoint_params\[1\] is a int"):
        _param_grad(sensitivity, solver, lambda m: (m.a, 3))
    # a dict would be iterated as its keys; the refusal says to pass its values (as sdeint_adjoint's)
    with pytest.raises(TypeError, match=r"got a dict; pass tuple\(adjoint_params.values\(\)\)"):
        _param_grad(sensitivity, solver, lambda m: {"a": m.a})


#: every sensitivity whose backward pass is computed without a graph, with its solver
FIRST_ORDER = {
    **REPLAYING,
    "backsolve": (hn.BacksolveAdjoint(), hn.Tsit5()),
    "interpolating": (hn.InterpolatingAdjoint(checkpoints=2), hn.Tsit5()),
}


@pytest.mark.parametrize("name", list(FIRST_ORDER))
def test_second_derivative_through_a_first_order_backward_raises(name):
    sensitivity, solver = FIRST_ORDER[name]
    field = Tanh()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)

    def loss(sens):
        sol = hn.solve(field, y0, t, solver=solver, controller=hn.ConstantStepSize(step_size=0.05), sensitivity=sens)
        # the second term gives the Hessian a path besides the solve: the solve's own part was silently lost
        return (sol.ys**2).sum() + (y0**2).sum()

    (first,) = torch.autograd.grad(loss(sensitivity), y0)
    (recorded,) = torch.autograd.grad(loss(sensitivity), y0, create_graph=True)
    torch.testing.assert_close(recorded, first, rtol=0, atol=0)  # the first derivative itself is unchanged
    # direct backprop's Hessian differs from the lone (y0**2) term's 2 I: a silent answer would be wrong
    (direct,) = torch.autograd.grad(loss(hn.DirectBackprop()), y0, create_graph=True)
    (hessian_row_sums,) = torch.autograd.grad(direct.sum(), y0)
    assert (hessian_row_sums - 2.0).abs().min() > 0.5
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(recorded.sum(), y0)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        recorded.sum().backward()


def test_second_derivative_through_the_time_gradient_raises():
    field = Tanh()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    ctrl = hn.PIDController(rtol=1e-10, atol=1e-12)

    def grads(t):
        sol = hn.solve(field, y0, t, solver=hn.Tsit5(), controller=ctrl)
        return torch.autograd.grad((sol.ys**2).sum(), [y0, t] if t.requires_grad else [y0], create_graph=True)

    t = torch.linspace(0.0, 1.0, 3, dtype=F64, requires_grad=True)
    g_y0, g_t = grads(t)
    with pytest.raises(RuntimeError, match="first-order only"):
        torch.autograd.grad(g_t.sum(), y0)
    # the Hessian in y0 does not pass through the time gradient: the same as with t detached
    (hessian,) = torch.autograd.grad(g_y0.sum(), y0)
    (g_y0_detached,) = grads(t.detach())
    (expected,) = torch.autograd.grad(g_y0_detached.sum(), y0)
    torch.testing.assert_close(hessian, expected, rtol=1e-12, atol=1e-12)  # same solve; sums in another order


class NaNDerivative(torch.nn.Module):
    """y' = a y with a finite value but a NaN derivative: the unused branch of ``where`` is sqrt(-y)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-0.5, dtype=F64))

    def forward(self, t, y):
        return torch.where(y > 100, torch.sqrt(-y), self.a * y)


@pytest.mark.parametrize("adjoint", [hn.BacksolveAdjoint(), hn.InterpolatingAdjoint()], ids=["backsolve", "interp"])
@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "adaptive"])
@pytest.mark.parametrize("t", [[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]], ids=["forwards", "backwards"])
def test_non_finite_backward_solve_raises(adjoint, fixed, t):
    field = NaNDerivative()
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    times = torch.tensor(t, dtype=F64)
    ctrl = hn.ConstantStepSize(step_size=0.1) if fixed else hn.PIDController(rtol=1e-6, atol=1e-8)
    sol = hn.solve(field, y0, times, solver=hn.Tsit5(), controller=ctrl, sensitivity=adjoint)
    assert bool(torch.isfinite(sol.ys).all())  # the forward solve is fine
    # fixed steps returned NaN gradients without a word (the adaptive solve already raised)
    with pytest.raises(hn.SolverError, match=r"backward \(adjoint\) solve") as info:
        sol.ys.sum().backward()
    assert info.value.status is hn.Status.NONFINITE
    # reported in the user's time, inside the solve's span; fixed steps at the first output it failed
    assert min(t) <= info.value.t <= max(t)
    if fixed:
        assert info.value.t == 0.5


def test_adjoint_settings_take_per_component_tolerances_and_refuse_bad_ones():
    field = Tanh()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    ctrl = hn.PIDController(rtol=1e-10, atol=1e-12)

    def grad(sensitivity):
        sol = hn.solve(field, y0, t, solver=hn.Tsit5(), controller=ctrl, sensitivity=sensitivity)
        return torch.autograd.grad((sol.ys**2).sum(), [y0, field.a])

    # a tensor tolerance, one entry per state component, as the forward PIDController takes
    tol = torch.tensor([1e-10, 1e-11], dtype=F64)
    for sensitivity in (hn.BacksolveAdjoint(rtol=tol, atol=tol), hn.InterpolatingAdjoint(rtol=tol, atol=tol)):
        for got, want in zip(grad(sensitivity), grad(hn.DirectBackprop())):
            torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-8)  # both solves to ~1e-10 tolerances
    with pytest.raises(ValueError, match="rtol must be non-negative"):
        hn.BacksolveAdjoint(rtol=torch.tensor([1e-6, -1.0]))
    with pytest.raises(ValueError, match="atol must be non-negative"):
        hn.BacksolveAdjoint(atol=float("nan"))
    with pytest.raises(TypeError, match="rtol must be a non-negative float"):
        hn.BacksolveAdjoint(rtol="1e-6")
    with pytest.raises(ValueError, match="positive int"):
        hn.InterpolatingAdjoint(checkpoints=True)  # as DirectBackprop(checkpoints=True)


@pytest.mark.parametrize("name", list(REPLAYING))
def test_replaying_sensitivities_honour_throw_and_check_outputs(name):
    sensitivity, solver = REPLAYING[name]
    # a field that turns NaN after t = 0.5: the fixed grid has no step decision to notice
    nan_later = lambda t, y: torch.where(t > 0.5, torch.full_like(y, torch.nan), -y)  # noqa: E731
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    y0 = torch.ones(2, dtype=F64)
    fixed = hn.ConstantStepSize(step_size=0.1)
    with pytest.raises(hn.SolverError, match="NaN or infinite"):  # it returned the NaN output
        hn.solve(nan_later, y0, t, solver=solver, controller=fixed, sensitivity=sensitivity, adjoint_params=())
    sol = hn.solve(
        nan_later, y0, t, solver=solver, controller=fixed, sensitivity=sensitivity, adjoint_params=(), throw=False
    )
    assert sol.status is hn.Status.NONFINITE
    # throw=False on a failed adaptive solve: the status and NaN where not reached, as direct backprop
    # gives (it raised whatever throw said), and the reached outputs keep their gradients
    field = Tanh()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 50.0], dtype=F64)
    ctrl = hn.PIDController(rtol=1e-8, atol=1e-10, max_num_steps=40)

    def solve(sens):
        return hn.solve(field, y0, t, solver=solver, controller=ctrl, sensitivity=sens, throw=False, step_t=t)

    sol, direct = solve(sensitivity), solve(hn.DirectBackprop())
    assert sol.status is direct.status is hn.Status.MAX_STEPS
    assert bool(sol.ys[-1].isnan().all()) and bool(sol.ys[1].isfinite().all())
    torch.testing.assert_close(sol.ys[1], direct.ys[1], rtol=0, atol=0)  # the same steps up to t = 1
    got = torch.autograd.grad(sol.ys[1].sum(), [y0, field.a])
    want = torch.autograd.grad(direct.ys[1].sum(), [y0, field.a])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)  # the discrete gradient, rounding only


@pytest.mark.parametrize("name", list(REPLAYING))
def test_replaying_sensitivities_take_t_that_requires_grad_without_a_graph(name):
    sensitivity, solver = REPLAYING[name]
    field = Tanh()
    t = torch.linspace(0.0, 1.0, 3, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    ctrl = hn.ConstantStepSize(step_size=0.05)
    with torch.no_grad():  # evaluation: nothing is differentiated, so nothing to refuse (it raised)
        ys = hn.solve(field, y0, t, solver=solver, controller=ctrl, sensitivity=sensitivity).ys
        expected = hn.solve(field, y0, t.detach(), solver=solver, controller=ctrl).ys
    torch.testing.assert_close(ys, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="gradients for t"):
        hn.solve(field, y0, t, solver=solver, controller=ctrl, sensitivity=sensitivity)


@pytest.mark.parametrize("adjoint", [hn.BacksolveAdjoint(), hn.InterpolatingAdjoint()], ids=["backsolve", "interp"])
def test_adjoint_of_a_single_output_time_is_the_identity(adjoint):
    # t = [t0]: the solution is y0 itself, so dL/dy0 = dL/dys[0], nothing for t0 or the parameters
    # (torchdiffeq's odeint_adjoint gives the same); the cotangent was added twice and t0 got -<a, f>
    field = Tanh()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.tensor([0.3], dtype=F64, requires_grad=True)
    sol = hn.solve(field, y0, t, sensitivity=adjoint)
    g_y0, g_a, g_t = torch.autograd.grad((sol.ys**2).sum(), [y0, field.a, t])
    torch.testing.assert_close(g_y0, 2 * y0.detach(), rtol=0, atol=0)
    assert not g_a.any() and not g_t.any()


@pytest.mark.parametrize(
    "sensitivity, solver",
    [
        (hn.BacksolveAdjoint(), hn.RK4()),
        (hn.ReversibleAdjoint(), hn.Reversible(hn.RK4())),
        (hn.DirectBackprop(checkpoints=2), hn.RK4()),
    ],
    ids=["backsolve", "reversible", "checkpointed"],
)
def test_saved_tensors_do_not_grow_with_the_steps(sensitivity, solver):
    """The O(1)-memory claim, counted: what autograd saves for backward is the same for 10 and 250 steps
    (direct backprop saves every stage of every step)."""

    def saved(step_size: float, sens) -> tuple[int, int]:
        field = Tanh()
        y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
        count, size = 0, 0

        def pack(x):
            nonlocal count, size
            count, size = count + 1, size + x.numel() * x.element_size()
            return x

        t = torch.tensor([0.0, 1.0], dtype=F64)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            sol = hn.solve(
                field, y0, t, solver=solver, controller=hn.ConstantStepSize(step_size=step_size), sensitivity=sens
            )
        sol.ys.sum().backward()  # and the backward pass runs
        return count, size

    assert saved(0.1, sensitivity) == saved(0.004, sensitivity)
    few, many = saved(0.1, hn.DirectBackprop()), saved(0.004, hn.DirectBackprop())
    assert many[0] > 10 * few[0]  # 25 times the steps; the count can tell: direct backprop's grows with the steps


@pytest.mark.parametrize("sensitivity", [hn.BacksolveAdjoint(), hn.InterpolatingAdjoint(checkpoints=2)])
def test_second_derivative_through_an_event_solve_with_an_adjoint_raises(sensitivity):
    # The event solve's stretches (sensitivity/event_adjoint.py) gave the y0 Hessian of this loss
    # as 4 I, the lone (y0**2) term's and the solve's first-order part, against direct backprop's
    field = Tanh()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    event = hn.Event(lambda t, y: torch.stack([t - 0.7]), on_event=lambda t, y: 0.5 * y)

    def gradient(sens):
        sol = hn.solve(field, y0, t, event=event, controller=hn.PIDController(rtol=1e-9, atol=1e-11), sensitivity=sens)
        (g,) = torch.autograd.grad((sol.ys**2).sum() + (y0**2).sum(), y0, create_graph=True)
        return g

    (direct_row_sums,) = torch.autograd.grad(gradient(hn.DirectBackprop()).sum(), y0)
    assert (direct_row_sums - 4.0).abs().min() > 0.5  # a silent wrong answer would not pass for it
    recorded = gradient(sensitivity)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(recorded.sum(), y0)
