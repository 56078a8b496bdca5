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
import math
from collections.abc import Callable, Sequence

import torch

from .._errors import SolverError, Status
from .._problem import Problem
from .._solution import Solution, Stats
from ..controllers import ConstantStepSize, PIDController, error_ratio
from ..loop import core
from ..loop.core import FLOAT, RUNNING
from ..loop.host import first_step
from ..solvers.reversible import Reversible, ReversibleState
from .base import AbstractSensitivity


def _forward(problem: Problem, solver: Reversible, term, y0: torch.Tensor):
    """The forward solve without a graph: outputs at ``problem.ts``, the final (y, z) and the accepted steps.

    Steps end exactly at every output time (the adjoint adds the outputs' cotangents there).

    Returns:
        ``(outputs, y, z, steps, stats)`` with ``steps`` the list of accepted ``(t0, dt)``.
    """
    ts = problem.ts
    ctrl = problem.controller
    stats = Stats()
    steps: list[tuple[float, float]] = []
    outputs = [y0]
    with torch.no_grad():
        t, y = ts[0], y0
        state = solver.init(term, t, y)
        if isinstance(ctrl, ConstantStepSize):
            for t_out in ts[1:]:
                # equal steps no longer than step_size inside every output interval (the grid itself
                # when the outputs lie on it, as ConstantStepSize.grid builds it)
                h = ctrl.step_size if ctrl.step_size is not None else t_out - t
                n = max(1, math.ceil((t_out - t) / h - 1e-9))
                grid = [t + (t_out - t) * k / n for k in range(1, n)] + [t_out]
                for t1 in grid:
                    step = solver.step(term, t, y, state, t1 - t)
                    steps.append((t, t1 - t))
                    state = solver.next_state(term, t1, step)
                    t, y = t1, step.y1
                    stats.n_accepted += 1
                outputs.append(y)
        else:
            if solver.error_order is None:
                raise ValueError(f"{solver!r} has no error estimate; use ConstantStepSize(step_size=...).")
            c = core.StepControl.of(ctrl, solver.error_order, y0.dtype)
            dt = first_step(term, solver, ctrl, t, y, state, problem.rtol, problem.atol, problem.norm)
            r1, r2 = ctrl.init()
            n_attempts = 0
            for t_out in ts[1:]:
                while t < t_out:
                    if core.precheck(FLOAT, c, n_attempts, t, dt) != RUNNING:
                        raise SolverError(Status.MAX_STEPS, -t if problem.reverse else t, "reversible solve")
                    n_attempts += 1
                    _, step_dt, t1 = core.landing(FLOAT, t, dt, t_out, c.max_step)
                    step = solver.step(term, t, y, state, step_dt)
                    if step.error is None:  # a base method without an estimate was caught above
                        raise ValueError(f"{solver!r} produced no error estimate for adaptive steps.")
                    ratio = error_ratio(step.error, y, step.y1, problem.rtol, problem.atol, problem.norm)
                    accepted = core.accepts(FLOAT, c, ratio, step_dt)
                    if accepted:
                        steps.append((t, step_dt))
                        state = solver.next_state(term, t1, step)
                        t, y = t1, step.y1
                        stats.n_accepted += 1
                    else:
                        stats.n_rejected += 1
                    dt, r1, r2 = core.propose(FLOAT, c, step_dt, ratio, accepted, r1, r2)
                    dt, code = core.settle(FLOAT, c, False, t, dt, step_dt, not math.isfinite(ratio) and not accepted)
                    if code != RUNNING:
                        raise SolverError(core.STATUS[code], -t if problem.reverse else t, f"dt={dt:.3g}")
                outputs.append(y)
    stats.nfe = term.nfe
    return outputs, y, state.z, steps, stats


