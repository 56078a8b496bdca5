"""Step-size controllers: constant steps, and the I/PI/PID controller for embedded pairs.

References: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.4 (error norm, initial step);
G. Söderlind, "Digital filters in adaptive time-stepping", ACM TOMS 29 (2003) (PI/PID control).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch._subclasses.fake_tensor import is_fake

from ._transforms import is_batched


def sign_hint(*values: float) -> str:
    """What to add to the error of a step setting when one of ``values`` is negative, else "".

    A negative step is how DifferentialEquations.jl spells a step backwards in time (``dt < 0`` with
    ``tspan = (1.0, 0.0)``); here, as in scipy's ``solve_ivp`` and torchdiffeq, step settings are lengths
    and the direction is that of ``t``, so the message says so instead of only "must be positive".
    """
    if not any(v < 0 for v in values):
        return ""
    return (
        " Steps are lengths: a solve backwards in time (t decreasing) takes positive ones too, its direction "
        "comes from t."
    )


class AbstractController(abc.ABC):
    """A step-size rule: settings only; its per-solve state comes from :meth:`init` and is passed back.

    What the loops and the entry points read is declared here, so nothing probes for attributes:
    ``adaptive`` (steps chosen from the error estimate; the solver must have one), ``per_sample`` and
    ``device_loop`` (the loop strategies it asks for; False unless a controller offers them).
    """

    #: steps are chosen from the solver's error estimate (PIDController), not given (ConstantStepSize)
    adaptive: bool = False
    #: every element of the batch takes its own steps
    per_sample: bool = False
    #: the steps are decided on the state's device
    device_loop: bool = False

    @abc.abstractmethod
    def init(self) -> Any:
        """The controller state at the start of a solve (None for a controller without one)."""


def check_max_num_steps(value: object, owner: str = "") -> None:
    """Refuse a step limit that is not a positive int (every controller's and scipy_solver's rule).

    A bool is an int to Python: ``max_num_steps=True`` was one step, so it is refused too.

    Args:
        value: the given ``max_num_steps``.
        owner: a prefix naming who takes it in the message (e.g. ``"scipy_solver: "``), or "".

    Raises:
        ValueError: ``value`` is a bool, not an int, or below 1.
    """
    if isinstance(value, bool) or not (isinstance(value, int) and value > 0):
        raise ValueError(f"{owner}max_num_steps must be a positive int, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class ConstantStepSize(AbstractController):
    """Fixed steps on a grid.

    Args:
        step_size: the step; None takes the output times as the grid (unless ``grid_constructor``).
        grid_constructor: ``f(func, y0, t) -> grid`` returning a 1-D tensor from t[0] to t[-1].
        interp: how outputs between grid points are obtained: "linear" or "cubic" (Hermite); None (the
            default) means "not given" and is read as "linear" by the loops that interpolate. Kept
            apart from an explicit "linear" so that the loops that never read it (non-terminal and
            per-sample event solves, the Julia backend) can refuse an explicit value instead of
            dropping it; ``ConstantStepSize()`` and ``ConstantStepSize(interp="linear")`` therefore
            differ in repr and ``==`` although plain solves treat them alike (the loops test
            ``interp == "cubic"``).
        perturb: evaluate the field just after the start and just before the end of each step (for
            fields with jumps at grid points); passes ``perturb=`` to the user's function.
        max_num_steps: the most steps a ``step_size`` grid may have; a longer one is refused before
            the solve starts (``step_size=1e-13`` on [0, 1] would otherwise run for days). An event
            search on a fixed grid stops after this many steps, or after ``EVENT_MAX_STEPS`` of
            :mod:`hybrid_node.loop.dispatch` while this is left at its default.

    Raises:
        ValueError: an invalid setting (the message names it).
    """

    step_size: float | None = None
    grid_constructor: Callable | None = None
    interp: str | None = None
    perturb: bool = False
    max_num_steps: int = 10**6

    def __post_init__(self):
        if self.step_size is not None and self.grid_constructor is not None:
            raise ValueError("Give step_size or grid_constructor, not both.")
        if self.step_size is not None:
            _check_number("step_size", self.step_size)
        if self.step_size is not None and not (float(self.step_size) > 0 and math.isfinite(float(self.step_size))):
            raise ValueError(
                f"step_size must be a positive finite number, got {self.step_size!r}."
                + sign_hint(float(self.step_size))
            )
        if self.interp is not None and self.interp not in ("linear", "cubic"):
            raise ValueError(f"interp must be 'linear' or 'cubic' (or None, read as 'linear'), got {self.interp!r}.")
        check_max_num_steps(self.max_num_steps)

    def init(self) -> None:
        """Fixed steps keep no state between steps."""
        return None

    def grid(self, func, y0, t: torch.Tensor, direction: float = 1.0) -> list:
        """The grid of step end points (host floats), from t[0] to t[-1] inclusive, increasing.

        Args:
            func, y0: passed to ``grid_constructor``.
            t: the output times (increasing solver times, ``direction`` times the user's).
            direction: -1.0 for a solve backwards in time: ``grid_constructor`` gets and returns the
                user's (decreasing) times, as in torchdiffeq, and its grid is mirrored here.

        Returns:
            The grid: the output times, the ``grid_constructor``'s, or ``step_size`` apart.

        Raises:
            ValueError: a ``grid_constructor`` grid that does not run from t[0] to t[-1], or a
                ``step_size`` grid of more than ``max_num_steps`` steps.
        """
        t0, t1 = float(t[0]), float(t[-1])
        if self.grid_constructor is not None:
            g = self.grid_constructor(func, y0, direction * t)
            g = [direction * float(x) for x in torch.as_tensor(g).reshape(-1)]
            if len(g) < 2 or g[0] != t0 or g[-1] != t1 or not all(b > a for a, b in zip(g, g[1:])):
                raise ValueError("grid_constructor must return a strictly monotonic grid from t[0] to t[-1].")
            return g
        if self.step_size is None:
            return [float(x) for x in t]
        h = float(self.step_size)
        n = max(1, math.ceil((t1 - t0) / h - 1e-9))
        if n > self.max_num_steps:
            raise too_many_fixed_steps(h, f"an interval of length {t1 - t0:g}", n, self.max_num_steps)
        grid = [t0 + i * h for i in range(n)] + [t1]
        return grid


#: PIDController's default ``sync_every`` (the device loop's attempts per host check)
_DEFAULT_SYNC_EVERY = 8


@dataclasses.dataclass(frozen=True)
class PIDController(AbstractController):
    """Adaptive step-size control from the embedded error estimate.

    The error ratio of a step is ``norm(err / (atol + rtol * max(|y0|, |y1|)))``; the step is accepted when
    it is at most 1, and the next step is ``dt * safety * r_n^(-b1/k) * r_(n-1)^(-b2/k) * r_(n-2)^(-b3/k)``
    with k = error order + 1, b1 = pcoeff + icoeff + dcoeff, b2 = -(pcoeff + 2 dcoeff), b3 = dcoeff
    (icoeff=1 alone is the classic I controller), clipped to [dfactor, ifactor] and [min_step, max_step].

    Args:
        rtol, atol: relative and absolute tolerances (floats, or tensors broadcastable to the state).
        pcoeff, icoeff, dcoeff: PID coefficients.
        safety, ifactor, dfactor: safety factor and the largest growth / shrink factors.
        first_step: the initial step; None selects it by Hairer's heuristic (two evaluations). With
            ``per_sample`` also a tensor (or array) of one step per sample, as torchode's ``dt0``.
        min_step, max_step: bounds on |dt|. A positive min_step clamps the step up to it and accepts a
            step of at most min_step whatever its error (as torchdiffeq does); min_step=0 means the
            floating-point resolution bound, below which the solve fails (step size underflow).
        max_num_steps: the solve fails after this many attempted steps.
        norm: ``norm(tensor) -> scalar``; default RMS (max of per-tensor RMS for tuple states).
        per_sample: give every element of the batch (first state dimension) its own step size and
            accept/reject decision (see ``hybrid_node.loop.per_sample``); the field then receives
            a time vector of shape (batch,).
        device_loop: decide the steps on the state's device, ``sync_every`` attempts per host check
            (see ``hybrid_node.loop.device``); explicit first-same-as-last pairs only.
        sync_every: step attempts per run of the device loop (one host read per run); only with
            ``device_loop=True`` (the other loops check every attempt, so it is refused without it).
        shrink_after_accept: whether the step after an accepted one may be shorter (Hairer's codes and
            DifferentialEquations.jl: the factor may fall to ``safety``); False keeps it at least as
            long while the error ratio is below 1, the rule of torchdiffeq and diffrax, which
            ``odeint`` follows so that its steps are torchdiffeq's. The Julia backend proposes its
            own steps and ignores it.
        grow_after_reject: whether the step after an accepted step that directly follows a rejected
            attempt may be longer than that accepted step (True: the growth factor is capped by
            ``ifactor`` alone, the rule of torchdiffeq, diffrax and DifferentialEquations.jl). False
            caps that factor at 1, as Hairer's codes (``facmax = 1`` right after a rejection; DOPRI5's
            ``IF (REJECT) HNEW = MIN(ABS(HNEW), ABS(H))``) and scipy's ``RK45``/``RK23``/``DOP853``
            do: a step that just failed at a larger size is not tried again at once (Hairer, Nørsett,
            Wanner, Solving ODEs I, 2nd ed., Section II.4, after Shampine and Watts 1979). The Julia
            backend proposes its own steps and refuses False.
    """

    rtol: Any = 1e-7
    atol: Any = 1e-9
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    first_step: float | torch.Tensor | None = None
    min_step: float = 0.0
    max_step: float = math.inf
    max_num_steps: int = 2**31 - 1
    norm: Callable | None = None
    per_sample: bool = False
    device_loop: bool = False
    sync_every: int = _DEFAULT_SYNC_EVERY
    shrink_after_accept: bool = True
    grow_after_reject: bool = True

    adaptive = True  # a class attribute (no annotation), not a setting

    def __post_init__(self):
        if self.norm is not None and not callable(self.norm):  # else it fails at the first step
            raise TypeError(
                f"norm must be callable as norm(x) -> one number (a 0-d tensor), got {type(self.norm).__name__}; "
                "e.g. norm=lambda x: x.abs().max(), or leave it None for the RMS norm."
            )
        for name in ("rtol", "atol"):
            v = _from_numpy(getattr(self, name))
            object.__setattr__(self, name, v)  # frozen: the one normalisation of a setting
            if isinstance(v, torch.Tensor) and is_batched(v):
                raise ValueError(
                    f"{name} is batched by vmap; the problems of one vmap share their tolerances (per-component "
                    "tensors made outside the transform are fine): solve each tolerance separately."
                )
            if isinstance(v, torch.Tensor) and is_fake(v):
                # its values are unknown while torch.export traces (the check below failed with "must be
                # finite and non-negative, got FakeTensor(...)", as if the value were wrong)
                raise ValueError(
                    f"{name} is a tensor traced by torch.export or torch.compile, whose value the trace does not "
                    f"know; a traced solve's tolerances are constants of the program: pass {name} as a Python "
                    "float (export once per tolerance), or solve outside the trace."
                )
            values = (
                v.detach().reshape(-1).tolist()
                if isinstance(v, torch.Tensor)
                else np.asarray(v).reshape(-1).tolist()  # np.True_ and np.complex64 as Python's bool and complex
                if isinstance(v, (np.ndarray, np.generic))
                else (
                    [x for part in v for x in torch.as_tensor(part).reshape(-1).tolist()]
                    if isinstance(v, (tuple, list))
                    else [v]
                )
            )
            # a cast would take True as a tolerance of 1.0; a complex one has no order to compare errors with
            refuse_bool_or_complex(name, v)
            if any(not (isinstance(x, (int, float)) and x >= 0 and math.isfinite(x)) for x in values):
                raise ValueError(f"{name} must be finite and non-negative, got {v!r}.")
        if _is_zero(self.rtol) and _is_zero(self.atol):
            raise ValueError(
                "rtol and atol are both 0, which is not a valid tolerance: every step's error is measured "
                "against atol + rtol * |y|, so no step could pass the error test. Give a positive rtol or atol "
                "(e.g. rtol=1e-7, atol=1e-9), or use a fixed-step method with options={'step_size': ...}."
            )
        for name in ("pcoeff", "icoeff", "dcoeff", "safety", "ifactor", "dfactor", "min_step", "max_step"):
            _check_number(name, getattr(self, name))
        for name in ("pcoeff", "icoeff", "dcoeff"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}.")
        if not self.pcoeff + self.icoeff + self.dcoeff > 0:
            # the exponent of the current error ratio: at 0 or below a large error does not shrink the step
            raise ValueError(
                "pcoeff + icoeff + dcoeff must be positive (the weight of the current error ratio), got "
                f"{self.pcoeff} + {self.icoeff} + {self.dcoeff}; the I controller is icoeff=1 alone."
            )
        if not 0 < self.safety <= 1:
            raise ValueError(f"safety must be in (0, 1], got {self.safety}.")
        if not (self.ifactor >= 1 and 0 < self.dfactor <= 1):
            raise ValueError("ifactor must be >= 1 and dfactor in (0, 1].")
        if not (0 <= self.min_step <= self.max_step and self.max_step > 0 and math.isfinite(self.min_step)):
            raise ValueError(
                f"need 0 <= min_step <= max_step, min_step finite and max_step > 0, got min_step={self.min_step}, "
                f"max_step={self.max_step}." + sign_hint(self.min_step, self.max_step)
            )
        check_max_num_steps(self.max_num_steps)
        # a truthy string ("no") is no bool
        for name in ("per_sample", "device_loop", "shrink_after_accept", "grow_after_reject"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if isinstance(self.sync_every, bool) or not (isinstance(self.sync_every, int) and self.sync_every > 0):
            raise ValueError(
                f"sync_every must be a positive int (step attempts per host check), got {self.sync_every!r}."
            )
        if self.sync_every != _DEFAULT_SYNC_EVERY and not self.device_loop:
            # only the device loop runs attempts between host checks: the host loops checked after every
            # attempt whatever it was, so the setting was accepted and changed nothing
            raise ValueError(
                f"sync_every={self.sync_every} sets the attempts per host check of the device loop; it needs "
                "device_loop=True (or leave sync_every out)."
            )
        if self.first_step is not None:  # after per_sample's check: it decides whether several values may be given
            _check_first_step(self.first_step, self.per_sample)

    def init(self) -> tuple[float, float]:
        """Controller state: the previous two error ratios."""
        return (1.0, 1.0)

    def exponents(self, error_order: int) -> tuple[float, float, float]:
        """The PID formula's exponents (-b1 / k, -b2 / k, -b3 / k) for a method of the given error order."""
        k = error_order + 1
        b1 = self.pcoeff + self.icoeff + self.dcoeff
        b2 = -(self.pcoeff + 2 * self.dcoeff)
        b3 = self.dcoeff
        return -b1 / k, -b2 / k, -b3 / k


