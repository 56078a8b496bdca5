"""Per-sample terminal events: every sample of a batch stops at its own first root of the event function.

Design. The batch is integrated by the ordinary shared-step adaptive loop (one step size, one error
test, one call of the field per stage for the whole batch); only the event bookkeeping is per sample:

1. ``event_fn(t, y)`` returns one value per sample (a tensor of the batch shape, the leading
   dimensions of the state). After every accepted step the loop compares each running sample's sign
   with its sign at t0, at the step's end and at four interior points of its dense output (as
   ``Event(samples=4)``), so that a value that leaves its sign and returns inside one step is seen.
2. For the samples whose sign changed inside the step [t0, t1], the root is located on the step's
   dense output by bisection between the last check with the start sign and the first without,
   vectorised over those samples: each has its own bracket, all brackets are halved together, and
   one call of ``event_fn`` per halving evaluates every sample at its own time (``t`` is then a
   tensor of the batch shape). Bisection on the dense output is the robust
   variant of the event location of Shampine & Thompson (2000); the root is found to a few ulps of
   the time, and its accuracy is that of the dense output, i.e. of the solver's tolerance.
3. Those samples are frozen at their event state: their rows of the state are replaced by the dense
   output at their own event times, and from then on the field is replaced by zero in their rows, so
   every later step leaves them exactly unchanged (a Runge-Kutta step of a zero field is the
   identity), while the error norm only measures the rows still running. The state changed, so the
   solver restarts from it (a fresh first-same-as-last stage) with the step size it had.
4. The solve ends when every sample has fired, or when the search reaches ``event_end`` or runs out
   of ``max_num_steps``: the samples still running are reported as not fired (a status per sample),
   never waited for.

Freezing costs nothing extra per step (the batch is evaluated in one call anyway), and the shared
step keeps every sample to the solver's tolerance. The interior checks cost one evaluation of the
dense output at four points and four calls of ``event_fn`` per step. Each step in which samples
fire costs one bisection (about 50 event evaluations in float64, each reading the dense output in
the located samples' rows only) and, with gradients, the dense output's slope at each fired
sample's event (the implicit-function-theorem gradient needs it; a field call per fired sample only
for an interpolant without per-sample slopes, :meth:`_Locator.rates`). Two roots of one sample
closer together than the checks are still not seen.

Gradients: the frozen rows keep their autograd graph (the dense output at fixed time, then identity
steps), and :mod:`hybrid_node.sensitivity.per_sample_events` adds the implicit-function-theorem
term of each sample's event time, as for the single terminal event.

Reference: L. F. Shampine and S. Thompson, "Event location for ordinary differential equations",
Comput. Math. Appl. 39 (2000) 43-54.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .._errors import SolverError, Status
from .._solution import Stats
from .._stack import caller_stacklevel
from .._term import Term
from .._transforms import inside_transform
from ..controllers import ConstantStepSize, PIDController, error_ratio, rms_norm
from . import core
from .core import _EPS, FLOAT, RUNNING
from .diagnose import failure_cause
from .host import DenseSegment, check_no_nan, check_points, first_step, take_counters
from .host import _emit as _emit_outputs
from .stiff_watch import largest_rho, records_steps, watch_for

# a bracket narrower than this many ulps of the time is closed (as the single event's bisection)
_BRACKET_ULPS = 4.0
# bisection halves a float64 bracket to 4 ulps in at most ~60 halvings; the cap only guards a NaN
_MAX_HALVINGS = 200
# the rows (samples x times) one dense-output evaluation of an interpolant without per-sample rows may
# make while events are located: a million rows, so a batch of 10^4 takes 100 times at a time
_ROWS_BUDGET = 1 << 20


class _Attempt(NamedTuple):
    """One step attempt of an event loop (:meth:`_Steps.attempt`), in solver time."""

    step_dt: float
    t1: float
    step: Any
    ratio: float
    #: on acceptance the solver's state at t1, else None
    new_state: Any
    #: on acceptance the step's dense output over [t, t1], else None
    seg: DenseSegment | None

    @property
    def accepted(self) -> bool:
        return self.seg is not None


class _Steps:
    """The step decisions of the event loops: a PID controller's, or a constant step.

    With :class:`~hybrid_node.ConstantStepSize` every step is ``step_size`` long and accepted (the
    last one before the end is shortened to land there, as on a fixed grid), and a restart after a
    jump starts a new grid at the event; the dense output is the solver's own interpolant.

    Args:
        controller: PIDController or ConstantStepSize (with ``step_size``).
        solver: the solver (its error order and step proposals, for the PID controller).
        dtype: the state's dtype (the time limit and the resolution of an event solve).
    """

    def __init__(self, controller: PIDController | ConstantStepSize, solver, dtype: torch.dtype):
        self.solver = solver
        self.pid: PIDController | None = None
        if isinstance(controller, ConstantStepSize):
            if controller.step_size is None:
                raise ValueError("events on fixed steps need options={'step_size': ...} (or an adaptive method).")
            self.h = float(controller.step_size)
            eps = float(torch.finfo(dtype).eps)
            n_max, limit = controller.max_num_steps, core.time_limit(dtype)
            # no PID terms (exponents 0, factors 1) and no step bounds: only the step cap and the time limit
            self.c = core.StepControl(0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, math.inf, n_max, limit, 1, eps)
        else:
            self.pid = controller
            self.c = core.StepControl.of(controller, solver.error_order, dtype)
        self.fixed = self.pid is None

    def first(self, term, t: float, y: torch.Tensor, state, rtol, atol, norm) -> float:
        """The first step from (t, y): the constant one, or the initial-step heuristic's."""
        if self.pid is None:
            return self.h
        return first_step(term, self.solver, self.pid, t, y, state, rtol, atol, norm)

    def memory(self) -> tuple[float, float]:
        """The controller's memory of past error ratios at a (re)start."""
        return (1.0, 1.0) if self.pid is None else self.pid.init()

    def landing(self, t: float, dt: float, stop: float):
        """As :func:`~hybrid_node.loop.core.landing`; fixed steps are not stretched to land."""
        if self.fixed:
            return core.landing(FLOAT, t, dt, stop, self.c.max_step, stretch=1.0)
        return core.landing(FLOAT, t, dt, stop, self.c.max_step)

    def ratio(self, step, y: torch.Tensor, rtol, atol, norm) -> float:
        """The attempt's error ratio (0 for fixed steps: always accepted)."""
        return 0.0 if self.fixed else error_ratio(step.error, y, step.y1, rtol, atol, norm)

    def attempt(
        self, term: Term | FrozenRows, t: float, y: torch.Tensor, state, dt: float, stop: float, rtol, atol, norm
    ) -> _Attempt:
        """One step attempt of an event loop from (t, y) with step ``dt``, landing on ``stop``.

        Args:
            term: the field the loop steps (its counters count the evaluations; per-sample: the frozen rows').
            t, y, state: where the loop stands and the solver's state there.
            dt: the proposed step; stop: the time where the search ends (a step lands there).
            rtol, atol, norm: the error test (adaptive steps).

        Returns:
            The attempt; on acceptance with the solver's state at its end and its dense output.

        Reference: E. Hairer, S. P. Nørsett, G. Wanner, Solving Ordinary Differential Equations I,
        2nd ed., Springer 1993, section II.4 (step-size control) and II.6 (dense output).
        """
        _, step_dt, t1 = self.landing(t, dt, stop)
        step = self.solver.step(term, t, y, state, step_dt)
        ratio = self.ratio(step, y, rtol, atol, norm)
        if not core.accepts(FLOAT, self.c, ratio, step_dt):
            return _Attempt(step_dt, t1, step, ratio, None, None)
        new_state = self.solver.next_state(term, t1, step)
        seg = DenseSegment(t, t1, self.solver.interpolant(term, t, y, step_dt, step, new_state))
        return _Attempt(step_dt, t1, step, ratio, new_state, seg)

    def next(self, state, step_dt: float, ratio: float, accepted: bool, r1, r2):
        """The next step and controller memory after an attempt."""
        if self.fixed:
            return self.h, r1, r2
        dt, r1, r2 = core.propose(FLOAT, self.c, step_dt, ratio, accepted, r1, r2)
        return min(self.solver.propose_step(state, step_dt, dt), self.c.max_step), r1, r2


