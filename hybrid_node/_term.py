"""The vector field as the solver sees it: a flat tensor state, float times, evaluation counting."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch

_EPS = 2.220446049250313e-16


def unflatten(flat: torch.Tensor, sizes: Sequence[int], shapes: Sequence[Sequence[int]]) -> tuple[torch.Tensor, ...]:
    """Split the trailing dimension of ``flat`` (shape (..., N)) into parts of ``sizes`` elements
    reshaped to ``shapes``."""
    lead = tuple(flat.shape[:-1])
    return tuple(p.reshape(lead + tuple(s)) for p, s in zip(torch.split(flat, list(sizes), dim=-1), shapes))


class TupleLayout:
    """How a tuple of tensors is packed into one flat vector and back."""

    def __init__(self, tensors: Sequence[torch.Tensor]):
        self.shapes = [t.shape for t in tensors]
        self.sizes = [t.numel() for t in tensors]

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split the trailing dimension of ``flat`` (shape (..., N)) into the tuple's shapes."""
        return unflatten(flat, self.sizes, self.shapes)


def apply_field(
    func: Callable, layout: TupleLayout | None, tt: torch.Tensor, y: torch.Tensor, check: bool = False
) -> torch.Tensor:
    """``func(tt, y)`` on a flat state: tuple states are unpacked for ``func`` and its output packed again.

    Args:
        func: the user's field.
        layout: the tuple layout, or None for a tensor state.
        tt: the time tensor handed to ``func``.
        y: the flat state.
        check: validate the tuple output's structure (done on the first call of a solve).

    Raises:
        TypeError, ValueError: (with ``check``) a tuple output with the wrong length or shapes.
    """
    if layout is None:
        return func(tt, y)
    out = func(tt, layout.unflatten(y))
    if check:
        if not isinstance(out, (tuple, list)) or len(out) != len(layout.shapes):
            raise TypeError(
                f"func returned {type(out).__name__}; for a tuple state of {len(layout.shapes)} tensors it "
                "must return a tuple of as many tensors, one derivative per state tensor."
            )
        for i, (o, s) in enumerate(zip(out, layout.shapes)):
            if not isinstance(o, torch.Tensor) or o.shape != s:
                raise ValueError(
                    f"func returned a derivative of shape {tuple(getattr(o, 'shape', ()))} for state tensor {i} "
                    f"of shape {tuple(s)}; each derivative must have its state's shape."
                )
    return torch.cat([o.reshape(-1) for o in out])


def parameter_dtype_note(func: Callable, y: torch.Tensor) -> str | None:
    """A hint for a field that failed on its first call: its module's parameters have another dtype than
    the state (torch's own message, "mat1 and mat2 must have the same dtype", names neither).

    Args:
        func: the user's field (a module, or a bound method of one, is looked into; a closure is not).
        y: the state it was given.

    Returns:
        The note, or None where no parameter of another dtype is found.
    """
    module = func if isinstance(func, torch.nn.Module) else getattr(func, "__self__", None)
    if not isinstance(module, torch.nn.Module):
        return None
    other = sorted({str(p.dtype) for p in module.parameters() if p.dtype != y.dtype})
    if not other:
        return None
    return (
        f"func's parameters are {', '.join(other)} but the state is {y.dtype}: convert one to the other's "
        "dtype, e.g. func.to(y0.dtype) or y0.to(next(func.parameters()).dtype)."
    )


#: torchdiffeq's step callbacks, looked up on ``func``: ``callback_step(t0, y0, dt)`` before every
#: step attempt, ``callback_accept_step`` / ``callback_reject_step`` after its error test
CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")