_HALF = (torch.float16, torch.bfloat16)

#: the smallest normal number of each real dtype: an ``atol`` below it may round to 0 in the scale
_SMALLEST_NORMAL = {dt: torch.finfo(dt).smallest_normal for dt in (*_HALF, torch.float32, torch.float64)}


def error_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the precision its error test is computed in: float32 for a half-precision tensor
    (float16, bfloat16), else ``x`` itself (no copy, so float32 and float64 solves are unchanged).

    float16 holds neither a tolerance such as ``atol = 1e-9`` (it rounds to 0; the smallest subnormal
    is 6e-8) nor ``error / scale`` beyond 65504, nor the sum of squares of a norm over many elements:
    computed in the state's dtype, a step's error ratio came out inf or NaN (0 / 0 where ``atol``
    vanished), and a solve whose tolerances were merely too tight for the dtype failed as if the
    state had become NaN. The ratio only decides the step, so its precision never reaches the state.

    Args:
        x: a state, an error estimate, a field value or a tolerance tensor.

    Returns:
        ``x.float()`` for a half-precision ``x``, else ``x``.
    """
    return x.float() if x.dtype in _HALF else x


def tolerance_precision(tol):
    """A tolerance in the precision of the error test (:func:`error_precision`): a float is kept."""
    return error_precision(tol) if isinstance(tol, torch.Tensor) else tol


def too_many_fixed_steps(step_size: float, over: str, n: int, limit: int, outcome: str = "") -> ValueError:
    """The refusal of a fixed-step grid with more steps than ``max_num_steps``, for every backend.

    The backends count the grid's steps differently on purpose (the torch backend's grid spans
    t[0]..t[-1]; the Julia backend's steps also end on every output time), so each passes its own
    count and its own description of what was stepped over; the advice is the same.

    Args:
        step_size: the fixed step.
        over: what the steps cover, e.g. ``"an interval of length 1"``.
        n: the number of steps the grid takes.
        limit: ``max_num_steps``.
        outcome: what would happen without the refusal (e.g. where a solver would stop), or "".

    Returns:
        The ValueError to raise: the count, the limit, and how to fix it (a larger ``step_size``,
        an adaptive method, or ``options={'max_num_steps': n}``).
    """
    because = f" ({outcome})" if outcome else ""
    return ValueError(
        f"step_size={step_size:g} over {over} takes {n:,} steps, more than max_num_steps={limit:,}{because}; "
        f"use a larger step_size (or an adaptive method such as 'dopri5'), or allow them with "
        f"options={{'max_num_steps': {n}}}."
    )


def _from_numpy(tol):
    """A NumPy tolerance as the solve takes it: a float for a real scalar (``np.float32(1e-5)``, a 0-d
    array), a float64 tensor for a real array of per-component values; a boolean or complex array as a
    tensor of its own dtype, and any other value unchanged, for the checks to refuse by name.

    torchdiffeq accepts NumPy tolerances (its arithmetic takes them as it takes floats); the checks
    and the loops here read only floats and tensors, so NumPy values are converted once, up front.

    Args:
        tol: ``rtol`` or ``atol`` as given.

    Returns:
        A float, a tensor, or ``tol`` itself.
    """
    if isinstance(tol, np.ndarray) and tol.ndim > 0:
        if tol.dtype.kind in "bc":  # kept as they are for the checks to refuse (float64 made True 1.0, dropped 1j)
            return torch.as_tensor(tol)
        if tol.dtype.kind in "iuf":
            return torch.as_tensor(tol, dtype=torch.float64)
        return tol
    if isinstance(tol, (np.ndarray, np.generic)) and np.asarray(tol).dtype.kind in "iuf":
        return float(tol)
    return tol


def bool_or_complex(value: Any) -> str | None:
    """Whether a tolerance holds a bool or a complex value, which no tolerance means: a cast to float
    took True as 1.0 and dropped an imaginary part without a word.

    Args:
        value: a tolerance as given: a Python or NumPy number, a tensor or NumPy array, or a tuple or
            list of those (one per part of a tuple state).

    Returns:
        "bool" where it holds a bool (a bool dtype), else "complex" where it holds a complex value,
        else None (also for what is no number at all: the callers refuse that by their own rules).
    """
    if isinstance(value, (tuple, list)):
        kinds = {bool_or_complex(part) for part in value}
        return "bool" if "bool" in kinds else "complex" if "complex" in kinds else None
    if isinstance(value, torch.Tensor):
        dtype_kind = "b" if value.dtype == torch.bool else "c" if value.is_complex() else ""
    elif isinstance(value, (np.ndarray, np.generic)):
        dtype_kind = value.dtype.kind
    else:
        dtype_kind = "b" if isinstance(value, bool) else "c" if isinstance(value, complex) else ""
    return {"b": "bool", "c": "complex"}.get(dtype_kind)


def refuse_bool_or_complex(name: str, value: Any) -> None:
    """Refuse a bool or complex tolerance by name (:func:`bool_or_complex`), saying what to give instead.

    Args:
        name: the setting, for the message.
        value: its value.

    Raises:
        ValueError: ``value`` holds a bool or a complex value.
    """
    kind = bool_or_complex(value)
    if kind is not None:
        raise ValueError(
            f"{name} must be real, got {kind} {value!r}; give a float such as {name}=1e-6, or a real tensor "
            "of per-component values."
        )


def _check_number(name: str, value: Any) -> None:
    """Check that a scalar setting is one real number (a float, an int, or a one-element tensor or array).

    Args:
        name: the setting, for the message.
        value: its value.

    Raises:
        ValueError: a bool, something that is not a number (a string, a list, a complex value) or a
            tensor or array of several values; the comparisons of the checks raised torch's "Boolean value
            of Tensor with more than one value is ambiguous" or Python's "'<=' not supported" instead.
    """
    size = value.numel() if isinstance(value, torch.Tensor) else np.size(value) if isinstance(value, np.ndarray) else 1
    number = (int, float, np.number, np.ndarray, torch.Tensor)
    # numpy's iscomplexobj asked only of numpy values (a Python complex is no ``number`` above): Dynamo
    # (strict torch.export) cannot trace it, and the float and int settings of a solve never reach it
    if isinstance(value, torch.Tensor):
        complex_ = value.is_complex()
    else:
        complex_ = isinstance(value, (np.ndarray, np.generic)) and bool(np.iscomplexobj(value))
    if size != 1 or isinstance(value, (bool, np.bool_)) or not isinstance(value, number) or complex_:
        raise ValueError(f"{name} must be one real number, got {value!r}.")


def _check_first_step(value: Any, per_sample: bool = False) -> None:
    """Check ``PIDController.first_step``: one positive number (a float, an int, or a one-element
    tensor or array), the first step of the whole solve and of every sample of a per-sample one; with
    ``per_sample``, also a tensor or array of several positive finite values, one per sample.

    Args:
        value: the setting (not None).
        per_sample: whether the controller gives every sample its own steps.

    Raises:
        ValueError: several values without ``per_sample`` (every other loop takes one first step),
            something that is not a number, or a number that is not positive (with several values:
            one that is not positive and finite).
    """
    size = value.numel() if isinstance(value, torch.Tensor) else np.size(value) if isinstance(value, np.ndarray) else 1
    if size != 1 and not per_sample:
        # compared with 0 it raised torch's "Boolean value of Tensor with more than one value is ambiguous"
        raise ValueError(
            f"first_step must be one positive number, got {size} values; a first step per sample needs "
            "PIDController(per_sample=True) (options={'per_sample': True}); the shared-step solve starts with "
            "one step: give one float, e.g. float(first_step.min()), or leave first_step=None to let it be chosen."
        )
    if size != 1:
        if isinstance(value, torch.Tensor) and not (value.is_complex() or value.dtype == torch.bool):
            steps = value.detach()
        elif isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
            steps = torch.as_tensor(value)
        else:  # a list, a complex or boolean tensor: not the tensor of real steps the per-sample loop reads
            raise ValueError(f"first_step per sample must be a real tensor or array, got {value!r}.")
        if not bool(((steps > 0) & torch.isfinite(steps)).all()):
            raise ValueError(
                f"first_step per sample must be positive and finite, got {value!r}." + sign_hint(float(steps.min()))
            )
        return
    _check_number("first_step", value)
    step = float(value.detach() if isinstance(value, torch.Tensor) else value)
    if not step > 0:
        raise ValueError(f"first_step must be positive, got {value!r}." + sign_hint(step))


def _is_zero(tol) -> bool:
    """Whether a scalar tolerance is 0 (tensor and tuple tolerances are checked per element by the solve)."""
    return isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol == 0


def rms_norm(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Root mean square of all elements: the default error norm (Hairer, Nørsett, Wanner, II.4).

    Complex elements count by their magnitude (as torchdiffeq's norm); half-precision elements are
    squared in float32, since float16's squares overflow from 256 on (the first-step heuristic's
    ``y0 / tolerance`` is often larger), which made every float16 solve start with a zero step. An
    empty tensor (a batch of no samples) has norm 0, as in diffrax: its mean, NaN, made the
    first-step heuristic pick a step below float32's resolution and the solve fail.

    Args:
        x: the tensor.
        dim: reduce over this dimension only (the per-sample loop's norm of each row); None: all.

    Returns:
        A real tensor (float32 for half-precision input): 0-d, or ``x``'s shape without ``dim``.
    """
    if x.is_complex():
        x = x.abs()
    if x.dtype in _HALF:
        x = x.float()
    if (x.numel() if dim is None else x.shape[dim]) == 0:
        return x.sum() if dim is None else x.sum(dim)  # zeros of the reduced shape
    return (x.pow(2).mean() if dim is None else x.pow(2).mean(dim)).sqrt()


