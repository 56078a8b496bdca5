"""The stochastic adjoint: gradients of an SDE solve by a backward SDE on the same Brownian path.

The forward pass stores no graph, only the states at the output times. The backward pass solves the
augmented Stratonovich SDE for (y, a = dL/dy, a_theta = dL/dtheta) from ts[-1] back to ts[0] with the
stochastic midpoint method, on the forward step grid and the forward Brownian increments. Over a step,
with phi(t, y) = f(t, y) h + g(t, y) dW (f the Stratonovich drift), the increment of the augmented state
is (-phi, a dphi/dy, a dphi/dtheta): one vector-Jacobian product gives both the drift and the diffusion
parts. Ito SDEs are converted to Stratonovich form first (f - 1/2 (dg/dy) g; diagonal, scalar and
additive noise). Memory is O(len(ts)); the gradient error vanishes as dt -> 0.

Reference:
    X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud, "Scalable Gradients for Stochastic Differential
    Equations", AISTATS 2020, sections 3-4 (the stochastic adjoint and its backward Brownian path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._cotangents import step_cotangents
from ._loop import Trajectory, integrate, logqp_rate
from ._sde import SDEView
from ._validate import Prepared
from .solvers.milstein import diffusion_derivative_product


def _stratonovich_drift(sde: SDEView, t: float, y: torch.Tensor) -> torch.Tensor:
    f = sde.f(t, y)
    if sde.sde_type == "stratonovich" or sde.noise_type == "additive":
        return f
    _, bdb = diffusion_derivative_product(sde, t, y)
    return f - 0.5 * bdb


def _increment_vjp(
    sde: SDEView, params: Sequence[torch.Tensor], t: float, y: torch.Tensor, a: torch.Tensor, h: float, dw
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """phi(t, y) = f h + g dW and the cotangent a pulled back to y and to the parameters."""
    with torch.enable_grad():
        yy = y.detach().requires_grad_(True)
        phi = _stratonovich_drift(sde, t, yy) * h + sde.g_prod(t, yy, dw)
        grads = torch.autograd.grad(phi, (yy, *params), a, allow_unused=True)
    vy = torch.zeros_like(y) if grads[0] is None else grads[0]
    vp = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1:])]
    return phi.detach(), vy, vp


def rate_vjp(
    sde: SDEView, params: Sequence[torch.Tensor], t: float, y: torch.Tensor, h: float, cot: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The cotangent ``cot`` of the KL increment rate(t, y) h pulled back to y and to the parameters."""
    with torch.enable_grad():
        yy = y.detach().requires_grad_(True)
        grads = torch.autograd.grad(logqp_rate(sde, t, yy) * h, (yy, *params), cot, allow_unused=True)
    vy = torch.zeros_like(y) if grads[0] is None else grads[0]
    return vy, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1:])]


def backward_pass(
    prepared: Prepared,
    params: Sequence[torch.Tensor],
    traj: Trajectory,
    grad_ys: torch.Tensor,
    grad_log_ratios: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Solve the adjoint SDE backwards over the forward step grid.

    Args:
        prepared: the checked problem; params: tensors to differentiate; traj: the recorded forward solve;
        grad_ys: dL/dys; grad_log_ratios: dL/d(cumulative KL integral at each output), with logqp.

    Returns:
        (dL/dy0, [dL/dp for p in params]).
    """
    sde, bm, steps = prepared.sde, prepared.bm, traj.steps
    inject = step_cotangents(traj, grad_ys)
    n_steps = len(steps) - 1
    y = traj.kept[n_steps]
    a = inject.get(n_steps, torch.zeros_like(y))
    a_params = [torch.zeros_like(p) for p in params]
    # The KL integral is a left-point sum over steps: the rate at step n is weighted by the cotangents of
    # the cumulative integral at every later step, a running sum kept in ``later``.
    inject_kl = {} if grad_log_ratios is None else step_cotangents(traj, grad_log_ratios)
    later = inject_kl.get(n_steps)
    for n in range(n_steps - 1, -1, -1):
        t0, t1 = steps[n], steps[n + 1]
        h = t1 - t0
        dw = bm(t0, t1)
        # Midpoint rule for the augmented Stratonovich SDE, run from t1 down to t0.
        phi1, vy1, _ = _increment_vjp(sde, (), t1, y, a, h, dw)  # the midpoint rule drops stage 1's dL/dparams
        y_mid, a_mid = y - 0.5 * phi1, a + 0.5 * vy1
        phi2, vy2, vp2 = _increment_vjp(sde, params, t0 + 0.5 * h, y_mid, a_mid, h, dw)
        y, a = y - phi2, a + vy2
        a_params = [acc + v for acc, v in zip(a_params, vp2)]
        if n in traj.kept:
            y = traj.kept[n]  # restart from the stored forward state: the reconstruction error stays local
        if later is not None:
            vy, vp = rate_vjp(sde, params, t0, y, h, later)
            a = a + vy
            a_params = [acc + v for acc, v in zip(a_params, vp)]
        if n in inject:
            a = a + inject[n]
        if n in inject_kl:
            later = inject_kl[n] if later is None else later + inject_kl[n]
    return a, a_params


class _StochasticAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prepared: Prepared, settings: Mapping[str, Any], holder: list, y0: torch.Tensor, *params):
        with torch.no_grad():
            traj = integrate(prepared.solver, prepared.sde, prepared.bm, y0, prepared.ts, record=True, **settings)
        ctx.prepared, ctx.traj, ctx.saved_params = prepared, traj, params
        holder.append(traj.extra)
        ys = torch.stack(traj.ys)
        lrs = torch.stack(traj.log_ratios) if traj.log_ratios else ys.new_zeros(ys.shape[:2])
        return ys, lrs

    @staticmethod
    def backward(ctx, grad_ys, grad_lrs):
        params = ctx.saved_params
        grad_lrs = grad_lrs if ctx.traj.log_ratios else None
        grad_y0, grad_params = backward_pass(ctx.prepared, params, ctx.traj, grad_ys, grad_lrs)
        return (None, None, None, grad_y0, *grad_params)


def solve_stochastic_adjoint(
    prepared: Prepared, y0: torch.Tensor, params: Sequence[torch.Tensor], settings: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Forward solve without a graph; gradients to y0 and params by the stochastic adjoint.

    Args:
        prepared: the checked problem; y0: (batch, d); params: tensors to differentiate; settings: the
            step-size settings of :func:`hybrid_node.sde._loop.integrate` (``logqp`` included).

    Returns:
        (ys, the cumulative KL integral at each output (len(ts), batch; zeros without logqp), the solver's
        final extra state).

    Raises:
        ValueError: an Ito SDE with general noise (no Stratonovich conversion without the full Jacobian).
    """
    if prepared.sde.sde_type == "ito" and prepared.sde.noise_type == "general":
        raise ValueError(
            "the stochastic adjoint needs a Stratonovich SDE for general noise: write the SDE in Stratonovich "
            "form (sde_type='stratonovich') or use sdeint (direct backprop)."
        )
    holder: list = []
    ys, log_ratios = _StochasticAdjoint.apply(prepared, settings, holder, y0, *params)
    return ys, log_ratios, holder[0]
