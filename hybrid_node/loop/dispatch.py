"""Choose the loop that serves a problem, and turn a loop's result into a :class:`~hybrid_node.Solution`."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from .._errors import SolverError, Status
from .._problem import Problem, all_finite
from .._solution import Solution, Stats
from .._term import CALLBACK_NAMES, Term
from .._transforms import inside_transform, members
from ..controllers import ConstantStepSize, PIDController
from ..solvers.base import ExternalSolver
from .background import new_solve
from .device import check_device_loop, integrate_device
from .host import Integration, integrate_adaptive, integrate_fixed
from .per_sample import check_per_sample, integrate_per_sample
from .transformed import check_transformable, integrate_transformed, which_member
from .whole import applies as whole_solve_applies
from .whole import integrate_whole

#: an event search stops after this many steps unless ``max_num_steps`` is given: an event that never
#: happens would otherwise run on for the controller's default of 2**31 - 1 steps (days)
EVENT_MAX_STEPS = 10**5
MAX_EVENT_GRID_STEPS = EVENT_MAX_STEPS  # the old name, for a fixed-grid event search


class CheckedEvent:
    """``event_fn`` with its results checked, so a wrong one is named instead of failing inside the loop.

    Args:
        event_fn: the user's terminal event function ``event_fn(t, y)``.

    Raises (when called):
        TypeError: ``event_fn`` returned something other than a real tensor (a Python float, a
            complex or bool tensor), which the sign test cannot use.
        ValueError: its first value (at the start of the solve) is NaN: a NaN has no sign, so it
            would report an event at once.
    """

    def __init__(self, event_fn: Callable):
        self.event_fn = event_fn
        self.checked = False

    def __call__(self, t: torch.Tensor, y):
        g = self.event_fn(t, y)
        if not isinstance(g, torch.Tensor):
            raise TypeError(
                f"event_fn must return a tensor, got {type(g).__name__}; build it from t and y with torch "
                "operations (e.g. return y[..., 0] - 1.0, not float(y[0]) - 1.0), so the event time can be "
                "located and differentiated."
            )
        if not self.checked:
            if g.is_complex() or g.dtype == torch.bool:
                raise TypeError(
                    f"event_fn must return a real tensor whose sign change marks the event, got dtype {g.dtype}."
                )
            if bool(torch.isnan(g).any()):
                raise ValueError(
                    f"event_fn returned NaN at the start of the solve (t={float(t):g}); a NaN has no sign, so no "
                    "event could be located. Check event_fn at the initial state."
                )
            self.checked = True
        return g


def _event_cap(max_num_steps: int, default: int) -> int:
    """The step cap of an event search: the controller's when given, else :data:`EVENT_MAX_STEPS`."""
    return EVENT_MAX_STEPS if max_num_steps == default else max_num_steps


def _event_grid(ts: Sequence[float], h: float, cap: int, end: float | None) -> Iterator[float]:
    """The grid of a fixed-step event search: ``h`` apart from ts[0], at most ``cap`` steps, ending at ``end``."""
    for k in range(cap + 1):
        t = ts[0] + k * h
        if end is not None and t >= end:
            yield end
            return
        yield t


def callbacks_called(solver, controller) -> frozenset[str]:
    """The step callbacks (names without suffix) that a solve with these settings calls.

    An adaptive host loop calls all three; fixed steps have no accept/reject decision and call
    ``callback_step`` only; a solver with its own loop (scipy) and the device-resident and per-sample
    loops (whose steps are not decided one at a time on the host) call none.

    Args:
        solver: the solver object.
        controller: its controller.

    Returns:
        A subset of :data:`~hybrid_node._term.CALLBACK_NAMES`.
    """
    if isinstance(solver, ExternalSolver):
        return frozenset()
    if isinstance(controller, ConstantStepSize):
        return frozenset({"callback_step"})
    if controller.device_loop or controller.per_sample:
        return frozenset()
    return frozenset(CALLBACK_NAMES)


