"""Choose the loop that serves a problem, and turn a loop's result into a :class:`~hybrid_node.Solution`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._errors import SolverError, Status
from .._problem import Problem, all_finite
from .._solution import Solution
from .._term import Term
from ..controllers import ConstantStepSize
from .device import check_device_loop, integrate_device
from .host import Integration, integrate_adaptive, integrate_fixed
from .per_sample import check_per_sample, integrate_per_sample
from .whole import applies as whole_solve_applies
from .whole import integrate_whole

MAX_EVENT_GRID_STEPS = 10**6  # a fixed-grid event solve gives up after this many steps


def integrate(
    problem: Problem,
    term: Term,
    y0: torch.Tensor,
    ts: Sequence[float],
    *,
    event_fn=None,
    dense: bool = False,
    throw: bool = True,
) -> Integration:
    """Run the loop that fits the problem's controller on the given term, state and times."""
    ctrl = problem.controller
    if isinstance(ctrl, ConstantStepSize):
        if event_fn is not None:
            if ctrl.step_size is None:
                raise ValueError("an event solve on a fixed grid needs options={'step_size': ...}.")
            grid = (ts[0] + k * float(ctrl.step_size) for k in range(MAX_EVENT_GRID_STEPS))
        else:
            grid = ctrl.grid(problem.func, y0, torch.tensor(ts, dtype=torch.float64))
        return integrate_fixed(term, problem.solver, ctrl, grid, y0, ts, event_fn=event_fn, dense=dense)
    if whole_solve_applies(problem, event_fn, dense):  # compile=True: the whole solve as one graph
        result = integrate_whole(
            term, problem.solver, ctrl, y0, ts, rtol=problem.rtol, atol=problem.atol, norm=problem.norm, throw=throw
        )
        if result is not None:
            return result
    if ctrl.device_loop and not dense:  # dense output over the interval: host loop
        check_device_loop(problem, event_fn)
        return integrate_device(
            term, problem.solver, ctrl, y0, ts, rtol=problem.rtol, atol=problem.atol, norm=problem.norm, throw=throw
        )
    if ctrl.per_sample:
        check_per_sample(problem, event_fn)
        if problem.solver.compile:
            raise ValueError("compiled steps cannot be combined with per_sample step control; drop one of them.")
        if dense:
            raise ValueError("per_sample has no dense output over the whole interval; use the shared-step solver.")
        return integrate_per_sample(
            term, problem.solver, ctrl, y0, ts, rtol=problem.rtol, atol=problem.atol, throw=throw
        )
    return integrate_adaptive(
        term,
        problem.solver,
        ctrl,
        y0,
        ts,
        rtol=problem.rtol,
        atol=problem.atol,
        norm=problem.norm,
        jump_t=problem.jump_t,
        step_t=problem.step_t,
        event_fn=event_fn,
        dense=dense,
        throw=throw,
    )


def to_solution(problem: Problem, integration, throw: bool) -> Solution:
    ys = torch.stack(integration.ys)
    status = integration.status
    if status in (Status.SUCCESS, Status.EVENT) and not all_finite(ys):
        # fixed-grid loops have no step decision to catch it: the first non-finite output reports it
        bad = int((~torch.isfinite(ys.reshape(len(ys), -1))).any(dim=1).nonzero()[0])
        t_bad = problem.ts[bad] if integration.event_t is None else integration.event_t
        if throw:
            sgn = -1.0 if problem.reverse else 1.0
            raise SolverError(
                Status.NONFINITE,
                sgn * t_bad,
                f"first non-finite output; the last finite one is at t={sgn * problem.ts[bad - 1]:.6g}",
            )
        status = Status.NONFINITE
    t_final = None
    if integration.event_t is not None:
        te = -integration.event_t if problem.reverse else integration.event_t
        t_final = torch.tensor(te, dtype=problem.t.dtype, device=problem.t.device)
    return Solution(ts=problem.t, ys=problem.unflatten(ys), stats=integration.stats, status=status, t_final=t_final)
