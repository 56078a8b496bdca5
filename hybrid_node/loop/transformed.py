"""The adaptive loop inside ``torch.func`` transforms: ``vmap`` over solves, ``jacrev``/``jacfwd`` through them.

The host loop decides every step attempt on the host, which ``vmap`` forbids (a batched error ratio
has one value per problem), and the whole-solve graph's ``while_loop`` has no batching or functorch
rule in torch 2.13. The device loop's step attempt (:func:`~hybrid_node.loop.device.attempt`) needs
neither: it decides accept/reject, the next step, the output writes and the status with tensor
operations, so under ``vmap`` every problem of the batch gets its own time, step size, controller
memory and status, as if it were solved alone. Only "is any problem still running?" is asked on the
host, of the plain tensor beneath the transform's wrappers (:func:`hybrid_node._transforms.plain`);
a problem that has finished takes masked zero steps until the last one ends.

Gradients (``grad``, ``jacrev``, ``vjp``, ``jacfwd``) are those of direct backpropagation through the
accepted steps: the error ratio is computed without autograd, so the step sizes are constants of the
derivative, as in the host loop; a rejected attempt receives a zero cotangent.

Scope: adaptive solves with an explicit embedded pair (dopri5, tsit5, bosh3, dopri8, adaptive_heun,
fehlberg2) and a PID controller, with direct backpropagation; fixed-step methods run the fixed-grid loop, whose step
sequence does not depend on the state. No events, ``jump_t``/``step_t``, per-sample control, dense
output over the interval or adjoints (their backward passes are custom autograd Functions).

References: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.4 (step-size control and
the initial step); Horace He, Richard Zou, "functorch: JAX-like composable function transforms for
PyTorch", 2021 (the transforms and their levels).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from .._errors import SolverError, Status
from .._solution import Stats
from .._term import Term
from .._transforms import members, plain
from ..controllers import PIDController
from ..solvers.runge_kutta import ExplicitRungeKutta
from . import core
from .core import RUNNING
from .device import attempt, initial_state, make_tables, summary
from .host import Integration
from .whole import evaluations_per_attempt, first_step_tensor, initial_step_tensor


def check_transformable(problem, event_fn, dense: bool) -> None:
    """Raise ValueError where a solve cannot run inside a ``torch.func`` transform; the message says what does.

    Args:
        problem: the validated problem.
        event_fn: the terminal event function, or None.
        dense: dense output over the whole interval is requested.

    Raises:
        ValueError: events, ``jump_t``/``step_t``, dense output, per-sample or device-loop control,
            a method that decides on the host (implicit, predictor-corrector), or an adaptive method
            other than an explicit embedded pair.
    """
    ctrl, solver = problem.controller, problem.solver
    what = None
    if event_fn is not None:
        what = "events"
    elif problem.jump_t or problem.step_t:
        what = "jump_t or step_t"
    elif dense:
        what = "dense output over the interval"
    elif isinstance(ctrl, PIDController) and (ctrl.per_sample or ctrl.device_loop):
        what = "options per_sample or device_loop (vmap already gives every problem its own steps)"
    elif not solver.transformable or (isinstance(ctrl, PIDController) and not solver.supports_masked_attempts):
        kind = "adaptive" if isinstance(ctrl, PIDController) else "fixed-step"
        what = f"the {kind} method {solver.name!r}"
    if what is not None:
        raise ValueError(
            "inside torch.func transforms (vmap, grad, jacrev, ...) a solve runs an explicit embedded pair "
            "(dopri5, tsit5, bosh3, dopri8, adaptive_heun, fehlberg2) or an explicit fixed-step method "
            f"(rk4, euler, explicit_adams, leapfrog, ...), without {what}; solve outside the transform, or "
            "batch the problems along a dimension of y0 instead."
        )


def integrate_transformed(
    term: Term,
    solver: ExplicitRungeKutta,
    controller: PIDController,
    y0: torch.Tensor,
    ts: Sequence[float],
    *,
    rtol,
    atol,
    norm,
    throw: bool = True,
) -> Integration:
    """Integrate from ts[0] through the increasing times ``ts`` with masked step attempts (see the module).

    Args:
        term: the wrapped field (solver time); counts the evaluations.
        solver: an explicit embedded pair (``supports_masked_attempts``).
        controller: the PID step-size controller.
        y0: flat initial state (a transform's wrapper).
        ts: increasing output times (host floats, solver time).
        rtol, atol, norm: the error test.
        throw: raise SolverError when some problem of the batch failed, else report the first failure
            code as the status (outputs a problem did not reach are NaN).

    Returns:
        Integration with the states at ``ts``; the counters are the attempts of the loop (all
        problems of a batch together).

    Raises:
        SolverError: max steps, step-size underflow or a non-finite state in some problem, with ``throw``.
    """
    pure = term.pure_field

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pure.field(pure.owner, t, y)

    f0 = solver.init(term, ts[0], y0)  # through the term: it checks the field's output once
    if controller.first_step is not None:
        dt0 = first_step_tensor(controller, y0.device)[0]
    else:  # Hairer's heuristic per problem, within [min_step, max_step] as the host loop clamps it
        t0 = torch.tensor(ts[0], dtype=torch.float64, device=y0.device)
        h = initial_step_tensor(field, t0, y0, f0, int(solver.error_order or 0), rtol, atol, norm)
        dt0 = h.clamp(controller.min_step, controller.max_step)
        term.nfe += 1
    state = initial_state(y0, f0, ts[0], dt0, len(ts))
    c = core.StepControl.of(controller, int(solver.error_order or 0), y0.dtype)
    tables = make_tables(solver, ts, y0)
    attempts = 0
    # the one host question: is any problem of the batch still running (the plain tensor holds them all)
    while bool((plain(state.status) == RUNNING).any()):
        state = attempt(field, solver, c, tables, rtol, atol, norm, state)
        attempts += 1
    term.nfe += evaluations_per_attempt(solver) * attempts
    # every member's (status, t, dt, attempts, accepted, rejected, non-finite flag) as one row, members in
    # the order of the batch: the failure reported is one member's, its status with its own time
    info = members(summary(state))
    batch_shape = tuple(info.shape[:-1])
    rows = info.reshape(-1, info.shape[-1])
    failed = (rows[:, 0] != core.SUCCESS).nonzero().reshape(-1)
    status = core.STATUS[int(rows[failed[0], 0])] if failed.numel() else Status.SUCCESS
    stats = Stats(nfe=term.nfe, n_accepted=int(rows[:, 4].max()), n_rejected=int(rows[:, 5].max()))
    if status is not Status.SUCCESS and throw:
        first = int(failed[0])
        _, t_fail, dt_fail = rows[first, :3].tolist()
        detail = f"max_num_steps={controller.max_num_steps}" if status is Status.MAX_STEPS else f"dt={dt_fail:.3g}"
        if batch_shape:
            detail += "; " + which_member(first, batch_shape, failed.numel())
        raise SolverError(status, -t_fail if term.reverse else t_fail, detail)
    if bool(rows[:, 6].any()):
        warnings.warn(
            "an attempted step had a non-finite error estimate; if the solve is differentiated, its zero "
            "cotangent may still make gradients NaN (tighten the tolerances or set options['first_step']).",
            RuntimeWarning,
            stacklevel=2,
        )
    return Integration([y0] + list(state.outs.unbind(0)), stats, status, float(plain(state.t).min()))


def which_member(first: int, batch_shape: tuple[int, ...], n_failed: int) -> str:
    """Name the failed member ``first`` (a flat index over ``batch_shape``) for a SolverError's message.

    Args:
        first: the member's flat index, the vmap dimensions outermost first.
        batch_shape: the sizes of the vmap dimensions, outermost first.
        n_failed: how many members failed.

    Returns:
        "in problem i of the vmap batch of n (k of the n failed)", with index and size tuples under nested vmap.
    """
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(first), batch_shape))
    where = index[0] if len(index) == 1 else index
    size = batch_shape[0] if len(batch_shape) == 1 else batch_shape
    total = math.prod(batch_shape)
    # (vmap's chunk_size calls the function once per chunk: the index and size are then the chunk's)
    return f"in problem {where} of the vmap batch of {size} ({n_failed} of the {total} failed)"
