"""Gradients across the method x sensitivity matrix on the torch backend, against the analytic gradient.

The problem is y' = A y with A a parameter, L = sum_i <w_i, y(t_i)> over several output times; its
exact gradient comes from autograd through ``torch.linalg.matrix_exp`` (y(t) = exp(A (t - t0)) y0), which
shares nothing with the solvers. Every valid combination is compared with it for dL/dy0, dL/dA and
dL/dt (where the sensitivity offers it), with increasing and decreasing t; invalid combinations must be
refused with a clear error before the field is evaluated.
"""

from __future__ import annotations

import pytest
import torch
from _gradient_problems import central_difference, graph_nodes

import hybrid_node as hn
from hybrid_node._registry import build_solver

A0 = torch.tensor([[-0.5, 1.0], [-1.2, -0.3]], dtype=torch.float64)
Y0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
W = torch.tensor([[0.3, -0.7], [1.1, 0.4], [-0.6, 0.9]], dtype=torch.float64)
TIMES = {
    "increasing": torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64),
    "decreasing": torch.tensor([1.0, 0.6, 0.2, -0.1], dtype=torch.float64),
}
RTOL = 1e-9
# a relative gradient error of 1e-6 at rtol = atol = 1e-9: the adaptive solves' global error is a few
# hundred times the tolerance at worst (BDF, ESDIRK: 2e-7 measured), the fixed-step grids below are chosen
# for errors under 1e-8; a wrong gradient (a missed output time, a wrong sign of t) is of order 1e-2 to 1
TOL = 1e-6

# method -> options; fixed-step methods get a step small enough for their order (errors < 1e-8)
METHODS = {
    "dopri5": None,
    "tsit5": None,
    "dopri8": None,
    "bosh3": None,
    "rk4": {"step_size": 0.01},
    "rodas5p": None,
    "kvaerno5": None,
    "gl6": {"step_size": 0.05},
    "radauIIA5": {"step_size": 0.02},
    "explicit_adams": {"step_size": 0.005},
    "adams": None,
    "bdf": None,
    "lsoda": None,
    "auto": None,
}
ONE_STEP_EXPLICIT = {"dopri5", "tsit5", "dopri8", "bosh3", "rk4"}
SENSITIVITIES = {
    "direct": hn.DirectBackprop(),
    "direct-checkpoints": hn.DirectBackprop(checkpoints=3),
    "backsolve": hn.BacksolveAdjoint(),
    "interpolating": hn.InterpolatingAdjoint(),
    "interpolating-checkpoints": hn.InterpolatingAdjoint(checkpoints=3),
    "reversible": hn.ReversibleAdjoint(),
}
# the sensitivities that differentiate t as well
WITH_T = {"direct", "backsolve", "interpolating", "interpolating-checkpoints"}


