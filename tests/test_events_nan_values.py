"""Event functions that return NaN during a solve are named, not taken for a root or a touch of zero.

``torch.sign(nan)`` is 0: before the check, a per-sample terminal event fired where its value
turned NaN (a sample of falling balls reported its impact at t = 0.2 instead of 0.639), and a
non-terminal event dropped the element's later crossing without a word.
"""

import math

import pytest
import torch

import hybrid_node as hn

G = 9.81
H = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)


def fall(t, y):
    return torch.stack([y[:, 1], torch.full_like(y[:, 1], -G)], 1)


def nan_for_ball_1_after(t_nan: float):
    """The height of each ball, but NaN for ball 1 (impact at sqrt(4 / g) = 0.639) from ``t_nan`` on."""

    def event_fn(t, y):
        late = torch.as_tensor(t) > t_nan
        return torch.where(late & (torch.arange(3) == 1), math.nan, y[:, 0])

    return event_fn


def test_per_sample_event_value_turning_nan_raises():
    y0 = torch.stack([H, torch.zeros(3, dtype=torch.float64)], 1)
    with pytest.raises(ValueError, match=r"event_fn returned NaN at t=.* element\(s\) \[1\]"):
        hn.odeint_event(fall, y0, 0.0, event_fn=nan_for_ball_1_after(0.2), per_sample=True, t_end=10.0)


@pytest.mark.parametrize("window", [(0.29, 0.31), (0.44, 0.46)])
def test_per_sample_nan_inside_a_step_raises(window):
    # NaN only on a window inside the first step [0, 0.5] (exact for a quadratic, so accepted): around
    # the interior sign check at 0.3, or around 0.45, where the bisection for ball 0's impact (0.4515)
    # looks first in its bracket [0.4, 0.5] between two checks
    y0 = torch.stack([H, torch.zeros(3, dtype=torch.float64)], 1)

    def event_fn(t, y):
        t = torch.as_tensor(t)
        return torch.where((t > window[0]) & (t < window[1]), math.nan, y[:, 0])

    with pytest.raises(ValueError, match="event_fn returned NaN"):
        hn.odeint_event(fall, y0, 0.0, event_fn=event_fn, per_sample=True, t_end=10.0, options={"first_step": 0.5})


def test_nonterminal_event_value_turning_nan_raises():
    y0 = torch.stack([H, torch.zeros(3, dtype=torch.float64)], 1)
    with pytest.raises(ValueError, match=r"event_fn returned NaN at t=.* element\(s\) \[1\].*state there is finite"):
        hn.solve(fall, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), event=hn.Event(nan_for_ball_1_after(0.2)))


def test_nan_of_a_fired_sample_is_not_read():
    # ball 0 fires at 0.4515 (in a step ending by 0.51: max_step 0.05); its value is NaN from 0.55 on,
    # which must not stop the others (0.639, 0.782)
    y0 = torch.stack([H, torch.zeros(3, dtype=torch.float64)], 1)

    def event_fn(t, y):
        late = torch.as_tensor(t) > 0.55
        return torch.where(late & (torch.arange(3) == 0), math.nan, y[:, 0])

    t_e, _ = hn.odeint_event(
        fall,
        y0,
        0.0,
        event_fn=event_fn,
        per_sample=True,
        t_end=10.0,
        rtol=1e-10,
        atol=1e-12,
        options={"max_step": 0.05},
    )
    # bisection to a few ulps on a dense output that is exact for a quadratic
    assert torch.allclose(t_e, torch.sqrt(2 * H / G), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method,options", [("dopri5", None), ("rk4", {"step_size": 0.05})])
def test_single_terminal_event_value_turning_nan_raises(method, options):
    # the shared-step terminal event (odeint_event without per_sample) took the NaN from t > 0.2 for
    # its root and reported the impact at t = 0.2 (the first ball's true impact is 0.4515)
    y0 = torch.stack([H, torch.zeros(3, dtype=torch.float64)], 1)
    with pytest.raises(ValueError, match=r"event_fn returned NaN at t=\S+ for element\(s\) \[1\]") as info:
        hn.odeint_event(fall, y0, 0.0, event_fn=nan_for_ball_1_after(0.2), method=method, options=options)
    # named where the loop first evaluates it after the value turned NaN (a step end or a bisection point)
    assert float(str(info.value).split("t=")[1].split(" ")[0]) > 0.2


def test_single_terminal_event_reverse_time_names_the_user_time():
    y0 = torch.stack([H, torch.zeros(3, dtype=torch.float64)], 1)

    def event_fn(t, y):
        return torch.where(torch.as_tensor(t) < -0.3, math.nan, y[:, 0] + 100.0)

    with pytest.raises(ValueError, match=r"event_fn returned NaN at t=-") as info:
        hn.odeint_event(fall, y0, 0.0, event_fn=event_fn, reverse_time=True)
    assert float(str(info.value).split("t=")[1].split(" ")[0]) < -0.3  # the user's time, not the solver's s = -t
