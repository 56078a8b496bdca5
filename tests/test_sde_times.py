"""SDE solves far from t = 0 and over short spans: every step is taken at its size, and a step that
cannot move t (below the spacing of floats there) is refused with a message instead of hanging."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _sde_problems import GBM

import hybrid_node as hn
from hybrid_node._errors import SolverError

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


class _RecordingGBM(GBM):
    """GBM that records the times its drift is evaluated at, with a prior drift for logqp."""

    def __init__(self, sde_type: str = "ito"):
        super().__init__(sde_type)
        self.times: list[float] = []

    def f(self, t, y):
        self.times.append(float(t))
        return super().f(t, y)

    def h(self, t, y):
        return -y


def test_steps_keep_their_size_at_a_unix_time():
    # Steps ended within 1e-12 max(1, |t|) = 1.7e-3 of an output were stretched onto it: of the 20 steps of
    # dt = 1e-3 over [t0, t0 + 0.02], 19 were taken (two of 1.8e-3), and the state was 3 % off torchsde's.
    t0 = 1.7e9
    ts = torch.tensor([t0, t0 + 0.01, t0 + 0.02])
    sde = _RecordingGBM()
    bm = hn.BrownianInterval(t0, t0 + 0.02, (3, 1), entropy=2)
    ours = hn.sdeint(sde, torch.ones(3, 1), ts, bm=bm, method="euler", dt=1e-3)
    steps = sorted(set(sde.times))
    gaps = [b - a for a, b in zip(steps[:-1], steps[1:])]
    # each step time is rounded to the float spacing at t0 (2.4e-7), so a step may differ from dt by that
    assert len(steps) >= 20 and max(gaps) <= 1e-3 + 2 * math.ulp(t0), (len(steps), max(gaps))
    torchsde = pytest.importorskip("torchsde")
    theirs_bm = torchsde.BrownianInterval(t0, t0 + 0.02, (3, 1), entropy=2)
    ours = hn.sdeint(GBM("ito"), torch.ones(3, 1), ts, bm=theirs_bm, method="euler", dt=1e-3)
    theirs = torchsde.sdeint(GBM("ito"), torch.ones(3, 1), ts, bm=theirs_bm, method="euler", dt=1e-3)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)  # the same steps: equal to rounding


def test_a_span_shorter_than_a_trillionth_is_solved():
    # On [0, 1e-13] no step was taken (the span was below the 1e-12 tolerance): y(t1) = y0 exactly, where
    # GBM's exact solution on the same path differs from y0 by 0.8 |W(t1)| ~ 2.5e-7.
    t1 = 1e-13
    sde = GBM("ito")
    y0 = torch.ones(50, 1)
    bm = hn.BrownianInterval(0.0, t1, (50, 1), entropy=4)
    ys = hn.sdeint(sde, y0, [0.0, t1], bm=bm, method="milstein", dt=t1 / 10)
    exact = sde.exact(y0, t1, bm(0.0, t1)).detach()
    assert float((exact - y0).abs().mean()) > 1e-7  # what returning y0 misses
    # Milstein's error over ten steps of 1e-14 is ~1e-21 per step; what remains is the rounding of ten
    # additions to a state of size 1 (a few 1e-16), far below the 2.5e-7 that returning y0 misses
    torch.testing.assert_close(ys[-1].detach(), exact, rtol=0, atol=1e-13)


def test_adaptive_adjoint_with_logqp_far_from_zero_equals_direct_backprop():
    # With logqp the backward pass stops at every forward step; forward steps of 1e-7 at t = 1e6 were below
    # the old tolerance (1e-6), so every backward segment was skipped: dL/dsigma 1.6e-3 instead of 9.5e-3.
    t0 = 1e6
    grads = []
    for solve, kw in (
        (hn.sdeint, {}),
        (hn.sdeint_adjoint, dict(adjoint_adaptive=True, adjoint_rtol=1e-6, adjoint_atol=1e-8)),
    ):
        sde = _RecordingGBM("stratonovich")
        bm = hn.BrownianInterval(t0, t0 + 1e-5, (4, 1), entropy=3)
        ys, kl = solve(sde, torch.ones(4, 1), [t0, t0 + 1e-5], bm=bm, method="midpoint", dt=1e-7, logqp=True, **kw)
        grads.append(torch.stack(torch.autograd.grad(ys.sum() + kl.sum(), list(sde.parameters()))))
    # The adaptive backward solve of the continuous adjoint against the discrete gradient of dt = 1e-7
    # steps: they differ by the forward discretisation error, O(dt) relative.
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=0)


def test_a_step_that_cannot_move_t_is_refused():
    # Near t = 1e14 floats are 0.0156 apart, so t + 1e-3 == t. With sdeint's Brownian interval the grid
    # failed with "Sizes of tensors must match"; with a Brownian motion of the user's, the loop never
    # ended (as torchsde 0.2.6's).
    t0 = 1e14
    y0 = torch.ones(2, 1)
    with pytest.raises(ValueError, match="does not advance a time near 1e\\+14"):
        hn.sdeint(GBM("ito"), y0, [t0, t0 + 1.0], method="euler", dt=1e-3)
    with pytest.raises(ValueError, match="does not advance"):
        hn.BrownianInterval(t0, t0 + 1.0, (2, 1), dt=1e-3)
    bm = hn.BrownianInterval(t0, t0 + 1.0, (2, 1), entropy=0)
    with pytest.raises(SolverError, match="does not change t"):
        hn.sdeint(GBM("ito"), y0, [t0, t0 + 1.0], bm=bm, method="euler", dt=1e-3)
    with pytest.raises(SolverError, match="does not change t"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the steps that reach dt_min fail the error test: torchsde's warning
        hn.sdeint(GBM("ito"), y0, [t0, t0 + 1.0], bm=bm, method="milstein", dt=0.5, adaptive=True, rtol=1e-9)
    # a step that does move t solves: dt = 0.05 is three float spacings there
    ys = hn.sdeint(GBM("ito"), y0, [t0, t0 + 1.0], bm=bm, method="euler", dt=0.05)
    assert bool(torch.isfinite(ys).all())
