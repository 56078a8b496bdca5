"""scipy_solver's step limit: ``max_num_steps`` as the torch solvers take it, on scipy's own solver objects.

scipy's ``solve_ivp`` has no step limit; on y' = y^2, y(0) = 1 over [0, 2] (exact 1/(1 - t), infinite at
t = 1) its LSODA reported zero-length steps as accepted forever. The references here are scipy itself:
its ``OdeSolver`` objects stepped directly (where a limited solve stops) and ``solve_ivp`` with
``t_eval`` (the states, which must agree bit for bit: the same solver, the same dense output calls).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.integrate
import torch

import hybrid_node as hn
from hybrid_node._errors import BLOWUP_GROWTH, SolverError, Status
from hybrid_node.controllers import PIDController
from hybrid_node.solvers.scipy_solver import SCIPY_COMPLEX_METHODS, SCIPY_METHODS, ScipySolver

F64 = torch.float64
RTOL, ATOL = 1e-6, 1e-9


def square(t, y):
    return y**2


def _blowup(method: str, steps: int | None, **options):
    """y' = y^2 from y(0) = 1 over [0, 2] by scipy_solver, with ``max_num_steps=steps`` (None: the default)."""
    options = {"solver": method, **options}
    if steps is not None:
        options["max_num_steps"] = steps
    y0 = torch.ones(1, dtype=F64)
    return hn.odeint(
        square, y0, torch.tensor([0.0, 2.0], dtype=F64), rtol=RTOL, atol=ATOL, method="scipy_solver", options=options
    )


def _stepped(method: str, fun, y0: np.ndarray, t0: float, t1: float, steps: int):
    """scipy's solver object of ``method`` after ``steps`` accepted steps (fewer where it stopped)."""
    stepper = getattr(scipy.integrate, method)(fun, t0, y0, t1, rtol=RTOL, atol=ATOL)
    for _ in range(steps):
        if stepper.status != "running":
            break
        stepper.step()
    return stepper


def _first_step_beyond(method: str, bound: float) -> int:
    """The number of accepted steps after which scipy's ``method`` has max|y| > ``bound`` on the blow-up."""
    stepper = getattr(scipy.integrate, method)(lambda t, y: y**2, 0.0, np.ones(1), 2.0, rtol=RTOL, atol=ATOL)
    n = 0
    while stepper.status == "running":
        stepper.step()
        n += 1
        if np.abs(stepper.y).max() > bound:
            return n
    raise AssertionError(f"{method} never exceeded {bound}")


@pytest.mark.parametrize("method", SCIPY_METHODS)
def test_blowup_stops_after_max_num_steps(method):
    # the solve stops where scipy's own solver is after 20 steps (t and state both), not a step later
    start = time.perf_counter()
    with pytest.raises(SolverError) as err:
        _blowup(method, 20)
    assert time.perf_counter() - start < 5  # LSODA without a limit ran for hours here
    ref = _stepped(method, lambda t, y: y**2, np.ones(1), 0.0, 2.0, 20)
    assert ref.status == "running"  # the 20 steps did not end the solve
    assert err.value.status is Status.MAX_STEPS
    assert err.value.t == ref.t < 1.0
    assert "(max_num_steps=20)" in str(err.value)
    assert "increasing `max_num_steps`" in str(err.value)  # no blow-up yet: the status's advice


@pytest.mark.parametrize("method", SCIPY_METHODS)
def test_max_steps_names_the_blowup(method):
    # the limit set at the first step whose state is past the blow-up growth: its time and max|y| are
    # named (from scipy's own solver at that step); one step fewer stays below it and gives the plain advice
    k = _first_step_beyond(method, BLOWUP_GROWTH)
    ref = _stepped(method, lambda t, y: y**2, np.ones(1), 0.0, 2.0, k)
    with pytest.raises(SolverError) as err:
        _blowup(method, k)
    assert err.value.status is Status.MAX_STEPS
    assert err.value.t == ref.t
    assert f"near t={ref.t:.6g} (max|y| = {float(np.abs(ref.y).max()):.3g}, from 1 at the start)" in str(err.value)
    with pytest.raises(SolverError) as before:
        _blowup(method, k - 1)
    assert "grows without bound" not in str(before.value)


def test_lsoda_blowup_stops_with_the_default_limit():
    # LSODA's step size underflows to 0 at the singularity; it then reported zero-length steps as
    # accepted (10^5 a second, about 6 hours for the default 2^31 - 1 steps): the first one ends the solve
    start = time.perf_counter()
    with pytest.raises(SolverError) as err:
        _blowup("LSODA", None)
    assert time.perf_counter() - start < 5
    assert err.value.status is Status.STEP_UNDERFLOW
    assert 0.99 < err.value.t <= 1.0  # the exact solution is infinite at 1
    assert "step size underflowed to 0" in str(err.value)
    assert "grows without bound" in str(err.value)


