"""The step floor of adaptive solves far from t = 0 (:func:`hybrid_node.loop.core.step_floor`).

The floor ends a float32 solve that creeps on with steps that cannot change its state; taken from
``|t|`` alone it also failed every float32 solve whose steps are below ``eps |t| / 4``, however well
resolved: ``y' = -10 y`` on [1e6, 1e6 + 1] (a floor of 0.03, steps of 0.02), which torchdiffeq solves.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import deadline

import hybrid_node as hn
from hybrid_node import SolverError, Status
from hybrid_node.loop import core

F32_EPS = torch.finfo(torch.float32).eps


def decay(t, y):
    return -10 * y


def grow(t, y):
    return y


@pytest.mark.parametrize("t0", [1e6, -1e6, 2.0**24])
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
@pytest.mark.parametrize("t_dtype", [torch.float64, torch.float32])
def test_float32_solve_far_from_zero_matches_the_exact_solution(method, t0, t_dtype):
    # float32 times: 1e6 + 1 and 2^24 + 2 are exact float32 numbers (2^24 + 1 is not)
    t = torch.tensor([t0, t0 + 2.0], dtype=t_dtype)
    ys = hn.odeint(decay, torch.ones(1), t, rtol=1e-5, atol=1e-7, method=method)
    # rtol 1e-5 per step on a decaying state of size <= 1 bounds the global error by about 1e-5 (the
    # same solve from t = 0, whose floor was never in the way, errs by at most 3e-7)
    assert float(ys[-1, 0]) == pytest.approx(math.exp(-20.0), abs=1e-5)
    # the field is autonomous: the solve is the one from t = 0, to float32 rounding over its steps
    ref = hn.odeint(decay, torch.ones(1), torch.tensor([0.0, 2.0]), rtol=1e-5, atol=1e-7, method=method)
    assert float(ys[-1, 0]) == pytest.approx(float(ref[-1, 0]), abs=1e-6)


def test_float32_solve_far_from_zero_with_default_tolerances():
    t = torch.tensor([1e6, 1e6 + 1.0], dtype=torch.float64)
    ys = hn.odeint(decay, torch.ones(1), t)
    # torchdiffeq 0.2.5 errs by 2.5e-10 here, hybrid_node by 2.8e-10; rtol = 1e-7 bounds it by ~1e-7
    assert float(ys[-1, 0]) == pytest.approx(math.exp(-10.0), abs=1e-7)


@pytest.mark.parametrize("t0", [0.0, 1e6, -1e6])
def test_overflowing_float32_solve_far_from_zero_still_ends(t0):
    # the floor's purpose: a float32 overflow ends with its status instead of creeping on forever
    with deadline(60), pytest.raises(SolverError, match="NaN or infinite") as info:
        hn.odeint(grow, torch.ones(1), torch.tensor([t0, t0 + 1000.0], dtype=torch.float64))
    assert info.value.status is Status.NONFINITE
    # e^t overflows float32 at t = log(max) = 88.72 after the start; 1e-3 relative: the last steps' size
    assert info.value.t - t0 == pytest.approx(math.log(torch.finfo(torch.float32).max), rel=1e-3)


@pytest.mark.parametrize("t", [0.0, 0.5, -3.0, 88.7, 1e6, -1e6, 1e13])
@pytest.mark.parametrize("origin", [0.0, 1e6, -1e6, 3.0])
@pytest.mark.parametrize("eps", [F32_EPS, core._EPS])
def test_floor_with_an_origin_is_never_above_the_floor_without(t, origin, eps):
    without = core.step_floor(core.FLOAT, t, 0.0, eps)
    with_origin = core.step_floor(core.FLOAT, t, 0.0, eps, origin)
    assert with_origin <= without
    if origin == 0.0:  # a solve from 0 keeps its floor exactly
        assert with_origin == without
    # never below float64's resolution of the host time (a step there would not move it)
    assert with_origin >= 0.25 * core._EPS * abs(t)
    # the tensor namespace gives the same number (the loops on 0-d tensors share the formula)
    as_tensor = core.step_floor(core.TENSOR, torch.tensor(t, dtype=torch.float64), 0.0, eps, origin)
    assert float(as_tensor) == with_origin


# the other loops take the floor from the solve's start too: each on y' = -10 y over [1e6, 1e6 + 1]
# in float32 (a floor of eps |t| / 4 = 0.03 from |t| alone, against steps of about 0.02)
FAR = torch.tensor([1e6, 1e6 + 1.0], dtype=torch.float64)


def _solve_far(loop: str, t: torch.Tensor) -> float:
    """y(t[1]) of y' = -10 y, y(t[0]) = 1, in float32 through ``loop``."""
    if loop == "per_sample":
        return float(hn.odeint(decay, torch.ones(3, 1), t, options={"per_sample": True})[-1, 1, 0])
    if loop == "device_loop":
        return float(hn.odeint(decay, torch.ones(1), t, options={"device_loop": True})[-1, 0])
    if loop == "nonterminal_event":  # a hn.Event solve (its crossing is checked below)
        sol = hn.solve(decay, torch.ones(1), t, event=hn.Event(lambda s, y: y[0] - 0.5))
        return float(sol.ys[-1, 0])
    # the replayed forward solve of DirectBackprop(checkpoints=k), and its gradient dy(t1)/dy0 = y(t1)
    y0 = torch.ones(1, requires_grad=True)
    controller = hn.PIDController(rtol=1e-7, atol=1e-9)
    sol = hn.solve(decay, y0, t, controller=controller, sensitivity=hn.DirectBackprop(checkpoints=2), adjoint_params=())
    (grad,) = torch.autograd.grad(sol.ys[-1].sum(), y0)
    assert float(grad) == pytest.approx(float(sol.ys[-1, 0].detach()), rel=1e-5)  # linear: the same number
    return float(sol.ys[-1, 0].detach())


