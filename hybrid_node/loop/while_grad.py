"""Carried values of a ``while_loop`` that torch 2.13's autograd rule needs marked as differentiable.

torch 2.13 differentiates ``torch._higher_order_ops.while_loop`` by running the body's
vector-Jacobian product backwards over the stacked inputs of every iteration
(``WhileLoopAutogradOp.backward``). It marks those stacked inputs as requiring grad only where the
loop's *initial* value did (``fw_carry.requires_grad_(carry.requires_grad)``), and the body's
backward replaces the gradient of an input that does not require grad by zeros. A carried value
that starts as a constant and comes to depend on a differentiated tensor inside the loop (the
output buffer, which starts as NaN and is written with interpolated states; the state itself when
only the field's parameters require grad) therefore passes no gradient from one iteration to the
one before: only what the last iteration wrote reaches the inputs. The smallest case::

    w = torch.tensor(1.0, requires_grad=True)
    i, x = while_loop(lambda i, x: i < 3, lambda i, x: (i + 1, x + w), (torch.tensor(0), torch.zeros(())))
    torch.autograd.grad(x, w)  # 1.0 in torch 2.13; x = 3 w, so 3.0

The same loop started from ``torch.zeros((), requires_grad=True)`` gives 3.0. Here every floating
carry that can come to depend on the differentiated tensors starts attached to one of them, with
its value unchanged (docs/compiled/fixes.md, "Gradients through while_loop").

Reference: Griewank and Walther, "Evaluating Derivatives", 2nd ed., SIAM 2008, Section 12.2
(reverse mode through loops: every value the loop carries is an intermediate whose adjoint is
propagated from one iteration to the one before).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def attached(x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``x``'s values, requiring grad through a zero-gradient dependence on ``anchor``.

    ``torch.where`` with a false condition returns ``x`` exactly (NaN and infinities included, which
    ``x + 0 * anchor`` would not) and sends a zero gradient to ``anchor``, so the result is part of the
    autograd graph without changing any value or gradient.

    Args:
        x: the value to mark.
        anchor: a tensor that requires grad (any shape; only its sum's autograd link is used).

    Returns:
        ``x`` itself where it requires grad already or ``anchor`` does not, else a tensor equal to
        ``x`` that requires grad.
    """
    if x.requires_grad or not anchor.requires_grad:
        return x
    never = torch.zeros((), dtype=torch.bool, device=x.device)
    return torch.where(never, anchor.sum().to(x.dtype), x)


def differentiable_carries(carries: Sequence[torch.Tensor], which: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """``carries`` with the entries at ``which`` marked as requiring grad where any of them does.

    Under grad mode, when one of the chosen carries requires grad, the others among them start
    attached to it (:func:`attached`), so torch 2.13's ``while_loop`` backward carries their
    gradients across iterations (see the module docstring). Nothing changes without grad mode, or
    when none of them requires grad (then nothing inside the loop can be differentiated through
    them either: the caller chooses as ``which`` every carry a differentiated tensor can reach).

    Args:
        carries: the loop's initial carried values.
        which: the indices of the floating carries that can come to depend on a tensor that requires
            grad (for a solve: the state, its derivative and the output buffer).

    Returns:
        The carried values to start the loop with (the same values).

    Raises:
        ValueError: an index in ``which`` names a carry that is not a floating-point or complex tensor.
    """
    for i in which:
        x = carries[i]
        if not (isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())):
            raise ValueError(f"carry {i} is not a floating-point tensor and cannot be differentiated through.")
    out = list(carries)
    if not torch.is_grad_enabled():
        return tuple(out)
    anchor = next((carries[i] for i in which if carries[i].requires_grad), None)
    if anchor is None:
        return tuple(out)
    for i in which:
        out[i] = attached(carries[i], anchor)
    return tuple(out)