class _ReversibleSolve(torch.autograd.Function):
    """Forward: the reversible solve (no graph). Backward: reconstruct and backprop step by step."""

    @staticmethod
    def forward(ctx, problem: Problem, solver: Reversible, stats_out: list, y0: torch.Tensor, *params: torch.Tensor):
        term = problem.term()
        outputs, y, z, steps, stats = _forward(problem, solver, term, y0.detach())
        stats_out.append(stats)
        ctx.problem, ctx.solver, ctx.steps, ctx.params = problem, solver, steps, params
        ctx.counts = _output_step_counts(problem, steps)
        ctx.final = (y, z)
        return torch.stack(outputs)

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        problem, solver, steps, params = ctx.problem, ctx.solver, ctx.steps, ctx.params
        term = problem.term()
        outputs_after: dict[int, list[int]] = {}  # number of steps -> the outputs that are the state then
        for i, k in enumerate(ctx.counts):
            outputs_after.setdefault(k, []).append(i)
        y, z = ctx.final
        a_y = torch.zeros_like(y)
        a_z = torch.zeros_like(z)
        grad_params = [torch.zeros_like(p) for p in params]
        for n in range(len(steps) - 1, -1, -1):
            for i in outputs_after.get(n + 1, ()):
                a_y = a_y + grad_ys[i]
            t0, dt = steps[n]
            with torch.no_grad():
                # rebuild the step's start from its end: nothing of the forward pass was stored
                y_prev, z_prev = solver.inverse(term, t0 + dt, y, z, dt)
            with torch.enable_grad():
                y_in = y_prev.detach().requires_grad_(True)
                z_in = z_prev.detach().requires_grad_(True)
                state = ReversibleState(z_in, solver.base.init(term, t0, z_in))
                step = solver.step(term, t0, y_in, state, dt)
                grads = torch.autograd.grad((step.y1, step.z1), (y_in, z_in, *params), (a_y, a_z), allow_unused=True)
            a_y = grads[0] if grads[0] is not None else torch.zeros_like(a_y)
            a_z = grads[1] if grads[1] is not None else torch.zeros_like(a_z)
            for i, g in enumerate(grads[2:]):
                if g is not None:
                    grad_params[i] += g
            y, z = y_prev, z_prev
        for i in outputs_after.get(0, ()):
            a_y = a_y + grad_ys[i]
        # y0 = z0: the initial state receives both cotangents
        return (None, None, None, a_y + a_z, *grad_params)


def _output_step_counts(problem: Problem, steps: Sequence[tuple[float, float]]) -> list[int]:
    """For each output time, the number of accepted steps before it (output i is the state after them)."""
    counts = [0]
    k = 0
    for t_out in problem.ts[1:]:
        while k < len(steps) and steps[k][0] < t_out:
            k += 1
        counts.append(k)
    return counts


@dataclasses.dataclass(frozen=True)
class ReversibleAdjoint(AbstractSensitivity):
    """Exact discrete gradients in memory independent of the number of steps (torch backend).

    The solver must be ``hn.Reversible(base, coupling)`` (``odeint_adjoint(..., adjoint_options=
    {"reversible": True})`` wraps the method for you). Fixed steps (``ConstantStepSize``) or adaptive
    steps (``PIDController``; the accepted step sizes are kept, one float each). Output times are step
    ends. Gradients for y0 and the parameters (``adjoint_params`` or ``func.parameters()``); not for
    ``t``, and no events.

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
            ValueError: the solver is not ``Reversible``, an event function was given or ``t`` requires grad.
            SolverError: the adaptive solve failed (max steps, step-size underflow).
        """
        if not isinstance(problem.solver, Reversible):
            raise ValueError(
                f"ReversibleAdjoint needs solver=hn.Reversible(base), got {problem.solver!r}; wrap it, e.g. "
                "hn.Reversible(hn.Tsit5())."
            )
        if event_fn is not None or problem.t.requires_grad:
            raise ValueError("ReversibleAdjoint supports neither events nor gradients for t; use DirectBackprop.")
        if not isinstance(problem.controller, (ConstantStepSize, PIDController)):
            raise ValueError("ReversibleAdjoint needs a ConstantStepSize or a PIDController.")
        func = problem.func
        if adjoint_params is None:
            adjoint_params = tuple(func.parameters()) if isinstance(func, torch.nn.Module) else ()
        params = tuple(p for p in adjoint_params if p.requires_grad)
        stats: list[Stats] = []
        ys = _ReversibleSolve.apply(problem, problem.solver, stats, problem.y0, *params)
        return Solution(ts=problem.t, ys=problem.unflatten(ys), stats=stats[0], status=Status.SUCCESS)
