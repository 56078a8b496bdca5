"""A solve that fails under ``throw=False`` reports all the work it did, Jacobian evaluations included.

Before: the adaptive host loop's failure path copied only the field evaluations into the stats, so a
Rosenbrock solve stopped by ``max_num_steps`` after five accepted steps reported ``n_jacobian=0``.
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("one_thread")


def stiff(t, y):
    return -1000.0 * (y - torch.cos(t))


# the fewest Jacobians five steps need: a Rosenbrock step evaluates one at its start (a rejected
# attempt's is reused), an ESDIRK evaluates one before its first step and keeps it while Newton converges
@pytest.mark.parametrize(("solver", "fewest"), [(hn.Rodas5P(), 5), (hn.Kvaerno5(), 1)], ids=["rodas5p", "kvaerno5"])
def test_a_failed_implicit_solve_reports_its_jacobian_evaluations(solver, fewest):
    y0 = torch.zeros(1, dtype=torch.float64)
    t = torch.tensor([0.0, 10.0], dtype=torch.float64)
    ctrl = hn.PIDController(rtol=1e-6, atol=1e-8, max_num_steps=5)
    sol = hn.solve(stiff, y0, t, solver=solver, controller=ctrl, throw=False)
    assert sol.status == hn.Status.MAX_STEPS
    assert sol.stats.n_accepted == 5
    assert sol.stats.n_jacobian >= fewest
