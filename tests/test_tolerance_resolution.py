"""Tolerances finer than the state's dtype can resolve: a warning that names the dtype's unit roundoff.

An element's error is measured against ``atol + rtol * |y|``; below ``u * |y|`` (u = eps / 2, the spacing of
the numbers at y relative to y) no step can meet it. The solve went on without a word: float32 ``adams``
at rtol = atol = 1e-12 on y' = (y1, -y0) over [0, 10] took 67,509 steps and ended in STEP_UNDERFLOW,
``tsit5`` reached MAX_STEPS after 200,000 attempts, and a float16 solve with the default tolerances
underflowed after one step. scipy's ``solve_ivp`` warns in this situation too (and raises rtol to
100 eps); torchdiffeq has no check. The warning keeps the tolerances as given (odeint's steps stay
torchdiffeq's).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _sde_problems import Decay

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("one_thread")

# float32's u = eps / 2 as the message prints it (a regular expression)
BELOW_U32 = r"is below the unit roundoff of torch.float32 \(u = eps/2 = 5.96e-08\)"


def decay(t, y):
    return -y


def pair_decay(t, y):
    return (-y[0], -y[1])


def short_times(dtype=torch.float32) -> torch.Tensor:
    # a span of 1e-3 keeps the sub-resolution solves to a few steps: the warning is what is tested
    return torch.tensor([0.0, 1e-3], dtype=dtype)


ODE_CALLS = {
    "odeint-dopri5": lambda y0, r, a: hn.odeint(decay, y0, short_times(), rtol=r, atol=a),
    "odeint-adams": lambda y0, r, a: hn.odeint(decay, y0, short_times(), rtol=r, atol=a, method="adams"),
    "odeint-kvaerno5": lambda y0, r, a: hn.odeint(decay, y0, short_times(), rtol=r, atol=a, method="kvaerno5"),
    "odeint-scipy": lambda y0, r, a: hn.odeint(decay, y0, short_times(), rtol=r, atol=a, method="scipy_solver"),
    "solve": lambda y0, r, a: hn.solve(decay, y0, short_times(), controller=hn.PIDController(rtol=r, atol=a)),
    "odeint_adjoint": lambda y0, r, a: hn.odeint_adjoint(decay, y0, short_times(), rtol=r, atol=a, adjoint_params=()),
}


@pytest.mark.parametrize("call", list(ODE_CALLS.values()), ids=list(ODE_CALLS))
def test_a_float32_tolerance_below_the_unit_roundoff_warns(call):
    y0 = torch.tensor([1.0, 2.0])
    with pytest.warns(UserWarning, match="rtol=1e-12 " + BELOW_U32):
        call(y0, 1e-12, 1e-14)


@pytest.mark.parametrize(
    ("rtol", "atol", "count"),
    [
        (torch.tensor([1e-5, 1e-10]), 1e-12, 1),  # per component: only the second element is below
        (0.0, 1e-12, 2),  # purely absolute, far below the spacing of the numbers near 1 and 2
        (torch.tensor(1e-12), torch.tensor([1e-12, 1e-3]), 1),  # atol covers the second element
    ],
    ids=["per-component-rtol", "rtol-0", "per-component-atol"],
)
def test_the_warning_counts_the_elements_below_the_resolution(rtol, atol, count):
    with pytest.warns(UserWarning, match=rf"at {count} of the 2 initial state elements"):
        hn.odeint(decay, torch.tensor([1.0, 2.0]), short_times(), rtol=rtol, atol=atol)


def test_a_tuple_state_with_a_tolerance_per_tensor_warns_for_its_fine_part():
    y0 = (torch.tensor([1.0, 2.0]), torch.tensor([3.0]))
    with pytest.warns(UserWarning, match="at 1 of the 3 initial state elements"):
        hn.odeint(pair_decay, y0, short_times(), rtol=(1e-5, 1e-10), atol=1e-12)


@pytest.mark.parametrize("method", ["dopri5", "kvaerno5"])  # kvaerno5 integrates the complex state as its real form
def test_a_complex64_state_is_judged_by_float32(method):
    y0 = torch.tensor([1.0 + 1.0j, 2.0])
    with pytest.warns(UserWarning, match=BELOW_U32):
        hn.odeint(decay, y0, short_times(), rtol=1e-10, atol=1e-12, method=method)


def test_the_warning_points_at_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hn.odeint_adjoint(decay, torch.ones(2), short_times(), rtol=1e-12, atol=0.0, adjoint_params=())
    assert [w.filename for w in caught if "unit roundoff" in str(w.message)] == [__file__]


@pytest.mark.parametrize(
    ("y0", "rtol", "atol"),
    [
        (torch.tensor([1.0, 2.0]), 1e-7, 1e-9),  # odeint's defaults on float32: 1e-7 is above u = 5.96e-8
        (torch.tensor([1.0, 2.0], dtype=torch.float64), 1e-13, 1e-15),  # float64: u = 1.1e-16
        (torch.tensor([1.0, 2.0]), 1e-12, 1e-6),  # atol dominates: the scale 1e-6 is above u * |y0| = 1.2e-7
        (torch.tensor([1.0, 2.0]), 0.0, 1e-6),  # purely absolute, and resolvable at |y0| <= 2
        (torch.tensor([0.0, 0.0]), 1e-12, 1e-12),  # y0 = 0: nothing at the initial state to compare with
    ],
    ids=["float32-defaults", "float64", "atol-covers", "absolute", "zero-state"],
)
def test_resolvable_tolerances_are_quiet(y0, rtol, atol):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hn.odeint(decay, y0, short_times(y0.dtype), rtol=rtol, atol=atol)


def test_float16_with_the_default_tolerances_warns_before_it_underflows():
    # the measured reason for the warning: odeint's default rtol 1e-7 is far below float16's u = 4.9e-4,
    # and the solve takes 188 attempts (84 accepted: only rounding noise, exactly 0 at times, passes the
    # test) where 3 do at a tolerance float16 resolves, with no gain in accuracy
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float16)
    t = torch.tensor([0.0, 1.0], dtype=torch.float16)
    with pytest.warns(
        UserWarning, match=r"rtol=1e-07 is below the unit roundoff of torch.float16 \(u = eps/2 = 0.000488\)"
    ):
        tight = hn.solve(decay, y0, t, throw=False)
    # at tolerances float16 can resolve the same solve succeeds: 5e-3 is five times its tolerance and float16's eps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = hn.solve(decay, y0, t, controller=hn.PIDController(rtol=1e-3, atol=1e-3))
    torch.testing.assert_close(sol.ys[-1].double(), y0.double() * math.exp(-1), rtol=5e-3, atol=0)
    assert tight.stats.n_accepted + tight.stats.n_rejected > 10 * (sol.stats.n_accepted + sol.stats.n_rejected)
    assert tight.status == hn.Status.SUCCESS  # no better than at 1e-3: within the same 5e-3 of exp(-1)
    torch.testing.assert_close(tight.ys[-1].double(), y0.double() * math.exp(-1), rtol=5e-3, atol=0)


def test_adaptive_sdeint_warns_for_a_tolerance_below_the_unit_roundoff():
    # float32 at rtol = atol = 1e-12 took 192 s (every step shrunk to dt_min = 1e-5) without a word
    y0 = torch.ones(2, 3)
    with pytest.warns(UserWarning, match="rtol=1e-12 " + BELOW_U32):
        hn.sdeint(
            Decay(), y0, [0.0, 0.1], method="milstein", adaptive=True, rtol=1e-12, atol=1e-12, dt=0.05, dt_min=0.05
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # fixed steps do not use the tolerances; float64 resolves them (those steps held at dt_min warn of that)
        hn.sdeint(Decay(), y0, [0.0, 0.1], method="milstein", rtol=1e-12, atol=1e-12, dt=0.05)
        hn.sdeint(
            Decay(), y0.double(), [0.0, 0.1], method="milstein", adaptive=True, rtol=1e-12, atol=1e-12, dt=0.05,
            dt_min=0.05,
        )  # fmt: skip
    assert not [w for w in caught if "unit roundoff" in str(w.message)]


def test_adaptive_sdeint_adjoint_warns_for_a_backward_tolerance_below_the_unit_roundoff():
    y0 = torch.ones(2, 3)
    with pytest.warns(UserWarning, match="adjoint_rtol=1e-12 is below the unit roundoff of torch.float32"):
        hn.sdeint_adjoint(
            Decay(), y0, [0.0, 0.1], method="milstein", dt=0.05, dt_min=0.05, adjoint_params=(),
            adjoint_adaptive=True, adjoint_rtol=1e-12, adjoint_atol=1e-12,
        )  # fmt: skip


def test_odeint_adjoint_warns_for_backward_tolerances_below_the_unit_roundoff():
    # the backward solve's own tolerances, given apart from the forward ones (which are fine here)
    y0 = torch.ones(2, requires_grad=True)
    with pytest.warns(UserWarning, match="adjoint_rtol=1e-12 " + BELOW_U32):
        ys = hn.odeint_adjoint(decay, y0, short_times(), adjoint_params=(), adjoint_rtol=1e-12, adjoint_atol=1e-14)
        ys.sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ys = hn.odeint_adjoint(decay, y0, short_times(), adjoint_params=(), adjoint_rtol=1e-6, adjoint_atol=1)
        ys.sum().backward()
