"""The stochastic adjoint's backward solve going NaN or infinite: a SolverError, not NaN gradients."""

from __future__ import annotations

import math
import time
import warnings

import pytest
import torch

import hybrid_node as hn
from hybrid_node._errors import SolverError

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


class Cubic(torch.nn.Module):
    """dy = -a y^3 dt + s o dW (Stratonovich): the forward solve contracts hard from a large y0, so the
    state reconstructed backwards in time is ill-conditioned and overflows for steps the forward takes."""

    noise_type = "diagonal"
    sde_type = "stratonovich"

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(1.0))
        self.s = torch.nn.Parameter(torch.tensor(0.1))

    def f(self, t, y):
        return -self.a * y**3

    def g(self, t, y):
        return self.s * torch.ones_like(y)


def _solve(y0_value: float, **kwargs):
    sde = Cubic()
    y0 = torch.full((2, 1), y0_value, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 0.1, (2, 1), entropy=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # adaptive: forward steps forced at dt_min
        ys = hn.sdeint_adjoint(sde, y0, [0.0, 0.1], bm=bm, method="midpoint", **kwargs)
    return ys, (y0, sde.a, sde.s), sde, bm


def test_fixed_grid_backward_overflow_raises_instead_of_returning_nan():
    # y0 = 40, dt = 1e-3: the forward midpoint solve is finite (and so is direct backprop through it), but
    # the backward reconstruction overflowed and the gradients came back [inf, inf], inf, -3e251 or NaN.
    ys, inputs, sde, bm = _solve(40.0, dt=1e-3)
    assert bool(torch.isfinite(ys).all())
    direct = hn.sdeint(sde, inputs[0], [0.0, 0.1], bm=bm, method="midpoint", dt=1e-3)
    assert all(bool(torch.isfinite(g).all()) for g in torch.autograd.grad(direct[-1].sum(), inputs))
    with pytest.raises(SolverError, match="backward solve returned NaN or infinite gradients"):
        torch.autograd.grad(ys[-1].sum(), inputs)


def test_adaptive_backward_overflow_raises_at_dt_min():
    # The step-doubling error estimate was NaN: the step shrank to dt_min and was then accepted, and the
    # gradients were NaN or infinite without a word (y0 = 50, dt_min = 1e-3; on [0, 1]: inf for y0 and a,
    # -3e251 for s; y0 = 100, dt_min = 1e-5: NaN). The forward solve raises in that case; the backward
    # one now does too.
    kwargs = dict(adaptive=True, rtol=1e-6, atol=1e-6, dt=1e-2, dt_min=1e-3)
    ys, inputs, _, _ = _solve(50.0, adjoint_adaptive=True, adjoint_rtol=1e-6, adjoint_atol=1e-6, **kwargs)
    assert bool(torch.isfinite(ys).all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # steps forced at dt_min before the overflow
        with pytest.raises(SolverError, match="error estimate is not finite even at dt_min"):
            torch.autograd.grad(ys[-1].sum(), inputs)


def test_nan_cotangents_give_nan_gradients_quickly():
    # A NaN loss is the caller's: the gradients are NaN, as with direct backprop, without an error and
    # without crawling over [0, 1] in steps of dt_min (10^5 of them here).
    for adaptive in (False, True):
        ys, inputs, _, _ = _solve(1.0, dt=1e-2, dt_min=1e-5, adjoint_adaptive=adaptive)
        start = time.perf_counter()
        grads = torch.autograd.grad(ys[-1].sum() * math.nan, inputs)
        assert time.perf_counter() - start < 5.0  # ~100 backward steps take milliseconds; 10^5 take minutes
        assert all(bool(torch.isnan(g).all()) for g in grads)


def test_error_ratio_of_the_augmented_state_is_nan_when_any_part_is():
    # max(0.2, nan) is 0.2 in Python: a NaN adjoint behind a finite state's ratio passed the error test.
    from hybrid_node.sde.adjoint import _error_ratio

    y, a = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    nan = torch.tensor([[math.nan]])
    assert _error_ratio([y, a], [y * 1.001, a], 1e-3, 1e-3) > 0  # the finite case measures the state
    assert math.isnan(_error_ratio([y, nan], [y * 1.001, nan], 1e-3, 1e-3))
    assert math.isnan(_error_ratio([y, a, nan], [y, a, a], 1e-3, 1e-3))


class TurnsNaN(torch.nn.Module):
    """dy = -a y dt + 0.1 a o dW (Stratonovich), whose drift returns NaN before t = 0.5 once ``poison`` is
    set: set between the forward and the backward pass, only the backward pass meets the NaN (as a
    field does that overflows at a state reconstructed backwards, which the forward solve never met)."""

    noise_type = "diagonal"
    sde_type = "stratonovich"

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(1.0))
        self.poison = False

    def f(self, t, y):
        drift = -self.a * y
        return drift * math.nan if self.poison and float(t) < 0.5 else drift

    def g(self, t, y):
        return 0.1 * self.a * torch.ones_like(y)


@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
def test_a_field_that_turns_nan_in_the_backward_pass_raises(method):
    # The reversible adjoint returned NaN gradients for y0 and a without a word (torchsde's
    # adjoint_reversible_heun does too); the stochastic adjoint (midpoint) raised. Both raise now.
    sde = TurnsNaN()
    y0 = torch.ones(2, 1, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (2, 1), entropy=1)
    ys = hn.sdeint_adjoint(sde, y0, [0.0, 1.0], bm=bm, method=method, dt=0.01)
    assert bool(torch.isfinite(ys).all())
    sde.poison = True
    with pytest.raises(SolverError, match="backward solve returned NaN or infinite gradients") as info:
        torch.autograd.grad(ys[-1].sum(), (y0, sde.a))
    assert info.value.t == 0.0  # where the backward solve ended


def test_the_reversible_adjoint_gives_nan_gradients_for_nan_cotangents():
    # a NaN loss is the caller's: NaN gradients, as with direct backprop, and no error
    sde = TurnsNaN()
    y0 = torch.ones(2, 1, requires_grad=True)
    ys = hn.sdeint_adjoint(sde, y0, [0.0, 1.0], method="reversible_heun", dt=0.01)
    grads = torch.autograd.grad(ys[-1].sum() * math.nan, (y0, sde.a))
    assert all(bool(torch.isnan(g).all()) for g in grads)
