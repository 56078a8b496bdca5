"""Augmented and second-order Neural ODEs: shapes, zero padding, and the harmonic oscillator."""

import math

import pytest
import torch
from torch import nn

from hybrid_node.nn import (
    AugmentedNeuralODE,
    MLPDynamics,
    SecondOrderDynamics,
    SecondOrderNeuralODE,
    SolveSettings,
    augment,
)

TIGHT = SolveSettings("dopri5", rtol=1e-10, atol=1e-12)


def test_augment_appends_zeros():
    x = torch.randn(4, 3)
    z = augment(x, 2)
    assert z.shape == (4, 5) and torch.equal(z[:, :3], x) and not z[:, 3:].any()
    img = torch.randn(2, 1, 4, 4)
    assert augment(img, 3).shape == (2, 4, 4, 4)
    assert augment(x, 0) is x
    with pytest.raises(ValueError, match="non-negative"):
        augment(x, -1)
    with pytest.raises(ValueError, match="out of range"):
        augment(x, 1, dim=2)


def test_augmented_node_shapes_and_nfe():
    model = AugmentedNeuralODE(MLPDynamics(1 + 5, hidden=16), augment_dim=5)
    out = model(torch.randn(7, 1))
    assert out.shape == (7, 6) and model.nfe_forward > 0
    traj = AugmentedNeuralODE(MLPDynamics(3, hidden=8), 1, t=torch.linspace(0, 1, 4), return_trajectory=True)
    assert traj(torch.randn(5, 2)).shape == (4, 5, 3)


class Spring(nn.Module):
    def forward(self, t, x, v):
        return -x  # x'' = -x


def test_second_order_harmonic_oscillator_is_exact():
    t = torch.linspace(0, math.pi, 7, dtype=torch.float64)
    x0 = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    v0 = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    model = SecondOrderNeuralODE(Spring(), t=t, train_settings=TIGHT, return_trajectory=True, return_velocity=True)
    x, v = model(x0, v0)
    assert x.shape == (7, 2, 1) and v.shape == (7, 2, 1)
    tt = t.view(-1, 1, 1)
    torch.testing.assert_close(x, x0 * torch.cos(tt) + v0 * torch.sin(tt), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(v, -x0 * torch.sin(tt) + v0 * torch.cos(tt), rtol=1e-8, atol=1e-9)


def test_second_order_initial_velocity_module_and_default_zero():
    x0 = torch.tensor([[1.0]], dtype=torch.float64)
    model = SecondOrderNeuralODE(Spring(), t=(0.0, math.pi / 2), train_settings=TIGHT)
    torch.testing.assert_close(model(x0), torch.zeros_like(x0), atol=1e-9, rtol=0)  # cos(pi/2) = 0
    shift = nn.Linear(1, 1).double()
    with torch.no_grad():
        shift.weight.fill_(0.0), shift.bias.fill_(3.0)
    model = SecondOrderNeuralODE(Spring(), initial_velocity=shift, t=(0.0, math.pi / 2), train_settings=TIGHT)
    torch.testing.assert_close(model(x0), torch.full_like(x0, 3.0), rtol=1e-8, atol=1e-9)  # v0 sin(pi/2)


def test_second_order_errors():
    f = SecondOrderDynamics(Spring())
    with pytest.raises(ValueError, match="even"):
        f(0.0, torch.randn(2, 3))
    model = SecondOrderNeuralODE(Spring())
    with pytest.raises(ValueError, match="shape of x0"):
        model(torch.randn(2, 2), torch.randn(2, 3))


def test_second_order_refuses_a_plain_callable_under_an_adjoint_and_an_unbatched_state():
    from hybrid_node.sensitivity import BacksolveAdjoint

    k = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(ValueError, match="acceleration is a plain callable"):
        SecondOrderNeuralODE(lambda t, x, v: -k * x, train_settings=SolveSettings(sensitivity=BacksolveAdjoint()))
    model = SecondOrderNeuralODE(lambda t, x, v: -k * x)
    with pytest.raises(ValueError, match=r"no dimension 1.*unsqueeze\(0\)"):
        model(torch.tensor([1.0, 2.0]))
    # dim=-1 takes the unbatched state; x'' = -x from (x0, 0) gives x0 cos(t)
    x0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    got = SecondOrderNeuralODE(lambda t, x, v: -x, dim=-1, train_settings=TIGHT)(x0)
    torch.testing.assert_close(got, x0 * math.cos(1.0), rtol=1e-8, atol=1e-10)
