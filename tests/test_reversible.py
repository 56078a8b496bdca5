"""Algebraically reversible solvers and the reversible adjoint (McCallum & Foster 2024)."""

from __future__ import annotations

import math

import pytest
import torch

import hybrid_node as hn

F64 = torch.float64


class MLPField(torch.nn.Module):
    def __init__(self, dim: int = 3, hidden: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, dim))
        self.to(F64)

    def forward(self, t, y):
        return self.net(y)


def _gradient(field, y0, t, controller, sensitivity, step_t=()):
    sol = hn.solve(
        field, y0, t, solver=hn.Reversible(hn.Tsit5()), controller=controller, sensitivity=sensitivity, step_t=step_t
    )
    loss = (sol.ys**2).sum() + sol.ys[-1].sin().sum()
    grads = torch.autograd.grad(loss, (y0, *field.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]), sol


def test_step_inverse_reconstructs_the_start_to_rounding():
    field = MLPField()
    solver = hn.Reversible(hn.Tsit5(), coupling=0.999)  # rounding grows like coupling^-n backwards
    f = lambda t, y: field(t, y)  # noqa: E731
    y = torch.randn(4, 3, dtype=F64)
    state = solver.init(f, 0.0, y)
    y0, z0 = y, state.z
    t, dt, n = 0.0, 0.05, 200
    with torch.no_grad():
        for _ in range(n):
            step = solver.step(f, t, y, state, dt)
            state = solver.next_state(f, t + dt, step)
            t, y = t + dt, step.y1
        z = state.z
        for _ in range(n):
            y, z = solver.inverse(f, t, y, z, dt)
            t -= dt
    assert float((y - y0).abs().max()) < 1e-11 and float((z - z0).abs().max()) < 1e-11


@pytest.mark.parametrize("adaptive", [False, True])
def test_reversible_adjoint_equals_direct_backprop(adaptive):
    field = MLPField()
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)  # on the fixed grid: the direct solve steps there too
    ctrl = hn.PIDController(rtol=1e-6, atol=1e-8) if adaptive else hn.ConstantStepSize(step_size=0.05)
    step_t = t if adaptive else ()  # the adaptive direct solve then lands on the outputs, as the adjoint does
    direct, sol_d = _gradient(field, y0, t, ctrl, hn.DirectBackprop(), step_t)
    reversible, sol_r = _gradient(field, y0, t, ctrl, hn.ReversibleAdjoint())
    assert sol_d.stats.n_accepted == sol_r.stats.n_accepted
    torch.testing.assert_close(sol_r.ys, sol_d.ys, rtol=1e-13, atol=1e-13)
    assert float((reversible - direct).norm() / direct.norm()) < 1e-10


def test_order_is_the_base_methods():
    y0 = torch.tensor([1.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    errors = []
    for n in (10, 20, 40):
        sol = hn.solve(
            lambda t, y: -y * (1 + t),
            y0,
            t,
            solver=hn.Reversible(hn.RK4Classic(), coupling=0.999),
            controller=hn.ConstantStepSize(step_size=1 / n),
        )
        errors.append(abs(float(sol.ys[-1, 0]) - math.exp(-1.5)))
    slope = math.log(errors[0] / errors[-1]) / math.log(4)
    assert 3.7 < slope < 4.3, errors


def test_odeint_adjoint_reversible_spelling_and_errors():
    field = MLPField()
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5], dtype=F64)
    ys = hn.odeint_adjoint(
        field, y0, t, method="rk4", options={"step_size": 0.05}, adjoint_options={"reversible": True}
    )
    ys.sum().backward()
    ref = y0.detach().clone().requires_grad_(True)
    direct = hn.solve(field, ref, t, solver=hn.Reversible(hn.RK4()), controller=hn.ConstantStepSize(step_size=0.05)).ys
    direct.sum().backward()
    torch.testing.assert_close(y0.grad, ref.grad, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="coupling"):
        hn.Reversible(hn.Tsit5(), coupling=0.0)
    with pytest.raises(ValueError, match="explicit one-state method"):
        hn.Reversible(hn.ImplicitEuler())
    with pytest.raises(ValueError, match="needs solver=hn.Reversible"):
        hn.solve(field, y0, t, solver=hn.Tsit5(), sensitivity=hn.ReversibleAdjoint())
    with pytest.raises(ValueError, match="Unknown adjoint_options"):
        hn.odeint_adjoint(field, y0, t, adjoint_options={"reversible": True, "norm2": 1})


