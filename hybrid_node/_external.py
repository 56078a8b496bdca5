"""Solves handed to a loop outside the torch loops: an external solver's own (scipy) and the Julia
backend's, with the settings each can take checked first."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import torch

from ._errors import BackendError, SolverError
from ._problem import Problem, make_problem
from ._registry import (
    METHOD_SPECS,
)
from ._solution import Solution, Stats
from .controllers import AbstractController, ConstantStepSize, PIDController
from .julia import backend as julia_backend
from .julia import events as julia_events
from .julia.backend import FIXED_UNLESS_ADAPTIVE
from .loop import callbacks_called, warn_unsupported_callbacks
from .sensitivity.base import AbstractSensitivity
from .sensitivity.settings import BacksolveAdjoint, DirectBackprop
from .solvers.base import AbstractSolver, ExternalSolver
from .solvers.reversible import Reversible


def _solve_external(
    func, y0, t, solver, controller, sensitivity, adjoint_params, event_fn, t_dtype, jump_t, step_t, throw
) -> Solution:
    """Hand a solve to a solver that runs its own loop (scipy): no events, no jump or step times;
    gradients by the backsolve adjoint only (it needs no derivatives of the solver, Chen et al. 2018).

    With ``throw=False`` a failed solve returns its status as the torch loops do: the states at the
    output times before the failure (solved again up to the last of them, since the external loop
    returns nothing when it fails; ``stats`` are that solve's) and NaN at the others.

    Raises:
        BackendError: events, or a sensitivity other than DirectBackprop / BacksolveAdjoint.
        ValueError: ``jump_t`` or ``step_t`` (the external loop chooses its own steps).
        SolverError: the solve failed, with ``throw``.
    """
    solver = _external_settings(solver, controller)
    problem = make_problem(func, y0, t, solver, controller, t_dtype=t_dtype, jump_t=jump_t, step_t=step_t)
    warn_unsupported_callbacks(func, solver.name, callbacks_called(solver, controller))
    if event_fn is not None:
        raise BackendError(f"{solver.name} does not support events; use an adaptive torch solver such as 'dopri5'.")
    if len(problem.jump_t) or len(problem.step_t):
        # they were dropped without a word (odeint refuses them as unknown options of this method)
        raise ValueError(
            f"{solver.name} runs its own steps and cannot end them at jump_t/step_t; use a torch solver such as "
            "'dopri5', or solve up to each of those times and restart from the state there."
        )
    if not isinstance(sensitivity, (BacksolveAdjoint, DirectBackprop)):
        raise BackendError(
            f"{solver.name} has no dense output, so it works with BacksolveAdjoint (odeint_adjoint) only; "
            "for other gradient methods use a torch solver such as 'dopri5'."
        )
    n = len(problem.ts)
    try:
        return _external_once(problem, sensitivity, adjoint_params)
    except SolverError as err:
        if throw:
            raise
        failure = err
    while True:
        # the external loop never evaluates past its end time, so a failure of the shorter solve comes
        # before its last output and each retry keeps fewer outputs (one, y0, needs no solve)
        s_fail = -failure.t if problem.reverse else failure.t
        k = max(1, sum(1 for s in problem.ts if s < s_fail))
        try:
            part = make_problem(func, y0, problem.t[:k], solver, controller, t_dtype=t_dtype)
            sol = _external_once(part, sensitivity, adjoint_params)
            break
        except SolverError as err:
            failure = err

    def pad(ys: torch.Tensor) -> torch.Tensor:
        return torch.cat([ys, ys.new_full((n - k, *ys.shape[1:]), math.nan)])

    ys = tuple(pad(y) for y in sol.ys) if isinstance(sol.ys, tuple) else pad(sol.ys)
    return Solution(ts=problem.t, ys=ys, stats=sol.stats, status=failure.status)


def _external_settings(solver: ExternalSolver, controller: AbstractController) -> ExternalSolver:
    """``solver`` with the settings of ``controller`` that it takes (scipy: the step bounds and the
    step limit, :meth:`~hybrid_node.solvers.scipy_solver.ScipySolver.with_controller`).

    Args:
        solver: the external solver.
        controller: the solve's controller.

    Returns:
        ``solver``, or a copy with the controller's settings merged in.

    Raises:
        ValueError: a ``ConstantStepSize`` controller (an external solver chooses its own steps), or a
            controller setting the solver cannot honour or that conflicts with its own.
    """
    if isinstance(controller, ConstantStepSize):
        # it reached the scipy call as tolerances of None ("Could not infer dtype of NoneType")
        raise ValueError(
            f"{solver.name} chooses its own steps and cannot take ConstantStepSize; pass "
            "hn.PIDController(rtol=..., atol=..., max_num_steps=...), or use a fixed-step torch solver such as "
            "hn.RK4() for fixed steps."
        )
    adopt = getattr(solver, "with_controller", None)
    return solver if adopt is None else adopt(controller)


def _external_once(problem: Problem, sensitivity: AbstractSensitivity, adjoint_params) -> Solution:
    """One solve of :func:`_solve_external` (its checks done) by the backsolve adjoint or without gradients.

    Raises:
        SolverError: the external loop failed.
    """
    if isinstance(sensitivity, BacksolveAdjoint):
        return sensitivity.solve(problem, adjoint_params)
    func = problem.func
    params = (
        tuple(adjoint_params)
        if adjoint_params is not None
        else (tuple(func.parameters()) if isinstance(func, torch.nn.Module) else ())
    )
    term = problem.term()
    ys = problem.solver.integrate(term, problem.y0, problem.ts, problem.rtol, problem.atol, params)
    return Solution(ts=problem.t, ys=problem.unflatten(ys), stats=Stats(nfe=term.nfe))


#: the controller settings that reach the Julia backend (as rtol/atol and its options)
_JULIA_SETTINGS: dict[type, tuple[str, ...]] = {
    PIDController: ("rtol", "atol", "first_step", "max_num_steps"),
    ConstantStepSize: ("step_size", "max_num_steps"),
}


def _refuse_unsent_settings(controller: AbstractController, solver: AbstractSolver | ExternalSolver) -> None:
    """Raise unless every setting of ``controller`` and ``solver`` that the Julia backend does not take
    is at its default (the Julia backend receives the method's name, tolerances and step options only).

    Raises:
        BackendError: names the settings that would have been dropped (a ``max_step`` or a ``safety``
            the solve silently ran without) and the ones the Julia backend takes.
    """
    kind = type(controller).__name__
    sent = next((names for cls, names in _JULIA_SETTINGS.items() if isinstance(controller, cls)), None)
    if sent is None:
        raise BackendError(f"the Julia backend takes a PIDController or a ConstantStepSize, got {kind}.")
    fields = dataclasses.fields(cast(Any, controller))
    # shrink_after_accept shapes the torch loops' step proposals (odeint sets it for torchdiffeq's steps);
    # DifferentialEquations.jl proposes its own steps, and no accuracy setting is lost without it
    dropped = [
        f.name
        for f in fields
        if f.name not in sent and f.name != "shrink_after_accept" and getattr(controller, f.name) != f.default
    ]
    if dropped:
        raise BackendError(
            f"{kind} settings {dropped} are not available on the Julia backend, which takes only "
            f"{list(sent)} of a {kind}; leave them at their defaults or use backend='torch'."
        )
    spec = METHOD_SPECS.get(solver.name)
    if spec is None or spec.solver is None or not dataclasses.is_dataclass(solver):
        return  # not a registered torch solver: the Julia backend names what it has
    default = spec.solver()
    taken = ("name", "adaptive")  # the method by name; ``adaptive`` (trbdf2) as options["adaptive"]
    changed = [
        f.name
        for f in dataclasses.fields(solver)
        if f.name not in taken and getattr(solver, f.name) != getattr(default, f.name, f.default)
    ]
    if changed:
        raise BackendError(
            f"{type(solver).__name__} settings {changed} are not available on the Julia backend, which "
            f"takes the method {solver.name!r} by name with its Julia defaults; leave them at their defaults "
            "or use backend='torch'."
        )


def _solve_julia(func, y0, t, solver, controller, sensitivity, adjoint_params, events) -> Solution:
    """Hand a solve to the Julia backend, translating the settings objects to its keyword form
    (events, forward only: :mod:`hybrid_node.julia.events`)."""
    if isinstance(solver, Reversible):  # its name ('reversible_tsit5') was reported as an unknown Julia method
        raise BackendError(
            "hn.Reversible (the algebraically reversible wrapper) is available on the torch backend only; "
            "use backend='torch', or the plain method on Julia."
        )
    _refuse_unsent_settings(controller, solver)
    options: dict[str, Any] = {}
    if isinstance(controller, PIDController) and julia_backend.METHODS.get(solver.name) in FIXED_UNLESS_ADAPTIVE:
        options["adaptive"] = True  # TRBDF2 takes fixed steps on the Julia backend unless asked (odeint's meaning)
    if isinstance(controller, PIDController):
        rtol, atol = controller.rtol, controller.atol
        if controller.max_num_steps != PIDController.max_num_steps:
            options["max_num_steps"] = controller.max_num_steps
        if controller.first_step is not None:
            options["first_step"] = controller.first_step
    else:
        rtol, atol = PIDController.rtol, PIDController.atol
        if controller.step_size is not None:
            options["step_size"] = controller.step_size
        if controller.max_num_steps != ConstantStepSize.max_num_steps:
            options["max_num_steps"] = controller.max_num_steps
    common: dict[str, Any] = {
        "method": solver.name,
        "rtol": rtol,
        "atol": atol,
        "options": options,
        "sensitivity": sensitivity,
        "adjoint_params": adjoint_params,
    }
    if events["event"] is not None or events["event_fn"] is not None:
        return julia_events.solve_events(func, y0, t, **common, **events)
    return julia_backend.solve(func, y0, t, **common)
