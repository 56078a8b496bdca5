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

Everything else is autograd through the steps. References: Chen, Amos, Nickel, "Learning Neural
Event Functions for Ordinary Differential Equations", ICLR 2021; Chen, Rubanova, Bettencourt,
Duvenaud, "Neural Ordinary Differential Equations", NeurIPS 2018.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from .._event import Event
from .._problem import Problem
from .._solution import Solution
from ..controllers import PIDController
from ..loop.dispatch import CheckedEvent
from ..loop.events import EventRecord, integrate_with_events
from ._backward import dot, user_field


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


def _takes_fired(on_event) -> bool:
    """Whether ``on_event`` takes the ``fired`` mask as a third argument."""
    try:
        params = inspect.signature(on_event).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the two-argument form
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in params)


def solve_with_events(problem: Problem, event: Event, throw: bool = True) -> Solution:
    """Solve through ``problem.t`` recording every crossing of ``event.fn``, jumping with ``event.on_event``.

    Args:
        problem: the validated problem (an adaptive torch solver on the host loop).
        event: the non-terminal event.
        throw: raise SolverError on failure, else report the status with NaN outputs not reached.

    Returns:
        Solution with ``ys`` at ``t`` and ``events``: a list of :class:`~hybrid_node.loop.events.EventRecord`
        in time order (time, element index, state before the jump).

    Raises:
        ValueError: a problem this loop cannot serve (fixed steps, per-sample or device loops).
        SolverError: the solve failed, with ``throw``.
    """
    ctrl = problem.controller
    if not isinstance(ctrl, PIDController) or ctrl.per_sample or ctrl.device_loop or problem.solver.compile:
        raise ValueError(
            "events with solve(event=...) run on the adaptive shared-step host loop: use an adaptive solver with "
            "hn.PIDController (no per_sample, device_loop or compile)."
        )
    if problem.jump_t or problem.step_t:
        raise ValueError("solve(event=...) does not support jump_t or step_t.")
    term = problem.term()
    fterm = problem.term(callbacks=False)  # the gradients' extra evaluations are not the solve's
    fn = CheckedEvent(event.fn)
    with_fired = event.on_event is not None and _takes_fired(event.on_event)
    t_dtype = problem.t.dtype

    def at_event(s: float, y_s: torch.Tensor, fired: torch.Tensor):
        t_user = torch.tensor(-s if problem.reverse else s, dtype=t_dtype, device=problem.t.device)
        with torch.no_grad():
            f_e = user_field(problem, fterm, s, y_s.detach())
        shape = None
        ks = fired.nonzero().reshape(-1).tolist()
        t_e, y_e = t_user, y_s
        if torch.is_grad_enabled():
            with torch.enable_grad():
                tt = t_user.clone().requires_grad_(True)
                yy = y_s.detach().clone().requires_grad_(True)
                g = fn(tt, problem.unflatten(yy))
                shape = g.shape
                k = ks[0]  # elements crossing at the very same time share it: the first one's equation
                dg_dt, dg_dy = torch.autograd.grad(g.reshape(-1)[k], (tt, yy), allow_unused=True)
                g_graph = fn(t_user, problem.unflatten(y_s)).reshape(-1)[k]
            if g_graph.requires_grad:
                with torch.no_grad():
                    slope = (dot(dg_dy, f_e) if dg_dy is not None else 0.0) + (dg_dt if dg_dt is not None else 0.0)
                shift = -(g_graph - g_graph.detach()) / slope
                t_e = t_user + shift.to(t_dtype)
                y_e = y_s + f_e * shift.to(f_e.dtype)
        if shape is None:
            with torch.no_grad():
                shape = fn(t_user, problem.unflatten(y_s.detach())).shape
        records = [
            EventRecord(t_e, tuple(int(i) for i in np.unravel_index(k, tuple(shape))), problem.unflatten(y_e))
            for k in ks
        ]
        if event.on_event is None:
            return records, None
        args = (t_e, problem.unflatten(y_e)) + ((fired.reshape(shape),) if with_fired else ())
        y_new = event.on_event(*args)
        y_new = y_new if problem.layout is None else problem.layout.flatten(y_new)
        if not isinstance(y_new, torch.Tensor) or y_new.shape != y_s.shape:
            raise ValueError(
                f"on_event must return the new state, shaped as the state {tuple(y_s.shape)}; got "
                f"{tuple(y_new.shape) if isinstance(y_new, torch.Tensor) else type(y_new).__name__}."
            )
        if t_e.requires_grad:
            with torch.no_grad():
                f_new = user_field(problem, fterm, s, y_new.detach())
            y_new = _Restart.apply(t_e, y_new, f_new)
        return records, y_new

    integration = integrate_with_events(
        term,
        problem.solver,
        ctrl,
        problem.y0,
        problem.ts,
        rtol=problem.rtol,
        atol=problem.atol,
        norm=problem.norm,
        event_fn=lambda t, y: fn(t, problem.unflatten(y)),  # the loop's states are flat (tuple states)
        direction=-event.direction if problem.reverse else event.direction,
        at_event=at_event,
        jumps=event.on_event is not None,
        samples=event.samples,
        throw=throw,
    )
    ys = problem.unflatten(torch.stack(integration.ys))
    return Solution(ts=problem.t, ys=ys, stats=integration.stats, status=integration.status, events=integration.records)
