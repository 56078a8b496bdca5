"""Issue 19, points 1-6, 13 and 14: solves that hung, dtypes that failed, errors that did not say what to fix.

A hang is tested under a deadline (a SIGALRM that raises in the test), so a regression fails in
seconds instead of stalling the suite.
"""

from __future__ import annotations

import cmath
import math

import pytest
import torch
from conftest import deadline

import hybrid_node as hn
from hybrid_node import SolverError, Status

T01 = torch.tensor([0.0, 1.0])


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
    # (the oscillator: y' = -y alone may pass, its error estimates rounding to exactly 0 in float16)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float16)
    with deadline(60), pytest.raises(SolverError, match="tolerances too tight for the dtype") as info:
        hn.odeint(lambda t, y: torch.stack([y[1], -y[0]]), y0, T01)
    assert "event" not in str(info.value)


# ----------------------------------------------------------------------------------------------------
# 4: an event search that finds nothing ends, with "event not found before ..."
# ----------------------------------------------------------------------------------------------------


def oscillator(t, y):
    return torch.stack([y[1], -y[0]])


def test_event_search_has_a_default_step_cap(monkeypatch):
    # |y| stays 1, so y[0] - 2 never changes sign; the steps stay small: only a step cap ends it
    from hybrid_node.loop import dispatch

    assert dispatch.EVENT_MAX_STEPS < 2**31 - 1
    monkeypatch.setattr(dispatch, "EVENT_MAX_STEPS", 200)
    with deadline(60), pytest.raises(SolverError, match="event not found before t=.*max_num_steps=200") as info:
        hn.odeint_event(oscillator, torch.tensor([1.0, 0.0]), torch.tensor(0.0), event_fn=lambda t, y: y[0] - 2.0)
    assert info.value.status is Status.NO_EVENT


@pytest.mark.parametrize("reverse", [False, True])
def test_event_search_ends_at_t_end(reverse):
    with deadline(60), pytest.raises(SolverError, match="event not found before t_end=") as info:
        hn.odeint_event(
            oscillator,
            torch.tensor([1.0, 0.0]),
            torch.tensor(1.0),
            event_fn=lambda t, y: y[0] - 2.0,
            t_end=-9.0 if reverse else 11.0,
            reverse_time=reverse,
        )
    assert info.value.t == pytest.approx(-9.0 if reverse else 11.0)


def test_event_before_t_end_is_found():
    t_e, ys = hn.odeint_event(
        oscillator, torch.tensor([1.0, 0.0]), torch.tensor(0.0), event_fn=lambda t, y: y[0], t_end=5.0
    )
    assert float(t_e) == pytest.approx(math.pi / 2, abs=1e-5)


def test_fixed_grid_event_search_ends_at_t_end_and_at_its_cap():
    with deadline(60), pytest.raises(SolverError, match="event not found before t=5") as info:
        hn.odeint_event(
            oscillator,
            torch.tensor([1.0, 0.0]),
            torch.tensor(0.0),
            event_fn=lambda t, y: y[0] - 2.0,
            method="rk4",
            options={"step_size": 0.1},
            t_end=5.0,
        )
    assert info.value.status is Status.NO_EVENT
    with deadline(60), pytest.raises(SolverError, match=r"event not found before t=3\b.*30 steps"):
        hn.odeint_event(
            oscillator,
            torch.tensor([1.0, 0.0]),
            torch.tensor(0.0),
            event_fn=lambda t, y: y[0] - 2.0,
            method="rk4",
            options={"step_size": 0.1, "max_num_steps": 30},
        )


@pytest.mark.parametrize("t_end", [-1.0, math.inf, "soon"])
def test_invalid_t_end_is_named(t_end):
    with pytest.raises((ValueError, TypeError), match="t_end"):
        hn.odeint_event(
            oscillator, torch.tensor([1.0, 0.0]), torch.tensor(0.0), event_fn=lambda t, y: y[0], t_end=t_end
        )


# ----------------------------------------------------------------------------------------------------
# 5: fixed-step solves have a step cap, checked before the solve starts
# ----------------------------------------------------------------------------------------------------


def test_fixed_step_grid_longer_than_the_cap_is_refused_up_front():
    with deadline(30), pytest.raises(ValueError, match=r"step_size=1e-13 .* 10,000,000,000,000 steps.*max_num_steps"):
        hn.odeint(decay, torch.ones(1), T01, method="euler", options={"step_size": 1e-13})
    with deadline(30), pytest.raises(ValueError, match="max_num_steps"):
        hn.solve(decay, torch.ones(1), T01, solver=hn.Euler(), controller=hn.ConstantStepSize(step_size=1e-13))


def test_fixed_step_cap_can_be_raised_and_lowered():
    ys = hn.odeint(decay, torch.ones(1), T01, method="euler", options={"step_size": 1e-3, "max_num_steps": 1000})
    assert float(ys[-1]) == pytest.approx(math.exp(-1), abs=1e-3)
    with pytest.raises(ValueError, match="takes 1,000 steps, more than max_num_steps=999"):
        hn.odeint(decay, torch.ones(1), T01, method="euler", options={"step_size": 1e-3, "max_num_steps": 999})
    with pytest.raises(ValueError, match="max_num_steps must be a positive int"):
        hn.ConstantStepSize(step_size=0.1, max_num_steps=0)


# ----------------------------------------------------------------------------------------------------
# 6: rtol = atol = 0 is an invalid tolerance, not a NaN state
# ----------------------------------------------------------------------------------------------------


