"""The last step of a solve at ``min_step``: stretched to land on the end, it still counts as one at ``min_step``.

A step is accepted whatever its error when it is at most ``min_step`` (torchdiffeq's meaning). After
many steps at ``min_step`` the rest of the way to the end is ``min_step`` plus the rounding of the
time (0.1 + 1.7e-13 after 99 steps of 0.1), which the landing rule stretches the step to. Compared
with ``min_step`` itself that step was rejected, and retried unchanged until ``max_num_steps`` (by
default 2^31 - 1: the solve hung), where torchdiffeq finishes it.
"""

from __future__ import annotations

import pytest
import torch
import torchdiffeq
from conftest import deadline

import hybrid_node as hn

F64 = torch.float64


def oscillator(t, y):
    return torch.stack([y[1], -y[0]])


@pytest.mark.parametrize("options", [{}, {"device_loop": True}])
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_solve_held_at_min_step_reaches_the_end_as_torchdiffeqs(method, options):
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 10.0], dtype=F64)
    # rtol 1e-13 wants steps below 0.1: every step is held at min_step and accepted whatever its error
    kw = dict(method=method, rtol=1e-13, atol=1e-14)
    with deadline(60):
        ours = hn.odeint(oscillator, y0, t, options={"min_step": 0.1, "max_num_steps": 10_000, **options}, **kw)
    theirs = torchdiffeq.odeint(oscillator, y0, t, options={"min_step": 0.1}, **kw)
    # the same 100 steps of 0.1; torchdiffeq's last one ends 1.7e-13 past t = 10 and interpolates back,
    # ours lands on 10 (measured to agree to 8e-16; both err by 2.6e-8 (dopri5) and 3.7e-4 (bosh3) from
    # cos(10), so the bound still tells the same steps from any others)
    torch.testing.assert_close(ours[-1], theirs[-1], rtol=0.0, atol=1e-10)
