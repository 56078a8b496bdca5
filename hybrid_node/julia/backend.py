"""The "julia" backend: DifferentialEquations.jl / SciMLSensitivity.jl through juliacall.

:func:`solve` is what ``odeint``, ``odeint_adjoint`` and ``solve`` call when the backend resolves
to "julia". It validates everything in Python first (so mistakes are reported without starting
Julia), then hands the problem to an *engine* with two methods:

- ``forward(problem, u0, theta, ts, config) -> ForwardOutput``: ``u0`` is the Julia ``(D, B)``
  layout of a torch ``(B, D)`` state (its transpose), ``theta`` the flat float64 parameters,
  ``ts`` the output times; the output states are ``(D, B, T)``.
- ``backward(handle, ybar) -> (u0bar, thetabar)``: ``ybar`` is the ``(D, B, T)`` cotangent of the
  states; returns the ``(D, B)`` and ``(P,)`` gradients.
- ``python_exception(err) -> BaseException | None``: the Python exception a callback raised, when
  ``err`` (a ``juliacall.JuliaError``) carries one. PythonCall already re-raises the original
  exception where its PyException reaches the boundary unwrapped (src/JlWrap/base.jl); this is
  the fallback for one that a solver layer wrapped in another Julia exception.
- ``adjoint_failure(err) -> str | None``: the solver's warnings, when ``err`` says that the adjoint's
  backward solve failed (SciMLSensitivity returns its gradients without checking its return code;
  ``julia/bridge.jl``'s ``backward`` watches the warnings and throws ``AdjointSolveFailed``).

The engine only ever receives strictly increasing ``ts``: SciMLSensitivity's non-backsolve adjoints
return the states at ``sort(saveat)`` and walk the cotangents in that order, so a decreasing ``t`` is
solved in reversed time ``s = -t`` (``dy/ds = -f(-s, y)``; same states, same gradients of ``y0``
and the parameters).

:class:`JuliaEngine` is the real one (Julia module ``HybridNODE`` in ``julia/``). A
``torch.autograd.Function`` bridges it to torch, so ``loss.backward()`` fills the gradients of
``y0``, the parameters and ``t``. Gradients with respect to the output times are formed in Python:
``dL/dt_i = <Ybar_i, f(t_i, Y_i)>`` for ``i >= 1`` and ``dL/dt_0 = -<a_0, f(t_0, y_0)>``, where
``a_0`` is the gradient of ``y_0`` carried back through the solve (excluding the direct ``Ybar_0``).

References: Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018 (adjoint method
and the time gradients); Rackauckas et al., "Universal Differential Equations for Scientific
Machine Learning", arXiv:2001.04385 (SciMLSensitivity's adjoints).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union, cast

import numpy as np
import torch
from torch import nn

from .._errors import BackendError, SolverError, Status, field_cause
from .._registry import METHOD_SPECS, method_spec, refuse_unknown_options
from .._solution import Solution, Stats
from ..controllers import ConstantStepSize, PIDController, sign_hint, too_many_fixed_steps
from ..sensitivity.settings import (
    BacksolveAdjoint,
    DirectBackprop,
    GaussAdjoint,
    InterpolatingAdjoint,
    QuadratureAdjoint,
)
from . import runtime as julia_runtime
from .translate import CallbackProblem, MLPSpec, make_callbacks, translate_mlp

State = Union[torch.Tensor, tuple[torch.Tensor, ...]]

#: user method name (lower case, torch- or Julia-style) -> OrdinaryDiffEq algorithm, from the registry
METHODS: dict[str, str] = {name.lower(): spec.julia for name, spec in METHOD_SPECS.items() if spec.julia is not None}
JULIA_ALGORITHMS = tuple(dict.fromkeys(METHODS.values()))
STIFF_ALGORITHMS = ("Rodas5P", "Rosenbrock23", "KenCarp4", "TRBDF2", "FBDF", "QNDF", "AutoTsit5Rodas5P")
ROSENBROCK_ALGORITHMS = ("Rodas5P", "Rosenbrock23", "AutoTsit5Rodas5P")
FIXED_STEP_ALGORITHMS = ("RK4", "Euler")
#: fixed steps unless ``options={"adaptive": True}`` (``trbdf2``: torchdiffeq's meaning, as on torch)
FIXED_UNLESS_ADAPTIVE = ("TRBDF2",)
#: the (lower-case) names only the torch backend has, from the registry
TORCH_ONLY_METHODS = tuple(name.lower() for name, spec in METHOD_SPECS.items() if spec.backends == ("torch",))
DEFAULT_METHOD = "dopri5"

FIXED_STEP_OPTIONS = ("step_size", "max_num_steps")
ADAPTIVE_OPTIONS = ("first_step", "max_num_steps")

_RETCODES = (
    ("MaxIters", Status.MAX_STEPS),
    ("DtLessThanMin", Status.STEP_UNDERFLOW),
    ("Unstable", Status.NONFINITE),
    ("ConvergenceFailure", Status.NEWTON_FAILED),
    ("InitialFailure", Status.INITIAL_FAILURE),
    ("MaxTime", Status.TIME_LIMIT),
    ("Stalled", Status.STALLED),
    ("DtNaN", Status.NONFINITE),
)


def resolve_method(method: str | None) -> str:
    """Map a user method name to a Julia algorithm name.

    Args:
        method: torch-style ("dopri5") or Julia-style ("Tsit5") name, any case; None: "dopri5".

    Returns:
        The OrdinaryDiffEq algorithm name.

    Raises:
        TypeError: ``method`` is not a string.
        BackendError: the method does not exist on the Julia backend (it says whether the torch backend
            has it).
    """
    if method is None:
        method = DEFAULT_METHOD
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}.")
    julia = method_spec(method, "julia").julia
    assert julia is not None  # method_spec checked that the Julia backend has the method
    return julia


@dataclasses.dataclass(frozen=True)
class SolveConfig:
    """Everything the engine needs besides the problem and the data.

    Attributes:
        algorithm: OrdinaryDiffEq algorithm name.
        sensitivity: SciMLSensitivity adjoint name.
        checkpointing: InterpolatingAdjoint's checkpointing.
        rtol, atol: forward (and backward) tolerances.
        quad_rtol, quad_atol: QuadratureAdjoint's quadrature tolerances.
        maxiters: the most step attempts, rejected ones included (what Julia's ``maxiters`` counts);
            :func:`prepare` always sets it to the torch backend's limit. None would leave upstream's
            default (10^6 for algorithms that can adapt, none for ``Euler``).
        dt: fixed step (fixed-step methods) or first step (adaptive), or None.
        fixed_step: the method steps on a fixed grid (also stopping at each output time).
        time_reversed: the engine solves ``dy/ds = -f(-s, y)`` over ``s = -t`` (``t`` decreasing).
    """

    algorithm: str
    sensitivity: str
    checkpointing: bool
    rtol: float
    atol: float
    quad_rtol: float
    quad_atol: float
    maxiters: int | None
    dt: float | None
    fixed_step: bool
    time_reversed: bool = False

    @property
    def stiff(self) -> bool:
        return self.algorithm in STIFF_ALGORITHMS


def resolve_sensitivity(
    sensitivity, algorithm: str, rtol: float, atol: float, fixed_step: bool = False
) -> tuple[str, bool, float, float]:
    """Map a sensitivity settings object to SciMLSensitivity's adjoint.

    Args:
        sensitivity: an object from :mod:`hybrid_node.sensitivity.settings` or None (GaussAdjoint).
        algorithm: the forward Julia algorithm.
        rtol, atol: forward tolerances.
        fixed_step: the forward solve takes fixed steps (``adaptive = false`` with ``dt``).

    Returns:
        ``(name, checkpointing, quad_rtol, quad_atol)``.

    Raises:
        BackendError: a combination the Julia backend cannot do, naming what to use instead.
        TypeError: ``sensitivity`` is not a settings object.
    """
    if sensitivity is None:
        sensitivity = GaussAdjoint()
    if isinstance(sensitivity, DirectBackprop):
        raise BackendError(
            "DirectBackprop differentiates through torch operations and does not exist on the Julia "
            "backend; use GaussAdjoint() (recommended), InterpolatingAdjoint(), QuadratureAdjoint() or "
            "BacksolveAdjoint(), or backend='torch'."
        )
    kinds: dict[type, str] = {
        GaussAdjoint: "GaussAdjoint",
        InterpolatingAdjoint: "InterpolatingAdjoint",
        QuadratureAdjoint: "QuadratureAdjoint",
        BacksolveAdjoint: "BacksolveAdjoint",
    }
    name = kinds.get(type(sensitivity))
    if name is None:
        raise TypeError(
            "sensitivity must be GaussAdjoint, InterpolatingAdjoint, QuadratureAdjoint or BacksolveAdjoint "
            f"from hybrid_node.sensitivity, got {type(sensitivity).__name__}."
        )
    if sensitivity.norm != "default":
        raise BackendError(
            f"norm={sensitivity.norm!r} is not available on the Julia backend; leave norm='default' "
            "or use backend='torch'."
        )
    if sensitivity.options:
        raise BackendError(
            "Backward solver options are not available on the Julia backend; leave "
            "options=None (the backward pass uses the forward method's settings)."
        )
    if sensitivity.method is not None:
        try:
            same = resolve_method(sensitivity.method) == algorithm
        except BackendError:
            same = False
        if not same:
            raise BackendError(
                f"The Julia backend solves the adjoint with the forward method ({algorithm}); leave the "
                f"sensitivity's method=None (got {sensitivity.method!r}) or use backend='torch'."
            )
    # Every adjoint, QuadratureAdjoint included, runs its backward pass with the forward tolerances:
    # SciMLSensitivity's concrete_solve passes the solve's abstol/reltol on to adjoint_sensitivities,
    # and quadrature_adjoint.jl uses those for the adjoint solve and quadgk, overriding the
    # QuadratureAdjoint(abstol, reltol) fields. Different values would be accepted and ignored.
    for field, value, forward in (("rtol", sensitivity.rtol, rtol), ("atol", sensitivity.atol, atol)):
        if value is not None and not _same_tolerance(value, forward):
            raise BackendError(
                f"The Julia backend solves the {name} backward pass with the forward tolerances "
                f"(SciMLSensitivity passes the solve's tolerances on to the adjoint"
                f"{' and its quadrature' if name == 'QuadratureAdjoint' else ''}); leave {field}=None "
                f"(adjoint_{field}) or set it equal to the forward {field}={forward:g}, or use backend='torch'."
            )
    quad_rtol, quad_atol = rtol, atol
    checkpointing = isinstance(sensitivity, InterpolatingAdjoint) and sensitivity.checkpoints is not None
    if checkpointing and algorithm in ROSENBROCK_ALGORITHMS:
        raise BackendError(
            f"InterpolatingAdjoint(checkpoints=...) with {algorithm} is broken upstream "
            "(SciMLSensitivity issue #1075); use GaussAdjoint(), InterpolatingAdjoint() without "
            "checkpoints, or a non-Rosenbrock stiff method (KenCarp4, TRBDF2, FBDF, QNDF)."
        )
    if checkpointing and fixed_step:
        _refuse_checkpointed_fixed_steps(algorithm)
    if checkpointing:
        warnings.warn(
            f"InterpolatingAdjoint(checkpoints={sensitivity.checkpoints}) on the Julia backend switches "
            "SciMLSensitivity's checkpointing on, which checkpoints at the output times t only: the "
            "number of checkpoints is not used. Add output times to get more checkpoints.",
            UserWarning,
            stacklevel=3,
        )
    return name, checkpointing, float(quad_rtol), float(quad_atol)


def _refuse_checkpointed_fixed_steps(algorithm: str) -> None:
    """Refuse ``InterpolatingAdjoint(checkpoints=...)`` with a fixed-step forward solve.

    SciMLSensitivity re-solves each checkpoint interval with the tolerances only,
    ``solve(remake(sol.prob, tspan = interval, ...), sol.alg; reltol, abstol)`` and later with
    ``dt`` = the last step of the previous re-solve (src/interpolating_adjoint.jl:49-51 and 182-186
    at v7.112.1 8a935f5, the same at v7.97.0 2a7dfa7), without the forward's ``adaptive = false``,
    ``dt`` or ``tstops``. ``Euler`` then fails ("Fixed timestep methods require a choice of dt or
    choosing the tstops", OrdinaryDiffEqCore src/solve.jl:277-279 at OrdinaryDiffEq b211787), and
    ``RK4``/``TRBDF2`` re-solve adaptively: the adjoint would run along a trajectory other than the
    one returned.

    Args:
        algorithm: the forward Julia algorithm.

    Raises:
        BackendError: always, naming the adjoints that work with fixed steps.
    """
    raise BackendError(
        f"InterpolatingAdjoint(checkpoints=...) with fixed steps ({algorithm}) does not work on the Julia "
        "backend: SciMLSensitivity re-solves each checkpoint interval without the fixed step (Euler fails, "
        "RK4 and TRBDF2 re-solve adaptively, a trajectory other than the one returned); use GaussAdjoint(), "
        "InterpolatingAdjoint() without checkpoints, or an adaptive method."
    )


def _same_tolerance(value, forward: float) -> bool:
    """Whether an adjoint tolerance (a number, or a per-component tensor) is the forward one.

    Args:
        value: the sensitivity setting's ``rtol``/``atol``.
        forward: the forward tolerance.

    Returns:
        True when ``value`` (every component of a tensor, at the tensor's precision: a float32
        ``1e-6`` is the forward ``1e-6``) equals ``forward``.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return bool((value == torch.tensor(forward, dtype=value.dtype)).all())
    return bool(value == forward)


def resolve_options(
    options: Mapping[str, Any] | None, algorithm: str, ts: np.ndarray, *, refuse_long_grid: bool = True
) -> tuple[float | None, int | None, bool]:
    """Check the solver options and map them to Julia's ``dt``/``maxiters``.

    Args:
        options: dict of torch-style options (may be None or empty).
        algorithm: the Julia algorithm.
        ts: the output times.
        refuse_long_grid: refuse a ``step_size`` grid longer than ``max_num_steps`` (a plain
            solve, as the torch backend's ``ConstantStepSize.grid``); False for an event solve,
            which the torch backend's event loops run until ``max_num_steps`` and stop there, as
            Julia stops with ``MaxIters``.

    Returns:
        ``(dt, maxiters, fixed_step)``; ``maxiters`` is always set: the user's ``max_num_steps``,
        else the torch backend's default (:data:`DEFAULT_ADAPTIVE_MAX_STEPS` for adaptive steps; for
        fixed steps see :func:`_fixed_step_limit`), so that a solve does not stop at upstream's
        default limit where the torch backend's would let it run.

    Raises:
        ValueError: an unknown key or a bad value (the message lists the valid keys), or (with
            ``refuse_long_grid``) a fixed-step grid with more steps than ``max_num_steps`` (default 10^6).
        TypeError: ``options['adaptive']`` (TRBDF2) is not a bool.
    """
    options = dict(options or {})
    fixed = algorithm in FIXED_STEP_ALGORITHMS
    valid: tuple[str, ...] = FIXED_STEP_OPTIONS if fixed else ADAPTIVE_OPTIONS
    if algorithm in FIXED_UNLESS_ADAPTIVE:
        adaptive = options.pop("adaptive", False)
        if not isinstance(adaptive, bool):
            raise TypeError(f"options['adaptive'] must be True or False, got {adaptive!r}.")
        fixed = not adaptive or "step_size" in options  # a step size means fixed steps, as on torch
        valid = (FIXED_STEP_OPTIONS if fixed else ADAPTIVE_OPTIONS) + ("adaptive",)
    refuse_unknown_options(options, valid, algorithm, " on the Julia backend")
    maxiters = options.get("max_num_steps")
    if maxiters is not None:
        if isinstance(maxiters, bool) or not isinstance(maxiters, (int, np.integer)) or maxiters < 1:
            raise ValueError(f"max_num_steps must be a positive int, got {maxiters!r}.")
        maxiters = int(maxiters)
    key = "step_size" if fixed else "first_step"
    dt = options.get(key)
    if dt is not None:
        dt = float(torch.as_tensor(dt)) if isinstance(dt, torch.Tensor) else dt
        if not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
            hint = sign_hint(dt) if isinstance(dt, (int, float)) else ""
            raise ValueError(f"{key} must be a positive number, got {options.get(key)!r}." + hint)
        dt = float(dt)
    elif fixed:
        # Like torch's fixed-grid solvers without step_size: step on the grid of output times. A
        # fixed-step solve with tstops = ts takes min(dt, distance to the next tstop) each step
        # (OrdinaryDiffEqCore modify_dt_for_tstops!), so the largest gap makes every step end on
        # the next output time; the smallest gap would cut the larger gaps into several steps.
        dt = float(np.max(np.abs(np.diff(ts)))) if ts.size > 1 else None
    if fixed and dt is not None:  # dt is None only for one output time (y0 itself: nothing is solved)
        maxiters = _fixed_step_limit(ts, dt, maxiters, "step_size" in options, refuse_long_grid)
    elif maxiters is None:
        maxiters = DEFAULT_ADAPTIVE_MAX_STEPS
    return dt, maxiters, fixed


#: The fixed-step limit when ``max_num_steps`` is not given: the torch backend's for a ``step_size``
#: grid (``ConstantStepSize.max_num_steps``, 10^6).
DEFAULT_MAX_STEPS = ConstantStepSize.max_num_steps

#: The adaptive limit when ``max_num_steps`` is not given: the torch backend's
#: (``PIDController.max_num_steps``, 2^31 - 1), sent to Julia as ``maxiters`` in place of
#: OrdinaryDiffEqCore's default of 10^6 for adaptive algorithms (src/solve.jl:161 at OrdinaryDiffEq
#: b211787: ``maxiters = anyadaptive(alg) ? 1000000 : typemax(Int)``), which stopped with ``MaxIters``
#: solves that the torch backend finishes. Both count the same thing: every attempt, rejected ones
#: included, and fail before the attempt past the limit (torch: ``n_attempts >= max_num_steps``
#: before an attempt, hybrid_node.loop.core.precheck; Julia: ``loopheader!`` increments
#: ``integrator.iter`` before each attempt, OrdinaryDiffEqCore src/integrators/integrator_utils.jl:120,
#: and ``check_error`` stops once ``iter > maxiters``, DiffEqBase src/check_error.jl:81).
DEFAULT_ADAPTIVE_MAX_STEPS = PIDController.max_num_steps


def fixed_grid_steps(ts: np.ndarray, dt: float) -> int:
    """The number of steps of a fixed-step solve with ``dt`` that also stops at every output time.

    Args:
        ts: the output times (monotonic).
        dt: the step.

    Returns:
        ``sum(ceil(|gap| / dt))`` over the gaps of ``ts``, a gap within rounding of a multiple of
        ``dt`` taking that many steps (OrdinaryDiffEqCore ``modify_dt_for_tstops!`` ends a step
        on a tstop within ``100 eps`` of it).
    """
    gaps = np.abs(np.diff(np.asarray(ts, dtype=np.float64)))
    return int(np.sum(np.maximum(1, np.ceil(gaps / dt - 1e-9))))


def _fixed_step_limit(ts: np.ndarray, dt: float, maxiters: int | None, has_step_size: bool, refuse: bool = True) -> int:
    """The ``maxiters`` to send with a fixed-step solve, refusing a grid longer than the limit.

    Upstream's default limit depends on the algorithm, not on ``adaptive = false``: ``RK4`` and
    ``TRBDF2`` can adapt (``OrdinaryDiffEqAdaptiveAlgorithm``), so a fixed-step solve with them stops
    with ``MaxIters`` after 10^6 steps, while ``Euler`` cannot, so it has no limit at all
    (OrdinaryDiffEqCore src/solve.jl:161). The torch backend refuses a ``step_size`` grid of more
    than ``max_num_steps`` (default 10^6) steps before the solve (``ConstantStepSize.grid``). Sending
    the limit explicitly, and checking the grid against it here, gives every fixed-step method
    the torch backend's rule instead of a late ``MaxIters`` (rk4) or an unbounded solve (euler).

    Args:
        ts: the output times.
        dt: the fixed step.
        maxiters: the user's ``max_num_steps``, or None.
        has_step_size: ``dt`` is the user's ``step_size`` (not the output grid's largest gap).
        refuse: refuse a ``step_size`` grid longer than the limit; False sends the limit, and the
            solve stops there with ``MaxIters`` (an event solve, as the torch backend's event loop
            stops with ``MAX_STEPS``).

    Returns:
        The user's ``max_num_steps``, else 10^6; without ``step_size`` at least the number of steps
        of the output grid (the torch backend steps on the output times whatever ``max_num_steps``).

    Raises:
        ValueError: the grid has more steps than the limit (the message says how to allow them),
            with ``refuse``.
    """
    n = fixed_grid_steps(ts, dt)
    limit = DEFAULT_MAX_STEPS if maxiters is None else maxiters
    if not has_step_size:
        return max(limit, n)
    if refuse and n > limit:
        span = float(np.max(ts) - np.min(ts))
        over = f"output times spanning {span:g} (a step ends on each)"
        raise too_many_fixed_steps(dt, over, n, limit, "the Julia solve would stop there with MaxIters")
    return limit


@dataclasses.dataclass
class ForwardOutput:
    """What an engine's forward returns.

    Attributes:
        ys: states ``(D, B, T)``.
        handle: whatever the engine's backward needs.
        success: the solve reached the last time.
        retcode: the solver's return code.
        t_final: the last time of the returned solution. Upstream sets it to ``ts[end]`` even after a
            failure (the states past the failure are the interpolation's extrapolation; with
            BacksolveAdjoint the solution ends where the solver stopped instead), so it is kept
            for diagnosis only.
        stats: work counters.
        t_reached: the time the solver really reached (``ts[end]`` on success; on failure found by
            the engine from the solver itself). This is what :class:`SolverError` reports.
        state_finite: whether the state where the solver stopped is finite (None: not known). It
            tells the two causes of an ``Unstable`` return code apart (see :func:`status_from_retcode`).
    """

    ys: np.ndarray
    handle: Any
    success: bool
    retcode: str
    t_final: float
    stats: Stats
    t_reached: float | None = None
    state_finite: bool | None = None


class JuliaEngine:
    """The engine backed by the Julia module HybridNODE (see ``julia/bridge.jl``)."""

    def __init__(self, module):
        self.jl = module

    def forward(
        self, problem, u0: np.ndarray, theta: np.ndarray, ts: np.ndarray, config: SolveConfig, **events
    ) -> ForwardOutput:
        julia_runtime.check_thread()  # only Julia's own thread may enter it (a GC elsewhere hangs)
        kwargs = dict(
            **events,
            algorithm=config.algorithm,
            sensitivity=config.sensitivity,
            checkpointing=config.checkpointing,
            abstol=config.atol,
            reltol=config.rtol,
            quad_abstol=config.quad_atol,
            quad_reltol=config.quad_rtol,
            maxiters=config.maxiters,
            dt=config.dt,
            fixed_step=config.fixed_step,
        )
        if isinstance(problem, MLPSpec):
            res = self.jl.forward_mlp(
                np.asarray(problem.n_in, dtype=np.int64),
                np.asarray(problem.n_out, dtype=np.int64),
                np.asarray(problem.has_bias, dtype=bool),
                ",".join(problem.activations),
                problem.time_input,
                theta,
                u0,
                ts,
                time_reversed=config.time_reversed,
                **kwargs,
            )
        else:
            jac = problem.jac if config.stiff else None
            res = self.jl.forward_callback(problem.f, problem.vjp, jac, theta, u0, ts, **kwargs)
        stats = Stats(
            nfe=int(res.nf), n_accepted=int(res.naccept), n_rejected=int(res.nreject), n_jacobian=int(res.njacs)
        )
        return ForwardOutput(
            ys=np.array(res.ys, dtype=np.float64),
            handle=res,
            success=bool(res.success),
            retcode=str(res.retcode),
            t_final=float(res.t_final),
            stats=stats,
            t_reached=float(res.t_reached),
            state_finite=bool(res.state_finite),
        )

    def forward_events(
        self, problem, u0: np.ndarray, theta: np.ndarray, ts: np.ndarray, config: SolveConfig, bridge
    ) -> ForwardOutput:
        """A forward solve (no gradients) with the events of ``bridge`` (:mod:`hybrid_node.julia.events`) as a
        VectorContinuousCallback; the states are those at the output times reached."""
        events = dict(
            event_condition=bridge.condition,
            event_affect=bridge.affect,
            event_jumped=bridge.jumped,
            event_len=bridge.size,
            event_points=bridge.interp_points,
        )
        return self.forward(problem, u0, theta, ts, config, **events)

    def backward(self, handle, ybar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        julia_runtime.check_thread()  # .backward() may be called on another thread than the solve
        u0bar, thetabar = self.jl.backward(handle, ybar)
        return np.array(u0bar, dtype=np.float64), np.array(thetabar, dtype=np.float64).reshape(-1)

    def python_exception(self, err: BaseException) -> BaseException | None:
        """The Python exception inside a ``juliacall.JuliaError`` (a PyException somewhere in it).

        Args:
            err: the error the Julia call raised.

        Returns:
            The Python exception, or None (not a JuliaError, or none inside). A callback's exception
            that reached the boundary unwrapped is raised as itself by PythonCall and never gets here.
        """
        if type(err).__name__ != "JuliaError" or not err.args:
            return None
        try:
            found = self.jl.python_exception(err.args[0])
        except Exception:  # noqa: BLE001 - unwrapping is best effort; the JuliaError stands otherwise
            return None
        return found if isinstance(found, BaseException) else None

    def adjoint_failure(self, err: BaseException) -> str | None:
        """The solver's warnings when ``err`` is the ``AdjointSolveFailed`` of ``backward`` (julia/bridge.jl)."""
        if type(err).__name__ != "JuliaError" or not err.args:
            return None
        try:
            found = self.jl.adjoint_failure(err.args[0])
        except Exception:  # noqa: BLE001 - recognising it is best effort; the JuliaError stands otherwise
            return None
        return found if isinstance(found, str) else None


def adjoint_solve_error(warnings_text: str) -> SolverError:
    """The :class:`SolverError` for a failed backward solve of the adjoint in Julia.

    Args:
        warnings_text: the warnings the solver logged during the backward solve.

    Returns:
        A SolverError: ``MAX_STEPS`` when the solver ran out of steps (its warning names
        ``maxiters``), else ``FAILED``; its time is NaN (the warnings do not say where the backward
        solve stopped).
    """
    status = Status.MAX_STEPS if "maxiters" in warnings_text.lower() else Status.FAILED
    detail = (
        "the adjoint's backward solve in Julia failed, so its gradients are refused (SciMLSensitivity returns "
        f"them without checking); the solver warned: {warnings_text.strip()}"
    )
    return SolverError(status, float("nan"), detail)


def _call_engine(engine, method: Callable, *args):
    """Call an engine method; a Python exception raised in a callback reaches the user as itself.

    Args:
        engine: the engine (its ``python_exception`` and ``adjoint_failure`` read its errors).
        method: the engine method.
        *args: its arguments.

    Returns:
        What ``method`` returns.

    Raises:
        BaseException: the Python exception a callback raised, as itself.
        SolverError: the adjoint's backward solve failed (``adjoint_failure``).
        Exception: any other error of the engine, unchanged.
    """
    try:
        return method(*args)
    except Exception as err:
        # PythonCall re-raises a callback's exception as itself where it reaches the boundary
        # unwrapped (src/JlWrap/base.jl); python_exception finds one a solver layer wrapped.
        original = engine.python_exception(err)  # every engine declares it (see the module docstring)
        if original is not None:
            raise original from None
        failure = engine.adjoint_failure(err)
        if failure is not None:
            raise adjoint_solve_error(failure) from None
        raise


def status_from_retcode(retcode: str, state_finite: bool | None = None) -> Status:
    """The :class:`Status` for a SciML return code.

    ``Unstable`` has two causes upstream (SciMLBase ``check_error``, src/integrator_interface.jl,
    2.147 to 3.49; DiffEqBase 7.18 lib/DiffEqBase/src/check_error.jl): a state that is not finite
    after an accepted step (``unstable_check``), and a rejected step whose ``dt`` was forced below
    ``eps(t)`` (``dt_epsilon``). The second is how a step-size underflow ends with OrdinaryDiffEq's
    default ``dtmin = 0``; ``DtLessThanMin`` needs a positive ``dtmin``, which is never sent.

    Args:
        retcode: the return code's name (``"ReturnCode.MaxIters"`` or ``"MaxIters"``).
        state_finite: whether the state where the solver stopped is finite (None: not known).

    Returns:
        The status: STEP_UNDERFLOW for ``Unstable`` with a finite state, FAILED for an unrecognised
        code.
    """
    name = retcode.rsplit(".", 1)[-1].strip()
    if name == "Unstable" and state_finite is True:
        return Status.STEP_UNDERFLOW
    for key, status in _RETCODES:
        if key == name:
            return status
    return Status.FAILED


#: the Julia algorithms whose stages are solved by Newton's method (OrdinaryDiffEqNonlinearSolve)
NEWTON_ALGORITHMS = ("KenCarp4", "TRBDF2", "FBDF", "QNDF")


def retcode_cause(retcode: str, algorithm: str | None = None, state_finite: bool | None = None) -> str:
    """What a SciML return code says about the failure beyond its :class:`Status`, or "".

    ``DtNaN``: an adaptive step attempt's error estimate was NaN, which makes the rejected step's
    new ``dt`` NaN (OrdinaryDiffEqCore's PIController divides ``dt`` by ``min(inv(qmin),
    EEst^beta1 / gamma)``, NaN propagating through Julia's ``min``) and ``check_error`` stops the solve
    (SciMLBase src/integrator_interface.jl, DiffEqBase 7 lib/DiffEqBase/src/check_error.jl). The
    accepted state is finite; a non-finite value of the vector field in that attempt is what makes
    the estimate NaN.

    The Newton methods (:data:`NEWTON_ALGORITHMS`) never get that far: ``nlsolve!`` takes a
    non-finite residual norm for divergence (OrdinaryDiffEqNonlinearSolve src/nlsolve.jl:151-158 at
    OrdinaryDiffEq b211787) and the step fails before its error estimate. With adaptive steps each
    failure halves ``dt`` (``post_newton_controller!``, OrdinaryDiffEqCore
    src/integrators/controllers.jl:485-491), so a NaN ends the solve as a step-size underflow
    (``Unstable`` with a finite state, check_error.jl:102-105); with fixed steps it ends with
    ``ConvergenceFailure`` (``last_step_failed``, check_error.jl:113-116). Neither code tells a NaN
    from a Newton iteration that truly diverged, so the cause names both.

    Args:
        retcode: the return code's name (``"ReturnCode.DtNaN"`` or ``"DtNaN"``).
        algorithm: the OrdinaryDiffEq algorithm that ran, or None (not known).
        state_finite: whether the state where the solver stopped is finite (None: not known).

    Returns:
        The explanation for :class:`SolverError`'s ``cause`` ("" for the other codes: the status's
        own message applies).
    """
    name = retcode.rsplit(".", 1)[-1].strip()
    if name == "DtNaN":
        return (
            "The vector field returned NaN or infinite values in the step attempted after this time (the state "
            "here is finite), so the step's error estimate and then its size became NaN. "
            "Look for a log, sqrt, power or division whose argument leaves its domain, or NaN/inf parameters; "
            "keep the field finite or end the solve before this time."
        )
    if name == "ConvergenceFailure":
        return (
            "Julia's Newton iteration failed on the fixed step after this time (the state here is finite): "
            "either it diverged at this step size (take a smaller step_size, or adaptive steps), or the vector "
            "field returned NaN or infinite values in that step, which Julia's Newton iteration reports the same "
            "way (keep the field finite there)."
        )
    if name == "Unstable" and state_finite is True and algorithm in NEWTON_ALGORITHMS:
        return (
            f"{algorithm} halves its step after each failed Newton iteration, so besides a solve that is hard "
            "here, a vector field that returns NaN or infinite values just after this time (the state here is "
            "finite) also ends this way: check that the field is finite there."
        )
    return ""


def initial_field_cause(field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], t0, m0: torch.Tensor) -> str:
    """Why a solve that stopped at its first time did: the vector field not finite at ``(t0, m0)``, or "".

    Upstream's automatic first step meets a non-finite ``f0``, returns ``dt = 0`` ("First function
    call produced NaNs", OrdinaryDiffEqCore src/initdt.jl), which ``fix_dt_at_bounds!`` raises to
    ``eps(t0)`` and ``check_error`` ends before any step with ``Unstable`` and the finite ``u0``
    (its ``dt_epsilon`` branch): read alone, a step-size underflow at ``t0``. One evaluation of the
    field tells the two apart, as the torch backend reports it.

    Args:
        field: the vector field on the ``(B, D)`` layout, in user time.
        t0: the first output time (a 0-d tensor).
        m0: the initial state ``(B, D)``.

    Returns:
        :func:`hybrid_node._errors.field_cause` for the field's NaN or inf, or "" when it is finite.
    """
    with torch.no_grad():
        f0 = field(t0, m0)
    if torch.isfinite(f0).all():
        return ""
    return field_cause("NaN" if torch.isnan(f0).any() else "inf", float(t0))


def raise_for_initial_field(
    err: BaseException, field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], t0, m0
) -> None:
    """Turn a Julia error of a forward solve into the field's NaN when the field is not finite at ``(t0, m0)``.

    After a non-finite ``f0`` upstream stops before any step (see :func:`initial_field_cause`), with
    only ``t0`` saved. Every adjoint but BacksolveAdjoint then evaluates the solution at all the
    output times (``sol(sort(saveat))``, SciMLSensitivity src/concrete_solve.jl) through an
    interpolation of that single point, which may throw instead of extrapolating (not verified
    against a running Julia): the user is told the cause either way, with the Julia error chained.

    Args:
        err: the error the engine raised (only a ``JuliaError`` is considered: a callback's own
            Python exception comes out as itself and is left alone).
        field: the vector field on the ``(B, D)`` layout, in user time.
        t0: the first output time (a 0-d tensor).
        m0: the initial state ``(B, D)``.

    Raises:
        SolverError: NONFINITE, when the field is not finite at ``(t0, m0)``.
    """
    if type(err).__name__ != "JuliaError":
        return
    cause = initial_field_cause(field, t0, m0)
    if cause:
        raise SolverError(Status.NONFINITE, float(t0), "the Julia solve raised an error, chained below", cause) from err


@dataclasses.dataclass
class _Run:
    """One solve's fixed data, shared by the autograd Function's forward and backward."""

    engine: Any
    problem: MLPSpec | CallbackProblem
    config: SolveConfig
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # f on the (B, D) layout
    n_theta: int
    stats: Stats | None = None
    device: torch.device = torch.device("cpu")  # where field is evaluated (the user's device)


def _flat_params(params: Sequence[torch.Tensor], n_theta: int) -> np.ndarray:
    if not params:
        return np.zeros(n_theta)
    return torch.cat([p.detach().to("cpu", torch.float64).reshape(-1) for p in params]).numpy()


def _check_finite_gradients(ybar: torch.Tensor, u0bar: np.ndarray, thetabar: np.ndarray) -> None:
    """Refuse non-finite gradients: the backward solve failed without being noticed.

    SciMLSensitivity returns the adjoint's gradients whatever its backward solve's return code;
    bridge.jl's ``backward`` raises on the solver's warnings, and this catches what got past them
    (e.g. a blow-up that left no warning). The torch backend's adjoint fails the same way.

    Args:
        ybar: the cotangent of the states (named as the cause when it is not finite itself).
        u0bar, thetabar: the engine's gradients.

    Raises:
        SolverError: NONFINITE, when a gradient is NaN or infinite.
    """
    if np.isfinite(u0bar).all() and np.isfinite(thetabar).all():
        return
    if not bool(torch.isfinite(ybar).all()):
        cause = "the gradient of the loss with respect to the states is not finite itself"
    else:
        cause = (
            "SciMLSensitivity does not check its backward solve; try tighter tolerances, a stiff method or "
            "another sensitivity"
        )
    raise SolverError(
        Status.NONFINITE, float("nan"), f"the adjoint's backward solve in Julia returned non-finite gradients ({cause})"
    )


class _JuliaSolve(torch.autograd.Function):
    """ys = solve(field, y0, t) on an engine, differentiable w.r.t. y0, t and the parameters."""

    @staticmethod
    def forward(ctx, run: _Run, y0: torch.Tensor, t: torch.Tensor, *params: torch.Tensor):
        # Inputs are CPU tensors (see solve_with_engine), so backward runs on the thread that called
        # .backward() -- never on a CUDA autograd worker thread that Julia did not start.
        u0 = y0.detach().to("cpu", torch.float64).numpy()  # (B, D), C-contiguous
        theta = _flat_params(params, run.n_theta)
        ts = t.detach().to("cpu", torch.float64).numpy()
        sign = -1.0 if run.config.time_reversed else 1.0
        # u0.T is the Julia (D, B) matrix over the same memory; states come back (D, B, T), in the
        # order of ts (the engine sees sign * ts, which is increasing).
        try:
            out = _call_engine(run.engine, run.engine.forward, run.problem, u0.T, theta, sign * ts, run.config)
        except Exception as err:
            raise_for_initial_field(err, run.field, t[0].to(run.device), y0.detach().to(run.device))
            raise
        if not out.success:
            reached = out.t_reached if out.t_reached is not None else out.t_final
            status = status_from_retcode(out.retcode, out.state_finite)
            cause = retcode_cause(out.retcode, run.config.algorithm, out.state_finite)
            if reached == sign * ts[0]:  # stopped before any step: a non-finite f0 looks like an underflow
                start = initial_field_cause(run.field, t[0].to(run.device), y0.detach().to(run.device))
                status, cause = (Status.NONFINITE, start) if start else (status, cause)
            raise SolverError(status, sign * reached, f"Julia retcode {out.retcode}", cause)
        run.stats = out.stats
        ys = torch.from_numpy(np.ascontiguousarray(np.transpose(out.ys, (2, 1, 0))))
        ys = ys.to(dtype=y0.dtype)
        ctx.run = run
        ctx.handle = out.handle
        ctx.param_meta = [(tuple(p.shape), p.dtype, p.device) for p in params]
        ctx.save_for_backward(ys, t)
        return ys

    @staticmethod
    def backward(ctx, ybar: torch.Tensor):
        ys, t = ctx.saved_tensors
        run: _Run = ctx.run
        yb = ybar.detach().to("cpu", torch.float64).numpy().copy()  # (T, B, D)
        direct0 = yb[0].copy()
        # Y_0 is y0 itself: its cotangent goes straight to y0, not through the adjoint.
        yb[0] = 0.0
        u0bar_jl, thetabar = _call_engine(run.engine, run.engine.backward, ctx.handle, np.transpose(yb, (2, 1, 0)))
        _check_finite_gradients(ybar, u0bar_jl, thetabar)
        adjoint0 = np.asarray(u0bar_jl, dtype=np.float64).T  # (B, D): gradient carried back to t_0
        grad_y0 = torch.from_numpy(np.ascontiguousarray(adjoint0 + direct0)).to(ybar.device, ybar.dtype)

        grad_t = None
        if ctx.needs_input_grad[2]:
            values = []
            with torch.no_grad():
                for i in range(t.shape[0]):
                    f_i = run.field(t[i].to(run.device), ys[i].to(run.device))
                    f_np = f_i.detach().to("cpu", torch.float64).numpy()
                    weight = -adjoint0 if i == 0 else yb[i]
                    values.append(float(np.sum(weight * f_np)))
            grad_t = torch.tensor(values, dtype=t.dtype, device=t.device)

        grads = []
        offset = 0
        for shape, dtype, device in ctx.param_meta:
            n = int(np.prod(shape, dtype=np.int64))
            g = torch.from_numpy(np.array(thetabar[offset : offset + n])).reshape(shape)
            grads.append(g.to(device=device, dtype=dtype))
            offset += n
        return (None, grad_y0, grad_t, *grads)


# ----------------------------------------------------------------------------------------------
# Input validation and state layout


def _check_tolerance(name: str, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be a scalar on the Julia backend, got a tensor of shape {tuple(value.shape)}."
            )
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return float(value)


def _check_times(t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a 1-D torch.Tensor of times, got {type(t).__name__}.")
    if t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"t must be a non-empty 1-D tensor, got shape {tuple(t.shape)}.")
    if not t.is_floating_point():
        raise TypeError(f"t must have a floating dtype, got {t.dtype}; use t.double().")
    ts = t.detach().to("cpu", torch.float64)
    if not torch.isfinite(ts).all():
        raise ValueError("t contains NaN or infinite values.")
    if t.numel() > 1:
        d = ts[1:] - ts[:-1]
        if not ((d > 0).all() or (d < 0).all()):
            raise ValueError("t must be strictly increasing or strictly decreasing.")
    return t


def _check_state(y0) -> tuple[torch.Tensor, ...]:
    tensors = y0 if isinstance(y0, tuple) else (y0,)
    if isinstance(y0, tuple) and not y0:
        raise ValueError("y0 is an empty tuple; give at least one tensor.")
    for k, y in enumerate(tensors):
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y0 must be a tensor or a tuple of tensors; element {k} is {type(y).__name__}.")
        if y.is_complex():
            # Everything crosses to Julia as Float64 (the native MLP is real, the callbacks send flat
            # real arrays); casting would silently drop the imaginary part.
            raise TypeError(
                f"y0 is complex ({y.dtype}); the Julia backend solves real states only. Solve the real and "
                "imaginary parts as a real state (torch.view_as_real(y0), with func written for it), or use "
                "backend='torch', whose explicit methods take complex states."
            )
        if not y.is_floating_point():
            raise TypeError(f"y0 must have a real floating dtype, got {y.dtype}; use y0.double().")
    devices = {y.device for y in tensors}
    dtypes = {y.dtype for y in tensors}
    if len(devices) > 1 or len(dtypes) > 1:
        raise ValueError(f"all tensors of a tuple state must share device and dtype, got {devices}, {dtypes}.")
    return tensors


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How the user's state maps to the (B, D) matrix sent to Julia."""

    shapes: tuple[torch.Size, ...]
    is_tuple: bool
    batch: int
    dim: int

    @staticmethod
    def of(y0: State) -> _Layout:
        if isinstance(y0, tuple):
            return _Layout(tuple(y.shape for y in y0), True, 1, sum(y.numel() for y in y0))
        shape = y0.shape
        dim = shape[-1] if len(shape) >= 1 else 1
        batch = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) >= 1 else 1
        return _Layout((shape,), False, batch, dim)

    def to_matrix(self, y: State) -> torch.Tensor:
        if self.is_tuple:
            return torch.cat([yi.reshape(-1) for yi in y]).reshape(1, self.dim)
        return cast(torch.Tensor, y).reshape(self.batch, self.dim)

    def from_matrix(self, m: torch.Tensor) -> State:
        """(..., B, D) -> the user's layout with the same leading dims."""
        lead = m.shape[:-2]
        if not self.is_tuple:
            return m.reshape(*lead, *self.shapes[0])
        flat = m.reshape(*lead, self.dim)
        parts, offset = [], 0
        for shape in self.shapes:
            n = int(np.prod(shape, dtype=np.int64))
            parts.append(flat[..., offset : offset + n].reshape(*lead, *shape))
            offset += n
        return tuple(parts)

    def field(self, func) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """func(t, y) on the user's layout, as a function of a (B, D) matrix."""

        def on_matrix(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            out = func(t, self.from_matrix(m))
            outs = out if isinstance(out, tuple) else (out,)
            if len(outs) != len(self.shapes) or any(o.shape != s for o, s in zip(outs, self.shapes)):
                got = tuple(tuple(o.shape) for o in outs) if all(isinstance(o, torch.Tensor) for o in outs) else out
                raise ValueError(
                    f"func(t, y) must return the shape of y0 {tuple(tuple(s) for s in self.shapes)}, got {got}."
                )
            return self.to_matrix(out)

        return on_matrix


def _check_params(func, adjoint_params) -> tuple[torch.Tensor, ...]:
    if adjoint_params is None:
        return tuple(func.parameters()) if isinstance(func, nn.Module) else ()
    params = tuple(adjoint_params)
    for k, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"adjoint_params must hold tensors; element {k} is {type(p).__name__}.")
    return params