def warn_unsupported_callbacks(func, method: str, valid: frozenset[str], suffix: str = "") -> None:
    """Warn, as torchdiffeq does, about step callbacks on ``func`` that the solve will not call.

    Args:
        func: the user's field.
        method: the method's name, for the message.
        valid: the callbacks the solve calls (:func:`callbacks_called`).
        suffix: "" for the solve's callbacks, "_adjoint" for those of an adjoint's backward solve.
    """
    invalid = {name for name in CALLBACK_NAMES if name not in valid and hasattr(func, name + suffix)}
    if invalid:
        warnings.warn(f"Solver '{method}' does not support callbacks {invalid}", stacklevel=3)


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
    """Run the loop that fits the problem's controller on the given term, state and times.

    An event search (``event_fn``) is bounded: it ends at ``problem.event_t_end`` when given, and
    after ``max_num_steps`` steps (:data:`EVENT_MAX_STEPS` unless the controller sets it), with a
    NO_EVENT failure that says where the search stopped.

    Args:
        problem: the validated problem.
        term, y0, ts: the field, the flat initial state and the increasing output times (solver time).
        event_fn: terminal event function, or None.
        dense: keep every step's interpolant.
        throw: raise SolverError on failure, else report the status.

    Returns:
        The loop's :class:`Integration`.

    Raises:
        SolverError: the solve failed (with ``throw``); ValueError, TypeError: settings the loop cannot
            serve, or an event function whose result is not a real tensor.
    """
    new_solve()  # the graphs a worker compiles for earlier solves are used from here on
    ctrl = problem.controller
    if len(ts) == 1 and event_fn is None:
        # nothing to integrate: y0 is the whole answer, and torchdiffeq does not evaluate func either
        per_sample = isinstance(ctrl, PIDController) and ctrl.per_sample
        if per_sample:  # refuse what per-sample control refuses for longer spans, and report every sample
            check_per_sample(problem, None)
        sample_status = (Status.SUCCESS,) * problem.y0.shape[0] if per_sample else None
        return Integration([y0], Stats(), Status.SUCCESS, ts[0], [] if dense else None, sample_status=sample_status)
    transformed = inside_transform()
    if transformed:  # vmap, grad, jacrev, ...: no host decision per step
        check_transformable(problem, event_fn, dense)
    if event_fn is not None and not isinstance(event_fn, CheckedEvent):
        event_fn = CheckedEvent(event_fn)
    if event_fn is not None and (problem.layout is not None or problem.complex_state is not None):
        # the loop's states are flat (a tuple state's parts joined; a complex state on an implicit method
        # as its real form): event_fn takes the state as the caller gave it, as func does (torchdiffeq
        # hands a tuple state's event_fn the tuple)
        checked = event_fn

        def event_fn(t: torch.Tensor, y: torch.Tensor):
            return checked(t, problem.unflatten(y))

    if isinstance(ctrl, ConstantStepSize):
        grid: Iterable[float]
        if event_fn is not None:
            if ctrl.step_size is None:
                raise ValueError("an event solve on a fixed grid needs options={'step_size': ...}.")
            cap = _event_cap(ctrl.max_num_steps, ConstantStepSize.max_num_steps)
            grid = _event_grid(ts, float(ctrl.step_size), cap, problem.event_t_end)
        else:
            grid = ctrl.grid(problem.func, y0, torch.tensor(ts, dtype=torch.float64), problem.direction)
        # jump_t and step_t are added to the grid (the steps land on them, a jump restarts the solver)
        return integrate_fixed(
            term,
            problem.solver,
            ctrl,
            grid,
            y0,
            ts,
            jump_t=problem.jump_t,
            step_t=problem.step_t,
            times_dtype=problem.t.dtype,
            event_fn=event_fn,
            dense=dense,
        )
    if transformed:
        return integrate_transformed(
            term, problem.solver, ctrl, y0, ts, rtol=problem.rtol, atol=problem.atol, norm=problem.norm, throw=throw
        )
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
    if event_fn is not None:
        ctrl = dataclasses.replace(ctrl, max_num_steps=_event_cap(ctrl.max_num_steps, PIDController.max_num_steps))
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
        event_end=problem.event_end,
        dense=dense,
        throw=throw,
    )


def to_solution(problem: Problem, integration, throw: bool, ys: torch.Tensor | None = None) -> Solution:
    """The user's Solution from a loop's Integration.

    Args:
        problem: the validated problem (output times, time direction, state layout).
        integration: the loop's result.
        throw: raise on a non-finite output, else report it as the status.
        ys: the integration's outputs already stacked (None: stack ``integration.ys``).

    Returns:
        Solution in the user's time and state layout (``t_final`` at an event).

    Raises:
        SolverError: a non-finite output of a solve that reported success, with ``throw``.
    """
    ys = integration.stack() if ys is None else ys
    status = integration.status
    if status in (Status.SUCCESS, Status.EVENT) and not integration.known_finite(ys) and not all_finite(ys):
        # fixed-grid loops have no step decision to catch it: the first non-finite output reports it
        rows = (~torch.isfinite(ys.reshape(len(ys), -1))).any(dim=1)
        index = torch.arange(len(ys), device=ys.device)
        # the earliest such row of every problem of a vmap batch (one problem outside a transform)
        earliest = members(torch.where(rows, index, len(ys)).min())
        bad = int(earliest.min())
        t_bad = problem.ts[bad] if integration.event_t is None else integration.event_t
        if throw:
            sgn = problem.direction
            detail = (
                f"first non-finite output; the last finite one is at t={sgn * problem.ts[bad - 1]:.6g}; fixed steps "
                "do not stop where it happens: the field returned NaN or inf in between, the step size is too large "
                "for the problem's stiffness, or the solution blows up; an adaptive method such as 'dopri5' on the "
                "same problem stops where it happens and names the cause"
            )
            if earliest.dim() > 0:  # name the problem of the vmap batch that failed first
                failed = int((earliest < len(ys)).sum())
                detail += "; " + which_member(int(earliest.argmin()), tuple(earliest.shape), failed)
            raise SolverError(Status.NONFINITE, sgn * t_bad, detail)
        status = Status.NONFINITE
    t_final = None
    if integration.event_t is not None:
        te = -integration.event_t if problem.reverse else integration.event_t
        t_final = torch.tensor(te, dtype=problem.t.dtype, device=problem.t.device)
    return Solution(
        ts=problem.t,
        ys=problem.unflatten(ys),
        stats=integration.stats,
        status=status,
        t_final=t_final,
        sample_status=integration.sample_status,
    )
