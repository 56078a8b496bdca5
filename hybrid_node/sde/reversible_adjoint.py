"""The algebraically reversible adjoint of the reversible Heun method.

The forward pass keeps no graph; the backward pass walks the steps in reverse, recovers each step's
input exactly from its output (:func:`reverse_step`) and differentiates that one step locally. The
gradients are those of direct backprop through the same discretisation, up to floating-point rounding,
with O(len(ts)) memory. With logqp the KL integral (a left-point sum of the rate at each step's input
state) is differentiated at the recovered states too, so its gradient is exact as well.

Reference:
    P. Kidger, J. Foster, X. Li, T. Lyons, "Efficient and Accurate Gradients for Neural SDEs", NeurIPS
    2021, section 3 (Algorithm 2, the adjoint of reversible Heun).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._cotangents import step_cotangents
from ._loop import Trajectory, integrate
from ._validate import Prepared
from .adjoint import rate_vjp
from .solvers.reversible_heun import forward_step, reverse_step


def _grads(outputs, inputs, cotangents) -> list[torch.Tensor]:
    grads = torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def backward_pass(
    prepared: Prepared,
    params: Sequence[torch.Tensor],
    traj: Trajectory,
    grad_ys: torch.Tensor,
    y0: torch.Tensor,
    grad_log_ratios: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Walk the reversible Heun steps backwards, reconstructing and differentiating each.

    Args:
        prepared: the checked problem; params: tensors to differentiate; traj: the recorded forward solve;
        grad_ys: dL/dys; y0: the initial state; grad_log_ratios: dL/d(cumulative KL integral at each
        output), with logqp.

    Returns:
        (dL/dy0, [dL/dp for p in params]).
    """
    sde, bm, steps = prepared.sde, prepared.bm, traj.steps
    inject = step_cotangents(traj, grad_ys)
    n_steps = len(steps) - 1
    y, extra = traj.kept[n_steps], traj.extra
    a_y = inject.get(n_steps, torch.zeros_like(y))
    a_extra = [torch.zeros_like(x) for x in extra]
    a_params = [torch.zeros_like(p) for p in params]
    # The KL rate at step n's input is weighted by the cotangents of the cumulative integral at every
    # later step: a running sum, as in the stochastic adjoint.
    inject_kl = {} if grad_log_ratios is None else step_cotangents(traj, grad_log_ratios)
    later = inject_kl.get(n_steps)
    for n in range(n_steps - 1, -1, -1):
        t0, t1 = steps[n], steps[n + 1]
        dw = bm(t0, t1)
        with torch.no_grad():
            y, extra = reverse_step(sde, t0, t1, dw, y, extra)
        with torch.enable_grad():
            inputs = [x.detach().requires_grad_(True) for x in (y, *extra)]
            y1, extra1 = forward_step(sde, t0, t1, dw, inputs[0], tuple(inputs[1:]))
            grads = _grads((y1, *extra1), (*inputs, *params), (a_y, *a_extra))
        a_y, a_extra = grads[0], grads[1:4]
        a_params = [acc + g for acc, g in zip(a_params, grads[4:])]
        if later is not None:
            vy, vp = rate_vjp(sde, params, t0, y, t1 - t0, later)
            a_y = a_y + vy
            a_params = [acc + v for acc, v in zip(a_params, vp)]
        if n in inject:
            a_y = a_y + inject[n]
        if n in inject_kl:
            later = inject_kl[n] if later is None else later + inject_kl[n]
    # The start state (z0, f0, g0) = (y0, f(t0, y0), g(t0, y0)) is a function of y0.
    with torch.enable_grad():
        yy = y0.detach().requires_grad_(True)
        f0, g0 = sde.f_and_g(steps[0], yy)
        grads = _grads((f0, g0), (yy, *params), (a_extra[1], a_extra[2]))
    a_params = [acc + g for acc, g in zip(a_params, grads[1:])]
    return a_y + a_extra[0] + grads[0], a_params


class _ReversibleAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prepared: Prepared, settings: Mapping[str, Any], holder: list, y0: torch.Tensor, *params):
        with torch.no_grad():
            traj = integrate(prepared.solver, prepared.sde, prepared.bm, y0, prepared.ts, record=True, **settings)
        ctx.prepared, ctx.traj, ctx.saved_params, ctx.y0 = prepared, traj, params, y0.detach()
        holder.append(traj.extra)
        ys = torch.stack(traj.ys)
        lrs = torch.stack(traj.log_ratios) if traj.log_ratios else ys.new_zeros(ys.shape[:2])
        return ys, lrs

    @staticmethod
    def backward(ctx, grad_ys, grad_lrs):
        grad_lrs = grad_lrs if ctx.traj.log_ratios else None
        grad_y0, grad_params = backward_pass(ctx.prepared, ctx.saved_params, ctx.traj, grad_ys, ctx.y0, grad_lrs)
        return (None, None, None, grad_y0, *grad_params)


def solve_reversible_adjoint(
    prepared: Prepared, y0: torch.Tensor, params: Sequence[torch.Tensor], settings: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Forward reversible Heun solve without a graph; exact gradients by the reversible adjoint.

    Args:
        prepared: the checked problem (method reversible_heun); y0: (batch, d); params: tensors to
            differentiate; settings: step-size settings of :func:`hybrid_node.sde._loop.integrate`
            (``logqp`` included).

    Returns:
        (ys, the cumulative KL integral at each output (len(ts), batch; zeros without logqp), the final
        extra state (z, f, g)).
    """
    holder: list = []
    ys, log_ratios = _ReversibleAdjoint.apply(prepared, settings, holder, y0, *params)
    return ys, log_ratios, holder[0]
