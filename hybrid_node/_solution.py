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
