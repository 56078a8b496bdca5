"""What a solve returns."""

from __future__ import annotations

import dataclasses
from typing import Union

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
        ts: the output times, shape (T,).
        ys: the states at ``ts``, shape (T, *y0.shape) (a tuple of such tensors for tuple states).
        stats: :class:`Stats`.
        status: :class:`~hybrid_node.Status`; SUCCESS unless the caller asked for ``throw=False``.
        t_final: the time reached (the event time for event solves).
        interpolant: dense output over the solved interval when requested, else None.
        event_fired: with per-sample events, a bool tensor of the batch shape: whether each
            sample's event fired (its ``t_final`` is NaN where it did not); else None.
        events: with ``solve(event=hn.Event(...))``, every recorded crossing in time order (records
            with ``t``, ``index`` and ``y``, the state before any jump); else None.
    """

    ts: torch.Tensor
    ys: State
    stats: Stats
    status: Status = Status.SUCCESS
    t_final: torch.Tensor | None = None
    interpolant: object | None = None
    event_fired: torch.Tensor | None = None
    events: list | None = None