def scaled_error(error: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, rtol, atol) -> torch.Tensor:
    """``error / (atol + rtol * max(|y0|, |y1|))`` elementwise, the error each step control norms.

    With ``atol = 0`` (or an ``atol`` that rounds to 0 in the scale's dtype) a component that stays
    exactly 0 has a zero scale: its 0 / 0 counts as no error (NaN made every step "non-finite"); a
    NaN or non-zero error over a zero scale still rejects. A half-precision state's error is scaled
    in float32 (:func:`error_precision`). Uses in-place arithmetic on one scratch tensor; call it
    without autograd (it only decides the step).

    Args:
        error: the step's error estimate; y0, y1: the states at the step's ends.
        rtol, atol: the tolerances (floats, or tensors that broadcast against the state).

    Returns:
        The scaled error, of the state's shape (float32 for a half-precision state).
    """
    if error.dtype in _HALF or y0.dtype in _HALF:  # upcast before the scale: atol = 1e-9 is 0 in float16
        error, y0, y1 = error_precision(error), error_precision(y0), error_precision(y1)
        rtol, atol = tolerance_precision(rtol), tolerance_precision(atol)
    scale = torch.maximum(y0.abs(), y1.abs())
    if isinstance(rtol, float) and isinstance(atol, float):
        scale.mul_(rtol).add_(atol)
    else:
        scale = atol + rtol * scale
    r = torch.div(error, scale)
    if not (isinstance(atol, float) and atol >= _SMALLEST_NORMAL.get(scale.dtype, math.inf)):
        r.masked_fill_(error == 0, 0.0)
    return r


