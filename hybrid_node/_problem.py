"""Validated inputs of one solve, in the form the loops use (flat state, increasing host times)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch

from ._complex import ComplexJacobian, ComplexNorm, ComplexState, real_tolerance
from ._stack import caller_stacklevel
from ._term import Term, TupleLayout, unflatten
from ._transforms import derivative_mode, inside_transform, is_batched, plain
from .controllers import PIDController
from .controllers import rms_norm as _rms  # the loop recognises this norm and fuses it
from .solvers.base import AbstractSolver
from .solvers.scipy_solver import ScipySolver


def all_finite(x: torch.Tensor) -> bool:
    """Whether every element of ``x`` is finite, usually with one reduction instead of an elementwise test.

    A sum of finite numbers is finite unless it overflows, and a NaN or infinity makes the sum non-finite;
    only then does the elementwise test run (to tell an overflow from a non-finite element).
    """
    x = plain(x)  # inside vmap: every problem of the batch
    with torch.no_grad():
        total = x.sum()
        # a host number tests faster than a tensor (two calls instead of three on a small state)
        finite = bool(torch.isfinite(total)) if total.is_complex() else math.isfinite(total.item())
        return finite or bool(torch.isfinite(x).all())


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of ``dtype`` (itself for a real dtype, float32 for complex64, ...).

    Args:
        dtype: a floating or complex dtype.

    Returns:
        The dtype of the real part.
    """
    return _REAL.get(dtype, dtype)


#: the real dtype of each complex one (a table, not ``dtype.to_real()``, which torch.compile cannot trace)
_REAL = {torch.complex32: torch.float16, torch.complex64: torch.float32, torch.complex128: torch.float64}


def check_times(t) -> tuple[torch.Tensor, list[float]]:
    """Validate output times: a 1-D floating tensor, finite, strictly increasing or decreasing.

    Returns:
        ``t`` (as a tensor) and its values as host floats (float64).
    """
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t, dtype=torch.float64)
        except Exception as e:
            raise TypeError(f"t must be a 1-D tensor of times, got {type(t).__name__}.") from e
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of times, got shape {tuple(t.shape)}.")
    if not t.is_floating_point():
        raise TypeError(f"t must have a floating dtype, got {t.dtype}; use e.g. torch.linspace(0, 1, 10).")
    refuse_meta("t", t)
    if is_batched(t):
        raise ValueError(
            "t is batched by vmap; the problems of one vmap share their output times (vmap over y0 or the "
            "parameters, with in_dims=None for t), or solve each time grid separately."
        )
    # times made inside the transformed function are wrapped as well, and are fine; a forward-mode level's
    # tangent on t is carried by direct backpropagation (sensitivity/direct.py), a reverse-mode level's
    # derivative would need the field at the outputs, which the transformed loop does not add
    mode = derivative_mode(t) if plain(t) is not t else None
    if mode == "unknown":
        raise ValueError(
            "t is wrapped by a forward-mode torch.func transform (jacfwd, jvp, hessian) outside an inner "
            "transform, so whether it is differentiated cannot be told; pass t from outside the transforms "
            "(a closed-over tensor) where it is not differentiated; differentiate with respect to t with one "
            "forward-mode level (torch.func.jvp or jacfwd, which vmap or jacrev may enclose) or outside the "
            "transforms (t.requires_grad_() and torch.autograd.grad)."
        )
    if mode == "reverse":
        raise ValueError(
            "t is differentiated by a reverse-mode torch.func transform (grad, jacrev, vjp); derivatives with "
            "respect to the output times are available in forward mode (torch.func.jvp, torch.func.jacfwd, "
            "torch.autograd.forward_ad) and, in reverse mode, outside the transforms (t.requires_grad_() and "
            "torch.autograd.grad)."
        )
    # one copy to the host (a list: inside a torch.func transform the tensor has no storage to share;
    # every float dtype converts to Python floats exactly), checked with numpy: torch calls on a
    # 50-element tensor cost more than the other input checks
    host = plain(t).tolist()
    if host == _valid_times[0]:  # the times of the previous solve, already checked
        return t, host
    values = np.array(host)
    if not np.isfinite(values).all():
        raise ValueError("t contains NaN or infinite values.")
    if values.size > 1:
        d = np.diff(values)
        if not ((d > 0).all() or (d < 0).all()):
            raise ValueError(
                "t must be strictly increasing or strictly decreasing (no repeated or out-of-order times); "
                "sort it and remove duplicates, e.g. torch.unique(t)."
            )
    _valid_times[0] = host
    return t, host


