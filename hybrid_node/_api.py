"""Public entry points: validate once, build solver/controller/sensitivity objects, dispatch on backend."""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch

from ._autocast import field_autocast
from ._backend import resolve_backend
from ._dense_time import time_slope_term
from ._double_backward import first_order_only
from ._errors import BackendError, SolverError, Status
from ._event import Event
from ._problem import Problem, check_t_dtype, make_problem
from ._registry import (
    METHOD_SPECS,
    build_solver,
    check_options,
    inert_controller_settings,
    method_list,
    refuse_inert_step_settings,
    refuse_replaced_tolerances,
)
from ._solution import Solution, State, Stats
from ._term import CALLBACK_NAMES
from ._tracing import traced
from ._transforms import check_forward_mode, forward_mode_active, inside_transform
from .controllers import AbstractController, ConstantStepSize, PIDController, bool_or_complex
from .julia import backend as julia_backend
from .julia import events as julia_events
from .julia.backend import FIXED_UNLESS_ADAPTIVE
from .loop import callbacks_called, integrate, warn_unsupported_callbacks
from .loop.traced_fixed import odeint_graph_fixed, traceable_fixed
from .loop.whole import odeint_graph
from .sensitivity.base import AbstractSensitivity
from .sensitivity.jumps import solve_with_events
from .sensitivity.per_sample_events import solve_sample_events
from .sensitivity.reversible import ReversibleAdjoint
from .sensitivity.settings import BacksolveAdjoint, DirectBackprop, InterpolatingAdjoint
from .solvers import Dopri5
from .solvers.base import AbstractSolver, ExternalSolver
from .solvers.multistep import Nordsieck
from .solvers.reversible import Reversible


def solve(
    func: Callable,
    y0: State,
    t: torch.Tensor,
    *,
    solver: AbstractSolver | ExternalSolver | None = None,
    controller: AbstractController | None = None,
    sensitivity: AbstractSensitivity | None = None,
    backend: str | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    event_fn: Callable | None = None,
    jump_t: Sequence[float] = (),
    step_t: Sequence[float] = (),
    t_dtype: torch.dtype | None = None,
    throw: bool = True,
    event_t_end: float | None = None,
    per_sample_events: bool = False,
    event: Event | tuple[Event, ...] | None = None,
) -> Solution:
    """Solve dy/dt = func(t, y) from y(t[0]) = y0 and return the states at every time in ``t``.

    Args:
        func: the vector field ``func(t, y)``; ``y`` is a tensor of any shape or a tuple of tensors.
        y0: initial state (tensor or tuple of tensors, float32 or float64).
        t: 1-D tensor of output times, strictly increasing or strictly decreasing.
        solver: a solver object (e.g. ``hn.Tsit5()``); default Dopri5.
        controller: ``hn.PIDController(...)`` for adaptive pairs, ``hn.ConstantStepSize(...)`` for fixed
            steps; default PIDController() or ConstantStepSize() to match the solver.
        sensitivity: how gradients are computed: ``hn.DirectBackprop()`` (default), ``hn.BacksolveAdjoint()``,
            ``hn.InterpolatingAdjoint()``; on the Julia backend also GaussAdjoint/QuadratureAdjoint.
        backend: "torch" or "julia"; default the process default (``hn.set_backend``).
        adjoint_params: tensors to differentiate with the adjoint (default: func.parameters()).
        event_fn: terminal event ``event_fn(t, y)``; the solve stops where it changes sign, and
            ``sol.t_final`` holds the event time and ``sol.ys`` the states at t[0] and the event.
        jump_t, step_t: times where steps must end (jump_t also re-evaluates the field after the jump).
        t_dtype: dtype of the time tensor handed to ``func`` (default: the state's real dtype, as
            torchdiffeq; the loops keep the time as float64 internally whatever it is).
        throw: raise SolverError on failure (default); False returns the solution with its status and NaN
            at the times not reached.
        event_t_end: with ``event_fn``, the time where the event search gives up (NO_EVENT); without
            it the search ends after ``max_num_steps`` steps (100,000 unless set).
        per_sample_events: ``event_fn`` returns one value per sample (the batch shape) and each
            sample stops at its own first root (see :func:`odeint_event`); ``sol.t_final`` then has
            the batch shape and ``sol.event_fired`` says which samples fired.
        event: a non-terminal :class:`~hybrid_node.Event` (or a tuple of them): every crossing is recorded in
            ``sol.events`` (time, element index, state) without stopping, and its ``on_event`` jump
            is applied where given (the solver restarts there). Events take DirectBackprop,
            BacksolveAdjoint or InterpolatingAdjoint (adjoint solves between the events); on the
            Julia backend they run forwards only (:mod:`hybrid_node.julia.events`).

    Returns:
        Solution with ``ys`` of shape (len(t), *y0.shape) (tuple for tuple states), ``stats`` and ``status``.

    Raises:
        ValueError, TypeError: invalid inputs (the message says how to fix them).
        BackendError: a combination the backend cannot do; JuliaNotAvailableError: no usable Julia.
        SolverError: the solve failed (max steps, step-size underflow, non-finite state).
    """
    solver = Dopri5() if solver is None else solver
    if not isinstance(solver, (AbstractSolver, ExternalSolver)):
        raise TypeError(f"solver must be a solver object such as hn.Tsit5(), got {type(solver).__name__}.")
    if controller is None:
        controller = PIDController() if solver.adaptive else ConstantStepSize()
    if not isinstance(controller, AbstractController):
        raise TypeError(
            f"controller must be hn.PIDController(...) or hn.ConstantStepSize(...), got {type(controller).__name__}."
        )
    if not solver.adaptive and controller.adaptive:
        raise ValueError(f"solver {solver.name!r} has no error estimate; use ConstantStepSize(step_size=...).")
    check_t_dtype(t_dtype)  # here too: the traced loop below does not build a Problem
    if event_fn is not None and not callable(event_fn):  # else it fails at the first event check
        raise TypeError(f"event_fn must be callable as event_fn(t, y), got {type(event_fn).__name__}.")
    if inside_transform():
        _check_transform_settings(resolve_backend(backend), sensitivity, solver)
    elif forward_mode_active():
        has_events = event_fn is not None or event is not None or per_sample_events
        why = _without_forward_mode(resolve_backend(backend), sensitivity, solver, t, has_events)
        check_forward_mode(func, y0, t, adjoint_params, why)
    if resolve_backend(backend) == "julia":
        if per_sample_events:
            raise BackendError("per-sample events are only available on the torch backend; use backend='torch'.")
        events = {"event": event, "event_fn": event_fn, "event_t_end": event_t_end, "throw": throw}
        return _solve_julia(func, y0, t, solver, controller, sensitivity, adjoint_params, events)
    # the torch loops take a Nordsieck method's own step in place of the PID formula's (the Julia backend
    # refuses every setting it does not take above)
    refuse_inert_step_settings(solver.name, inert_controller_settings(solver, controller))
    refuse_replaced_tolerances(solver, controller)
    if isinstance(solver, Nordsieck) and isinstance(controller, ConstantStepSize):
        # the fixed-step loop neither rescales their Nordsieck array to its step nor lets them raise the
        # order: adams and lsoda came out 1.41 off on y' = Ay over [0, 2] with step 0.05, bdf at first order
        raise ValueError(
            f"method {solver.name!r} chooses its own step size and order (Nordsieck form) and cannot take "
            "ConstantStepSize's fixed steps; bound its steps with hn.PIDController(first_step=h, max_step=h), "
            "or use a fixed-step multistep method (hn.AdamsBashforthMoulton(), method 'fixed_adams')."
        )
    sensitivity = DirectBackprop() if sensitivity is None else sensitivity
    if not isinstance(sensitivity, AbstractSensitivity):
        raise TypeError(f"sensitivity must be a sensitivity settings object, got {type(sensitivity).__name__}.")
    if isinstance(solver, ExternalSolver):
        return _solve_external(
            func, y0, t, solver, controller, sensitivity, adjoint_params, event_fn, t_dtype, jump_t, step_t, throw
        )
    if in_users_graph(func, y0):
        why = _untraceable(func, solver, controller, y0, throw, event_fn, event, per_sample_events, jump_t, step_t)
        if not why:
            # a tracer cannot follow the host loop's reads: the solve is traced as one while_loop
            state = cast(torch.Tensor, y0)
            if isinstance(controller, ConstantStepSize):
                ys = odeint_graph_fixed(func, state, t, solver, controller, t_dtype)
            else:
                ys = odeint_graph(func, state, t, solver, cast(PIDController, controller), t_dtype)
            return Solution(ts=t, ys=ys, stats=Stats(), status=Status.SUCCESS)
        if torch.compiler.is_exporting():
            raise ValueError(
                f"torch.export traces a solve as one loop, which this solve cannot be ({why}): use dopri5, tsit5, "
                "bosh3 or dopri8 with a PIDController of float tolerances, or an explicit fixed-step method "
                "(rk4, euler, midpoint, ...) without perturb or grid_constructor, on a tensor state, without "
                "events, jump_t/step_t or throw=False; or run this solve outside torch.export."
            )
    # inside the user's torch.compile the host loop runs as it runs untraced, behind a graph break
    # (traced, its host numbers became symbolic: other steps, torch's guard errors)
    host = _solve_host_untraced if traced() else _solve_host
    events = dict(event_fn=event_fn, event_t_end=event_t_end, per_sample_events=per_sample_events, event=event)
    # under torch.autocast only the field runs in the autocast dtype: the solver's own products stay in y0's
    with field_autocast(func, y0) as field:
        return host(
            field, y0, t, solver, controller, sensitivity, adjoint_params, jump_t, step_t, t_dtype, throw, **events
        )


