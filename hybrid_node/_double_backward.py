"""A clear error for a second backward pass through compiled step attempts (``options={"compile": True}``).

torch.compile's autograd (aot_autograd) gives a first-order backward only: differentiating its gradient
again (``torch.autograd.grad(..., create_graph=True)`` and then a backward of that gradient) fails in
torch's engine with "torch.compile with aot_autograd does not currently support double backward", in
the second pass, where no code of this library runs and the message names neither the option nor a
remedy. The first pass can tell: a custom Function's backward runs with grad mode on exactly when the
pass records a graph (``create_graph=True``). So the states of a compiled solve pass through an identity
whose backward, in such a pass, looks for compiled nodes in the solve's graph and refuses at once with
the remedy; the gradient of a first-order pass (grad mode off) goes through unchanged.

Reference: Ansel et al., "PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode
Transformation and Graph Compilation", ASPLOS 2024 (AOTAutograd, Section 4).
"""

from __future__ import annotations

from typing import Any

import torch

#: the type name of the autograd nodes of torch.compile's graphs (aot_autograd's CompiledFunction)
COMPILED_NODE = "CompiledFunctionBackward"

DOUBLE_BACKWARD = (
    "options={'compile': True} gives first-order gradients only: torch.compile's backward "
    "(aot_autograd) cannot be differentiated again, so a gradient taken with create_graph=True "
    "(a Hessian, a gradient penalty, torch.autograd.functional.hessian) cannot be. Drop compile=True "
    "for higher-order derivatives (direct backprop through eager steps gives them; torch.func.hessian "
    "and forward mode run eager steps anyway), or take a first-order gradient without create_graph=True."
)


def reaches_compiled(roots: list[Any]) -> bool:
    """Whether the autograd graph below ``roots`` holds a node of a torch.compile graph.

    Args:
        roots: autograd nodes (``grad_fn`` values; None entries are skipped).

    Returns:
        True at the first compiled node found (depth-first, each node visited once).
    """
    seen: set[int] = set()
    stack = [node for node in roots if node is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ == COMPILED_NODE:
            return True
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return False


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on a solve's states whose backward refuses to record a graph through compiled steps."""

    @staticmethod
    def forward(ctx, *ys: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the nodes that made the states, walked only in a pass that records a graph
        ctx.sources = [y.grad_fn for y in ys]
        return tuple(y.clone() for y in ys)  # a clone: a view of an input could not be changed in place

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if torch.is_grad_enabled() and reaches_compiled(ctx.sources):
            raise RuntimeError(DOUBLE_BACKWARD)
        return grads

    @staticmethod
    def jvp(ctx, *tangents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tangents


def first_order_only(ys: Any) -> Any:
    """``ys`` (a tensor or a tuple of them) behind :class:`_FirstOrderOnly` where any of them has a graph.

    Args:
        ys: the states of a solve whose step attempts ran compiled.

    Returns:
        ``ys`` as it was where none needs a gradient or grad mode is off, else the same values whose
        backward raises ``RuntimeError`` (:data:`DOUBLE_BACKWARD`) in a pass with ``create_graph=True``
        that reaches a compiled graph.
    """
    parts = ys if isinstance(ys, tuple) else (ys,)
    if not torch.is_grad_enabled() or not any(isinstance(y, torch.Tensor) and y.requires_grad for y in parts):
        return ys
    out = _FirstOrderOnly.apply(*parts)
    return tuple(out) if isinstance(ys, tuple) else out[0]
