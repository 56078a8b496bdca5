"""The algebraically reversible adjoint of the reversible Heun method.

The forward pass keeps no graph; the backward pass walks the steps in reverse, recovers each step's
input exactly from its output (the algebra of
:func:`hybrid_node.sde.solvers.reversible_heun.reverse_step`) and differentiates that one step locally. The
gradients are those of direct backprop through the same discretisation, up to floating-point rounding,
with O(len(ts)) memory. With logqp the KL integral (the trapezoid sum h_n (r(z_n) + r(z_(n+1))) / 2 of the
rate at the extrapolated states z, reversible Heun's own quadrature of a component without diffusion) is
differentiated at the recovered states z too, so its gradient is exact as well.

Reference:
    P. Kidger, J. Foster, X. Li, T. Lyons, "Efficient and Accurate Gradients for Neural SDEs", NeurIPS
    2021, section 3 (Algorithm 2, the adjoint of reversible Heun).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._autocast import full_precision_backward
from ._cotangents import vjp
from ._kl import rate_from
from ._loop import Trajectory
from ._validate import Prepared
from .adjoint import (
    StepCotangents,
    check_gradients_finite,
    cotangents_finite,
    first_order_gradients,
    no_forward_mode,
    recorded_forward,
)


def _prod_transpose(noise_type: str, a: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
    """The cotangent of g in g dW given the cotangent ``a`` of g dW: a dW (diagonal) or a dW^T."""
    if noise_type == "diagonal":
        return a * dw
    return a.unsqueeze(-1) * dw.unsqueeze(-2)


def _fields_with_graph(sde, t: float, z: torch.Tensor):
    """(z as a leaf, f(t, z), g(t, z)) with the graph from z kept for one vector-Jacobian product."""
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        f, g = sde.f_and_g(t, zz)
    return zz, f, g


def _fields_vjp(sde, t: float, zz: torch.Tensor, f, g, params, a_f, a_g, rate_cot: torch.Tensor | None):
    """The cotangents of f(t, z), g(t, z) and (with ``rate_cot``) the KL rate at z pulled back to z and params.

    Args:
        sde: the SDE; t: time; zz: z as a leaf; f, g: F(zz) with its graph; params: tensors to differentiate;
        a_f, a_g: the cotangents of f and g; rate_cot: that of the rate r(t, z) (batch,), or None.

    Returns:
        [the cotangent of zz, then one per parameter].
    """
    if rate_cot is None:
        return vjp((f, g), (zz, *params), (a_f, a_g))
    with torch.enable_grad():
        rate = rate_from(sde, t, zz, f, g)  # shares f and g's graph: only the prior drift is evaluated
    return vjp((f, g, rate), (zz, *params), (a_f, a_g, rate_cot))


def backward_pass(
    prepared: Prepared,
    params: Sequence[torch.Tensor],
    traj: Trajectory,
    grad_ys: torch.Tensor,
    grad_log_ratios: torch.Tensor | None = None,
    grad_extra: Sequence[torch.Tensor] | None = None,
    start: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Walk the reversible Heun steps backwards, reconstructing and differentiating each.

    One drift and diffusion evaluation per step: reconstructing step n evaluates (f, g) at z_n with its
    graph kept, and that graph is the one step n - 1's vector-Jacobian product needs. The step's linear
    part is differentiated by hand: with y1 = y + ((f0 + f1) h + (g0 + g1) dW) / 2,
    z1 = 2 y - z + f0 h + g0 dW and (f1, g1) = F(z1), the cotangent of z1 is a_z1 + F'(z1)^T (a_f1 +
    h a_y1 / 2, a_g1 + a_y1 dW^T / 2), and then a_y = a_y1 + 2 a_z1, a_z = -a_z1, a_f0 = h (a_y1 / 2 + a_z1),
    a_g0 = (a_y1 / 2 + a_z1) dW^T.

    Args:
        prepared: the checked problem; params: tensors to differentiate; traj: the recorded forward solve;
        grad_ys: dL/dys; grad_log_ratios: dL/d(cumulative KL integral at each output), with logqp;
        grad_extra: dL/d(f, g, z) of the final extra state, or None (zero); start: the extra state
        (f0, g0, z0) the solve started from when the caller gave one (torchsde's ``extra_solver_state``),
        or None when it was (f(t0, y0), g(t0, y0), y0).

    Returns:
        (dL/dy0, [dL/dp for p in params], [dL/df0, dL/dg0, dL/dz0]) with ``start``, else the last list empty:
        a given start state is an input of its own, so its cotangents go to it and not through f and g to y0.

    Raises:
        SolverError: the gradients came out NaN or infinite from finite output cotangents (the drift or
            diffusion turned non-finite at a reconstructed state, or the reconstruction overflowed), as the
            stochastic adjoint and the ODE adjoints report it; NaN cotangents give NaN gradients, as with
            direct backprop.
    """
    sde, bm, steps = prepared.sde, prepared.bm, traj.steps
    # the reconstruction is exact algebra but evaluates the field at recovered states, where it may overflow
    # or turn NaN though the forward solve stayed finite: the gradients were then NaN without a word; they
    # are checked as the stochastic adjoint checks its own
    strict = cotangents_finite(grad_ys, grad_log_ratios, *(grad_extra or ()))
    # the outputs' and the KL integral's cotangents, added at the recovered states as in the stochastic adjoint
    entering = StepCotangents(traj, grad_ys, grad_log_ratios, prepared.solver, bm)
    n_steps = entering.n_steps
    y, (_, _, z) = traj.kept[n_steps], traj.extra
    zz, f1, g1 = _fields_with_graph(sde, steps[n_steps], z)
    a_y = entering.at_end(y)
    if grad_extra is None:
        a_f, a_g, a_z = torch.zeros_like(f1), torch.zeros_like(g1), torch.zeros_like(y)
    else:  # the final extra state is an output too (torchsde returns it with extra=True)
        a_f, a_g, a_z = grad_extra
    a_params = [torch.zeros_like(p) for p in params]
    owed = None  # the cotangent of the KL rate at the current z from the step after it (h_(n+1) / 2 of it)
    for n in range(n_steps - 1, -1, -1):
        t0, t1 = steps[n], steps[n + 1]
        h = t1 - t0
        dw = bm(t0, t1)
        with torch.no_grad():  # undo the step (the algebra of reverse_step, with F(z1) known)
            f1_, g1_ = f1.detach(), g1.detach()
            z0 = 2 * y - zz.detach() - f1_ * h - sde.prod(g1_, dw)
        zz0, f0, g0 = _fields_with_graph(sde, t0, z0)
        with torch.no_grad():
            y0 = y - 0.5 * ((f0.detach() + f1_) * h + sde.prod(g0.detach() + g1_, dw))
        # step n's KL increment h (r(z_n) + r(z_(n+1))) / 2 has the cotangent ``later``: half of it, times h,
        # falls on each rate
        share = None if entering.later is None else (0.5 * h) * entering.later
        rate_cot = share if owed is None else owed if share is None else owed + share
        cot_f, cot_g = a_f + (0.5 * h) * a_y, a_g + _prod_transpose(sde.noise_type, 0.5 * a_y, dw)
        grads = _fields_vjp(sde, t1, zz, f1, g1, params, cot_f, cot_g, rate_cot)
        owed = share
        a_z1 = a_z + grads[0]
        a_params = [acc + g for acc, g in zip(a_params, grads[1:])]
        mixed = 0.5 * a_y + a_z1
        a_y, a_z, a_f, a_g = a_y + 2 * a_z1, -a_z1, h * mixed, _prod_transpose(sde.noise_type, mixed, dw)
        y, zz, f1, g1 = y0, zz0, f0, g0
        a_y, a_params = entering.add(n, sde, params, y, a_y, a_params, with_kl=False)
    if start is None:
        # The start state (z0, f0, g0) = (y0, f(t0, y0), g(t0, y0)) is a function of y0 (here z0 = y0 up to
        # rounding, and F's graph at it is at hand).
        grads = _fields_vjp(sde, steps[0], zz, f1, g1, params, a_f, a_g, owed)
        a_params = [acc + g for acc, g in zip(a_params, grads[1:])]
        grad_y0, grad_start = a_y + a_z + grads[0], []
    else:
        grad_start, rate_params = _start_cotangents(sde, steps[0], start, params, a_f, a_g, a_z, owed)
        a_params = [acc + g for acc, g in zip(a_params, rate_params)]
        grad_y0 = a_y
    if strict:
        check_gradients_finite(steps[0], grad_y0, [*a_params, *grad_start])
    return grad_y0, a_params, grad_start


