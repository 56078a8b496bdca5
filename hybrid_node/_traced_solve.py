"""Solves met by the caller's trace (``torch.compile``, ``torch.export``): which run as one traced
loop in the caller's graph, and which run untraced behind a graph break."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._term import CALLBACK_NAMES
from ._tracing import traced
from .controllers import ConstantStepSize, PIDController
from .loop.traced_fixed import traceable_fixed


def untraced(fn: Callable) -> Callable:
    """``fn``, run by the interpreter when a user's ``torch.compile`` reaches it (a graph break).

    ``torch.compiler.disable(fn)`` imports the compiler at once (~0.7 s, which every first use of
    the library paid); torch's lazy form of it imports the compiler at the first call. Either is
    used where the other is missing (another torch version).
    """
    lazy = getattr(torch, "_disable_dynamo", None)
    return lazy(fn, recursive=True) if lazy is not None else torch.compiler.disable(fn, recursive=True)


def in_users_graph(func, y0) -> bool:
    """Whether this solve is being traced into the caller's own graph, where it runs as
    :func:`hybrid_node.loop.whole.odeint_graph`: always under ``torch.export``; under ``torch.compile``
    (e.g. of a model holding an ODE block) when no gradient can flow through it. A differentiated
    solve keeps the host loop, run untraced behind a graph break: autograd through the traced
    ``while_loop`` needs a workaround for a torch 2.13 bug (:mod:`hybrid_node.loop.while_grad`) and
    compiles 4x longer than per-step graphs; the host loop's gradients are the tested ones."""
    if not traced():
        return False
    if torch.compiler.is_exporting():
        return True
    if not torch.is_grad_enabled():
        return True
    if not isinstance(func, torch.nn.Module):  # its closure may hold tensors that require grad
        return False
    tensors = [*func.parameters(), *(y0 if isinstance(y0, (tuple, list)) else (y0,))]
    return not any(isinstance(x, torch.Tensor) and x.requires_grad for x in tensors)


def _untraceable(func, solver, controller, y0, throw, event_fn, event, per_sample_events, jump_t, step_t) -> str:
    """Why :func:`hybrid_node.loop.whole.odeint_graph` cannot stand for this solve in a traced program
    ("" when it can: it runs the same steps as the host loop and returns the same states)."""
    tolerances = (controller.rtol, controller.atol) if isinstance(controller, PIDController) else ()
    if type(controller) is ConstantStepSize:
        method = traceable_fixed(solver, controller)
    elif type(controller) is PIDController:
        method = "" if getattr(solver, "supports_whole_solve", False) else f"the method {solver.name!r}"
    else:
        method = f"the controller {type(controller).__name__}"
    reasons = {
        method: bool(method),
        "per-sample step control": getattr(controller, "per_sample", False),
        "tolerances that are tensors": any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in tolerances),
        "a tuple state": not isinstance(y0, torch.Tensor),
        "throw=False": not throw,
        "events": event_fn is not None or event is not None or per_sample_events,
        "jump_t/step_t": bool(jump_t) or bool(step_t),
        # host Python between step attempts, which the traced loop has not (it skipped them silently)
        "step callbacks": any(hasattr(func, name) for name in CALLBACK_NAMES),
    }
    return ", ".join(reason for reason, applies in reasons.items() if applies)
