"""The core entry points ``solve``, ``odeint`` and ``odeint_adjoint``: validate once, build
solver/controller/sensitivity objects, dispatch on backend (``odeint_event`` and ``odeint_dense``,
built on them, are in :mod:`hybrid_node._odeint_event` and :mod:`hybrid_node._dense`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch

from ._autocast import field_autocast
from ._backend import resolve_backend
from ._double_backward import first_order_only
from ._errors import BackendError, Status
from ._event import Event
from ._external import _solve_external, _solve_julia
from ._problem import check_t_dtype, make_problem
from ._registry import (
    build_solver,
    check_options,
    inert_controller_settings,
    method_list,
    refuse_inert_step_settings,
    refuse_replaced_tolerances,
)
from ._solution import Solution, State, Stats
from ._traced_solve import _untraceable, in_users_graph, untraced
from ._tracing import traced
from ._transforms import check_forward_mode, forward_mode_active, inside_transform
from .controllers import AbstractController, ConstantStepSize, PIDController
from .julia import backend as julia_backend
from .julia import events as julia_events
from .loop import callbacks_called, warn_unsupported_callbacks
from .loop.traced_fixed import odeint_graph_fixed
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
    event_direction: int = 0,
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
        event_direction: with ``per_sample_events``, +1 stops each sample only where its event
            value increases through zero, -1 only where it decreases, 0 (default) at its first root
            either way; in the user's time ``t``, also backwards in time, as :class:`~hybrid_node.Event`'s
            ``direction``. A crossing the other way is passed over and the sample goes on.

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
    check_event_direction(event_direction, per_sample_events, event)
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
        if event is not None:  # _solve_external refuses event_fn; a non-terminal event was dropped unseen
            raise BackendError(f"{solver.name} does not support events; use an adaptive torch solver such as 'dopri5'.")
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
    events = dict(
        event_fn=event_fn,
        event_t_end=event_t_end,
        per_sample_events=per_sample_events,
        event=event,
        event_direction=event_direction,
    )
    # under torch.autocast only the field runs in the autocast dtype: the solver's own products stay in y0's
    with field_autocast(func, y0) as field:
        return host(
            field, y0, t, solver, controller, sensitivity, adjoint_params, jump_t, step_t, t_dtype, throw, **events
        )


def _solve_host(
    func, y0, t, solver, controller, sensitivity, adjoint_params, jump_t, step_t, t_dtype, throw, *, event_fn,
    event_t_end, per_sample_events, event, event_direction,
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
        return solve_sample_events(
            problem, event_fn, throw=throw, adjoint=adjoint, adjoint_params=adjoint_params, direction=event_direction
        )
    if event_fn is not None:
        event_fn = _nonempty_event(event_fn)
    sol = sensitivity.solve(problem, adjoint_params, event_fn=event_fn, throw=throw)
    if _records_compiled_steps(solver, sensitivity):
        # torch's own error for a second backward came from its engine, naming neither the option nor a fix
        sol.ys = first_order_only(sol.ys)
    return sol


def check_event_direction(direction: object, per_sample: bool, event: object = None) -> None:
    """Raise where a terminal event's direction is invalid or would not act.

    The direction acts on per-sample terminal events only; the single terminal event follows
    torchdiffeq's ``odeint_event``, which stops at the first root either way.

    Args:
        direction: the given ``event_direction``.
        per_sample: whether the terminal event is per sample.
        event: the non-terminal events of the solve, if any (they carry their own direction).

    Raises:
        ValueError: a direction other than -1, 0 or +1, or a nonzero one without per-sample events.
    """
    if isinstance(direction, bool) or direction not in (-1, 0, 1):
        raise ValueError(f"event_direction must be -1, 0 or +1, got {direction!r}.")
    if direction == 0:
        return
    if event is not None:
        raise ValueError(
            "event_direction is for the terminal event_fn; a non-terminal event takes its own, "
            "hn.Event(fn, direction=...)."
        )
    if not per_sample:
        raise ValueError(
            "event_direction acts on per-sample terminal events only (the single terminal event stops at the "
            "first root either way, as torchdiffeq's odeint_event): pass per_sample=True (solve: "
            "per_sample_events=True) with a leading batch dimension (y0[None] for one problem, event_fn returning "
            "shape (1,)), or watch a non-terminal hn.Event(fn, direction=...) and take its first record."
        )


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