class StepCallbacks:
    """The step callbacks a solve calls, found once on the user's ``func``.

    The loops call :meth:`step` before each step attempt and :meth:`accept` / :meth:`reject` after
    its error test, with solver times; the user's callbacks get ``(t0, y0, dt)`` as torchdiffeq
    gives them: ``t0`` the step's start in the user's time and ``dt`` the (positive) step, both 0-d
    float64 tensors on the state's device, and ``y0`` the state at ``t0`` (a tuple for tuple states).

    Args:
        owner: the object carrying the callbacks (the user's ``func``).
        suffix: "" for the solve's own callbacks, "_adjoint" for those of the adjoint's backward solve.
        user_time: maps a solver time to the user's time.
        unpack: turns the flat state into what the callbacks receive.
        device: where the time tensors live.
    """

    def __init__(
        self,
        owner: object,
        suffix: str,
        user_time: Callable[[float], float],
        unpack: Callable[[torch.Tensor], object],
        device: torch.device,
    ):
        self.found = {name: getattr(owner, name + suffix) for name in CALLBACK_NAMES if hasattr(owner, name + suffix)}
        self._step = self.found.get("callback_step")
        self._accept = self.found.get("callback_accept_step")
        self._reject = self.found.get("callback_reject_step")
        self._user_time = user_time
        self._unpack = unpack
        self._device = device

    def __bool__(self) -> bool:
        return bool(self.found)

    def _call(self, callback: Callable | None, t0: float, y0: torch.Tensor, dt: float) -> None:
        if callback is None:
            return
        tt = torch.tensor(self._user_time(t0), dtype=torch.float64, device=self._device)
        callback(tt, self._unpack(y0), torch.tensor(dt, dtype=torch.float64, device=self._device))

    def step(self, t0: float, y0: torch.Tensor, dt: float) -> None:
        """Before a step attempt from solver time ``t0`` with step ``dt``."""
        self._call(self._step, t0, y0, dt)

    def accept(self, t0: float, y0: torch.Tensor, dt: float) -> None:
        """After the attempt passed its error test."""
        self._call(self._accept, t0, y0, dt)

    def reject(self, t0: float, y0: torch.Tensor, dt: float) -> None:
        """After the attempt failed its error test."""
        self._call(self._reject, t0, y0, dt)


class Term:
    """Wraps ``func(t, y)`` for the solvers.

    The solvers call ``term(t, y)`` with a Python float time and the (flat, for tuple states) state
    tensor. The wrapper builds the time tensor, unpacks tuple states, flips the sign for solves
    backwards in time, checks the first output's shape and dtype, and counts evaluations.

    Args:
        func: the user's vector field ``func(t, y)``.
        y0: the initial state as the solver sees it (flat for tuples), for shape and dtype checks.
        t_dtype: dtype of the time tensor handed to ``func``.
        layout: TupleLayout for tuple states, else None.
        reverse: solve backwards: the solver's time s maps to t = -s and the field to -f(-s, y).
        callbacks: find ``func``'s step callbacks (False for the extra terms of a solve: time
            gradients, re-solves), which the loops then call.
    """

    def __init__(
        self,
        func: Callable,
        y0: torch.Tensor,
        t_dtype: torch.dtype,
        layout: TupleLayout | None = None,
        reverse: bool = False,
        callbacks: bool = True,
    ):
        self.func = func
        self.layout = layout
        self.reverse = reverse
        self.t_dtype = t_dtype
        self.device = y0.device
        self.shape = y0.shape
        self.dtype = y0.dtype
        self.nfe = 0
        self.n_jacobian = 0  # Jacobian evaluations, counted by the implicit solvers
        self.n_switches = 0  # switches between non-stiff and stiff methods (auto, lsoda)
        self._checked = False
        self._np_dtype = np.float32 if t_dtype == torch.float32 else np.float64
        self.callbacks: StepCallbacks | None = None
        if callbacks:
            found = StepCallbacks(
                func, "", lambda s: -s if reverse else s, layout.unflatten if layout else lambda y: y, y0.device
            )
            self.callbacks = found if found else None

    def time(self, t: float, perturb: int = 0, seed: torch.Tensor | None = None) -> torch.Tensor:
        """The user-facing time tensor for solver time ``t``.

        Args:
            t: the solver time.
            perturb: +1/-1 moves the time one ulp later/earlier in solver time (a one-sided limit).
            seed: a 0-d zero in solver time added to the time, the input through which
                :func:`~hybrid_node.solvers.linalg.time_derivative` differentiates in t; None: none.

        Returns:
            A 0-d tensor of ``t_dtype`` on the state's device.
        """
        tt = -t if self.reverse else t
        if perturb:
            direction = perturb * (-1 if self.reverse else 1)
            tt = float(np.nextafter(self._np_dtype(tt), self._np_dtype(math.inf * direction)))
        # a fill kernel, not a host-to-device copy: no synchronisation with the GPU per stage
        out = torch.full((), tt, dtype=self.t_dtype, device=self.device)
        if seed is not None:  # adding a zero keeps the value; user time runs against solver time reversed
            out = out - seed if self.reverse else out + seed
        return out

    @property
    def pure_field(self) -> PureField:
        """The traceable part of this term (the user's ``func`` and how it is called), for compiled steps."""
        return term_field(self)

    def left_limit(self, end: float) -> LeftLimit:
        """This field for one step that ends at a jump at solver time ``end``: see :class:`LeftLimit`."""
        return LeftLimit(self, end)

    def __call__(self, t: float, y: torch.Tensor, perturb: int = 0, seed: torch.Tensor | None = None) -> torch.Tensor:
        """The field in solver time at (t, y); ``perturb`` and ``seed`` as in :meth:`time`."""
        self.nfe += 1
        tt = self.time(t, perturb, seed)
        if self._checked:
            out = apply_field(self.func, self.layout, tt, y)
        else:
            try:
                out = apply_field(self.func, self.layout, tt, y, check=True)
            except RuntimeError as e:
                # a note (PEP 678): the field's own error, type and traceback stay the caller's
                note = parameter_dtype_note(self.func, y)
                if note is not None and hasattr(e, "add_note"):  # Python >= 3.11
                    e.add_note(note)
                raise
            self._check(out, y)
        return -out if self.reverse else out

    def _check(self, out, y: torch.Tensor) -> None:
        check_derivative(out, y, "e.g. build the model with .to(y0.dtype)")
        if out.device != y.device:
            raise ValueError(f"func returned a tensor on {out.device} but the state is on {y.device}.")
        self._checked = True


