"""Adjoint gradients on the torch backend: one autograd Function, two ways to run the backward pass.

``solve_adjoint`` runs the forward solve without building a graph and returns states whose
backward pass solves an adjoint system backwards in time:

* :class:`~hybrid_node.sensitivity.backsolve.Backsolve` (``BacksolveAdjoint``): the paper's method,
  reconstructing the state backwards together with the adjoint; O(1) memory in the steps.
* :class:`~hybrid_node.sensitivity.interpolating.Interpolating` (``InterpolatingAdjoint``): stores the
  state at checkpoints and re-solves each segment forwards during the backward pass.

The work of the backward pass is added to the solution's stats when it runs::

    sol = hn.solve(f, y0, t, sensitivity=hn.BacksolveAdjoint())
    sol.ys[-1].sum().backward()
    sol.stats.nfe_backward, sol.stats.n_steps_backward   # summed over backward passes
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .._autocast import full_precision_backward
from .._problem import Problem
from .._solution import Solution
from ..loop import to_solution
from ._backward import backward_plan, first_order_only, no_second_derivative, resolve_params
from .events import event_outputs


class _AdjointFunction(torch.autograd.Function):
    """ys = solve(t, y0, params) with the gradient of ``run`` (a Backsolve or Interpolating run).

    ``run.forward(y0) -> ys`` solves without a graph; ``run.backward(ys, grad_ys, need_t)`` returns
    (grad_t or None, grad_y0, grads of params).
    """

    @staticmethod
    def forward(ctx, run, t: torch.Tensor, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ys = run.forward(y0)
        ctx.run = run
        # where torchdiffeq keeps its backward norm (``ys.grad_fn.adjoint_options["norm"]``, replaceable)
        ctx.adjoint_options = run.norm.options
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    @full_precision_backward
    def backward(ctx, grad_ys: torch.Tensor):
        (ys,) = ctx.saved_tensors
        run = ctx.run
        with torch.no_grad():
            grad_t, grad_y0, grad_params = run.backward(ys, grad_ys, need_t=ctx.needs_input_grad[1])
        # under create_graph=True these would look constant to autograd: a second derivative raises
        grads = first_order_only(
            no_second_derivative(run.method_name),
            [grad_t, grad_y0, *grad_params],
            [grad_ys, run.problem.t, run.problem.y0, *run.params],
        )
        return (None, *grads)


def solve_adjoint(
    problem: Problem,
    sensitivity,
    adjoint_params: Sequence[torch.Tensor] | None,
    event_fn: Callable | None = None,
    throw: bool = True,
) -> Solution:
    """Solve ``problem`` forwards without a graph; gradients come from an adjoint backward solve.

    Args:
        problem: the validated forward problem.
        sensitivity: ``BacksolveAdjoint(...)`` or ``InterpolatingAdjoint(...)`` (backward tolerances,
            method, options, norm, checkpoints).
        adjoint_params: the tensors to differentiate; default ``func.parameters()`` for an nn.Module.
        event_fn: terminal event; the event time gets its gradient by the implicit function theorem.
        throw: raise SolverError on a failed forward solve, else report the status.

    Returns:
        Solution; ``sol.stats.nfe_backward`` and ``n_steps_backward`` are filled in by each backward pass.

    Raises:
        ValueError: no parameters are known (``func`` is not an nn.Module and no ``adjoint_params``).
        TypeError: ``adjoint_params`` is not a sequence of tensors, or an unknown sensitivity.
        SolverError: the forward solve failed (``throw``), or the backward solve failed.
    """
    params = resolve_params(problem.func, adjoint_params)
    plan = backward_plan(problem, sensitivity)
    run = sensitivity.backward_pass(problem, plan, params, event_fn, throw)  # Backsolve or Interpolating
    ys = _AdjointFunction.apply(run, problem.t, problem.y0, *params)
    integration = run.integration
    t_final = None
    if integration.event_t is None:
        # the Function's own output, so that ys.grad_fn is its node (as in torchdiffeq)
        sol = to_solution(problem, integration, throw, ys)
    else:
        assert event_fn is not None  # only an event solve stops at an event
        outputs = list(ys.unbind(0))
        t_final, outputs[1] = event_outputs(problem, problem.term(), event_fn, integration.event_t, outputs[1])
        integration.ys = outputs
        sol = to_solution(problem, integration, throw)
    if t_final is not None:
        sol.t_final = t_final
    return sol