def test_lsoda_large_start_stops():
    # y' = -y^3 from 1e80: LSODA's first step underflowed to 0 and it stayed at t=0 (no blow-up to name)
    y0 = torch.tensor([1e80], dtype=F64)
    with pytest.raises(SolverError) as err:
        hn.odeint(lambda t, y: -(y**3), y0, torch.tensor([0.0, 1.0], dtype=F64), method="scipy_solver")
    assert err.value.status is Status.STEP_UNDERFLOW
    assert err.value.t == 0.0
    assert "step size underflowed to 0" in str(err.value)
    assert "grows without bound" not in str(err.value)


def _rotation(t, y):
    return torch.stack([y[1], -y[0] + 0.1 * torch.sin(t) * y[1]])


def _van_der_pol(t, y):
    return torch.stack([y[1], 2.0 * (1 - y[0] ** 2) * y[1] - y[0]])


def _numpy(f):
    """``f`` on numpy arrays, through the same torch operations scipy_solver evaluates (equal bits)."""
    return lambda t, y: f(torch.tensor(t, dtype=F64), torch.from_numpy(y)).numpy()


PROBLEMS = {
    "rotation": (_rotation, [1.0, 0.0], [0.0, 0.3, 1.0, 2.5, 2.6, 7.0]),
    "van der pol": (_van_der_pol, [2.0, 0.0], [0.0, 0.5, 3.0, 6.0]),
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("method", SCIPY_METHODS)
def test_states_equal_solve_ivp(method, problem):
    f, y0, ts = PROBLEMS[problem]
    atol = [1e-9, 1e-7]  # per component: solve_ivp takes the same array
    ours = hn.odeint(
        f,
        torch.tensor(y0, dtype=F64),
        torch.tensor(ts, dtype=F64),
        rtol=RTOL,
        atol=torch.tensor(atol, dtype=F64),
        method="scipy_solver",
        options={"solver": method},
    )
    ref = scipy.integrate.solve_ivp(
        _numpy(f), (ts[0], ts[-1]), np.array(y0), method=method, t_eval=ts, rtol=RTOL, atol=np.array(atol)
    )
    assert ref.status == 0
    assert torch.equal(ours, torch.from_numpy(ref.y.T))


@pytest.mark.parametrize("method", SCIPY_METHODS)
def test_reversed_time_matches_solve_ivp(method):
    # scipy_solver solves backwards in time as s = -t forwards with the field negated; scipy steps
    # with negative steps instead. The arithmetic differs only in signs, which round alike: equal bits
    f, y0, ts = PROBLEMS["rotation"]
    back = ts[::-1]
    ours = hn.odeint(
        f,
        torch.tensor(y0, dtype=F64),
        torch.tensor(back, dtype=F64),
        rtol=RTOL,
        atol=ATOL,
        method="scipy_solver",
        options={"solver": method},
    )
    ref = scipy.integrate.solve_ivp(
        _numpy(f), (back[0], back[-1]), np.array(y0), method=method, t_eval=back, rtol=RTOL, atol=ATOL
    )
    assert torch.equal(ours, torch.from_numpy(ref.y.T)), (ours - torch.from_numpy(ref.y.T)).abs().max()


@pytest.mark.parametrize("method", SCIPY_COMPLEX_METHODS)
def test_complex_states_equal_solve_ivp(method):
    def f(t, y):
        return (1j - 0.2) * y

    y0 = np.array([1.0 + 0.5j, -0.3j])
    ts = [0.0, 0.7, 2.0]
    ours = hn.odeint(
        f,
        torch.from_numpy(y0),
        torch.tensor(ts, dtype=F64),
        rtol=RTOL,
        atol=ATOL,
        method="scipy_solver",
        options={"solver": method},
    )
    ref = scipy.integrate.solve_ivp(
        lambda t, y: f(t, torch.from_numpy(y)).numpy(), (0.0, 2.0), y0, method=method, t_eval=ts, rtol=RTOL, atol=ATOL
    )
    assert torch.equal(ours, torch.from_numpy(ref.y.T))


@pytest.mark.parametrize("method", ["RK45", "LSODA"])
def test_the_limit_counts_accepted_steps(method):
    # a solve that needs n steps passes with max_num_steps=n and fails with n - 1
    f, y0, ts = PROBLEMS["rotation"]
    stepper = getattr(scipy.integrate, method)(_numpy(f), ts[0], np.array(y0), ts[-1], rtol=RTOL, atol=ATOL)
    n = 0
    while stepper.status == "running":
        stepper.step()
        n += 1
    assert stepper.status == "finished"

    def solve(steps):
        return hn.odeint(
            f,
            torch.tensor(y0, dtype=F64),
            torch.tensor(ts, dtype=F64),
            rtol=RTOL,
            atol=ATOL,
            method="scipy_solver",
            options={"solver": method, "max_num_steps": steps},
        )

    assert torch.isfinite(solve(n)).all()
    with pytest.raises(SolverError, match=rf"max_num_steps={n - 1}\)"):
        solve(n - 1)


def test_throw_false_keeps_the_outputs_before_the_limit():
    y0 = torch.ones(1, dtype=F64)
    t = torch.tensor([0.0, 0.5, 0.9, 2.0], dtype=F64)
    sol = hn.solve(square, y0, t, solver=ScipySolver("RK45", max_num_steps=25), throw=False)
    assert sol.status is Status.MAX_STEPS
    # 1/(1 - t) at 0, 0.5 and 0.9 (the solve is past 0.9 after 25 steps); rtol 1e-7 by default, 1e-5 leaves room
    # for the global error's growth near the singularity
    torch.testing.assert_close(sol.ys[:3, 0], 1 / (1 - t[:3]), rtol=1e-5, atol=0)
    assert torch.isnan(sol.ys[3]).all()


def test_the_default_limit_is_the_torch_solvers():
    assert ScipySolver().max_num_steps == PIDController().max_num_steps == 2**31 - 1


@pytest.mark.parametrize("value", [0, -3, True, 1.5, "10", None])
def test_max_num_steps_must_be_a_positive_int(value):
    with pytest.raises(ValueError, match=r"scipy_solver: max_num_steps must be a positive int"):
        hn.odeint(
            square,
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, 0.5], dtype=F64),
            method="scipy_solver",
            options={"max_num_steps": value},
        )


