"""The variable-order multistep methods (adams, bdf, lsoda) choose step and order in the norm that the
loop accepts steps with.

Their step and order selection estimated the error in an RMS norm over the whole state, whatever norm
the loop's error test used: a tuple state's largest RMS of its parts (torchdiffeq's default), the
adjoint's mixed norm, a user's ``norm``. Where the loop's norm is stricter the method planned steps the
loop rejected, and the failures sent the order back to one again and again: an oscillator (2
elements) beside 50 slowly decaying elements, at rtol 1e-10, took 19000 evaluations where the
oscillator alone takes 413, and ended 240x less accurate.
"""

from __future__ import annotations

import math

import pytest
import torch

import hybrid_node as hn
from hybrid_node.solvers.multistep import Nordsieck

torch.set_num_threads(1)  # small tensors: one thread is fastest
F64 = torch.float64
T_END = 20.0
N_SLOW = 50


def _oscillator(t, x):
    return torch.stack([x[1], -x[0]])


def _with_slow(t, y):
    """The oscillator in y[:2] beside N_SLOW elements that decay at rate 0.01 (a small error each)."""
    return torch.cat([_oscillator(t, y[:2]), -0.01 * y[2:]])


def _parts(x: torch.Tensor) -> torch.Tensor:
    """The largest RMS of the two parts (oscillator, slow elements): a tuple state's norm."""
    return torch.maximum(x[:2].pow(2).mean().sqrt(), x[2:].pow(2).mean().sqrt())


class _Counted:
    def __init__(self, f):
        self.f, self.n = f, 0

    def __call__(self, t, y):
        self.n += 1
        return self.f(t, y)


def _oscillator_error(x: torch.Tensor) -> float:
    return float((x - torch.tensor([math.cos(T_END), -math.sin(T_END)], dtype=F64)).abs().max())


@pytest.mark.parametrize("family", ["adams", "lsoda"])
def test_step_and_order_in_the_loops_norm(family):
    """With the loop's norm the slow elements cost nothing: the work and the error of the oscillator
    solved alone (which the parts norm makes the same error test)."""
    tol = 1e-10
    times = torch.tensor([0.0, T_END], dtype=F64)
    alone = _Counted(_oscillator)
    ref = hn.solve(
        alone,
        torch.tensor([1.0, 0.0], dtype=F64),
        times,
        solver=Nordsieck(family=family),
        controller=hn.PIDController(rtol=tol, atol=tol),
    )
    both = _Counted(_with_slow)
    y0 = torch.cat([torch.tensor([1.0, 0.0], dtype=F64), torch.ones(N_SLOW, dtype=F64)])
    sol = hn.solve(
        both,
        y0,
        times,
        solver=Nordsieck(family=family, norm=_parts),
        controller=hn.PIDController(rtol=tol, atol=tol, norm=_parts),
    )
    # the slow elements' own errors are far below the oscillator's, so the steps may differ only where
    # their weights shift a decision near a threshold: within 20% (in the RMS over all elements: 46x)
    assert both.n <= 1.2 * alone.n, (both.n, alone.n)
    assert sol.stats.n_rejected <= max(2 * ref.stats.n_rejected, 10)
    # the global error of the oscillator (~1e-9 at rtol 1e-10) within 2x of the solve alone (in the RMS
    # over all elements: 240x)
    assert _oscillator_error(sol.ys[-1, :2]) <= 2.0 * _oscillator_error(ref.ys[-1]) + 1e-12


def test_with_tolerances_takes_the_norm_and_keeps_one_set():
    solver = Nordsieck().with_tolerances(1e-6, 1e-8, norm=_parts)
    assert solver.norm is _parts and (solver.rtol, solver.atol) == (1e-6, 1e-8)
    # a later call without a norm (the solve's own tolerances) keeps the one set
    again = solver.with_tolerances(1e-5, 1e-7)
    assert again.norm is _parts and again.rtol == 1e-5
    assert Nordsieck().with_tolerances(1e-6, 1e-8).norm is None


def test_tuple_state_through_odeint_costs_what_its_parts_cost():
    """torchdiffeq's tuple-state norm (the largest RMS of the parts) reaches the method's step selection."""
    tol = 1e-10
    times = torch.tensor([0.0, T_END], dtype=F64)
    alone = _Counted(_oscillator)
    hn.odeint(alone, torch.tensor([1.0, 0.0], dtype=F64), times, method="adams", rtol=tol, atol=tol)
    both = _Counted(lambda t, y: (_oscillator(t, y[0]), -0.01 * y[1]))
    y0 = (torch.tensor([1.0, 0.0], dtype=F64), torch.ones(N_SLOW, dtype=F64))
    # 3x the oscillator's steps at most (it takes ~220): the solve that goes astray ends early (a SolverError)
    hn.odeint(both, y0, times, method="adams", rtol=tol, atol=tol, options={"max_num_steps": 660})
    assert both.n <= 1.2 * alone.n, (both.n, alone.n)  # as the flat test above (now: 46x)
