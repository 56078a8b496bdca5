"""The one adaptive core: the step decision and the output emission, written once for every loop.

The host loop decides on Python floats, the device-resident loop on 0-d tensors and the per-sample
loop on (batch,) tensors. The decision (where a step lands, accept/reject, the PID proposal, the
step floor, the failure codes) and which output times an accepted step emits are written here once,
against a tiny array namespace (:data:`FLOAT` or :data:`TENSOR`: ``where``, ``minimum`` and
``maximum`` against a number, ``smaller`` of two arrays, ``isfinite``, ...); the loops are strategies
around these functions (how a step is evaluated, where the numbers live, when the host reads them),
not copies of them.

Every function evaluates the same operations in the same order for both namespaces, so a float
host solve and an eager 0-d tensor solve round alike and take the very same steps.

References: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.4 (error norm, step-size
control, stretching the last step); G. Söderlind, "Digital filters in adaptive time-stepping",
ACM TOMS 29 (2003) (PID control).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from .._errors import Status
from .._memo import memoized
from ..controllers import PIDController

_EPS = 2.220446049250313e-16
# A step that would end within 1% of its size before a time where steps must end is stretched to end
# there, instead of leaving a sliver that costs a whole extra step (Hairer, Nørsett, Wanner, Solving
# ODEs I, 2nd ed., Section II.4, as in their code DOPRI5). The error test still judges the longer step.
_STRETCH = 1.01

# status codes of a solve in progress (ints on the host, int64 tensors on the device); NEWTON_FAILED
# is set by the host loops only (a multistep corrector that failed at the smallest step allowed)
RUNNING, SUCCESS, MAX_STEPS, STEP_UNDERFLOW, NONFINITE, NO_EVENT, NEWTON_FAILED = range(7)
STATUS = {
    SUCCESS: Status.SUCCESS,
    MAX_STEPS: Status.MAX_STEPS,
    STEP_UNDERFLOW: Status.STEP_UNDERFLOW,
    NONFINITE: Status.NONFINITE,
    NO_EVENT: Status.NO_EVENT,
    NEWTON_FAILED: Status.NEWTON_FAILED,
}


class _FloatOps:
    """The array namespace on Python floats and bools (the host loop)."""

    @staticmethod
    def where(cond: bool, a: Any, b: Any) -> Any:
        return a if cond else b

    @staticmethod
    def minimum(a: float, b: float) -> float:
        return min(a, b)

    @staticmethod
    def maximum(a: float, b: float) -> float:
        return max(a, b)

    @staticmethod
    def smaller(a: float, b: float) -> float:
        return min(a, b)

    @staticmethod
    def larger(a: float, b: float) -> float:
        return max(a, b)

    @staticmethod
    def full_like(like: float, value: float) -> float:
        return value

    @staticmethod
    def where_divide(cond: bool, a: float, b: float) -> float:
        return a / b if cond else 0.0  # b may be 0 where cond is False

    @staticmethod
    def isfinite(x: float) -> bool:
        return math.isfinite(x)

    @staticmethod
    def logical_not(x: bool) -> bool:
        return not x


class _TensorOps:
    """The array namespace on tensors (0-d for the device loop, (batch,) for per-sample control)."""

    @staticmethod
    def where(cond: torch.Tensor, a: Any, b: Any) -> torch.Tensor:
        return torch.where(cond, a, b)

    @staticmethod
    def minimum(a: torch.Tensor, b: float | torch.Tensor) -> torch.Tensor:
        return torch.clamp(a, max=b)

    @staticmethod
    def maximum(a: torch.Tensor, b: float | torch.Tensor) -> torch.Tensor:
        return torch.clamp(a, min=b)

    @staticmethod
    def smaller(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.minimum(a, b)

    @staticmethod
    def larger(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.maximum(a, b)

    @staticmethod
    def full_like(like: torch.Tensor, value: float | torch.Tensor) -> torch.Tensor:
        if isinstance(value, torch.Tensor):  # a setting that is a graph input (a 0-d element of it)
            return value.to(like.dtype).expand_as(like)
        return torch.full_like(like, value)

    @staticmethod
    def where_divide(cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(cond, a / b, 0.0)  # b may be 0 where cond is False: masked out

    @staticmethod
    def isfinite(x: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(x)

    @staticmethod
    def logical_not(x: torch.Tensor) -> torch.Tensor:
        return ~x


FLOAT = _FloatOps()
TENSOR = _TensorOps()


@dataclasses.dataclass(frozen=True)
class StepControl:
    """The step-control numbers of one solve (hashable: compiled device runs are cached per value).

    Attributes:
        e1, e2, e3: exponents of the PID formula, -b1/k, -b2/k, -b3/k with k = error order + 1.
        safety, ifactor, dfactor, min_step, max_step, max_num_steps: the controller's settings.
        t_limit: the largest |t| a solve without an end time (an event solve) may reach (see
            :func:`time_limit`).
        attempts: attempts per run of the device loop (``sync_every``; unused by the other loops).
        eps: the machine epsilon of the state's (real) dtype: the step floor's resolution (see
            :func:`step_floor`).
        keep_after_accept: an accepted step with error ratio below 1 never shrinks the next one
            (``not PIDController.shrink_after_accept``).
        hold_after_reject: the step after an accepted step that directly follows a rejected attempt
            is at most that accepted step (``not PIDController.grow_after_reject``).
    """

    e1: float
    e2: float
    e3: float
    safety: float
    ifactor: float
    dfactor: float
    min_step: float
    max_step: float
    max_num_steps: int
    t_limit: float
    attempts: int = 1
    eps: float = _EPS
    keep_after_accept: bool = False
    hold_after_reject: bool = False

    @property
    def has_min_step(self) -> bool:
        """Whether ``min_step`` is positive: a static choice of the step decision (:func:`accepts`,
        :func:`settle`). A compiled graph whose ``min_step`` is a tensor input states it apart
        (:class:`hybrid_node.loop.graph_inputs.InputControl`), since a graph cannot branch on an input."""
        return self.min_step > 0

    @property
    def ratio_bounds(self) -> tuple[Any, Any] | None:
        """The interval :func:`propose` holds the error ratio in, or None where it need not.

        With an exponent above 1 in magnitude (gains summing above the order k) a ratio far from 1
        raises a power beyond float64's range: the host's float power raised ``OverflowError`` (gains
        (0, 160, 0) from rest, 1e-10 ** -32), and on tensors an infinite power times a zero one made
        the step NaN. The ratio is then held in ``[1 / bound, bound]`` with ``bound = 10 ** (300 /
        largest exponent)``, where every power is within [1e-300, 1e300]. A compiled graph whose
        exponents are inputs holds it in bounds that are inputs too, ``(0, inf)`` where none is needed
        (:class:`hybrid_node.loop.graph_inputs.InputControl`): that clamp changes no ratio.

        Returns:
            ``(1 / bound, bound)`` as host floats, or None when every exponent is at most 1 in magnitude.
        """
        largest = max(abs(self.e1), abs(self.e2), abs(self.e3))
        if not largest > 1.0:
            return None
        bound = 10.0 ** (300.0 / largest)
        return 1.0 / bound, bound

    @staticmethod
    def of(controller: PIDController, error_order: int, dtype: torch.dtype, attempts: int = 1) -> StepControl:
        """The constants for ``controller`` and a method of the given error order on ``dtype`` states.

        Args:
            controller: the PID settings.
            error_order: the order q of the method's error estimate (k = q + 1 in the exponents).
            dtype: the state's dtype (sets ``t_limit`` and ``eps``; complex dtypes count as their real
                and imaginary parts' dtype).
            attempts: attempts per device run.

        Returns:
            The constants, with ``eps`` and ``t_limit`` from ``dtype`` rather than from float64.
        """
        # the settings it reads (not the controller: its tolerances may be tensors, compared elementwise)
        key = tuple(getattr(controller, k) for k in _CONTROL_SETTINGS) + (error_order, dtype, attempts)
        return memoized(_STEP_CONTROLS, key, lambda: StepControl._of(controller, error_order, dtype, attempts), 64)

    @staticmethod
    def _of(controller: PIDController, error_order: int, dtype: torch.dtype, attempts: int) -> StepControl:
        return StepControl(
            *controller.exponents(error_order),
            float(controller.safety),
            float(controller.ifactor),
            float(controller.dfactor),
            float(controller.min_step),
            float(controller.max_step),
            int(controller.max_num_steps),
            time_limit(dtype),
            int(attempts),
            float(torch.finfo(dtype).eps),
            not controller.shrink_after_accept,
            not controller.grow_after_reject,
        )


#: StepControl.of's results (a loop of solves asks for the same constants every time), keyed by
#: the controller settings it reads
_STEP_CONTROLS: dict = {}
_CONTROL_SETTINGS = "pcoeff icoeff dcoeff safety ifactor dfactor min_step max_step max_num_steps".split() + [
    "shrink_after_accept",
    "grow_after_reject",
]


def time_limit(dtype: torch.dtype) -> float:
    """The largest |t| a solve without an end time may reach before it reports that no event was found.

    ``1e-6`` of the largest finite number, so that a step's coefficients (``dt`` times the stage
    derivatives) stay finite; taken at least from float32's range, because float16's (65504) would
    end every solve at t = 0.066 although its times are float32 or wider (an overflow of a float16
    state is caught by the error test, which rejects a non-finite step).

    Args:
        dtype: the state's dtype (a complex dtype counts as its real dtype).

    Returns:
        The limit, a host float.
    """
    return 1e-6 * max(torch.finfo(dtype).max, torch.finfo(torch.float32).max)


def landing(xp, t, dt, stop, max_step: float, stretch: float = _STRETCH):
    """Where the attempt from ``t`` with proposed step ``dt`` ends, given the next time ``stop`` where steps must end.

    A step that would reach within ``stretch - 1`` of its size before ``stop`` (and may grow that far
    under ``max_step``) is stretched to end exactly there (Hairer, Nørsett, Wanner, II.4).

    Args:
        xp: the array namespace.
        t: current time; dt: proposed step; stop: the next stop (output end, jump, ...).
        max_step: the controller's bound on the step.
        stretch: the stretch factor (1.0: land only when the step reaches ``stop`` itself).

    Returns:
        ``(lands, step_dt, t1)``: whether the step ends at ``stop``, the step to attempt and its end time.
    """
    reach = t + xp.maximum(dt, xp.minimum(dt * stretch, max_step))
    lands = reach >= stop
    step_dt = xp.where(lands, stop - t, dt)
    return lands, step_dt, xp.where(lands, stop, t + step_dt)


#: the least error ratio the shared-step loops' PID formula sees: an error estimate of exactly 0 (a
#: field at rest, a polynomial solution) gives the step the formula's growth at this ratio
RATIO_FLOOR = 1e-10
#: the per-sample loop's floor, torchode's (its ``almost_zero``): the steps of a sample at rest then
#: grow as torchode's for gains summing below 0.52 (5(4) pairs), where 1e-10 held them back
PER_SAMPLE_RATIO_FLOOR = 1e-38


def propose(xp, c: StepControl, dt, ratio, accepted, r1, r2, floor: float = RATIO_FLOOR):
    """The next step and the controller's memory after an attempt of size ``dt`` with error ratio ``ratio``.

    ``dt * safety * r^e1 * r1^e2 * r2^e3`` (Söderlind 2003) after an accepted step, the factor clipped
    to [``dfactor``, ``ifactor``]. After a rejected one the elementary controller ``dt * safety * r^e1``
    alone, clipped to [``dfactor``, 1], as Hairer & Wanner recommend (Solving ODEs I, section II.4):
    with r > 1 and e1 < 0 it always shrinks the step, where the history terms of a PID controller
    could hold it (a step rejected again and again at the same size); a non-finite ratio shrinks by
    ``dfactor``; the step is capped by ``max_step``. For the default I controller both are the same.
    With ``keep_after_accept`` an accepted step whose ratio is below 1 never shrinks the next one (the
    factor at least 1: torchdiffeq's ``_optimal_step_size`` and diffrax's ``PIDController``). With
    ``hold_after_reject`` the factor after an accepted step that directly follows a rejected attempt is
    at most 1 (Hairer's ``facmax = 1`` after a rejection, scipy's ``RK45``; Solving ODEs I, II.4).

    ``hold_after_reject`` needs to know whether the previous attempt was rejected; rather than a third
    memory that every loop would carry, it is the sign of ``r1``: a rejection returns ``-|r1|``, the
    formula reads ``|r1|``, and an acceptance returns its own (positive) ratio. Without the setting
    ``r1`` stays positive and the steps are unchanged.

    The ratio is floored at ``floor`` (a zero error would divide by 0), and with exponents above 1 in
    magnitude held within :attr:`StepControl.ratio_bounds`, where every power is finite and non-zero.

    The numbers of ``c`` are floats (the host and per-sample loops) or 0-d float64 tensors, elements
    of a settings input (:class:`~hybrid_node.loop.graph_inputs.InputControl`: the compiled graphs,
    and the device loop's runs, compiled or not): the operations and their order are the
    same, so both round alike; only the two rules ``keep_after_accept`` and ``hold_after_reject``
    and the namespace choose operations.

    Args:
        xp: the array namespace.
        c: the step-control constants.
        dt: the attempted step; ratio: its error ratio (accepted when at most 1).
        accepted: whether the attempt was accepted.
        r1, r2: the error ratios of the last two accepted steps (1.0 before any); ``r1`` negated after
            a rejected attempt under ``hold_after_reject``.
        floor: the least ratio the formula sees (positive): :data:`RATIO_FLOOR`, or
            :data:`PER_SAMPLE_RATIO_FLOOR` for the per-sample loop.

    Returns:
        ``(dt_next, r1_next, r2_next)``.
    """
    if c.hold_after_reject:  # a constant of the solve: no branch on data
        after_reject = r1 < 0.0
        r1 = abs(r1)
    r = xp.maximum(ratio, floor)  # a NaN ratio stays NaN on tensors; it is replaced below anyway
    bounds = c.ratio_bounds  # decided from the settings, not from data: no branch in a graph
    if bounds is not None:
        r = xp.minimum(xp.maximum(r, bounds[0]), bounds[1])
    elementary = c.safety * r**c.e1
    factor = xp.where(accepted, elementary * r1**c.e2 * r2**c.e3, elementary)
    grow = xp.full_like(r, c.ifactor)
    if c.hold_after_reject:
        grow = xp.where(after_reject, xp.full_like(r, 1.0), grow)
    cap = xp.where(accepted, grow, 1.0)
    low = c.dfactor
    if c.keep_after_accept:  # a constant of the solve: no branch on data
        low = xp.where(accepted & (r < 1.0), xp.full_like(r, 1.0), c.dfactor)
    factor = xp.smaller(cap, xp.maximum(factor, low))
    factor = xp.where(xp.isfinite(ratio), factor, c.dfactor)
    kept = -r1 if c.hold_after_reject else r1  # the rejection is remembered by the sign (see above)
    return xp.minimum(dt * factor, c.max_step), xp.where(accepted, r, kept), xp.where(accepted, r1, r2)


def step_floor(xp, t, min_step: float, eps: float = _EPS, origin: float | torch.Tensor | None = None):
    """The resolution floor ``max(min_step, eps max(1, |t|) / 4)``: a step below it fails the solve.

    The loops pass ``min_step = 0`` (through :func:`settle`): a positive ``min_step`` clamps the step
    instead of failing it (see :func:`settle`).

    ``eps`` is the state dtype's machine epsilon (:attr:`StepControl.eps`), not float64's: the
    float64 host time still moves by steps far below float32's resolution, but a float32 state
    does not, so with float64's floor a float32 solve that overflows crept on forever with steps
    that leave the state unchanged (an accepted no-op, then a rejected overflow, and again)
    instead of reporting the non-finite state; the same floor ends a float64 solve at the float64
    overflow. The quarter: the field sees the time in the state's dtype, one ulp of which is
    between ``eps |t| / 2`` and ``eps |t|``, so a discontinuity of the field lies inside one ulp and
    the step that crosses it must be allowed to be a fraction of that ulp (torchdiffeq's float32
    time crosses the same way); a whole-ulp floor failed such solves (a jump without ``jump_t``).

    With ``origin`` (the solve's first time), ``|t|`` in the state's ``eps`` term is the smaller of
    ``|t|`` and ``|t - origin|``, and float64's resolution of the host time, ``_EPS |t| / 4``, bounds
    the floor below: a creeping solve has crept over the time since its start, and ``|t|`` alone
    failed float32 solves far from zero whose steps are below ``eps |t| / 4`` (``y' = -10 y`` on
    [1e6, 1e6 + 1]: a floor of 0.03 against steps of 0.02), which torchdiffeq, whose host time is
    float64, solves to 2.5e-10. The floor is never above the one without ``origin``, so no solve
    fails that passed without it.

    Args:
        xp: the array namespace.
        t: the current time.
        min_step: the controller's lower bound.
        eps: the machine epsilon the floor is relative to (default float64's).
        origin: the solve's first time (solver time), or None for ``|t|`` alone.

    Returns:
        The floor, in ``xp``'s kind (host float or tensor).
    """
    if origin is None:
        resolution = eps * xp.maximum(abs(t), 1.0)
    else:
        elapsed = xp.smaller(abs(t), abs(t - origin))
        resolution = xp.larger(eps * xp.maximum(elapsed, 1.0), _EPS * abs(t))
    return xp.maximum(0.25 * resolution, min_step)


def precheck(xp, c: StepControl, n_attempts, t, dt):
    """The failure before an attempt: MAX_STEPS when the attempts are used up, NO_EVENT when
    ``t + dt`` is beyond ``t_limit`` (only an event solve has no end time), else RUNNING."""
    beyond = xp.logical_not(abs(t + dt) < c.t_limit)
    return xp.where(n_attempts >= c.max_num_steps, MAX_STEPS, xp.where(beyond, NO_EVENT, RUNNING))


def at_min_step(c: StepControl, step_dt):
    """Whether an attempt of size ``step_dt`` is one at ``min_step``: at most ``min_step`` times the stretch.

    :func:`landing` stretches a step by up to ``_STRETCH`` to end on a stop, and the rest of the way to
    the end after many steps of ``min_step`` is ``min_step`` plus the rounding of the time (1.7e-13 after
    999 steps of 0.01): that step is one at ``min_step`` too. Compared with ``min_step`` itself it was
    rejected, and retried unchanged (its proposal is clamped back to ``min_step``, which lands the same)
    until ``max_num_steps``.

    Args:
        c: the step-control constants.
        step_dt: the attempt's size.

    Returns:
        The decision, in the kind of ``step_dt``.
    """
    return step_dt <= c.min_step * _STRETCH


def accepts(xp, c: StepControl, ratio, step_dt):
    """Whether an attempt of size ``step_dt`` with error ratio ``ratio`` is accepted.

    Accepted when ``ratio <= 1``; with ``min_step > 0`` also when the step is at most ``min_step`` (or
    stretched from it to land on a stop, :func:`at_min_step`) and its ratio is finite, whatever its
    error: that is what ``min_step`` means in torchdiffeq (its ``_adaptive_step`` accepts ``dt <=
    min_step``), a floor the user chose over the tolerance, e.g. to bound the work on a problem whose
    accuracy matters less than its cost. A non-finite ratio is
    never accepted (the state would be garbage); :func:`settle` then ends the solve.

    Args:
        xp: the array namespace.
        c: the step-control constants.
        ratio: the attempt's error ratio; step_dt: its size.

    Returns:
        The decision, in ``xp``'s kind.
    """
    ok = ratio <= 1.0
    if c.has_min_step:  # static: min_step = 0 leaves the decision (and a compiled graph) as it was
        ok = ok | (xp.isfinite(ratio) & at_min_step(c, step_dt))
    return ok


def settle(xp, c: StepControl, done, t, dt, step_dt, last_nonfinite, origin: float | torch.Tensor | None = None):
    """The next step and the status after an attempt of size ``step_dt``.

    The proposal ``dt`` is clamped below at ``min_step`` (torchdiffeq's ``dt.clamp(min_step,
    max_step)``; the step at ``min_step`` is then accepted by :func:`accepts`). The status is SUCCESS
    when the solve is ``done``; else a failure when the next step is below the resolution floor
    :func:`step_floor` (``min_step = 0``, or a ``min_step`` below the floor at a large ``|t|``), or when
    an attempt at ``min_step`` or below (:func:`at_min_step`) was rejected for a non-finite error
    ratio (no smaller step is allowed, so retrying would repeat it): NONFINITE when the last attempt was rejected for a
    non-finite ratio, else STEP_UNDERFLOW; else RUNNING.

    Args:
        xp: the array namespace.
        c: the step-control constants.
        done: whether the solve has ended.
        t: the current time; dt: the proposed next step; step_dt: the step just attempted.
        last_nonfinite: whether the last attempt was rejected for a non-finite ratio.
        origin: the solve's first time, for :func:`step_floor` (None: the floor from ``|t|`` alone).

    Returns:
        ``(dt, status)``.
    """
    small = xp.where(last_nonfinite, NONFINITE, STEP_UNDERFLOW)
    floor = step_floor(xp, t, 0.0, c.eps, origin)
    if c.has_min_step:  # static, as in :func:`accepts`
        stuck = last_nonfinite & at_min_step(c, step_dt)
        dt = xp.maximum(dt, c.min_step)
        failing = (dt < floor) | stuck
    else:
        failing = dt < floor
    return dt, xp.where(done, SUCCESS, xp.where(failing, small, RUNNING))


def emission(xp, ts, t0, t1):
    """The output times that an accepted step [t0, t1] emits, and where in the step they lie.

    Output times are strictly increasing, so the step emits exactly those in (t0, t1]; one at t1
    itself is the step's end state, the others its dense output at ``theta = (t - t0) / (t1 - t0)``.

    Args:
        xp: the array namespace.
        ts: output time(s): a float, or a tensor broadcastable against ``t0`` and ``t1``.
        t0, t1: the step's start and end.

    Returns:
        ``(within, at_end, theta)``; theta is 0 outside the step (finite, so masked rows keep
        gradients finite).
    """
    within = (ts > t0) & (ts <= t1)
    at_end = within & (ts == t1)
    return within, at_end, xp.where_divide(within, ts - t0, t1 - t0)
