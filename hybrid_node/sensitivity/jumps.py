"""Non-terminal events and state jumps (:class:`hybrid_node.Event`), differentiable by direct backpropagation.

At a crossing of element k at time t_e (located on the dense output by the loop), the record and
the jump get their gradients as follows:

* the event time, by the implicit function theorem on g_k(t_e, y(t_e)) = 0 (as for a terminal
  event, :mod:`hybrid_node.sensitivity.events`): t_e + shift with shift = 0 and
  d shift = -(dg_k/dtheta + dg_k/dy . dy/dtheta) / (dg_k/dy . f + dg_k/dt);
* the state at the crossing, y(t_e) + f(t_e, y) shift, moves with the event time;
* the state after the jump, ``on_event(t_e, y(t_e))``, by autograd through the user's jump;
* the solve restarted at t_e from y+ = the jumped state: its dependence on the start time is
  dy(t)/dt_e = -J(t, t_e) f(t_e, y+), added by an identity on y+ whose backward turns the cotangent
  of y+ into dL/dt_e = -<dL/dy+, f(t_e, y+)> (Chen et al. 2018, Appendix B.2, as for t_0).

An event function without a derivative along the solution (an integer tensor such as
``(y[..., 0] > 0).long() * 2 - 1``, a float without a graph, ``torch.sign(...)``: the denominator is
zero) gives the event time a zero gradient and the state at the crossing its gradient at the fixed
time t_e, as for a terminal event.

Everything else is autograd through the steps. References: Chen, Amos, Nickel, "Learning Neural
Event Functions for Ordinary Differential Equations", ICLR 2021; Chen, Rubanova, Bettencourt,
Duvenaud, "Neural Ordinary Differential Equations", NeurIPS 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._errors import Status
from .._event import Event, takes_fired
from .._problem import Problem
from .._solution import Solution
from ..loop.dispatch import CheckedEvent
from ..loop.events import EventIntegration, EventRecord, check_event_search, integrate_with_events
from ._backward import user_field
from .event_adjoint import SegmentAdjoint
from .events import constant_event_time, event_slope, event_time_shift
from .interpolating import checkpoint_times
from .settings import InterpolatingAdjoint


class _Restart(torch.autograd.Function):
    """Identity on the state a solve restarts from at ``t_e``; its backward gives t_e -<grad, f(t_e, y+)>."""

    @staticmethod
    def forward(ctx, t_e: torch.Tensor, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(f)
        ctx.t_dtype = t_e.dtype
        return y.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (f,) = ctx.saved_tensors
        grad_t = -(grad.reshape(-1) * f.reshape(-1)).sum().to(ctx.t_dtype) if ctx.needs_input_grad[0] else None
        return grad_t, grad, None


def solve_with_events(
    problem: Problem,
    events: Event | tuple[Event, ...],
    throw: bool = True,
    adjoint=None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
) -> Solution:
    """Solve through ``problem.t`` recording every crossing of the events' functions, jumping with their ``on_event``.

    Several events are watched as one function (their values concatenated), so their crossings are
    located together and reported in time order; at a crossing the jumps of the events that fired
    are applied in the order the events were given.

    Args:
        problem: the validated problem (a torch solver on the host loop: adaptive, or fixed steps
            with ``step_size``; see :func:`~hybrid_node.loop.events.check_event_controller`).
        events: one non-terminal :class:`~hybrid_node.Event` or a tuple of them.
        throw: raise SolverError on failure, else report the status with NaN outputs not reached.
        adjoint: None for direct backpropagation, or ``hn.BacksolveAdjoint(...)`` /
            ``hn.InterpolatingAdjoint(...)``: the loop then runs without a graph and the gradients
            come from adjoint solves between the events (:func:`_replay_with_adjoint`).
        adjoint_params: with ``adjoint``, the tensors it differentiates (default ``func.parameters()``);
            the parameters of the event functions and jumps get their gradients in any case.

    Returns:
        Solution with ``ys`` at ``t`` and ``events``: a list of :class:`~hybrid_node.loop.events.EventRecord`
        in time order (time, element index, state before the jump, which event).

    Raises:
        ValueError: a problem this loop cannot serve (fixed steps without ``step_size``, per-sample
            or device loops, compiled steps, ``jump_t``/``step_t``, inside a ``torch.func``
            transform), or an ``on_event`` that does not return a state of the state's shape.
        ValueError, TypeError: with ``adjoint``, unusable ``adjoint_params``
            (:func:`~hybrid_node.sensitivity._backward.resolve_params`).
        SolverError: the solve failed, with ``throw``.
    """
    ctrl = problem.controller
    check_event_search(
        problem,
        "solve(event=...)",
        "which elements crossed",
        "with the problems as one batch state (each element's crossings are recorded with its index)",
    )
    events = (events,) if isinstance(events, Event) else tuple(events)
    term = problem.term()
    fterm = problem.term(callbacks=False)  # the gradients' extra evaluations are not the solve's
    fns = [CheckedEvent(ev.fn) for ev in events]
    with torch.no_grad():
        shapes = [f(term.time(problem.ts[0]), problem.unflatten(problem.y0)).shape for f in fns]
    sizes = [int(np.prod(shape)) for shape in shapes]
    offsets = np.cumsum([0] + sizes)
    device = problem.y0.device

    def fn(t, y):
        return torch.cat([f(t, y).reshape(-1) for f in fns])

    sign = -1 if problem.reverse else 1  # a crossing upwards in t is one downwards in solver time
    direction = torch.cat(
        [torch.full((n,), sign * ev.direction, dtype=torch.int64, device=device) for ev, n in zip(events, sizes)]
    )
    with_fired = [ev.on_event is not None and takes_fired(ev.on_event) for ev in events]
    t_dtype = problem.t.dtype

    def at_event(s: float, y_s: torch.Tensor, fired: torch.Tensor):
        t_user = torch.tensor(-s if problem.reverse else s, dtype=t_dtype, device=problem.t.device)
        with torch.no_grad():
            f_e = user_field(problem, fterm, s, y_s.detach())
        ks = fired.nonzero().reshape(-1).tolist()
        t_e, y_e = t_user, y_s
        if torch.is_grad_enabled():
            with torch.enable_grad():
                tt = t_user.clone().requires_grad_(True)
                yy = y_s.detach().clone().requires_grad_(True)
                g = fn(tt, problem.unflatten(yy))
                k = ks[0]  # elements crossing at the very same time share it: the first one's equation
                slope: torch.Tensor | float = 0.0  # stays 0 where event_fn has no derivative along the solution
                if g.requires_grad:  # else an integer tensor, or one built without t and y
                    dg_dt, dg_dy = torch.autograd.grad(g[k], (tt, yy), allow_unused=True)
                    g_graph = fn(t_user, problem.unflatten(y_s))[k]
                    if g_graph.requires_grad:  # else e.g. t - 1: the time moves with nothing that has a gradient
                        with torch.no_grad():
                            slope = event_slope(dg_dt, dg_dy, f_e)
            if bool(torch.as_tensor(slope) != 0):
                shift = event_time_shift(g_graph, slope)
                t_e = t_user + shift.to(t_dtype)
                y_e = y_s + f_e * shift.to(f_e.dtype)
            else:  # no derivative along the solution (e.g. torch.sign(...)): the theorem does not apply
                t_e = constant_event_time(t_user, y_s)
        records = []
        for k in ks:
            j = int(np.searchsorted(offsets, k, side="right") - 1)
            index = tuple(int(i) for i in np.unravel_index(k - offsets[j], tuple(shapes[j])))
            records.append(EventRecord(t_e, index, problem.unflatten(y_e), event=j))
        if not jumps:
            return records, None
        y_new = y_e
        for j, ev in enumerate(events):
            fired_j = fired[offsets[j] : offsets[j + 1]]
            if ev.on_event is None or not bool(fired_j.any()):
                continue
            args = (t_e, problem.unflatten(y_new)) + ((fired_j.reshape(shapes[j]),) if with_fired[j] else ())
            out = ev.on_event(*args)
            parts = out if isinstance(out, (tuple, list)) else (out,)
            if problem.complex_state is not None and all(isinstance(p, torch.Tensor) and p.is_complex() for p in parts):
                out = problem.complex_state.to_real(out)  # an implicit method integrates the real form
            if problem.layout is not None and isinstance(out, (tuple, list)):
                out = problem.layout.flatten(out)
            if not isinstance(out, torch.Tensor) or out.shape != y_s.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"on_event must return the new state, shaped as the state; got {got}.")
            y_new = out
        if t_e.requires_grad:
            with torch.no_grad():
                f_new = user_field(problem, fterm, s, y_new.detach())
            y_new = _Restart.apply(t_e, y_new, f_new)
        return records, y_new

    jumps = any(ev.on_event is not None for ev in events)

    def run(y0: torch.Tensor, ts: list[float], hook) -> EventIntegration:
        return integrate_with_events(
            term,
            problem.solver,
            ctrl,
            y0,
            ts,
            rtol=problem.rtol,
            atol=problem.atol,
            norm=problem.norm,
            event_fn=lambda t, y: fn(t, problem.unflatten(y)),  # the loop's states are flat (tuple states)
            direction=direction,
            at_event=hook,
            jumps=jumps,
            samples=max(ev.samples for ev in events),
            throw=throw,
            max_events=[ev.max_events for ev in events],
        )

    if adjoint is not None:
        integration = _replay_with_adjoint(problem, adjoint, adjoint_params, run, at_event, jumps)
    else:
        integration = run(problem.y0, problem.ts, at_event)
    ys = problem.unflatten(torch.stack(integration.ys))
    return Solution(ts=problem.t, ys=ys, stats=integration.stats, status=integration.status, events=integration.records)


def _replay_with_adjoint(problem: Problem, adjoint, adjoint_params, run, at_event, jumps: bool) -> EventIntegration:
    """The event loop without a graph, then its outputs and records rebuilt with adjoint gradients.

    The loop runs once (``run(y0, ts, hook)``), recording each event's time, the state there before
    the jump and the elements that fired; its outputs include the checkpoint times of an
    :class:`~hybrid_node.InterpolatingAdjoint` (outputs do not change its steps). Then, stretch by
    stretch between jumps, :class:`~hybrid_node.sensitivity.event_adjoint.SegmentAdjoint` makes the
    states differentiable from the stretch's start state (an adjoint solve in the backward pass), and
    ``at_event`` applies the implicit-function-theorem time, the jump and the restart to them with
    their graphs, giving the next stretch's start state. Without jumps there is one stretch, and the
    states at the crossings are among its times.
    """
    log: list[tuple[float, torch.Tensor, torch.Tensor]] = []

    def hook(s: float, y_s: torch.Tensor, fired: torch.Tensor):
        log.append((s, y_s, fired.clone()))
        return at_event(s, y_s, fired)

    ts = list(problem.ts)
    checkpoints = adjoint.checkpoints if isinstance(adjoint, InterpolatingAdjoint) else None
    times = sorted(set(ts) | set(checkpoint_times(ts, checkpoints, None))) if checkpoints else ts
    with torch.no_grad():
        loop = run(problem.y0.detach(), times, hook)
    if loop.status is not Status.SUCCESS:  # a failure reported by status: the values, without gradients
        keep = set(ts)
        loop.ys = [y for s, y in zip(times, loop.ys) if s in keep]
        return loop
    outputs = dict(zip(times, loop.ys))  # the left limits at jump times
    crossings = {s: y for s, y, _ in log}
    pieces = SegmentAdjoint(problem, adjoint, adjoint_params, loop.stats)
    values: dict[float, torch.Tensor] = {ts[0]: problem.y0}
    start, y_start = ts[0], problem.y0
    records: list[EventRecord] = []
    ends = [(s, fired) for s, _, fired in log] if jumps else []
    for end, fired in ends + [(ts[-1], None)]:
        if end > start:
            states = {s: y for s, y in outputs.items() if start < s < end}
            if not jumps:
                states.update({s: y for s, y in crossings.items() if start < s < end})
            states[start] = y_start.detach()
            states[end] = crossings[end] if fired is not None else outputs[end]
            values.update(pieces.states(y_start, states))
        if fired is None:
            break
        # two jumps at one time (an empty stretch): the second acts on the first's result
        new_records, y_new = at_event(end, values[end] if end > start else y_start, fired)
        records.extend(new_records)
        start, y_start = end, y_new
    if not jumps:
        for s, _, fired in log:
            records.extend(at_event(s, values[s], fired)[0])
    loop.ys = [values[s] for s in ts]
    loop.records = records
    return loop