def _solve_host(
    func, y0, t, solver, controller, sensitivity, adjoint_params, jump_t, step_t, t_dtype, throw, *, event_fn,
    event_t_end, per_sample_events, event,
) -> Solution:  # fmt: skip
    """:func:`solve` with the host loops (its arguments checked, the backend the torch one)."""
    if isinstance(controller, PIDController):
        solver = solver.with_tolerances(controller.rtol, controller.atol)  # implicit solvers' Newton test
    if event_t_end is not None and event_fn is None:
        raise ValueError("event_t_end ends an event search; it needs an event_fn (or leave it out).")
    problem = make_problem(
        func, y0, t, solver, controller, t_dtype=t_dtype, jump_t=jump_t, step_t=step_t, event_t_end=event_t_end
    )
    warn_unsupported_callbacks(func, solver.name, callbacks_called(solver, controller))
    if (event is not None or per_sample_events) and problem.t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "gradients with respect to t are not available with event=... or per_sample_events; pass t.detach() "
            "(t0.detach() to odeint_event); the event times themselves carry their gradients."
        )
    if event is not None:
        several = event if isinstance(event, tuple) else (event,)
        if not several or not all(isinstance(ev, Event) for ev in several):
            raise TypeError(f"event must be an hn.Event(fn, ...) or a tuple of them, got {event!r}.")
        if event_fn is not None or per_sample_events:
            raise ValueError("give either event (non-terminal, hn.Event) or event_fn (terminal), not both.")
        adjoint = _event_adjoint(sensitivity, "solve(event=...)")
        return solve_with_events(problem, event, throw=throw, adjoint=adjoint, adjoint_params=adjoint_params)
    if per_sample_events:
        if event_fn is None:
            raise ValueError("per_sample_events needs an event_fn that returns one value per sample.")
        adjoint = _event_adjoint(sensitivity, "per-sample events")
        return solve_sample_events(problem, event_fn, throw=throw, adjoint=adjoint, adjoint_params=adjoint_params)
    if event_fn is not None:
        event_fn = _nonempty_event(event_fn)
    sol = sensitivity.solve(problem, adjoint_params, event_fn=event_fn, throw=throw)
    if _records_compiled_steps(solver, sensitivity):
        # torch's own error for a second backward came from its engine, naming neither the option nor a fix
        sol.ys = first_order_only(sol.ys)
    return sol


