"""``min_step`` with the variable-order multistep methods (adams, lsoda): how a solve that cannot go on ends.

Their corrector (functional iteration for Adams) converges only for small enough steps. With a
``min_step`` above that, every attempt fails its corrector; the attempt reports an infinite error,
which the loop counted as a non-finite state ("The state became NaN or infinite") although the state
is finite. The failure names the corrector and ``min_step`` instead.
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn
from hybrid_node import SolverError, Status

F64 = torch.float64


def oscillator(t, y):
    return torch.stack([y[1], -y[0]])


@pytest.mark.parametrize("method", ["adams", "lsoda"])
def test_corrector_that_fails_at_min_step_is_named(method):
    # |h J| = 0.3 at min_step: Adams' functional iteration does not settle there (it needs ~0.03)
    with pytest.raises(SolverError, match=r"corrector of '\w+' did not converge at min_step=0.3") as info:
        hn.odeint(
            oscillator,
            torch.tensor([1.0, 0.0], dtype=F64),
            torch.tensor([0.0, 10.0], dtype=F64),
            method=method,
            options={"min_step": 0.3},
        )
    assert info.value.status is Status.NEWTON_FAILED
    assert "NaN" not in str(info.value)


def test_corrector_failure_status_without_throw():
    sol = hn.solve(
        oscillator,
        torch.tensor([1.0, 0.0], dtype=F64),
        torch.tensor([0.0, 10.0], dtype=F64),
        solver=hn.Nordsieck(),
        controller=hn.PIDController(min_step=0.3),
        throw=False,
    )
    assert sol.status is Status.NEWTON_FAILED
    assert bool(torch.isnan(sol.ys[-1]).all())  # the output not reached


def test_a_field_that_turns_nan_is_still_reported_as_non_finite():
    def broken(t, y):  # NaN from t = 1 on
        return oscillator(t, y) * (torch.nan if float(t) > 1 else 1.0)

    # min_step 0.01: the corrector converges there, so the NaN is the cause
    with pytest.raises(SolverError) as info:
        hn.odeint(
            broken,
            torch.tensor([1.0, 0.0], dtype=F64),
            torch.tensor([0.0, 3.0], dtype=F64),
            method="adams",
            options={"min_step": 0.01},
        )
    assert info.value.status is Status.NONFINITE