class LeftLimit:
    """A term seen by one step that ends at a jump of the field at solver time ``end``.

    Evaluations at the step's end take the left limit, the field just before the jump, as the
    step's own formula needs (the step integrates the smooth piece before the jump); everything
    else, including the counters the solvers update, is the term's. Immutable: the loop hands one
    to the solver for that step instead of switching the term into a mode and back.

    Args:
        term: the wrapped term.
        end: the solver time of the jump.
    """

    __slots__ = ("_term", "_end")

    def __init__(self, term: Term, end: float):
        object.__setattr__(self, "_term", term)
        object.__setattr__(self, "_end", end)

    def __call__(self, t: float, y: torch.Tensor, perturb: int = 0, seed: torch.Tensor | None = None) -> torch.Tensor:
        end = self._end
        if not perturb and t >= end - 8 * _EPS * max(1.0, abs(end)):
            t, perturb = end, -1  # a stage at the step's end (t0 + 1.0 * dt may be off by an ulp)
        return _evaluate(self._term, t, y, perturb, seed)

    def __getattr__(self, name: str):
        # layout, reverse, time, t_dtype, ...: the term's (read by the implicit solvers)
        return getattr(self._term, name)

    def __setattr__(self, name: str, value) -> None:
        if name not in ("nfe", "n_jacobian", "n_switches"):
            raise AttributeError(f"LeftLimit is immutable; cannot set {name!r}.")
        setattr(self._term, name, value)  # the counters are the term's (``f.n_jacobian += 1``)


@dataclasses.dataclass(frozen=True)
class PureField:
    """A field the compiler can trace, with what identifies it across solves.

    Attributes:
        owner: the user's field; the compiled graphs are cached on it and it is passed to ``field``
            on every call (so no graph keeps it alive).
        key: everything besides ``owner`` that ``field`` depends on; two solves with equal owner and
            key may share one compiled graph.
        field: ``field(owner, t, y) -> dy/dt`` in solver time, free of side effects and of autograd
            calls; ``t`` is a 0-d float64 tensor on the state's device. (The checkpointed adjoint's
            augmented field takes the forward state too: ``field(owner, r, x, z)``.)
        alternative: the same field with its derivatives taken by ``torch.autograd.grad`` where
            ``field`` takes them with ``torch.func`` (the backsolve adjoint's augmented field), for
            per-step graphs when the compiler refuses ``field``: ``torch.func`` refuses a user's
            field that takes its own gradient (an exact CNF trace), the per-step graphs trace
            ``torch.autograd.grad``. None: there is none.
    """

    owner: Callable
    key: Hashable
    field: Callable[..., torch.Tensor]
    alternative: Callable[..., torch.Tensor] | None = None


def solver_time_field(
    func: Callable, t: torch.Tensor, y: torch.Tensor, layout, reverse: bool, t_dtype: torch.dtype
) -> torch.Tensor:
    """``func`` as a solver-time field on the flat state: time tensor, tuple packing, direction."""
    out = apply_field(func, layout, (-t if reverse else t).to(t_dtype), y)
    return -out if reverse else out


def term_field(term: Term) -> PureField:
    """The traceable part of a :class:`Term`."""
    layout, reverse, t_dtype = term.layout, term.reverse, term.t_dtype

    def field(func, t, y):
        return solver_time_field(func, t, y, layout, reverse, t_dtype)

    shapes = None if layout is None else tuple(layout.shapes)
    return PureField(term.func, ("term", shapes, reverse, t_dtype, term.device), field)


