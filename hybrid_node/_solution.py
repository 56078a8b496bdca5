"""What a solve returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Union

import torch

from ._errors import Status

State = Union[torch.Tensor, tuple[torch.Tensor, ...]]


@dataclasses.dataclass
class Stats:
    """Work counters of one solve.

    Attributes:
        nfe: evaluations of the vector field during the forward solve.
        n_accepted: accepted steps.
        n_rejected: rejected steps.
        nfe_backward: evaluations during the backward (adjoint) pass; filled in when it has run.
        n_steps_backward: accepted steps of the backward pass.
        n_jacobian: Jacobian evaluations (implicit solvers).
        n_switches: switches between the non-stiff and the stiff method (``auto``, ``lsoda``).
    """

    nfe: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    nfe_backward: int = 0
    n_steps_backward: int = 0
    n_jacobian: int = 0
    n_switches: int = 0


@dataclasses.dataclass
class Solution:
    """Result of :func:`hybrid_node.solve`.

    Attributes:
        ts: the output times (the ``t`` given to the solve), shape (T,).
        ys: the states at ``ts``, shape (T, *y0.shape) (a tuple of such tensors for tuple states). With a
            terminal ``event_fn`` the last row is the state at the event time ``t_final``, not at
            ``ts[-1]``; with ``throw=False`` the rows of times not reached hold NaN.
        stats: :class:`Stats`.
        status: :class:`~hybrid_node.Status`: SUCCESS, EVENT where a terminal ``event_fn`` fired, or (only
            with ``throw=False``, which returns instead of raising) the reason the solve stopped, e.g.
            MAX_STEPS, STEP_UNDERFLOW, NONFINITE or NO_EVENT.
        t_final: the event time of a solve with a terminal ``event_fn`` (a 0-d tensor, or one per
            sample with per-sample events); None otherwise, also for a failed solve under ``throw=False``.
        interpolant: None: :func:`hybrid_node.solve` keeps no dense output (nothing requests one);
            :func:`hybrid_node.odeint_dense` returns the continuous solution y(t) over an interval.
        event_fired: with per-sample events, a bool tensor of the batch shape: whether each
            sample's event fired (its ``t_final`` is NaN where it did not); else None.
        events: with ``solve(event=hn.Event(...))``, every recorded crossing in time order (records
            with ``t``, ``index`` and ``y``, the state before any jump); else None.
        sample_status: with per-sample step control (``PIDController(per_sample=True)``), one
            :class:`~hybrid_node.Status` per sample (as torchode's per-sample status): SUCCESS for a
            sample that reached the final time, else why it stopped (under ``throw=False``); ``status``
            is then NONFINITE where a sample failed for a non-finite state, else the earliest failure.
            None for the other loops.
    """

    ts: torch.Tensor
    ys: State
    stats: Stats
    status: Status = Status.SUCCESS
    t_final: torch.Tensor | None = None
    interpolant: object | None = None
    event_fired: torch.Tensor | None = None
    events: list | None = None
    sample_status: tuple[Status, ...] | None = None

    def detach(self) -> Solution:
        """The solution with every tensor detached from the autograd graph (as ``Tensor.detach``).

        A solution that carries gradients holds the graph of the solve: ``copy.deepcopy`` refuses its
        tensors (torch deep-copies graph leaves only) and keeping it keeps the graph's memory alive.
        Detach it to store, copy or pickle the values alone.

        Returns:
            A new :class:`Solution` sharing the tensors' storage; stats and statuses copied.
        """
        return self._map(lambda x: x.detach())

    def to(self, *args: Any, **kwargs: Any) -> Solution:
        """The solution with its tensors moved or converted, with the arguments of ``nn.Module.to``.

        As for a module, a dtype converts the floating-point tensors (the complex ones to the complex
        dtype of that precision) and leaves the integer and bool ones (``event_fired``) as they are;
        a device moves every tensor, e.g. ``sol.to("cpu")`` before saving a solve made on a GPU.

        Args:
            args, kwargs: ``device``, ``dtype`` (floating point or complex), ``non_blocking``.

        Returns:
            A new :class:`Solution` (tensors already of that device and dtype are shared).

        Raises:
            TypeError: ``dtype`` is not a floating-point or complex dtype.
        """
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and not (dtype.is_floating_point or dtype.is_complex):
            raise TypeError(f"Solution.to takes a floating-point or complex dtype, got {dtype}.")
        return self._map(lambda x: x.to(device, _converted_dtype(x, dtype), non_blocking=non_blocking))

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Solution:
        """A copy with ``fn`` applied to every tensor, inside tuples, lists and event records too (the
        interpolant, which no solve sets, is kept as it is)."""
        kept = ("stats", "interpolant")
        changed = {
            f.name: _map_tensors(getattr(self, f.name), fn) for f in dataclasses.fields(self) if f.name not in kept
        }
        changed["stats"] = dataclasses.replace(self.stats)  # counters of its own, not shared with self's
        return dataclasses.replace(self, **changed)


#: the complex dtype of each real precision, for ``Solution.to(dtype)`` of complex states
_COMPLEX_OF = {torch.float16: torch.complex32, torch.float32: torch.complex64, torch.float64: torch.complex128}


def _converted_dtype(x: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype ``x`` takes under ``Solution.to(dtype)`` (None: keep its own)."""
    if dtype is None:
        return None
    if x.is_complex():
        # the complex dtype of that precision: cast to a real dtype, the imaginary parts would be lost
        return dtype if dtype.is_complex else _COMPLEX_OF.get(dtype)
    if x.is_floating_point():
        return None if dtype.is_complex else dtype  # a real state stays real
    return None


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to its tensors, through tuples, lists and dataclass records."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        items = [_map_tensors(v, fn) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # a NamedTuple too
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f.name for f in dataclasses.fields(value) if f.init]
        return dataclasses.replace(value, **{name: _map_tensors(getattr(value, name), fn) for name in fields})
    return value
