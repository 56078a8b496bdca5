"""Direct backpropagation in bounded memory: binomial (revolve) checkpointing of the solver steps.

``DirectBackprop(checkpoints=k)`` runs the forward solve without a graph and keeps only the outputs and
the accepted step sizes (one float each). The backward pass walks the n steps from the last to the
first with at most k stored states (y0 is the first): from the latest stored state it advances,
without a graph, to the split point that Griewank's revolve chooses, stores the state there, reverses
the later part with one snapshot fewer, frees it and reverses the earlier part. Each step is finally
recomputed with autograd from its exact start and its vector-Jacobian product taken, so the result is
the gradient of the discrete forward solve (what plain direct backprop computes, to rounding) in
memory for k states plus one step's graph, at the cost of recomputing steps: with r the smallest
integer such that C(k + r, k) >= n, each step is advanced at most r times and the number of
recomputed steps is the minimal r n - C(k + r, r - 1) (Griewank & Walther 2000, Proposition 1), plus
the one graph-recording recomputation per step. k >= n stores every state (r = 1); k = 1 stores y0
only and recomputes O(n^2) steps.

Reference: Griewank & Walther, "Algorithm 799: revolve: an implementation of checkpointing for the
reverse or adjoint mode of computational differentiation", ACM TOMS 26(1), 2000 (the schedule; the
split rule of its ``revolve`` routine); diffrax's ``RecursiveCheckpointAdjoint`` (Kidger 2021) is the
JAX counterpart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._autocast import full_precision_backward
from .._problem import Problem
from .._solution import Solution
from ..controllers import PIDController
from ..loop import to_solution
from ..loop.host import Integration
from ..loop.stiff_watch import StiffnessWatch, watch_for
from ._backward import first_order_only, no_second_derivative
from ._replay import backprop_step, check_replayable, differentiable_params, outputs_after, record_forward


def binomial(snaps: int, reps: int) -> int:
    """beta(s, r) = C(s + r, s): the most steps that s snapshots reverse with each step advanced at most r times."""
    if snaps < 0 or reps < 0:
        return 0
    out = 1
    for i in range(1, min(snaps, reps) + 1):
        out = out * (snaps + reps + 1 - i) // i
    return out


def repetitions(steps: int, snaps: int) -> int:
    """The smallest r with beta(snaps, r) >= steps (the most times any step is advanced)."""
    reps, reach = 0, 1
    while reach < steps:
        reps += 1
        reach = reach * (reps + snaps) // reps
    return reps


def optimal_advances(steps: int, snaps: int) -> int:
    """The minimal number of step advances (without graph) to reverse ``steps`` steps with ``snaps`` snapshots.

    ``r steps - beta(snaps + 1, r - 1)`` with r = :func:`repetitions` (Griewank & Walther 2000), the
    final graph-recording recomputation of each step not counted.
    """
    if steps <= 1:
        return 0
    reps = repetitions(steps, snaps)
    return reps * steps - binomial(snaps + 1, reps - 1)


def advance_length(steps: int, snaps: int) -> int:
    """Revolve's split: how many steps to advance from the latest snapshot before storing the next one.

    Args:
        steps: the steps between the latest snapshot and the end of the range still to reverse (>= 2).
        snaps: the snapshots available, counting the one that holds the range's start (>= 2).

    Returns:
        The advance, in [1, steps - 1]; the later part is then reversed with ``snaps - 1`` snapshots.
    """
    reps = repetitions(steps, snaps)
    reach = binomial(snaps, reps)
    b1 = binomial(snaps, reps - 1)
    b2 = binomial(snaps - 1, reps - 1)
    b3 = binomial(snaps - 2, reps - 1)
    b4 = binomial(snaps, reps - 2)
    b5 = binomial(snaps - 3, reps)
    # the three cases of the revolve routine: the split keeps both parts within their binomial reach
    if steps <= b1 + b3:
        advance = b4
    elif steps >= reach - b5:
        advance = b1
    else:
        advance = steps - b2 - b3
    return min(max(advance, 1), steps - 1)


def reverse_steps(
    n: int,
    snaps: int,
    x0: Any,
    advance: Callable[[int, Any], Any],
    backprop: Callable[[int, Any], None],
) -> dict[str, int]:
    """Run the revolve schedule: call ``backprop(i, x_i)`` for i = n-1, ..., 0 with at most ``snaps`` stored states.

    Args:
        n: the number of steps.
        snaps: the states that may be held at once, x0 included (>= 1).
        x0: the state before step 0.
        advance: ``advance(i, x_i) -> x_{i+1}``, one step without a graph.
        backprop: ``backprop(i, x_i)``, the graph-recording recomputation of step i and its vector-Jacobian
            product (the caller carries the cotangent; calls come in decreasing i).

    Returns:
        ``{"advances": ..., "peak_snapshots": ...}``: the steps advanced and the most states held at once.
    """
    counters = {"advances": 0, "peak_snapshots": 1, "held": 1}

    def run(i: int, j: int, x_i: Any, s: int) -> None:
        # reverse steps i..j-1 given x_i, which occupies one of the s snapshots available here
        while j - i > 1:
            if s == 1:
                for m in range(j - 1, i - 1, -1):  # no room: advance from x_i to every step afresh
                    x = x_i
                    for k in range(i, m):
                        x = advance(k, x)
                    counters["advances"] += m - i
                    backprop(m, x)
                return
            m = i + advance_length(j - i, s)
            x = x_i
            for k in range(i, m):
                x = advance(k, x)
            counters["advances"] += m - i
            counters["held"] += 1
            counters["peak_snapshots"] = max(counters["peak_snapshots"], counters["held"])
            run(m, j, x, s - 1)
            del x
            counters["held"] -= 1
            j = m  # the earlier part, with the snapshot at m free again
        if j - i == 1:
            backprop(i, x_i)

    if n > 0:
        run(0, n, x0, snaps)
    return {"advances": counters["advances"], "peak_snapshots": counters["peak_snapshots"]}


class _CheckpointedSolve(torch.autograd.Function):
    """Forward: the solve without a graph, recording the steps. Backward: revolve over the steps."""

    @staticmethod
    def forward(
        ctx,
        problem: Problem,
        snaps: int,
        throw: bool,
        recorded: list,
        watch: StiffnessWatch | None,
        y0: torch.Tensor,
        *params: torch.Tensor,
    ):
        term = problem.term()
        rec = record_forward(problem, problem.solver, term, y0.detach(), throw, watch)
        recorded.append(Integration([], rec.stats, rec.status, rec.t_reached))
        ctx.problem, ctx.snaps, ctx.params, ctx.rec = problem, snaps, params, rec
        ctx.y0 = y0.detach()
        ys = torch.stack(rec.outputs)
        # only the step sizes outlive the forward pass (the outputs live on in ys)
        rec.state, rec.outputs = None, []
        return ys

    @staticmethod
    @full_precision_backward
    def backward(ctx, grad_ys: torch.Tensor):
        problem, params, rec = ctx.problem, ctx.params, ctx.rec
        solver = problem.solver
        term = problem.term()
        after = outputs_after(rec.counts)
        steps = rec.steps
        grad_params = [torch.zeros_like(p) for p in params]
        cotangent = {"a": torch.zeros_like(ctx.y0)}

        def advance(i: int, y: torch.Tensor) -> torch.Tensor:
            t0, dt = steps[i]
            with torch.no_grad():
                # the solver restarts from y (init) as in the recomputation; for the explicit one-step
                # methods allowed here that equals the forward pass's next_state
                return solver.step(term, t0, y, solver.init(term, t0, y), dt).y1

        def step_fn(y: torch.Tensor, t0: float, dt: float) -> tuple[torch.Tensor]:
            return (solver.step(term, t0, y, solver.init(term, t0, y), dt).y1,)

        def backprop(i: int, y: torch.Tensor) -> None:
            a = cotangent["a"]
            for k in after.get(i + 1, ()):
                a = a + grad_ys[k]
            t0, dt = steps[i]
            (cotangent["a"],) = backprop_step(lambda x: step_fn(x, t0, dt), (y,), (a,), params, grad_params)

        counters = reverse_steps(len(steps), ctx.snaps, ctx.y0, advance, backprop)
        a = cotangent["a"]
        for k in after.get(0, ()):
            a = a + grad_ys[k]
        rec.stats.nfe_backward = term.nfe
        rec.stats.n_steps_backward = counters["advances"] + len(steps)
        ctx.counters = counters
        # the steps' products were taken without a graph: under create_graph=True a second derivative raises
        grads = first_order_only(
            no_second_derivative("DirectBackprop(checkpoints=k)"), [a, *grad_params], [grad_ys, problem.y0, *params]
        )
        return (None, None, None, None, None, *grads)


def check_solver(solver) -> None:
    """Only explicit one-step methods restart exactly from a stored state (``init`` at it rebuilds the
    solver's state): not implicit ones (their Jacobian is reused across steps), multistep ones (a
    history) or ``Reversible`` (its second state z; use ``ReversibleAdjoint``, which needs no checkpoints).
    The variable-order Adams method (``"adams"``) is explicit in this sense (``implicit`` is False: it
    iterates its corrector without a Jacobian) but multistep: restarted at every step it ran at order 1,
    with many times the steps and the gradient of that other solve.

    Raises:
        ValueError: an implicit, multistep, reversible or external solver.
    """
    from ..solvers.adams import Adams
    from ..solvers.base import AbstractSolver
    from ..solvers.multistep import Nordsieck
    from ..solvers.reversible import Reversible

    if not isinstance(solver, AbstractSolver) or solver.implicit or isinstance(solver, (Adams, Nordsieck, Reversible)):
        raise ValueError(
            f"DirectBackprop(checkpoints=k) restarts steps from stored states, which needs an explicit one-step "
            f"method (e.g. hn.Tsit5(), hn.RK4(), a symplectic method), got {solver!r}; use DirectBackprop() "
            "or an adjoint (ReversibleAdjoint for hn.Reversible)."
        )


def solve_checkpointed(
    problem: Problem,
    checkpoints: int,
    adjoint_params: Sequence[torch.Tensor] | None,
    event_fn: Callable | None = None,
    throw: bool = True,
) -> Solution:
    """Solve with ``DirectBackprop(checkpoints=k)``: the discrete gradient with at most k stored states.

    Args:
        problem: the validated problem (``ConstantStepSize`` or shared-step ``PIDController``).
        checkpoints: k >= 1, the states held at once in the backward pass (y0 included).
        adjoint_params: the tensors to differentiate (None: ``func.parameters()``); gradients reach
            y0 and these only, not tensors the field merely closes over.
        event_fn: must be None.
        throw: raise SolverError on a failed solve or a non-finite output, else report the status
            (the outputs not reached are NaN).

    Returns:
        The Solution, differentiable with respect to y0 and the parameters; steps end at every output
        time, so adaptive solves equal direct backprop with ``step_t=t``. ``stats.n_steps_backward``
        counts the recomputed steps once the backward pass has run.

    Raises:
        ValueError: events, gradients for t, jump times, a per-sample or other controller, a
            solver that cannot restart exactly (implicit, multistep), or a plain function without
            ``adjoint_params``.
        TypeError: ``adjoint_params`` is a single tensor or holds something that is not a tensor.
        SolverError: the forward solve failed or an output is not finite, with ``throw``.
    """
    check_replayable(problem, event_fn, "DirectBackprop(checkpoints=k)")
    check_solver(problem.solver)
    params = differentiable_params(problem, adjoint_params)
    recorded: list[Integration] = []
    # the replay differentiates the forward steps with their sizes frozen: watched as direct backprop is
    # (adaptive steps only: a fixed grid is not held at a stability limit by a controller)
    differentiated = (
        isinstance(problem.controller, PIDController)
        and torch.is_grad_enabled()
        and (problem.y0.requires_grad or any(p.requires_grad for p in params))
    )
    watch = watch_for(problem.solver, problem.rtol, problem.atol, differentiated)
    ys = _CheckpointedSolve.apply(problem, checkpoints, throw, recorded, watch, problem.y0, *params)
    # the same checks as the other loops' results (a fixed grid's non-finite output, the status)
    return to_solution(problem, recorded[0], throw, ys)
