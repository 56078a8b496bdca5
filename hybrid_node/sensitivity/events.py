"""Gradients of a terminal event's time and state by the implicit function theorem.

The event time t_e solves g(t_e, y(t_e; theta), theta) = 0, so

    dt_e/dtheta = -(dg/dtheta + dg/dy . dy/dtheta) / (dg/dy . f(t_e, y_e) + dg/dt),

where dy/dtheta is the derivative of the state at the fixed time t_e (whatever computed it: direct
backpropagation or an adjoint), and the state returned at the event moves with it:
dy_e/dtheta = dy/dtheta + f(t_e, y_e) dt_e/dtheta. Both are expressed by adding zero-valued terms with
the right gradient, so any gradient path composes with it.

An event function without a derivative along the solution (an integer tensor such as
``(y > 1).long()``, a float without a graph, ``torch.sign(...)``: the denominator is zero) gives the
event time a zero gradient and the event state its gradient at the fixed time t_e, the values
torchdiffeq's ``odeint_event`` returns for it.

Reference: Chen, Amos, Nickel, "Learning Neural Event Functions for Ordinary Differential Equations",
ICLR 2021, Section 3 (and the implicit function theorem).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._problem import Problem
from ._backward import dot, first_order_only, user_field

#: the error of a second derivative through an event time's implicit-function rule
EVENT_SECOND_DERIVATIVE = (
    "the event time's derivative (implicit function theorem: dt_e/dtheta = -(dg/dtheta) / (dg/dy . f + dg/dt)) "
    "is first-order only: the gradient through an event time (event_fn, per_sample_events or hn.Event with a "
    "state-dependent condition, on every gradient method) cannot be differentiated again (create_graph=True, "
    "double backward, Hessians). For second derivatives solve to fixed times with hn.odeint (DirectBackprop()), "
    "or take finite differences of the first derivative."
)


class _EventShift(torch.autograd.Function):
    """Zero, with the implicit function theorem's first derivative ``-dg / slope``; no second one.

    The slope (and the field at the event) are constants here, while the event time's true second
    derivative also moves them, and with them the time, to second order: ``-(g_tt t'^2 + 2 g_t,theta
    t' + g_theta,theta) / g_t``. Left to autograd, ``-(g - g.detach()) / slope`` differentiated twice
    gave only the last term: a Hessian of the event time silently wrong (for t_e = log(c / y0) / a,
    (-6.2, 16.3) in a row where the exact one is (32.3, 39.0)).
    """

    @staticmethod
    def forward(ctx, g: torch.Tensor, slope: torch.Tensor | float) -> torch.Tensor:
        ctx.save_for_backward(g)  # only to join the error node to what a second derivative reaches
        ctx.slope = slope
        return torch.zeros_like(g)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (g,) = ctx.saved_tensors
        (dg,) = first_order_only(EVENT_SECOND_DERIVATIVE, [-grad / ctx.slope], [grad, g])
        return dg, None


def event_time_shift(g_graph: torch.Tensor, slope: torch.Tensor | float) -> torch.Tensor:
    """The zero-valued shift of an event time whose gradient is dt_e/dtheta, refusing a second derivative.

    Args:
        g_graph: the event function at the event, along the graph of the state at the fixed event time
            (and of ``event_fn``'s own parameters).
        slope: ``dg/dy . f + dg/dt`` at the event, without a graph (nonzero; elementwise for a batch).

    Returns:
        Zeros shaped like ``g_graph``, whose gradient is ``-(dg/dtheta) / slope`` (Chen, Amos & Nickel
        2021, Section 3); differentiating that gradient again raises a ``RuntimeError`` naming what to use.
    """
    return _EventShift.apply(g_graph, slope)


def _triggered(g_e: torch.Tensor, g_0: torch.Tensor) -> int:
    """Index of the event component that changed sign (the smallest |g| if rounding hides it)."""
    changed = (torch.sign(g_e) != torch.sign(g_0)).nonzero()
    if len(changed):
        return int(changed[0])
    return int(torch.argmin(torch.abs(g_e)))


def constant_event_time(t_e: torch.Tensor, y_event: torch.Tensor) -> torch.Tensor:
    """The event time of an event function without a derivative along the solution (torchdiffeq's).

    Args:
        t_e: the event time (no graph).
        y_event: the state at the event, with its gradient at fixed time.

    Returns:
        ``t_e`` with a zero gradient wherever ``y_event`` has one, so that ``t_e.backward()`` works as
        it does in torchdiffeq.
    """
    if not y_event.requires_grad:
        return t_e
    return t_e + (y_event.reshape(-1)[:1].sum() * 0).to(t_e.dtype)


def event_slope(dg_dt: torch.Tensor | None, dg_dy: torch.Tensor | None, f_e: torch.Tensor) -> torch.Tensor | float:
    """The rate of change of the event function along the solution at the event, dg/dy . f + dg/dt.

    Args:
        dg_dt, dg_dy: the event function's derivatives at the event (None where it does not use t or y).
        f_e: the field at the event.

    Returns:
        The slope, the denominator of the implicit function theorem (0.0 where neither derivative exists).
    """
    return (dot(dg_dy, f_e) if dg_dy is not None else 0.0) + (dg_dt if dg_dt is not None else 0.0)


def event_outputs(
    problem: Problem, term, event_fn: Callable, s_event: float, y_event: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The event time as a tensor and the event state, both with their total gradients.

    Args:
        problem: the forward problem (times, layout, direction).
        term: a Term of the problem (evaluates the field).
        event_fn: the event function ``event_fn(t, y)``.
        s_event: the event time in solver time.
        y_event: the flat state at the event time, carrying its gradient at fixed time.

    Returns:
        (t_e, y_e): t_e in the user's time and t's dtype; y_e the state including the event time's motion
        (t_e with a zero gradient and y_e as given where ``event_fn`` has no derivative along the solution).
    """
    t = problem.t
    t_e = torch.tensor(-s_event if problem.reverse else s_event, dtype=t.dtype, device=t.device)
    if not torch.is_grad_enabled():
        return t_e, y_event
    y_fixed = y_event.detach()
    with torch.enable_grad():
        tt = t_e.clone().requires_grad_(True)
        yy = y_fixed.clone().requires_grad_(True)
        g_e = event_fn(tt, problem.unflatten(yy)).reshape(-1)
        if not g_e.requires_grad:  # an integer tensor, or one built without t and y: no derivative
            return constant_event_time(t_e, y_event), y_event
        with torch.no_grad():
            g_0 = event_fn(problem.term().time(problem.ts[0]), problem.unflatten(problem.y0.detach())).reshape(-1)
        k = _triggered(g_e.detach(), g_0)
        dg_dt, dg_dy = torch.autograd.grad(g_e[k], (tt, yy), allow_unused=True)
        # the same component along the graph of y_event and of event_fn's own parameters
        g_graph = event_fn(t_e, problem.unflatten(y_event)).reshape(-1)[k]
    if not g_graph.requires_grad:  # e.g. t - 1: the event time moves with nothing that has a gradient
        return constant_event_time(t_e, y_event), y_event
    with torch.no_grad():
        f_e = user_field(problem, term, s_event, y_fixed)
        slope = event_slope(dg_dt, dg_dy, f_e)
    if not bool(torch.as_tensor(slope) != 0):  # e.g. torch.sign(...): the theorem does not apply, 0/0 is NaN
        return constant_event_time(t_e, y_event), y_event
    shift = event_time_shift(g_graph, slope)  # zero; its gradient is dt_e/dtheta
    return t_e + shift.to(t.dtype), y_event + f_e * shift.to(f_e.dtype)
