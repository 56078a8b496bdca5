"""A solve inside ``torch.autocast``: the field runs under the caller's autocast, the solver in full precision.

Autocast lowers the precision of matrix products (``matmul``, ``mm``, ``bmm``, ``linear``, convolutions) to
its dtype (bfloat16 on the CPU, float16 on CUDA). Inside a solver those products are the method's own
arithmetic: the Nordsieck history of ``adams`` and ``lsoda``, the LU of ``bdf``, the stage systems of the
fully implicit Runge-Kutta methods. Run under autocast, they lost their precision silently (``adams``
ended 1.46 away from the same solve without autocast on a field that autocast does not touch) or failed
deep in torch (``"lu_cpu" not implemented for 'BFloat16'``). Mixed precision is meant for the network's
layers, so the solve turns autocast off and turns it back on, as the caller had it, around each call of
the field, whose output it casts back to the state's dtype: the state stays the full-precision master
copy, as in mixed-precision training (Micikevicius et al., "Mixed precision training", ICLR 2018).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "autocast_dtype",
    "field_autocast",
    "field_owner",
    "full_precision",
    "full_precision_backward",
    "restore_dtype",
    "traced_field_autocast",
]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` computes in on ``device_type``, or None where autocast is off there.

    Args:
        device_type: a torch device type, such as "cpu" or "cuda".

    Returns:
        The autocast dtype while autocast is enabled for ``device_type``, else None.
    """
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device_type`` for one of the library's own products, or does
    nothing where autocast is off (no context entered per call then).

    For products between tensors the caller's functions returned in the state's dtype (an SDE's diffusion
    and its noise increment), which autocast would otherwise compute in its lower dtype.

    Args:
        device_type: the device type of the product's operands.

    Returns:
        ``torch.autocast(device_type, enabled=False)``, or a null context.
    """
    if autocast_dtype(device_type) is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


#: the device types whose autocast a backward pass turns off
_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps")


def full_precision_backward(backward: Callable) -> Callable:
    """``backward`` (an autograd Function's) run with autocast off on every device type where it is on.

    A backward pass runs under the autocast of the code that calls ``backward()``: called inside
    ``torch.autocast``, an adjoint's own solve ran its products in bfloat16 (``bdf`` and ``adams``
    gradients 2.47 off on a linear field). The field keeps the autocast it was solved with (its wrapper,
    :func:`field_autocast`, re-enters it), so only the solver's arithmetic changes.

    Args:
        backward: the Function's static ``backward(ctx, *grads)``.

    Returns:
        The wrapped backward.
    """

    @functools.wraps(backward)
    def run(*args: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for device_type in _DEVICE_TYPES:
                if autocast_dtype(device_type) is not None:
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            return backward(*args)

    return run


def restore_dtype(out: Any, y: Any, low: torch.dtype) -> Any:
    """The field's output ``out`` with each part that autocast left in ``low`` cast back to its state's dtype.

    Args:
        out: what the field returned under autocast (a tensor, or a tuple or list of them for a tuple state).
        y: the state the field was given.
        low: the autocast dtype.

    Returns:
        ``out`` with the parts of dtype ``low`` in their state part's dtype (differentiably); anything else
        (another dtype, a non-tensor) as it was, for the solver's own checks to refuse.
    """
    if isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor):
        return out.to(y.dtype) if out.dtype == low and y.dtype != low and y.is_floating_point() else out
    if isinstance(out, (tuple, list)) and isinstance(y, (tuple, list)) and len(out) == len(y):
        return type(out)(restore_dtype(o, yy, low) for o, yy in zip(out, y))
    return out


def _under_autocast(func: Callable, device_type: str, dtype: torch.dtype, t: torch.Tensor, y: Any) -> Any:
    """``func(t, y)`` under ``torch.autocast(device_type, dtype)``, its output in the state's dtype
    (:func:`restore_dtype`): the body of both field wrappers below."""
    with torch.autocast(device_type, dtype=dtype):
        out = func(t, y)
    return restore_dtype(out, y, dtype)


class _AutocastCall:
    """Calls ``func`` under ``torch.autocast(device_type, dtype)``; other attributes are ``func``'s (its step
    callbacks, ``__self__``), so the loops find them as on ``func`` itself."""

    def __init__(self, func: Callable, device_type: str, dtype: torch.dtype):
        self.func = func
        self.device_type = device_type
        self.dtype = dtype

    def __call__(self, t: torch.Tensor, y: Any) -> Any:
        return _under_autocast(self.func, self.device_type, self.dtype, t, y)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["func"], name)


class _AutocastModule(torch.nn.Module):
    """:class:`_AutocastCall` for an ``nn.Module`` field: a module itself, whose parameters are the field's
    (in order), so the adjoint finds them as it finds a module field's."""

    def __init__(self, func: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.func = func
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, t: torch.Tensor, y: Any) -> Any:
        return _under_autocast(self.func, self.device_type, self.dtype, t, y)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["func"], name)