#: the last output times :func:`check_times` accepted (repeated solves usually share them; comparing
#: two lists of floats costs less than checking them again, and NaN never compares equal)
_valid_times: list[list[float] | None] = [None]


def refuse_meta(name: str, x: torch.Tensor) -> None:
    """Refuse a tensor on the meta device, which has shapes but no values to solve with.

    Args:
        name: how the message names the argument, e.g. "t".
        x: the tensor given.

    Raises:
        ValueError: ``x`` is on the meta device.
    """
    if x.device.type == "meta":
        # else it fails later with torch's "Cannot copy out of meta tensor" or "Tensor.item() cannot be called"
        raise ValueError(
            f"{name} is on the meta device, which holds shapes but no values, so there is nothing to solve; "
            "create it with values on a device that holds data, such as 'cpu' or 'cuda'."
        )


def check_state(y0) -> tuple[torch.Tensor, TupleLayout | None]:
    """Validate the initial state; returns the flat state and the tuple layout (None for a tensor)."""
    tensors = y0 if isinstance(y0, (tuple, list)) else (y0,)
    if len(tensors) == 0:
        raise ValueError("y0 is an empty tuple; give at least one tensor.")
    for i, y in enumerate(tensors):
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y0 must be a tensor or a tuple of tensors; element {i} is {type(y).__name__}.")
        if not (y.is_floating_point() or y.is_complex()):
            raise TypeError(
                f"y0 must have a floating dtype (float32, float64) or a complex one (complex64, complex128), got "
                f"{y.dtype}; use y0.float() for integer or boolean data."
            )
        if y.dtype == torch.complex32:  # torch has no reductions (sum, norm) for it: the error norm fails
            raise TypeError(
                "y0 has dtype torch.complex32, which torch cannot reduce (no sum or norm), so no error can be "
                "measured; use y0.to(torch.complex64)."
            )
        refuse_meta("y0" if len(tensors) == 1 else f"y0[{i}]", y)
    if len({y.dtype for y in tensors}) > 1 or len({y.device for y in tensors}) > 1:
        # torchdiffeq promotes the parts to one dtype (and returns them so); the state is packed into one
        # tensor here too, but a part silently computed in another precision is refused (docs/torchdiffeq.md)
        found = ", ".join(f"{y.dtype} on {y.device}" for y in tensors)
        raise TypeError(
            f"all tensors of a tuple state must share one dtype and one device, got {found}; convert them, "
            "e.g. tuple(y.to(torch.float64) for y in y0)."
        )
    for i, y in enumerate(tensors):
        if not all_finite(y):
            raise ValueError(f"y0{'' if len(tensors) == 1 else f'[{i}]'} contains NaN or infinite values.")
    if isinstance(y0, (tuple, list)):
        layout = TupleLayout(tensors)
        return layout.flatten(tensors), layout
    return y0, None


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without growing it.

    Broadcasting both ways (``torch.broadcast_shapes``) also takes a larger shape, e.g. (2, 3) with
    (3,), whose result has another shape than ``target``: a per-element setting would then count an
    element twice, a mask would return a tensor of another shape.

    Args:
        shape: the shape of the tensor that is to broadcast.
        target: the shape it must fit.

    Returns:
        True when the broadcast of the two shapes is ``target``.
    """
    try:
        return torch.broadcast_shapes(shape, target) == torch.Size(target)
    except RuntimeError:  # the sizes differ where neither is 1
        return False


def _tolerance(tol, layout: TupleLayout | None, like: torch.Tensor, name: str = "tolerance"):
    """A tolerance on the flat state: a float, or a tensor that broadcasts to ``like``.

    Args:
        tol: a number; a tensor broadcastable to the state; or, for a tuple state, one entry per
            tensor (a tuple, list or 1-D tensor of that length, as torchdiffeq reads any sequence
            there), each a number or a tensor broadcastable to its tensor.
        layout: the tuple layout, or None for a tensor state.
        like: the flat state.
        name: "rtol" or "atol" (for the messages).

    Returns:
        A float, or a tensor on the state's device whose broadcast with ``like`` has ``like``'s shape, in
        the dtype of the state's error test: the state's, float32 for a half-precision state (float16
        rounds ``atol = 1e-9`` to 0; see :func:`~hybrid_node.controllers.error_precision`).

    Raises:
        ValueError: a tolerance that does not fit the state.
    """
    if isinstance(tol, (int, float)):
        return float(tol)
    dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    n_parts = 0 if layout is None else len(layout.shapes)
    if (
        isinstance(tol, torch.Tensor)
        and tol.dim() == 1
        and n_parts > 1
        and len(tol) == n_parts != like.numel()  # not a per-element tensor of the flat state
    ):
        tol = tuple(tol.unbind(0))  # torchdiffeq's reading: one tolerance per state tensor
    if layout is not None and isinstance(tol, (tuple, list)):
        if len(tol) != n_parts:
            raise ValueError(
                f"{name} has {len(tol)} entries, but a tolerance tuple needs one entry per state tensor ({n_parts}); "
                "give one per tensor, or a single number for all."
            )
        parts = []
        for i, (v, s) in enumerate(zip(tol, layout.shapes)):
            v = torch.as_tensor(v, dtype=dtype, device=like.device)
            try:
                parts.append(v.expand(s).reshape(-1))
            except RuntimeError:
                raise ValueError(  # noqa: B904 - the expand error adds nothing
                    f"{name}[{i}] of shape {tuple(v.shape)} does not broadcast to state tensor {i} of shape "
                    f"{tuple(s)}; give a number or a tensor of that tensor's shape (or one that broadcasts to it)."
                )
        return torch.cat(parts)
    tol = torch.as_tensor(tol, dtype=dtype, device=like.device)
    if not broadcasts_to(tol.shape, like.shape):
        # a larger broadcast (shape (2, 3) on a state (3,)) would weigh the error of each element
        # more than once and fail in the adjoint's backward pass, which repeats it per channel
        raise ValueError(
            f"{name}: a tolerance of shape {tuple(tol.shape)} does not broadcast to the state {tuple(like.shape)}"
            + ("" if layout is None else " (the tuple state's tensors flattened and joined)")
            + "; give a number, a tensor of the state's shape, or one that broadcasts to it"
            + ("." if layout is None else f", or one entry per state tensor ({n_parts}).")
        )
    return tol


def warn_unresolvable_tolerance(rtol, atol, y0: torch.Tensor, prefix: str = "") -> None:
    """Warn where a tolerance asks for more accuracy than the state's dtype holds at the initial state.

    An element's error is measured against ``atol + rtol * |y|``; where that is below the spacing of the
    dtype's numbers at ``y`` (``u * |y|``, ``u = eps / 2`` the unit roundoff), no step can be that accurate:
    the error estimates become rounding noise, the steps shrink for nothing and the solve ends in more
    steps with no better result, a step size underflow or max_num_steps (float32 y' = (y1, -y0) on
    [0, 10], rtol = atol = 1e-12: adams 67,509 steps and STEP_UNDERFLOW, tsit5 MAX_STEPS after 200,000
    attempts; at 1e-8 they take 158 and 94). The tolerances are kept as given (torchdiffeq's steps, which
    ``odeint`` follows, have no floor); scipy's ``solve_ivp`` warns likewise and raises rtol to 100 eps.

    Args:
        rtol, atol: the tolerances as the loops take them (numbers, or tensors on the flat state).
        y0: the flat initial state (complex elements count by their magnitude).
        prefix: put before the names in the message (``"adjoint_"`` for a backward solve's).

    Warns:
        UserWarning: naming the dtype, its unit roundoff, the smallest rtol and the ways out.
    """
    u = torch.finfo(real_dtype(y0.dtype)).eps / 2
    rtol = float(rtol) if isinstance(rtol, (int, float)) else rtol
    atol = float(atol) if isinstance(atol, (int, float)) else atol
    if isinstance(rtol, float):  # the usual case: a tolerance at or above u needs no look at the state
        smallest = rtol
    elif rtol.numel() == 0:
        return
    else:
        rtol = plain(rtol).detach()
        rtol = rtol.real if rtol.is_complex() else rtol  # a complex state's tolerances come in its dtype
        smallest = float(rtol.min())
    if not smallest < u:
        return
    if not isinstance(atol, float):
        atol = plain(atol).detach()
        atol = atol.real if atol.is_complex() else atol
    with torch.no_grad():
        size = plain(y0).detach().abs()
        below = atol + rtol * size < u * size
        if not bool(below.any()):  # atol covers the elements where rtol is below the resolution
            return
        count = int(below.sum())
    warnings.warn(
        f"{prefix}rtol={smallest:.3g} is below the unit roundoff of {real_dtype(y0.dtype)} (u = eps/2 = {u:.3g}), "
        f"and {prefix}atol does not make up for it: at {count} of the {y0.numel()} initial state elements "
        f"{prefix}atol + {prefix}rtol * |y0| is below u * |y0|, the spacing of the numbers there, so no step can "
        "meet the tolerance; expect many more steps with no gain in accuracy, or a step size underflow. Use "
        f"{prefix}rtol >= {u:.3g} (scipy's solve_ivp raises it to 100 * eps = {200 * u:.3g}) or a larger "
        f"{prefix}atol, or a float64 state for tighter tolerances.",
        UserWarning,
        stacklevel=caller_stacklevel(),  # the caller's line
    )


class PartsRMS:
    """The error norm of a tuple state: the largest of its parts' RMS norms (torchdiffeq's default
    for tuple states).

    An object rather than a closure made per solve: compiled graphs are cached per norm, a function
    by identity and an instance by its class and its attributes (the compiler guards on ``bounds``),
    so solves with equal layouts share their graphs.

    Args:
        sizes: the number of elements of each part, in order.
    """

    def __init__(self, sizes: Sequence[int]):
        starts = np.cumsum([0, *sizes]).tolist()
        self.bounds = tuple(zip(starts[:-1], starts[1:]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([_rms(x[..., a:b]) for a, b in self.bounds]).max()


class TupleNorm:
    """A user's error norm on a tuple state, called on the flat state the loops hold (an object for
    the reason given in :class:`PartsRMS`; it holds the layout's sizes and shapes, not the layout,
    which the compiled field holds too: the compiler would guard the two as one object).

    Args:
        norm: the user's norm, called on the tuple of parts.
        layout: how the tuple is packed into the flat state.
    """

    def __init__(self, norm: Callable, layout: TupleLayout):
        self.norm = norm
        self.sizes = tuple(layout.sizes)
        self.shapes = tuple(tuple(s) for s in layout.shapes)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(unflatten(x, self.sizes, self.shapes))


@dataclasses.dataclass
class Problem:
    """Everything a loop needs, derived once from the user's call.

    Attributes:
        func: the user's field; y0: flat initial state; layout: tuple layout or None; t: output times
        as given; ts: increasing host floats (negated when ``reverse``); solver, controller: settings;
        rtol, atol: tolerances (float or tensor on the flat state); norm: error norm on the flat state;
        jump_t, step_t: host floats in solver time; t_dtype: dtype of the time handed to func
        (default: the state's real dtype, as torchdiffeq); event_t_end: where an event search gives
        up (solver time), None: no end time; complex_state: for a complex state integrated as its real
        form (the implicit methods), how to turn the flat real states back into the caller's complex
        ones (``func``, ``y0``, ``layout``, the tolerances and the norm are then the real system's),
        else None.
    """

    func: Callable
    y0: torch.Tensor
    layout: TupleLayout | None
    t: torch.Tensor
    ts: list
    reverse: bool
    solver: Any
    controller: Any
    rtol: Any = 1e-7
    atol: Any = 1e-9
    norm: Callable = _rms
    jump_t: Sequence[float] = ()
    step_t: Sequence[float] = ()
    t_dtype: torch.dtype = torch.float64
    event_t_end: float | None = None
    complex_state: ComplexState | None = None

    @property
    def direction(self) -> float:
        """-1.0 for a solve backwards in time (solver time s = -t), else 1.0."""
        return -1.0 if self.reverse else 1.0

    @property
    def event_end(self) -> float:
        """Where an event search gives up, in solver time: ``event_t_end``, or +inf where none was given
        (the search is then bounded by the loop's step cap alone)."""
        return math.inf if self.event_t_end is None else self.event_t_end

    def term(self, func: Callable | None = None, callbacks: bool = True) -> Term:
        """The solver's view of ``func`` (default: the problem's field).

        Args:
            func: another field on the same state, or None.
            callbacks: call the field's step callbacks from the loops that run with this term
                (False for the extra terms of a solve: time gradients, re-solves).
        """
        return Term(
            self.func if func is None else func, self.y0, self.t_dtype, self.layout, self.reverse, callbacks=callbacks
        )

    def unflatten(self, ys: torch.Tensor):
        """(T, *flat shape) -> the user's layout (and the caller's complex dtype for a complex state
        integrated as its real form)."""
        if self.complex_state is not None:
            return self.complex_state.unpack(ys, self.layout)
        return ys if self.layout is None else self.layout.unflatten(ys)


def check_norm(norm: Callable, flat: torch.Tensor) -> None:
    """Call a user's error norm once on the state and refuse a value that is not one number.

    A norm of several values (e.g. ``x.abs()``) failed at the first step with torch's "only one element
    tensors can be converted to Python scalars". Inside a torch.func transform the state is batched and
    the norm sees all of it, so the check is left out there.

    Args:
        norm: the norm as the loops call it, on the flat state.
        flat: the flat initial state.

    Raises:
        ValueError: ``norm`` returned something other than a number or a one-element tensor.
    """
    if inside_transform():
        return
    with torch.no_grad():
        value = norm(flat.detach())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return
    if not (isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool):
        what = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"norm must return one number (a 0-d tensor), got {what}; reduce over all elements, e.g. "
            "norm=lambda x: x.abs().max()."
        )


def check_step_times(name: str, times: torch.Tensor | Sequence[Any], sign: float) -> tuple[float, ...]:
    """Validate ``jump_t`` or ``step_t`` and return it in solver time: host floats, increasing.

    Args:
        name: "jump_t" or "step_t" (for the messages).
        times: a tensor of any shape (flattened, as odeint's options are), or a sequence of numbers or
            one-element tensors.
        sign: -1.0 for a solve backwards in time (solver time s = -t), else 1.0.

    Returns:
        The times, negated by ``sign`` and sorted.

    Raises:
        TypeError: ``times`` is not made of numbers.
        ValueError: a time is NaN (it has no place in the solve; sorted among the others it would
            silently reorder or drop them).
    """
    try:
        if isinstance(times, torch.Tensor):
            values = plain(times).detach().reshape(-1).tolist()
        else:
            values = [float(x) for x in times]
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(  # noqa: B904 - the conversion error adds nothing
            f"{name} must be a tensor or a sequence of times (numbers), got {type(times).__name__} {times!r}."
        )
    if any(math.isnan(x) for x in values):
        raise ValueError(f"{name} contains NaN, which is no time; give the times where steps must end as numbers.")
    return tuple(sorted(sign * float(x) for x in values))


def check_t_dtype(t_dtype: object) -> None:
    """Refuse a ``t_dtype`` that is not a floating torch dtype (None, the default, passes).

    Args:
        t_dtype: the dtype of the time handed to ``func``, as given to the solve.

    Raises:
        TypeError: an integer, boolean or non-dtype ``t_dtype``.
    """
    if t_dtype is not None and not (isinstance(t_dtype, torch.dtype) and t_dtype.is_floating_point):
        # an integer or boolean time would be truncated (func would see t = 0 throughout a solve on [0, 1])
        raise TypeError(
            f"t_dtype must be a floating torch dtype such as torch.float64 (the dtype of the time handed to "
            f"func), got {t_dtype!r}."
        )


def make_problem(func, y0, t, solver, controller, *, t_dtype=None, jump_t=(), step_t=(), event_t_end=None) -> Problem:
    """Validate and normalise one solve's inputs.

    Args:
        func, y0, t, solver, controller: as :func:`hybrid_node.solve`.
        t_dtype: dtype of the time handed to ``func``, a floating dtype (None: the state's real dtype).
        jump_t, step_t: times where steps must end.
        event_t_end: the time where an event search gives up (None: no end time).

    Returns:
        The :class:`Problem`.

    Raises:
        TypeError, ValueError: an invalid input (the message says how to fix it).
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}.")
    t, host = check_times(t)
    flat, layout = check_state(y0)
    if flat.is_inference() and not torch.is_inference_mode_enabled():
        # a state made under torch.inference_mode (a previous solve's output) can neither be saved for
        # backward nor take requires_grad, as the time gradients and the adjoints' re-solves do with y0;
        # its copy made here, outside that mode, can (no gradient reaches an inference tensor anyway)
        flat = flat.clone()
    if isinstance(solver, AbstractSolver) and solver.partitioned and (layout is None or len(layout.sizes) != 2):
        raise ValueError(
            f"method {solver.name!r} steps q and p separately and needs a tuple state y0 = (q, p) whose func "
            "returns (dq/dt, dp/dt); pass y0 as a pair, or use a method such as 'rk4' (or 'implicit_midpoint' "
            "/ 'gl4', symplectic for any Hamiltonian)."
        )
    if flat.is_complex() and isinstance(solver, ScipySolver):
        if len(host) > 1:  # one output time is y0 itself: scipy is not called (torchdiffeq returns it too)
            solver.check_complex(flat.dtype)  # RK45, RK23, DOP853 and BDF do; Radau and LSODA refuse
    elif flat.is_complex() and not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"method {solver.name!r} does not integrate complex states ({flat.dtype}); the torch methods "
            "and scipy_solver with RK45, RK23, DOP853 or BDF do. For this method, solve the real system: "
            "torch.view_as_real(y0) as the state and a field that maps it with torch.view_as_complex / "
            "torch.view_as_real."
        )
    # the implicit methods' Newton iterations and Jacobians are real: a complex state is integrated as the
    # equivalent real system of twice the size, exact for any field (hybrid_node/_complex.py)
    implicit = isinstance(solver, AbstractSolver) and solver.implicit
    complex_state = ComplexState(y0) if flat.is_complex() and implicit else None
    reverse = len(host) > 1 and host[1] < host[0]
    sgn = -1.0 if reverse else 1.0
    ts = [sgn * x for x in host]
    rtol = atol = None
    norm: Callable = _rms
    if isinstance(controller, PIDController):
        rtol = _tolerance(controller.rtol, layout, flat, "rtol")
        atol = _tolerance(controller.atol, layout, flat, "atol")
        if (
            rtol + atol == 0  # two floats (the usual case): no tensors to build
            if isinstance(rtol, float) and isinstance(atol, float)
            else bool(torch.any(torch.as_tensor(rtol) + torch.as_tensor(atol) == 0))  # per element
        ):
            raise ValueError(
                "rtol and atol are both 0 for some state elements, which is not a valid tolerance: their error "
                "is measured against atol + rtol * |y|, so no step could pass the error test. Give each element "
                "a positive rtol or atol."
            )
        warn_unresolvable_tolerance(rtol, atol, flat)
        if complex_state is not None:
            # each part of the real form gets its complex element's tolerance
            rtol, atol = real_tolerance(rtol, flat.shape), real_tolerance(atol, flat.shape)
    if complex_state is not None:
        func = complex_state.field(func)
        jac = getattr(solver, "jacobian", None)
        if callable(jac) and not complex_state.is_tuple and isinstance(solver, AbstractSolver):
            # the user's jac(t, y) gives the complex system's Jacobian; the solver needs the real form's
            solver = dataclasses.replace(cast(Any, solver), jacobian=ComplexJacobian(jac, complex_state.views[0]))
        real = complex_state.to_real(tuple(y0) if complex_state.is_tuple else y0)
        layout = TupleLayout(real) if complex_state.is_tuple else None
        flat = real if layout is None else layout.flatten(real)
    if isinstance(controller, PIDController):
        user_norm = controller.norm
        if user_norm is not None and complex_state is not None:
            user_norm = ComplexNorm(user_norm, complex_state)  # the user's norm sees the complex error
        if user_norm is not None:
            norm = user_norm if layout is None else TupleNorm(user_norm, layout)
            check_norm(norm, flat)
        elif layout is not None and len(layout.sizes) > 1:
            norm = PartsRMS(layout.sizes)
    check_t_dtype(t_dtype)
    if t_dtype is None:
        # torchdiffeq hands func the time in the state's real dtype (a float32 model given float64
        # times computes in float32); the loops keep their own time as float64 host floats
        t_dtype = real_dtype(flat.dtype)
    end = None
    if event_t_end is not None:
        try:
            end = sgn * float(event_t_end)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(  # noqa: B904 - the conversion error adds nothing
                f"t_end must be a number (the time where the event search gives up), got {type(event_t_end).__name__}."
            )
        if not (math.isfinite(end) and end > ts[0]):
            raise ValueError(
                f"t_end={float(event_t_end):g} must be a finite time after t0={host[0]:g} in the direction of "
                "integration (before t0 with reverse_time=True)."
            )
    return Problem(
        func,
        flat,
        layout,
        t,
        ts,
        reverse,
        solver,
        controller,
        rtol,
        atol,
        norm,
        check_step_times("jump_t", jump_t, sgn),
        check_step_times("step_t", step_t, sgn),
        t_dtype,
        end,
        complex_state,
    )
