"""A vector field that turns NaN mid-solve, on the Julia backend, family by family (stand-in engine).

What upstream returns (OrdinaryDiffEq b211787; citations in tests/julia_standin.py, NAN_DT_ALGORITHMS
and NEWTON_ALGORITHMS):

- explicit Runge-Kutta and Rosenbrock methods, adaptive: the NaN reaches the error estimate, the
  PIController makes dt NaN and the solve ends with DtNaN at the last accepted step;
- Newton methods (KenCarp4, TRBDF2, FBDF, QNDF), adaptive: nlsolve! takes the NaN residual for divergence,
  the step fails before its error estimate and dt is halved, so the solve creeps up to the NaN and ends
  with Unstable, the state finite (a step-size underflow);
- TRBDF2 on fixed steps: the failed Newton step cannot shrink, and check_error ends the solve with
  ConvergenceFailure at the start of that step, the state finite;
- VCABM (IController under @fastmath): undefined upstream, the stand-in keeps the underflow.

The glue reports each with the status of its code and a cause that names the field's NaN beside the
Newton iteration where the code cannot tell them apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from julia_standin import StandinEngine, _fixed_step_holding, gauss_config

from hybrid_node._errors import SolverError, Status
from hybrid_node.julia import backend as jb

F64 = torch.float64
#: the field is -y up to this time and NaN after it
T_NAN = 0.5


def _nan_after_half(t, y):
    """-y up to t = 0.5, NaN after it (a field that leaves its domain, as log of a negative number)."""
    return torch.where(t > T_NAN, torch.full_like(y, float("nan")), -y)


def _nan_everywhere(t, y):
    return y * float("nan")


def _config(algorithm: str, dt: float | None = None) -> jb.SolveConfig:
    return gauss_config(algorithm, dt=dt)


def _forward(field, config: jb.SolveConfig):
    problem = jb.make_callbacks(field, (1, 1), (), F64, "cpu")
    return StandinEngine().forward(problem, np.ones((1, 1)), np.zeros(1), np.array([0.0, 1.0]), config)


def _solve_error(field, method: str, **options) -> SolverError:
    y0, t = torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(SolverError) as info:
        jb.solve_with_engine(StandinEngine(), field, y0, t, method=method, rtol=1e-8, atol=1e-10, options=options)
    return info.value


@pytest.mark.parametrize("algorithm", ["KenCarp4", "TRBDF2", "FBDF", "QNDF"])
def test_newton_methods_with_adaptive_steps_underflow_at_the_nan(algorithm):
    out = _forward(_nan_after_half, _config(algorithm))
    assert (out.retcode, out.state_finite) == ("Unstable", True)
    # the halvings bring the last accepted step up to the NaN: within a few hundred ulps of 0.5
    assert T_NAN - 1e-13 <= out.t_reached <= T_NAN
    assert jb.status_from_retcode(out.retcode, out.state_finite) is Status.STEP_UNDERFLOW


@pytest.mark.parametrize("method", ["kencarp4", "bdf", "qndf"])
def test_the_underflow_of_a_newton_method_names_the_fields_nan_as_a_cause(method):
    err = _solve_error(_nan_after_half, method)
    assert err.status is Status.STEP_UNDERFLOW and T_NAN - 1e-13 <= err.t <= T_NAN
    assert "halves its step after each failed Newton iteration" in str(err) and "NaN" in str(err)


@pytest.mark.parametrize("algorithm", ["Rodas5P", "Rosenbrock23"])
def test_rosenbrock_methods_end_with_dtnan_at_the_last_accepted_step(algorithm):
    # no Newton iteration: the NaN stage reaches the error estimate and the PIController's dt
    out = _forward(_nan_after_half, _config(algorithm))
    assert (out.retcode, out.state_finite) == ("DtNaN", True) and 0.0 < out.t_reached <= T_NAN
    err = _solve_error(_nan_after_half, algorithm.lower())
    assert err.status is Status.NONFINITE and "DtNaN" in str(err)


def test_vcabm_keeps_the_underflow_and_no_newton_cause():
    out = _forward(_nan_after_half, _config("VCABM"))
    assert (out.retcode, out.state_finite) == ("Unstable", True)
    assert jb.retcode_cause(out.retcode, "VCABM", out.state_finite) == ""


def test_trbdf2_on_fixed_steps_ends_with_convergence_failure_at_the_failed_steps_start():
    # steps of 0.1 from 0: the step from 0.5 to 0.6 meets the NaN, so the last accepted time is 0.5
    # (five steps of 0.1 add up to 0.5 to rounding)
    out = _forward(_nan_after_half, _config("TRBDF2", dt=0.1))
    assert (out.retcode, out.state_finite) == ("ConvergenceFailure", True)
    assert abs(out.t_reached - 0.5) <= 1e-15
    err = _solve_error(_nan_after_half, "trbdf2", step_size=0.1)
    assert err.status is Status.NEWTON_FAILED and abs(err.t - 0.5) <= 1e-15
    assert "Newton iteration failed on the fixed step" in str(err) and "NaN" in str(err)


def test_trbdf2_on_fixed_steps_with_a_nan_at_the_start_is_the_fields_nan():
    # the first step fails: ConvergenceFailure at t0 with u0, which the glue checks against the field
    out = _forward(_nan_everywhere, _config("TRBDF2", dt=0.1))
    assert (out.retcode, out.state_finite, out.t_reached) == ("ConvergenceFailure", True, 0.0)
    err = _solve_error(_nan_everywhere, "trbdf2", step_size=0.1)
    assert err.status is Status.NONFINITE and err.t == 0.0


def test_explicit_fixed_steps_accept_the_nan_state_and_stop_at_that_steps_end():
    # RK4 on fixed steps has no Newton iteration: the step from 0.5 to 0.6 is accepted with its NaN state,
    # integrator.t moves to 0.6 and unstable_check stops there
    out = _forward(_nan_after_half, _config("RK4", dt=0.1))
    assert (out.retcode, out.state_finite) == ("Unstable", False)
    assert abs(out.t_reached - 0.6) <= 1e-15
    err = _solve_error(_nan_after_half, "rk4", step_size=0.1)
    assert err.status is Status.NONFINITE and abs(err.t - 0.6) <= 1e-15


def test_a_fixed_step_newton_failure_is_placed_on_upstreams_grid():
    # the fixed grid restarts at every tstop: stops 0, 0.25, 1 with dt 0.1 put the step holding 0.5 at [0.45, 0.55]
    stops = np.array([0.0, 0.25, 1.0])
    np.testing.assert_allclose(_fixed_step_holding(stops, 0.1, 0.5000001), (0.45, 0.55), rtol=0, atol=1e-15)
    # the step before a tstop is shortened to land on it
    np.testing.assert_allclose(_fixed_step_holding(stops, 0.1, 0.21), (0.2, 0.25), rtol=0, atol=1e-15)
