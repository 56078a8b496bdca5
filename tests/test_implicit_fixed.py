"""Fixed-step implicit methods (DIRK and fully implicit Runge-Kutta): what a failed Newton iteration says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hybrid_node as hn
from hybrid_node.solvers.implicit import IMPLICIT_METHODS

F64 = torch.float64
# stiff (eigenvalues ~ -100.5, -1.5, -0.5) and coupling the rows of a column state y of shape (3, 1)
A = torch.tensor([[-100.0, 1.0, 0.0], [50.0, -2.0, 0.0], [0.0, 3.0, -0.5]], dtype=F64)


def coupled(t, y):
    return A @ y


@pytest.mark.parametrize("method", ["implicit_euler", "gl4", "radauIIA5"])
def test_newton_failure_on_coupled_samples_points_to_batch_dims(method):
    # The default batch_dims reads the rows of a (3, 1) state as independent samples, so the Jacobian
    # misses the coupling and Newton fails at dt = 0.1 (dt * 100 = 10); the error only said "use a smaller
    # step_size", though the step is fine once the Jacobian is right (batch_dims=0). (At dt = 0.05 the
    # Jacobian refreshes of a failed fixed step let gl4 and radauIIA5 converge even without the coupling.)
    y0 = torch.ones(3, 1, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(hn.SolverError, match=r"batch_dims': 0"):
        hn.odeint(coupled, y0, t, method=method, options={"step_size": 0.1})
    ys = hn.odeint(coupled, y0, t, method=method, options={"step_size": 0.1, "batch_dims": 0})
    exact = torch.linalg.matrix_exp(A) @ y0
    # the global errors at dt = 0.1 on the slow modes: measured 6.8e-2 (implicit Euler), 6.7e-6 (gl4), 1.5e-8
    assert float((ys[-1] - exact).abs().max()) < (0.1 if method == "implicit_euler" else 1e-5)


def test_newton_failure_on_a_single_system_keeps_the_plain_hint():
    # y' = y^2 from 1 with one step of 10: the implicit Euler equation y1 = 1 + 10 y1^2 has no real root
    with pytest.raises(hn.SolverError, match=r"use a smaller step_size\)") as err:
        hn.odeint(
            lambda t, y: y**2,
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, 10.0], dtype=F64),
            method="implicit_euler",
            options={"step_size": 10.0},
        )
    assert "batch_dims" not in str(err.value)
    assert "fixed steps: at the given step" in str(err.value)  # not only "even at the minimum step size"


def _tableau(method):
    """(A, b, c) of a fixed-step implicit method as dense numpy arrays (DIRK rows padded with zeros)."""
    tab = IMPLICIT_METHODS[method][0]().tableau
    s = len(tab.c)
    a = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        a[i, : len(row)] = row
    return a, np.array(tab.b), np.array(tab.c), tab.order


def _discrete_linear_solution(method, lam, y0, t1, h):
    """The method's own result on y' = lam(t) y, whose stage equations are linear: (I - h A L) Y = y 1."""
    a, b, c, _ = _tableau(method)
    y, t = y0, 0.0
    for _ in range(round(t1 / h)):
        lams = np.array([lam(t + ci * h) for ci in c])
        stages = np.linalg.solve(np.eye(len(c)) - h * a * lams[None, :], np.full(len(c), y))
        y, t = y + h * float(b @ (lams * stages)), t + h
    return y


@pytest.mark.parametrize("method", ["implicit_euler", "trapezoid", "sdirk2", "trbdf2", "kvaerno3"])
def test_fixed_steps_do_not_accept_newton_on_a_rate_carried_over(method):
    # y' = lam(t) y with lam constant up to t = 0.5, then falling: the first steps' Jacobian is exact, so
    # Newton's rate there is 0, and the next stage accepted its first iterate on that carried-over rate
    # (eta = eps^0.8) with the old Jacobian: the result left the method's own solution by 9e-4 relative
    # (implicit_euler), 1e-3 (trapezoid), 8e-5 (sdirk2), 7e-5 (trbdf2), with no error estimate to notice.
    lam = lambda t: -(1.0 + 4.0 * max(t - 0.5, 0.0))  # noqa: E731
    y0 = torch.ones(1, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    y1 = hn.odeint(lambda t, y: lam(float(t)) * y, y0, t, method=method, options={"step_size": 0.1})[-1, 0]
    # Newton's test asks for 1e-9 relative (with kappa = 0.01); measured agreement 1e-11 over the 10 steps
    assert float(y1) == pytest.approx(_discrete_linear_solution(method, lam, 1.0, 1.0, 0.1), rel=1e-9, abs=0)


@pytest.mark.parametrize(
    "method",
    [
        "implicit_euler",
        "trapezoid",
        "sdirk2",
        "trbdf2",
        "kvaerno3",
        "kvaerno5",
        "implicit_midpoint",
        "gl4",
        "radauIIA5",
    ],
)
def test_newton_converges_on_large_fixed_steps_of_a_time_dependent_problem(method):
    # y' = -(1 + t) y over [0, 1]: mild, but J changes along each step. Newton kept the Jacobian of the
    # step's start with 10 iterations and failed ("Newton did not converge") at step 1 for every method
    # and at 0.5 for the DIRK methods (at 0.125 for implicit_euler, whose Jacobian was carried over).
    lam = lambda t: -(1.0 + t)  # noqa: E731
    y0 = torch.ones(1, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    exact = math.exp(-1.5)
    errors = []
    for h in (1.0, 0.5, 0.25, 0.125):
        y1 = float(hn.odeint(lambda t, y: lam(t) * y, y0, t, method=method, options={"step_size": h})[-1, 0])
        # Newton converged to the method's own solution: its test asks for 1e-9 relative (with kappa = 0.01)
        assert y1 == pytest.approx(_discrete_linear_solution(method, lam, 1.0, 1.0, h), rel=1e-9, abs=0)
        errors.append(abs(y1 - exact))
    # and that solution converges at the method's order (h = 0.25 -> 0.125 is in the asymptotic range:
    # measured within 0.1 of the order for every method)
    observed = math.log2(errors[-2] / errors[-1])
    assert abs(observed - _tableau(method)[3]) < 0.3


@pytest.mark.parametrize("jacobian", ["jacrev", "loop", "fd"])
def test_implicit_euler_one_large_step_of_a_nonlinear_field(jacobian):
    # y' = -y^3 + sin t with one step of 1 (not stiff; the root of y1 = y0 + h f(1, y1) is unique since
    # the right side is decreasing in y1): Newton with the Jacobian at (0, y0) failed at t=0.
    def f(t, y):
        return -(y**3) + torch.sin(t)

    y0 = torch.tensor([[0.5, -1.0], [1.5, 0.3]], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    y1 = hn.odeint(f, y0, t, method="implicit_euler", options={"step_size": 1.0, "jacobian": jacobian})[-1]
    # the implicit Euler equation holds to the Newton test's 1e-9 relative (components of size ~1)
    torch.testing.assert_close(y1, y0 + f(t[1], y1), rtol=0, atol=1e-9)
