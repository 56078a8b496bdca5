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

from .._errors import SolverError, Status
from .._problem import Problem
from .._solution import Stats
from ._backward import backward_plan, first_order_only, no_second_derivative, resolve_params


class _GivenSolution(torch.autograd.Function):
    """States at fixed times of a solve from ``y_start``, computed beforehand, with an adjoint's backward.

    ``run`` is a Backsolve or Interpolating run that has adopted the states; ``ys`` holds them
    (the first is the start state itself); the outputs are ``ys[1:]``.
    """

    @staticmethod
    def forward(ctx, run, field, ys: torch.Tensor, y_start: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.run = run
        ctx.field = field
        ctx.save_for_backward(ys, y_start, *params)
        return ys[1:].clone()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        ys, y_start, *params = ctx.saved_tensors
        grad_ys = torch.cat([torch.zeros_like(ys[:1]), grad_out])
        with torch.no_grad():
            try:
                _, grad_y0, grad_params = ctx.run.backward(ys, grad_ys, need_t=False)
            except SolverError as err:
                if not isinstance(ctx.field, SwitchedOff):
                    raise
                explained = ctx.field.explain(err)
                if explained is err:
                    raise
                raise explained from err
        # under create_graph=True these would look constant to autograd: a second derivative raises
        grads = first_order_only(
            no_second_derivative(ctx.run.method_name), [grad_y0, *grad_params], [grad_out, y_start, *params]
        )
        return (None, None, None, *grads)


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
        out = _GivenSolution.apply(run, (problem or self.problem).func, ys, y_start, *self.params)
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
    stop_user = torch.as_tensor(-t_stop if problem.reverse else t_stop, dtype=torch.float64, device=problem.y0.device)
    switched = SwitchedOff(problem.func, stop_user, batch_shape, problem.reverse)
    sgn = -1.0 if problem.reverse else 1.0
    t = torch.tensor([problem.ts[0] * sgn, s_end * sgn], dtype=problem.t.dtype)
    return dataclasses.replace(problem, func=switched, ts=[problem.ts[0], s_end], t=t, jump_t=stops)


#: the cause of a backward solve's non-finite state when the switched-off rows were non-finite
FROZEN_NONFINITE_CAUSE = (
    "The adjoint became NaN because the field returned non-finite values in the rows of samples whose "
    "per-sample event had already fired (e.g. sqrt(c - t) past c): those rows are frozen, so the solution "
    "is right, but the adjoint's vector-Jacobian products multiply those values by the frozen rows' zero, "
    "and 0 * inf is NaN. Keep the field finite past each sample's event, e.g. clamp the argument into its "
    "domain: sqrt((c - t).clamp(min=0)). The tolerances, the step size and the solver are not the cause."
)


class SwitchedOff:
    """The field with each sample's rows zero from that sample's stop time on (see :func:`frozen_after`).

    It also notes, on the device and without a host synchronisation per call, whether a call with a
    graph (the adjoint's vector-Jacobian products) saw non-finite values in switched-off rows: they
    make the adjoint NaN whatever the solver does, and :meth:`explain` then names them as the cause
    of the backward solve's failure.

    Args:
        func: the user's field ``func(t, y)``.
        stop_user: (n,) float64 stop times in the user's time.
        batch_shape: the leading dimensions of the state that index the samples.
        reverse: whether the solve runs towards earlier times.
    """

    def __init__(self, func, stop_user: torch.Tensor, batch_shape: torch.Size, reverse: bool):
        self.func = func
        self.stop_user = stop_user
        self.batch_shape = batch_shape
        self.reverse = reverse
        self.nonfinite_off: torch.Tensor | None = None

    def __call__(self, t, y):
        f = self.func(t, y)
        # compared in float64: the loops hand func the time one ulp off a jump time for one-sided limits
        tt = torch.as_tensor(t, dtype=torch.float64, device=self.stop_user.device)
        running = tt > self.stop_user if self.reverse else tt < self.stop_user
        mask = running.reshape(tuple(self.batch_shape) + (1,) * (f.dim() - len(self.batch_shape)))
        if f.requires_grad:
            with torch.no_grad():
                bad = (~mask & ~torch.isfinite(f)).any()
            self.nonfinite_off = bad if self.nonfinite_off is None else self.nonfinite_off | bad
        return torch.where(mask, f, torch.zeros((), dtype=f.dtype, device=f.device))

    def explain(self, err: SolverError) -> SolverError:
        """``err`` with the real cause where a non-finite backward state came from switched-off rows.

        Args:
            err: the backward solve's failure.

        Returns:
            A new SolverError (same status and time) naming the cause and its fix, or ``err`` itself.
        """
        seen = self.nonfinite_off
        if err.status is not Status.NONFINITE or seen is None or not bool(seen):
            return err
        return SolverError(err.status, err.t, err.detail, FROZEN_NONFINITE_CAUSE)
