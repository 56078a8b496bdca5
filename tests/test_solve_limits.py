"""Issue 19, points 1-6, 13 and 14: solves that hung, dtypes that failed, errors that did not say what to fix.

A hang is tested under a deadline (a SIGALRM that raises in the test), so a regression fails in
seconds instead of stalling the suite.
"""

from __future__ import annotations

import contextlib
import math
import signal

import pytest
import torch

import hybrid_node as hn
from hybrid_node import SolverError, Status

T01 = torch.tensor([0.0, 1.0])


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail with TimeoutError when the block runs longer than ``seconds`` (a hang, not a slow solve)."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the solve hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def grow(t, y):
    return y


def decay(t, y):
    return -y


# ----------------------------------------------------------------------------------------------------
# 1, 2: an overflowing float32 state ends with a non-finite-state error, as a float64 one does
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, t_over",
    [
        (torch.float32, math.log(torch.finfo(torch.float32).max)),
        (torch.float64, math.log(torch.finfo(torch.float64).max)),
    ],
)
def test_overflowing_state_reports_nonfinite_at_the_dtypes_overflow(dtype, t_over):
    with deadline(60), pytest.raises(SolverError, match="NaN or infinite") as info:
        hn.odeint(grow, torch.ones(1, dtype=dtype), torch.tensor([0.0, 1000.0], dtype=dtype))
    assert info.value.status is Status.NONFINITE
    assert info.value.t == pytest.approx(t_over, rel=1e-3)  # 88.72 for float32, 709.78 for float64


@pytest.mark.parametrize("options", [{"device_loop": True}, {"per_sample": True}])
def test_overflowing_float32_state_ends_on_the_other_loops(options):
    with deadline(60), pytest.raises(SolverError) as info:
        hn.odeint(grow, torch.ones(2, 1), torch.tensor([0.0, 100.0]), options=options)
    assert info.value.status in (Status.NONFINITE, Status.STEP_UNDERFLOW)
    assert info.value.t == pytest.approx(88.72, rel=1e-3)


def test_overflowing_float32_state_in_an_event_search_ends():
    with deadline(60), pytest.raises(SolverError, match="NaN or infinite") as info:
        hn.odeint_event(grow, torch.ones(1), torch.tensor(0.0), event_fn=lambda t, y: y[0] + 1.0)
    assert info.value.t == pytest.approx(88.72, rel=1e-3)


# ----------------------------------------------------------------------------------------------------
# 3: float16 solves (no event function, and none is reported)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_half_precision_solves_reach_the_end(dtype, method):
    t = torch.tensor([0.0, 0.5, 2.0])
    ys = hn.odeint(decay, torch.ones(2, dtype=dtype), t, rtol=1e-3, atol=1e-3, method=method)
    assert ys.dtype == dtype
    assert torch.allclose(ys[:, 0].double(), torch.exp(-t.double()), atol=2e-2)


@pytest.mark.parametrize("options", [{"device_loop": True}, {"per_sample": True}])
def test_float16_solves_on_the_other_loops(options):
    t = torch.tensor([0.0, 1.0, 3.0])
    ys = hn.odeint(decay, torch.ones(2, 1, dtype=torch.float16), t, rtol=1e-3, atol=1e-3, options=options)
    assert torch.allclose(ys[:, 0, 0].double(), torch.exp(-t.double()), atol=2e-2)


def test_float16_with_tolerances_below_its_precision_says_so():
    # the default rtol=1e-7 is below float16's resolution: the honest failure is the tolerance, not an event
    with deadline(60), pytest.raises(SolverError, match="tolerances too tight for the dtype") as info:
        hn.odeint(decay, torch.ones(1, dtype=torch.float16), T01)
    assert "event" not in str(info.value)
