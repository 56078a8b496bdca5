"""Adaptive SDE solves: failure where the state breaks down, exact reversible adjoints, Brownian precision."""

from __future__ import annotations

import warnings

import pytest
import torch
from _sde_problems import GBM, NeuralSDE

import hybrid_node as hn
from hybrid_node._errors import SolverError

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


class _NaNAfter(GBM):
    """GBM whose drift turns NaN after t_bad, counting drift evaluations."""

    def __init__(self, t_bad: float):
        super().__init__("ito")
        self.t_bad, self.calls = t_bad, 0

    def f(self, t, y):
        self.calls += 1
        return super().f(t, y) * (float("nan") if float(t) > self.t_bad else 1.0)


def test_adaptive_solve_fails_where_the_drift_turns_nan():
    sde = _NaNAfter(0.3)
    bm = hn.BrownianInterval(0.0, 1.0, (2, 1), entropy=2)
    with pytest.raises(SolverError, match="not finite") as info:
        hn.sdeint(
            sde,
            torch.ones(2, 1),
            [0.0, 1.0],
            bm=bm,
            method="milstein",
            adaptive=True,
            dt=0.1,
            rtol=1e-2,
            atol=1e-2,
            dt_min=1e-5,
        )
    # Milstein reads the drift at step starts only, so the first NaN comes at the first step start past
    # 0.3, one accepted step (here ~0.05-0.1 long) after it; rejections then shrink that step to dt_min
    # (0.1 -> 1e-5 in about six rejections) and the solve stops there.
    assert 0.3 < info.value.t < 0.4
    # Before, the NaN error shrank the step to dt_min and every later step was accepted: 70000 steps of
    # dt_min (three solver steps each) before failing at t = 1.
    assert sde.calls < 1000, sde.calls


def test_reversible_adjoint_after_an_adaptive_forward_solve_equals_direct_backprop():
    # The reversible adjoint undoes the forward steps one by one: the steps it walks must be those the
    # solution took, the half steps of each accepted step-doubling step (it walked the full steps and
    # undid each as one step over both halves' noise: 3.8e-3 relative error, float64).
    torch.manual_seed(0)
    sde = NeuralSDE("general", "stratonovich")
    y0 = torch.randn(4, 3, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (4, 2), entropy=2)
    ts = torch.tensor([0.0, 0.35, 0.8, 1.0])
    kwargs = dict(bm=bm, method="reversible_heun", dt=0.05, adaptive=True, rtol=1e-3, atol=1e-4)
    inputs = (y0, *sde.parameters())

    def grads(solve):
        ys = solve(sde, y0, ts, **kwargs)
        out = torch.autograd.grad(torch.sin(ys).sum(), inputs, allow_unused=True)
        return ys.detach(), [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, out)]

    ys_direct, direct = grads(hn.sdeint)
    ys_adjoint, adjoint = grads(hn.sdeint_adjoint)
    torch.testing.assert_close(ys_adjoint, ys_direct, rtol=0, atol=0)  # the same forward solve
    for a, b in zip(adjoint, direct):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)  # exact up to rounding, as with fixed steps


def test_pure_relative_or_absolute_tolerances_are_accepted_as_in_torchsde():
    # atol=0 (or rtol=0) is valid in torchsde. It was refused here, and with atol=0 the error scale of a
    # component that stays 0 was 0: 0 / 0 = NaN rejected every step and the solve failed at dt_min.
    n = 40
    sde = GBM("ito")
    y0 = torch.cat([torch.ones(n, 1), torch.zeros(1, 1)])  # the last row stays 0 (GBM from 0)
    bm = hn.BrownianInterval(0.0, 1.0, (n + 1, 1), entropy=3)
    with torch.no_grad():
        ys = hn.sdeint(sde, y0, [0.0, 1.0], bm=bm, method="milstein", adaptive=True, rtol=1e-3, atol=0.0, dt=0.1)
        exact = sde.exact(y0, 1.0, bm(0.0, 1.0))
    assert float(ys[-1, -1, 0]) == 0.0
    # measured 4.9e-3 (docs/sde.md: 2.1e-2 with the default atol): 0.05 leaves room and still catches garbage
    assert float((ys[-1] - exact).abs().mean()) < 0.05
    assert hn.sde._loop.error_ratio(torch.zeros(3), torch.zeros(3), 1e-3, 0.0) == 0.0
    assert hn.sde._loop.error_ratio(torch.tensor([float("nan")]), torch.zeros(1), 1e-3, 0.0) != 0.0  # NaN stays
    hn.sdeint(sde, y0, [0.0, 1.0], bm=bm, method="milstein", adaptive=True, rtol=0.0, atol=1e-3, dt=0.1)
    with pytest.raises(ValueError, match="must not both be 0"):
        hn.sdeint(sde, y0, [0.0, 1.0], method="milstein", adaptive=True, rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="atol must be non-negative"):
        hn.sdeint(sde, y0, [0.0, 1.0], method="milstein", atol=-1.0)
    with pytest.raises(ValueError, match="adjoint_rtol and adjoint_atol must not both be 0"):
        hn.sdeint_adjoint(sde, y0, [0.0, 1.0], method="milstein", adjoint_rtol=0.0, adjoint_atol=0.0)


def test_steps_forced_at_dt_min_warn_as_in_torchsde():
    # A step at dt_min is accepted whatever its error: torchsde warns "Hitting minimum allowed step size";
    # here it was accepted without a word (GBM, rtol = atol = 1e-9 with dt_min = 0.01: all 20 steps forced,
    # error ratios up to 1e5).
    sde = GBM("ito")
    y0 = torch.ones(3, 1)
    bm = hn.BrownianInterval(0.0, 0.2, (3, 1), entropy=1)
    tight = dict(bm=bm, method="milstein", adaptive=True, rtol=1e-9, atol=1e-9, dt=0.05, dt_min=0.01)
    with pytest.warns(UserWarning, match=r"Hitting minimum allowed step size .* 20 step\(s\) of dt_min=0.01"):
        hn.sdeint(sde, y0, [0.0, 0.2], **tight)
    with pytest.warns(UserWarning, match="Hitting minimum allowed step size"):
        ys = hn.sdeint_adjoint(
            sde, y0, [0.0, 0.2], bm=bm, method="milstein", dt=0.05, dt_min=0.01, adjoint_adaptive=True,
            adjoint_rtol=1e-9, adjoint_atol=1e-9,
        )  # fmt: skip
        ys.sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # steps that meet the tolerance above dt_min: no warning
        hn.sdeint(sde, y0, [0.0, 0.2], **{**tight, "rtol": 1e-2, "atol": 1e-2})
    torchsde = pytest.importorskip("torchsde")
    with pytest.warns(UserWarning, match="Hitting minimum allowed step size"):  # the peer on the same inputs
        torchsde.sdeint(sde, y0, [0.0, 0.2], **tight)