@contextlib.contextmanager
def field_autocast(func: Callable, y0: Any) -> Iterator[Callable]:
    """Run the body with autocast off on the state's device, handing it the field to solve with.

    Args:
        func: the user's field ``func(t, y)``.
        y0: the initial state (a tensor, or a tuple or list of tensors).

    Yields:
        ``func`` itself where autocast is off on the state's device; else ``func`` wrapped to run under the
        caller's autocast (same dtype), its output cast back to the state's dtype, while the body, the
        solver's own arithmetic, runs with autocast off.
    """
    first = y0[0] if isinstance(y0, (tuple, list)) and y0 else y0
    device_type = first.device.type if isinstance(first, torch.Tensor) else "cpu"
    dtype = autocast_dtype(device_type)
    if dtype is None:
        yield func
        return
    wrapped: Callable
    if isinstance(func, torch.nn.Module):
        # one wrapper per module, autocast setting and thread, kept across solves: compile=True caches its
        # graphs per field object, and a wrapper made anew for every solve compiled them anew (4.4 s a solve)
        from .nn._kept import kept_field  # here: hybrid_node.nn imports the solve API, which imports this

        make = functools.partial(_AutocastModule, func, device_type, dtype)
        wrapped = kept_field(func, ("autocast", device_type, dtype), make)
    else:
        wrapped = _AutocastCall(func, device_type, dtype)
    with torch.autocast(device_type, enabled=False):
        yield wrapped


def field_owner(func: Callable) -> Callable:
    """The user's field beneath an autocast wrapper (``func`` itself where it is not wrapped).

    A traced solve restores the number attributes (call counters) of its field's modules after every
    evaluation (:func:`hybrid_node.loop.whole.solver_time`); it has to find them on the user's module,
    not on the wrapper, which has none.

    Args:
        func: a field, possibly wrapped by :func:`traced_field_autocast`.

    Returns:
        The field the wrapper calls, or ``func``.
    """
    return func.func if isinstance(func, _AutocastCall) else func


#: why a strict ``torch.export`` of a solve under autocast is refused (when it traces, not when it runs)
_STRICT_EXPORT_UNDER_AUTOCAST = (
    "torch.export.export(..., strict=True) of a solve under torch.autocast is not supported: torch 2.13's "
    "strict export records an autocast result's dtype as the unautocast one, so the program fails when it "
    "runs ('Tensor dtype mismatch') at the cast of the field's low-precision output back to the state's dtype. "
    "Export with strict=False (the default), which gives the eager outputs, or solve outside the autocast."
)


def traced_field_autocast(solve: Callable) -> Callable:
    """A traced solve function, ``solve(func, y0, *args)``, given the autocast handling of the host loop.

    A solve traced into the caller's program (``torch.export``, or the caller's ``torch.compile``) does
    not pass through :func:`field_autocast`: its loop was traced under the caller's autocast as it found
    it, so the solver's own products (the dense output's, the stage sums') ran in bfloat16 too, and the
    exported program under ``torch.autocast`` returned states 5e-4 away from the eager solve's under the
    same autocast (dopri5, a float32 tanh MLP; 1.6e-3 with rk4). Here, as in :func:`field_autocast`, the
    field runs under the caller's autocast, its output cast back to the state's dtype, and everything else
    with autocast off. No per-module wrapper is kept (the caller's program is the cache; keeping one would
    leave the trace for a lock and the thread's identity).

    Args:
        solve: the traced solve, taking the field first and the initial state (a tensor) second.

    Returns:
        ``solve`` with that handling; unchanged behaviour where autocast is off on the state's device.

    Raises:
        ValueError: (from the returned function) traced by a strict ``torch.export`` under autocast, whose
            program torch 2.13 builds wrong (``_STRICT_EXPORT_UNDER_AUTOCAST``).
    """

    @functools.wraps(solve)
    def run(func: Callable, y0: torch.Tensor, *args: Any) -> Any:
        device_type = y0.device.type
        dtype = autocast_dtype(device_type)
        if dtype is None:
            return solve(func, y0, *args)
        if torch.compiler.is_dynamo_compiling() and torch.compiler.is_exporting():
            raise ValueError(_STRICT_EXPORT_UNDER_AUTOCAST)
        with torch.autocast(device_type, enabled=False):
            return solve(_AutocastCall(func, device_type, dtype), y0, *args)

    return run