class OpenInterval(LeftLimit):
    """A term seen by one fixed step [start, end] whose field may jump at both ends (``perturb``).

    torchdiffeq's ``perturb`` semantics: evaluations at the step's start take the right limit (the
    next float after it) and those at its end the left limit (the float before it), so that ``func``
    is never evaluated exactly at a grid point. Every evaluation of the step goes through it: the
    stages, an implicit solver's Jacobian and the Newton iterations.

    Args:
        term: the wrapped term (a :class:`Term` or an adjoint's augmented term).
        start: the solver time of the step's start.
        end: the solver time of the step's end.
    """

    __slots__ = ("_start",)

    def __init__(self, term, start: float, end: float):
        super().__init__(term, end)
        object.__setattr__(self, "_start", start)

    def __call__(self, t: float, y: torch.Tensor, perturb: int = 0, seed: torch.Tensor | None = None) -> torch.Tensor:
        start = self._start
        if not perturb and t <= start + 8 * _EPS * max(1.0, abs(start)):
            # a stage at the step's start (c = 0), or the Jacobian there
            return _evaluate(self._term, start, y, 1, seed)
        return super().__call__(t, y, perturb, seed)


def _evaluate(term, t: float, y: torch.Tensor, perturb: int, seed: torch.Tensor | None) -> torch.Tensor:
    """``term(t, y, perturb)``, with the time seed where one is given: only a :class:`Term` takes one
    (an adjoint's augmented term, which a view may wrap too, takes its time as a number)."""
    return term(t, y, perturb) if seed is None else term(t, y, perturb, seed=seed)


def check_derivative(
    out: object,
    y: torch.Tensor,
    hint: str,
    role: str = "func",
    state: str = "the state",
    same_shape: bool = True,
    error: type[Exception] = TypeError,
) -> None:
    """Refuse a field's output that is not a tensor of the state's dtype (and shape): the one check of an
    ODE field's output and of an SDE's drift and diffusion at their first call.

    Args:
        out: what the field returned.
        y: the state it was given.
        hint: how to get the dtype right, for the message.
        role: what returned ``out``, for the message ("func", "the drift", ...).
        state: how the message names ``y`` ("the state", "y0").
        same_shape: check that ``out`` has ``y``'s shape (an SDE's diffusion has a shape of its own,
            which its caller checks).
        error: the exception for a non-tensor or another dtype (sdeint reports every bad input as a
            ValueError, the ODE solves a type error as a TypeError).

    Raises:
        TypeError (or ``error``): ``out`` is not a tensor, or not of ``y``'s dtype.
        ValueError: ``out`` does not have ``y``'s shape (with ``same_shape``).
    """
    if not isinstance(out, torch.Tensor):
        raise error(
            f"{role} must return a torch.Tensor, got {type(out).__name__}; return a tensor of {state}'s shape "
            "and dtype."
        )
    if same_shape and out.shape != y.shape:
        raise ValueError(
            f"{role} returned shape {tuple(out.shape)} but {state} has shape {tuple(y.shape)}; "
            f"dy/dt must have {state}'s shape."
        )
    if out.dtype != y.dtype:
        autocast = autocast_note(out, y, role)
        if autocast is not None:
            raise error(f"{role} returned dtype {out.dtype} but {state} is {y.dtype}: {autocast}")
        raise error(
            f"{role} returned dtype {out.dtype} but {state} is {y.dtype}; return it in {state}'s dtype ({hint})."
        )


def autocast_note(out: torch.Tensor, y: torch.Tensor, role: str) -> str | None:
    """How to fix a derivative that ``torch.autocast`` computed in a lower precision than the state, or None
    where autocast did not make ``out``'s dtype.

    Under ``torch.autocast`` the field's layers (``nn.Linear``, convolutions) run in the autocast dtype and
    return it, while the solver's state stays in ``y0``'s dtype: building the model in the state's dtype
    (the usual hint) does not help there, so the message names autocast and the casts that do.

    Args:
        out: the field's output, of a dtype other than ``y``'s.
        y: the state the field was given.
        role: what returned ``out``, for the message ("func", "the drift", ...).

    Returns:
        The explanation and its fixes, or None where autocast is off on ``y``'s device or its dtype is not
        ``out``'s.
    """
    device = y.device.type
    if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
        return None
    low = torch.get_autocast_dtype(device)
    if out.dtype != low:
        return None
    return (
        f"torch.autocast({device!r}, dtype={low}) is active and ran {role}'s layers in {low}. Cast the "
        f"derivative back inside {role} (e.g. `return net(y).to(y.dtype)`): the state, the error control "
        f"and the output then stay in {y.dtype} while the layers run in {low}; or solve outside autocast "
        f"(`with torch.autocast({device!r}, enabled=False):`), or start from y0.to({low})."
    )
