"""``ConstantStepSize.interp``: None ("not given", read as linear) is told apart from an explicit value.

The loops that interpolate between grid points read None as "linear"; the loops that never read the
setting (non-terminal ``hn.Event`` solves, per-sample terminal events, the Julia backend) refuse an explicit
value, "linear" included, instead of dropping it. Float64 throughout.

Reference values: on y' = -y with rk4 and h = 0.1 the grid states are rk4's; between two grid points the
linear output is their chord, the cubic one the Hermite interpolant of the states and the field's slopes
(Hairer, Norsett, Wanner, Solving ODEs I, 2nd ed., Section II.6), both written out below from the grid states.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from bouncing import G, fall, ground

import hybrid_node as hn
from hybrid_node import BackendError

pytestmark = pytest.mark.usefixtures("float64_default")


def _decay(t, y):
    return -y


def _rk4_outputs(controller: hn.ConstantStepSize) -> torch.Tensor:
    """Outputs at t = 0.05 (inside the first step of h = 0.1) and t = 0.1 (a grid point) of y' = -y."""
    t = torch.tensor([0.0, 0.05, 0.1])
    return hn.solve(_decay, torch.ones(1), t, solver=hn.RK4(), controller=controller).ys[:, 0]


def _rk4_step(y: float, h: float) -> float:
    """One classic RK4 step of y' = -y: y times the degree-4 Taylor polynomial of exp(-h)."""
    return y * (1 - h + h**2 / 2 - h**3 / 6 + h**4 / 24)


def test_default_interp_is_not_given_and_reads_as_linear():
    assert hn.ConstantStepSize().interp is None
    y1 = _rk4_step(1.0, 0.1)
    default = _rk4_outputs(hn.ConstantStepSize(step_size=0.1))
    linear = _rk4_outputs(hn.ConstantStepSize(step_size=0.1, interp="linear"))
    cubic = _rk4_outputs(hn.ConstantStepSize(step_size=0.1, interp="cubic"))
    # the same float operations on both paths: bit-identical outputs
    assert torch.equal(default, linear)
    # the chord of the grid states (a lerp of two doubles: a few ulps)
    torch.testing.assert_close(float(default[1]), 0.5 * (1.0 + y1), rtol=1e-15, atol=1e-15)
    # the cubic Hermite at theta = 1/2: (y0 + y1) / 2 + h (f0 - f1) / 8 with f = -y
    hermite = 0.5 * (1.0 + y1) + 0.1 * (-1.0 + y1) / 8
    torch.testing.assert_close(float(cubic[1]), hermite, rtol=1e-15, atol=1e-15)
    # and the two differ by far more than rounding: the default is not the cubic one
    assert abs(float(default[1]) - float(cubic[1])) > 1e-4
    torch.testing.assert_close(float(default[2]), y1, rtol=1e-15, atol=1e-15)


def test_odeint_interp_option_keeps_its_meaning():
    t = torch.tensor([0.0, 0.05, 0.1])
    ys = {
        key: hn.odeint(_decay, torch.ones(1), t, method="rk4", options={"step_size": 0.1, **extra})[:, 0]
        for key, extra in (("default", {}), ("linear", {"interp": "linear"}), ("cubic", {"interp": "cubic"}))
    }
    assert torch.equal(ys["default"], ys["linear"])
    assert abs(float(ys["default"][1]) - float(ys["cubic"][1])) > 1e-4


def _drop(controller, **event_kwargs):
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    return hn.solve(fall, y0, torch.tensor([0.0, 1.0]), solver=hn.RK4(), controller=controller, **event_kwargs)


@pytest.mark.parametrize("interp", ["linear", "cubic"])
@pytest.mark.parametrize("kind", ["event", "per_sample"])
def test_event_loops_refuse_an_explicit_interp_linear_too(interp, kind):
    # "linear" passed silently before: it was the default's value, and the loops do not read it
    events = (
        {"event": ground(0.8)} if kind == "event" else {"event_fn": lambda t, y: y[:, 0], "per_sample_events": True}
    )
    with pytest.raises(ValueError, match=re.escape("do not read hn.ConstantStepSize(interp=...)") + ".*drop interp"):
        _drop(hn.ConstantStepSize(step_size=0.01, interp=interp), **events)


def test_event_loops_take_the_default_interp():
    # rk4 on fixed steps is exact on the fall (a quadratic) and so is its cubic Hermite dense output: the impact
    # times are sqrt(2 h / G) to rounding of the bisection (a few ulps; 1e-10 leaves room)
    exact = [math.sqrt(2 * h / G) for h in (2.0, 1.0)]
    sol = _drop(hn.ConstantStepSize(step_size=0.01), event=ground(0.8))
    first = [float(next(r.t for r in sol.events if r.index == (i,))) for i in range(2)]
    torch.testing.assert_close(first, exact, rtol=1e-10, atol=1e-10)
    sol = _drop(hn.ConstantStepSize(step_size=0.01), event_fn=lambda t, y: y[:, 0], per_sample_events=True)
    torch.testing.assert_close(sol.t_final.tolist(), exact, rtol=1e-10, atol=1e-10)


def test_equality_hash_and_repr_tell_given_from_not_given():
    # equal settings stay equal and hash alike; "not given" and "linear" differ, because one of them is refused
    # where the other is accepted (the event loops, the Julia backend), so a settings cache must not merge them
    assert hn.ConstantStepSize(step_size=0.1) == hn.ConstantStepSize(step_size=0.1)
    assert hash(hn.ConstantStepSize(interp="linear")) == hash(hn.ConstantStepSize(interp="linear"))
    assert hn.ConstantStepSize() != hn.ConstantStepSize(interp="linear")
    assert hn.ConstantStepSize(interp="linear") != hn.ConstantStepSize(interp="cubic")
    assert "interp=None" in repr(hn.ConstantStepSize())
    assert "interp='linear'" in repr(hn.ConstantStepSize(interp="linear"))


def test_an_unknown_interp_is_still_refused():
    with pytest.raises(ValueError, match="interp must be 'linear' or 'cubic'"):
        hn.ConstantStepSize(interp="quadratic")


def test_julia_backend_refuses_an_explicit_interp_linear_too():
    # the Julia solve lands its fixed steps on the output times (tstops): no interp is read there
    with pytest.raises(BackendError, match=re.escape("['interp']")):
        hn.solve(
            _decay,
            torch.ones(2),
            torch.linspace(0, 1, 3),
            solver=hn.RK4(),
            controller=hn.ConstantStepSize(step_size=0.1, interp="linear"),
            backend="julia",
        )
