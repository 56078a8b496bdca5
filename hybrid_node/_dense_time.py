"""Gradients of a dense read ``DenseSolution(t)`` with respect to its query times.

The dense output inside a step is a polynomial ``u(theta)`` in ``theta = (t - t0) / h``, so its
derivative in ``t`` is ``u'(theta) / h``, the interpolant's own slope (Hairer, Nørsett, Wanner, Solving
ODEs I, 2nd ed., Section II.6). The query times are turned into floats to find their steps, which cuts
them from the graph; the read adds a zero that carries the gradient back to them:
``grad_t = <grad_y, dy/dt>``, with the slope of the computed interpolant (the function the read is).
"""

from __future__ import annotations

from typing import Any

import torch

SECOND_ORDER = (
    "gradients with respect to the query times of a dense read are first-order only: the slope of the "
    "interpolant that carries them is a constant of the backward pass, so a second derivative through the "
    "times (or a gradient of that gradient) would come out as zero. Pass t.detach() where no gradient in "
    "t is needed, or take a first-order gradient without create_graph=True."
)


class _TimeSlope(torch.autograd.Function):
    """Zeros of the slopes' shape whose backward gives each query time ``sum(grad_y * slope)``."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(slopes)
        ctx.t_dtype = t.dtype
        return torch.zeros_like(slopes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if torch.is_grad_enabled():  # a pass that records a graph would differentiate the slope as a constant
            raise RuntimeError(SECOND_ORDER)
        (slopes,) = ctx.saved_tensors
        g = (grad * slopes).reshape(slopes.shape[0], -1).sum(1)
        return g.to(ctx.t_dtype), None


def time_slope_term(t: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """A zero tensor that carries ``d read / d t`` back to the query times ``t``.

    Args:
        t: the query times as the caller passed them (with their graph), shape (k,).
        slopes: dy/dt at each query, shape (k, *state) (detached from y0's graph: see SECOND_ORDER).

    Returns:
        Zeros of ``slopes``' shape and dtype, to be added to the read states.

    Raises:
        RuntimeError: in a backward pass that records a graph (``create_graph=True``), with the fix.
    """
    return _TimeSlope.apply(t, slopes.detach())
