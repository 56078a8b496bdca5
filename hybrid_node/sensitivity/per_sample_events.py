"""Per-sample terminal events with gradients of every sample's event time and event state.

Sample i stops at t_i, the first root of its own event value g_i(t, y_i(t; theta), theta) = 0. By
the implicit function theorem, as for the single event (:mod:`hybrid_node.sensitivity.events`),

    dt_i/dtheta = -(dg_i/dtheta + dg_i/dy_i . dy_i/dtheta) / (dg_i/dy_i . f_i(t_i, y_i) + dg_i/dt),

and the returned event state moves with its time: dy_i(t_i)/dtheta = dy_i/dtheta + f_i dt_i/dtheta.
Both are added as zero-valued terms whose gradients are these, one per sample, on top of the direct
backpropagation through the forward solve (which gives dy_i/dtheta at the fixed time t_i: the dense
output of the step where the event was located, then identity steps while the sample is frozen).

It assumes that g_i depends on sample i only (the value of one sample does not read another's
state), which is what "one event per sample" means; dg_i/dy_i and dg_i/dt are then the rows of the
gradient of sum_i g_i.

A sample whose event function has no derivative along its solution (an integer tensor such as
``(y[:, 0] > 1).long()``, a float without a graph, ``torch.sign(...)``: the denominator is zero) gets
an event time with a zero gradient and its event state at the fixed time t_i, as the single event
does (the values torchdiffeq's ``odeint_event`` returns for it).

Reference: Chen, Amos, Nickel, "Learning Neural Event Functions for Ordinary Differential
Equations", ICLR 2021, Section 3.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .._errors import SolverError, Status
from .._problem import Problem
from .._solution import Solution, Stats
from ..loop.dispatch import EVENT_MAX_STEPS, CheckedEvent, integrate
from ..loop.events import SampleEvents, check_event_search, check_event_values, integrate_sample_events
from ._backward import resolve_params
from .event_adjoint import SegmentAdjoint, frozen_after
from .events import constant_event_time, event_time_shift
from .interpolating import checkpoint_times
from .settings import InterpolatingAdjoint


def _check(problem: Problem) -> None:
    """Raise ValueError where the per-sample event loop cannot serve the problem."""
    if problem.layout is not None:
        raise ValueError(
            "per-sample events need a single tensor state whose leading dimensions are the batch; "
            "concatenate tuple states into one tensor."
        )
    check_event_search(
        problem,
        "per-sample events",
        "which samples fired",
        "with the problems as samples of one batch (they already get one event each)",
    )
    if problem.y0.is_complex() or problem.complex_state is not None:  # the latter: an implicit method's real form
        raise ValueError("per-sample events need a real state.")


def _no_samples(problem: Problem, event_fn: Callable) -> Solution | None:
    """The solution of a batch without samples (a batch dimension of size 0); None for any other batch.

    Nothing is integrated: every (absent) sample has fired, so the event times are empty, of the
    batch shape, and both states are y0. The loop would divide the state's size by the number of
    samples (a ZeroDivisionError).

    Args:
        problem: the validated problem.
        event_fn: the checked event function; called once at t0 for the batch shape.

    Returns:
        The Solution (status EVENT, no field evaluation), or None where the batch has samples.

    Raises:
        ValueError: ``event_fn`` does not return one value per sample.
    """
    y0, t = problem.y0, problem.t
    if y0.numel() != 0:
        return None
    with torch.no_grad():
        shape = check_event_values(event_fn(t[0].detach(), y0), y0)
    if math.prod(shape) != 0:  # samples with an empty state each: the loop serves them
        return None
    t_e = torch.empty(shape, dtype=t.dtype, device=t.device)
    fired = torch.ones(shape, dtype=torch.bool, device=y0.device)
    return Solution(ts=t, ys=torch.stack([y0, y0]), stats=Stats(), status=Status.EVENT, t_final=t_e, event_fired=fired)


def sample_event_outputs(problem: Problem, event_fn: Callable, res: SampleEvents) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample's event time and event state, with their implicit-function-theorem gradients.

    Args:
        problem: the forward problem.
        event_fn: the per-sample event function.
        res: the loop's result.

    Returns:
        ``(t_e, y_e)``: t_e of the batch shape in the user's time and t's dtype (NaN for samples
        whose event did not fire); y_e the state at the events (the state where the search stopped
        for the others). A sample whose ``event_fn`` has no derivative along its solution gets a
        zero event-time gradient and its state at the fixed event time.
    """
    t = problem.t
    n = len(res.fired)
    s = res.t_event
    t_user = torch.from_numpy(-s if problem.reverse else s).to(dtype=t.dtype, device=t.device)
    fired = torch.from_numpy(res.fired).to(t.device)
    y_event = res.y_event
    nan = torch.full_like(t_user, math.nan)
    if not torch.is_grad_enabled() or not bool(fired.any()):
        return torch.where(fired, t_user, nan).reshape(res.batch_shape), y_event
    shape = res.batch_shape
    with torch.enable_grad():
        tt = t_user.clone().requires_grad_(True)
        yy = y_event.detach().clone().requires_grad_(True)
        g = event_fn(tt.reshape(shape), yy).reshape(n)
        if not g.requires_grad:  # an integer tensor, or one built without t and y: no derivative
            return torch.where(fired, constant_event_time(t_user, y_event), nan).reshape(shape), y_event
        dg_dt, dg_dy = torch.autograd.grad(g.sum(), (tt, yy), allow_unused=True)
        g_graph = event_fn(t_user.reshape(shape), y_event).reshape(n)
    if not g_graph.requires_grad:  # e.g. t - c: the event times move with nothing that has a gradient
        return torch.where(fired, constant_event_time(t_user, y_event), nan).reshape(shape), y_event
    with torch.no_grad():
        f = res.f_event.to(y_event.dtype)
        slope = torch.zeros(n, dtype=f.dtype, device=f.device)
        if dg_dy is not None:
            slope = slope + (dg_dy.reshape(n, -1) * f).sum(1)
        if dg_dt is not None:
            slope = slope + dg_dt.to(f.dtype)
        # samples that did not fire get no event-time gradient (and no division by their slope), nor do
        # those with a zero slope (e.g. torch.sign(...): the theorem does not apply, 0/0 is NaN)
        moves = fired & (slope != 0)
        slope = torch.where(moves, slope, torch.ones((), dtype=f.dtype, device=f.device))
    shift = torch.where(moves, event_time_shift(g_graph, slope), torch.zeros((), dtype=g_graph.dtype))
    t_e = torch.where(fired, t_user + shift.to(t.dtype), nan)
    y_e = y_event + (f * shift.to(f.dtype)[:, None]).reshape(y_event.shape)
    return t_e.reshape(shape), y_e


