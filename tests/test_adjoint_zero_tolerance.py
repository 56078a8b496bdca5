"""A single zero backward tolerance (pure absolute or pure relative error control) in the ODE adjoints.

``adjoint_rtol=0`` with a positive ``adjoint_atol`` (or the reverse) is a valid error control, as in the
forward solve and in scipy's ``solve_ivp``; only both 0 at once leaves the error ratio undefined.
"""

import math

import pytest
import torch

import hybrid_node as hn

T = torch.tensor([0.0, 1.0], dtype=torch.float64)
Y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)


class Decay(torch.nn.Module):
    """y' = -k y with k = 1: y(1) = y0 e^{-k}, so d sum(y(1)) / dk = -sum(y0) e^{-1}."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, t, y):
        return -self.k * y


def gradient_error(**kwargs) -> float:
    field = Decay()
    ys = hn.odeint_adjoint(field, Y0, T, rtol=1e-10, atol=1e-10, **kwargs)
    (grad,) = torch.autograd.grad(ys[-1].sum(), [field.k])
    return abs(float(grad) + float(Y0.sum()) * math.exp(-1.0))


@pytest.mark.parametrize(
    "tolerances",
    [dict(adjoint_rtol=0.0, adjoint_atol=1e-10), dict(adjoint_rtol=1e-9, adjoint_atol=0.0)],
    ids=["pure-absolute", "pure-relative"],
)
def test_one_zero_adjoint_tolerance_gives_the_analytic_gradient(tolerances):
    # was refused ("rtol must be positive and finite"); the gradient is about 2.2 in size, and a dopri5
    # backward solve at a tolerance of 1e-9..1e-10 per step over ~30 steps lands within 1e-7 of it
    assert gradient_error(**tolerances) < 1e-7


def test_one_zero_tolerance_is_taken_by_the_sensitivity_settings():
    assert hn.BacksolveAdjoint(rtol=0.0, atol=1e-9).rtol == 0.0
    assert hn.BacksolveAdjoint(rtol=1e-9, atol=torch.zeros(2)).rtol == 1e-9


def test_both_zero_adjoint_tolerances_are_refused():
    with pytest.raises(ValueError, match="the adjoint's rtol and atol are both 0"):
        gradient_error(adjoint_rtol=0.0, adjoint_atol=0.0)
    with pytest.raises(ValueError, match="the adjoint's rtol and atol are both 0"):
        hn.BacksolveAdjoint(rtol=0.0, atol=torch.tensor([1e-9, 0.0]))


def test_a_zero_adjoint_tolerance_with_the_forward_zero_is_refused():
    # the backward rtol is the forward's 0 here, so adjoint_atol=0 leaves no error control
    field = Decay()
    with pytest.raises(ValueError, match="the adjoint's rtol and atol are both 0"):
        hn.odeint_adjoint(field, Y0, T, rtol=0.0, atol=1e-10, adjoint_atol=0.0)