@pytest.mark.parametrize("loop", ["per_sample", "device_loop", "nonterminal_event", "checkpointed"])
def test_other_loops_solve_float32_far_from_zero(loop):
    with deadline(120):
        far = _solve_far(loop, FAR)
    # default rtol 1e-7 (checkpointed: the same) bounds the global error by about 1e-7 (the host loop: 2.8e-10)
    assert far == pytest.approx(math.exp(-10.0), abs=1e-7)
    # from t = 0, where the floor was never in the way: the same steps up to float32 rounding
    assert far == pytest.approx(_solve_far(loop, FAR - 1e6), rel=1e-4)


def test_event_searches_far_from_zero_in_float32():
    level = math.exp(-10.0)  # reached at t0 + 1
    t0 = torch.tensor(1e6, dtype=torch.float64)
    with deadline(120):
        t_ps, ys_ps = hn.odeint_event(
            decay, torch.ones(2, 1), t0, event_fn=lambda t, y: y[:, 0] - level, per_sample=True, t_end=1e6 + 2
        )
        t_1, ys_1 = hn.odeint_event(decay, torch.ones(1), t0, event_fn=lambda t, y: y[0] - level, t_end=1e6 + 2)
        sol = hn.solve(decay, torch.ones(1), FAR, event=hn.Event(lambda s, y: y[0] - 0.5))
    # the state errs by ~1e-7 relative (rtol), which moves the root by 1e-7 / 10 (y'/y = -10), and
    # the event time's float64 resolution at 1e6 is 1.2e-10; 1e-5 leaves room for float32 states
    torch.testing.assert_close(t_ps - 1e6, torch.ones(2, dtype=torch.float64), rtol=0.0, atol=1e-5)
    assert float(t_1) - 1e6 == pytest.approx(1.0, abs=1e-5)
    assert [float(e.t) - 1e6 for e in sol.events] == pytest.approx([math.log(2.0) / 10], abs=1e-5)
    # the event state is the level itself, to float32's resolution
    assert float(ys_ps[-1][0, 0]) == pytest.approx(level, rel=1e-5)
    assert float(ys_1[-1, 0]) == pytest.approx(level, rel=1e-5)


def test_reversible_adjoint_far_from_zero_matches_the_solve_from_zero():
    # a rotation: the reversible wrapper fails on contracting fields such as decay (its coupled mode
    # grows there, docs/reversible.md); its steps of ~0.014 lie below the old float32 step floor at 1e6
    def rotate(t, y):
        return 10 * torch.stack([y[1], -y[0]])

    def reversible(t):
        y0 = torch.tensor([1.0, 0.0], requires_grad=True)
        solver = hn.Reversible(hn.Tsit5())
        sol = hn.solve(rotate, y0, t, solver=solver, sensitivity=hn.ReversibleAdjoint(), adjoint_params=())
        (grad,) = torch.autograd.grad(sol.ys[-1, 0], y0)
        return sol.ys[-1].detach(), grad

    with deadline(120):
        far_y, far_grad = reversible(FAR)
    exact = torch.tensor([math.cos(10.0), -math.sin(10.0)])
    # default rtol 1e-7 on a float32 state over ~70 steps: measured 9e-7 from the exact rotation
    torch.testing.assert_close(far_y, exact, rtol=0.0, atol=1e-5)
    # the same steps from 1e6 as from 0 (an autonomous field), to float32 rounding; d y0(1) / d y0 = (cos 10, sin 10)
    zero_y, zero_grad = reversible(FAR - 1e6)
    torch.testing.assert_close(far_y, zero_y, rtol=0.0, atol=1e-5)
    torch.testing.assert_close(far_grad, zero_grad, rtol=0.0, atol=1e-5)
    torch.testing.assert_close(far_grad, torch.tensor([math.cos(10.0), math.sin(10.0)]), rtol=0.0, atol=1e-5)


@pytest.mark.slow
def test_whole_solve_graph_far_from_zero_in_float32():
    # options={"compile": True}: the graph reads the solve's start from its table of output times, so
    # one graph serves every start (the second solve must not fail with the first one's floor either)
    class Decay(torch.nn.Module):
        def forward(self, t, y):
            return -10 * y

    field = Decay()
    with torch.no_grad():
        for start in (1e6, 2.0**21, 0.0):
            t = torch.tensor([start, start + 1.0], dtype=torch.float64)
            ys = hn.odeint(field, torch.ones(1), t, options={"compile": True})
            # as the host loop: default rtol 1e-7 bounds the error by about 1e-7 (measured 3.1e-10)
            assert float(ys[-1, 0]) == pytest.approx(math.exp(-10.0), abs=1e-7)