def solve_sample_events(
    problem: Problem,
    event_fn: Callable,
    throw: bool = True,
    adjoint=None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    direction: int = 0,
) -> Solution:
    """Solve until every sample's event fires; gradients by direct backpropagation or an adjoint, plus the IFT.

    Args:
        problem: the validated problem (its first time is t0; ``event_t_end`` bounds the search).
        event_fn: ``event_fn(t, y)`` returning one value per sample (see
            :func:`hybrid_node.loop.events.integrate_sample_events` for what ``t`` is).
        throw: raise SolverError when some sample's event was not found or the solve failed; else
            report them (``sol.event_fired``, NaN event times, ``sol.status``).
        adjoint: None for direct backpropagation through the loop, or ``hn.BacksolveAdjoint(...)`` /
            ``hn.InterpolatingAdjoint(...)``: the loop runs without a graph and the event states'
            gradients at fixed times come from one adjoint solve of the batch whose samples stop at
            their own event times (:func:`~hybrid_node.sensitivity.event_adjoint.frozen_after`).
        adjoint_params: with ``adjoint``, the tensors it differentiates (default ``func.parameters()``).
        direction: +1 (-1) stops each sample only where its value increases (decreases) through zero
            in the user's time ``t``, passing over the crossings the other way; 0 at its first root.
            The event time's gradient is the same implicit-function-theorem expression either way.

    Returns:
        Solution with ``ys`` = (y0, the event states), ``t_final`` the event times (batch shape),
        ``event_fired`` a bool tensor of the batch shape, ``status`` EVENT when every sample fired.

    Raises:
        ValueError: a problem the per-sample event loop cannot serve.
        SolverError: status NO_EVENT (naming the samples) or a failed solve, with ``throw``.
    """
    _check(problem)
    event_fn = CheckedEvent(event_fn)
    empty = _no_samples(problem, event_fn)
    if empty is not None:
        return empty
    ctrl = problem.controller
    if ctrl.max_num_steps == type(ctrl).max_num_steps:
        # an event that never happens would otherwise run on for 2**31 - 1 steps
        ctrl = dataclasses.replace(ctrl, max_num_steps=EVENT_MAX_STEPS)
    term = problem.term()
    # the field at the events serves only the event times' gradients (sample_event_outputs), which are
    # asked for where grad mode is on here (the adjoint's loop below runs without it)
    gradients = torch.is_grad_enabled()
    with torch.set_grad_enabled(gradients and adjoint is None):
        res = integrate_sample_events(
            term,
            problem.solver,
            ctrl,
            problem.y0,
            problem.ts[0],
            rtol=problem.rtol,
            atol=problem.atol,
            norm=problem.norm,
            event_fn=event_fn,
            event_end=problem.event_end,
            throw=throw,
            field_at_events=gradients,
            adjoint_gradients=gradients and adjoint is not None and _differentiable(problem, adjoint_params),
            direction=direction,
        )
    if throw and not res.fired.all():
        missing = np.flatnonzero(~res.fired)
        # plain ints: numpy 2's scalars would print as (np.int64(1),)
        where = ", ".join(str(tuple(int(k) for k in np.unravel_index(i, res.batch_shape))) for i in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        t_stop = -res.t_reached if problem.reverse else res.t_reached
        raise SolverError(
            Status.NO_EVENT,
            t_stop,
            f"the events of {len(missing)} of {len(res.fired)} samples were not found before t={t_stop:.6g} "
            f"({res.detail}): samples {where}{more}; give a later t_end, raise options['max_num_steps'], or "
            "pass throw=False to get the others with a status",
        )
    if adjoint is not None and torch.is_grad_enabled():
        res.y_event = _adjoint_event_states(problem, adjoint, adjoint_params, res)
    t_e, y_e = sample_event_outputs(problem, event_fn, res)
    ys = torch.stack([problem.y0, y_e])
    fired = torch.from_numpy(res.fired).reshape(res.batch_shape).to(problem.y0.device)
    return Solution(ts=problem.t, ys=ys, stats=res.stats, status=res.status, t_final=t_e, event_fired=fired)


def _differentiable(problem: Problem, adjoint_params: Sequence[torch.Tensor] | None) -> bool:
    """Whether an adjoint will differentiate the solve: y0 or one of the adjoint's parameters requires grad.

    Unresolvable ``adjoint_params`` count as differentiable: :class:`SegmentAdjoint` raises for them
    after the loop, with the message that says how to pass them.
    """
    if problem.y0.requires_grad:
        return True
    try:
        return bool(resolve_params(problem.func, adjoint_params))
    except (TypeError, ValueError):
        return True


def _adjoint_event_states(problem: Problem, adjoint, adjoint_params, res: SampleEvents) -> torch.Tensor:
    """The event states of the loop, made differentiable at fixed event times by one adjoint solve.

    The batch follows the field with each sample's rows switched off after its own event time (as
    the loop froze them), from t0 to the last event; the backward solve restarts at every event time
    (the switched field jumps there). An :class:`~hybrid_node.InterpolatingAdjoint` with
    ``checkpoints`` gets its checkpoint states from one more forward solve of that field.
    """
    s0, s_end = problem.ts[0], float(np.max(res.t_event))
    if not s_end > s0:  # every sample fired at t0: the event states are the initial ones
        return problem.y0.clone()
    stops = tuple(sorted({float(s) for s in res.t_event if s0 < s < s_end}))
    frozen = frozen_after(
        problem, _running_to_the_end(res.t_event, s_end, problem.t.dtype), res.batch_shape, stops, s_end
    )
    states = {s0: problem.y0.detach(), s_end: res.y_event.detach()}
    checkpoints = adjoint.checkpoints if isinstance(adjoint, InterpolatingAdjoint) else None
    if checkpoints:
        times = checkpoint_times([s0, s_end], checkpoints, None)
        with torch.no_grad():
            kept = integrate(frozen, frozen.term(callbacks=False), problem.y0.detach(), times)
        states.update({s: y for s, y in zip(times[1:-1], kept.ys[1:-1])})
    pieces = SegmentAdjoint(problem, adjoint, adjoint_params, res.stats)
    return pieces.states(problem.y0, states, frozen)[s_end]


def _running_to_the_end(t_stop: np.ndarray, s_end: float, t_dtype: torch.dtype) -> np.ndarray:
    """The stop times for :func:`~hybrid_node.sensitivity.event_adjoint.frozen_after`, those at ``s_end`` moved past it.

    The switched field runs a sample only strictly before its stop time, and the backward solve
    starts at ``s_end``: its first stage there must see the field of the samples that stop at
    ``s_end`` (the left limit, as the loop used up to their events), where it saw zero. A fixed-step
    adjoint (rk4) then lost a sixth of a step's increment (event-time gradients first order in the
    step: 9.6e-4 off at step 0.01), and an adaptive one rejected its way down to a step of the
    tolerance's size (242 backward evaluations against 134 for one decaying sample). Past ``s_end``
    by one ulp of the time dtype, as no time beyond ``s_end`` is handed to the field.

    Args:
        t_stop: each sample's stop time (solver time), as the loop found them.
        s_end: the last of them, the end of the solve.
        t_dtype: the dtype of the times handed to the field.

    Returns:
        ``t_stop`` with its entries at ``s_end`` above ``s_end`` and above its value in ``t_dtype``.
    """
    end = torch.tensor(s_end, dtype=t_dtype)
    beyond = max(
        float(torch.nextafter(end, torch.tensor(math.inf, dtype=t_dtype))), float(np.nextafter(s_end, math.inf))
    )
    return np.where(t_stop == s_end, beyond, t_stop)
