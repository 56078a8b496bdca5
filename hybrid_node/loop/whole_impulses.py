"""The whole-solve graph through output times with impulses: the backsolve adjoint's backward solve.

The backward pass of the backsolve adjoint (Chen et al., "Neural Ordinary Differential Equations",
NeurIPS 2018, Section 2 and Appendix B) is a forward solve of the augmented system (state, adjoint,
parameter cotangents) from the last output time to the first, in which the loss's cotangent at each
output time is added to the adjoint there. The host loop ends a step exactly at each such time, adds
the impulse, re-evaluates the derivative and carries step-size control on
(:func:`~hybrid_node.loop.host.integrate_adaptive` with ``at_output``).

Here each interval between two output times is one call of the same compiled
:class:`~hybrid_node.loop.whole.WholeSolve` graph (a ``while_loop`` of step attempts; the augmented
field's vector-Jacobian products are ``torch.func.vjp`` inside it), and the host does between two
calls what the host loop does at an impulse: it reads the status once, adds the impulse and starts
the next interval with the carried step, controller memory and counters. The graph evaluates the
derivative at the new state itself, before its loop: an eager evaluation of the augmented field (a
vector-Jacobian product through autograd) per output interval cost more than the graph saved. The
landing rule of the graph ends each interval's last step exactly at its end, as the host loop's
stops do, so the steps are the host loop's, up to the rounding of compiled kernels.

The intervals have equal shapes (one output each), so every call after the first reuses the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .._errors import Status
from .._solution import Stats
from ..controllers import PIDController
from ..solvers.runge_kutta import ExplicitRungeKutta
from . import core
from .core import RUNNING
from .device import LoopState, initial_state, make_tables
from .host import Integration
from .whole import WholeSolve, evaluations_per_attempt, pack, read_out, solve_error, start, tolerance_tensor


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
    at_output: Callable[[int, torch.Tensor], torch.Tensor],
) -> Integration | None:
    """Integrate from rs[0] through the increasing times ``rs``, adding the impulse ``at_output`` at
    the inner ones, one whole-solve graph call per interval.

    Args:
        term: the augmented term; its ``pure_field`` is the traceable field (None: not available).
        solver: a method with a whole-solve graph.
        controller: the PID controller.
        x0: the flat augmented state at rs[0].
        rs: increasing times (host floats, solver time), at least two.
        rtol, atol: tolerances (floats or tensors broadcastable to the state).
        norm: error norm (traceable).
        at_output: ``at_output(i, x) -> x_new`` at the inner times rs[i].

    Returns:
        Integration with the states at ``rs`` (after the impulse at the inner ones), as the host loop
        returns it; or None when there is no traceable field, a solve needs autograd, or the compiler
        rejects the field (the caller then runs the host loop; ``term.nfe`` is left as it was).

    Raises:
        SolverError: the solve failed (max steps, step-size underflow, non-finite state).
    """
    pure = getattr(term, "pure_field", None)
    if pure is None or len(rs) < 2 or torch.is_grad_enabled():
        return None
    c = core.StepControl.of(controller, int(solver.error_order or 0), x0.dtype)
    graph = WholeSolve(pure, solver, c, norm, cuda_graphs=x0.device.type == "cuda", start="restart")
    if graph.failed:
        return None
    nfe_before = term.nfe
    f0, counters, dt0 = start(term, solver, controller, pure, rs[0], x0, rtol=rtol, atol=atol, norm=norm)
    rtol_t, atol_t = tolerance_tensor(rtol, x0), tolerance_tensor(atol, x0)
    floats, ints, flags, _, _, outs = pack(initial_state(x0, f0, rs[0], dt0, 2))
    xs = [x0]
    per_attempt = evaluations_per_attempt(solver)
    n_att = 0
    x = x0
    for j in range(len(rs) - 1):
        out = graph(
            floats, ints, flags, x, outs, make_tables(solver, rs[j : j + 2], x0), rtol_t, atol_t, counters=counters
        )
        if out is None:  # the compiler rejected the field (first call): the host loop runs instead
            term.nfe = nfe_before
            return None
        state, info = out
        status, t, dt, n_att_now, n_acc, n_rej = read_out(info)  # the one host read of the interval
        term.nfe += per_attempt * (n_att_now - n_att) + 1  # + the derivative at the interval's start
        n_att = n_att_now
        if status is not Status.SUCCESS:
            raise solve_error(status, t, dt, controller, term.reverse)
        x = state.outs[0]
        if j + 1 < len(rs) - 1:
            x = at_output(j + 1, x)  # the impulse; the solver restarts from the new state
            floats, ints, flags, _, _, _ = pack(_restart(state))
        xs.append(x)
    stats = Stats(nfe=term.nfe, n_accepted=n_acc, n_rejected=n_rej)
    return Integration(xs, stats, Status.SUCCESS, rs[-1])


def _restart(out: LoopState) -> LoopState:
    """The state for the next interval: the time, step, controller memory and counters carried on,
    the next output index and the status reset (the caller passes the new state, whose derivative the
    graph evaluates, and the first interval's NaN output row again: the graph never writes its inputs)."""
    return out._replace(i_out=torch.ones_like(out.i_out), status=torch.full_like(out.status, RUNNING))
