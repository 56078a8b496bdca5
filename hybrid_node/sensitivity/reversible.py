"""Exact gradients in O(1) memory: backpropagate through an algebraically reversible solve step by step.

The forward pass runs :class:`hybrid_node.solvers.reversible.Reversible` without recording a graph and
keeps only the final pair (y_N, z_N), the accepted step sizes (O(steps) floats) and the outputs. The
backward pass walks the steps from the last to the first: it rebuilds (y_n, z_n) from (y_{n+1},
z_{n+1}) with the step's closed-form inverse, recomputes that one step with autograd from the rebuilt
states and pulls the cotangents of (y_{n+1}, z_{n+1}) back to (y_n, z_n) and the parameters. The
result is the gradient of the discrete forward solve (what direct backprop computes), up to the
rounding of the reconstruction, with memory for one step's graph whatever the number of steps, at
about 2.5x the forward cost (inverse plus recomputed step plus its vector-Jacobian product).

Reference: McCallum & Foster, "Efficient, accurate and stable gradients for Neural ODEs",
arXiv:2410.11648 (2024), Section 3.2 (the reversible adjoint: exact, O(n) time, O(1) memory).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from .._autocast import full_precision_backward
from .._problem import Problem
from .._solution import Solution
from ..loop import to_solution
from ..loop.host import Integration
from ..solvers.reversible import Reversible, ReversibleState
from ._backward import first_order_only, no_second_derivative, resolve_params
from ._replay import backprop_step, check_replayable, outputs_after, record_forward
from .base import AbstractSensitivity


def _replay(
    problem: Problem, solver: Reversible, y0: torch.Tensor, steps: Sequence[tuple[float, float]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair (y, z) after ``steps``, recomputed from y0 without a graph (the same operations as the
    forward pass, so the same values).

    Args:
        problem: the problem (for its field); solver: the reversible solver; y0: the initial state;
        steps: the recorded ``(t0, dt)`` of the steps to take.

    Returns:
        ``(y, z)`` after the steps.
    """
    term = problem.term()  # its own counter: the forward pass's statistics stay those of the solve
    with torch.no_grad():
        y, state = y0, solver.init(term, problem.ts[0], y0)
        for t0, dt in steps:
            step = solver.step(term, t0, y, state, dt)
            state = solver.next_state(term, t0 + dt, step)
            y = step.y1
    return y, state.z


class _ReversibleSolve(torch.autograd.Function):
    """Forward: the reversible solve (no graph). Backward: reconstruct and backprop step by step."""

    @staticmethod
    def forward(
        ctx, problem: Problem, solver: Reversible, throw: bool, recorded: list, y0: torch.Tensor, *params: torch.Tensor
    ):
        term = problem.term()
        rec = record_forward(problem, solver, term, y0.detach(), throw)
        recorded.append(Integration([], rec.stats, rec.status, rec.t_reached))
        steps, final = rec.steps, (rec.y, rec.state.z)
        reached = rec.counts[-1]
        if reached < len(steps):
            # a failed solve (throw=False) went on past its last output, often into a blow-up whose
            # inverse steps give inf and NaN: those steps carry no cotangent, so start the backward pass
            # at the last output instead (its z was not kept: replay the steps up to it)
            steps = steps[:reached]
            final = _replay(problem, solver, y0.detach(), steps)
        ctx.problem, ctx.solver, ctx.steps, ctx.params = problem, solver, steps, params
        ctx.counts = rec.counts
        ctx.final = final
        ctx.stats = rec.stats
        return torch.stack(rec.outputs)

    @staticmethod
    @full_precision_backward
    def backward(ctx, grad_ys: torch.Tensor):
        problem, solver, steps, params = ctx.problem, ctx.solver, ctx.steps, ctx.params
        term = problem.term()
        after = outputs_after(ctx.counts)
        y, z = ctx.final
        a_y = torch.zeros_like(y)
        a_z = torch.zeros_like(z)
        grad_params = [torch.zeros_like(p) for p in params]
        for n in range(len(steps) - 1, -1, -1):
            for i in after.get(n + 1, ()):
                a_y = a_y + grad_ys[i]
            t0, dt = steps[n]
            with torch.no_grad():
                # rebuild the step's start from its end: nothing of the forward pass was stored
                y_prev, z_prev = solver.inverse(term, t0 + dt, y, z, dt)

            def step_fn(y_in, z_in, t0=t0, dt=dt):
                step = solver.step(term, t0, y_in, ReversibleState(z_in, solver.base.init(term, t0, z_in)), dt)
                return step.y1, step.z1

            a_y, a_z = backprop_step(step_fn, (y_prev, z_prev), (a_y, a_z), params, grad_params)
            y, z = y_prev, z_prev
        for i in after.get(0, ()):
            a_y = a_y + grad_ys[i]
        ctx.stats.nfe_backward = term.nfe
        ctx.stats.n_steps_backward = len(steps)
        # y0 = z0: the initial state receives both cotangents; the steps' products were taken without a
        # graph, so under create_graph=True a second derivative raises
        grads = first_order_only(
            no_second_derivative("ReversibleAdjoint"), [a_y + a_z, *grad_params], [grad_ys, problem.y0, *params]
        )
        return (None, None, None, None, *grads)