@pytest.mark.parametrize("coupling,stable", [(0.999, False), (math.exp(-0.04), True)])
def test_stability_on_a_contracting_field_needs_the_coupling_matched_to_the_contraction(coupling, stable):
    """y' = -4 y, h = 0.01: the coupled mode grows by about λ e^{kh} per step (docs/reversible.md)."""
    sol = hn.solve(
        lambda t, y: -4.0 * y,
        torch.ones(1, dtype=F64),
        torch.tensor([0.0, 20.0], dtype=F64),
        solver=hn.Reversible(hn.RK4(), coupling=coupling),
        controller=hn.ConstantStepSize(step_size=0.01),
    )
    end = float(sol.ys[-1].abs())
    assert (end < 1e-15) if stable else (end > 1.0)  # matched: the coupled mode neither grows nor decays


def test_plain_function_needs_adjoint_params_and_then_its_closure_weights_get_direct_backprops_gradient():
    k = torch.tensor(1.3, dtype=F64, requires_grad=True)

    def decay(t, y):  # a closure over k: the solve cannot find k by itself
        return -k * y + 0.2 * torch.sin(y)

    def gradient(sensitivity, **kwargs):
        y0 = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
        sol = hn.solve(
            decay,
            y0,
            torch.tensor([0.0, 1.0], dtype=F64),
            solver=hn.Reversible(hn.RK4()),
            controller=hn.ConstantStepSize(step_size=0.1),
            sensitivity=sensitivity,
            **kwargs,
        )
        return torch.autograd.grad(sol.ys[-1].sum(), (y0, k), allow_unused=True)

    # k's gradient was silently None (the other adjoints and odeint_adjoint refuse a plain function)
    with pytest.raises(ValueError, match="adjoint_params"):
        gradient(hn.ReversibleAdjoint())
    direct = gradient(hn.DirectBackprop())
    reversible = gradient(hn.ReversibleAdjoint(), adjoint_params=(k,))
    for r, d in zip(reversible, direct):
        torch.testing.assert_close(r, d, rtol=1e-12, atol=1e-12)  # the same discrete solve: rounding only


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams", "fixed_adams", "adams"])
def test_multistep_bases_are_refused(method):
    # each reversible increment restarts the base method from one state, so a multistep history never
    # builds up: fixed-step Adams silently ran its Runge-Kutta starter, 'adams' failed with a TypeError
    with pytest.raises(ValueError, match="multistep"):
        hn.Reversible(hn.METHODS[method].solver())
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    options = {} if method == "adams" else {"step_size": 0.1}
    with pytest.raises(ValueError, match="multistep"):
        hn.odeint_adjoint(
            lambda t, y: -y,
            y0,
            torch.tensor([0.0, 1.0], dtype=F64),
            method=method,
            options=options,
            adjoint_params=(),
            adjoint_options={"reversible": True},
        )


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_reversible_adjoint_equals_direct_backprop_in_float32_backward_in_time(dtype):
    field = MLPField().to(dtype)
    y0 = torch.randn(4, 3, dtype=dtype, requires_grad=True)
    t = torch.tensor([1.0, 0.5, -1.0], dtype=dtype)  # decreasing, on the step grid
    grads = []
    for sensitivity in (hn.DirectBackprop(), hn.ReversibleAdjoint()):
        sol = hn.solve(
            field,
            y0,
            t,
            solver=hn.Reversible(hn.RK4()),
            controller=hn.ConstantStepSize(step_size=0.05),
            sensitivity=sensitivity,
        )
        g = torch.autograd.grad((sol.ys**2).sum(), (y0, *field.parameters()))
        grads.append(torch.cat([x.reshape(-1) for x in g]))
    error = float((grads[1] - grads[0]).norm() / grads[0].norm())
    # rounding of 40 reconstructed steps: measured 2e-7 in float32 and 4e-16 in float64
    assert error < (1e-5 if dtype == torch.float32 else 1e-12), error


