"""Event settings: what :func:`hybrid_node.solve` watches for, and what it does at a crossing."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable


def takes_fired(on_event: Callable) -> bool:
    """Whether ``on_event`` takes the ``fired`` mask as a third argument.

    Args:
        on_event: the jump of an :class:`Event`.

    Returns:
        True for three or more positional parameters (or ``*args``); False for fewer, or for a
        builtin without a signature (the two-argument form).
    """
    try:
        params = inspect.signature(on_event).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the two-argument form
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in params)


@dataclasses.dataclass(frozen=True)
class Event:
    """An event function watched during a solve, with an optional state jump at each crossing.

    Every element of ``fn(t, y)`` (a tensor; for a batch typically one value per sample) is watched:
    a change of its sign inside a step is located on the step's dense output by bisection (Shampine
    & Thompson 2000) and recorded in ``sol.events``. With ``on_event`` the state jumps there and the
    solver restarts from the new state with a fresh first step (no interpolation across the jump).

    Args:
        fn: ``fn(t, y) -> tensor``; its zeros are the events. A step function must change between
            nonzero signs to be seen (``(y > c).long() * 2 - 1``, not the 0/1 ``(y > c).long()``);
            its event time has a zero gradient, as in the terminal case.
        terminal: must be False here (non-terminal events); terminal events are ``event_fn`` of
            :func:`hybrid_node.solve` / :func:`hybrid_node.odeint_event` (``per_sample=True`` for a batch).
        direction: +1 records only crossings where the element increases through zero, -1 only
            where it decreases, 0 both; increases as the user's time ``t`` increases, also in a solve
            backwards in time (scipy's ``solve_ivp`` counts along the integration instead).
        on_event: ``on_event(t, y) -> y_new``, or ``on_event(t, y, fired) -> y_new`` (three
            parameters) where ``fired`` is a bool tensor of ``fn``'s shape marking the elements that
            crossed (e.g. which balls of a batch bounce). ``t`` and ``y`` carry gradients (the
            event time's by the implicit function theorem), so the jump is differentiable.
        samples: interior points of each step's dense output where the signs are checked besides
            the step's ends, so that two crossings of one element inside one step are both found
            (in order) when a point lies between them. Only a strict change of sign is a crossing:
            an element that touches zero and turns back (a grazing event) is not recorded; two
            crossings closer together than the points are not seen (raise ``samples`` or lower
            ``max_step``).
        max_events: the most crossings of this event in one solve (all its elements together);
            one more ends the solve with status ``TOO_MANY_EVENTS`` (a ``SolverError``, or the
            status with ``throw=False``): the guard against an accumulation of events (Zeno
            behaviour) or a jump that keeps the state on the event surface.

    Raises:
        ValueError, TypeError: invalid settings (checked on construction).

    Reference: L. F. Shampine and S. Thompson, "Event location for ordinary differential equations",
    Comput. Math. Appl. 39 (2000) 43-54.
    """

    fn: Callable
    terminal: bool = False
    direction: int = 0
    on_event: Callable | None = None
    samples: int = 4
    max_events: int = 10_000

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Event needs a callable fn(t, y), got {type(self.fn).__name__}.")
        if isinstance(self.direction, bool) or self.direction not in (-1, 0, 1):
            raise ValueError(f"Event direction must be -1, 0 or +1, got {self.direction!r}.")
        if self.on_event is not None and not callable(self.on_event):
            raise TypeError(f"on_event must be a callable on_event(t, y) -> y_new, got {type(self.on_event).__name__}.")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 0:
            raise ValueError(f"Event samples must be a non-negative int, got {self.samples!r}.")
        if isinstance(self.max_events, bool) or not isinstance(self.max_events, int) or self.max_events < 1:
            raise ValueError(f"Event max_events must be a positive int, got {self.max_events!r}.")
        if self.terminal:
            raise ValueError(
                "Event(terminal=True) is not supported by solve(event=...); a terminal event is solve's or "
                "odeint_event's event_fn (with per_sample=True for one event per sample of a batch)."
            )