class Linear(torch.nn.Module):
    """y' = A y with A a parameter."""

    def __init__(self, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.A = torch.nn.Parameter(A0.clone().to(dtype))
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return y @ self.A.T


def analytic(ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dL/dy0, dL/dA, dL/dt of L = sum_i <w_i, exp(A (t_i - t_0)) y0> over t_1, t_2, ..."""
    a = A0.clone().requires_grad_()
    y0 = Y0.clone().requires_grad_()
    t = ts.clone().requires_grad_()
    ys = torch.stack([torch.linalg.matrix_exp(a * (ti - t[0])) @ y0 for ti in t[1:]])
    grads = torch.autograd.grad((W * ys).sum(), (y0, a, t))
    return grads[0], grads[1], grads[2]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def solve_grads(method: str, sensitivity: hn.AbstractSensitivity, ts: torch.Tensor, need_t: bool):
    func = Linear()
    y0 = Y0.clone().requires_grad_()
    t = ts.clone().requires_grad_(need_t)
    solver, controller, _ = build_solver(method, METHODS[method], RTOL, RTOL)
    if isinstance(sensitivity, hn.ReversibleAdjoint):
        solver = hn.Reversible(solver)
    sol = hn.solve(func, y0, t, solver=solver, controller=controller, sensitivity=sensitivity)
    loss = (W * sol.ys[1:]).sum()
    inputs = (y0, func.A, t) if need_t else (y0, func.A)
    return torch.autograd.grad(loss, inputs)


def valid(method: str, sensitivity: str) -> bool:
    if sensitivity in ("direct-checkpoints", "reversible"):
        return method in ONE_STEP_EXPLICIT
    return True


# bosh3's checkpointed and reversible variants repeat its many low-order steps
SLOW = {("bosh3", "direct-checkpoints"), ("bosh3", "reversible")}
CASES = [
    pytest.param(m, s, id=f"{m}-{s}", marks=[pytest.mark.slow] if (m, s) in SLOW else [])
    for m in METHODS
    for s in SENSITIVITIES
    if valid(m, s) and not (m in ("bdf", "lsoda", "kvaerno5", "radauIIA5") and s == "interpolating-checkpoints")
]


@pytest.mark.parametrize("direction", sorted(TIMES))
@pytest.mark.parametrize(("method", "sensitivity"), CASES)
def test_gradient_matches_analytic(method: str, sensitivity: str, direction: str) -> None:
    ts = TIMES[direction]
    need_t = sensitivity in WITH_T
    grads = solve_grads(method, SENSITIVITIES[sensitivity], ts, need_t)
    want = analytic(ts)
    for name, got, ref in zip(("y0", "A", "t"), grads, want):
        assert relative_error(got, ref) < TOL, name


# the fixed-step implicit methods -> their order; their gradients converge at that order in the step
FIXED_IMPLICIT = {
    "ros3p": 3,
    "trbdf2": 2,
    "implicit_euler": 1,
    "sdirk2": 2,
    "trapezoid": 2,
    "implicit_midpoint": 2,
    "gl4": 4,
    "radauIIA3": 3,
}


@pytest.mark.parametrize(
    "method",
    ["adams", "bdf", "lsoda", "explicit_adams", "kvaerno5", "gl6", "rodas5p", "auto", *FIXED_IMPLICIT],
)
def test_checkpointed_direct_refuses_multistep_and_implicit(method: str) -> None:
    """DirectBackprop(checkpoints=k) restarts each step from a stored state: a multistep or implicit
    method must be refused before the solve ("adams" ran restarted at order 1 and gave that solve's
    gradient: 3.6e-3 off at rtol 1e-5 where the plain direct gradient is 6e-5 off)."""
    func = Linear()
    options = {"step_size": 0.1} if method in FIXED_IMPLICIT else METHODS[method]
    solver, controller, _ = build_solver(method, options, RTOL, RTOL)
    with pytest.raises(ValueError, match="explicit one-step"):
        hn.solve(
            func,
            Y0,
            TIMES["increasing"],
            solver=solver,
            controller=controller,
            sensitivity=hn.DirectBackprop(checkpoints=3),
        )
    assert func.calls == 0


@pytest.mark.parametrize("sensitivity", [hn.GaussAdjoint(), hn.QuadratureAdjoint()], ids=["gauss", "quadrature"])
def test_julia_only_adjoints_refused_before_solve(sensitivity: hn.AbstractSensitivity) -> None:
    func = Linear()
    with pytest.raises(hn.BackendError, match="Julia backend"):
        hn.solve(func, Y0, TIMES["increasing"], sensitivity=sensitivity)
    assert func.calls == 0


def test_reversible_adjoint_needs_reversible_solver() -> None:
    func = Linear()
    with pytest.raises(ValueError, match="Reversible"):
        hn.solve(func, Y0, TIMES["increasing"], solver=hn.Tsit5(), sensitivity=hn.ReversibleAdjoint())
    assert func.calls == 0


@pytest.mark.parametrize(
    "sensitivity", [hn.DirectBackprop(checkpoints=3), hn.ReversibleAdjoint()], ids=["direct-checkpoints", "reversible"]
)
def test_t_gradient_refused_where_not_offered(sensitivity: hn.AbstractSensitivity) -> None:
    func = Linear()
    solver = hn.Reversible(hn.Tsit5()) if isinstance(sensitivity, hn.ReversibleAdjoint) else hn.Tsit5()
    with pytest.raises(ValueError, match="t"):
        hn.solve(func, Y0, TIMES["increasing"].clone().requires_grad_(), solver=solver, sensitivity=sensitivity)
    assert func.calls == 0


def test_scipy_solver_by_adjoint() -> None:
    """scipy_solver runs outside autograd: its gradients come from the adjoint (odeint_adjoint)."""
    ts = TIMES["decreasing"]
    func = Linear()
    y0 = Y0.clone().requires_grad_()
    t = ts.clone().requires_grad_()
    ys = hn.odeint_adjoint(func, y0, t, rtol=RTOL, atol=RTOL, method="scipy_solver", options={"solver": "DOP853"})
    grads = torch.autograd.grad((W * ys[1:]).sum(), (y0, func.A, t))
    for name, got, ref in zip(("y0", "A", "t"), grads, analytic(ts)):
        assert relative_error(got, ref) < TOL, name


@pytest.mark.parametrize("adjoint_method", ["rk4", "tsit5", "bdf", "gl6", "scipy_solver"])
@pytest.mark.parametrize("method", ["dopri5", "rk4", "bdf"])
def test_odeint_adjoint_other_backward_method(method: str, adjoint_method: str) -> None:
    if method == adjoint_method:
        pytest.skip("same method")
    options = {"rk4": {"step_size": 0.01}, "gl6": {"step_size": 0.05}, "scipy_solver": {"solver": "DOP853"}}
    ts = TIMES["increasing"]
    func = Linear()
    y0 = Y0.clone().requires_grad_()
    t = ts.clone().requires_grad_()
    ys = hn.odeint_adjoint(
        func,
        y0,
        t,
        rtol=RTOL,
        atol=RTOL,
        method=method,
        options=options.get(method),
        adjoint_method=adjoint_method,
        adjoint_options=options.get(adjoint_method, {}),
    )
    grads = torch.autograd.grad((W * ys[1:]).sum(), (y0, func.A, t))
    for name, got, ref in zip(("y0", "A", "t"), grads, analytic(ts)):
        assert relative_error(got, ref) < TOL, name


@pytest.mark.parametrize("sensitivity", ["direct", "backsolve", "interpolating"])
def test_unused_and_subset_params_match_torchdiffeq(sensitivity: str) -> None:
    """A parameter the field never uses: None by direct backprop, zeros by the adjoint (torchdiffeq's
    behaviour); with adjoint_params a subset, the others get None."""
    torchdiffeq = pytest.importorskip("torchdiffeq")

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.A = torch.nn.Parameter(A0.clone())
            self.unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))

        def forward(self, t, y):
            return y @ self.A.T

    def grads(lib, subset: bool):
        func = Field()
        kwargs = {"adjoint_params": (func.unused,)} if subset else {}
        if sensitivity == "direct":
            ys = lib.odeint(func, Y0, TIMES["increasing"], rtol=RTOL, atol=RTOL)
        elif lib is hn:
            ys = hn.solve(
                func,
                Y0,
                TIMES["increasing"],
                sensitivity=SENSITIVITIES[sensitivity],
                controller=hn.PIDController(rtol=RTOL, atol=RTOL),
                **kwargs,
            ).ys
        else:
            ys = lib.odeint_adjoint(func, Y0, TIMES["increasing"], rtol=RTOL, atol=RTOL, **kwargs)
        (W * ys[1:]).sum().backward()
        return func.A.grad, func.unused.grad

    for subset in (False, True) if sensitivity != "direct" else (False,):
        (ours_a, ours_unused), (theirs_a, theirs_unused) = grads(hn, subset), grads(torchdiffeq, subset)
        assert (ours_a is None) == (theirs_a is None)
        assert (ours_unused is None) == (theirs_unused is None)
        if theirs_unused is not None:
            assert torch.equal(ours_unused, theirs_unused)


def fixed_step_grads(method: str, sensitivity: str, ts: torch.Tensor, step: float) -> tuple[torch.Tensor, ...]:
    """dL/dy0, dL/dA, dL/dt of a fixed-step solve with the given step."""
    func = Linear()
    y0 = Y0.clone().requires_grad_()
    t = ts.clone().requires_grad_()
    solver, controller, _ = build_solver(method, {"step_size": step}, RTOL, RTOL)
    sol = hn.solve(func, y0, t, solver=solver, controller=controller, sensitivity=SENSITIVITIES[sensitivity])
    return torch.autograd.grad((W * sol.ys[1:]).sum(), (y0, func.A, t))


@pytest.mark.parametrize("direction", sorted(TIMES))
@pytest.mark.parametrize("sensitivity", ["direct", "backsolve", "interpolating", "interpolating-checkpoints"])
@pytest.mark.parametrize("method", sorted(FIXED_IMPLICIT))
def test_fixed_implicit_gradient_converges_at_method_order(method: str, sensitivity: str, direction: str) -> None:
    """At a fixed step the gradient is that of the discrete solution (direct) or of the discretised
    adjoint, both O(h^p) from the analytic one: halving the step must divide each error by ~2^p. A
    missed output time, a wrong sign or a dropped term leaves an O(1) error that does not shrink."""
    ts = TIMES[direction]
    want = analytic(ts)
    coarse, fine = (fixed_step_grads(method, sensitivity, ts, step) for step in (0.1, 0.05))
    order = FIXED_IMPLICIT[method]
    for name, g1, g2, ref in zip(("y0", "A", "t"), coarse, fine, want):
        e1, e2 = relative_error(g1, ref), relative_error(g2, ref)
        # 2.0 +- 0.3 etc.: the measured log2 ratios at these steps are within 0.1 of the order (the
        # leading error term dominates), a wrong order is off by >= 1
        assert abs(torch.log2(torch.tensor(e1 / e2)).item() - order) < 0.3, (name, e1, e2)


def rosenbrock_loss(a: torch.Tensor, method: str) -> torch.Tensor:
    solver, controller, _ = build_solver(method, {"step_size": 0.1} if method == "ros3p" else None, RTOL, RTOL)
    sol = hn.solve(lambda t, y: y @ a.T, Y0, TIMES["increasing"], solver=solver, controller=controller)
    return (W * sol.ys[1:]).sum()


def test_rosenbrock_direct_gradient_is_the_discrete_one_without_differentiating_the_lu() -> None:
    """A Rosenbrock step depends on J, so the exact gradient of the discrete solution needs dJ/dA: the
    stage solves are differentiated as solves (d(M^-1 b) = -M^-1 dM M^-1 b), not through lu_factor's
    and lu_solve's backward, whose tril/triu unpacking cost 1.3-3.7 s per backward (rodas5p, 2 states,
    two busy cores) against 0.03 s."""
    a = A0.clone().requires_grad_()
    loss = rosenbrock_loss(a, "ros3p")
    (got,) = torch.autograd.grad(loss, a)
    # central differences of the same fixed-step solve: truncation ~eps^2 = 1e-12, rounding ~1e-16/eps
    # = 1e-10; freezing J would leave a difference of order h^2 ~ 1e-2 relative
    fd = central_difference(lambda x: rosenbrock_loss(x, "ros3p"), a, eps=1e-6)
    assert relative_error(got, fd) < 1e-8

    names = {type(node).__name__ for node in graph_nodes(loss)}
    assert not {"LinalgLuFactorExBackward0", "LinalgLuSolveBackward0"} & names, names


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_rosenbrock_stage_solves_twice_differentiable(dtype: torch.dtype) -> None:
    """The stage solves' backward is itself differentiable (higher derivatives of a fixed-step ros3p solve).

    ``autonomous=True`` (the field does not read t) because gradgradcheck differentiates the first
    derivative by central differences with eps = 1e-6: by default a Rosenbrock step takes df/dt by a
    forward difference of step delta = 1.5e-8, whose two evaluations receive cotangents +-w/delta, so
    the first derivative carries rounding of ~eps_mach/delta relative (5e-12 absolute here) that
    the check turns into ~5e-6, over its atol of 1e-5 for 10 of 16 seeds in complex128 and 4 of 16 in
    float64 (which seed a run drew depended on the tests before it). The analytic second derivative is
    right either way (tests/test_complex_implicit.py compares it with the step written out by hand);
    without the difference quotient the first derivative is smooth and every seed passes.
    """
    a = A0.clone().to(dtype).requires_grad_()
    y0 = Y0.clone().to(dtype).requires_grad_()
    t = torch.tensor([0.0, 0.2], dtype=torch.float64)
    solver, controller = hn.ROS3P(autonomous=True), hn.ConstantStepSize(0.1)

    def ys(a: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
        return hn.solve(lambda t, y: y @ a.T, y0, t, solver=solver, controller=controller).ys

    assert torch.autograd.gradcheck(ys, (a, y0))
    with torch.random.fork_rng():
        for seed in range(3):  # gradgradcheck's random cotangents: seeds 1 and 2 failed with df/dt by difference
            torch.manual_seed(seed)
            assert torch.autograd.gradgradcheck(ys, (a, y0))