@dataclasses.dataclass(frozen=True)
class ReversibleAdjoint(AbstractSensitivity):
    """Exact discrete gradients in memory independent of the number of steps (torch backend).

    The solver must be ``hn.Reversible(base, coupling)`` (``odeint_adjoint(..., adjoint_options=
    {"reversible": True})`` wraps the method for you). Fixed steps (``ConstantStepSize``) or adaptive
    steps (``PIDController``; the accepted step sizes are kept, one float each). Output times are step
    ends. Gradients for y0 and the parameters (``adjoint_params`` or ``func.parameters()``; a plain
    function needs ``adjoint_params``, ``()`` if it has none, as the other adjoints); not for ``t``, and
    no events.

    Reference: McCallum & Foster 2024, arXiv:2410.11648.
    """

    backends = ("torch",)

    def solve(
        self,
        problem: Problem,
        adjoint_params: Sequence[torch.Tensor] | None,
        event_fn: Callable | None = None,
        throw: bool = True,
    ) -> Solution:
        """Solve forwards without a graph; gradients by reconstructing the steps backwards.

        Returns:
            The Solution, differentiable with respect to y0 and the parameters.

        Raises:
            ValueError: the solver is not ``Reversible``, an event function was given, ``t`` requires grad,
                or ``func`` is not an ``nn.Module`` and no ``adjoint_params`` were given (``()`` if none).
            TypeError: ``adjoint_params`` is a single tensor or holds something that is not a tensor.
            SolverError: the adaptive solve failed (max steps, step-size underflow) or an output is not
                finite, with ``throw`` (else the status is reported and the outputs not reached are NaN).
        """
        if not isinstance(problem.solver, Reversible):
            raise ValueError(
                f"ReversibleAdjoint needs solver=hn.Reversible(base), got {problem.solver!r}; wrap it, e.g. "
                "hn.Reversible(hn.Tsit5())."
            )
        check_replayable(problem, event_fn, "ReversibleAdjoint")
        # the other adjoints' (and odeint_adjoint's, torchdiffeq's) rule: a plain function's tensors are
        # unknown, and a closure's weights would silently get no gradient (direct backprop gives them one)
        params = resolve_params(problem.func, adjoint_params)
        recorded: list[Integration] = []
        ys = _ReversibleSolve.apply(problem, problem.solver, throw, recorded, problem.y0, *params)
        # the same checks as the other loops' results (a fixed grid's non-finite output, the status)
        return to_solution(problem, recorded[0], throw, ys)
