"""Time-dependent layers: shapes, that time really enters, and equality with the explicit concatenation."""

import pytest
import torch

import hybrid_node as hn
from hybrid_node.nn import ConvDynamics, MLPDynamics, TimeConv2d, TimeLinear


def test_time_linear_equals_linear_on_concatenation():
    layer = TimeLinear(3, 5)
    x = torch.randn(4, 3)
    expected = layer.linear(torch.cat([torch.full((4, 1), 0.7), x], dim=1))
    torch.testing.assert_close(layer(torch.tensor(0.7), x), expected)
    assert layer(0.7, torch.randn(2, 6, 3)).shape == (2, 6, 5)


def test_time_conv_equals_conv_on_concatenation_and_depends_on_t():
    layer = TimeConv2d(2, 4, 3, padding=1)
    x = torch.randn(3, 2, 5, 5)
    expected = layer.conv(torch.cat([torch.full((3, 1, 5, 5), 0.3), x], dim=1))
    torch.testing.assert_close(layer(0.3, x), expected)
    assert not torch.allclose(layer(0.0, x), layer(1.0, x))
    with pytest.raises(ValueError, match="N, C, H, W"):
        layer(0.0, torch.randn(2, 5, 5))


def test_time_must_be_scalar_or_one_per_sample():
    with pytest.raises(ValueError, match=r"scalar time or one time per sample, shape \(3,\)"):
        TimeLinear(2, 2)(torch.ones(4), torch.randn(3, 2))
    with pytest.raises(ValueError, match="scalar"):
        TimeLinear(2, 2)(torch.ones(2), torch.randn(2))  # an unbatched x: its first dimension is features
    with pytest.raises(ValueError, match="scalar"):
        TimeConv2d(1, 1)(torch.ones(3, 1), torch.randn(3, 1, 4, 4))


def test_one_time_per_sample_equals_each_row_with_its_own_scalar_time():
    # per-sample step control calls the field with t of shape (batch,): row b at time t[b]
    torch.manual_seed(0)
    t = torch.tensor([0.0, 0.4, 1.3])
    cases = [
        (TimeLinear(3, 5), torch.randn(3, 3)),
        (TimeLinear(3, 5), torch.randn(3, 2, 3)),
        (MLPDynamics(3, hidden=8, layers=2), torch.randn(3, 3)),
        (TimeConv2d(2, 4), torch.randn(3, 2, 5, 5)),
        (ConvDynamics(4, groups=2), torch.randn(3, 4, 5, 5)),
    ]
    for layer, x in cases:
        rows = torch.cat([layer(t[b], x[b : b + 1]) for b in range(3)])
        torch.testing.assert_close(layer(t, x), rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dynamics_shapes_and_dtypes(dtype):
    mlp = MLPDynamics(3, hidden=8, layers=2).to(dtype)
    y = torch.randn(5, 3, dtype=dtype)
    assert mlp(torch.tensor(0.5, dtype=dtype), y).shape == (5, 3)
    conv = ConvDynamics(8, groups=4).to(dtype)
    z = torch.randn(2, 8, 6, 6, dtype=dtype)
    out = conv(torch.tensor(0.1, dtype=dtype), z)
    assert out.shape == z.shape and out.dtype == dtype
    auto = MLPDynamics(3, time_dependent=False)
    torch.testing.assert_close(auto(0.0, y.float()), auto(5.0, y.float()))


def test_bad_sizes_raise():
    with pytest.raises(ValueError):
        TimeLinear(0, 3)
    with pytest.raises(ValueError, match="divide"):
        ConvDynamics(6, groups=4)
    with pytest.raises(ValueError, match="layers"):
        MLPDynamics(2, layers=0)


def test_a_per_sample_solve_of_mlp_dynamics_equals_separate_solves_of_each_row():
    torch.manual_seed(0)
    field = MLPDynamics(2, hidden=16, layers=2, activation=torch.nn.Tanh()).double()
    y0 = torch.randn(4, 2, dtype=torch.float64) * torch.tensor([[0.1], [1.0], [3.0], [10.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    tol = dict(method="dopri5", rtol=1e-9, atol=1e-11)
    with torch.no_grad():
        batched = hn.odeint(field, y0, t, options={"per_sample": True}, **tol)
        rows = torch.stack([hn.odeint(field, y0[b : b + 1], t, **tol)[:, 0] for b in range(4)], dim=1)
    torch.testing.assert_close(batched, rows, rtol=1e-7, atol=1e-9)


def test_conv_dynamics_names_the_expected_state_shape():
    # GroupNorm failed first with "Expected number of channels in input to be divisible by num_groups"
    field = ConvDynamics(4, groups=2)
    with pytest.raises(ValueError, match=r"ConvDynamics\(4\) expects y of shape \(N, 4, H, W\), got \(2, 3, 5, 5\)"):
        hn.nn.ODEBlock(field)(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"got \(4, 5, 5\); add a batch dimension"):
        field(0.0, torch.randn(4, 5, 5))