def _steps_to_finish(method: str) -> int:
    """The accepted steps scipy's ``method`` takes on the rotation problem (its own solver object)."""
    f, y0, ts = PROBLEMS["rotation"]
    stepper = getattr(scipy.integrate, method)(_numpy(f), ts[0], np.array(y0), ts[-1], rtol=RTOL, atol=ATOL)
    n = 0
    while stepper.status == "running":
        stepper.step()
        n += 1
    return n


@pytest.mark.parametrize(
    ("own", "controls"),
    # offsets from n, the steps the solve needs, of ScipySolver's and PIDController's max_num_steps (None: unset)
    [(None, -1), (-1, None), (5, -1), (-1, 5), (-2, -1), (-1, -2)],
)
def test_the_smaller_limit_counts(own, controls):
    # hn.solve's controller bounds the steps as it does for the torch solvers (it was ignored); with both
    # given the smaller one counts
    n = _steps_to_finish("RK45")
    f, y0, ts = PROBLEMS["rotation"]
    solver = ScipySolver("RK45") if own is None else ScipySolver("RK45", max_num_steps=n + own)
    extra = {} if controls is None else {"max_num_steps": n + controls}
    controller = PIDController(rtol=RTOL, atol=ATOL, **extra)
    limit = n + min(x for x in (own, controls) if x is not None)
    with pytest.raises(SolverError, match=rf"max_num_steps={limit}\)"):
        hn.solve(f, torch.tensor(y0, dtype=F64), torch.tensor(ts, dtype=F64), solver=solver, controller=controller)


def test_a_controller_limit_of_n_steps_lets_the_solve_finish():
    # the limit is on the steps the solve takes: n of them finish (the states are scipy's, tested above)
    n = _steps_to_finish("RK45")
    f, y0, ts = PROBLEMS["rotation"]
    controller = PIDController(rtol=RTOL, atol=ATOL, max_num_steps=n)
    sol = hn.solve(f, torch.tensor(y0, dtype=F64), torch.tensor(ts, dtype=F64), solver=ScipySolver("RK45"),
                   controller=controller)  # fmt: skip
    assert sol.status is Status.SUCCESS


def test_the_controllers_limit_bounds_the_backsolve_adjoint():
    # the forward solve of odeint_adjoint's backsolve is limited as the plain solve is
    n = _steps_to_finish("RK45")
    f, y0, ts = PROBLEMS["rotation"]
    y = torch.tensor(y0, dtype=F64, requires_grad=True)
    controller = PIDController(rtol=RTOL, atol=ATOL, max_num_steps=n - 1)
    with pytest.raises(SolverError, match=rf"max_num_steps={n - 1}\)"):
        hn.solve(
            f, y, torch.tensor(ts, dtype=F64), solver=ScipySolver("RK45"), controller=controller,
            sensitivity=hn.BacksolveAdjoint(), adjoint_params=(),
        )  # fmt: skip


def test_constant_step_size_is_refused():
    # it failed inside the scipy call with "Could not infer dtype of NoneType"
    with pytest.raises(ValueError, match=r"chooses its own steps and cannot take ConstantStepSize"):
        hn.solve(
            square, torch.ones(1, dtype=F64), torch.tensor([0.0, 0.5], dtype=F64), solver=ScipySolver(),
            controller=hn.ConstantStepSize(step_size=0.1),
        )  # fmt: skip
