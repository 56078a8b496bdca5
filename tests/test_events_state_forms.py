"""Terminal and non-terminal events on tuple states and on complex states of implicit methods.

The loops integrate a flat state (a tuple state's parts joined; a complex state on an implicit method
as its real form, hybrid_node/_complex.py), while ``event_fn`` and ``on_event`` take the state as the
caller gave it, as ``func`` does. Every case is checked against its analytic event time.
"""

from __future__ import annotations

import math

import pytest
import torch

import hybrid_node as hn

F64 = torch.float64
T0 = torch.tensor(0.0, dtype=F64)


@pytest.mark.parametrize("method", ["dopri5", "kvaerno5", "bdf", "rk4"])
def test_tuple_state_event_sees_the_tuple(method):
    # q = (1, 2) and p = 3 decay as e^-t; p crosses 1.5 at ln 2. On the flat state (1, 2, 3) the old
    # loop's y[1] was the element 2, which crosses 1.5 at ln(4/3).
    y0 = (torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([3.0], dtype=F64))
    seen = []

    def event_fn(t, y):
        seen.append(isinstance(y, tuple) and tuple(part.shape for part in y))
        return y[1].sum() - 1.5

    options = {"step_size": 1e-3} if method == "rk4" else None
    t_e, (q, p) = hn.odeint_event(
        lambda t, y: (-y[0], -y[1]), y0, T0, event_fn=event_fn, method=method, options=options, rtol=1e-9, atol=1e-11
    )
    assert set(seen) == {((2,), (1,))}
    # the adaptive searches locate the root to the solve's tolerance; rk4 at h = 1e-3 to its O(h^4) error
    assert abs(float(t_e) - math.log(2.0)) < 1e-6
    torch.testing.assert_close(p[-1], torch.tensor([1.5], dtype=F64), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["dopri5", "kvaerno5", "rodas4", "bdf"])
def test_complex_state_event_sees_the_complex_state(method):
    # |y| = e^-t from |0.6 + 0.8i| = 1 crosses 0.5 at ln 2; on the real form (0.6, 0.8) e^-t of an
    # implicit method the old loop's |y|.sum() was |Re| + |Im| = 1.4 e^-t, which crosses at ln 2.8
    y0 = torch.tensor([0.6 + 0.8j], dtype=torch.complex128)
    dtypes = []

    def event_fn(t, y):
        dtypes.append(y.dtype)
        return y.abs().sum() - 0.5

    t_e, ys = hn.odeint_event(lambda t, y: -y, y0, T0, event_fn=event_fn, method=method, rtol=1e-9, atol=1e-11)
    assert set(dtypes) == {torch.complex128} and ys.dtype == torch.complex128
    assert abs(float(t_e) - math.log(2.0)) < 1e-6  # the solve's tolerance, with room for the root search


def test_complex_state_jump_on_an_implicit_method():
    # |y| = 0.5 at t = ln 2 and again at 2 ln 2 after each doubling: |y(2)| = 4 e^-2
    y0 = torch.tensor([0.6 + 0.8j], dtype=torch.complex128)
    event = hn.Event(lambda t, y: y.abs() - 0.5, on_event=lambda t, y: 2 * y)
    sol = hn.solve(
        lambda t, y: -y,
        y0,
        torch.tensor([0.0, 2.0], dtype=F64),
        solver=hn.Kvaerno5(),
        controller=hn.PIDController(rtol=1e-9, atol=1e-11),
        event=event,
    )
    assert [round(float(r.t), 6) for r in sol.events] == [round(math.log(2.0), 6), round(2 * math.log(2.0), 6)]
    exact = y0 * 4 * math.exp(-2.0)
    torch.testing.assert_close(sol.ys[-1], exact, rtol=1e-6, atol=1e-8)


def test_per_sample_events_refuse_a_complex_state_on_an_implicit_method():
    y0 = torch.tensor([[0.6 + 0.8j], [1.0 + 0.0j]], dtype=torch.complex128)
    with pytest.raises(ValueError, match="per-sample events need a real state"):
        hn.odeint_event(
            lambda t, y: -y, y0, T0, event_fn=lambda t, y: y.abs()[:, 0] - 0.5, method="kvaerno5", per_sample=True
        )
