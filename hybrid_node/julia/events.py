"""Events on the Julia backend: hybrid_node's events as one DifferentialEquations.jl callback, solved forwards.

Mapping (SciMLBase's callbacks, ``julia/events.jl``):

* every watched element (all elements of all :class:`~hybrid_node.Event` functions, or of a
  terminal ``event_fn``) is one component of a ``VectorContinuousCallback``: its ``condition``
  calls :meth:`EventBridge.condition` (the event functions in torch), its ``affect!`` calls
  :meth:`EventBridge.affect` once per crossing component with the direction DiffEqBase found,
  which returns what Julia does: nothing (a crossing against the event's ``direction``), record
  only, replace the state by :meth:`EventBridge.jumped` (``on_event``; ``set_u!``), or
  ``terminate!`` (a terminal event, or one event more than ``max_events``);
* the direction is DiffEqBase's own, not re-derived here: DiffEqBase 7 passes ``affect!`` a vector
  with ``-sign(bottom_sign)`` (+1 up, -1 down) for every component whose root is at the event time,
  and DiffEqBase 6 calls ``affect!(integrator, idx)`` for an upcrossing and ``affect_neg!(integrator,
  idx)`` for a downcrossing (``julia/events.jl`` passes SciMLBase 2's ``affect_neg!``; SciMLBase 3
  has none). ``bottom_sign`` is the sign at the step's start, or, for the components of the
  previous event, at a point nudged past it (``repeat_nudge``), and a component that is exactly
  zero at a checked point counts as crossed there (its root is that point). Signs read in Python
  at the root or at the step's start would disagree with it where the component is zero at that
  point right after an event: the step then starts at the previous event's root, still on the
  side before that crossing;
* ``Event.samples`` interior points of each step are the callback's ``interp_points = samples + 2``
  (DiffEqBase's range over the step includes both ends; 0 stays 0);
  ``rootfind = LeftRootFind``: the state handed to ``affect!`` is the left limit at the root, as
  on the torch backend.

What the Julia backend refuses (:class:`~hybrid_node.BackendError`, naming the torch backend):
gradients (the event functions and jumps are torch code that SciMLSensitivity cannot
differentiate through the callback; call it under ``torch.no_grad()``), per-sample terminal
events (``terminate!`` ends the solve of the whole batch), and a terminal event without ``t_end``
(Julia needs the end of the time span).

References: SciMLBase ``src/callbacks.jl`` (``ContinuousCallback``, ``VectorContinuousCallback``)
and ``src/integrator_interface.jl`` (``terminate!``, ``set_u!``, ``derivative_discontinuity!``);
DiffEqBase ``src/callbacks.jl`` (``apply_callback!``: how ``affect!`` is called); Shampine &
Thompson, "Event location for ordinary differential equations", Comput. Math. Appl. 39 (2000).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .._errors import BackendError, SolverError, Status
from .._event import Event, takes_fired
from .._solution import Solution, Stats
from ..loop import dispatch
from ..loop.events import EventRecord
from . import backend
from . import runtime as julia_runtime

#: what :meth:`EventBridge.affect` tells Julia to do (julia/events.jl reads the same numbers)
IGNORE, RECORD, JUMP, TERMINATE = 0, 1, 2, 3


class EventBridge:
    """The Python half of the Julia event callback: event values and what to do at a crossing.

    States cross the boundary as flat float64 arrays in the memory order of the torch ``(B, D)``
    matrix (a Julia ``(D, B)`` matrix's ``vec``), times in the engine's time ``s`` (``s = -t`` for a
    decreasing ``t``).

    Args:
        events: the non-terminal events, or None with ``event_fn``.
        event_fn: a terminal event (the solve stops where any element changes sign), or None.
        layout: the state layout of :mod:`hybrid_node.julia.backend`.
        like: a tensor with the user's dtype and device (the event functions get such tensors).
        time_reversed: the engine's time is ``s = -t``.
        t_dtype: the dtype of the time handed to the event functions.
    """

    def __init__(self, events, event_fn, layout, like: torch.Tensor, time_reversed: bool, t_dtype: torch.dtype):
        self.events: tuple[Event, ...] = () if events is None else (events,) if isinstance(events, Event) else events
        self.fns = [event_fn] if event_fn is not None else [ev.fn for ev in self.events]
        self.terminal = event_fn is not None
        self.layout = layout
        self.like = like
        self.sign = -1.0 if time_reversed else 1.0
        self.t_dtype = t_dtype
        self.records: list[EventRecord] = []
        self.counts = [0] * len(self.fns)
        self.status = Status.SUCCESS
        self._jumped: np.ndarray | None = None
        self.shapes: list[tuple[int, ...]] = []
        self.offsets = np.zeros(1, dtype=np.int64)

    def start(self, s0: float, u0: np.ndarray) -> None:
        """Evaluate the event functions once at the start: their shapes (and errors) before Julia runs."""
        with torch.no_grad():
            values = [self._call(fn, s0, u0) for fn in self.fns]
        self.shapes = [tuple(v.shape) for v in values]
        self.offsets = np.cumsum([0] + [int(np.prod(s, dtype=np.int64)) for s in self.shapes])

    @property
    def size(self) -> int:
        """The number of watched components (the callback's ``len``)."""
        return int(self.offsets[-1])

    @property
    def interp_points(self) -> int:
        """The callback's ``interp_points`` for the largest ``Event.samples`` (SciMLBase's default 10 for event_fn).

        DiffEqBase checks the signs at ``range(tprev, stop = t, length = interp_points)[2:end]``
        (``check_event_occurrence``, src/callbacks.jl): ``interp_points - 2`` points inside the step,
        and ``interp_points == 1`` throws. So ``samples`` interior points are ``samples + 2``, and 0
        stays 0 (the step's end only).

        Returns:
            ``samples + 2`` for the largest ``samples`` > 0, 0 for 0, 10 with a terminal ``event_fn``.
        """
        if not self.events:
            return 10
        samples = max(ev.samples for ev in self.events)
        return samples + 2 if samples > 0 else 0

    def _time(self, s: float) -> torch.Tensor:
        return torch.tensor(self.sign * s, dtype=self.t_dtype, device=self.like.device)

    def _state(self, u) -> Any:
        m = torch.as_tensor(np.asarray(u, dtype=np.float64)).reshape(self.layout.batch, self.layout.dim)
        return self.layout.from_matrix(m.to(dtype=self.like.dtype, device=self.like.device))

    def _call(self, fn: Callable, s: float, u) -> torch.Tensor:
        g = fn(self._time(s), self._state(u))
        if not isinstance(g, torch.Tensor) or g.is_complex() or g.dtype == torch.bool:
            raise TypeError("an event function must return a real tensor built from t and y.")
        return g

    def condition(self, u, s: float) -> np.ndarray:
        """The values of every watched component at ``(s, u)`` (the callback's ``condition``)."""
        with torch.no_grad():
            parts = [self._call(fn, s, u).reshape(-1) for fn in self.fns]
        return torch.cat(parts).detach().to("cpu", torch.float64).numpy()

    def affect(self, s: float, u, idx: int, crossing: int) -> int:
        """What to do at a crossing of component ``idx`` (0-based) at ``(s, u)``.

        Args:
            s, u: the event time (engine time) and the state there.
            idx: the component.
            crossing: DiffEqBase's direction of the crossing in engine time, +1 upwards (the sign
                before it was negative) or -1 downwards.

        Returns:
            IGNORE (a crossing against the event's direction), RECORD, JUMP (then :meth:`jumped`
            holds the new state) or TERMINATE (a terminal event, or more than ``max_events``).
        """
        j = int(np.searchsorted(self.offsets, idx, side="right") - 1)
        k = idx - int(self.offsets[j])
        if not self.terminal:
            direction = self.events[j].direction * self.sign  # a crossing upwards in t is downwards in s
            if direction * int(crossing) < 0:
                return IGNORE
        t_e = self._time(s).detach()
        y_e = self._state(u)
        index = tuple(int(i) for i in np.unravel_index(k, self.shapes[j])) if self.shapes[j] else ()
        self.records.append(EventRecord(t_e, index, y_e, event=j))
        if self.terminal:
            return TERMINATE
        self.counts[j] += 1
        if self.counts[j] > self.events[j].max_events:
            self.status = Status.TOO_MANY_EVENTS
            return TERMINATE
        on_event = self.events[j].on_event
        if on_event is None:
            return RECORD
        fired = torch.zeros(self.size, dtype=torch.bool)
        fired[idx] = True
        fired_j = fired[int(self.offsets[j]) : int(self.offsets[j + 1])].reshape(self.shapes[j]).to(self.like.device)
        with torch.no_grad():
            out = on_event(t_e, y_e, fired_j) if takes_fired(on_event) else on_event(t_e, y_e)
        m = self.layout.to_matrix(out) if isinstance(out, (tuple, torch.Tensor)) else None
        if m is None or m.numel() != self.layout.batch * self.layout.dim:
            raise ValueError("on_event must return the new state, shaped as the state.")
        self._jumped = m.detach().to("cpu", torch.float64).numpy().reshape(-1).copy()
        return JUMP

    def jumped(self) -> np.ndarray:
        """The state after the last jump (flat, ``(B, D)`` memory order)."""
        assert self._jumped is not None  # set by affect before it returns JUMP
        return self._jumped


def _needs_gradients(y0, params: Sequence[torch.Tensor]) -> bool:
    tensors = y0 if isinstance(y0, tuple) else (y0,)
    return torch.is_grad_enabled() and any(x.requires_grad for x in (*tensors, *params))


def solve_events(
    func,
    y0,
    t: torch.Tensor,
    *,
    method: str | None = None,
    rtol=1e-7,
    atol=1e-9,
    options: Mapping[str, Any] | None = None,
    sensitivity=None,
    adjoint_params=None,
    event: Event | tuple[Event, ...] | None = None,
    event_fn: Callable | None = None,
    event_t_end: float | None = None,
    throw: bool = True,
    engine=None,
) -> Solution:
    """Solve with events on the Julia backend (forward only; see the module docstring).

    Args:
        func, y0, t, method, rtol, atol, options, sensitivity, adjoint_params: as
            :func:`hybrid_node.julia.backend.solve`.
        event: non-terminal events, recorded in ``sol.events`` (with their jumps).
        event_fn: a terminal event; ``sol.t_final`` is its time and ``sol.ys`` the states at t[0] and there.
        event_t_end: with ``event_fn``, where the search ends (required on this backend).
        throw: raise SolverError on failure (NO_EVENT, TOO_MANY_EVENTS, a solver failure), else report it.
        engine: the engine (default: the Julia module); tests pass a stand-in.

    Returns:
        Solution without gradients (``ys``, ``events``, ``t_final``, ``status``).

    Raises:
        BackendError: gradients were asked for, or a terminal event without ``event_t_end``.
        SolverError: as ``throw`` says.
    """
    if event_fn is not None:
        if event_t_end is None:
            raise BackendError(
                "a terminal event on the Julia backend needs the end of the search: odeint_event(..., t_end=...) "
                "(options={'event_t_end': ...}); or use backend='torch'."
            )
        t = torch.stack([t.reshape(-1)[0].detach(), torch.as_tensor(float(event_t_end), dtype=t.dtype)])
    # The torch backend's event loops never refuse a step_size grid longer than max_num_steps: they
    # stop at the limit (MAX_STEPS, or NO_EVENT for a terminal search). Upstream does the same with
    # maxiters (check_error's MaxIters), so the grid is sent whole with the limit.
    layout, config, problem, field, params, _native = backend.prepare(
        func, y0, t, method=method, rtol=rtol, atol=atol, options=options, sensitivity=sensitivity,
        adjoint_params=adjoint_params, refuse_long_grid=False,
    )  # fmt: skip
    search_cap = event_fn is not None and "max_num_steps" not in (options or {})
    if search_cap:
        # A terminal event search on the torch backend stops after EVENT_MAX_STEPS attempts unless
        # max_num_steps is given (hybrid_node.loop.dispatch); Julia gets the same maxiters.
        config = dataclasses.replace(config, maxiters=dispatch.EVENT_MAX_STEPS)
    if _needs_gradients(y0, params):
        raise BackendError(
            "events on the Julia backend are solved without gradients (the event functions and jumps are torch code "
            "that SciMLSensitivity cannot differentiate through the callback): call it under torch.no_grad(), or use "
            "backend='torch' (direct backpropagation or the adjoint through events)."
        )
    m0 = layout.to_matrix(y0)
    bridge = EventBridge(event, event_fn, layout, m0, config.time_reversed, m0.dtype)
    sign = -1.0 if config.time_reversed else 1.0
    ts = sign * t.detach().to("cpu", torch.float64).numpy()
    u0 = m0.detach().to("cpu", torch.float64).numpy()
    bridge.start(float(ts[0]), u0.reshape(-1))
    if ts.size == 1:
        # Nothing to integrate: y0 with no events, as backend.solve returns y0 for one time (Julia's
        # forward_* refuse fewer than two output times, bridge.jl's `prepare`).
        ys = layout.from_matrix(m0.detach().unsqueeze(0))
        return Solution(ts=t, ys=ys, stats=Stats(), status=Status.SUCCESS, events=bridge.records)
    n_theta = problem.n_params if isinstance(problem, backend.CallbackProblem) else 0
    theta = backend._flat_params(params, n_theta)
    engine = backend.JuliaEngine(julia_runtime.load_module()) if engine is None else engine
    try:
        out = backend._call_engine(engine, engine.forward_events, problem, u0.T, theta, ts, config, bridge)
    except Exception as err:
        backend.raise_for_initial_field(err, field, t.reshape(-1)[0].detach(), m0.detach())
        raise
    status = bridge.status if out.success else backend.status_from_retcode(out.retcode, out.state_finite)
    cause = "" if out.success else backend.retcode_cause(out.retcode, config.algorithm, out.state_finite)
    if not out.success and out.t_reached == ts[0]:  # stopped before any step: f0 may be non-finite
        start = backend.initial_field_cause(field, t.reshape(-1)[0].detach(), m0.detach())
        status, cause = (Status.NONFINITE, start) if start else (status, cause)
    reached = sign * (out.t_reached if out.t_reached is not None else out.t_final)
    if event_fn is not None:
        return _terminal_solution(bridge, m0, layout, t, out.stats, status, reached, throw, config.maxiters)
    if status is not Status.SUCCESS and throw:
        raise SolverError(status, reached, f"Julia retcode {out.retcode}" if not out.success else "", cause)
    saved = np.transpose(np.asarray(out.ys, dtype=np.float64), (2, 1, 0))  # (T', B, D)
    ys = torch.full((len(ts), layout.batch, layout.dim), float("nan"), dtype=m0.dtype, device=m0.device)
    ys[: saved.shape[0]] = torch.from_numpy(np.ascontiguousarray(saved)).to(m0.dtype)
    return Solution(ts=t, ys=layout.from_matrix(ys), stats=out.stats, status=status, events=bridge.records)


def _terminal_solution(
    bridge: EventBridge, m0, layout, t, stats: Stats, status: Status, reached, throw: bool, max_steps: int | None
):
    """The torchdiffeq-style result of a terminal event: the states at t0 and at the event.

    A search that runs out of steps (Julia's ``MaxIters``) has not found the event: NO_EVENT, as the
    torch backend reports it (hybrid_node.loop.host), so both backends fail a search the same way.
    """
    detail = "event not found before t_end"
    if status is Status.MAX_STEPS:
        status = Status.NO_EVENT
        detail = (
            f"event not found before t={float(reached):.6g}: the search stopped after max_num_steps="
            f"{max_steps} steps; raise options['max_num_steps'] if the event lies further on"
        )
    elif status is Status.SUCCESS and not bridge.records:
        status = Status.NO_EVENT
    if status is not Status.SUCCESS and throw:
        raise SolverError(status, reached, detail if status is Status.NO_EVENT else "")
    if not bridge.records:
        nan = torch.full_like(m0, float("nan"))
        return Solution(ts=t, ys=layout.from_matrix(torch.stack([m0, nan])), stats=stats, status=status)
    record = bridge.records[0]
    y_e = layout.to_matrix(record.y)
    return Solution(
        ts=t,
        ys=layout.from_matrix(torch.stack([m0.detach(), y_e])),
        stats=stats,
        status=Status.EVENT,
        t_final=record.t.to(t.dtype),
        events=bridge.records,
    )