@dataclasses.dataclass
class SampleEvents:
    """Raw result of :func:`integrate_sample_events` (solver time, the batch flattened to rows).

    Attributes:
        y_event: the state (the solver's shape) with each fired sample at its event state and each
            other sample where the search stopped; it carries the autograd graph of the solve.
        t_event: (n,) float64 array of each sample's event time (solver time); for a sample that did
            not fire, the time where the search stopped.
        fired: (n,) bool array: whether the sample's event fired.
        f_event: (n, m) dy/dt in the user's time at each fired sample's event, the slope of the
            dense output there (zero for the others, and for all when the loop was not asked for
            it), without graph; for the implicit-function-theorem gradient.
        batch_shape: the shape of the event function's value (the leading dimensions of the state).
        stats, status, t_reached: counters; EVENT when every sample fired, else NO_EVENT or the
            failure; the time the solve reached.
        detail: what stopped a search that did not find every event.
    """

    y_event: torch.Tensor
    t_event: np.ndarray
    fired: np.ndarray
    f_event: torch.Tensor
    batch_shape: torch.Size
    stats: Stats
    status: Status
    t_reached: float
    detail: str = ""


class FrozenRows:
    """A term whose field is zero in the rows (samples) that have stopped, so steps leave them unchanged.

    Everything else (time, reverse, counters, ...) is the wrapped term's, as for
    :class:`~hybrid_node._term.LeftLimit`.

    Args:
        term: the wrapped term.
        frozen: (n,) bool tensor, True for stopped samples (read at every call: the loop updates it).
        batch_shape: the leading dimensions of the state that index the samples.
        watch: note non-finite values in frozen rows also in calls without a graph: an adjoint will
            differentiate the field there later (:meth:`warn_nonfinite`).
    """

    __slots__ = ("_term", "_frozen", "_batch_shape", "_nonfinite", "_watch")
    _term: Term
    _frozen: torch.Tensor
    _batch_shape: torch.Size
    _nonfinite: list[torch.Tensor | None]
    _watch: bool

    def __init__(self, term: Term, frozen: torch.Tensor, batch_shape: torch.Size, watch: bool = False):
        object.__setattr__(self, "_term", term)
        object.__setattr__(self, "_frozen", frozen)
        object.__setattr__(self, "_batch_shape", batch_shape)
        # a 0-d bool tensor once a call with a graph has run: whether a frozen row was non-finite there
        object.__setattr__(self, "_nonfinite", [None])
        object.__setattr__(self, "_watch", watch)

    def __call__(self, t: float, y: torch.Tensor, perturb: int = 0) -> torch.Tensor:
        f = self._term(t, y, perturb)
        # a copy: torch.where keeps its mask for the backward pass, and the loop updates ``frozen`` in place
        mask = self._frozen.clone().reshape(tuple(self._batch_shape) + (1,) * (f.dim() - len(self._batch_shape)))
        if f.requires_grad or self._watch:
            # noted on the device, without a host synchronisation per call; read once after the loop
            with torch.no_grad():
                bad = (mask & ~torch.isfinite(f)).any()
            seen = self._nonfinite[0]
            self._nonfinite[0] = bad if seen is None else seen | bad
        # torch.where, not a product: a frozen sample's field may be non-finite where it now sits
        return torch.where(mask, torch.zeros((), dtype=f.dtype, device=f.device), f)

    def warn_nonfinite(self) -> None:
        """Warn where a call with a graph (any call, when watching) was non-finite in a frozen sample's rows.

        The solution is right (those rows are masked out of the steps), but the backward pass
        multiplies the masked values by the mask's zero inside the field's own backward, and
        0 * inf is NaN: every gradient through the solve is NaN, those of the other samples and of
        shared parameters included. An adjoint's vector-Jacobian products of the switched field
        (:func:`~hybrid_node.sensitivity.event_adjoint.frozen_after`) meet the same values, and its
        backward solve stops at a non-finite state. Only the field can avoid it, by staying finite there.
        """
        seen = self._nonfinite[0]
        if seen is not None and bool(seen):
            consequence = (
                "the adjoint's backward solve will fail with a non-finite state (its vector-Jacobian products multiply "
                "those values by the frozen rows' zero)"
                if self._watch
                else "the gradients through this solve will be NaN (the backward pass multiplies those values by "
                "the frozen rows' zero)"
            )
            warnings.warn(
                "per-sample events: the field returned non-finite values in the rows of samples whose event had "
                "already fired (e.g. sqrt(c - t) past c). The solution is unaffected, since those rows are frozen, "
                f"but {consequence}. Keep the field finite past each sample's event, e.g. clamp the argument "
                "into its domain: sqrt((c - t).clamp(min=0)).",
                RuntimeWarning,
                stacklevel=caller_stacklevel(),
            )

    def __getattr__(self, name: str):
        return getattr(self._term, name)

    def __setattr__(self, name: str, value) -> None:
        if name not in ("nfe", "n_jacobian", "n_switches"):
            raise AttributeError(f"FrozenRows is immutable; cannot set {name!r}.")
        setattr(self._term, name, value)  # the counters are the term's


