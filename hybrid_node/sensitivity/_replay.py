"""Shared pieces of the sensitivities that replay steps: a forward solve without a graph that records its
accepted steps, and the vector-Jacobian product of one recomputed step.

:class:`hybrid_node.ReversibleAdjoint` and ``DirectBackprop(checkpoints=k)`` both run their forward pass
without recording a graph and keep only the accepted step sizes (one float each), then in the backward
pass recompute single steps with autograd from states they rebuild (by the reversible method's inverse,
or from a checkpoint) and pull the cotangents back through them. Replaying the recorded steps, rather
than re-running the step-size controller, makes the recomputation take exactly the forward steps.

Steps end at every output time (and at ``step_t``), so each output is the state after a whole number
of steps and its cotangent is added there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._errors import SolverError, Status
from .._problem import Problem
from .._solution import Stats
from ..controllers import ConstantStepSize, PIDController, error_ratio
from ..loop import core
from ..loop.core import FLOAT, RUNNING
from ..loop.diagnose import failure_cause
from ..loop.host import first_step, settle_failure
from ..loop.stiff_watch import StiffnessWatch
from ._backward import resolve_params


@dataclasses.dataclass
class Recorded:
    """A forward solve without a graph.

    Attributes:
        outputs: the states at ``problem.ts`` (output 0 is y0).
        y: the final state; state: the solver's state there (e.g. the reversible method's z).
        steps: the accepted steps as ``(t0, dt)`` host floats, in order.
        counts: for each output reached, the number of steps before it (output i is the state after them).
        stats: the forward counters.
        status: SUCCESS, or why a solve recorded with ``throw=False`` stopped (the outputs it did not
            reach are NaN and have no entry in ``counts``, so their cotangents are dropped, as direct
            backpropagation drops those of its NaN padding).
        t_reached: the solver time reached.
    """

    outputs: list[torch.Tensor]
    y: torch.Tensor
    state: Any
    steps: list[tuple[float, float]]
    counts: list[int]
    stats: Stats
    status: Status = Status.SUCCESS
    t_reached: float = math.nan


def _fixed_ends(problem: Problem, ctrl: ConstantStepSize, y0: torch.Tensor) -> list[float]:
    """Step end points: the controller's grid (as the direct solve builds it) plus every output time.

    A grid point within rounding of an output time is replaced by the output time itself (``t0 + i h``
    and an output at the same point can differ in the last bit), so no step is a rounding sliver. The
    rounding is that of the output times' dtype: float32 times (0.3 is 0.30000001192...) lie 1e-8 from
    the float64 grid point, and a sliver step there is no no-op for a reversible method (it moves y to
    λ y + (1 - λ) z): 21 steps where the direct solve took 20.
    """
    ts = problem.ts
    grid = ctrl.grid(problem.func, y0, torch.tensor(ts, dtype=torch.float64), problem.direction)
    span = max(abs(ts[-1] - ts[0]), 1e-300)
    close = max(1e-12, 4 * torch.finfo(problem.t.dtype).eps) * span
    ends = set(ts[1:]) | {s for s in problem.step_t if ts[0] < s < ts[-1]}
    out = [g for g in grid[1:] if all(abs(g - e) > close for e in ends)]
    return sorted(set(out) | set(ends))


def record_forward(
    problem: Problem, solver, term, y0: torch.Tensor, throw: bool = True, watch: StiffnessWatch | None = None
) -> Recorded:
    """Solve forwards without a graph, recording the accepted steps.

    Fixed steps (``ConstantStepSize``): the controller's grid plus the output times. Adaptive steps
    (``PIDController``): the host loop's step-size control (:mod:`hybrid_node.loop.core`), with steps
    landing on every output time and on ``problem.step_t``.

    Args:
        problem: the validated problem.
        solver: the solver (``problem.solver`` or a wrapper of it) with ``init``, ``step``, ``next_state``.
        term: the field the solver sees.
        y0: the flat initial state (detached).
        throw: raise on a failed adaptive solve; else record its status and the outputs reached.
        watch: counts the accepted adaptive steps for stiffness (the replayed steps are differentiated
            with their sizes frozen, as direct backpropagation's are) and warns at the end of a
            successful solve.

    Returns:
        The :class:`Recorded` solve.

    Raises:
        ValueError: adaptive steps with a solver that has no error estimate.
        SolverError: the adaptive solve failed (max steps, step-size underflow), with ``throw``.
    """
    ts = problem.ts
    ctrl = problem.controller
    stats = Stats()
    steps: list[tuple[float, float]] = []
    outputs = [y0]
    counts = [0]
    status = Status.SUCCESS
    with torch.no_grad():
        t, y = ts[0], y0
        state = solver.init(term, t, y)
        if isinstance(ctrl, ConstantStepSize):
            i_out = 1
            for t1 in _fixed_ends(problem, ctrl, y0):
                step = solver.step(term, t, y, state, t1 - t)
                steps.append((t, t1 - t))
                state = solver.next_state(term, t1, step)
                t, y = t1, step.y1
                if i_out < len(ts) and t1 == ts[i_out]:
                    outputs.append(y)
                    counts.append(len(steps))
                    i_out += 1
        else:
            if solver.error_order is None:
                raise ValueError(f"{solver!r} has no error estimate; use ConstantStepSize(step_size=...).")
            c = core.StepControl.of(ctrl, solver.error_order, y0.dtype)
            dt = first_step(term, solver, ctrl, t, y, state, problem.rtol, problem.atol, problem.norm)
            r1, r2 = ctrl.init()
            n_attempts = 0
            inner = sorted(s for s in problem.step_t if ts[0] < s < ts[-1])
            try:
                for t_out in ts[1:]:
                    stops = [s for s in inner if t < s < t_out] + [t_out]
                    for stop in stops:
                        while t < stop:
                            if core.precheck(FLOAT, c, n_attempts, t, dt) != RUNNING:
                                raise SolverError(Status.MAX_STEPS, -t if problem.reverse else t, "replayed solve")
                            n_attempts += 1
                            _, step_dt, t1 = core.landing(FLOAT, t, dt, stop, c.max_step)
                            step = solver.step(term, t, y, state, step_dt)
                            if step.error is None:  # a base method without an estimate was caught above
                                raise ValueError(f"{solver!r} produced no error estimate for adaptive steps.")
                            ratio = error_ratio(step.error, y, step.y1, problem.rtol, problem.atol, problem.norm)
                            accepted = core.accepts(FLOAT, c, ratio, step_dt)
                            if accepted:
                                if watch is not None:
                                    watch.observe(step, t, y, t1)
                                steps.append((t, step_dt))
                                state = solver.next_state(term, t1, step)
                                t, y = t1, step.y1
                                stats.n_accepted += 1
                            else:
                                stats.n_rejected += 1
                            dt, r1, r2 = core.propose(FLOAT, c, step_dt, ratio, accepted, r1, r2)
                            nonfinite = not math.isfinite(ratio) and not accepted
                            dt, code = core.settle(FLOAT, c, False, t, dt, step_dt, nonfinite, ts[0])
                            if code != RUNNING:
                                code, detail = settle_failure(code, step, solver, c, step_dt, dt)
                                status = core.STATUS[code]
                                cause = failure_cause(status, term, t, y, y0) if throw else ""
                                raise SolverError(status, -t if problem.reverse else t, detail, cause)
                    outputs.append(y)
                    counts.append(len(steps))
            except SolverError as err:
                if throw:
                    raise
                status = err.status
            if watch is not None:
                watch.warn(problem.reverse)
    stats.n_accepted = len(steps)
    stats.nfe = term.nfe
    # the outputs not reached are NaN, so they can never pass for results (as the other loops pad them)
    outputs += [torch.full_like(y0, math.nan) for _ in range(len(ts) - len(outputs))]
    return Recorded(outputs, y, state, steps, counts, stats, status, t)


def check_replayable(problem: Problem, event_fn: Callable | None, who: str) -> None:
    """Reject what a step-replaying sensitivity cannot do.

    Raises:
        ValueError: an event function, gradients for ``t``, a controller other than
            ``ConstantStepSize`` / ``PIDController`` (or a per-sample one), or jump times.
    """
    # t that requires grad is fine where no graph is recorded (torch.no_grad(), as direct backprop takes it)
    if event_fn is not None or (problem.t.requires_grad and torch.is_grad_enabled()):
        raise ValueError(f"{who} supports neither events nor gradients for t; use DirectBackprop().")
    ctrl = problem.controller
    if not isinstance(ctrl, (ConstantStepSize, PIDController)) or getattr(ctrl, "per_sample", False):
        raise ValueError(f"{who} needs a ConstantStepSize or a (shared-step) PIDController.")
    if isinstance(ctrl, ConstantStepSize) and ctrl.perturb:
        raise ValueError(f"{who} does not take ConstantStepSize(perturb=True).")
    if len(problem.jump_t):
        raise ValueError(f"{who} does not take jump_t; use DirectBackprop() or an adjoint.")


def differentiable_params(problem: Problem, adjoint_params: Sequence[torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
    """The tensors to differentiate: ``adjoint_params``, else the field's parameters, those that require
    grad, each once.

    Checked as the adjoints check them (:func:`~hybrid_node.sensitivity._backward.resolve_params`):
    iterating a single tensor would differentiate its rows (views, so the tensor got zero), and a
    tensor listed twice would get its gradient twice. A plain function needs ``adjoint_params`` as
    with the adjoints: the replayed steps differentiate the listed tensors only, so a tensor it closes
    over got no gradient at all (direct backpropagation gives it one).

    Raises:
        ValueError: ``func`` is not an ``nn.Module`` and no ``adjoint_params`` were given.
        TypeError: ``adjoint_params`` is a single tensor or holds something that is not a tensor.
    """
    if adjoint_params is None and not isinstance(problem.func, torch.nn.Module):
        raise ValueError(
            "func is not an nn.Module, so DirectBackprop(checkpoints=k) cannot find the tensors it uses: pass "
            "adjoint_params=(...) with the tensors to differentiate (an empty tuple if none), or use "
            "DirectBackprop() without checkpoints, which differentiates every tensor the field uses."
        )
    return resolve_params(problem.func, adjoint_params)


def outputs_after(counts: Sequence[int]) -> dict[int, list[int]]:
    """Number of steps -> the outputs that are the state after that many steps."""
    after: dict[int, list[int]] = {}
    for i, k in enumerate(counts):
        after.setdefault(k, []).append(i)
    return after


def backprop_step(
    step_fn: Callable[..., tuple[torch.Tensor, ...]],
    inputs: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    grad_params: list[torch.Tensor],
) -> list[torch.Tensor]:
    """Recompute one step with autograd from its (rebuilt) inputs and pull the cotangents of its outputs back.

    Args:
        step_fn: ``step_fn(*inputs) -> outputs``, the step (one output per cotangent).
        inputs: the step's start, without a graph.
        cotangents: dL/d(outputs).
        params: the parameters the step depends on.
        grad_params: accumulated dL/dparams, updated in place.

    Returns:
        dL/d(inputs) through this step (zeros where an input does not enter).
    """
    with torch.enable_grad():
        xs = [x.detach().requires_grad_(True) for x in inputs]
        outs = step_fn(*xs)
        grads = torch.autograd.grad(outs, (*xs, *params), tuple(cotangents), allow_unused=True)
    for i, g in enumerate(grads[len(xs) :]):
        if g is not None:
            grad_params[i] += g
    return [g if g is not None else torch.zeros_like(x) for g, x in zip(grads[: len(xs)], xs)]