def _records_compiled_steps(solver, sensitivity) -> bool:
    """Whether autograd records a solve's compiled step attempts directly (``options={'compile': True}``
    with plain direct backprop): the one gradient path whose second backward reaches torch.compile's
    first-order backward (the adjoints and checkpointing refuse ``create_graph`` themselves, and
    transforms and forward mode run eager steps)."""
    return (
        getattr(solver, "compile", False)
        and type(sensitivity) is DirectBackprop
        and sensitivity.checkpoints is None
        and not inside_transform()
        and not forward_mode_active()
    )


def _nonempty_event(event_fn: Callable) -> Callable:
    """``event_fn`` refusing an empty value: no element can change sign, so the search ran to its step
    cap (100,000 steps unless set) before it failed with NO_EVENT.

    Args:
        event_fn: the terminal event function.

    Returns:
        ``event_fn`` with each value checked (``numel`` only: no device sync).

    Raises (when called):
        ValueError: ``event_fn`` returned a tensor with no elements.
    """

    def checked(t: torch.Tensor, y: State) -> Any:
        g = event_fn(t, y)
        if isinstance(g, torch.Tensor) and g.numel() == 0:
            raise ValueError(
                f"event_fn returned an empty tensor (shape {tuple(g.shape)}), which has no sign to change, so "
                "no event could ever stop the solve; return at least one value, e.g. y[..., 0] - 1.0."
            )
        return g

    return checked


def untraced(fn: Callable) -> Callable:
    """``fn``, run by the interpreter when a user's ``torch.compile`` reaches it (a graph break).

    ``torch.compiler.disable(fn)`` imports the compiler at once (~0.7 s, which every first use of
    the library paid); torch's lazy form of it imports the compiler at the first call. Either is
    used where the other is missing (another torch version).
    """
    lazy = getattr(torch, "_disable_dynamo", None)
    return lazy(fn, recursive=True) if lazy is not None else torch.compiler.disable(fn, recursive=True)


#: :func:`_solve_host` as the user's torch.compile runs it (:func:`untraced`)
_solve_host_untraced = untraced(_solve_host)


def _check_transform_settings(backend: str, sensitivity, solver=None) -> None:
    """Refuse, with the fix, what a ``torch.func`` transform cannot run (:mod:`hybrid_node.loop.transformed`)."""
    if backend == "julia":
        raise BackendError(
            "torch.func transforms (vmap, grad, jacrev, ...) run on the torch backend; use backend='torch'."
        )
    if isinstance(solver, ExternalSolver):
        raise ValueError(
            f"{solver.name} solves with scipy on host arrays, which torch.func transforms (vmap, grad, jacrev, "
            "...) cannot follow; use an explicit torch method (dopri5, tsit5, rk4, ...) inside the transform, or "
            "solve outside it."
        )
    if not (sensitivity is None or (isinstance(sensitivity, DirectBackprop) and sensitivity.checkpoints is None)):
        raise ValueError(
            f"inside torch.func transforms (vmap, grad, jacrev, ...) gradients come from direct backpropagation; "
            f"{type(sensitivity).__name__} has a custom backward pass the transforms cannot follow. Use odeint "
            "(DirectBackprop()) inside the transform, or odeint_adjoint outside it."
        )


def _without_forward_mode(backend: str, sensitivity, solver, t, events: bool) -> str | None:
    """What in this solve cannot carry a forward-mode tangent (None: it is carried through the steps)."""
    if events:  # the event time's derivative (implicit function theorem) is a reverse-mode rule only
        return "an event solve (the event time's derivative is computed in reverse mode only)"
    if isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled():
        return "a solve whose t requires grad (that rule is reverse-mode only: pass t.detach())"
    if backend == "julia":
        return "the Julia backend (it solves outside torch)"
    if isinstance(solver, ExternalSolver):
        return f"method {solver.name!r} (it solves with scipy on host arrays)"
    if sensitivity is None or (isinstance(sensitivity, DirectBackprop) and sensitivity.checkpoints is None):
        return None
    name = "DirectBackprop(checkpoints=...)" if isinstance(sensitivity, DirectBackprop) else type(sensitivity).__name__
    return f"{name} (a custom backward pass with no forward-mode rule)"


def _event_adjoint(sensitivity: AbstractSensitivity, what: str) -> AbstractSensitivity | None:
    """The adjoint settings of an event solve (None: direct backpropagation), or a clear refusal."""
    if isinstance(sensitivity, DirectBackprop) and sensitivity.checkpoints is None:
        return None
    if isinstance(sensitivity, (BacksolveAdjoint, InterpolatingAdjoint)):
        return sensitivity
    raise ValueError(
        f"{what} gets gradients by hn.DirectBackprop() (without checkpoints), hn.BacksolveAdjoint() or "
        f"hn.InterpolatingAdjoint(), not by {sensitivity!r}."
    )


def in_users_graph(func, y0) -> bool:
    """Whether this solve is being traced into the caller's own graph, where it runs as
    :func:`hybrid_node.loop.whole.odeint_graph`: always under ``torch.export``; under ``torch.compile``
    (e.g. of a model holding an ODE block) when no gradient can flow through it. A differentiated
    solve keeps the host loop, run untraced behind a graph break: autograd through the traced
    ``while_loop`` is not trusted (docs/compiled_solve.md)."""
    if not traced():
        return False
    if torch.compiler.is_exporting():
        return True
    if not torch.is_grad_enabled():
        return True
    if not isinstance(func, torch.nn.Module):  # its closure may hold tensors that require grad
        return False
    tensors = [*func.parameters(), *(y0 if isinstance(y0, (tuple, list)) else (y0,))]
    return not any(isinstance(x, torch.Tensor) and x.requires_grad for x in tensors)


