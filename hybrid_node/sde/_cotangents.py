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


def vjp(outputs, inputs, cotangents) -> list[torch.Tensor]:
    """The cotangents pulled back to ``inputs`` (zeros for an input no output depends on).

    ``torch.autograd.grad`` refuses an output that does not require gradients, and a drift such as
    ``torch.zeros_like(y)`` or a constant diffusion is one: such an output adds nothing and is left out.

    The graph is kept (``retain_graph=True``, as torchsde's adjoints): a field may read a tensor computed once
    from an input before the solve (torchcde's interpolation derivatives, from the ``adjoint_params`` entry
    ``ys_coeffs``), and every step's product runs back through that shared part; freed after the first
    step, it made the next one raise "Trying to backward through the graph a second time". A step's own
    part of the graph is released with its outputs all the same.

    Args:
        outputs: a tensor or a sequence of tensors; inputs: the tensors to differentiate with respect to;
        cotangents: one per output.

    Returns:
        One tensor per input, of its shape.
    """
    if isinstance(outputs, torch.Tensor):
        outputs, cotangents = (outputs,), (cotangents,)
    pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
    if not pairs:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(
        [o for o, _ in pairs], inputs, [c for _, c in pairs], allow_unused=True, retain_graph=True
    )
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
