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

from typing import Any

import torch
from torch._C import _functorch
from torch.autograd import forward_ad


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


def derivative_mode(x: torch.Tensor) -> str | None:
    """How the ``torch.func`` transforms around the caller differentiate ``x``.

    Every tensor made inside a transform is wrapped at each of its levels, so a wrapper alone does not
    say that ``x`` is an input being differentiated (times built by ``torch.linspace`` inside ``jacrev``
    are wrapped too). A reverse-mode level's wrapper requires grad when it is; a forward-mode level's
    tangent is visible only while that level is the current one.

    Returns:
        "reverse" where a reverse-mode level (grad, jacrev, vjp) differentiates ``x``; "unknown" where a
        forward-mode level below the current one wraps ``x`` (``jacfwd`` of a function that calls
        ``jacrev``), whose tangent cannot be read from here; "forward" where only the current
        forward-mode level (jvp, jacfwd) does, with a tangent :func:`forward_ad.unpack_dual` reads;
        None where no level differentiates ``x``.
    """
    kinds = {i.level(): i.key() for i in _functorch.get_interpreter_stack() or ()}
    current = _functorch.maybe_current_level()
    found = None
    while _functorch.is_functorch_wrapped_tensor(x):
        if not _functorch.is_batchedtensor(x):
            level = _functorch.maybe_get_level(x)
            kind = kinds.get(level)
            if kind == _functorch.TransformType.Grad and x.requires_grad:
                return "reverse"
            if kind == _functorch.TransformType.Jvp:
                if level != current:
                    return "unknown"
                if forward_ad.unpack_dual(x).tangent is not None:
                    found = "forward"  # a level below may still differentiate x in reverse mode
        x = _functorch.get_unwrapped(x)
    return found


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


def forward_mode_active() -> bool:
    """Whether a ``torch.autograd.forward_ad.dual_level`` is open, so that inputs may carry tangents."""
    return forward_ad._current_level >= 0


def _has_tangent(x: Any) -> bool:
    """Whether ``x`` (a tensor, or a tuple/list of them) is a dual tensor with a tangent at the open level."""
    if isinstance(x, (tuple, list)):
        return any(_has_tangent(item) for item in x)
    return isinstance(x, torch.Tensor) and forward_ad.unpack_dual(x).tangent is not None


def check_forward_mode(func: Any, y0: Any, t: Any, params: Any, unsupported: str | None) -> None:
    """Refuse, with the fix, forward-mode AD (``torch.autograd.forward_ad``) that a solve would drop.

    The loops read the output times on the host, so a tangent on ``t`` vanished unless direct
    backpropagation adds it around the loop (``dy(t_i)/dt_i = f(t_i, y_i)``); the adjoints' autograd
    Functions run their forward solve with forward mode off, so a tangent on ``y0`` failed inside
    torch and one on a parameter (or a tensor ``func`` closes over) was dropped. Direct
    backpropagation carries tangents through every step (with the step sizes held constant, as
    reverse mode differentiates them).

    Args:
        func, y0, t: the solve's field, initial state and output times.
        params: the ``adjoint_params`` given (None: ``func.parameters()`` where it is a Module).
        unsupported: what cannot carry a tangent (an adjoint, scipy, the Julia backend), or None.

    Raises:
        ValueError: ``unsupported`` is set and a tangent reaches the solve through ``t``, ``y0``, the
            parameters or ``func``'s value at ``(t[0], y0)``.
    """
    if unsupported is None:
        return  # direct backpropagation carries a tangent of t too (sensitivity/direct.py)
    if _has_tangent(t):
        raise ValueError(
            f"t is a forward-mode dual tensor (torch.autograd.forward_ad), whose tangent {unsupported} cannot "
            "carry. Use hn.odeint with a torch method and sensitivity=hn.DirectBackprop() (without checkpoints "
            "and events), differentiate with respect to t in reverse mode (torch.autograd.grad), or use "
            "dy(t_i)/dt_i = func(t_i, y(t_i)); else pass t without a tangent."
        )
    if params is None:
        params = list(func.parameters()) if isinstance(func, torch.nn.Module) else []
    reached = _has_tangent(y0) or _has_tangent(list(params))
    if not reached and isinstance(t, torch.Tensor) and t.numel() > 0:
        try:  # a tangent on a tensor func closes over shows in its value
            reached = _has_tangent(func(t[0], y0))
        except Exception:  # noqa: BLE001 - the solve itself reports a failing func, with its own message
            reached = False
    if reached:
        raise ValueError(
            f"forward-mode AD (torch.autograd.forward_ad dual tensors) cannot pass through {unsupported}: the "
            "tangent would be dropped or fail inside torch. Use hn.odeint (sensitivity=hn.DirectBackprop()) with a "
            "torch method, which carries tangents through its steps, or reverse mode (torch.autograd.grad) here."
        )
