"""How an adaptive ESDIRK solve whose Newton iteration cannot converge ends.

The simplified Newton iteration of an ESDIRK stage converges only for small enough steps on a strongly
nonlinear field. With a ``min_step`` above that, every attempt fails its iteration; the attempt reports
an infinite error, which the loop counted as a non-finite state ("The state became NaN or infinite")
although the state is finite. The failure names the Newton iteration and ``min_step`` instead, as a
multistep corrector's does (``tests/test_multistep_min_step.py``).
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn
from hybrid_node import SolverError, Status

F64 = torch.float64


def cubic_decay(t, y):
    return -1e3 * y**3


def solve(method: str, field=cubic_decay, t_end: float = 10.0, **options):
    options = {"adaptive": True, **options} if method == "trbdf2" else options
    return hn.odeint(
        field, torch.tensor([1.0], dtype=F64), torch.tensor([0.0, t_end], dtype=F64), method=method, options=options
    )


@pytest.mark.parametrize("method", ["kvaerno3", "kencarp4", "kvaerno5", "trbdf2"])
def test_newton_that_fails_at_min_step_is_named(method):
    # At h = 0.5 the stage solution of y' = -1e3 y^3 from y = 1 is ~0.15, where the field's slope is
    # ~20x smaller than the Jacobian at y = 1 that the simplified iteration keeps: it contracts by
    # ~0.97 per iteration and does not converge in 10 (it needs h ~1e-3 from there)
    with pytest.raises(SolverError, match=rf"Newton iteration of '{method}' did not converge at min_step=0.5") as info:
        solve(method, min_step=0.5)
    assert info.value.status is Status.NEWTON_FAILED
    assert "NaN" not in str(info.value)


def test_newton_failure_status_without_throw():
    sol = hn.solve(
        cubic_decay,
        torch.tensor([1.0], dtype=F64),
        torch.tensor([0.0, 10.0], dtype=F64),
        solver=hn.solvers.implicit.Kvaerno5(),
        controller=hn.PIDController(min_step=0.5),
        throw=False,
    )
    assert sol.status is Status.NEWTON_FAILED
    assert bool(torch.isnan(sol.ys[-1]).all())  # the output not reached


def test_the_same_solve_succeeds_without_min_step():
    # the failure above is min_step's: with smaller steps allowed Newton converges (y = 1/sqrt(1 + 2000 t))
    ys = hn.odeint(
        cubic_decay,
        torch.tensor([1.0], dtype=F64),
        torch.tensor([0.0, 10.0], dtype=F64),
        method="kvaerno5",
        rtol=1e-8,
        atol=1e-10,
    )
    exact = 1.0 / (1.0 + 2e3 * 10.0) ** 0.5
    assert abs(float(ys[-1, 0]) - exact) < 1e-6 * exact  # a relative 1e-6: 100 x rtol of global error


@pytest.mark.parametrize("method", ["kvaerno3", "kvaerno5"])
def test_a_field_that_turns_nan_is_still_reported_as_non_finite(method):
    def broken(t, y):  # NaN from t = 1 on
        return -y * (torch.nan if float(t) > 1 else 1.0)

    # min_step 0.01: Newton converges there on y' = -y, so the NaN is the cause
    with pytest.raises(SolverError) as info:
        solve(method, field=broken, t_end=3.0, min_step=0.01)
    assert info.value.status is Status.NONFINITE


@pytest.mark.parametrize(
    "method", ["implicit_euler", "trapezoid", "radauIIA3", "gl4", "kvaerno5", "kencarp4", "trbdf2"]
)
def test_a_fixed_step_whose_field_turns_nan_is_reported_as_non_finite(method):
    # A fixed step whose stages see a NaN field: the Newton iterate is NaN, and "did not converge, use a smaller
    # step_size" sent users after the step size; the failure names the non-finite iterate and the field
    def broken(t, y):  # NaN from t = 0.5 on
        return -y * (torch.nan if float(t) > 0.5 else 1.0)

    with pytest.raises(SolverError, match="Newton iterate of the implicit step became NaN") as info:
        hn.odeint(
            broken,
            torch.ones(2, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method=method,
            options={"step_size": 0.1},
        )
    assert info.value.status is Status.NONFINITE
