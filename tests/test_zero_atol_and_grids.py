"""A purely relative tolerance on a component that stays zero, and grids with a NaN in them."""

import math

import pytest
import torch

import hybrid_node as hn


@pytest.mark.parametrize("atol", [0.0, torch.tensor(0.0, dtype=torch.float64)], ids=["float", "tensor"])
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_zero_atol_with_a_component_that_stays_zero(method, atol):
    # its error and its scale are both exactly 0 on every step: 0 / 0 made every step non-finite
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ys = hn.odeint(lambda t, y: -y, y0, t, rtol=1e-8, atol=atol, method=method)
    # a relative error per step of 1e-8 over ~50 steps: within 1e-6 of exp(-t)
    torch.testing.assert_close(ys[:, 0], torch.exp(-t), rtol=1e-6, atol=0)
    assert bool((ys[:, 1] == 0).all())


def test_zero_atol_still_rejects_a_nan_error():
    def field(t, y):
        return torch.where(t > 0.5, torch.full_like(y, math.nan), -y)

    with pytest.raises(hn.SolverError, match="NaN|non-finite|not finite"):
        hn.odeint(field, torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0]), rtol=1e-6, atol=0.0)


def test_a_grid_with_a_nan_is_refused():
    # NaN <= x is False, so the monotonicity check let [0, nan, 1] through and the output lost two rows
    t = torch.tensor([0.0, 0.35, 1.0])
    with pytest.raises(ValueError, match="strictly monotonic"):
        hn.odeint(
            lambda t, y: -y,
            torch.ones(2),
            t,
            method="rk4",
            options={"grid_constructor": lambda f, y0, t: torch.tensor([0.0, math.nan, 1.0])},
        )


def test_zero_atol_with_a_component_that_stays_zero_per_sample():
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    y0 = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    ys = hn.odeint(lambda t, y: -y, y0, t, rtol=1e-8, atol=0.0, options={"per_sample": True})
    # as above: each sample within 1e-6 relative of y0 exp(-t)
    torch.testing.assert_close(ys[:, :, 0], torch.exp(-t)[:, None] * y0[:, 0], rtol=1e-6, atol=0)
    assert bool((ys[:, :, 1] == 0).all())