class ErrorPair(NamedTuple):
    """Two embedded error estimates of one step that the error ratio combines after scaling each
    (:func:`combined_ratio`): DOP853's fifth- and third-order differences (``method="dopri8"``).

    A method's ``error_estimate`` returns one where a single vector cannot carry its estimate: DOP853's
    weight of the two depends on their norms *after* division by ``atol + rtol * max(|y0|, |y1|)``,
    which the step does not know (the tolerances belong to the loop).
    """

    high: torch.Tensor
    low: torch.Tensor


def combined_ratio(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """DOP853's error ratio from the norms of its two scaled estimates: ``high^2 / sqrt(high^2 + 0.01 low^2)``.

    With RMS norms, ``high = E5 / sqrt(n)`` and ``low = E3 / sqrt(n)`` for the Euclidean norms ``E5, E3`` of
    the scaled estimates, so this is Hairer's ``E5^2 / sqrt(n (E5^2 + 0.01 E3^2))``. It behaves like an
    O(h^8) estimate: ``|err5| = O(h^6)`` damped by ``|err5| / |err3| = O(h^2)``. Elementwise, so one
    formula serves a solve (0-d norms) and per-sample control (a norm per row).

    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.10 (DOP853's error
    estimate); scipy's ``DOP853._estimate_error_norm``.

    Args:
        high, low: the norms of the scaled fifth- and third-order estimates (real tensors of one shape).

    Returns:
        The ratio: 0 where both norms are 0, NaN or inf where either is not finite (the step is rejected).
    """
    square = high * high
    denom = (square + 0.01 * (low * low)).sqrt()
    return torch.where(denom == 0, torch.zeros_like(denom), square / denom)


def error_ratio_tensor(
    error: torch.Tensor | ErrorPair, y0: torch.Tensor, y1: torch.Tensor, rtol, atol, norm
) -> torch.Tensor:
    """``norm(error / (atol + rtol * max(|y0|, |y1|)))`` as a 0-d tensor: the step's accept/reject measure
    (:func:`scaled_error`, then the norm).

    Computed without autograd (it only decides the step), with in-place arithmetic on one scratch
    tensor and, for the default RMS norm, one reduction kernel. Stays on the device (no host sync).
    An :class:`ErrorPair` is scaled and normed estimate by estimate, then combined (:func:`combined_ratio`).
    A half-precision state's error is scaled and normed in float32 (:func:`error_precision`): a custom
    ``norm`` then gets a float32 tensor, and the ratio is float32.
    """
    if isinstance(error, ErrorPair):
        high = error_ratio_tensor(error.high, y0, y1, rtol, atol, norm)
        return combined_ratio(high, error_ratio_tensor(error.low, y0, y1, rtol, atol, norm))
    with torch.no_grad():
        r = scaled_error(error, y0, y1, rtol, atol)
        if norm is rms_norm:
            return torch.linalg.vector_norm(r) / math.sqrt(max(r.numel(), 1))
        return norm(r)


def error_ratio(error: torch.Tensor | ErrorPair, y0: torch.Tensor, y1: torch.Tensor, rtol, atol, norm) -> float:
    """:func:`error_ratio_tensor` as a host float."""
    return float(error_ratio_tensor(error, y0, y1, rtol, atol, norm))


def first_trial_step(d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
    """The trial step ``h0`` of Hairer's initial-step heuristic from the scaled norms of ``y0`` and
    ``f(t0, y0)``; elementwise, so one formula serves a solve (0-d) and per-sample control (per row).

    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.4, p. 169.

    Args:
        d0: ``norm(y0 / scale)``; d1: ``norm(f0 / scale)`` (float64 tensors of one shape).

    Returns:
        ``h0``: ``0.01 d0 / d1``, or 1e-6 where either norm is below 1e-5 or the ratio is not finite.
    """
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1.clamp_min(1e-300))
    return torch.where(torch.isfinite(h0), h0, 1e-6)


def initial_step_from_trial(h0: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, order: int) -> torch.Tensor:
    """The initial step of Hairer's heuristic from its trial step ``h0`` (:func:`first_trial_step`).

    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.4, p. 169.

    Args:
        h0: the trial step; d1: ``norm(f0 / scale)``; d2: ``norm((f(t0 + h0, y0 + h0 f0) - f0) / scale) / h0``.
        order: the order of the method's error estimate.

    Returns:
        ``min(100 h0, (0.01 / max(d1, d2))^(1 / (order + 1)))`` (``max(1e-6, h0 / 1000)`` for a field
        that barely changes), or ``h0 / 1000`` where ``d2`` is not finite.
    """
    d12 = torch.maximum(d1, d2)
    h1 = torch.where(
        d12 <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / d12.clamp_min(1e-300)) ** (1.0 / (order + 1))
    )
    return torch.where(torch.isfinite(d2), torch.minimum(100 * h0, h1), h0 * 1e-3)