def _start_cotangents(sde, t0: float, start, params, a_f, a_g, a_z, rate_cot: torch.Tensor | None):
    """The cotangents of a given start state (f0, g0, z0), which the first step read as they were.

    The first step used f0 and g0 as given, not f and g evaluated at z0, so their cotangents stay with
    them (as in torchsde's adjoint of reversible Heun). With logqp the KL rate at z0 was taken from the
    given f0, g0 and the prior drift at z0 (:meth:`ReversibleHeun.logqp_step`): its cotangent is pulled
    back to all three and to the parameters.

    Args:
        sde: the SDE; t0: the start time; start: (f0, g0, z0); params: tensors to differentiate;
        a_f, a_g, a_z: the cotangents of f0, g0, z0 from the first step; rate_cot: that of the rate at z0
        (batch,), or None.

    Returns:
        ([dL/df0, dL/dg0, dL/dz0], [the rate's contribution to dL/dp for p in params]).
    """
    if rate_cot is None:
        return [a_f, a_g, a_z], [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_(True) for x in start]
        rate = rate_from(sde, t0, leaves[2], leaves[0], leaves[1])
    grads = vjp(rate, (*leaves, *params), rate_cot)
    return [a_f + grads[0], a_g + grads[1], a_z + grads[2]], grads[3:]


