"""Host values as inputs of the compiled graphs.

A Python float read by a traced function is a constant of its graph, guarded on: every new value
compiles the graph again. What changes between solves (tolerances, times) enters as a tensor.
"""

from __future__ import annotations

import torch

from .._memo import memoized

#: how many cached tolerance tensors are kept
_TOLERANCES_MAX = 32


def tolerance_tensor(tol, like: torch.Tensor, slot: int = 0) -> torch.Tensor:
    """A tolerance as a tensor in the dtype of the state's error test and on its device (a float
    would be a graph constant, so every new value would compile a new graph); a scalar one as shape
    (1,), which broadcasts as the scalar does, because a 0-d float64 input restarts Dynamo's analysis
    (see :func:`~hybrid_node.loop.whole.pack`).

    The dtype is the state's, float32 for a half-precision state: the error test runs in float32
    there (:func:`~hybrid_node.controllers.error_precision`), and float16 rounds ``atol = 1e-9`` to 0.

    ``slot`` numbers the graph's tolerance inputs (rtol 0, atol 1, ...): a float is cached per slot,
    so equal rtol and atol are two tensors, not one tensor passed twice, which the compiler guards
    as aliased inputs and compiles again for when the two values later differ."""
    dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    if isinstance(tol, float):  # the usual case: one cached (1,) tensor per slot, value, dtype, device
        key = (slot, tol, dtype, like.device)
        return memoized(
            _TOLERANCES, key, lambda: torch.full((1,), tol, dtype=dtype, device=like.device), _TOLERANCES_MAX
        )
    tol = torch.as_tensor(tol, dtype=dtype, device=like.device)
    return tol.reshape(1) if tol.dim() == 0 else tol


#: (slot, tolerance, dtype, device) -> the (1,) tensor :func:`tolerance_tensor` gives a float tolerance
_TOLERANCES: dict = {}