def check_event_controller(problem, what: str) -> None:
    """Raise ValueError where the event loops cannot serve the problem's step control.

    They run on the host with shared steps: a PIDController (no ``per_sample``, ``device_loop``),
    or a ConstantStepSize with ``step_size`` (the loop lays its own grid, restarted at each jump)
    and without an explicit ``interp`` (the crossings are located on the solver's own dense output, which
    ``interp`` does not choose: a setting that would not act is refused); no compiled steps.

    Args:
        problem: the validated problem.
        what: the kind of event solve, for the message.

    Raises:
        ValueError: a ConstantStepSize without ``step_size``, with ``grid_constructor``/``perturb`` or
            an explicit ``interp`` ("linear" too), ``per_sample`` or ``device_loop`` step control, or compiled steps.
    """
    ctrl = problem.controller
    if isinstance(ctrl, ConstantStepSize):
        if ctrl.step_size is None or ctrl.grid_constructor is not None or ctrl.perturb:
            raise ValueError(
                f"{what} on fixed steps need options={{'step_size': ...}} (hn.ConstantStepSize(step_size=...)) "
                "and no grid_constructor or perturb: the event loop lays its own grid and restarts it at each jump."
            )
        if ctrl.interp is not None:  # either value, given explicitly: None is "not given" (ConstantStepSize)
            raise ValueError(interp_unread(what, "hn.ConstantStepSize(interp=...)"))
    elif ctrl.per_sample or ctrl.device_loop:
        raise ValueError(
            f"{what} run on the shared-step host loop; drop options 'per_sample' (per-sample step control) "
            "and 'device_loop'."
        )
    if problem.solver.compile:
        raise ValueError(f"compiled steps cannot be combined with {what}; drop compile.")


def interp_unread(what: str, given: str) -> str:
    """The message refusing a fixed-step ``interp`` that an event loop would not read.

    Args:
        what: the kind of event solve.
        given: where the setting was given (``options['interp']``, ``hn.ConstantStepSize(interp=...)``).

    Returns:
        The message: what the loop uses instead, and the fix.
    """
    return (
        f"{what} do not read {given}: their crossings and outputs come from the solver's own dense output "
        "(the cubic Hermite interpolant for rk4, euler, midpoint, ...), whatever interp says; drop interp. "
        "Only the single terminal event of hn.odeint_event (per_sample off) interpolates as interp says, as "
        "torchdiffeq does."
    )


def check_event_search(problem, what: str, decides: str, batching: str) -> None:
    """Raise ValueError where the host event loops cannot serve ``problem`` at all.

    Beside the step control (:func:`check_event_controller`): no ``jump_t``/``step_t``, and no call
    inside a torch.func transform, where the loop's per-step host decision raised vmap's bare
    data-dependence error.

    Args:
        problem: the validated problem.
        what: the kind of event solve, for the messages.
        decides: what the search decides on the host after every step (which elements crossed ...).
        batching: how to solve the transform's problems instead, as one batch.

    Raises:
        ValueError: as :func:`check_event_controller`, or with ``jump_t``/``step_t``, or inside a transform.
    """
    check_event_controller(problem, what)
    if problem.jump_t or problem.step_t:
        raise ValueError(f"{what} cannot take jump_t or step_t; drop them.")
    if inside_transform():
        raise ValueError(
            f"{what} cannot run inside torch.func transforms (vmap, grad, jacrev, ...): the search decides on "
            f"the host after every step {decides}; solve outside the transform, {batching}."
        )


def check_event_values(g0: torch.Tensor, y0: torch.Tensor) -> torch.Size:
    """The batch shape of a per-sample event function, from its value at the start.

    Args:
        g0: ``event_fn(t0, y0)``.
        y0: the initial state.

    Returns:
        ``g0.shape``.

    Raises:
        ValueError: the value is a scalar or its shape is not the leading dimensions of the state.
    """
    if g0.dim() < 1 or tuple(y0.shape[: g0.dim()]) != tuple(g0.shape):
        raise ValueError(
            f"with per_sample events, event_fn must return one value per sample, a tensor whose shape is the "
            f"leading (batch) dimensions of the state; the state has shape {tuple(y0.shape)} and event_fn "
            f"returned shape {tuple(g0.shape)} (e.g. return y[:, 0] - 1.0 for a state of shape (batch, dim))."
        )
    return g0.shape


def _user_times(term: Term, s: np.ndarray) -> np.ndarray:
    return -s if term.reverse else s