def initial_step(f, t0: float, y0: torch.Tensor, f0: torch.Tensor, order: int, rtol, atol, norm) -> float:
    """Hairer's heuristic for the first step (one extra evaluation of f), with the solve's norm.

    The scaled norms of a half-precision state are taken in float32 (:func:`error_precision`), as
    the error test's: in float16, ``atol + rtol * |y0|`` rounded to 0 for tight tolerances and the
    norms came out NaN or inf. f is called on the state's own dtype.

    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.4, p. 169.

    Args:
        f: the field ``f(t, y)``; t0: the start time; y0: the initial state; f0: ``f(t0, y0)``.
        order: the order of the method's error estimate.
        rtol, atol: the tolerances (floats, or tensors that broadcast against the state); norm: the error norm.

    Returns:
        The first step (a host float).
    """

    def host(x) -> torch.Tensor:
        return torch.tensor(float(x), dtype=torch.float64)

    with torch.no_grad():  # the heuristic only picks a number; f itself runs with autograd as usual
        y0_e, f0_e = error_precision(y0), error_precision(f0)
        scale = tolerance_precision(atol) + torch.abs(y0_e) * tolerance_precision(rtol)
        d1 = host(norm(f0_e / scale))
        h0 = float(first_trial_step(host(norm(y0_e / scale)), d1))
    f1 = f(t0 + h0, y0 + h0 * f0)
    with torch.no_grad():
        d2 = host(norm((error_precision(f1) - f0_e) / scale)) / h0
    return float(initial_step_from_trial(torch.tensor(h0, dtype=torch.float64), d1, d2, order))
