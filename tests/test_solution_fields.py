"""The fields of :class:`hybrid_node.Solution` mean what its docstring says.

``stats.nfe`` is checked against a counter inside the field for an explicit adaptive, a fixed-step, an
implicit (Newton) and a Rosenbrock method: the counts must agree exactly, whatever the solver did.
"""

from __future__ import annotations

import math

import pytest
import torch

import hybrid_node as hn

F64 = torch.float64


class _Counted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return -y


@pytest.mark.parametrize(
    ("solver", "controller"),
    [
        (hn.Dopri5, lambda: hn.PIDController(rtol=1e-6, atol=1e-8)),
        (hn.RK4, lambda: hn.ConstantStepSize(0.1)),
        (hn.ImplicitEuler, lambda: hn.ConstantStepSize(0.1)),
        (hn.Kvaerno5, lambda: hn.PIDController(rtol=1e-6, atol=1e-8)),
        (hn.Rodas5P, lambda: hn.PIDController(rtol=1e-6, atol=1e-8)),
        (hn.BDF, lambda: hn.PIDController(rtol=1e-6, atol=1e-8)),
    ],
)
def test_stats_nfe_counts_every_field_call(solver, controller):
    field = _Counted()
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    sol = hn.solve(field, torch.ones(3, dtype=F64), t, solver=solver(), controller=controller())
    assert sol.stats.nfe == field.calls > 0
    assert sol.status is hn.Status.SUCCESS and sol.t_final is None
    assert torch.equal(sol.ts, t) and sol.ys.shape == (5, 3)
    # the fixed steps of 0.1 over [0, 1] are ten accepted steps; an adaptive solve takes at least one
    assert sol.stats.n_accepted == 10 if controller().__class__ is hn.ConstantStepSize else sol.stats.n_accepted >= 1


def test_terminal_event_fills_t_final_and_the_last_row():
    t = torch.tensor([0.0, 2.0], dtype=F64)
    sol = hn.solve(lambda t, y: -y, torch.ones(1, dtype=F64), t, event_fn=lambda t, y: y[0] - 0.5)
    assert sol.status is hn.Status.EVENT
    # y = exp(-t) reaches 0.5 at ln 2; 1e-6 is well above the event bisection's tolerance on this smooth root
    assert float(sol.t_final) == pytest.approx(math.log(2.0), abs=1e-6)
    assert float(sol.ys[-1, 0]) == pytest.approx(0.5, abs=1e-6)
    assert torch.equal(sol.ts, t)  # ts stays the times given; the last row is at t_final


def test_throw_false_reports_the_status_and_nan_rows():
    # y' = y^2 from y(0) = 1 blows up at t = 1: t = 0.5 is reached (y = 2), t = 2 is not
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    sol = hn.solve(lambda t, y: y**2, torch.ones(1, dtype=F64), t, throw=False)
    assert sol.status is not hn.Status.SUCCESS and sol.t_final is None
    # the default PIDController (rtol 1e-7) is far inside this 1e-3
    assert float(sol.ys[1, 0]) == pytest.approx(2.0, rel=1e-3)
    assert torch.isnan(sol.ys[2]).all()
    with pytest.raises(hn.SolverError):
        hn.solve(lambda t, y: y**2, torch.ones(1, dtype=F64), t)
