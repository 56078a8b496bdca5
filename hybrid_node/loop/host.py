"""The integration loops of the torch backend: adaptive stepping and fixed grids.

Times are host floats (the step decision needs a host value anyway); states stay on their device.
Each loop returns the states at the requested times, the counters and how the solve ended.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

from .._errors import SolverError, Status
from .._solution import Stats
from .._term import Term
from ..controllers import ConstantStepSize, PIDController, error_ratio, initial_step
from ..interpolation import HermiteInterpolant, LinearInterpolant
from .compiled_step import compiled_attempt

_EPS = 2.220446049250313e-16
# A step that would end within 1% of its size before a time where steps must end is stretched to end
# there, instead of leaving a sliver that costs a whole extra step (Hairer, Nørsett, Wanner, Solving
# ODEs I, 2nd ed., Section II.4, as in their code DOPRI5). The error test still judges the longer step.
_STRETCH = 1.01


@dataclasses.dataclass
class DenseSegment:
    """One accepted step [t0, t1] and its interpolant, in solver time."""

    t0: float
    t1: float
    interpolant: Callable[[float], torch.Tensor]

    def __call__(self, t: float) -> torch.Tensor:
        if t == self.t1:
            return self.interpolant(1.0)
        return self.interpolant((t - self.t0) / (self.t1 - self.t0))

    def many(self, ts: Sequence[float]) -> list[torch.Tensor]:
        """The interpolant at several times of this step (one batched evaluation when supported)."""
        if len(ts) == 1 or not hasattr(self.interpolant, "many"):
            return [self(t) for t in ts]
        h = self.t1 - self.t0
        return list(self.interpolant.many([1.0 if t == self.t1 else (t - self.t0) / h for t in ts]).unbind(0))


def _emit(ys: list[torch.Tensor], ts: Sequence[float], i_out: int, t1: float, y1: torch.Tensor, seg) -> int:
    """Append the outputs at ts[i_out:] that lie in the step ending at t1; return the next output index."""
    j = i_out
    while j < len(ts) and ts[j] <= t1:
        j += 1
    inner = j - 1 if j > i_out and ts[j - 1] == t1 else j  # the step's end point is y1 itself
    if inner > i_out:
        ys.extend(seg.many(ts[i_out:inner]))
    if inner < j:
        ys.append(y1)
    return j


@dataclasses.dataclass
class Integration:
    """Raw result of a loop (solver time, flat states)."""

    ys: list[torch.Tensor]
    stats: Stats
    status: Status
    t_reached: float
    segments: list[DenseSegment] | None = None
    event_t: float | None = None


def _fail(status: Status, t: float, throw: bool, term: Term, detail: str = ""):
    if throw:
        raise SolverError(status, -t if term.reverse else t, detail)


def _pad_failed(ys: list[torch.Tensor], n: int, like: torch.Tensor) -> list[torch.Tensor]:
    """Fill the outputs a failed solve did not reach with NaN, so they can never pass for results."""
    return ys + [torch.full_like(like, math.nan) for _ in range(n - len(ys))]


def _locate_event(event_fn, term: Term, seg: DenseSegment, sign0: torch.Tensor) -> float:
    """Bisection on the dense output for the first time an event function changes sign.

    Reference: the event location of Shampine & Thompson, "Event location for ordinary differential
    equations", Comput. Math. Appl. 39 (2000); bisection keeps it robust for vector event functions.
    """
    lo, hi = seg.t0, seg.t1
    while hi - lo > 4 * _EPS * max(1.0, abs(lo), abs(hi)):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        changed = bool(torch.any(torch.sign(event_fn(term.time(mid), seg(mid))) != sign0))
        if changed:
            hi = mid
        else:
            lo = mid
    return hi


def first_step(
    term: Term, solver, controller: PIDController, t0: float, y0: torch.Tensor, state, rtol, atol, norm
) -> float:
    """The first step of an adaptive solve: the controller's, else Hairer's heuristic; within [min_step, max_step].

    ``state`` is the solver's state at (t0, y0): f(t0, y0) itself or an object carrying it as ``.f0``.
    """
    if controller.first_step is not None:
        dt = float(controller.first_step)
    else:
        f0 = getattr(state, "f0", state)
        dt = initial_step(term, t0, y0, f0, solver.error_order, rtol, atol, norm)
    return min(max(dt, controller.min_step), controller.max_step)


def integrate_adaptive(
    term: Term,
    solver,
    controller: PIDController,
    y0: torch.Tensor,
    ts: Sequence[float],
    *,
    rtol,
    atol,
    norm,
    jump_t: Sequence[float] = (),
    step_t: Sequence[float] = (),
    event_fn=None,
    dense: bool = False,
    throw: bool = True,
    at_output: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> Integration:
    """Integrate with an embedded pair from ts[0] through the increasing times ``ts``.

    Args:
        term: the wrapped field (solver time).
        solver: an adaptive solver (``init``, ``step``, ``next_state``, ``interpolant``, ``error_order``).
        controller: the step-size controller.
        y0: flat initial state.
        ts: increasing output times (host floats, solver time).
        rtol, atol: tolerances (floats or tensors broadcastable to the state).
        norm: error norm.
        jump_t: times where the field may jump: steps end there and the derivative is re-evaluated.
        step_t: times where steps must end (no re-evaluation).
        event_fn: terminal event ``event_fn(t, y)``: the solve stops where any element changes sign.
        dense: keep every step's interpolant (for dense output and events).
        throw: raise SolverError on failure, else report the status.
        at_output: ``at_output(i, y) -> y_new``, an impulse at the inner output times ts[i]
            (0 < i < len(ts) - 1): steps end exactly there, the state is replaced by the returned one
            (which is also the recorded output) and the solver restarts from it, while step-size
            control carries on (used by the adjoint's backward solve to add cotangents).

    Returns:
        Integration with the states at ``ts`` (up to the event for event solves).

    Raises:
        SolverError: on max steps, step-size underflow or a non-finite state, when ``throw``.
    """
    stats = Stats()
    t, y = ts[0], y0
    t_end = ts[-1]
    state = solver.init(term, t, y)
    reject = getattr(solver, "reject", None)
    attempt = compiled_attempt(term, solver, rtol, atol, norm)
    impulse_t = list(ts[1:-1]) if at_output is not None else []
    stops = sorted({s for s in list(jump_t) + list(step_t) + impulse_t if ts[0] < s < t_end})
    jumps = set(jump_t)
    dt = first_step(term, solver, controller, t, y, state, rtol, atol, norm)
    cstate = controller.init()
    ys = [y0]
    segments = [] if dense else None
    i_out = 1
    stop_i = 0
    n_attempts = 0
    last_nonfinite = False
    sign0 = torch.sign(event_fn(term.time(t), y)) if event_fn is not None else None
    t_stop = math.inf if event_fn is not None else t_end
    t_limit = 1e-6 * torch.finfo(y0.dtype).max  # beyond it a step's coefficients overflow the state's dtype
    while (i_out < len(ts)) if event_fn is None else True:
        if n_attempts >= controller.max_num_steps:
            _fail(Status.MAX_STEPS, t, throw, term, f"max_num_steps={controller.max_num_steps}")
            stats.nfe = term.nfe  # a failed solve reports its work too
            return Integration(_pad_failed(ys, len(ts), y0), stats, Status.MAX_STEPS, t)
        n_attempts += 1
        while stop_i < len(stops) and stops[stop_i] <= t:
            stop_i += 1
        step_dt = dt
        if not abs(t + step_dt) < t_limit:  # only an event solve has no end time: it ran out of numbers
            stats.nfe = term.nfe
            _fail(Status.NO_EVENT, t, throw, term)
            return Integration(_pad_failed(ys, len(ts), y0), stats, Status.NO_EVENT, t)
        landing = None
        reach = t + max(step_dt, min(step_dt * _STRETCH, controller.max_step))
        if stop_i < len(stops) and reach >= stops[stop_i]:
            landing = stops[stop_i]
        elif reach >= t_stop:
            landing = t_stop
        if landing is not None:
            step_dt = landing - t
        if landing is not None and landing in jumps:
            term.left_limit_at = landing  # the stages at the jump see the field before it
        if attempt is not None and landing not in jumps:
            step, ratio = attempt(t, y, state, step_dt)
        else:
            step = solver.step(term, t, y, state, step_dt)
            ratio = error_ratio(step.error, y, step.y1, rtol, atol, norm)
        term.left_limit_at = None
        accepted = ratio <= 1.0
        if accepted:
            t1 = landing if landing is not None else t + step_dt
            stats.n_accepted += 1
            new_state = solver.next_state(term, t1, step)
            seg = None
            if dense or event_fn is not None or (i_out < len(ts) and ts[i_out] < t1):
                seg = DenseSegment(t, t1, solver.interpolant(term, t, y, step_dt, step, new_state))
                if dense:
                    segments.append(seg)
            if landing is not None and landing in jumps:
                # restart the solver from the far side of the jump (its state is rebuilt there)
                new_state = solver.init(lambda tt, yy: term(tt, yy, perturb=1), t1, step.y1)
            if event_fn is not None:
                sign1 = torch.sign(event_fn(term.time(t1), step.y1))
                if bool(torch.any(sign1 != sign0)):
                    te = _locate_event(event_fn, term, seg, sign0)
                    ye = seg(te)
                    stats.nfe = term.nfe
                    stats.n_jacobian = term.n_jacobian
                    return Integration([y0, ye], stats, Status.EVENT, te, segments, event_t=te)
            y1 = step.y1
            if at_output is None:
                i_out = _emit(ys, ts, i_out, t1, y1, seg)
            while i_out < len(ts) and ts[i_out] <= t1:
                if at_output is not None and ts[i_out] == t1 and i_out < len(ts) - 1:
                    y1 = at_output(i_out, y1)
                    new_state = attempt.init(t1, y1) if attempt is not None else solver.init(term, t1, y1)
                ys.append(y1 if ts[i_out] == t1 else seg(ts[i_out]))
                i_out += 1
            t, y, state = t1, y1, new_state
            last_nonfinite = False
            if t >= t_end and event_fn is None:
                break
        else:
            stats.n_rejected += 1
            last_nonfinite = not math.isfinite(ratio)
            if reject is not None:  # e.g. an implicit solver refreshes a stale Jacobian
                state = reject(term, t, y, state, step)
        dt, cstate = controller.adapt(step_dt, ratio, accepted, cstate, solver.error_order)
        floor = max(controller.min_step, 4 * _EPS * max(1.0, abs(t)))
        if dt < floor:
            status = Status.NONFINITE if last_nonfinite else Status.STEP_UNDERFLOW
            _fail(status, t, throw, term, f"dt={dt:.3g}")
            stats.nfe = term.nfe
            return Integration(_pad_failed(ys, len(ts), y0), stats, status, t)
    stats.nfe = term.nfe
    stats.n_jacobian = term.n_jacobian
    return Integration(ys, stats, Status.SUCCESS, t, segments)


def integrate_fixed(
    term: Term,
    solver,
    controller: ConstantStepSize,
    grid: Sequence[float],
    y0: torch.Tensor,
    ts: Sequence[float],
    *,
    event_fn=None,
    dense: bool = False,
    at_output: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> Integration:
    """Integrate on a fixed grid; outputs between grid points are interpolated (linear or cubic Hermite).

    Args:
        term: the wrapped field (solver time).
        solver: a solver with ``init``, ``step``, ``next_state``.
        controller: the ConstantStepSize settings (interp, perturb).
        grid: increasing step end points from ts[0] to ts[-1] (for events: to the last grid point).
        y0: flat initial state.
        ts: increasing output times.
        event_fn: terminal event function (located by bisection on the step's interpolant).
        dense: keep the interpolants.
        at_output: impulse at the inner output times, as in :func:`integrate_adaptive`; those times
            must be grid points.

    Returns:
        Integration with the states at ``ts``.
    """
    stats = Stats()
    perturb = 1 if controller.perturb else 0
    ys = [y0]
    segments = [] if dense else None
    y = y0
    state = solver.init(term, ts[0], y) if not perturb else None
    previous = None  # the last step, whose next_state is computed only if another step follows
    i_out = 1
    sign0 = torch.sign(event_fn(term.time(ts[0]), y)) if event_fn is not None else None
    attempt = compiled_attempt(term, solver)
    grid = iter(grid)
    t1 = next(grid)
    for t_next in grid:
        t0, t1 = t1, t_next
        dt = t1 - t0
        if perturb:
            # the field may jump at grid points: evaluate just after t0 and, for stages at the end of
            # the step, just before t1 (torchdiffeq's perturb semantics)
            state = solver.init(lambda t, yy: term(t, yy, perturb=1), t0, y)
            term.left_limit_at = t1
        elif previous is not None:
            state = solver.next_state(term, t0, previous)
        if attempt is not None and not perturb:
            step = attempt(t0, y, state, dt)[0]
        else:
            step = solver.step(term, t0, y, state, dt)
        term.left_limit_at = None
        y1 = step.y1
        stats.n_accepted += 1
        need_interp = dense or event_fn is not None or (i_out < len(ts) and ts[i_out] < t1)
        seg = None
        if need_interp:
            if controller.interp == "cubic":
                f0 = term(t0, y, perturb=perturb)
                f1 = term(t1, y1, perturb=-perturb)
                seg = DenseSegment(t0, t1, HermiteInterpolant(y, y1, f0, f1, dt))
            else:
                seg = DenseSegment(t0, t1, LinearInterpolant(y, y1))
            if dense:
                segments.append(seg)
        if event_fn is not None:
            if bool(torch.any(torch.sign(event_fn(term.time(t1), y1)) != sign0)):
                te = _locate_event(event_fn, term, seg, sign0)
                stats.nfe = term.nfe
                stats.n_jacobian = term.n_jacobian
                return Integration([y0, seg(te)], stats, Status.EVENT, te, segments, event_t=te)
        restart = False
        if at_output is None:
            i_out = _emit(ys, ts, i_out, t1, y1, seg)
        while i_out < len(ts) and ts[i_out] <= t1:
            if at_output is not None and ts[i_out] == t1 and i_out < len(ts) - 1:
                y1 = at_output(i_out, y1)
                restart = True
            ys.append(y1 if ts[i_out] == t1 else seg(ts[i_out]))
            i_out += 1
        y = y1
        previous = None
        if restart and not perturb:
            state = attempt.init(t1, y1) if attempt is not None else solver.init(term, t1, y1)
        elif not perturb:
            previous = step
    stats.nfe = term.nfe
    stats.n_jacobian = term.n_jacobian
    if event_fn is not None:
        raise SolverError(Status.NO_EVENT, -t1 if term.reverse else t1, "no event on the whole fixed grid")
    return Integration(ys, stats, Status.SUCCESS, ts[-1], segments)