def test_a_failed_solve_without_throw_gives_direct_backprops_finite_gradient():
    # y' = k y^2 blows up at t = 1: the adaptive solve stops short of t = 2 (throw=False, NaN there). The
    # backward pass started from the blown-up final state, whose inverse steps gave inf - inf: the whole
    # gradient was NaN, though the outputs reached (t = 0, 0.5) are finite and have a finite gradient.
    k = torch.tensor(1.0, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    grads = []
    for sensitivity, step_t in ((hn.DirectBackprop(), ts), (hn.ReversibleAdjoint(), ())):
        y0 = torch.ones(2, 1, dtype=F64, requires_grad=True)
        sol = hn.solve(
            lambda t, y: k * y**2,
            y0,
            ts,
            solver=hn.Reversible(hn.Tsit5()),
            controller=hn.PIDController(rtol=1e-6, atol=1e-8),
            sensitivity=sensitivity,
            adjoint_params=(k,) if isinstance(sensitivity, hn.ReversibleAdjoint) else None,
            step_t=step_t,  # the direct solve then takes the adjoint's steps
            throw=False,
        )
        assert sol.status != hn.Status.SUCCESS and bool(sol.ys[-1].isnan().all())
        grads.append(torch.autograd.grad(torch.nan_to_num(sol.ys).sum(), (y0, k)))
    for d, r in zip(*grads):
        torch.testing.assert_close(r, d, rtol=1e-10, atol=0.0)  # the same discrete solve: rounding only
    # and the analytic sensitivities of y(0) + y(0.5) with y = y0 / (1 - k y0 t): 1 + 4 per sample, and
    # 2 per sample for k (the solve's own error at rtol 1e-6 near the blow-up: measured 2e-5 relative)
    torch.testing.assert_close(grads[1][0], torch.full((2, 1), 5.0, dtype=F64), rtol=1e-3, atol=0.0)
    torch.testing.assert_close(grads[1][1], torch.tensor(4.0, dtype=F64), rtol=1e-3, atol=0.0)


def test_float32_output_times_on_the_step_grid_take_no_sliver_step():
    # 0.3 in float32 is 0.30000001192..., 1.2e-8 from the float64 grid point 6 * 0.05: the replay took it
    # for a separate end point, an extra sliver step (21 for the direct solve's 20), which a reversible
    # step does not leave as it found (y moves to λ y + (1 - λ) z)
    w = torch.tensor([[0.3, -1.2], [0.8, 0.1]], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([[0.5, -0.3]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float32)
    steps = {}
    for name, sensitivity in (("direct", hn.DirectBackprop()), ("reversible", hn.ReversibleAdjoint())):
        sol = hn.solve(
            lambda t, y: torch.tanh(y @ w),
            y0,
            t,
            solver=hn.Reversible(hn.Tsit5(), coupling=0.999),
            controller=hn.ConstantStepSize(step_size=0.05),
            sensitivity=sensitivity,
            adjoint_params=(w,),
        )
        steps[name] = sol.stats.n_accepted
    assert steps == {"direct": 20, "reversible": 20}


def test_per_sample_control_and_the_julia_backend_name_the_reversible_wrapper():
    y0, t = torch.ones(3, 2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="got 'reversible_tsit5' \\(a reversible wrapper steps a pair"):
        hn.solve(lambda t, y: -y, y0, t, solver=hn.Reversible(hn.Tsit5()), controller=hn.PIDController(per_sample=True))
    # refused before Julia is looked for: the same message whether or not it is installed
    with pytest.raises(hn.BackendError, match="hn.Reversible .* torch backend only"):
        hn.solve(lambda t, y: -y, y0, t, solver=hn.Reversible(hn.Tsit5()), backend="julia")


def _decay_to_40(coupling: float, sensitivity: str, throw: bool) -> hn.Solution:
    ts = torch.linspace(0.0, 40.0, 81, dtype=F64)
    reversible = sensitivity == "reversible"
    return hn.solve(
        lambda t, y: -y,
        torch.ones(2, dtype=F64, requires_grad=True),
        ts,
        solver=hn.Reversible(hn.Tsit5(), coupling=coupling),
        controller=hn.PIDController(rtol=1e-6, atol=1e-9),
        sensitivity=hn.ReversibleAdjoint() if reversible else hn.DirectBackprop(),
        adjoint_params=() if reversible else None,
        step_t=() if reversible else ts,  # steps end on the outputs in both: no linear dense output
        throw=throw,
    )


@pytest.mark.parametrize("sensitivity", ["direct", "reversible"])
@pytest.mark.parametrize("coupling", [1.0, 0.999, 0.9])
def test_a_solve_the_coupled_mode_takes_over_fails_instead_of_returning_garbage(coupling, sensitivity):
    # y' = -y: the coupled mode grows by about lambda e^{h} per step while y decays, and the base
    # method's estimate, relative to y, never saw it: every step was accepted and y(40) came out 5.5e9
    # (lambda = 0.999), 6.4e9 (1.0) and 4e2 (0.9) against e^{-40} = 4e-18, with status SUCCESS
    sol = _decay_to_40(coupling, sensitivity, throw=False)
    assert sol.status == hn.Status.STEP_UNDERFLOW
    reached = torch.isfinite(sol.ys[:, 0])
    ts = torch.linspace(0.0, 40.0, 81, dtype=F64)[reached]
    assert 4.0 < float(ts[-1]) < 40.0  # measured: the last output reached is t = 5.5 (lambda >= 0.999) to 7.5
    # each step starts with ||y - z|| / ||y|| below 3000 rtol, and the coupled mode is about half of it:
    # measured 1.3e-3 (the base method's own error at rtol 1e-6 is far below)
    relative = (sol.ys[reached, 0].detach() - torch.exp(-ts)).abs() / torch.exp(-ts)
    assert float(relative.max()) < 3e-3
    with pytest.raises(hn.SolverError, match="step size fell below") as failed:
        _decay_to_40(coupling, sensitivity, throw=True)
    # the message says why and what to change (the forward loop's and the reversible adjoint's record alike)
    assert "the coupled mode of 'reversible_tsit5' outgrew the tolerance" in str(failed.value)
    assert "PIDController(max_step=-ln(coupling) / |mu|)" in str(failed.value)


@pytest.mark.parametrize("coupling", [1.0, 0.999, 0.9])
@pytest.mark.parametrize(
    "problem,dtype,rtol,atol",
    [
        ("pendulum_near_top", F64, 1e-6, 1e-9),  # the largest defect measured in an accurate solve: 600 rtol
        ("kepler", F64, 1e-9, 1e-12),  # eccentric orbit: 290 rtol
        ("oscillator", torch.float32, 1e-5, 1e-7),
        ("pendulum", torch.float32, 1e-5, 1e-7),
    ],
)
def test_the_coupled_mode_check_passes_accurate_solves(problem, dtype, rtol, atol, coupling):
    integrate = pytest.importorskip("scipy.integrate")
    fields = {
        "pendulum": (lambda t, y: torch.stack([y[1], -torch.sin(y[0])]), [2.5, 0.0], 30.0),
        "pendulum_near_top": (lambda t, y: torch.stack([y[1], -torch.sin(y[0])]), [3.0, 0.0], 30.0),
        "kepler": (lambda t, y: torch.cat([y[2:], -y[:2] / (y[:2] ** 2).sum() ** 1.5]), [0.5, 0.0, 0.0, 1.6], 20.0),
        "oscillator": (lambda t, y: torch.stack([y[1], -y[0]]), [1.0, 0.0], 50.0),
    }
    field, y0, end = fields[problem]
    ts = torch.linspace(0.0, end, 5, dtype=F64)
    numpy_field = lambda t, y: field(t, torch.from_numpy(y)).numpy()  # noqa: E731
    exact = integrate.solve_ivp(numpy_field, (0.0, end), y0, method="DOP853", rtol=1e-13, atol=1e-15, t_eval=ts.numpy())
    errors = {}
    for solver in (hn.Tsit5(), hn.Reversible(hn.Tsit5(), coupling=coupling)):
        sol = hn.solve(
            field,
            torch.tensor(y0, dtype=dtype),
            ts.to(dtype),
            solver=solver,
            controller=hn.PIDController(rtol=rtol, atol=atol),
            step_t=ts.to(dtype),
        )
        assert sol.status == hn.Status.SUCCESS
        errors[solver.name] = float((sol.ys.double() - torch.from_numpy(exact.y.T)).abs().max())
    # as accurate as the plain method (measured 0.25x to 2.6x its error): the check did not fire, and
    # the coupled mode it lets pass stays below the plain method's own global error
    assert errors["reversible_tsit5"] < 5 * errors["tsit5"], errors


def test_the_failure_detail_names_the_coupled_mode_and_what_to_change():
    solver = hn.Reversible(hn.Tsit5(), coupling=0.9)
    f = lambda t, y: -y  # noqa: E731
    y = torch.ones(3, dtype=F64)
    # z = -y: the pair wholly in the coupled mode (relative defect 2), against z = y, where it is absent
    apart = solver.step(f, 0.0, y, hn.solvers.reversible.ReversibleState(-y, f(0.0, -y)), 0.1)
    together = solver.step(f, 0.0, y, solver.init(f, 0.0, y), 0.1)
    detail = solver.failure_detail(apart)
    assert detail is not None and "||y - z|| / ||y|| = 2" in detail and "max_step=0.105 / |mu|" in detail
    assert "coupling=1.0 never damps it" in hn.Reversible(hn.Tsit5(), coupling=1.0).failure_detail(apart)
    assert solver.failure_detail(together) is None
    # the estimate past the limit is |y| itself: an error ratio of about 1 / rtol
    torch.testing.assert_close(apart.error, y)
