"""The integration loops of the torch backend: adaptive stepping and fixed grids.

Times are host floats (the step decision needs a host value anyway); states stay on their device.
Each loop returns the states at the requested times, the counters and how the solve ended.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._errors import SolverError, Status
from .._solution import Stats
from .._term import OpenInterval, Term
from ..controllers import ConstantStepSize, PIDController, error_ratio, initial_step, rms_norm
from ..interpolation import HermiteInterpolant, LinearInterpolant
from . import core
from .compiled_step import compiled_attempt
from .core import _EPS as _EPS
from .core import _STRETCH as _STRETCH
from .core import FLOAT, RUNNING
from .diagnose import solve_cause
from .stiff_watch import records_steps, watch_for

if TYPE_CHECKING:
    from ..sensitivity._backward import AugmentedTerm
    from ..solvers.base import Interpolant


@dataclasses.dataclass
class DenseSegment:
    """One accepted step [t0, t1] and its interpolant, in solver time."""

    t0: float
    t1: float
    interpolant: Interpolant

    def __call__(self, t: float) -> torch.Tensor:
        if t == self.t1:
            return self.interpolant(1.0)
        return self.interpolant((t - self.t0) / (self.t1 - self.t0))

    def many(self, ts: Sequence[float]) -> list[torch.Tensor]:
        """The interpolant at several times of this step (one batched evaluation when supported)."""
        if len(ts) == 1:
            return [self(t) for t in ts]
        h = self.t1 - self.t0
        return list(self.interpolant.many([1.0 if t == self.t1 else (t - self.t0) / h for t in ts]).unbind(0))


def _emit(ys: list[torch.Tensor], ts: Sequence[float], i_out: int, t0: float, t1: float, y1, seg, at_output) -> tuple:
    """Append the outputs at ts[i_out:] that the accepted step [t0, t1] emits (:func:`core.emission`).

    Inner times are the segment's dense output (one batched evaluation); a time at t1 is y1 itself,
    or, with ``at_output`` and before the last output, the state after the impulse there.

    Returns:
        ``(i_out, y1, restarted)``: the next output index, the state to continue from and whether an
        impulse replaced it (the solver then restarts).
    """
    inner: list[float] = []
    j = i_out
    end = False
    while j < len(ts):
        within, at_end, _ = core.emission(FLOAT, ts[j], t0, t1)
        if not within:
            break
        if at_end:
            end = True
        else:
            inner.append(ts[j])
        j += 1
    if inner:
        ys.extend(seg.many(inner))
    restarted = False
    if end:
        if at_output is not None and j - 1 < len(ts) - 1:
            y1 = at_output(j - 1, y1)
            restarted = True
        ys.append(y1)
    return j, y1, restarted


@dataclasses.dataclass
class Integration:
    """Raw result of a loop (solver time, flat states).

    A loop that produces its outputs as one tensor (the whole-solve graph) gives ``rows=None`` and the
    tensor as ``stacked``: :attr:`ys` splits it into rows on first use only (50 views cost ~20 us, and
    the forward solve's usual reader, :meth:`stack`, needs none).
    """

    rows: list[torch.Tensor] | None
    stats: Stats
    status: Status
    t_reached: float
    segments: list[DenseSegment] | None = None
    event_t: float | None = None
    #: the outputs as one tensor, where the loop made them so
    stacked: torch.Tensor | None = None
    #: the loop found every output of ``stacked`` finite (the whole-solve graph tests them as it ends)
    finite: bool = False
    #: the per-sample loop's status of every sample (None for the other loops)
    sample_status: tuple[Status, ...] | None = None
    #: the rows :attr:`ys` split ``stacked`` into (:meth:`stack` returns ``stacked`` while ``ys`` holds them)
    _split: tuple[torch.Tensor, ...] | None = dataclasses.field(default=None, repr=False)

    @property
    def ys(self) -> list[torch.Tensor]:
        """The outputs, one state per output time (a list the caller may change)."""
        if self.rows is None:
            assert self.stacked is not None  # a loop gives its outputs one way or the other
            self._split = self.stacked.unbind(0)
            self.rows = list(self._split)
        return self.rows

    @ys.setter
    def ys(self, value: list[torch.Tensor]) -> None:
        self.rows = value

    def stack(self) -> torch.Tensor:
        """``torch.stack(self.ys)``, without the copy where the loop gave its outputs stacked."""
        if self.stacked is not None:
            if self.rows is None:
                return self.stacked
            split = self._split
            if split is not None and len(split) == len(self.rows) and all(a is b for a, b in zip(self.rows, split)):
                return self.stacked
        return torch.stack(self.ys)

    def known_finite(self, ys: torch.Tensor) -> bool:
        """Whether ``ys`` is the loop's stacked outputs as it gave them and it found them all finite."""
        return self.finite and ys is self.stacked


def _fail(status: Status, t: float, throw: bool, term: Term | AugmentedTerm, detail: str = "", cause: str = ""):
    if throw:
        raise SolverError(status, -t if term.reverse else t, detail, cause)


def _pad_failed(ys: list[torch.Tensor], n: int, like: torch.Tensor) -> list[torch.Tensor]:
    """Fill the outputs a failed solve did not reach with NaN, so they can never pass for results."""
    return ys + [torch.full_like(like, math.nan) for _ in range(n - len(ys))]


def check_no_nan(
    g: torch.Tensor, t_user: float | np.ndarray, y: torch.Tensor, elements: torch.Tensor | None = None
) -> None:
    """Raise where event values are NaN: a NaN has no sign, and ``torch.sign`` maps it to 0.

    A 0 would pass for a root (a terminal event fires there) or for a touch of zero (a crossing
    of a watched element is never reported), so a NaN is named instead of becoming either.

    Args:
        g: event values, one per element (flat).
        t_user: the time (user time) they were evaluated at, one per element or one for all.
        y: the states they were evaluated at (for the message: a state that is not finite).
        elements: the element (sample) of each value, for the message; default ``arange(len(g))``.

    Raises:
        ValueError: some value is NaN; says where, and whether the state there is finite.
    """
    nan = torch.isnan(g)
    if not bool(nan.any()):
        return
    at = nan.nonzero().reshape(-1)
    where = (at if elements is None else elements.reshape(-1)[at]).tolist()
    times = np.broadcast_to(np.asarray(t_user, dtype=np.float64), (len(g),))
    state = "finite" if bool(torch.isfinite(y).all()) else "not finite (the solve diverged)"
    raise ValueError(
        f"event_fn returned NaN at t={float(times[int(at[0])]):g} for element(s) {where[:10]} of its value; a NaN has "
        f"no sign, so no crossing can be located. The state there is {state}; check event_fn along the solution."
    )


def _event_sign(event_fn, term: Term | AugmentedTerm, t: float, y: torch.Tensor) -> torch.Tensor:
    """The sign of the terminal event's values at solver time ``t``; a NaN value raises (see :func:`check_no_nan`)."""
    g = event_fn(term.time(t), y)
    check_no_nan(g.detach().reshape(-1), -t if term.reverse else t, y)
    return torch.sign(g)


# interior points of each step's dense output where a terminal event's signs are checked besides the
# step's end (as Event(samples=4)): a value that leaves its sign and comes back inside one step is
# seen, and of three roots in one step the first is found, not the third
EVENT_CHECKS = 4


def check_points(t0: float, t1: float, n: int = EVENT_CHECKS) -> list[float]:
    """Where an event's signs are checked in the step [t0, t1]: ``n`` equally spaced interior points, then t1.

    Args:
        t0, t1: the accepted step (solver time).
        n: the number of interior points.

    Returns:
        The ``n + 1`` increasing check times, the last one ``t1`` itself.
    """
    h = t1 - t0
    return [t0 + h * (j + 1) / (n + 1) for j in range(n)] + [t1]


def _event_bracket(
    event_fn, term: Term | AugmentedTerm, seg: DenseSegment, sign0: torch.Tensor, sign1: torch.Tensor
) -> tuple[float, float] | None:
    """The first stretch of the step between two check points where the event's signs leave ``sign0``.

    Args:
        event_fn: the terminal event.
        term: the field's term (its time conversion).
        seg: the accepted step and its dense output.
        sign0: the event's signs at the start of the solve.
        sign1: its signs at the step's end.

    Returns:
        ``(lo, hi)`` (solver time): the signs are ``sign0`` at ``lo`` and at every check point before
        it and differ at ``hi``; None where they are ``sign0`` at every check point of the step.
    """
    points = check_points(seg.t0, seg.t1)
    lo = seg.t0
    with torch.no_grad():  # signs only: the event's gradients come from the located time
        inner = seg.many(points[:-1])
        for p, yp in zip(points[:-1], inner):
            if bool(torch.any(_event_sign(event_fn, term, p, yp) != sign0)):
                return lo, p
            lo = p
    return (lo, seg.t1) if bool(torch.any(sign1 != sign0)) else None


def _locate_event(
    event_fn, term: Term | AugmentedTerm, seg: DenseSegment, sign0: torch.Tensor, lo: float, hi: float
) -> float:
    """Bisection on the dense output for the time in ``[lo, hi]`` where an event function leaves ``sign0``.

    Reference: the event location of Shampine & Thompson, "Event location for ordinary differential
    equations", Comput. Math. Appl. 39 (2000); bisection keeps it robust for vector event functions.

    Args:
        event_fn: the terminal event.
        term: the field's term (its time conversion).
        seg: the accepted step and its dense output.
        sign0: the event's signs at the start of the solve.
        lo, hi: the bracket (:func:`_event_bracket`): the signs are ``sign0`` at ``lo`` and differ at ``hi``.

    Returns:
        The right end of the final bracket: the first time found past the root.
    """
    while hi - lo > 4 * _EPS * max(1.0, abs(lo), abs(hi)):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        changed = bool(torch.any(_event_sign(event_fn, term, mid, seg(mid)) != sign0))
        if changed:
            hi = mid
        else:
            lo = mid
    return hi


def settle_failure(code: int, step, solver, c: core.StepControl, step_dt: float, dt: float) -> tuple[int, str]:
    """The status code and detail of a solve that :func:`core.settle` ended with ``code``.

    A multistep corrector or an ESDIRK's Newton iteration that did not converge (a step whose
    ``converged`` is False, as :class:`~hybrid_node.solvers.multistep.NordsieckStep`'s and
    :class:`~hybrid_node.solvers.esdirk.DirkStep`'s) reports an infinite error, which ``settle`` counts
    as a non-finite state. The state is finite then, and the cause is the iteration: it needs a smaller
    step than ``min_step`` (or the time's resolution) allows. That failure is reported as
    NEWTON_FAILED, naming ``min_step`` and the iteration (the step's ``iteration``, default
    "corrector"); a correction (``e``) that is itself not finite (a NaN from the field) stays NONFINITE.
    A step-size underflow of a solver with ``failure_detail(step)`` (a reversible method whose coupled
    mode outgrew the tolerance) adds what that returns.

    Args:
        code: the status code from ``settle``.
        step: the last attempted step.
        solver: the solver (its name, for the message).
        c: the step-control constants (``min_step``).
        step_dt: the last attempted step size; dt: the proposed next one.

    Returns:
        ``(code, detail)``.
    """
    correction = getattr(step, "e", None)
    if (
        code == core.NONFINITE
        and getattr(step, "converged", True) is False
        and (correction is None or bool(torch.isfinite(correction).all()))
    ):
        name = getattr(solver, "name", type(solver).__name__)
        what = getattr(step, "iteration", "corrector")
        if c.min_step > 0 and core.at_min_step(c, step_dt):
            return core.NEWTON_FAILED, (
                f"the {what} of {name!r} did not converge at min_step={c.min_step:g}, the smallest step allowed; "
                "lower min_step"
            )
        return core.NEWTON_FAILED, (
            f"the {what} of {name!r} did not converge down to dt={step_dt:.3g}, the resolution of the time"
        )
    # a solver that can tell why its steps kept failing (a reversible method's coupled mode) says what to change
    explain = getattr(solver, "failure_detail", None)
    why = explain(step) if explain is not None and code == core.STEP_UNDERFLOW else None
    return code, f"dt={dt:.3g}" if why is None else f"{why}; dt={dt:.3g}"


def first_step(
    term: Term | AugmentedTerm, solver, controller: PIDController, t0: float, y0: torch.Tensor, state, rtol, atol, norm
) -> float:
    """The first step of an adaptive solve: the controller's, else Hairer's heuristic; within [min_step, max_step].

    ``state`` is the solver's state at (t0, y0); ``solver.derivative(state)`` is f(t0, y0).
    """
    if controller.first_step is not None:
        dt = float(controller.first_step)
    else:
        f0 = solver.derivative(state)
        dt = initial_step(term, t0, y0, f0, solver.error_order, rtol, atol, norm)
    return min(max(dt, controller.min_step), controller.max_step)


def _with_loop_norm(solver, norm):
    """``solver`` planning its steps in the loop's error norm, where it plans them itself.

    The Nordsieck methods (adams, bdf, lsoda) choose step and order from error estimates of their
    own; in another norm than the one this loop accepts steps with (a tuple state's largest RMS of its
    parts, an adjoint's mixed norm, the user's) they planned steps the loop rejected: a tuple state of
    an oscillator beside 50 slow elements took 19000 evaluations where the oscillator alone takes 413.
    """
    if norm is rms_norm or not hasattr(solver, "with_norm"):
        return solver
    return solver.with_norm(norm)


def integrate_adaptive(
    term: Term | AugmentedTerm,
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
    event_end: float = math.inf,
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
        event_end: where an event search gives up (solver time; default: no end). An event search
            that reaches it, runs out of ``max_num_steps`` or of the dtype's times fails with NO_EVENT.
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
    solver = _with_loop_norm(solver, norm)
    state = solver.init(term, t, y)
    attempt = compiled_attempt(term, solver, rtol, atol, norm)
    impulse_t = list(ts[1:-1]) if at_output is not None else []
    stops = sorted({s for s in list(jump_t) + list(step_t) + impulse_t if ts[0] < s < t_end})
    jumps = set(jump_t)
    dt = first_step(term, solver, controller, t, y, state, rtol, atol, norm)
    c = core.StepControl.of(controller, solver.error_order, y0.dtype)
    r1, r2 = controller.init()
    ys = [y0]
    segments: list[DenseSegment] | None = [] if dense else None
    i_out = 1
    stop_i = 0
    n_attempts = 0
    last_nonfinite = False
    sign0 = _event_sign(event_fn, term, t, y) if event_fn is not None else None
    t_stop = event_end if event_fn is not None else t_end

    callbacks = term.callbacks  # the user's step callbacks, or None
    # direct backprop through an explicit method at its stability limit gives unreliable gradients
    watch = watch_for(solver, rtol, atol)

    def user_t(s: float) -> float:
        return -s if term.reverse else s

    def failed(code: int, detail: str) -> Integration:
        status = core.STATUS[code]
        if throw:  # the field, the solution or stiffness as the cause, where one look at the state tells
            _fail(status, t, throw, term, detail, solve_cause(status, term, solver, t, y, y0, dt))
        take_counters(stats, term)  # a failed solve reports its work too
        return Integration(_pad_failed(ys, len(ts), y0), stats, status, t)

    while (i_out < len(ts)) if event_fn is None else True:
        code = core.precheck(FLOAT, c, n_attempts, t, dt)  # NO_EVENT: only an event solve has no end
        if code != RUNNING:
            if event_fn is None:
                return failed(code, f"max_num_steps={controller.max_num_steps}" if code == core.MAX_STEPS else "")
            if code == core.MAX_STEPS:
                return failed(
                    core.NO_EVENT,
                    f"event not found before t={user_t(t):.6g}: the search stopped after max_num_steps="
                    f"{controller.max_num_steps} steps; give odeint_event a t_end, or raise options['max_num_steps'] "
                    "if the event lies further on",
                )
            return failed(code, f"event not found before t={user_t(t):.6g}, beyond which the steps would overflow")
        n_attempts += 1
        while stop_i < len(stops) and stops[stop_i] <= t:
            stop_i += 1
        stop = stops[stop_i] if stop_i < len(stops) else t_stop
        lands, step_dt, t1 = core.landing(FLOAT, t, dt, stop, c.max_step)
        at_jump = lands and stop in jumps
        if callbacks is not None:
            callbacks.step(t, y, step_dt)
        if attempt is not None and not at_jump:
            step, ratio = attempt(t, y, state, step_dt)
            assert ratio is not None  # an adaptive solver's attempt has an error ratio
        else:
            # a step that ends at a jump sees the field's left limit there
            field = term.left_limit(stop) if at_jump else term
            step = solver.step(field, t, y, state, step_dt)
            ratio = error_ratio(step.error, y, step.y1, rtol, atol, norm)
        accepted = core.accepts(FLOAT, c, ratio, step_dt)
        if callbacks is not None:
            (callbacks.accept if accepted else callbacks.reject)(t, y, step_dt)
        if accepted:
            stats.n_accepted += 1
            if watch is not None:  # only a solve whose steps autograd records is watched
                watch = watch if stats.n_accepted > 1 or records_steps(step) else None
                if watch is not None:
                    watch.observe(step, t, y, t1)
            new_state = solver.next_state(term, t1, step)
            seg = None
            if dense or event_fn is not None or (i_out < len(ts) and ts[i_out] < t1):
                seg = DenseSegment(t, t1, solver.interpolant(term, t, y, step_dt, step, new_state))
                if segments is not None:
                    segments.append(seg)
            if at_jump:
                # restart the solver from the far side of the jump (its state is rebuilt there)
                new_state = solver.init(lambda tt, yy: term(tt, yy, perturb=1), t1, step.y1)
            if event_fn is not None:
                sign1 = _event_sign(event_fn, term, t1, step.y1)
                assert seg is not None and sign0 is not None  # set whenever event_fn is
                bracket = _event_bracket(event_fn, term, seg, sign0, sign1)
                if bracket is not None:
                    te = _locate_event(event_fn, term, seg, sign0, *bracket)
                    ye = seg(te)
                    take_counters(stats, term)
                    if watch is not None:
                        watch.warn(term.reverse)
                    return Integration([y0, ye], stats, Status.EVENT, te, segments, event_t=te)
            i_out, y1, restarted = _emit(ys, ts, i_out, t, t1, step.y1, seg, at_output)
            if restarted:
                new_state = attempt.init(t1, y1) if attempt is not None else solver.init(term, t1, y1)
            t, y, state = t1, y1, new_state
            last_nonfinite = False
            if t >= t_end and event_fn is None:
                break
            if event_fn is not None and t >= t_stop:
                return failed(core.NO_EVENT, f"event not found before t_end={user_t(t_stop):.6g}")
        else:
            stats.n_rejected += 1
            last_nonfinite = not math.isfinite(ratio)
            state = solver.reject(term, t, y, state, step)  # e.g. an implicit solver refreshes a Jacobian
        dt, r1, r2 = core.propose(FLOAT, c, step_dt, ratio, accepted, r1, r2)
        dt = min(solver.propose_step(state, step_dt, dt), c.max_step)  # a variable-order method's own step
        dt, code = core.settle(FLOAT, c, False, t, dt, step_dt, last_nonfinite, ts[0])
        if code != RUNNING:
            return failed(*settle_failure(code, step, solver, c, step_dt, dt))
    take_counters(stats, term)
    if watch is not None:
        watch.warn(term.reverse)
    return Integration(ys, stats, Status.SUCCESS, t, segments)


def take_counters(stats: Stats, term) -> None:
    """Copy the term's counters into a solve's stats: field evaluations, Jacobian evaluations (implicit
    solvers) and switches between the non-stiff and the stiff method (``auto``, ``lsoda``).

    Args:
        stats: the solve's stats, updated in place.
        term: the wrapped field the solve evaluated.
    """
    stats.nfe = term.nfe
    stats.n_jacobian = term.n_jacobian
    stats.n_switches = term.n_switches


def right_of_jump(term, start: float) -> OpenInterval:
    """``term`` seen from a jump of the field at solver time ``start`` on: evaluations at ``start`` take
    the right limit (the field just after the jump), everything else is the term's (an open interval
    without an end). The fixed-step loop's restart after a ``jump_t`` and the step that follows it see
    the field so (the step before sees :meth:`Term.left_limit`, one between two jumps an
    :class:`OpenInterval`)."""
    return OpenInterval(term, start, math.inf)


def grid_with_stops(
    grid: Iterable[float], jump_t: Sequence[float], step_t: Sequence[float], t_dtype: torch.dtype = torch.float64
) -> Iterator[tuple[float, bool]]:
    """The step end points of a fixed grid with the stop times added, each with whether the field jumps there.

    A stop strictly inside a grid interval becomes a grid point of its own: the step before it ends
    there and the grid carries on to its next point (so a stop shortens two steps and moves none of
    the others). A stop within rounding of a grid point (a few ulps of the time's dtype, relative to
    the time or the step) is that grid point, so no step is a rounding sliver (``jump_t`` as float32
    0.43 lies 7e-9 from the float64 grid point 0.43). Stops at or before the first grid point and
    after the last are not reached.

    Args:
        grid: increasing step end points (may be a lazy iterator, as an event search's grid is).
        jump_t: increasing times where the field may jump (solver time).
        step_t: increasing times where steps must end (solver time).
        t_dtype: the dtype the times were given in (its rounding decides "within rounding").

    Returns:
        An iterator of ``(t, at_jump)``, starting with the grid's first point (``at_jump`` False).
    """
    points = iter(grid)
    stops = sorted(set(jump_t) | set(step_t))
    jumps = set(jump_t)
    rel = max(1e-12, 4 * torch.finfo(t_dtype).eps)
    prev = next(points)
    yield prev, False
    i = 0
    while i < len(stops) and stops[i] <= prev + rel * max(abs(prev), 1e-300):
        i += 1
    for g in points:
        close = rel * max(abs(g), g - prev)
        while i < len(stops) and stops[i] < g - close:
            if stops[i] > prev:  # (one within rounding after prev was merged into it)
                yield stops[i], stops[i] in jumps
                prev = stops[i]
            i += 1
        at_jump = False
        while i < len(stops) and stops[i] <= g + close:
            at_jump = at_jump or stops[i] in jumps
            i += 1
        yield g, at_jump
        prev = g


def integrate_fixed(
    term: Term | AugmentedTerm,
    solver,
    controller: ConstantStepSize,
    grid: Iterable[float],
    y0: torch.Tensor,
    ts: Sequence[float],
    *,
    jump_t: Sequence[float] = (),
    step_t: Sequence[float] = (),
    times_dtype: torch.dtype | None = None,
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
        jump_t: times where the field may jump (solver time): they are added to the grid
            (:func:`grid_with_stops`), the step that ends at one sees the field's left limit there and
            the solver restarts after it from the right limit (a multistep method's history and a
            first-same-as-last derivative are dropped), so the steps stay of the method's order.
        step_t: times added to the grid (steps end there; no restart).
        times_dtype: the dtype the caller gave the times in (``jump_t`` as float32 is rounded to it),
            which decides when a stop is a grid point; None: the dtype of the time handed to the field.
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
    segments: list[DenseSegment] | None = [] if dense else None
    y = y0
    state: Any = solver.init(term, ts[0], y) if not perturb else None
    previous = None  # the last step, whose next_state is computed only if another step follows
    # a multistep method's state is the history of earlier derivatives: with perturb it is kept, its
    # new derivative taken at the right limit of the step's start (as torchdiffeq's Adams keeps its
    # history); a one-step method's state is rebuilt instead (a first-same-as-last derivative is the
    # left limit at the grid point)
    history = bool(perturb) and getattr(solver, "keeps_history", False)
    i_out = 1
    sign0 = _event_sign(event_fn, term, ts[0], y) if event_fn is not None else None
    attempt = compiled_attempt(term, solver)
    callbacks = term.callbacks  # the user's step callbacks, or None
    if times_dtype is None:
        times_dtype = getattr(term, "t_dtype", torch.float64)
    points = grid_with_stops(grid, jump_t, step_t, times_dtype)
    t1, at_jump = next(points)
    for t_next, at_jump_next in points:
        t0, t1 = t1, t_next
        after_jump, at_jump = at_jump, at_jump_next
        dt = t1 - t0
        if callbacks is not None:
            callbacks.step(t0, y, dt)
        # the field may jump at grid points: with perturb every evaluation of the step is moved just
        # after t0 or just before t1 (torchdiffeq's perturb semantics)
        open_step = OpenInterval(term, t0, t1) if perturb else None
        if open_step is not None and previous is not None:
            # a history's next_state evaluates the derivative at t0 afresh, through the open step
            state = solver.next_state(open_step, t0, previous)
        elif open_step is not None:
            state = solver.init(open_step, t0, y)
        elif previous is not None:
            state = solver.next_state(term, t0, previous)
        if attempt is not None and open_step is None and not (at_jump or after_jump):
            step = attempt(t0, y, state, dt)[0]
        else:
            # next to a jump the step sees the field's one-sided limits: the right one at a jump at
            # t0, the left one at a jump at t1
            field: Any = term
            if open_step is not None or (after_jump and at_jump):
                field = open_step if open_step is not None else OpenInterval(term, t0, t1)
            elif after_jump:
                field = right_of_jump(term, t0)
            elif at_jump:
                field = term.left_limit(t1)
            step = solver.step(field, t0, y, state, dt)
        y1 = step.y1
        stats.n_accepted += 1
        need_interp = dense or event_fn is not None or (i_out < len(ts) and ts[i_out] < t1)
        seg = None
        if need_interp:
            if controller.interp == "cubic":
                # one-sided derivatives at a jump: the right limit after it, the left limit before it
                f0 = term(t0, y, perturb=perturb or int(after_jump))
                f1 = term(t1, y1, perturb=-(perturb or int(at_jump)))
                seg = DenseSegment(t0, t1, HermiteInterpolant(y, y1, f0, f1, dt))
            else:
                seg = DenseSegment(t0, t1, LinearInterpolant(y, y1))
            if segments is not None:
                segments.append(seg)
        if event_fn is not None:
            assert seg is not None and sign0 is not None  # set whenever event_fn is
            bracket = _event_bracket(event_fn, term, seg, sign0, _event_sign(event_fn, term, t1, y1))
            if bracket is not None:
                te = _locate_event(event_fn, term, seg, sign0, *bracket)
                take_counters(stats, term)
                return Integration([y0, seg(te)], stats, Status.EVENT, te, segments, event_t=te)
        i_out, y1, restart = _emit(ys, ts, i_out, t0, t1, y1, seg, at_output)
        y = y1
        previous = None
        if at_jump and not perturb:
            # restart from the far side of the jump, as after an impulse: the derivative at t1 is the
            # right limit, and no history or first-same-as-last derivative from before it is kept
            state = solver.init(right_of_jump(term, t1), t1, y1)
        elif restart and not perturb:
            state = attempt.init(t1, y1) if attempt is not None else solver.init(term, t1, y1)
        elif not (restart or at_jump) and (history or not perturb):
            previous = step
    take_counters(stats, term)
    if event_fn is not None:
        raise SolverError(
            Status.NO_EVENT,
            -t1 if term.reverse else t1,
            f"event not found before t={-t1 if term.reverse else t1:.6g}, the end of the fixed grid "
            f"({stats.n_accepted} steps); give odeint_event a later t_end or raise options['max_num_steps']",
        )
    return Integration(ys, stats, Status.SUCCESS, ts[-1], segments)