class _ReversibleAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prepared: Prepared, settings: Mapping[str, Any], n_start: int, y0: torch.Tensor, *inputs):
        # inputs: the given start state (f0, g0, z0), when n_start is 3, then the parameters
        start, params = inputs[:n_start], inputs[n_start:]
        detached = tuple(x.detach() for x in start) if n_start else None
        traj, ys, lrs = recorded_forward(prepared, {**settings, "extra0": detached}, [], y0)
        ctx.prepared, ctx.traj, ctx.saved_params, ctx.start = prepared, traj, params, detached
        ctx.inputs = (y0, *start)  # only to join a second derivative's error node to what the gradients depend on
        # the final extra state is an output, so a loss on it (or a solve continued from it) has gradients
        return (ys, lrs, *(x.clone() for x in traj.extra))

    @staticmethod
    @full_precision_backward  # called inside torch.autocast, its solve ran in the autocast dtype
    def backward(ctx, grad_ys, grad_lrs, *grad_extra):
        grad_lrs = grad_lrs if ctx.traj.log_ratios else None
        grad_y0, grad_params, grad_start = backward_pass(
            ctx.prepared, ctx.saved_params, ctx.traj, grad_ys, grad_lrs, grad_extra, ctx.start
        )
        depends_on = [grad_ys, grad_lrs, *grad_extra, *ctx.inputs, *ctx.saved_params]
        grads = first_order_gradients(grad_y0, [*grad_start, *grad_params], depends_on)
        return (None, None, None, *grads)

    @staticmethod
    def jvp(ctx, *tangents):
        no_forward_mode()  # raises, naming what to use


def solve_reversible_adjoint(
    prepared: Prepared,
    y0: torch.Tensor,
    params: Sequence[torch.Tensor],
    settings: Mapping[str, Any],
    start: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Forward reversible Heun solve without a graph; exact gradients by the reversible adjoint.

    Args:
        prepared: the checked problem (method reversible_heun); y0: (batch, d); params: tensors to
            differentiate; settings: step-size settings of :func:`hybrid_node.sde._loop.integrate`
            (``logqp`` included); start: the extra state (f0, g0, z0) to start from (torchsde's
            ``extra_solver_state``; default: (f(t0, y0), g(t0, y0), y0)).

    Returns:
        (ys, the cumulative KL integral at each output (len(ts), batch; zeros without logqp), the final
        extra state (f, g, z), torchsde's order). Gradients flow to y0, params and the tensors of
        ``start``, and from the final extra state as from ys (the adjoint of Kidger et al. 2021 carries
        the cotangents of (f, g, z) along with that of y).
    """
    given = tuple(start) if start is not None else ()
    ys, log_ratios, *extra = _ReversibleAdjoint.apply(prepared, settings, len(given), y0, *given, *params)
    return ys, log_ratios, tuple(extra)
