"""The whole-solve graph through output times with impulses: the backsolve adjoint's backward solve.

The backward pass of the backsolve adjoint (Chen et al., "Neural Ordinary Differential Equations",
NeurIPS 2018, Section 2 and Appendix B) is a forward solve of the augmented system (state, adjoint,
parameter cotangents) from the last output time to the first, in which the loss's cotangent at each
output time is added to the adjoint there. The host loop ends a step exactly at each such time, adds
the impulse, re-evaluates the derivative and carries step-size control on
(:func:`~hybrid_node.loop.host.integrate_adaptive` with ``at_output``).

Here the whole backward solve is one call of the compiled :class:`~hybrid_node.loop.whole.WholeSolve`
graph (a ``while_loop`` of step attempts; the augmented field's vector-Jacobian products are
``torch.func.vjp`` inside it). The impulses are a table of tensors
(:class:`~hybrid_node.loop.device.Impulses`): inside the loop every step ends at the next output
time (the landing rule, as the host loop's stops), an accepted step that lands there applies that
output's row, and the derivative at the new state is evaluated under ``torch.cond`` only then, so
the steps are the host loop's, up to the rounding of compiled kernels. An earlier design called the
graph once per output interval and applied the impulse on the host between calls; the single call
saves a guard check, a host read and the impulse's ``cat`` per output (about 30% of the backward pass
of a 50-output MLP problem, docs/compiled/adjoint_graphs.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._errors import Status
from .._solution import Stats
from ..controllers import PIDController
from ..solvers.runge_kutta import ExplicitRungeKutta
from . import core
from .device import Impulses, initial_state, make_tables
from .graph_inputs import graph_control, settings_vector, tolerance_tensor
from .host import Integration, first_step
from .whole import (
    WholeSolve,
    count_evaluations,
    evaluations_per_attempt,
    pack,
    read_out,
    solve_error,
)


def applies(solver, controller, jump_t: Sequence[float], stops: Sequence[float]) -> bool:
    """Whether a backward solve with these settings can run through :func:`integrate_whole_impulses`.

    Args:
        solver: the backward solver.
        controller: its controller.
        jump_t: the jump times of the backward solve.
        stops: further times where steps must end (checkpoint boundaries).

    Returns:
        True for a compiled method with a whole-solve graph under a plain PID controller, with no
        jumps and no further stops.
    """
    return bool(
        isinstance(solver, ExplicitRungeKutta)
        and solver.compile
        and solver.supports_whole_solve
        and isinstance(controller, PIDController)
        and not (controller.per_sample or controller.device_loop)
        and not jump_t
        and not stops
    )


def integrate_whole_impulses(
    term,
    solver: ExplicitRungeKutta,
    controller: PIDController,
    x0: torch.Tensor,
    rs: Sequence[float],
    *,
    rtol,
    atol,
    norm,
    impulses: Impulses,
) -> Integration | None:
    """Integrate from rs[0] through the increasing times ``rs``, with the jumps ``impulses`` at the
    inner ones, as one call of the whole-solve graph.

    Args:
        term: the augmented term; its ``pure_field`` is the traceable field (None: not available).
        solver: a method with a whole-solve graph.
        controller: the PID controller.
        x0: the flat augmented state at rs[0].
        rs: increasing times (host floats, solver time), at least two.
        rtol, atol: tolerances (floats or tensors broadcastable to the state).
        norm: error norm (traceable).
        impulses: the jumps at the inner times (:class:`~hybrid_node.loop.device.Impulses`).

    Returns:
        Integration with the states at rs[0] and rs[-1] (the backward pass needs only the end); or
        None when there is no traceable field, the field has ``*_adjoint`` step callbacks, a solve
        needs autograd, or the compiler rejects the field (the caller then runs the host loop;
        ``term.nfe`` is left as it was).

    Raises:
        SolverError: the solve failed (max steps, step-size underflow, non-finite state).
    """
    pure = getattr(term, "pure_field", None)
    if pure is None or len(rs) < 2 or torch.is_grad_enabled() or getattr(term, "callbacks", None):
        # (the ``*_adjoint`` step callbacks are host Python between attempts: the host loop calls them)
        return None
    c = core.StepControl.of(controller, int(solver.error_order or 0), x0.dtype)
    # the step settings and PID numbers are inputs (as in the forward graph): a new max_step or safety
    # compiles nothing
    graph = WholeSolve(pure, solver, graph_control(c), norm, device_type=x0.device.type, start="impulses")
    if graph.failed:
        return None
    counters = graph.counters(term, rs[0], x0)
    if counters is None:
        return None
    nfe_before = term.nfe
    f0 = solver.init(term, rs[0], x0)  # the host's derivative and first step, as the host loop's
    dt0 = first_step(term, solver, controller, rs[0], x0, f0, rtol, atol, norm)
    # no output rows: every step ends at an output time, and only the end state is kept
    packed = pack(initial_state(x0, f0, rs[0], dt0, 1))
    # another number of output times runs in a graph padded as the forward ones (WholeSolve.padded):
    # the end time repeated, rows of nothing to add, all past impulses.outputs, where the loop ends
    padded = graph.padded(rs)
    tables = make_tables(solver, padded, x0, stage_loop=graph.loops_stages(solver, x0))
    pad = impulses.add.new_zeros(len(padded) - len(rs), impulses.add.shape[1])
    impulses = impulses._replace(add=torch.cat([impulses.add, pad]))
    rtol_t, atol_t = tolerance_tensor(rtol, x0), tolerance_tensor(atol, x0, 1)
    settings = settings_vector(controller, c, x0)
    out = graph(*packed, tables, rtol_t, atol_t, counters=counters, extra=(impulses, settings))
    if out is None:  # the compiler rejected the field: the host loop runs instead
        term.nfe = nfe_before
        return None
    state, info = out
    status, t, dt, n_att, n_acc, n_rej = read_out(info)  # the one host read of the solve
    # + the derivative after each of the len(rs) - 2 impulses
    count_evaluations(term, counters, evaluations_per_attempt(solver, outputs=False) * n_att + len(rs) - 2)
    if status is not Status.SUCCESS:
        # the loop's end state is where it stopped: the cause is named from it, as the host loop does
        raise solve_error(status, t, dt, controller, term, stopped=(solver, state.y, x0))
    return Integration([x0, state.y], Stats(term.nfe, n_acc, n_rej), Status.SUCCESS, rs[-1])
