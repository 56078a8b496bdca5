"""Solves inside ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``, ``jacfwd``, ``vjp``).

Inside a transform every tensor is a wrapper of the transform's level, and reading a value on the host
(``bool(x)``, ``.item()``, ``.tolist()``) raises under ``vmap``: a batched tensor holds one value per
batch member, and the code being transformed sees only one of them. A solver reads values on the host
for two kinds of decision: input validation (is ``y0`` finite?) and loop control (has every problem
reached the end?). Both are questions about *all* members of the batch, so they are answered on the
plain tensor beneath the wrappers (:func:`plain`), which the transform never sees; every other
decision (accept or reject a step, the next step size, where to write an output) stays a tensor
operation and is made per member by the transform itself.
"""

from __future__ import annotations

import torch
from torch._C import _functorch


def inside_transform() -> bool:
    """Whether the caller runs inside a ``torch.func`` transform (vmap, grad, jacrev, jacfwd, vjp, jvp)."""
    return _functorch.maybe_current_level() is not None


def is_batched(x: torch.Tensor) -> bool:
    """Whether ``x`` carries a ``vmap`` batch dimension at some level (it is then one of many values)."""
    while _functorch.is_functorch_wrapped_tensor(x):
        if _functorch.is_batchedtensor(x):
            return True
        x = _functorch.get_unwrapped(x)
    return False


def plain(x: torch.Tensor) -> torch.Tensor:
    """The plain tensor beneath every ``torch.func`` wrapper of ``x`` (``x`` itself outside a transform).

    A batched wrapper's plain tensor holds all members of the batch (the batch dimensions included),
    so a reduction of it answers a question about the whole batch. Use it only for host decisions
    that must hold for every member; arithmetic on it escapes the transform.
    """
    while _functorch.is_functorch_wrapped_tensor(x):
        x = _functorch.get_unwrapped(x)
    return x


def members(x: torch.Tensor) -> torch.Tensor:
    """The plain tensor beneath ``x`` with the ``vmap`` batch dimensions first, outermost ``vmap`` first.

    :func:`plain` leaves each level's batch dimension where that level keeps it (``in_dims=1``, or a
    batching rule's choice), so an index into it need not be the member's index in the batch. Here
    the batch dimensions are moved to the front in the order the ``vmap`` calls nest (a 0-d value of
    every member becomes a tensor of shape (outer batch, ..., inner batch)); the rest follow in
    order. Use it, like :func:`plain`, only for host reads about the members.
    """
    batch: list[int] = []  # the batch dimensions found so far, innermost first, in the current tensor's dims
    while _functorch.is_functorch_wrapped_tensor(x):
        if _functorch.is_batchedtensor(x):
            bdim = _functorch.maybe_get_bdim(x)
            x = _functorch.get_unwrapped(x)
            # the wrapper's dims are the unwrapped tensor's without bdim: those at or after it shift by one
            batch = [d + (d >= bdim) for d in batch] + [bdim]
        else:  # a gradient level's wrapper: the same dims
            x = _functorch.get_unwrapped(x)
    order = batch[::-1]
    return x.permute(order + [d for d in range(x.dim()) if d not in order])
