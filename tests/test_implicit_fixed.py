"""Fixed-step implicit methods (DIRK and fully implicit Runge-Kutta): what a failed Newton iteration says."""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

F64 = torch.float64
# stiff (eigenvalues ~ -100.5, -1.5, -0.5) and coupling the rows of a column state y of shape (3, 1)
A = torch.tensor([[-100.0, 1.0, 0.0], [50.0, -2.0, 0.0], [0.0, 3.0, -0.5]], dtype=F64)


def coupled(t, y):
    return A @ y


@pytest.mark.parametrize("method", ["implicit_euler", "gl4", "radauIIA5"])
def test_newton_failure_on_coupled_samples_points_to_batch_dims(method):
    # The default batch_dims reads the rows of a (3, 1) state as independent samples, so the Jacobian
    # misses the coupling and Newton fails at dt = 0.05 (dt * 100 = 5); the error only said "use a smaller
    # step_size", though the step is fine once the Jacobian is right (batch_dims=0).
    y0 = torch.ones(3, 1, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(hn.SolverError, match=r"batch_dims': 0"):
        hn.odeint(coupled, y0, t, method=method, options={"step_size": 0.05})
    ys = hn.odeint(coupled, y0, t, method=method, options={"step_size": 0.05, "batch_dims": 0})
    exact = torch.linalg.matrix_exp(A) @ y0
    # implicit Euler's global error at dt = 0.05 on the slow modes (measured 3.5e-2); the others are below 1e-7
    assert float((ys[-1] - exact).abs().max()) < (0.05 if method == "implicit_euler" else 1e-6)


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
