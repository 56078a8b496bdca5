"""``Event(direction=...)`` counts in the user's time, also when the solve runs backwards.

Reference: scipy's ``solve_ivp``, whose ``direction`` counts along the integration, so that for a
backwards ``t_span`` its ``-d`` is our ``d``. On x = cos t over [0, 5] the roots are pi/2 (x
decreasing in t) and 3 pi/2 (x increasing).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import hybrid_node as hn

F64 = torch.float64


def rotation(t, y):
    return torch.stack([y[..., 1], -y[..., 0]], -1)


@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize("backwards", [False, True])
def test_direction_is_that_of_the_users_time_as_scipys_along_the_integration(direction, backwards):
    t0, t1 = (5.0, 0.0) if backwards else (0.0, 5.0)
    y0 = [math.cos(t0), -math.sin(t0)]
    sol = hn.solve(
        rotation,
        torch.tensor(y0, dtype=F64),
        torch.tensor([t0, t1], dtype=F64),
        event=hn.Event(lambda t, y: y[..., :1], direction=direction),
        controller=hn.PIDController(rtol=1e-10, atol=1e-12),
    )

    def x(t, y):
        return y[0]

    # scipy's direction is along the integration: reversed for a backwards t_span
    x.direction = -direction if backwards else direction
    ref = solve_ivp(lambda t, y: [y[1], -y[0]], (t0, t1), y0, events=x, rtol=1e-10, atol=1e-12)
    assert len(ref.t_events[0]) == 1
    assert len(sol.events) == 1
    # both locate the root on dense outputs at rtol 1e-10
    np.testing.assert_allclose(float(sol.events[0].t), ref.t_events[0][0], rtol=0, atol=1e-8)
    assert math.isclose(float(sol.events[0].t), math.pi / 2 if direction < 0 else 3 * math.pi / 2, abs_tol=1e-8)
