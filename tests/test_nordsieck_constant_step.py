"""hn.solve with a Nordsieck method (adams, bdf, lsoda) and a ConstantStepSize is refused.

The fixed-step loop gave them steps their Nordsieck array was not scaled to and no order changes:
adams and lsoda returned a state 1.41 off the matrix exponential's on y' = Ay over [0, 2] with step
0.05, bdf converged at first order (4.4e-2 off). The methods are found in the registry by their class.
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn
from hybrid_node.solvers.multistep import Nordsieck

A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)
Y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
T = torch.tensor([0.0, 2.0], dtype=torch.float64)

NORDSIECK = [n for n, s in hn.METHODS.items() if s.solver is not None and isinstance(s.solver(), Nordsieck)]


def _field(t, y):
    return y @ A.T


def test_registry_has_nordsieck_methods():
    assert len(NORDSIECK) >= 3


@pytest.mark.parametrize("method", NORDSIECK)
def test_constant_step_size_is_refused_with_the_fix(method):
    with pytest.raises(ValueError, match="first_step=h, max_step=h"):
        hn.solve(_field, Y0, T, solver=hn.METHODS[method].solver(), controller=hn.ConstantStepSize(step_size=0.05))


@pytest.mark.parametrize("method", NORDSIECK)
def test_the_suggested_bound_solves_correctly(method):
    """The fix the message names keeps every step at most h and is accurate: against expm(2A) y0 to 1e-3
    (rtol 1e-5 over ~40 steps; measured 2.3e-6 for bdf, 7.8e-7 for adams)."""
    ctrl = hn.PIDController(rtol=1e-5, atol=1e-7, first_step=0.05, max_step=0.05)
    sol = hn.solve(_field, Y0, T, solver=hn.METHODS[method].solver(), controller=ctrl)
    exact = torch.linalg.matrix_exp(2.0 * A) @ Y0
    torch.testing.assert_close(sol.ys[-1], exact, rtol=0, atol=1e-3)
    assert sol.stats.n_accepted >= 40  # 2 / 0.05: the bound held