def _untraceable(func, solver, controller, y0, throw, event_fn, event, per_sample_events, jump_t, step_t) -> str:
    """Why :func:`hybrid_node.loop.whole.odeint_graph` cannot stand for this solve in a traced program
    ("" when it can: it runs the same steps as the host loop and returns the same states)."""
    tolerances = (controller.rtol, controller.atol) if isinstance(controller, PIDController) else ()
    if type(controller) is ConstantStepSize:
        method = traceable_fixed(solver, controller)
    elif type(controller) is PIDController:
        method = "" if getattr(solver, "supports_whole_solve", False) else f"the method {solver.name!r}"
    else:
        method = f"the controller {type(controller).__name__}"
    reasons = {
        method: bool(method),
        "per-sample step control": getattr(controller, "per_sample", False),
        "tolerances that are tensors": any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in tolerances),
        "a tuple state": not isinstance(y0, torch.Tensor),
        "throw=False": not throw,
        "events": event_fn is not None or event is not None or per_sample_events,
        "jump_t/step_t": bool(jump_t) or bool(step_t),
        # host Python between step attempts, which the traced loop has not (it skipped them silently)
        "step callbacks": any(hasattr(func, name) for name in CALLBACK_NAMES),
    }
    return ", ".join(reason for reason, applies in reasons.items() if applies)


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


def odeint(
    func: Callable,
    y0: State,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    event_fn: Callable | None = None,
    backend: str | None = None,
) -> Any:  # a tensor, a tuple state, or (event_t, states) with event_fn
    """Integrate an ODE; a drop-in replacement for ``torchdiffeq.odeint``.

    Args:
        func: ``func(t, y)`` returning dy/dt (tensor, or tuple of tensors for tuple states).
        y0: initial state, a tensor of any shape or a tuple of tensors.
        t: 1-D tensor of output times, strictly increasing or strictly decreasing.
        rtol, atol: relative and absolute tolerances (floats, or tensors broadcastable to the state).
        method: solver name (default "dopri5"); ``hybrid_node.METHODS`` says which backend has which.
            Torch backend: <torch methods>. Julia backend (any case, also OrdinaryDiffEq's names):
            <julia methods>.
        options: a dict of method options (torchdiffeq's names: step_size, first_step, max_num_steps,
            jump_t, ...); with ``event_fn`` also ``event_t_end``, the time where the event search gives up.
        event_fn: terminal event; then returns ``(event_t, solution)`` as torchdiffeq does.
        backend: "torch" or "julia"; default the process default.

    Returns:
        Tensor of shape (len(t), *y0.shape) (tuple for tuple states); with ``event_fn`` the pair
        (event time, states at t[0] and the event time).

    Raises:
        ValueError: an unknown method or option (the message lists the valid ones), or an invalid value.
        TypeError: an argument of the wrong type, e.g. ``options`` that is no dict, a ``y0`` that is
            not floating point or complex, or a ``func`` returning another dtype than the state's.
        BackendError: a method the backend lacks (``method="vern7"`` on the torch backend) or a
            combination it cannot do; JuliaNotAvailableError: the Julia backend without Julia.
        SolverError: the solve failed (max steps, step-size underflow, non-finite state).
    """
    return _odeint(func, y0, t, rtol, atol, method, options, event_fn, backend, None, None)


# the method names in odeint's docstring come from the registry, like every other list of them
assert odeint.__doc__ is not None
odeint.__doc__ = odeint.__doc__.replace("<torch methods>", method_list("torch")).replace(
    "<julia methods>", method_list("julia")
)


def _odeint(func, y0, t, rtol, atol, method, options, event_fn, backend, sensitivity, adjoint_params):
    """What odeint and odeint_adjoint share: map the torchdiffeq-style call to a backend's solve."""
    check_options(options, "options")
    if resolve_backend(backend) == "julia":
        if inside_transform():
            _check_transform_settings("julia", sensitivity)
        if event_fn is not None:
            julia_options = dict(options or {})
            t_end = julia_options.pop("event_t_end", None)
            sol = julia_events.solve_events(
                func,
                y0,
                t,
                method=method,
                rtol=rtol,
                atol=atol,
                options=julia_options,
                sensitivity=sensitivity,
                adjoint_params=adjoint_params,
                event_fn=event_fn,
                event_t_end=t_end,
            )
            return sol.t_final, sol.ys
        return julia_backend.solve(
            func,
            y0,
            t,
            method=method,
            rtol=rtol,
            atol=atol,
            options=dict(options or {}),
            sensitivity=sensitivity,
            adjoint_params=adjoint_params,
        ).ys
    solver, controller, extras = build_solver(method, options, rtol, atol)
    sol = solve(
        func,
        y0,
        t,
        solver=solver,
        controller=controller,
        sensitivity=sensitivity,
        backend="torch",
        adjoint_params=adjoint_params,
        event_fn=event_fn,
        jump_t=extras.get("jump_t", ()),
        step_t=extras.get("step_t", ()),
        t_dtype=extras.get("t_dtype"),
        event_t_end=extras.get("event_t_end"),
    )
    return (sol.t_final, sol.ys) if event_fn is not None else sol.ys


