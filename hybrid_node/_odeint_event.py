"""``odeint_event``: torchdiffeq's terminal-event call, one event or one per sample, mapped to :func:`solve`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ._api import _check_adjoint_options, check_event_direction, odeint, odeint_adjoint, solve
from ._backend import resolve_backend
from ._errors import BackendError
from ._registry import (
    build_solver,
    check_options,
)
from ._solution import State
from .controllers import bool_or_complex
from .loop.events import interp_unread
from .sensitivity.base import AbstractSensitivity
from .sensitivity.settings import BacksolveAdjoint, DirectBackprop


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
    event_direction: int | None = None,
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
        event_direction: with ``per_sample``, +1 stops each sample only where its event value
            increases through zero, -1 only where it decreases, 0 or None (default) at its first root
            either way; in the user's time (also with ``reverse_time``), as :class:`~hybrid_node.Event`'s
            ``direction``. Crossings the other way are passed over. Refused without ``per_sample``.
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
    event_direction = 0 if event_direction is None else event_direction  # None: either way, as torchdiffeq
    check_event_direction(event_direction, bool(per_sample))
    direction = -1.0 if reverse_time else 1.0
    t = torch.cat([t0, t0.detach() + direction])
    if per_sample:
        return _odeint_sample_events(
            func, y0, t, event_fn, odeint_interface, throw is not False, event_direction, kwargs
        )
    if throw is False:
        raise ValueError("throw=False is for per_sample=True; a single event reports failures by SolverError.")
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)


def _odeint_sample_events(func, y0, t, event_fn, odeint_interface, throw, event_direction, kwargs):
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
    if "interp" in options:  # either value, named as the option it was: the loop reads the dense output
        raise ValueError(interp_unread("per-sample events", "options['interp']"))
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
        event_direction=event_direction,
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
