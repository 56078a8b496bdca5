"""Adjoint gradients of solves with events: the adjoint between events, exact maps across them.

The event loops run once, forwards and without a graph. The gradient is then assembled from pieces
whose backward passes are known:

* between two consecutive events (or the start, an event and the end) the state is a smooth
  solution of the ODE from the segment's start state; its gradient at fixed times comes from an
  adjoint solve over that segment (:class:`~hybrid_node.sensitivity.backsolve.Backsolve` or
  :class:`~hybrid_node.sensitivity.interpolating.Interpolating`), which takes the forward states the
  event loop found instead of solving again (:class:`_GivenSolution`);
* across an event, the maps that :mod:`hybrid_node.sensitivity.jumps` builds for direct
  backpropagation: the event time by the implicit function theorem, the state at the event moving
  with it, the jump ``on_event`` by autograd, and the restart's dependence on the event time.

Autograd chains them, so the cotangent that arrives at the end of a segment is carried backwards
across each event by the transposes of those maps: they are the adjoint's jump conditions at an
event (the saltation matrix of a hybrid system, here never written out by hand). Per-sample
terminal events use one adjoint solve of the batch with the field of each sample switched off after
its own event time (as the forward loop freezes it), the backward solve restarting at those times.

References: Chen, Amos, Nickel, "Learning Neural Event Functions for Ordinary Differential
Equations", ICLR 2021 (Section 3: gradients through event times and state jumps with the adjoint);
Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations", NeurIPS 2018
(Algorithm 1, the adjoint between output times).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from .._problem import Problem
from .._solution import Stats
from ._backward import backward_plan, first_order_only, no_second_derivative, resolve_params


class _GivenSolution(torch.autograd.Function):
    """States at fixed times of a solve from ``y_start``, computed beforehand, with an adjoint's backward.

    ``run`` is a Backsolve or Interpolating run that has adopted the states; ``ys`` holds them
    (the first is the start state itself); the outputs are ``ys[1:]``.
    """

    @staticmethod
    def forward(ctx, run, ys: torch.Tensor, y_start: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.run = run
        ctx.save_for_backward(ys, y_start, *params)
        return ys[1:].clone()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        ys, y_start, *params = ctx.saved_tensors
        grad_ys = torch.cat([torch.zeros_like(ys[:1]), grad_out])
        with torch.no_grad():
            _, grad_y0, grad_params = ctx.run.backward(ys, grad_ys, need_t=False)
        # under create_graph=True these would look constant to autograd: a second derivative raises
        grads = first_order_only(
            no_second_derivative(ctx.run.method_name), [grad_y0, *grad_params], [grad_out, y_start, *params]
        )
        return (None, None, *grads)


class SegmentAdjoint:
    """Builds the differentiable states of event-free stretches of a solve with an adjoint method.

    Args:
        problem: the forward problem (field, solver, tolerances).
        sensitivity: ``hn.BacksolveAdjoint(...)`` or ``hn.InterpolatingAdjoint(...)``.
        adjoint_params: the tensors the adjoint differentiates (None: ``func.parameters()``).
        stats: the solve's counters; each backward pass adds its work to them.

    Raises:
        ValueError, TypeError: as :func:`~hybrid_node.sensitivity._backward.resolve_params`.
    """

    def __init__(self, problem: Problem, sensitivity, adjoint_params: Sequence[torch.Tensor] | None, stats: Stats):
        self.problem = problem
        self.sensitivity = sensitivity
        self.params = resolve_params(problem.func, adjoint_params)
        self.plan = backward_plan(problem, sensitivity)
        self.stats = stats

    def states(
        self, y_start: torch.Tensor, states: dict[float, torch.Tensor], problem: Problem | None = None
    ) -> dict[float, torch.Tensor]:
        """The states of one smooth stretch, differentiable with respect to ``y_start`` and the parameters.

        Args:
            y_start: the state at the stretch's first time, with its graph (its value is ``states``' first).
            states: the forward states (no graph) at increasing solver times, the start included.
            problem: the problem whose field the stretch follows (default: the solve's).

        Returns:
            The states at every time of ``states`` but the first, each carrying its gradient.
        """
        times = sorted(states)
        if len(times) < 2:
            return {}
        run = self.sensitivity.backward_pass(problem or self.problem, self.plan, self.params, None, True)
        run.adopt(states, self.stats)
        ys = torch.stack([states[s] for s in times])
        out = _GivenSolution.apply(run, ys, y_start, *self.params)
        return dict(zip(times[1:], out.unbind(0)))


def frozen_after(
    problem: Problem, t_stop: np.ndarray, batch_shape: torch.Size, stops: tuple[float, ...], s_end: float
) -> Problem:
    """The problem whose field is zero in each sample's rows from that sample's stop time on.

    This is the field the per-sample event loop integrates (it freezes a sample at its event), with
    the stop times fixed: its adjoint gives each sample's event state's gradient at its fixed event
    time, to which the implicit function theorem then adds the event time's motion.

    Args:
        problem: the forward problem.
        t_stop: (n,) each sample's stop time (solver time).
        batch_shape: the leading dimensions of the state that index the samples.
        stops: the stop times strictly inside the solve (solver time): the field jumps there, so
            the backward solve's steps end there (``jump_t``).
        s_end: the last stop time, the end of the solve.

    Returns:
        A copy of ``problem`` with the switched field, output times ``[t0, s_end]`` and ``jump_t`` at ``stops``.
    """
    func, reverse = problem.func, problem.reverse
    stop_user = torch.as_tensor(-t_stop if reverse else t_stop, dtype=torch.float64, device=problem.y0.device)

    def switched(t, y):
        f = func(t, y)
        # compared in float64: the loops hand func the time one ulp off a jump time for one-sided limits
        tt = torch.as_tensor(t, dtype=torch.float64, device=stop_user.device)
        running = tt > stop_user if reverse else tt < stop_user
        mask = running.reshape(tuple(batch_shape) + (1,) * (f.dim() - len(batch_shape)))
        return torch.where(mask, f, torch.zeros((), dtype=f.dtype, device=f.device))

    sgn = -1.0 if reverse else 1.0
    t = torch.tensor([problem.ts[0] * sgn, s_end * sgn], dtype=problem.t.dtype)
    return dataclasses.replace(problem, func=switched, ts=[problem.ts[0], s_end], t=t, jump_t=stops)