def odeint_event(
    func: Callable,
    y0: State,
    t0: float | torch.Tensor,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    odeint_interface: Callable = odeint,
    t_end: float | None = None,
    per_sample: bool | None = None,
    throw: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Integrate from ``t0`` until ``event_fn(t, y)`` changes sign, as ``torchdiffeq.odeint_event``.

    With ``per_sample=True`` the leading dimensions of the state are a batch, ``event_fn`` returns
    one value per sample (a tensor of the batch shape) and each sample stops at its own first root:
    the returned event time has the batch shape and ``solution[-1]`` holds each sample's state at
    its own event time. The batch shares its steps; after each step the samples whose sign changed
    are located on the dense output by a bisection vectorised over them and frozen (their field is
    zero from then on) while the others go on (:mod:`hybrid_node.loop.events`). While an event is
    located, ``event_fn`` receives ``t`` as a tensor of the batch shape (each sample's own time), so
    build it with broadcasting operations. Gradients of every event time and event state with
    respect to y0 and parameters come by direct backpropagation (``odeint_interface=odeint``) or the
    adjoint (``odeint_interface=odeint_adjoint``, which then also takes its ``adjoint_*`` arguments)
    plus the implicit function theorem. This is not ``options={'per_sample': True}``, which is
    per-sample step-size control.

    The search is bounded: it gives up at ``t_end`` when given, else after ``max_num_steps`` steps
    (``options={'max_num_steps': ...}``; 100,000 unless set), and then raises a SolverError with
    status NO_EVENT that says where it stopped ("event not found before t=...").

    Args:
        func, y0: the field and initial state.
        t0: start time (a float, a 0-d tensor or a one-element tensor).
        event_fn: terminal event function; it must return a tensor built from ``t`` and ``y``. One
            without a derivative along the solution (an integer tensor such as ``(y > 1).long()``,
            or ``torch.sign(...)``) is located as any other, and its event time has a zero
            gradient, as in torchdiffeq (return e.g. ``y - 1`` for the event time's gradient);
            ``per_sample=True`` treats each sample's event the same way.
        reverse_time: integrate towards decreasing time.
        odeint_interface: ``odeint`` or ``odeint_adjoint``.
        t_end: the time where the search gives up (after t0; before it with ``reverse_time``);
            passed to the interface as ``options['event_t_end']``.
        per_sample: one event per sample of the batch (see above); default False.
        throw: with ``per_sample``, False reports samples whose event was not found with a NaN
            event time (their ``solution[-1]`` is the state where the search stopped) instead of
            raising; use :func:`solve` with ``per_sample_events=True`` for the status per sample.
        **kwargs: passed to the interface (rtol, atol, method, options, ...).

    Returns:
        ``(event_t, solution)``: the event time and the states at t0 and at the event.

    Raises:
        SolverError: no event was found (status NO_EVENT), or the solve failed.
        TypeError, ValueError: invalid inputs, e.g. an ``event_fn`` that returns a Python float, or a
            ``t0`` of more than one element.
    """
    if t_end is not None:
        options = dict(check_options(kwargs.get("options"), "options"))
        options["event_t_end"] = t_end  # checked (a number after t0) when the problem is made
        kwargs["options"] = options
    try:
        t0 = torch.as_tensor(t0, dtype=torch.float64 if not isinstance(t0, torch.Tensor) else t0.dtype)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(  # noqa: B904 - torch's "new(): invalid data type 'str'" adds nothing
            f"t0 must be one start time (a float, a 0-d tensor or a one-element tensor), got {type(t0).__name__} "
            f"{t0!r}."
        )
    if bool_or_complex(t0) is not None:
        raise TypeError(f"t0 must be a real start time, got a {t0.dtype} tensor.")
    if not t0.is_floating_point():
        # an integer tensor is a number like the Python int 0: float64 (with t0 + 1.0 it would make a float32
        # grid, and round the event time to float32 for a float64 state)
        t0 = t0.to(torch.float64)
    if t0.numel() != 1:  # else t0 and t0 + 1 make a grid the time check misreads as out of order
        raise ValueError(
            f"t0 must be one start time (a float, a 0-d tensor or a one-element tensor), got shape "
            f"{tuple(t0.shape)}; the event search runs from t0 until event_fn changes sign."
        )
    t0 = t0.reshape(-1)
    direction = -1.0 if reverse_time else 1.0
    t = torch.cat([t0, t0.detach() + direction])
    if per_sample:
        return _odeint_sample_events(func, y0, t, event_fn, odeint_interface, throw is not False, kwargs)
    if throw is False:
        raise ValueError("throw=False is for per_sample=True; a single event reports failures by SolverError.")
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)


def _odeint_sample_events(func, y0, t, event_fn, odeint_interface, throw, kwargs):
    """``odeint_event(..., per_sample=True)``: the torchdiffeq-style call mapped to per-sample events."""
    allowed = {"rtol", "atol", "method", "options", "backend"}
    if odeint_interface is odeint:
        sensitivity: AbstractSensitivity = DirectBackprop()
    elif odeint_interface is odeint_adjoint:
        sensitivity = _backsolve_settings(kwargs)
        allowed |= {"adjoint_rtol", "adjoint_atol", "adjoint_method", "adjoint_options", "adjoint_params"}
        if kwargs.get("adjoint_params") is None and not isinstance(func, torch.nn.Module):
            raise ValueError(
                "func is not an nn.Module, so its parameters are unknown: pass adjoint_params=(...) with "
                "the tensors to differentiate (an empty tuple if none)."
            )
    else:
        raise ValueError("per_sample events take odeint_interface=hn.odeint or hn.odeint_adjoint.")
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"odeint_event got unexpected arguments {sorted(unknown)}.")
    if resolve_backend(kwargs.get("backend")) != "torch":
        raise BackendError("per-sample events are only available on the torch backend; use backend='torch'.")
    options = check_options(kwargs.get("options"), "options")
    solver, controller, extras = build_solver(
        kwargs.get("method"), options, kwargs.get("rtol", 1e-7), kwargs.get("atol", 1e-9)
    )
    sol = solve(
        func,
        y0,
        t,
        solver=solver,
        controller=controller,
        backend="torch",
        sensitivity=sensitivity,
        adjoint_params=kwargs.get("adjoint_params"),
        event_fn=event_fn,
        jump_t=extras.get("jump_t", ()),
        step_t=extras.get("step_t", ()),
        t_dtype=extras.get("t_dtype"),
        throw=throw,
        event_t_end=extras.get("event_t_end"),
        per_sample_events=True,
    )
    return sol.t_final, sol.ys


def _backsolve_settings(kwargs: Mapping[str, Any]) -> BacksolveAdjoint:
    """``odeint_adjoint``'s backward settings from its keyword arguments, as odeint_adjoint reads them."""
    _check_adjoint_options(
        kwargs.get("method"), kwargs.get("options"), kwargs.get("adjoint_method"), kwargs.get("adjoint_options")
    )
    adj_opts = dict(check_options(kwargs.get("adjoint_options"), "adjoint_options"))
    norm = adj_opts.pop("norm", "default")
    if adj_opts.pop("reversible", False):
        raise ValueError("the reversible adjoint does not support events; drop adjoint_options['reversible'].")
    return BacksolveAdjoint(
        rtol=kwargs.get("adjoint_rtol"),
        atol=kwargs.get("adjoint_atol"),
        method=kwargs.get("adjoint_method"),
        options=adj_opts or None,
        norm=norm,
    )


@dataclasses.dataclass
class DenseSolution:
    """A continuous solution y(t) over [t0, t1] (callable), from :func:`odeint_dense`.

    Call with a scalar time or a 1-D tensor of times inside the solved interval. A query past an end
    by no more than its dtype's rounding (float32 ``0.1`` is 0.10000000149) is taken as that end.
    The states carry gradients with respect to y0 and the field's parameters; of a solve whose step
    attempts ran compiled (``compile=True``) first-order ones only (a second backward pass is refused
    with the fix, :mod:`hybrid_node._double_backward`). Query times that require grad get the
    interpolant's own slope dy/dt as their gradient (first order; a backward pass with
    ``create_graph=True`` through them is refused with the fix, :mod:`hybrid_node._dense_time`).
    """

    problem: Problem
    segments: list
    stats: Any
    #: whether the segments were made by compiled step attempts that autograd recorded
    first_order: bool = False
    #: the solve's state at its end time (flat), the read there; None: the last interpolant's value
    end: torch.Tensor | None = None

    def __post_init__(self):
        self._starts = [s.t0 for s in self.segments]

    def _node(self, i: int, s: float) -> torch.Tensor | None:
        """The step's own state where ``s`` (solver time, in segment ``i``) is a step time, else None.

        A read there returns the state the solver stepped from (as odeint returns it), not the
        interpolant's sum, which some interpolants reproduce only to rounding: dopri5's polynomial at
        its step's end, the Nordsieck one (adams, bdf, lsoda) at its step's start.
        """
        seg = self.segments[i]
        if s == seg.t1 and i == len(self.segments) - 1:
            return self.end if self.end is not None else seg.interpolant(1.0)
        if s != seg.t0:
            return None
        start = getattr(seg.interpolant, "y0", None)
        if isinstance(start, torch.Tensor):  # the state the loop passed to the step
            return start
        # the previous step's end (there Nordsieck's sum is its first term alone), or the initial state
        return self.segments[i - 1].interpolant(1.0) if i > 0 else self.problem.y0

    def __call__(self, t) -> State:
        """The solution at ``t``.

        Args:
            t: a time (float or 0-d tensor) or a 1-D tensor of times in the solved interval.

        Returns:
            The state at ``t`` (for a 1-D ``t``, stacked along a new leading dimension).

        Raises:
            ValueError: a time outside the solved interval by more than its dtype's rounding (NaN
                included), or ``t`` of more than one dimension.
            TypeError: ``t`` of bool or complex dtype.
        """
        query_dtype = t.dtype if isinstance(t, torch.Tensor) and t.is_floating_point() else torch.float64
        # a tensor stays itself, with its graph; numpy reads Python floats as float64 (torch: the default dtype)
        given = t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t))
        if given.dtype == torch.bool or given.is_complex():  # float64 would take True as 1, drop an imaginary part
            raise TypeError(f"t must be real times (floats or integers), got dtype {given.dtype}.")
        tt = given.to(torch.float64)
        if tt.dim() > 1:  # the states would come back stacked along one flattened dimension
            raise ValueError(
                f"t must be a scalar or a 1-D tensor of times, got shape {tuple(tt.shape)}; pass t.reshape(-1) "
                "and reshape the states."
            )
        scalar = tt.dim() == 0
        if tt.numel() == 0:  # no times, no states: (0, *y0.shape), as a read of n times gives (n, ...)
            y0 = self.problem.y0
            return self.problem.unflatten(torch.empty((0,) + tuple(y0.shape), dtype=y0.dtype, device=y0.device))
        lo, hi = self.segments[0].t0, self.segments[-1].t1
        # a time rounded to the query's dtype lies within half its eps (relative) of the time meant, so
        # one eps of the interval's scale takes an end given in float32 (or bfloat16) as that end
        slack = max(1e-12 * max(1.0, abs(lo), abs(hi)), torch.finfo(query_dtype).eps * max(abs(lo), abs(hi)))
        queries: list[float] = []  # solver time, clamped into its segment
        groups: dict[int, list[int]] = {}  # segment -> positions of its queries
        for x in tt.reshape(-1).tolist():
            s = -x if self.problem.reverse else x
            if not (lo - slack <= s <= hi + slack):
                ends = (-hi, -lo) if self.problem.reverse else (lo, hi)
                raise ValueError(f"t={x} is outside the solved interval [{ends[0]!r}, {ends[1]!r}].")
            i = min(max(bisect.bisect_right(self._starts, s) - 1, 0), len(self.segments) - 1)
            queries.append(min(max(s, self.segments[i].t0), self.segments[i].t1))
            groups.setdefault(i, []).append(len(queries) - 1)
        # one batched evaluation per step's dense output (as odeint's outputs), not one per query, which
        # costs ~80 us each, most of it Python and small kernels
        rows: list[torch.Tensor | None] = [None] * len(queries)  # in the order asked
        where: list[int] = []  # the query of each row of the segments' evaluations, in their order
        for i, js in groups.items():
            inner = []
            for j in js:
                rows[j] = self._node(i, queries[j])
                if rows[j] is None:
                    inner.append(j)
            if inner:
                for j, row in zip(inner, self.segments[i].many([queries[j] for j in inner])):
                    rows[j] = row
            where.extend(js)
        ys = torch.stack(cast(list[torch.Tensor], rows))
        if isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled():
            ys = ys + time_slope_term(tt.reshape(-1).to(ys.device), self._slopes(groups, queries, where, ys))
        if self.first_order:
            # the interpolant's coefficients come from compiled stages: torch's own error for a second
            # backward came from its engine, naming neither the option nor a fix
            ys = first_order_only(ys)
        ys = self.problem.unflatten(ys)
        if scalar:
            return tuple(y[0] for y in ys) if isinstance(ys, tuple) else ys[0]
        return ys

    def _slopes(self, groups: dict[int, list[int]], queries: list[float], where: list[int], ys: torch.Tensor):
        """dy/dt in the caller's time at each query, rows in the order asked, shape ``ys.shape``.

        The interpolant's theta-derivative over its step (Hairer, Nørsett, Wanner, Solving ODEs I,
        2nd ed., Section II.6); negated for a backward-in-time solve, whose solver time is -t.
        """
        rows = []
        for i, js in groups.items():
            seg = self.segments[i]
            h = seg.t1 - seg.t0
            thetas = [1.0 if queries[j] == seg.t1 else (queries[j] - seg.t0) / h for j in js]
            idx = torch.zeros(len(js), dtype=torch.long, device=ys.device)
            rows.append(seg.interpolant.sample_slopes(thetas, idx, 1) / h)
        slopes = torch.cat(rows).reshape(ys.shape)
        order = sorted(range(len(where)), key=where.__getitem__)
        slopes = slopes[torch.tensor(order, device=ys.device)]
        return -slopes if self.problem.reverse else slopes


def odeint_dense(
    func: Callable,
    y0: State,
    t0: float | torch.Tensor,
    t1: float | torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> DenseSolution:
    """Solve on [t0, t1] and return the continuous solution (the solver's dense output) as a callable.

    Args:
        func: ``func(t, y)`` returning dy/dt.
        y0: initial state (a tensor or a tuple of tensors).
        t0, t1: the interval's ends (t1 < t0 solves backwards in time).
        rtol, atol, method, options: as :func:`odeint` (torch backend).

    Returns:
        DenseSolution; ``sol(t)`` gives y(t) for any t in the interval, with gradients (direct).

    Raises:
        ValueError: unknown method or options, invalid input (e.g. t1 equal to t0), ``scipy_solver``
            (no dense output here), ``device_loop`` (the dense solve runs the host loop), or a call inside a
            ``torch.func`` transform (no dense output there).
        TypeError, BackendError: as for :func:`odeint`.
        SolverError: the solve failed.
    """
    solver, controller, extras = build_solver(method, options, rtol, atol)
    if isinstance(controller, PIDController) and controller.device_loop:
        # accepted, it changed nothing: dense output keeps every step on the host, so the host loop ran
        raise ValueError(
            "odeint_dense keeps every step for its dense output in the host loop, so device_loop has no effect "
            "there; drop it (hn.odeint takes it for the output times it returns)."
        )
    if isinstance(controller, PIDController) and not isinstance(solver, ExternalSolver):
        # the implicit solvers' Newton test at the solve's tolerances, as odeint's solve sets it: without
        # it kencarp4's steps differed from odeint's by 1e-8 at rtol 1e-6
        solver = solver.with_tolerances(controller.rtol, controller.atol)
    ends = [float(e.detach()) if isinstance(e, torch.Tensor) else float(e) for e in (t0, t1)]
    # named here: the grid check below would speak of a tensor t the caller never passed
    if not all(math.isfinite(e) for e in ends) or ends[0] == ends[1]:
        raise ValueError(f"odeint_dense needs finite t0 and t1 that differ, got t0={ends[0]!r}, t1={ends[1]!r}.")
    if inside_transform():
        # the solve refuses dense output there; under a forward-mode transform (torch.func.hessian) the time
        # tensor made here was refused first, with advice to pass t from outside that no caller can follow
        raise ValueError(
            "odeint_dense has no dense output inside torch.func transforms (vmap, grad, jacrev, hessian, ...): call "
            "it outside the transform and differentiate with torch.autograd (create_graph=True for second "
            "derivatives), or inside the transform use hn.odeint at the output times you need."
        )
    t = torch.tensor(ends, dtype=torch.float64)
    problem = make_problem(
        func,
        y0,
        t,
        solver,
        controller,
        t_dtype=extras.get("t_dtype"),
        jump_t=extras.get("jump_t", ()),
        step_t=extras.get("step_t", ()),
    )
    if isinstance(solver, ExternalSolver):
        raise ValueError(f"odeint_dense needs a torch solver; {solver.name} has no dense output here.")
    integration = integrate(problem, problem.term(), problem.y0, problem.ts, dense=True)
    assert integration.segments is not None  # dense=True
    first_order = bool(_records_compiled_steps(solver, DirectBackprop()))
    end = integration.ys[-1]  # the state at t1 as the solve returns it (the interpolant's sum may round)
    return DenseSolution(problem, integration.segments, integration.stats, first_order, end)


def odeint_adjoint(
    func: Callable,
    y0: State,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    event_fn: Callable | None = None,
    adjoint_rtol: float | torch.Tensor | None = None,
    adjoint_atol: float | torch.Tensor | None = None,
    adjoint_method: str | None = None,
    adjoint_options: Mapping[str, Any] | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    backend: str | None = None,
) -> Any:  # a tensor, a tuple state, or (event_t, states) with event_fn
    """``odeint`` with gradients by the adjoint method (O(1) memory), as ``torchdiffeq.odeint_adjoint``.

    Args:
        adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options: settings of the backward solve
            (default: the forward ones); ``adjoint_options={"norm": "seminorm"}`` leaves the
            parameter-gradient channels out of the backward error norm; ``{"norm": callable}`` is
            called on the tuple ``(t, *y, *adj_y, *adj_params)`` as in torchdiffeq (``t`` is a 0-d
            zero: hybrid_node's adjoint has no time channel). ``adjoint_options=
            {"reversible": True, "coupling": 0.999}`` instead wraps the explicit ``method`` in
            ``hn.Reversible`` and differentiates with ``hn.ReversibleAdjoint`` (exact discrete
            gradient, memory independent of the number of steps; McCallum & Foster 2024).
        adjoint_params: tensors to differentiate; required when ``func`` is not an ``nn.Module``.
        Other arguments as :func:`odeint`.

    Returns:
        As :func:`odeint`.

    Raises:
        ValueError: ``func`` is not an nn.Module and no ``adjoint_params`` were given; or an
            ``adjoint_method`` other than ``method`` with ``options`` but no ``adjoint_options`` (as
            torchdiffeq: options are method-specific, so the backward solve cannot take them); and
            what :func:`odeint` raises for the forward solve.
        TypeError, BackendError, SolverError: as for :func:`odeint`.
    """
    if adjoint_params is None and not isinstance(func, torch.nn.Module):
        raise ValueError(
            "func is not an nn.Module, so its parameters are unknown: pass adjoint_params=(...) with "
            "the tensors to differentiate (an empty tuple if none)."
        )
    _check_adjoint_options(method, options, adjoint_method, adjoint_options)
    adj_opts = dict(check_options(adjoint_options, "adjoint_options"))
    norm = adj_opts.pop("norm", "default")
    if not (callable(norm) or isinstance(norm, str)):
        raise ValueError(
            "adjoint_options['norm'] must be 'default', 'seminorm' or a callable on the tuple "
            "(t, *y, *adj_y, *adj_params)."
        )
    if adj_opts.pop("reversible", False):
        # McCallum & Foster 2024: the forward method made algebraically reversible, exact gradients in O(1) memory
        return _odeint_reversible(func, y0, t, rtol, atol, method, options, event_fn, backend, adj_opts, adjoint_params)
    sensitivity = BacksolveAdjoint(
        rtol=adjoint_rtol, atol=adjoint_atol, method=adjoint_method, options=adj_opts or None, norm=norm
    )
    return _odeint(func, y0, t, rtol, atol, method, options, event_fn, backend, sensitivity, adjoint_params)


def _check_adjoint_options(method, options, adjoint_method, adjoint_options) -> None:
    """Refuse, as ``torchdiffeq.odeint_adjoint`` does, forward ``options`` that cannot carry over to another
    backward method.

    Options are method-specific (a ``step_size`` of rk4, a ``solver`` of scipy_solver), so a backward
    solve by another method would run with none of them: a fixed-step one over the output times alone.
    The rule is torchdiffeq's, except that ``method=None`` counts as its default, "dopri5", and that
    options holding only ``event_t_end`` (where the event search gives up, which odeint_event's ``t_end``
    sets) count as none: that bound is no setting of a method.

    Raises:
        ValueError: ``adjoint_method`` differs from ``method``, ``options`` were given and
            ``adjoint_options`` were not.
    """
    forward = "dopri5" if method is None else method
    given = options is not None and set(options) != {"event_t_end"}
    if adjoint_method is not None and adjoint_method != forward and given and adjoint_options is None:
        raise ValueError(
            f"adjoint_method={adjoint_method!r} differs from method={forward!r}, so the backward solve cannot take "
            "the forward options (they are method-specific); pass adjoint_options as well (e.g. "
            "adjoint_options={'step_size': ...} for a fixed-step adjoint_method, or {} for its defaults), as "
            "torchdiffeq.odeint_adjoint requires."
        )


def _odeint_reversible(func, y0, t, rtol, atol, method, options, event_fn, backend, adj_opts, adjoint_params):
    """``odeint_adjoint(..., adjoint_options={"reversible": True})``: Reversible(method) with ReversibleAdjoint.

    Raises:
        ValueError: an option other than ``coupling`` in ``adjoint_options``, events, or a method that
            cannot be made reversible (implicit, partitioned, external).
        BackendError: the Julia backend was asked for.
    """
    unknown = set(adj_opts) - {"coupling"}
    if unknown:
        raise ValueError(f"Unknown adjoint_options {sorted(unknown)} with reversible=True; valid: ['coupling'].")
    if resolve_backend(backend) != "torch":
        raise BackendError("the reversible adjoint is available on the torch backend only; use backend='torch'.")
    if event_fn is not None:
        raise ValueError("the reversible adjoint does not support events; use odeint_adjoint without it.")
    solver, controller, extras = build_solver(method, options, rtol, atol)
    if not isinstance(solver, AbstractSolver):
        raise ValueError(f"method {method!r} runs its own loop and cannot be made reversible; use e.g. 'tsit5'.")
    reversible = Reversible(solver, coupling=float(adj_opts.get("coupling", 0.999)))
    sol = solve(
        func,
        y0,
        t,
        solver=reversible,
        controller=controller,
        sensitivity=ReversibleAdjoint(),
        backend="torch",
        adjoint_params=adjoint_params,
        t_dtype=extras.get("t_dtype"),
    )
    return sol.ys