class _Workspace(NamedTuple):
    """The batch handed to the event function while samples are located (:meth:`_Locator.workspace`).

    Attributes:
        y: (n, m) the state, the step's end but for the located samples' rows.
        t: (n,) each sample's time (user time, the field's time dtype, the state's device).
    """

    y: torch.Tensor
    t: torch.Tensor


class _Locator:
    """Evaluates rows of one step's dense output and the event function at per-sample times."""

    def __init__(self, event_fn, term: Term, seg: DenseSegment, y1: torch.Tensor, batch_shape: torch.Size):
        self.event_fn = event_fn
        self.term = term
        self.seg = seg
        self.y1 = y1
        self.batch_shape = batch_shape
        self.n = int(math.prod(batch_shape))

    def _thetas(self, times: np.ndarray) -> list[float]:
        """The step's fractions at ``times`` (solver time); exactly 1 at the step's end."""
        return self._theta_array(times).tolist()

    def _theta_array(self, times: np.ndarray) -> np.ndarray:
        """:meth:`_thetas` as a float64 array, in one vectorised pass (the same float64 operations)."""
        t0, t1 = self.seg.t0, self.seg.t1
        return np.where(times == t1, 1.0, (times - t0) / (t1 - t0))

    def rows(self, times: np.ndarray, idx: torch.Tensor) -> torch.Tensor:
        """Row ``idx[j]`` of the dense output at ``times[j]``, shape (k, m); with autograd as enabled."""
        return self._rows_at(self._thetas(times), idx)

    def _rows_at(self, thetas: list[float], idx: torch.Tensor) -> torch.Tensor:
        """Row ``idx[j]`` of the dense output at the fraction ``thetas[j]``, as :meth:`rows`."""
        own = getattr(self.seg.interpolant, "sample_rows", None)
        if own is not None:  # each sample at its own time only: O(k), where the diagonal below is O(k * n)
            return own(thetas, idx, self.n)
        # an interpolant without per-sample rows: every sample at every time, in chunks of times so the
        # intermediate stays near the size of the state (the work is still k * n rows)
        chunk = max(1, _ROWS_BUDGET // max(1, self.n))
        parts = []
        for a in range(0, len(thetas), chunk):
            many = self.seg.interpolant.many(thetas[a : a + chunk]).reshape(-1, self.n, self.y1.numel() // self.n)
            parts.append(many[torch.arange(many.shape[0], device=many.device), idx[a : a + chunk]])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def rates(self, times: np.ndarray, idx: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Each sample ``idx[j]``'s dy/dt at its own event time ``times[j]``, in the user's time, shape (k, m).

        The time derivative of the step's dense output, whose rows are the event states: the rate
        at which the returned event state moves with its event time, which the implicit function
        theorem needs (it agrees with the field there to the dense output's order, and differentiates
        the computed event exactly). It takes O(k) rows of the interpolant and no call of the field.
        An interpolant without per-sample slopes (every built-in one has them) gets the field instead:
        one call on the whole batch per sample (a field may read the whole batch), O(k * n) rows.

        Args:
            times: (k,) the event times (solver time, inside the step).
            idx: (k,) the samples.
            base: the state with the located samples at their events, for the field's calls.

        Returns:
            A (k, m) tensor without graph.
        """
        with torch.no_grad():
            own = getattr(self.seg.interpolant, "sample_slopes", None)
            if own is not None:
                rate = own(self._thetas(times), idx, self.n) / (self.seg.t1 - self.seg.t0)
            else:
                rate = torch.stack(
                    [self.term(s, base).reshape(self.n, -1)[j] for j, s in zip(idx.tolist(), times.tolist())]
                )
        return -rate if self.term.reverse else rate

    def workspace(self) -> _Workspace:
        """The batch the event function is called on while samples are located, at the step's end.

        Made once per bisection, not once per halving: each halving overwrites only the located
        samples' rows and times (:meth:`halving`), every other row stays the step's end, as it was
        when the whole batch was built afresh at every halving (a copy of the state, a time vector
        and its conversion, per halving; the same values either way).

        Returns:
            A :class:`_Workspace` without graph.
        """
        y = self.y1.detach().reshape(self.n, -1).clone()
        t = torch.from_numpy(_user_times(self.term, np.full(self.n, self.seg.t1, dtype=np.float64)))
        return _Workspace(y, t.to(self.term.t_dtype).to(y.device))

    def reader(self, idx: torch.Tensor):
        """A function ``thetas -> rows`` of the samples ``idx`` at their own fractions, as :meth:`rows` reads them.

        Uses the interpolant's ``sample_reader`` where it has one (the work that depends on ``idx``
        alone, such as gathering the rows' coefficients, done once for all reads), else its
        ``sample_rows``, else the chunked diagonal of :meth:`rows`; the same values to the bit.
        Made and used in one autograd mode (the bisection's: without graph).

        Args:
            idx: (k,) the samples every read is for.

        Returns:
            A function of a (k,) float64 array of fractions returning a (k, m) tensor.
        """
        prepare = getattr(self.seg.interpolant, "sample_reader", None)
        if prepare is not None:
            return prepare(idx, self.n)
        own = getattr(self.seg.interpolant, "sample_rows", None)
        if own is not None:
            return lambda thetas: own(thetas.tolist(), idx, self.n)
        return lambda thetas: self._rows_at(thetas.tolist(), idx)

    def halving(self, idx: torch.Tensor, sign0: torch.Tensor):
        """One bisection's step as a function: which samples ``idx`` have left ``sign0`` at given times.

        Everything that depends only on the samples is made once per bisection, not once per
        halving: the batch handed to ``event_fn`` and its views (:meth:`workspace`), the rows'
        reader (:meth:`reader`), the signs on the host. A halving then evaluates the rows, writes
        them and their times into the batch, calls ``event_fn`` once and brings its k values to the
        host once, where the NaN check and the sign test read them (one synchronisation, where the
        tensor NaN check and the sign test took one each).

        Args:
            idx: (k,) the samples to locate; sign0: (k,) their signs at the brackets' left ends.

        Returns:
            A function of (k,) solver times returning a (k,) bool array: the sign differs from ``sign0``.

        Raises:
            ValueError: (from the function) an event value is NaN.
        """
        work = self.workspace()
        y_batch, t_batch = work.y.reshape(self.y1.shape), work.t.reshape(self.batch_shape)  # views of work
        read = self.reader(idx)
        ref = sign0.cpu().numpy()
        t_dtype, device = self.term.t_dtype, work.t.device

        def changed(times: np.ndarray) -> np.ndarray:
            rows = read(self._theta_array(times))
            work.y.index_copy_(0, idx, rows)
            t_user = _user_times(self.term, times)
            work.t.index_copy_(0, idx, torch.from_numpy(t_user).to(t_dtype).to(device))
            g = self.event_fn(t_batch, y_batch).reshape(self.n).index_select(0, idx)
            host = g.cpu().numpy()
            if np.isnan(host).any():
                check_no_nan(g, t_user, rows, idx)  # raises, naming where
            return np.sign(host) != ref

        return changed

    def locate(self, idx: torch.Tensor, sign0: torch.Tensor, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Bisection for each sample ``idx[j]``'s change of sign from ``sign0[j]`` inside ``[lo[j], hi[j]]``.

        The brackets stay on the host (NumPy) throughout; each halving is one call of
        :meth:`halving`'s function, all under one ``no_grad``.

        Args:
            idx: the samples to locate.
            sign0: their signs at ``lo`` (the start signs, or with a direction the side the root leaves).
            lo, hi: (k,) each sample's bracket (solver time, inside the step): its sign is ``sign0``
                at ``lo`` and differs at ``hi``, and nowhere before ``lo`` in the step.

        Returns:
            (k,) the right ends of the final brackets (solver time): the first times found past each root.
        """
        lo, hi = lo.copy(), hi.copy()
        width = _BRACKET_ULPS * _EPS * max(1.0, abs(self.seg.t0), abs(self.seg.t1))
        with torch.no_grad():
            changed = self.halving(idx, sign0)
            for _ in range(_MAX_HALVINGS):
                mid = 0.5 * (lo + hi)
                open_ = (hi - lo > width) & (mid > lo) & (mid < hi)
                if not open_.any():
                    break
                moved = changed(np.where(open_, mid, hi))
                hi = np.where(open_ & moved, mid, hi)
                lo = np.where(open_ & ~moved, mid, lo)
        return hi


def integrate_sample_events(
    term: Term,
    solver,
    controller: PIDController | ConstantStepSize,
    y0: torch.Tensor,
    t0: float,
    *,
    rtol,
    atol,
    norm,
    event_fn,
    event_end: float = math.inf,
    throw: bool = True,
    field_at_events: bool = True,
    adjoint_gradients: bool = False,
    direction: int = 0,
) -> SampleEvents:
    """Integrate a batch from ``t0`` until every sample's event function has changed sign once.

    See the module docstring for the design (shared steps, vectorised bisection, frozen samples).

    Args:
        term: the wrapped field (solver time).
        solver: a solver of the host loop (adaptive unless ``controller`` is a ConstantStepSize).
        controller: the step-size controller (its ``max_num_steps`` bounds the search); a
            ConstantStepSize with ``step_size`` takes fixed steps (:class:`_Steps`).
        y0: initial state; its leading dimensions are the batch.
        t0: start (solver time).
        rtol, atol, norm: the error test.
        event_fn: ``event_fn(t, y)`` returning one value per sample (the batch shape); ``t`` is a 0-d
            tensor at step ends and a tensor of the batch shape (each sample's own time) while an
            event is located.
        event_end: where the search gives up (solver time).
        throw: raise SolverError when the solve fails (step-size underflow, non-finite state); a
            sample whose event is not found is never an error here (see :attr:`SampleEvents.fired`).
        field_at_events: fill :attr:`SampleEvents.f_event`, the event times' gradients need it.
            It is the dense output's slope at each event (:meth:`_Locator.rates`), O(batch) rows in
            all; for an interpolant without per-sample slopes, one call of the field on the whole
            batch per fired sample, O(batch^2) work. A solve without gradients passes False.
        adjoint_gradients: an adjoint will differentiate the field after this loop, which runs
            without a graph: warn as direct backpropagation does where the field is non-finite in
            frozen rows (:meth:`FrozenRows.warn_nonfinite`).
        direction: +1 stops a sample only where its value increases through zero (or leaves a zero
            at t0 upwards), -1 only where it decreases, 0 at its first root either way; in the
            user's time, also backwards in time. A crossing the other way is passed over, and the
            sample's later crossings are checked from its new side (:func:`_fires`).

    Returns:
        :class:`SampleEvents`.

    Raises:
        ValueError: ``event_fn`` does not return one value per sample.
        SolverError: the solve failed, with ``throw``.
    """
    stats = Stats()
    with torch.no_grad():
        g0 = event_fn(term.time(t0), y0)
    batch_shape = check_event_values(g0, y0)
    n = g0.numel()
    sign0 = torch.sign(g0).reshape(n)
    # each running sample's side of its root so far (its last nonzero sign; 0 while it sits on the root
    # since t0): with a direction, a crossing the other way moves it, and the sample goes on
    ref = sign0.detach().cpu().numpy().astype(np.float64)
    loop_direction = -direction if term.reverse else direction  # the user's t runs backwards in the loop
    frozen = torch.zeros(n, dtype=torch.bool, device=y0.device)
    mterm = FrozenRows(term, frozen, batch_shape, watch=adjoint_gradients)
    t_event = np.full(n, math.nan)
    f_event = torch.zeros(n, y0.numel() // n, dtype=y0.dtype, device=y0.device)

    def running_norm(r: torch.Tensor) -> torch.Tensor:
        # the stopped samples' zero errors would dilute an RMS over the whole batch (a looser test)
        rows = r.reshape(n, -1)[~frozen]
        return (norm if norm is not None else rms_norm)(rows) if len(rows) else r.new_zeros(())

    t, y = t0, y0
    state = solver.init(mterm, t, y)
    steps = _Steps(controller, solver, y0.dtype)
    c = steps.c
    # direct backprop through an explicit method at its stability limit gives unreliable gradients; its
    # estimate joins the sign read at each step's end, so watching adds no host read (fixed steps are not
    # held at the limit by a controller: not watched)
    watch = None if steps.fixed else watch_for(solver, rtol, atol)
    dt = steps.first(term, t, y, state, rtol, atol, running_norm)  # nothing frozen yet
    r1, r2 = steps.memory()
    n_attempts = 0
    last_nonfinite = False
    status, detail = Status.EVENT, ""

    def user_t(s: float) -> float:
        return -s if term.reverse else s

    while not bool(frozen.all()):
        code = core.precheck(FLOAT, c, n_attempts, t, dt)
        if code != RUNNING:
            status = Status.NO_EVENT
            detail = (
                f"max_num_steps={controller.max_num_steps} steps"
                if code == core.MAX_STEPS
                else "the steps would overflow beyond it"
            )
            break
        n_attempts += 1
        att = steps.attempt(mterm, t, y, state, dt, event_end, rtol, atol, running_norm)
        step_dt, t1, step, ratio, new_state, seg = att
        if seg is not None:
            stats.n_accepted += 1
            y1 = step.y1
            if watch is not None and not records_steps(step):  # no graph recorded: nothing to watch
                watch = None
            # this step's largest h * rho is read with the signs at its end, where it is due
            rho = largest_rho(watch, y, step, step_dt, len(batch_shape)) if watch is not None and watch.due() else None
            rho_read = None
            running = (~frozen).nonzero().reshape(-1)  # a fired sample's value is not read
            # each running sample's bracket: from the last check point with its start sign to the
            # first one without (inf: none in this step); the step's end is the last check point
            points = check_points(t, t1)  # EVENT_CHECKS interior points, as the single event
            lo = np.full(n, t)
            hi = np.full(n, math.inf)
            # signs only, so no graph: a dense output that builds extra stages on first use (DOP853's)
            # builds them in the mode its step was taken in, so the event rows below still get their
            # dependence on y0 and the parameters
            still = ~frozen.cpu().numpy()
            with torch.no_grad():
                inner = seg.many(points[:-1])
                for i, (p, yp) in enumerate(zip(points, [*inner, y1])):
                    g = event_fn(term.time(p), yp).reshape(n)
                    check_no_nan(g[running], user_t(p), yp.reshape(n, -1)[running], running)
                    open_ = still & np.isinf(hi)  # running, and not yet bracketed in this step
                    if rho is not None and i == len(points) - 1:
                        sign, rho_read = _signs_and(g, rho)
                    else:
                        sign = torch.sign(g).detach().cpu().numpy()
                    fires = open_ & _fires(ref, sign, loop_direction)
                    hi[fires] = p
                    passed = open_ & ~fires
                    lo[passed] = p
                    # a crossing the other way is passed over: the sample's reference turns to its new side
                    # (a zero keeps the side it came from, so a touch of zero and back is no crossing)
                    turned = passed & (sign != 0)
                    ref[turned] = sign[turned]
            if watch is not None:
                watch.count(None if rho_read is None else abs(step_dt) * rho_read, t, t1)
            crossed = torch.from_numpy(np.isfinite(hi)).to(frozen.device)
            if bool(crossed.any()):
                idx = crossed.nonzero().reshape(-1)
                locator = _Locator(event_fn, term, seg, y1, batch_shape)
                sel = idx.cpu().numpy()
                # each bracket's reference is the sign at its left end, the side the crossing leaves
                side = torch.from_numpy(ref[sel]).to(device=g0.device, dtype=sign0.dtype)
                te = locator.locate(idx, side, lo[sel], hi[sel])
                rows = locator.rows(te, idx)  # with the graph: the event states' gradients at fixed time
                y1 = torch.index_put(y1.reshape(n, -1), (idx,), rows).reshape(y1.shape)
                if field_at_events:
                    f_event[idx] = locator.rates(te, idx, y1.detach()).to(f_event.dtype)
                t_event[idx.cpu().numpy()] = te
                frozen[idx] = True
                new_state = solver.init(mterm, t1, y1)  # the state changed: restart the solver there
            t, y, state = t1, y1, new_state
            last_nonfinite = False
            if t >= event_end and not bool(frozen.all()):
                status, detail = Status.NO_EVENT, f"t_end={user_t(event_end):.6g}"
                break
        else:
            stats.n_rejected += 1
            last_nonfinite = not math.isfinite(ratio)
            state = solver.reject(mterm, t, y, state, step)
        dt, r1, r2 = steps.next(state, step_dt, ratio, att.accepted, r1, r2)
        dt, code = core.settle(FLOAT, c, False, t, dt, step_dt, last_nonfinite, t0)
        if code != RUNNING:
            status, detail = core.STATUS[code], f"dt={dt:.3g}"
            if throw:  # the field (frozen rows masked) or a blow-up as the cause, where the state tells
                raise SolverError(status, user_t(t), detail, failure_cause(status, mterm, t, y, y0))
            break
    mterm.warn_nonfinite()
    if watch is not None:
        watch.warn(term.reverse)
    fired = frozen.cpu().numpy().copy()
    t_event = np.where(fired, t_event, t)
    take_counters(stats, term)
    return SampleEvents(y, t_event, fired, f_event, batch_shape, stats, status, t, detail)


def _signs_and(g: torch.Tensor, value: torch.Tensor) -> tuple[np.ndarray, float]:
    """The signs of the event values ``g`` and the 0-d ``value`` in one host read.

    The signs are cast to the value's floating dtype (exact: -1, 0 and 1), so an integer event value
    reads as its float signs.

    Args:
        g: (n,) event values; value: a 0-d tensor (the stiffness watch's estimate).

    Returns:
        The signs, shape (n,), and the value as a float.
    """
    sign = torch.sign(g).detach()
    both = torch.cat([sign.to(value.dtype), value.reshape(1).to(sign.device)]).cpu().numpy()
    return both[:-1], float(both[-1])


def _fires(ref: np.ndarray, sign: np.ndarray, direction: int) -> np.ndarray:
    """Which samples' terminal event fires at a check point, from their side so far and their sign there.

    Without a direction a sample fires where its sign differs from its start sign (a zero reached at
    a check point included: the root lies there). With one, only a change towards the requested
    side fires: ``+1`` from negative to zero or positive, or from a zero at t0 to positive; ``-1``
    the mirror image. This is the test of scipy's ``solve_ivp`` events (``up = g <= 0 and g_new >=
    0``, ``down`` the mirror) made strict on the side the sample leaves, so that a zero touched and
    left on the same side is no crossing (Shampine & Thompson 2000).

    Args:
        ref: (n,) each sample's last nonzero sign (its sign at t0 while it has had no other).
        sign: (n,) the signs at the check point.
        direction: +1, -1 or 0, along the loop's (solver) time.

    Returns:
        (n,) bool: the sample's root lies between its previous check point and this one.
    """
    if direction > 0:
        return sign > ref
    if direction < 0:
        return sign < ref
    return sign != ref


# ----------------------------------------------------------------------------------------------------
# Non-terminal events with state jumps
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EventRecord:
    """One recorded crossing of a non-terminal event.

    Attributes:
        t: the event time (user time, 0-d tensor with its implicit-function-theorem gradient).
        index: the crossing element's index in the event function's value (the sample, for a batch).
        y: the state at the crossing, before any jump (user layout, with gradient).
        event: which event crossed (its position in the tuple of events given to the solve).
    """

    t: torch.Tensor
    index: tuple[int, ...]
    y: object
    event: int = 0


@dataclasses.dataclass
class EventIntegration:
    """Raw result of :func:`integrate_with_events`: outputs, records and how the solve ended."""

    ys: list[torch.Tensor]
    records: list[EventRecord]
    stats: Stats
    status: Status
    t_reached: float


def _crossings(before: torch.Tensor, after: torch.Tensor, direction: int | torch.Tensor) -> torch.Tensor:
    """Elements whose sign went from ``before`` to the opposite nonzero ``after``, in the requested direction.

    A zero on either side is no crossing: an element that only touches zero (grazing) is not an
    event, and one that reaches zero exactly at a step's end is decided by where it goes next.
    """
    changed = (before != 0) & (after != 0) & (after != before)
    if isinstance(direction, torch.Tensor):  # one direction per element
        return changed & ((direction == 0) | (direction * (after - before) > 0))
    if direction > 0:
        return changed & (after > before)
    if direction < 0:
        return changed & (after < before)
    return changed


def _count_events(new: Sequence[EventRecord], counts: dict[int, int], max_events: Sequence[int] | None) -> str:
    """Add new records to the crossing counts of their events.

    Args:
        new: the records of one event time; counts: crossings so far per event (updated);
        max_events: the most crossings of each event (None: no limit).

    Returns:
        The detail of the first event that crossed more often than allowed, or "" if none did.
    """
    for r in new:
        counts[r.event] = counts.get(r.event, 0) + 1
        if max_events is not None and counts[r.event] > max_events[r.event]:
            return f"event {r.event} crossed more than max_events={max_events[r.event]} times"
    return ""


def integrate_with_events(
    term: Term,
    solver,
    controller: PIDController | ConstantStepSize,
    y0: torch.Tensor,
    ts: list[float],
    *,
    rtol,
    atol,
    norm,
    event_fn,
    direction: int | torch.Tensor,
    at_event,
    jumps: bool,
    samples: int = 4,
    throw: bool = True,
    max_events: Sequence[int] | None = None,
) -> EventIntegration:
    """Integrate through ``ts`` with a watched event function, recording (and jumping at) every crossing.

    After each accepted step the signs of ``event_fn`` at its end are compared with those at its
    start. The crossings (in ``direction``) are located in time order: bisection on the step's dense
    output for the earliest time where any pending element has changed sign (Shampine & Thompson
    2000); the elements changed there are recorded; without jumps the search goes on from there for
    the others, so several crossings in one step are all reported, in order. With jumps the state
    is replaced at the first crossing, the outputs up to it come from the dense output, and the
    solver restarts from the new state with a fresh first step (the rest of the step is discarded).

    After a jump an element that crossed takes as its sign the one its value has after the jump,
    or, when the jump left it on the far side of the root (or at zero, like a ball on the ground
    with its velocity flipped), the sign of its slope along the new flow: so the restart does not
    report the same crossing again.

    An element that is exactly zero at the start of a step takes its sign from the next step's end
    (a root at t0 itself is not reported).

    Args:
        term, solver, controller, y0, ts, rtol, atol, norm: as :func:`~hybrid_node.loop.host.integrate_adaptive`;
            the controller may also be a ConstantStepSize with ``step_size`` (fixed steps, :class:`_Steps`).
        event_fn: ``event_fn(t, y)`` (0-d time tensor).
        direction: +1, -1 or 0 (see :class:`hybrid_node.Event`), or a tensor of them, one per element.
        at_event: ``at_event(s, y_s, fired) -> (records, y_new)``: builds the records (with their
            gradients) for the elements ``fired`` (flat bool) at solver time ``s`` of the state
            ``y_s`` (the dense output, with its graph) and the state after the jump (None without).
        jumps: whether ``at_event`` returns a new state (then the solver restarts there).
        samples: interior points of each step's dense output where the signs are checked too.
        throw: raise SolverError on failure, else report the status.
        max_events: the most crossings of each event (indexed by :attr:`EventRecord.event`); one
            more ends the solve with status TOO_MANY_EVENTS (a Zeno accumulation, or a jump that
            keeps the state on its event surface). None: no limit.

    Returns:
        :class:`EventIntegration`.

    Raises:
        SolverError: max steps, step-size underflow, a non-finite state or too many events, with ``throw``.
    """
    stats = Stats()
    t, y = ts[0], y0
    counts: dict[int, int] = {}
    t_end = ts[-1]
    steps = _Steps(controller, solver, y0.dtype)
    c = steps.c

    def user_t(s: float) -> float:
        return -s if term.reverse else s

    def signs(s: float, yy: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            g = event_fn(term.time(s), yy).reshape(-1)
        check_no_nan(g, user_t(s), yy)
        return torch.sign(g)

    def signs_on(seg: DenseSegment, s: float) -> torch.Tensor:
        # the dense output read for signs only, so without a graph (DOP853's extra stages, built on
        # first use, still take the mode of their step: the event state read later keeps them)
        with torch.no_grad():
            return signs(s, seg(s))

    def slopes(s: float, yy: torch.Tensor) -> torch.Tensor:
        # d/dt of each element along the flow: (g(s + h, y + h f) - g(s, y)) / h, sign only
        with torch.no_grad():
            h = 1e-7 * max(1.0, abs(s))
            f = term(s, yy)
            return torch.sign(event_fn(term.time(s + h), yy + h * f) - event_fn(term.time(s), yy)).reshape(-1)

    sign_prev = signs(t, y)
    state = solver.init(term, t, y)
    dt = steps.first(term, t, y, state, rtol, atol, norm)
    r1, r2 = steps.memory()
    ys = [y0]
    records: list[EventRecord] = []
    i_out = 1
    n_attempts = 0
    last_nonfinite = False

    def finish(status: Status, detail: str = "") -> EventIntegration:
        if status is not Status.SUCCESS and throw:
            raise SolverError(status, user_t(t), detail, failure_cause(status, term, t, y, y0))
        take_counters(stats, term)
        out = ys + [torch.full_like(y0, math.nan) for _ in range(len(ts) - len(ys))]
        return EventIntegration(out, records, stats, status, t)

    while i_out < len(ts):
        code = core.precheck(FLOAT, c, n_attempts, t, dt)
        if code != RUNNING:
            return finish(core.STATUS[code], f"max_num_steps={controller.max_num_steps}")
        n_attempts += 1
        att = steps.attempt(term, t, y, state, dt, t_end, rtol, atol, norm)
        step_dt, t1, step, ratio, new_state, seg = att
        if seg is not None:
            stats.n_accepted += 1
            sign1 = signs(t1, step.y1)
            # the signs are checked at the step's end and at ``samples`` interior points of its dense
            # output, so two crossings of one element in a step are both found when a point lies
            # between them; each sub-interval's crossings are then located in time order
            points = check_points(t, t1, samples)
            a0 = t
            jumped = None
            for p in points:
                sign_p = sign1 if p == t1 else signs_on(seg, p)
                # an element that starts at zero takes its first nonzero sign (no root at t0 itself)
                sign_prev = torch.where(sign_prev == 0, sign_p, sign_prev)
                pending = _crossings(sign_prev, sign_p, direction)
                lo = a0
                while bool(pending.any()):
                    ref = sign_prev
                    # bisection for the earliest time in (lo, p] where a pending element has left its sign
                    a, b = lo, p
                    width = _BRACKET_ULPS * _EPS * max(1.0, abs(a), abs(b))
                    for _ in range(_MAX_HALVINGS):
                        mid = 0.5 * (a + b)
                        if not (b - a > width and a < mid < b):
                            break
                        if bool((pending & (signs_on(seg, mid) != ref)).any()):
                            b = mid
                        else:
                            a = mid
                    fired = pending & (signs_on(seg, b) != ref)
                    if not bool(fired.any()):  # rounding: the crossing sits at the bracket's end
                        fired = pending
                    new_records, y_new = at_event(b, seg(b), fired)
                    records.extend(new_records)
                    too_many = _count_events(new_records, counts, max_events)
                    if too_many:
                        t = b
                        return finish(Status.TOO_MANY_EVENTS, too_many)
                    pending = pending & ~fired
                    lo = b
                    if jumps:
                        jumped = (b, y_new, fired)
                        break
                if jumped is not None:
                    break
                # the last nonzero sign: touching zero without crossing (grazing) is no event
                sign_prev = torch.where(sign_p != 0, sign_p, sign_prev)
                a0 = p
            if jumped is not None:
                te, y_new, fired = jumped
                # outputs up to the jump come from this step's dense output (left limit at te)
                j = i_out
                while j < len(ts) and ts[j] <= te:
                    j += 1
                if j > i_out:
                    ys.extend(seg.many(ts[i_out:j]))
                i_out = j
                sign_new = signs(te, y_new)
                post = -sign_prev  # the side of the root the crossing elements reached
                slope = slopes(te, y_new.detach())
                settle_new = torch.where((sign_new == 0) | (sign_new == post), slope, sign_new)
                sign_prev = torch.where(fired, settle_new, torch.where(sign_new != 0, sign_new, sign_prev))
                # restart there: a fresh solver state, first step and controller memory
                t, y = te, y_new
                state = solver.init(term, t, y)
                dt = steps.first(term, t, y, state, rtol, atol, norm)
                r1, r2 = steps.memory()
                last_nonfinite = False
                if t >= t_end:
                    break
                continue
            i_out, y1, _ = _emit_outputs(ys, ts, i_out, t, t1, step.y1, seg, None)
            t, y, state = t1, y1, new_state
            last_nonfinite = False
            if t >= t_end:
                break
        else:
            stats.n_rejected += 1
            last_nonfinite = not math.isfinite(ratio)
            state = solver.reject(term, t, y, state, step)
        dt, r1, r2 = steps.next(state, step_dt, ratio, att.accepted, r1, r2)
        dt, code = core.settle(FLOAT, c, False, t, dt, step_dt, last_nonfinite, ts[0])
        if code != RUNNING:
            return finish(core.STATUS[code], f"dt={dt:.3g}")
    return finish(Status.SUCCESS)
