"""Where the cotangents of the outputs enter a backward pass over the step grid."""

from __future__ import annotations

import torch

from ._loop import Trajectory


def step_cotangents(traj: Trajectory, grad_ys: torch.Tensor) -> dict[int, torch.Tensor]:
    """Split dL/dys over the step states the outputs were interpolated from.

    Args:
        traj: the forward solve (its ``weights``: ys[j] = (1 - w) y_k + w y_{k+1}).
        grad_ys: (len(ts), batch, d).

    Returns:
        step index -> the cotangent added to the adjoint state when the backward pass reaches that step.
    """
    out: dict[int, torch.Tensor] = {}
    for j, (k, w) in enumerate(traj.weights):
        for idx, weight in ((k, 1.0 - w), (k + 1, w)):
            if weight != 0.0:
                term = grad_ys[j] if weight == 1.0 else weight * grad_ys[j]
                out[idx] = out[idx] + term if idx in out else term
    return out