def test_zero_tolerances_are_refused_as_invalid():
    with pytest.raises(ValueError, match="rtol and atol are both 0.*not a valid tolerance") as info:
        hn.odeint(decay, torch.ones(1), T01, rtol=0, atol=0)
    assert "NaN" not in str(info.value)
    with pytest.raises(ValueError, match="rtol and atol are both 0 for some state elements"):
        hn.odeint(decay, torch.ones(2), T01, rtol=torch.tensor([0.0, 1e-6]), atol=torch.tensor([0.0, 1e-8]))
    # one of them zero is fine
    ys = hn.odeint(decay, torch.ones(1, dtype=torch.float64), T01, rtol=1e-8, atol=0)
    assert float(ys[-1]) == pytest.approx(math.exp(-1), rel=1e-6)


# ----------------------------------------------------------------------------------------------------
# 13: a wrong options or event_fn result is named
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [0.1, [("step_size", 0.1)], "rk4"])
def test_options_that_are_not_a_mapping_are_named(options):
    with pytest.raises(TypeError, match="options must be a dict"):
        hn.odeint(decay, torch.ones(1), T01, options=options)


def test_adjoint_options_that_are_not_a_mapping_are_named():
    with pytest.raises(TypeError, match="adjoint_options must be a dict"):
        hn.odeint_adjoint(decay, torch.ones(1), T01, adjoint_options=0.1, adjoint_params=())


def test_event_fn_returning_a_float_is_named():
    with pytest.raises(TypeError, match="event_fn must return a tensor, got float"):
        hn.odeint_event(decay, torch.ones(1), torch.tensor(0.0), event_fn=lambda t, y: 0.5 - float(y[0]))


def test_event_fn_returning_nan_at_the_start_is_named():
    # a NaN has no sign: before, every step "changed sign" and a wrong event was reported at once
    with pytest.raises(ValueError, match="event_fn returned NaN at the start"):
        hn.odeint_event(decay, torch.ones(1), torch.tensor(0.0), event_fn=lambda t, y: y * math.nan)


def test_event_fn_returning_a_complex_tensor_is_named():
    with pytest.raises(TypeError, match="event_fn must return a real tensor"):
        hn.odeint_event(decay, torch.ones(1), torch.tensor(0.0), event_fn=lambda t, y: (y - 0.5) * 1j)


# ----------------------------------------------------------------------------------------------------
# 14: complex states on the explicit methods (error norms on magnitudes), as torchdiffeq
# ----------------------------------------------------------------------------------------------------

A_COMPLEX = torch.tensor([[-0.1 + 1j, 0.3], [0.2j, -0.5 + 0.5j]], dtype=torch.complex128)


def complex_field(t, y):
    return y @ A_COMPLEX.T.to(y.dtype) + torch.cos(t).to(y.dtype)


def real_field(t, y):
    # the same system on torch.view_as_real(y): (..., 2, 2) real and imaginary parts
    return torch.view_as_real(complex_field(t, torch.view_as_complex(y.contiguous())))


@pytest.mark.parametrize(
    "method, options",
    [
        ("dopri5", {}),
        ("tsit5", {}),
        ("bosh3", {}),
        ("dopri8", {}),
        ("rk4", {"step_size": 0.01}),
        ("explicit_adams", {"step_size": 0.01}),
        ("dopri5", {"device_loop": True}),
    ],
)
def test_complex_state_matches_the_real_system(method, options):
    t = torch.linspace(0.0, 3.0, 5, dtype=torch.float64)
    y0 = torch.tensor([[1 + 0.5j, -0.2j]] * 3, dtype=torch.complex128)
    ours = hn.odeint(complex_field, y0, t, method=method, options=options, rtol=1e-10, atol=1e-12)
    assert ours.dtype == torch.complex128
    real = hn.odeint(real_field, torch.view_as_real(y0), t, method="dopri5", rtol=1e-12, atol=1e-14)
    tol = 1e-6 if "step_size" in options else 1e-8
    assert torch.allclose(ours, torch.view_as_complex(real.contiguous()), atol=tol)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_state_agrees_with_torchdiffeq(dtype):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    t = torch.linspace(0.0, 3.0, 5, dtype=dtype.to_real())
    y0 = torch.tensor([[1 + 0.5j, -0.2j]], dtype=dtype)
    ours = hn.odeint(complex_field, y0, t, rtol=1e-6, atol=1e-8)
    theirs = torchdiffeq.odeint(complex_field, y0, t, rtol=1e-6, atol=1e-8)
    assert ours.dtype == dtype
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_complex_state_has_gradients_by_direct_backpropagation():
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    y0 = torch.tensor([1 + 0.5j], dtype=torch.complex128)
    y1 = hn.odeint(lambda t, y: (w * 1j - 0.1) * y, y0, t, rtol=1e-10, atol=1e-12)[-1]
    (grad,) = torch.autograd.grad(y1.real.sum(), w)
    # y1 = y0 exp((i w - 0.1) t): d Re(y1) / dw = Re(i t y1)
    exact = (1j * 2.0 * y0 * cmath.exp((0.7j - 0.1) * 2.0)).real.sum()
    assert float(grad) == pytest.approx(float(exact), rel=1e-7)


def test_complex_state_where_unsupported_is_refused_honestly():
    # the implicit methods integrate complex states since (tests/test_complex_implicit.py)
    y0 = torch.tensor([1 + 0.5j], dtype=torch.complex128)
    with pytest.raises(ValueError, match="per_sample does not integrate complex states"):
        hn.odeint(complex_field, y0.expand(3, 2), T01.double(), options={"per_sample": True})
    with pytest.raises(TypeError, match="use y0.float\\(\\) for integer"):
        hn.odeint(decay, torch.ones(1, dtype=torch.int64), T01)
