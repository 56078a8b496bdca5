"""Adaptive SDE solves: failure where the state breaks down, exact reversible adjoints, Brownian precision."""

from __future__ import annotations

import pytest
import torch
from _sde_problems import GBM

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
    with pytest.raises(SolverError, match="not finite") as info:
        hn.sdeint(
            sde, torch.ones(2, 1), [0.0, 1.0], method="euler", adaptive=True, dt=0.1, rtol=1e-2, atol=1e-2, dt_min=1e-5
        )
    # The error estimate breaks down on the first step whose stages reach past 0.3; rejections shrink
    # it to dt_min (0.1 -> 1e-5 in about six rejections), so the solve stops within a few dt_min of 0.3.
    assert 0.29 < info.value.t < 0.31
    # Before, the NaN error shrank the step to dt_min and every later step was accepted: 70000 steps of
    # dt_min (three solver steps each) before failing at t = 1.
    assert sde.calls < 1000, sde.calls
