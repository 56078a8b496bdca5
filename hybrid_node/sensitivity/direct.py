"""Direct backpropagation through the solve, plus gradients for the output times and event times.

The loop's operations are differentiated by autograd (the exact gradient of the discrete solution).
The times are host floats inside the loop, so their gradients are added around it, as the
derivatives of the continuous solution y(t; t_0, y_0):

    dy(t_i)/dt_i = f(t_i, y_i)        dy(t_i)/dt_0 = -J(t_i, t_0) f(t_0, y_0),

the second through an identity on y0 whose backward turns dL/dy0 into dL/dt_0 = -<dL/dy0, f(t_0, y_0)>
(the cotangent of the output y(t_0) = y0, which does not move with t_0, is left out). Event times
get theirs from :mod:`hybrid_node.sensitivity.events`.

Forward mode (``torch.autograd.forward_ad``) takes the same two rules as tangents: a tangent dt on
the times enters the solve as the extra initial tangent -f(t_0, y_0) dt_0, which the steps carry
to Phi (dy_0 - f(t_0, y_0) dt_0) at every output, and each output y(t_i), i > 0, gets f(t_i, y_i) dt_i
added; the output y(t_0) = y0 keeps its own tangent.

Reference: Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations", NeurIPS
2018, Appendix B.2 (gradients with respect to the times).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd import forward_ad

from .._problem import Problem
from .._solution import Solution
from .._transforms import forward_mode_active
from ..loop import integrate, to_solution
from ._backward import dot, first_order_only, user_field
from .events import event_outputs

#: the error of a second derivative through the gradient with respect to t
_NO_SECOND_T = (
    "the gradient with respect to the output times t is first-order only (the loop holds the times as "
    "host floats): it cannot be differentiated again (create_graph=True, double backward). Differentiate "
    "twice with respect to y0 and the parameters only, passing t.detach()."
)


def _start_time_gradient(field: Callable, y0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """dL/dt_0 = -<dL/dy0, f(t_0, y_0)> (the real inner product, for complex states)."""
    return -dot(grad, field(0, y0))


def _output_time_gradients(field: Callable, ys: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """dL/dt_i = <dL/dy_i, f(t_i, y_i)> for i > 0, and 0 for t_0 (whose gradient comes through y0)."""
    # the real inner product: a complex state's gradient pairs with its velocity as Re(conj(g) f)
    products = [dot(grad[i], field(i, ys[i])) for i in range(1, len(ys))]
    return torch.stack([torch.zeros((), dtype=products[0].dtype, device=ys.device), *products])


def time_tangent(t: torch.Tensor) -> torch.Tensor | None:
    """The ``torch.autograd.forward_ad`` tangent of the output times, or None."""
    return forward_ad.unpack_dual(t).tangent if forward_mode_active() else None


def _moved(y: torch.Tensor, velocity: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """``y`` with ``velocity * dt`` added to its tangent and its value left as it is.

    The added term is a dual zero (primal 0, tangent ``dt``) times the velocity, so the value is
    exact and the velocity's own tangent, a second-order term, drops out.
    """
    shift = forward_ad.make_dual(torch.zeros_like(dt), dt.detach())
    return y + velocity * shift.to(velocity.dtype)


class _TimeGradients(torch.autograd.Function):
    """Identity on states ``y``; its backward gives their times ``t`` the gradient ``rule(field, y,
    dL/dy)`` (:func:`_start_time_gradient` on y0, :func:`_output_time_gradients` on the outputs), with
    ``field(i, y_i)`` the user's field at the i-th time."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, y: torch.Tensor, field: Callable, rule: Callable) -> torch.Tensor:
        ctx.field, ctx.rule = field, rule
        ctx.t_dtype = t.dtype
        ctx.save_for_backward(t, y)
        return y.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        t, y = ctx.saved_tensors
        grad_t = None
        if ctx.needs_input_grad[0]:
            grad_t = ctx.rule(ctx.field, y, grad).to(ctx.t_dtype)
            # the field is evaluated at the host float times, so this gradient's own derivative would miss
            # its dependence on t: under create_graph=True a second derivative through it raises
            (grad_t,) = first_order_only(_NO_SECOND_T, [grad_t], [t, y, grad])
        return grad_t, grad, None, None


def solve_direct(problem: Problem, event_fn: Callable | None = None, throw: bool = True) -> Solution:
    """Solve with direct backpropagation, adding gradients for ``t`` and the event time.

    Args:
        problem: the validated problem.
        event_fn: terminal event, or None.
        throw: raise SolverError on failure, else report the status.

    Returns:
        Solution whose ``ys`` (and ``t_final`` for events) carry gradients for y0, the field's
        parameters, ``t`` (when it requires grad) and the event time.
    """
    term = problem.term()
    t = problem.t
    with_t = t.requires_grad and torch.is_grad_enabled()
    fterm = problem.term(callbacks=False)  # a second term, so the extra evaluations do not count as the solve's
    ts = problem.ts

    per_sample = problem.controller.per_sample

    def field(i: int, y: torch.Tensor) -> torch.Tensor:
        if not per_sample:
            return user_field(problem, fterm, ts[i], y)
        # per-sample control calls the field with one time per sample, shape (batch,), as the loop does:
        # a field written for it (t[:, None]) fails on a scalar t
        tt = fterm.time(ts[i]).expand(y.shape[0]).clone()
        # a failed sample's later outputs are NaN (throw=False): its rows are left out of the products,
        # where f(NaN) made dL/dt NaN for every sample; they get a finite stand-in, the field's value dropped
        rows = torch.isfinite(y).reshape(y.shape[0], -1).all(dim=1).reshape((-1,) + (1,) * (y.dim() - 1))
        f = fterm.func(tt, torch.where(rows, y, torch.zeros_like(y)))
        return torch.where(rows, f, torch.zeros_like(f))

    y0 = _TimeGradients.apply(t[0], problem.y0, field, _start_time_gradient) if with_t else problem.y0
    dt = time_tangent(t)  # an event solve or a t that requires grad is refused such a tangent (_api)
    if dt is not None:  # the flow carries the start's move: dy(t_i)/dt_0 = -Phi f(t_0, y_0)
        y0 = _moved(y0, -field(0, problem.y0), dt[0])
    integration = integrate(problem, term, y0, ts, event_fn=event_fn, throw=throw)
    integration.ys[0] = problem.y0
    if dt is not None:  # each output moves with its time: dy(t_i)/dt_i = f(t_i, y_i)
        integration.ys[1:] = [_moved(y, field(i, y), dt[i]) for i, y in enumerate(integration.ys) if i > 0]
    t_final = None
    if integration.event_t is not None:
        assert event_fn is not None  # only an event solve stops at an event
        t_final, integration.ys[1] = event_outputs(problem, fterm, event_fn, integration.event_t, integration.ys[1])
    elif with_t and len(integration.ys) > 1:
        ys = _TimeGradients.apply(t, torch.stack(integration.ys), field, _output_time_gradients)
        integration.ys = list(ys.unbind(0))
    sol = to_solution(problem, integration, throw)
    if t_final is not None:
        sol.t_final = t_final
    return sol