# ----------------------------------------------------------------------------------------------
# Entry point


def prepare(
    func,
    y0: State,
    t: torch.Tensor,
    *,
    method: str | None,
    rtol,
    atol,
    options: Mapping[str, Any] | None,
    sensitivity,
    adjoint_params,
    refuse_long_grid: bool = True,
):
    """Validate a call and build everything but the engine.

    Args:
        func, y0, t, method, rtol, atol, options, sensitivity, adjoint_params: as :func:`solve`.
        refuse_long_grid: as :func:`resolve_options` (False for an event solve).

    Returns:
        ``(layout, config, problem, field, params, native)``.

    Raises:
        TypeError, ValueError, BackendError: bad input, with how to fix it.
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}.")
    tensors = _check_state(y0)
    t = _check_times(t)
    rtol = _check_tolerance("rtol", rtol)
    atol = _check_tolerance("atol", atol)
    algorithm = resolve_method(method)
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict or None, got {type(options).__name__}.")
    ts = t.detach().to("cpu", torch.float64).numpy()
    dt, maxiters, fixed = resolve_options(options, algorithm, ts, refuse_long_grid=refuse_long_grid)
    name, checkpointing, quad_rtol, quad_atol = resolve_sensitivity(sensitivity, algorithm, rtol, atol, fixed)
    params = _check_params(func, adjoint_params)
    time_reversed = bool(ts.size > 1 and ts[1] < ts[0])
    config = SolveConfig(
        algorithm=algorithm,
        sensitivity=name,
        checkpointing=checkpointing,
        rtol=rtol,
        atol=atol,
        quad_rtol=quad_rtol,
        quad_atol=quad_atol,
        maxiters=maxiters,
        dt=dt,
        fixed_step=fixed,
        time_reversed=time_reversed,
    )
    layout = _Layout.of(y0 if isinstance(y0, tuple) else tensors[0])
    field = layout.field(func)
    spec, _why = translate_mlp(func)
    native = spec is not None and not layout.is_tuple and layout.dim == spec.n_state_in
    if spec is not None and native:
        wanted = {id(p) for p in params}
        # Parameters the caller did not ask gradients for enter detached (gradient dropped).
        theta_params = tuple(p if id(p) in wanted else p.detach() for p in spec.params)
        problem: MLPSpec | CallbackProblem = spec
    else:
        theta_params = params
        # Call func once here, so a wrong shape or a bug in it is reported in Python before Julia
        # starts (from inside Julia a shape error is Julia's, and compiling the solve comes first).
        with torch.no_grad():
            field(t[0].detach(), layout.to_matrix(y0).detach())
        # Julia solves dy/ds = -f(-s, y) for a decreasing t (see the module docstring).
        engine_field = field if not time_reversed else (lambda s, m: -field(-s, m))
        problem = make_callbacks(engine_field, (layout.batch, layout.dim), params, tensors[0].dtype, tensors[0].device)
    return layout, config, problem, field, theta_params, native


#: below these tolerances a float32 vector field's rounding (about 6e-8 relative per evaluation,
#: more through a network) dominates the local error estimate of Julia's Float64 integration.
LOW_PRECISION_RTOL = 1e-6


def _warn_low_precision(dtype: torch.dtype, params: Sequence[torch.Tensor], rtol: float) -> None:
    """Warn when the callback path evaluates a below-float64 field at tolerances it cannot meet."""
    dtypes = {dtype, *(p.dtype for p in params)}
    low = sorted(str(d) for d in dtypes if d.is_floating_point and torch.finfo(d).eps > 1e-10)
    if low and rtol < LOW_PRECISION_RTOL:
        warnings.warn(
            f"The Julia backend integrates in Float64 but calls back into torch for a {', '.join(low)} "
            f"vector field, whose rounding is above rtol={rtol:g}: the tolerance cannot be met (steps get "
            f"rejected, results are float32-accurate). Use func.double() and y0.double(), or "
            f"rtol >= {LOW_PRECISION_RTOL:g}.",
            UserWarning,
            stacklevel=3,
        )


def solve_with_engine(engine, func, y0: State, t: torch.Tensor, **kwargs) -> Solution:
    """:func:`solve` on a given engine (the real one or, in tests only, a stand-in)."""
    return solve(func, y0, t, engine=engine, **kwargs)


def _solve_prepared(engine, prepared: tuple, y0: State, t: torch.Tensor) -> Solution:
    """Run a solve that :func:`prepare` has checked and translated, on ``engine``."""
    layout, config, problem, field, params, _native = prepared
    m0 = layout.to_matrix(y0)
    if t.numel() == 1:
        ys = m0.unsqueeze(0)
        return Solution(ts=t, ys=layout.from_matrix(ys), stats=Stats(), status=Status.SUCCESS, t_final=t[-1])
    if isinstance(problem, CallbackProblem):
        _warn_low_precision(m0.dtype, params, config.rtol)
    n_theta = problem.n_params if isinstance(problem, CallbackProblem) else 0
    device = m0.device
    run = _Run(engine=engine, problem=problem, config=config, field=field, n_theta=n_theta, device=device)
    # The autograd Function works on CPU copies (differentiable moves), so its backward runs on
    # the thread that called .backward(), not on PyTorch's CUDA worker thread; results move back here.
    cpu = torch.device("cpu")
    ys = _JuliaSolve.apply(run, m0.to(cpu), t.to(cpu), *(p.to(cpu) for p in params)).to(device)
    return Solution(ts=t, ys=layout.from_matrix(ys), stats=run.stats or Stats(), status=Status.SUCCESS, t_final=t[-1])


def solve(
    func,
    y0: State,
    t: torch.Tensor,
    *,
    method: str | None = None,
    rtol=1e-7,
    atol=1e-9,
    options: Mapping[str, Any] | None = None,
    sensitivity=None,
    adjoint_params=None,
    engine=None,
) -> Solution:
    """Solve ``dy/dt = func(t, y)`` with DifferentialEquations.jl, differentiable through SciMLSensitivity.

    Args:
        func: ``func(t, y)``; an :class:`~hybrid_node.julia.translate.MLPVectorField` (or
            any module with ``mlp_spec()``) is solved natively in Julia, anything else through
            callbacks into torch.
        y0: tensor ``(..., D)`` (leading dims are a batch) or a tuple of tensors.
        t: 1-D strictly monotonic output times; differentiable.
        method: torch-style or Julia-style name (see :data:`METHODS`); None: "dopri5" (DP5).
        rtol, atol: scalar tolerances.
        options: ``first_step``/``max_num_steps`` (adaptive) or ``step_size``/``max_num_steps``
            (euler, rk4).
        sensitivity: GaussAdjoint (default when None), InterpolatingAdjoint, QuadratureAdjoint or
            BacksolveAdjoint settings.
        adjoint_params: tensors to differentiate; None: ``func.parameters()`` for a module.
        engine: the engine (default: the Julia module, loaded after the input is checked); tests
            pass a stand-in.

    Returns:
        :class:`~hybrid_node._solution.Solution` with ``ys`` of shape ``(len(t), *y0.shape)``.

    Raises:
        TypeError, ValueError: invalid input.
        BackendError: a method, option or sensitivity the Julia backend cannot do.
        JuliaNotAvailableError: Julia or juliacall is missing (with install instructions).
        SolverError: the solver stopped before the last time.
    """
    prepared = prepare(
        func,
        y0,
        t,
        method=method,
        rtol=rtol,
        atol=atol,
        options=options,
        sensitivity=sensitivity,
        adjoint_params=adjoint_params,
    )  # report mistakes before starting Julia
    engine = JuliaEngine(julia_runtime.load_module()) if engine is None else engine
    return _solve_prepared(engine, prepared, y0, t)
