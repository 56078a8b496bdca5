"""A stand-in for the Julia engine, for tests only (never selectable as a backend).

It honours the engine contract of hybrid_node.julia.backend (Julia layouts: state
(D, B), saved states (D, B, T), flat vectors in column-major order) with an independent solver:
scipy's DOP853 (or Radau with the callback Jacobian for stiff methods) stepped forward, and a
continuous adjoint solved backwards against the dense forward solution (Chen et al. 2018,
Algorithm 1, with the forward trajectory interpolated instead of recomputed).

Where upstream Julia does something surprising, the stand-in does the same, so that the Python glue
is tested against what Julia will really return (SciMLSensitivity 7.97-7.112, src/concrete_solve.jl;
SciMLBase sensitivity_solution; OrdinaryDiffEqCore solve!; PythonCall JlWrap/base.jl):

- Saved states. Every adjoint but BacksolveAdjoint solves without ``saveat`` and returns
  ``sol(sort(ts))``: the states at the *sorted* times. The backward pass adds the cotangent of index
  ``T, T-1, ...`` at each output time as the backward integration passes it (ReverseLossCallback's
  ``cur_time`` counts down), whatever the direction of time. BacksolveAdjoint keeps the order of ``ts``.
- Failures. No retcode check happens before ``sol(ts)``: the states past the failure are the
  interpolation's extrapolation, and ``sensitivity_solution`` sets ``sol.t = ts``, so the solution's
  last time (``t_final``) is ``max(ts)``. BacksolveAdjoint returns the output times reached and,
  after them, the point where the solver stopped (``save_end = true`` is passed explicitly).
  ``t_reached`` is what HybridNODE's bridge.jl reports from a plain re-solve (the integrator's time).
- Step-size underflow. OrdinaryDiffEq's default ``dtmin`` is 0 (OrdinaryDiffEqCore src/solve.jl),
  so a step size driven to nothing ends in SciMLBase ``check_error``'s ``dt_epsilon`` branch: a
  rejected step with ``abs(dt) <= eps(t)`` returns ``ReturnCode.Unstable``
  (src/integrator_interface.jl, SciMLBase 2.147 to 3.49; DiffEqBase 7.18
  lib/DiffEqBase/src/check_error.jl), not ``DtLessThanMin`` (that needs ``dt <= dtmin``). A state
  that is not finite after an accepted step is ``Unstable`` too (``unstable_check``);
  ``state_finite`` (bridge.jl's ``reached_time``) tells the two apart. scipy's failure ("step size
  less than spacing between numbers") is the underflow.
- Step limit. ``maxiters`` counts every attempted step, rejected ones included (``integrator.iter``),
  with OrdinaryDiffEqCore's default of 1_000_000 for adaptive methods (src/solve.jl). The backward
  solve has the same limit (concrete_solve.jl passes the solve's keywords on); SciMLSensitivity does
  not check its return code, so HybridNODE's ``backward`` raises on the solver's warning
  (``AdjointSolveFailed`` inside a JuliaError, as bridge.jl throws it).
- Non-finite vector field values. A NaN or inf in an adaptive step attempt makes the
  PIController's ``dt`` NaN and ends the solve with ``DtNaN`` at the last accepted step
  (:data:`NAN_DT_ALGORITHMS`, :func:`_nonfinite_stop`); with fixed steps ``unstable_check`` ends it
  with ``Unstable`` and a NaN state; a NaN at ``(t0, u0)`` stops it before any step with
  ``Unstable`` and the finite ``u0`` (initdt's ``dt = 0``, :func:`_initial_nonfinite_stop`).
- Callback arguments. Python callbacks get what PythonCall's ``Py(x)`` makes of Julia's: a
  ``juliacall.VectorValue``-like :class:`JuliaVector` (no numpy methods) and Python floats.
- Callback errors. A Python exception raised in a callback crosses Julia as a PyException, and
  where that reaches the juliacall boundary unwrapped PythonCall restores the original Python
  exception (PythonCall 0.9.34 src/JlWrap/base.jl: ``exc isa PyException`` -> ``PyErr_Restore``),
  so it comes out of the engine as itself. With ``wrap_callback_errors=True`` the stand-in plays a
  solver layer that wraps it in another Julia exception instead: then it comes out inside a
  ``JuliaError`` (shaped like juliacall's: ``args = (julia_exception, backtrace)``), and
  ``python_exception`` finds it as bridge.jl's ``python_exception`` does (the Python side's
  fallback).

The MLP of the native path is evaluated with the Julia module's formula,
W = transpose(reshape(theta[r], in, out)), in numpy, and differentiated by hand.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
from scipy.integrate import DOP853, OdeSolution, Radau

from hybrid_node._solution import Stats
from hybrid_node.julia.backend import ForwardOutput, SolveConfig
from hybrid_node.julia.translate import MLPSpec


def _act(name, z):
    """Activation value and derivative, as julia/activations.jl defines them."""
    if name == "identity":
        return z, np.ones_like(z)
    if name == "tanh":
        a = np.tanh(z)
        return a, 1 - a * a
    if name == "relu":
        return np.maximum(z, 0), (z > 0).astype(float)
    if name == "softplus":
        big = z > 20
        zs = np.where(big, 0.0, z)
        s = 1 / (1 + np.exp(-zs))
        return np.where(big, z, np.log1p(np.exp(zs))), np.where(big, 1.0, s)
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-z))
        return s, s * (1 - s)
    if name == "silu":
        s = 1 / (1 + np.exp(-z))
        return z * s, s + z * s * (1 - s)
    if name == "elu":
        neg = np.minimum(z, 0)
        return np.where(z > 0, z, np.expm1(neg)), np.where(z > 0, 1.0, np.exp(neg))
    raise ValueError(name)


def julia_weight(spec: MLPSpec, theta: np.ndarray, k: int):
    """Layer k's (W, b) read from theta exactly as julia/mlp.jl does."""
    w, b = list(spec.ranges())[k]
    W = theta[w].reshape((spec.n_in[k], spec.n_out[k]), order="F").T
    return W, (theta[b] if b is not None else None)


def mlp_forward(spec: MLPSpec, theta, u, t):
    """The MLP on a (D, B) state; returns the output and the per-layer cache."""
    x = np.vstack([u, np.full((1, u.shape[1]), t)]) if spec.time_input else u
    cache = []
    for k in range(len(spec.n_in)):
        W, b = julia_weight(spec, theta, k)
        z = W @ x + (b[:, None] if b is not None else 0.0)
        a, da = _act(spec.activations[k], z)
        cache.append((x, da, W))
        x = a
    return x, cache


def mlp_vjp(spec: MLPSpec, theta, u, t, lam):
    """(lam^T df/du, lam^T df/dtheta) for the (D, B) state u and cotangent lam."""
    _, cache = mlp_forward(spec, theta, u, t)
    g_theta = np.zeros_like(theta)
    g = lam
    for k in reversed(range(len(spec.n_in))):
        x, da, W = cache[k]
        gz = g * da
        w, b = list(spec.ranges())[k]
        # theta[w] read column-major as (in, out) is W^T, i.e. W read row-major.
        g_theta[w] = (gz @ x.T).reshape(-1)
        if b is not None:
            g_theta[b] = gz.sum(axis=1)
        g = W.T @ gz
    return g[: u.shape[0]], g_theta


class JuliaError(Exception):
    """Shaped like juliacall.JuliaError: ``args = (exception, backtrace)``."""

    def __init__(self, exception, backtrace=None):
        super().__init__(exception, backtrace)

    @property
    def exception(self):
        return self.args[0]


@dataclasses.dataclass
class PyException:
    """PythonCall.PyException: ``v`` is the Python exception value."""

    v: BaseException


@dataclasses.dataclass
class WrappedJuliaException:
    """A Julia exception holding another one in a field (as solver layers rethrow)."""

    msg: str
    error: object


@dataclasses.dataclass
class AdjointSolveFailed:
    """bridge.jl's AdjointSolveFailed: ``messages`` are the solver's warnings of the backward solve."""

    messages: list


def python_exception(jl_exc, depth: int = 0):
    """bridge.jl's python_exception: the Python exception held anywhere in a Julia exception."""
    if isinstance(jl_exc, PyException):
        return jl_exc.v
    if depth > 8 or not dataclasses.is_dataclass(jl_exc):
        return None
    for field in dataclasses.fields(jl_exc):
        found = python_exception(getattr(jl_exc, field.name), depth + 1)
        if found is not None:
            return found
    return None


class JuliaVector:
    """A Julia ``Vector{Float64}`` as a Python callback receives it: a ``juliacall.VectorValue``.

    Julia converts the arguments of a Python call with ``Py(x)``; for an array that is
    ``pyjl(x)`` (PythonCall 0.9.34 src/JlWrap/base.jl:141, ``Py(x) = ... pyjl(x)``), a
    ``juliacall.VectorValue`` wrapping the Julia vector (src/JlWrap/vector.jl:126-164), not a
    numpy array. What the stand-in keeps of its ``ArrayValue`` interface (src/JlWrap/array.jl:335-375):
    ``__array_interface__`` over the Julia memory (so ``np.asarray`` makes a view and no copy), ``__array__``,
    ``to_numpy``, ``shape``, ``ndim``, ``copy``, 0-based indexing and ``len``. numpy's own methods and
    operators (``.reshape(..., order=)``, ``.astype``, ``+``) are not there: the Python side must convert
    with ``np.asarray`` first.
    """

    __slots__ = ("_data",)

    def __init__(self, values):
        self._data = np.array(values, dtype=float).reshape(-1)  # callback.jl's flat_copy: a fresh vector

    @property
    def __array_interface__(self):
        return self._data.__array_interface__

    def __array__(self, dtype=None, copy=None):
        return np.array(self._data, dtype=dtype, copy=copy)

    def to_numpy(self, dtype=None, copy=True, order="K"):
        return np.array(self._data, dtype=dtype, copy=copy, order=order)

    @property
    def shape(self):
        return self._data.shape

    @property
    def ndim(self):
        return 1

    def copy(self):
        return JuliaVector(self._data)

    def __len__(self):
        return len(self._data)

    def __getitem__(self, k):
        return self._data[k]


def _to_python(x):
    """An argument of a Python call from Julia, as PythonCall converts it (``Py(x)``, src/Core/Py.jl).

    Args:
        x: the value the stand-in hands over.

    Returns:
        A :class:`JuliaVector` for an array, a Python float or int for a numpy scalar
        (``Py(::Float64) = pyfloat(x)``, ``Py(::Integer) = pyint(x)``), ``x`` itself otherwise.
    """
    if isinstance(x, np.ndarray):
        return JuliaVector(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _from_julia(fn, wrap: bool = False):
    """Call a Python callback as Julia would, and let its exception out as juliacall does.

    Args:
        fn: the Python callback.
        wrap: play a solver layer that wraps the PyException in another Julia exception.

    Returns:
        The callback, taking its arguments as PythonCall converts them (:func:`_to_python`) and
        raising as it comes out of the engine: the exception itself (PythonCall restores a
        PyException that reaches the boundary, src/JlWrap/base.jl), or with ``wrap`` a JuliaError
        holding it nested.
    """

    def call(*args):
        args = tuple(_to_python(a) for a in args)
        if not wrap:
            return fn(*args)
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised wrapped, as through a wrapping solver layer
            raise JuliaError(WrappedJuliaException("error in a solver callback", PyException(e)), None) from None

    return call


#: OrdinaryDiffEqCore's default ``maxiters`` for adaptive algorithms (src/solve.jl, ``__init``:
#: ``maxiters = anyadaptive(alg) ? 1000000 : typemax(Int)``).
DEFAULT_MAXITERS = 1_000_000


#: The algorithms that cannot adapt (``isadaptive(alg) == false``): of those the Python side maps,
#: only ``Euler <: OrdinaryDiffEqAlgorithm`` (OrdinaryDiffEqLowOrderRK src/algorithms.jl:17 at
#: OrdinaryDiffEq b211787). ``RK4`` (:86) is an ``OrdinaryDiffEqAdaptiveAlgorithm`` and ``TRBDF2``
#: an ``OrdinaryDiffEqNewtonAdaptiveSDIRKAlgorithm`` (OrdinaryDiffEqSDIRK src/algorithms.jl:203).
NON_ADAPTIVE_ALGORITHMS = ("Euler",)


def _maxiters(config) -> int:
    """The step limit upstream applies: the user's, else OrdinaryDiffEqCore's default.

    The default depends on the algorithm, not on ``adaptive = false``: ``maxiters =
    anyadaptive(alg) ? 1000000 : typemax(Int)`` (OrdinaryDiffEqCore src/solve.jl:161), so a
    fixed-step ``RK4`` or ``TRBDF2`` solve stops after 10^6 steps and an ``Euler`` one never.

    Args:
        config: the engine's SolveConfig.

    Returns:
        ``config.maxiters``, else no limit for Euler and 1_000_000 for every other algorithm.
    """
    if config.maxiters is not None:
        return int(config.maxiters)
    return sys.maxsize if config.algorithm in NON_ADAPTIVE_ALGORITHMS else DEFAULT_MAXITERS


def _fixed_grid_stop(ts: np.ndarray, dt: float, maxiters: int) -> float | None:
    """Where a fixed-step solve with ``dt`` and ``tstops = ts`` stops for ``maxiters``, or None.

    With ``adaptive = false`` every step is ``min(dt, distance to the next tstop)``, a step that
    ends within ``100 eps`` of the tstop ending on it (OrdinaryDiffEqCore
    ``modify_dt_for_tstops!``, src/integrators/integrator_utils.jl:268), and no step is rejected,
    so the steps are known beforehand. ``check_error`` stops the solve once ``integrator.iter >
    maxiters`` (DiffEqBase src/check_error.jl:81), ``iter`` counting each step
    (``loopheader!``, integrator_utils.jl:120): after ``maxiters`` steps.

    Args:
        ts: the (increasing) output times, which are the tstops.
        dt: the fixed step.
        maxiters: the step limit.

    Returns:
        The time reached after ``maxiters`` steps when the grid has more, else None.
    """
    done = 0
    for a, b in zip(ts[:-1], ts[1:]):
        k = _steps_in_gap(a, b, dt)
        if done + k > maxiters:
            return float(a + (maxiters - done) * dt)
        done += k
    return None


def _steps_in_gap(a: float, b: float, dt: float) -> int:
    """The fixed steps from one tstop ``a`` to the next ``b``: ``ceil((b - a) / dt)``, less one where
    the last would be a sliver (``modify_dt_for_tstops!`` ends a step within ``100 eps`` of the
    tstop on it, OrdinaryDiffEqCore src/integrators/integrator_utils.jl:268)."""
    k = int(np.ceil((b - a) / dt))
    if k > 1 and (b - a) - (k - 1) * dt <= 100 * np.finfo(float).eps * max(abs(a), abs(b)):
        k -= 1
    return max(k, 1)


def _fixed_grid_count(stops: np.ndarray, dt: float, until: float) -> int:
    """The fixed steps from ``stops[0]`` (tstops ``stops[1:]``) that start before ``until``.

    An event at ``until`` is found at the end of the step that holds it, which ``integrator.iter``
    has counted; the integrator then moves back to the event (DiffEqBase ``apply_callback!``:
    ``change_t_via_interpolation!``, lib/DiffEqBase/src/callbacks.jl:572) and the next steps of
    ``dtcache`` start there (``modify_dt_for_tstops!``).

    Args:
        stops: the segment's start, then the later tstops (increasing).
        dt: the fixed step.
        until: the event's time (after ``stops[0]``).

    Returns:
        The number of steps taken up to and including the one that holds ``until``.
    """
    done = 0
    for a, b in zip(stops[:-1], stops[1:]):
        k = _steps_in_gap(a, b, dt)
        if until >= b:
            done += k
            continue
        return done + min(k, int(np.ceil((until - a) / dt)))
    return done


def _backward_steps(t_from: float, t_to: float, dt: float) -> int:
    """The steps the adjoint's backward solve of a fixed-step forward solve takes between two output times.

    The backward solve runs with the forward's keywords: ``_concrete_solve_adjoint`` hands them
    (``kwargs_init``, the solve's keywords less ``callback``/``initializealg``) to
    ``adjoint_sensitivities`` (SciMLSensitivity src/concrete_solve.jl:545-552 and 887 at v7.97.0
    2a7dfa7, :592-599 and 954 at v7.112.1 8a935f5), whose ``solve(adj_prob, alg; ..., tstops,
    ..., kwargs...)`` (src/gauss_adjoint.jl:709-712 / :847-850, src/sensitivity_interface.jl:477-480 /
    :479-482, src/quadrature_adjoint.jl:444-446 / :527-529) lets the rightmost ``tstops`` win: the
    forward's ``adaptive = false``, ``dt`` and ``tstops = ts``. So it steps back from each output
    time with ``dt``, shortened to land on the next one (``modify_dt_for_tstops!`` with ``tdir < 0``),
    exactly as many steps as the forward took in that gap, and no step is rejected.

    Args:
        t_from, t_to: the output times the backward solve goes between (either order).
        dt: the forward's fixed step.

    Returns:
        The number of steps, counted against the forward's ``maxiters`` as ``integrator.iter`` is.
    """
    lo, hi = sorted((float(t_from), float(t_to)))
    return _steps_in_gap(lo, hi, dt)


def _check_checkpoint_resolve(config) -> None:
    """Fail as upstream's checkpointed InterpolatingAdjoint fails after a fixed-step Euler solve.

    Its backward pass re-solves each checkpoint interval with ``sol.alg`` and the tolerances only
    (SciMLSensitivity src/interpolating_adjoint.jl:49-51 at v7.112.1 8a935f5: ``solve(remake(...),
    sol.alg; tols...)``, ``tols = (; reltol, abstol)``), so a method that cannot adapt gets neither
    ``dt`` nor ``tstops`` and OrdinaryDiffEqCore's ``__init`` throws (src/solve.jl:277-279 at
    OrdinaryDiffEq b211787). ``RK4`` and ``TRBDF2`` re-solve adaptively instead, which the stand-in's
    adaptive dense forward solution already stands for.

    Args:
        config: the engine's SolveConfig.

    Raises:
        JuliaError: holding Julia's ArgumentError, for a checkpointed InterpolatingAdjoint after a
            fixed-step solve with a method that cannot adapt.
    """
    checkpointed = config.sensitivity == "InterpolatingAdjoint" and config.checkpointing
    if checkpointed and config.fixed_step and config.algorithm in NON_ADAPTIVE_ALGORITHMS:
        message = "Fixed timestep methods require a choice of dt or choosing the tstops"
        raise JuliaError(ArgumentError(message), None)


def _attempts(solver, nfev_before: int) -> int:
    """The step attempts (accepted and rejected) scipy's ``solver.step()`` just made.

    OrdinaryDiffEqCore counts every attempt in ``integrator.iter`` (``loopheader!``,
    src/integrators/integrator_utils.jl) and fails with MaxIters once ``iter > maxiters``
    (DiffEqBase ``check_error``). scipy hides its rejected attempts inside ``step()``; an explicit
    Runge-Kutta attempt evaluates the field ``n_stages`` times (scipy's ``rk_step``), so they are
    counted from the evaluations. Radau's attempts cost a varying number of evaluations: one per
    ``step()`` (its rejections are not counted).

    Args:
        solver: the scipy solver, right after ``step()``.
        nfev_before: its ``nfev`` before ``step()``.

    Returns:
        The number of attempts (at least 1).
    """
    stages = getattr(solver, "n_stages", None)
    if stages is None:
        return 1
    return max(1, (solver.nfev - nfev_before) // stages)


#: The algorithms HybridNODE maps whose default step-size controller is OrdinaryDiffEqCore's
#: PIController (``default_controller(QT, alg) = PIController(QT, alg)``, OrdinaryDiffEqCore
#: src/alg_utils.jl:730 at OrdinaryDiffEq b211787; AutoTsit5Rodas5P's CompositeController holds two
#: of them). A non-finite vector field value in a step attempt makes its error estimate ``EEst``
#: NaN: the step is rejected (``EEst <= 1`` is false) and ``step_reject_controller!`` sets
#: ``dt /= min(inv(qmin), q11 / gamma)`` with ``q11 = EEst^beta1`` NaN (src/integrators/
#: controllers.jl:838-842), and Julia's ``min`` propagates NaN, so ``dt`` is NaN and the next
#: ``check_error`` ends the solve with ``ReturnCode.DtNaN`` before anything else (DiffEqBase 7.18
#: lib/DiffEqBase/src/check_error.jl:77-80), the state that of the last accepted step. The
#: Rosenbrock methods are here: they solve linear systems, no Newton iteration, so a NaN stage
#: reaches their error estimate. Left out: VCABM (``default_controller(QT, alg::VCABM) =
#: IController``, lib/OrdinaryDiffEqAdamsBashforthMoulton/src/alg_utils.jl:15, whose
#: ``@fastmath q = max(inv(qmax), min(inv(qmin), qtmp))`` (OrdinaryDiffEqCore
#: src/integrators/controllers.jl:676) carries LLVM's ``nnan`` flag: with a NaN ``EEst`` the
#: value of ``q``, and so whether ``dt`` becomes NaN or shrinks by a finite factor, is undefined;
#: it keeps scipy's step-size underflow) and the Newton-based :data:`NEWTON_ALGORITHMS`.
NAN_DT_ALGORITHMS = ("Tsit5", "DP5", "BS3", "RK4", "Vern7", "Vern9", "Rodas5P", "Rosenbrock23", "AutoTsit5Rodas5P")

#: The algorithms HybridNODE maps that solve their stages by Newton's method
#: (OrdinaryDiffEqNonlinearSolve). A non-finite field value in a stage makes the residual norm
#: ``ndz`` non-finite, which ``nlsolve!`` takes for divergence (src/nlsolve.jl:151-158 at
#: OrdinaryDiffEq b211787), retried once with a fresh Jacobian (:252-261, the same NaN again);
#: ``postamble!`` then sets ``force_stepfail`` (:309) and the stage returns early (``nlsolvefail(nlsolver)
#: && return``: OrdinaryDiffEqSDIRK src/generic_imex_perform_step.jl:131, OrdinaryDiffEqBDF
#: src/bdf_perform_step.jl:64), before any error estimate and with ``integrator.u`` not advanced.
#: Adaptive steps: ``_loopfooter!`` calls ``post_newton_controller!`` (OrdinaryDiffEqCore
#: src/integrators/integrator_utils.jl:601-603, 730), which divides ``dt`` by ``failfactor = 2``
#: (src/integrators/controllers.jl:485-491; FBDF and QNDF the same, OrdinaryDiffEqBDF
#: src/controllers.jl:257-283), a finite factor: the solve creeps up to the NaN and ends in
#: ``check_error``'s ``dt_epsilon`` branch, ``Unstable`` with the last accepted (finite) state
#: (DiffEqBase check_error.jl:102-105), which scipy's Radau step-size failure models. Fixed steps
#: (TRBDF2 with ``adaptive = false``): the failed step sets ``last_stepfail`` and is retried at the
#: same ``dt`` (integrator_utils.jl:604-608; ``handle_step_rejection!`` leaves ``dt`` alone with
#: ``force_stepfail``, :137), and ``check_error`` ends the solve with ``ConvergenceFailure``
#: (``last_step_failed``: ``last_stepfail && !adaptive``, integrator_utils.jl:248-250;
#: check_error.jl:113-116) at the start of the failed step, the state finite.
NEWTON_ALGORITHMS = ("KenCarp4", "TRBDF2", "FBDF", "QNDF")


class _NonFiniteWatch:
    """The vector field as the scipy solver calls it, noting the first call whose value is not finite.

    Attributes:
        calls: the calls made so far.
        first: the number of the first call (1-based) that returned a non-finite value since it was
            last reset to None (before each ``step()``), or None.
        first_t: the time of that call (None with ``first``).
    """

    def __init__(self, fun):
        self.fun = fun
        self.calls = 0
        self.first: int | None = None
        self.first_t: float | None = None

    def __call__(self, t, x):
        out = self.fun(t, x)
        self.calls += 1
        if self.first is None and not np.all(np.isfinite(out)):
            self.first, self.first_t = self.calls, float(t)
        return out


def _fixed_step_holding(stops: np.ndarray, dt: float, t_hit: float) -> tuple[float, float]:
    """The start and end of upstream's fixed step (``dt``, ending on every tstop) whose stages reach ``t_hit``.

    The steps of a fixed-step solve are known beforehand (see :func:`_fixed_grid_stop`); scipy's
    own steps are not them, so the step a non-finite stage value fails is taken to be the grid step
    that holds the time of scipy's first non-finite field value, ``t_hit``.

    Args:
        stops: the grid's start followed by the (increasing) tstops after it.
        dt: the fixed step.
        t_hit: the time of the first non-finite field value.

    Returns:
        ``(start, end)`` of the grid step holding ``t_hit``: ``end = min(start + dt, next tstop)``.
    """
    for a, b in zip(stops[:-1], stops[1:]):
        if t_hit <= b:
            k = max(1, int(np.ceil((t_hit - a) / dt)))
            start = float(min(a + (k - 1) * dt, b))
            return start, float(min(start + dt, b))
    return float(stops[-1]), float(stops[-1])


def _nonfinite_stop(
    config, watch: _NonFiniteWatch, calls_before: int, attempts_before: int, solver, maxiters: int, stops: np.ndarray
):
    """How upstream's solve ends when a step attempt saw a non-finite vector field value, or None.

    With fixed steps (``adaptive = false``) nothing is rejected: the step of an explicit method is
    accepted with its NaN state and ``unstable_check`` (``any(isnan, u)``) ends the solve with
    ``Unstable`` at that step's end, the state not finite (DiffEqBase src/check_error.jl:108-112); the
    Newton iteration of an implicit one (:data:`NEWTON_ALGORITHMS`) fails instead, and the solve ends with
    ``ConvergenceFailure`` at the start of that step, the state finite. With adaptive steps of a
    Newton method the dt halvings end in scipy's step-size underflow (None here); of a PIController algorithm
    (:data:`NAN_DT_ALGORITHMS`) the rejected attempt's ``dt`` is NaN: ``DtNaN`` at the last accepted
    step, provided that attempt came within ``maxiters`` (``check_error`` tests ``isnan(dt)`` before
    ``iter > maxiters``).

    Args:
        config: the engine's SolveConfig.
        watch: the field's watch; ``watch.first`` set by the ``step()`` just made.
        calls_before, attempts_before: the field calls and step attempts before that ``step()``.
        solver: the scipy solver (its ``n_stages`` evaluations make one explicit attempt).
        maxiters: the step limit in force.
        stops: the fixed-step grid's start and the tstops after it (read with fixed steps only).

    Returns:
        ``(retcode, state_finite, t_reached)`` (``t_reached`` None: where scipy's last accepted step
        ended), or None: no non-finite value in this ``step()``, or an algorithm that keeps scipy's
        outcome (a step-size underflow).
    """
    if watch.first is None or watch.first <= calls_before:
        return None
    if config.fixed_step:
        assert watch.first_t is not None  # set together with watch.first
        start, end = _fixed_step_holding(stops, float(config.dt), watch.first_t)
        if config.algorithm in NEWTON_ALGORITHMS:
            return "ConvergenceFailure", True, start
        return "Unstable", False, end
    if config.algorithm not in NAN_DT_ALGORITHMS:
        return None
    stages = getattr(solver, "n_stages", None)
    # an explicit attempt is n_stages calls (see _attempts); Radau's step() counts as one attempt
    attempt = attempts_before + (-(-(watch.first - calls_before) // stages) if stages else 1)
    return ("DtNaN", True, None) if attempt <= maxiters else None


def _initial_nonfinite_stop(config, ts: np.ndarray, f0: np.ndarray) -> tuple[str, bool, float] | None:
    """How upstream's solve ends when the vector field is not finite at the initial state, or None.

    With adaptive steps and no first step given, ``ode_determine_initdt`` finds the norm of ``f0``
    NaN, warns "First function call produced NaNs" and returns ``tdir * dtmin = 0``
    (OrdinaryDiffEqCore src/initdt.jl:189-198 at b211787); ``loopheader!``'s ``fix_dt_at_bounds!``
    raises it to ``timedepentdtmin = eps(t0)`` (src/integrators/integrator_utils.jl:1243-1256,
    DiffEqBase src/utils.jl:93), and ``check_error``'s ``dt_epsilon`` branch ends the solve before
    any step, since ``accept_step`` starts false (src/solve.jl:710): ``Unstable`` at ``t0`` with the
    finite ``u0``. With a first step (``first_step``) the first attempt meets the NaN: ``DtNaN``
    for the PIController algorithms (:func:`_nonfinite_stop`; the others are taken to fail their
    Newton iteration down to the same ``Unstable``, :data:`NEWTON_ALGORITHMS`). With fixed steps the
    first step of an explicit method is accepted and ``unstable_check`` stops on its NaN state:
    ``Unstable`` at ``t0 + dt`` (or the first tstop); that of a Newton method fails, and the solve
    ends with ``ConvergenceFailure`` at ``t0``, the state ``u0``. scipy's initial step is NaN there
    instead, and its step loop never ends.

    Args:
        config: the engine's SolveConfig.
        ts: the output times.
        f0: the vector field at ``(ts[0], u0)``.

    Returns:
        ``(retcode, state_finite, t_reached)``, or None when ``f0`` is finite.
    """
    if np.all(np.isfinite(f0)):
        return None
    t0 = float(ts[0])
    if config.fixed_step and config.algorithm in NEWTON_ALGORITHMS:
        return "ConvergenceFailure", True, t0
    if config.fixed_step:
        return "Unstable", False, min(t0 + float(config.dt), float(ts[1]))
    if config.dt is not None and config.algorithm in NAN_DT_ALGORITHMS:
        return "DtNaN", True, t0
    return "Unstable", True, t0


class ArgumentError(Exception):
    """Julia's ArgumentError (what the stand-in's JuliaError carries for a bad argument)."""


def gauss_config(algorithm: str, *, dt: float | None = None, maxiters: int | None = None) -> SolveConfig:
    """The settings of the engine-level tests: ``algorithm`` with GaussAdjoint at tight tolerances.

    Args:
        algorithm: the Julia algorithm's name.
        dt: a fixed step (then ``fixed_step``), or None for adaptive steps.
        maxiters: the step budget, or None for the default.

    Returns:
        The glue's SolveConfig.
    """
    return SolveConfig(
        algorithm=algorithm,
        sensitivity="GaussAdjoint",
        checkpointing=False,
        rtol=1e-8,
        atol=1e-10,
        quad_rtol=1e-8,
        quad_atol=1e-10,
        maxiters=maxiters,
        dt=dt,
        fixed_step=dt is not None,
    )


class DimensionMismatch(Exception):
    """Julia's DimensionMismatch (what callback.jl's ``check_length`` throws)."""


def _check_length(out: np.ndarray, n: int, what: str) -> np.ndarray:
    """julia/callback.jl's ``check_length``: a Python callback's answer must have ``n`` values.

    Args:
        out: the callback's answer.
        n: the length Julia expects.
        what: the callback, for the message.

    Returns:
        ``out``.

    Raises:
        JuliaError: holding a DimensionMismatch, when the length differs.
    """
    if out.size != n:
        raise JuliaError(DimensionMismatch(f"the Python {what} returned {out.size} values, expected {n}"), None)
    return out


def _check_output_times(ts: np.ndarray) -> None:
    """bridge.jl's ``prepare``, which ``forward_mlp`` and ``forward_callback`` call first (events too).

    Its refusal of times that are not increasing is left out: the stand-in's tests of upstream's
    sorted ``saveat`` (what that refusal guards against) hand it decreasing times on purpose.

    Args:
        ts: the output times the engine was given.

    Raises:
        JuliaError: fewer than two output times (Julia's ArgumentError).
    """
    if len(ts) < 2:
        raise JuliaError(ArgumentError("need at least two output times"), None)


def _check_points(t_prev: float, t: float, interp_points: int) -> list[float]:
    """The times where DiffEqBase checks the event signs in a step from ``t_prev`` to ``t``.

    DiffEqBase's ``check_event_occurrence`` (DiffEqBase 6.211 and 7.18, src/callbacks.jl) checks
    ``range(tprev, stop = t, length = interp_points)[2:end]``: ``interp_points - 2`` points inside
    the step and its end; with ``interp_points == 0`` only the end. Julia's ``range`` of length 1
    throws unless ``tprev == t``, so ``interp_points == 1`` fails the solve.

    Args:
        t_prev, t: the step's start and end.
        interp_points: the callback's ``interp_points``.

    Returns:
        The times, in order, ending with ``t``.

    Raises:
        JuliaError: ``interp_points == 1`` (Julia's ArgumentError from ``range``).
    """
    if interp_points == 1 and t_prev != t:
        message = f"range({t_prev}, stop={t}, length=1): endpoints differ"
        raise JuliaError(ArgumentError(message), None)
    if interp_points <= 1:
        return [t]
    return [float(x) for x in np.linspace(t_prev, t, interp_points)[1:]]


def _occurred(condition, dense, bottom: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """DiffEqBase's ``check_event_occurrence_upto`` for a VectorContinuousCallback at the point ``p``.

    ``findall_events!`` (DiffEqBase 7.18, lib/DiffEqBase/src/callbacks.jl) marks a component when
    ``prev_sign[i] != 0 && prev_sign[i] * next_sign[i] <= 0``: against the sign at the step's
    start, and a value that is exactly zero at ``p`` counts (its root is then ``p`` itself,
    ``find_callback_time``'s ``iszero(top_sign)`` branch).

    Args:
        condition: the bridge's condition callback.
        dense: the step's interpolant.
        bottom: the signs at the step's start (after a nudge).
        p: the point checked.

    Returns:
        ``(changed, signs)``: which components count as crossed, and their signs at ``p``.
    """
    now = np.sign(np.asarray(condition(dense(p), p), dtype=float))
    return (bottom != 0) & (bottom * now <= 0), now


def _act_events(affect, jumped, events, t, x):
    """julia/events.jl's ``act!(integrator, events::AbstractVector)``, as DiffEqBase 7 calls it.

    DiffEqBase 7 (OrdinaryDiffEq.jl lib/DiffEqBase/src/callbacks.jl, ``apply_callback!``) calls a
    VectorContinuousCallback's ``affect!(integrator, simultaneous_events)`` with one Int8 per
    component (0, or +1/-1 for a crossing upwards/downwards at the event time); ``act!`` hands every
    nonzero one to Python in index order with its direction, the state after a jump going to the
    next, and stops after a terminating one. (DiffEqBase 6 calls ``affect!(integrator, idx::Int)``
    for an upcrossing and ``affect_neg!(integrator, idx)`` for a downcrossing instead; events.jl
    keeps those methods, checked in tests/test_julia_files.py.)

    Args:
        affect, jumped: the Python bridge's callbacks, as Julia calls them.
        events: the Int8 vector of crossings.
        t, x: the event time and the state there (``integrator.t``, ``integrator.u``).

    Returns:
        ``(code, x)``: the last action code handled (3 after a terminating one) and the state after
        the jumps.

    Raises:
        TypeError: ``events`` is not a vector of Int8 (the type DiffEqBase 7 passes).
    """
    if not (isinstance(events, np.ndarray) and events.ndim == 1 and events.dtype == np.int8):
        raise TypeError("DiffEqBase 7 passes a vector of Int8 to affect!")
    code, x = 0, x.copy()
    for idx in np.flatnonzero(events):
        code = int(affect(t, x.copy(), int(idx), int(events[idx])))
        if code == 2:
            x = np.asarray(jumped(), dtype=float).copy()
        elif code == 3:
            break
    return code, x


@dataclasses.dataclass
class _Handle:
    problem: object
    theta: np.ndarray
    ts: np.ndarray
    saved_ts: np.ndarray
    dense: object
    shape: tuple
    config: object


def _sorts_saveat(config) -> bool:
    return config.sensitivity != "BacksolveAdjoint"


class StandinEngine:
    """Engine with the Julia engine's contract, computed with scipy. Records every call."""

    def __init__(self, wrap_callback_errors: bool = False):
        self.forward_calls = []
        self.backward_calls = []
        self.wrap_callback_errors = wrap_callback_errors

    def _from_julia(self, fn):
        return _from_julia(fn, self.wrap_callback_errors)

    # vector field and its vjp on flat column-major vectors
    def _f(self, problem, theta, shape, config, x, t):
        if isinstance(problem, MLPSpec):
            u = x.reshape(shape, order="F")
            if config.time_reversed:  # bridge.jl: (u, p, s) -> -mlp(u, p, -s)
                return -mlp_forward(problem, theta, u, -t)[0].reshape(-1, order="F")
            return mlp_forward(problem, theta, u, t)[0].reshape(-1, order="F")
        out = np.asarray(self._from_julia(problem.f)(x.copy(), t), dtype=float)
        return _check_length(out, x.size, "vector field")

    def _vjp(self, problem, theta, shape, config, lam, x, t):
        if isinstance(problem, MLPSpec):
            sign = -1.0 if config.time_reversed else 1.0
            u, lm = x.reshape(shape, order="F"), lam.reshape(shape, order="F")
            gu, gp = mlp_vjp(problem, theta, u, sign * t, lm)
            return sign * gu.reshape(-1, order="F"), sign * gp
        out = np.asarray(self._from_julia(problem.vjp)(lam.copy(), x.copy(), t), dtype=float)
        # callback.jl's TorchCallbacks: n_params = length(θ), the vector Julia was given
        _check_length(out, x.size + len(theta), "vector-Jacobian product")
        return out[: x.size], out[x.size :]

    def python_exception(self, err: BaseException) -> BaseException | None:
        """The engine interface's unwrapping (JuliaEngine.python_exception), on the stand-in's JuliaError."""
        if not isinstance(err, JuliaError):
            return None
        return python_exception(err.exception)

    def forward(self, problem, u0, theta, ts, config):
        assert u0.ndim == 2, "the engine receives the Julia (D, B) layout"
        self.forward_calls.append(
            dict(problem=problem, u0=np.array(u0), theta=np.array(theta), ts=np.array(ts), config=config)
        )
        shape = u0.shape
        ts = np.asarray(ts, dtype=float)
        _check_output_times(ts)
        x0 = np.asarray(u0, dtype=float).reshape(-1, order="F")
        fun = _NonFiniteWatch(lambda t, x: self._f(problem, theta, shape, config, x, t))
        kw = dict(rtol=config.rtol, atol=config.atol)
        if config.stiff and not isinstance(problem, MLPSpec):
            n = problem.n_state
            jac = self._from_julia(problem.jac)
            solver = Radau(
                fun, ts[0], x0, ts[-1], jac=lambda t, x: np.asarray(jac(x.copy(), t)).reshape((n, n), order="F"), **kw
            )
        else:
            solver = DOP853(fun, ts[0], x0, ts[-1], **kw)
        maxiters = _maxiters(config)
        # A fixed-step solve's steps are known beforehand; scipy's adaptive steps are not them, so
        # its step limit is checked on the grid (and scipy only integrates up to where it stops).
        fixed_stop = _fixed_grid_stop(ts, config.dt, maxiters) if config.fixed_step else None
        if config.fixed_step:
            maxiters = sys.maxsize
        steps, interpolants, retcode, accepted, attempts = [ts[0]], [], "Success", 0, 0
        state_finite, nan_reached = True, None
        start = _initial_nonfinite_stop(config, ts, fun(ts[0], x0.copy()))  # initdt's f0
        if start is not None:
            retcode, state_finite, _ = start
        while start is None and solver.status == "running" and (fixed_stop is None or solver.t < fixed_stop):
            before, calls, attempts_before = solver.nfev, fun.calls, attempts
            fun.first = None  # only this step()'s calls count (dense output evaluates the field too)
            solver.step()
            attempts += _attempts(solver, before)
            nan_stop = _nonfinite_stop(config, fun, calls, attempts_before, solver, _maxiters(config), ts)
            if nan_stop is not None:  # upstream's DtNaN (fixed steps: Unstable, ConvergenceFailure): drop this step
                retcode, state_finite, nan_reached = nan_stop
                break
            if attempts > maxiters:  # upstream stops before the attempt past the limit: drop this step
                retcode = "MaxIters"
                break
            if solver.status == "failed":  # check_error's dt_epsilon: Unstable, the state finite
                retcode = "Unstable"
                break
            if not np.all(np.isfinite(solver.y)):  # check_error's unstable_check
                retcode, state_finite = "Unstable", False
                break
            accepted += 1
            steps.append(solver.t)
            interpolants.append(solver.dense_output())
        reached = float(steps[-1]) if start is None else start[2]
        if nan_reached is not None:  # fixed steps: upstream's grid step (its start or end; the state extrapolated)
            reached = nan_reached
        if fixed_stop is not None and retcode == "Success":
            retcode, reached = "MaxIters", fixed_stop
        success = retcode == "Success"
        dense = OdeSolution(steps, interpolants) if interpolants else (lambda t: x0.copy())
        sorts = _sorts_saveat(config)
        if sorts:
            saved = np.sort(ts)  # concrete_solve.jl: _saveat = sort(saveat); sol(ts), extrapolating
        else:
            direction = np.sign(ts[-1] - ts[0])
            saved = ts if success else ts[direction * ts <= direction * reached]
            if not success and saved[-1] != reached:
                # concrete_solve.jl passes save_end = true as a Bool, so postamble!'s
                # solution_endpoint_match_cur_integrator! (OrdinaryDiffEqCore
                # src/integrators/integrator_utils.jl:540, `save_end_user isa Bool && save_end_user`)
                # also saves the state where the solver stopped: sol.t ends there, not at an output time.
                saved = np.append(saved, reached)
        ys = np.stack([dense(t) for t in saved], axis=-1) if len(saved) else np.zeros((x0.size, 0))
        ys = ys.reshape(shape + (len(saved),), order="F")
        njev = getattr(solver, "njev", 0)
        stats = Stats(nfe=int(solver.nfev), n_accepted=accepted, n_rejected=attempts - accepted, n_jacobian=int(njev))
        handle = _Handle(problem, np.array(theta, dtype=float), ts, saved, dense, shape, config)
        return ForwardOutput(
            ys=ys,
            handle=handle,
            success=success,
            retcode=retcode,
            t_final=float(saved[-1]) if len(saved) else float(ts[0]),
            stats=stats,
            t_reached=float(ts[-1]) if success else reached,
            state_finite=state_finite,
        )

    def forward_events(self, problem, u0, theta, ts, config, bridge):
        """julia/events.jl's forward solve with a VectorContinuousCallback, as SciMLBase/OrdinaryDiffEq run it.

        Upstream behaviour reproduced (SciMLBase 3.49 src/callbacks.jl; DiffEqBase 7.18
        lib/DiffEqBase/src/callbacks.jl): every component is checked against its sign at the step's
        start (:func:`_occurred`: a zero reached counts as a crossing, its root being that point), at
        the step's end and, when some component did not change there, at the points
        :func:`_check_points` gives (``interp_points - 2`` inside each accepted step, and its end) up
        to the first where any did; the roots of the
        components that changed are located (``LeftRootFind``: the state handed to ``affect!`` is the
        left limit) and ``affect!(integrator, simultaneous_events)`` is called once, whatever the
        direction (no ``affect_neg!``), with an Int8 vector marking every component whose root is the
        earliest with the direction of its crossing, ``-sign`` of its sign at the step's start (after a
        nudge) (:func:`_act_events`). The integration continues
        from the root (from the jumped state after ``set_u!``), proposing the dt of the step the event was
        found in (``apply_callback!``: ``set_proposed_dt!`` with ``dtrelax = 1``); a component whose value there is
        within ``abstol = 10 eps`` of zero takes its sign from a point nudged ``repeat_nudge = 1/100``
        of the next step ahead, so the same root is not found again. ``terminate!`` ends the solve:
        the saved states stop at the last output time reached. Nothing is saved at the events
        (``save_positions = (false, false)``). A failed step ends the solve with ``Unstable`` and more
        than ``maxiters`` step attempts with ``MaxIters``, as :meth:`forward` does (run_events passes
        the solve's options on), the time reached being where the solver stopped.

        With fixed steps (``config.fixed_step``) the states still come from DOP853, but the step
        limit is checked on upstream's step grid, as :meth:`forward` does: ``dt`` long, ending on
        every output time (tstop), and restarted at every event (:func:`_fixed_grid_count`), so the
        solve stops with ``MaxIters`` where upstream's would, after ``maxiters`` steps.
        """
        assert u0.ndim == 2, "the engine receives the Julia (D, B) layout"
        self.forward_calls.append(dict(problem=problem, ts=np.array(ts), config=config, events=True))
        shape = u0.shape
        ts = np.asarray(ts, dtype=float)
        _check_output_times(ts)
        fun = _NonFiniteWatch(lambda t, x: self._f(problem, theta, shape, config, x, t))
        condition = self._from_julia(bridge.condition)
        affect = self._from_julia(bridge.affect)
        jumped = self._from_julia(bridge.jumped)
        n_points = int(bridge.interp_points)
        abstol = 10 * np.finfo(float).eps
        t, x = float(ts[0]), np.asarray(u0, dtype=float).reshape(-1, order="F")
        saved: dict[float, np.ndarray] = {t: x.copy()}
        prev = np.sign(np.asarray(condition(x.copy(), t), dtype=float))
        nudge = np.zeros(prev.shape, dtype=bool)
        nfe, accepted, terminated, retcode, state_finite = 0, 0, False, "Success", True
        step = None  # the step size proposed after an event (apply_callback!: the event step's dt)
        # integrator.iter counts every attempt of the whole solve, across events (see forward)
        maxiters, attempts = _maxiters(config), 0
        fixed = bool(config.fixed_step)
        start = _initial_nonfinite_stop(config, ts, fun(t, x.copy()))  # init's initdt, as in forward
        if start is not None:
            retcode, state_finite, t = start
        while t < ts[-1] and not terminated and retcode == "Success":
            end, stop, stops = ts[-1], None, None
            if fixed:  # the segment's grid starts at t (y0, or the last event) and ends on every tstop
                stops = np.concatenate([[t], ts[ts > t]])
                stop = _fixed_grid_stop(stops, config.dt, maxiters - attempts)
                end = ts[-1] if stop is None else stop
            first = {} if step is None else {"first_step": min(step, end - t)}
            solver = DOP853(fun, t, x, end, rtol=config.rtol, atol=config.atol, **first)
            restart = False
            while solver.status == "running" and not restart:
                before, calls, attempts_before = solver.nfev, fun.calls, attempts
                fun.first = None  # only this step()'s calls count, as in forward
                solver.step()
                attempts += 0 if fixed else _attempts(solver, before)
                nan_stop = _nonfinite_stop(config, fun, calls, attempts_before, solver, maxiters, stops)
                if nan_stop is not None:  # DtNaN (fixed steps: Unstable, ConvergenceFailure), as forward
                    retcode, state_finite, nan_reached = nan_stop
                    t = t if nan_reached is None else nan_reached
                    break
                if attempts > maxiters:  # check_error's MaxIters, before the attempt past the limit
                    retcode = "MaxIters"
                    break
                if solver.status == "failed":  # check_error's dt_epsilon (see forward): stop at t
                    retcode = "Unstable"
                    break
                if not np.all(np.isfinite(solver.y)):  # check_error's unstable_check, at the step's end
                    retcode, state_finite, t = "Unstable", False, solver.t
                    break
                accepted += 1
                t0, t1 = solver.t_old, solver.t
                dense = solver.dense_output()
                if nudge.any():
                    probe = t0 + (t1 - t0) / 100
                    prev = np.where(nudge, np.sign(np.asarray(condition(dense(probe), probe), dtype=float)), prev)
                    nudge[:] = False
                points = _check_points(t0, t1, n_points)
                # check_event_occurrence: the step's end first; the interior points only when some
                # component did not change there, up to the first point where any did.
                top = t1
                changed, now = _occurred(condition, dense, prev, t1)
                if n_points != 0 and not changed.all():
                    for top in points:
                        changed, now = _occurred(condition, dense, prev, top)
                        if changed.any():
                            break
                if changed.any():
                    roots = {}
                    for i in np.flatnonzero(changed):
                        if now[i] == 0:  # find_callback_time: iszero(top_sign) -> cbi_t = top_t
                            roots[i] = top
                            continue
                        lo, hi = t0, top
                        for _ in range(200):
                            mid = 0.5 * (lo + hi)
                            if not lo < mid < hi:
                                break
                            if np.sign(condition(dense(mid), mid)[i]) == prev[i]:
                                lo = mid
                            else:
                                hi = mid
                        roots[i] = lo  # the left limit
                    t_root = min(roots.values())
                    x_root = dense(t_root)
                    # DiffEqBase 7's simultaneous_events: -sign(bottom_sign) (+1 up, -1 down) for
                    # every component whose root is the earliest, 0 elsewhere.
                    events = np.zeros(prev.shape, dtype=np.int8)
                    for i, root in roots.items():
                        if root == t_root:
                            events[i] = -int(prev[i])
                    for s in ts[(ts > t) & (ts <= t_root)]:
                        saved[float(s)] = dense(s)
                    code, x = _act_events(affect, jumped, events, t_root, x_root)
                    if fixed:
                        attempts += _fixed_grid_count(stops, config.dt, t_root)
                    t, terminated, restart, step = t_root, code == 3, True, t1 - t0
                    values = np.asarray(condition(x.copy(), t), dtype=float)
                    prev = np.where(np.abs(values) <= abstol, 0.0, np.sign(values))
                    nudge = np.abs(values) <= abstol
                    before = np.sign(condition(x_root.copy(), t_root))
                    for i in np.flatnonzero(events):
                        if not nudge[i] and prev[i] == before[i]:
                            nudge[i], prev[i] = True, 0.0  # left of the root: decided after the nudge
                else:
                    prev = now  # the next step's start: its sign there, a zero included
                if not restart:
                    for s in ts[(ts > t) & (ts <= t1)]:
                        saved[float(s)] = dense(s)
                    t, x = t1, solver.y.copy()
            nfe += solver.nfev
            if fixed and not restart and retcode == "Success":
                if stop is not None:  # upstream's grid ran out of steps here: check_error's MaxIters
                    retcode = "MaxIters"
                else:
                    attempts += _fixed_grid_count(stops, config.dt, float(ts[-1]))
        times = [s for s in ts if float(s) in saved]
        ys = np.stack([saved[float(s)] for s in times], axis=-1).reshape(shape + (len(times),), order="F")
        return ForwardOutput(
            ys=ys,
            handle=None,
            success=retcode == "Success",
            retcode="Terminated" if terminated else retcode,
            # sol.t[end]: the end point is saved only at tspan[2] or a saveat time (OrdinaryDiffEqCore
            # solution_endpoint_match_cur_integrator!), so after a stop it is the last output time passed
            t_final=float(times[-1]),
            stats=Stats(nfe=int(nfe), n_accepted=accepted),
            t_reached=float(t),  # events.jl's run_events: integrator.t
            state_finite=state_finite,
        )

    def backward(self, handle: _Handle, ybar):
        ybar = np.asarray(ybar, dtype=float)
        assert ybar.shape == handle.shape + (len(handle.ts),), "cotangent must be (D, B, T)"
        self.backward_calls.append(dict(ybar=ybar.copy()))
        _check_checkpoint_resolve(handle.config)
        n = int(np.prod(handle.shape))
        p = len(handle.theta)
        ts, cfg = handle.ts, handle.config
        T = len(ts)

        def rhs(t, z):
            a = z[:n]
            x = handle.dense(t)
            gu, gp = self._vjp(handle.problem, handle.theta, handle.shape, cfg, a, x, t)
            return np.concatenate([-gu, -gp])

        # ReverseLossCallback: the output times are met in the backward direction (from ts[end]
        # towards ts[1]); at the k-th one met, the cotangent of index T - k is added.
        direction = np.sign(ts[-1] - ts[0])
        visits = sorted(handle.saved_ts, key=lambda tau: -direction * tau)
        z = np.zeros(n + p)
        t_cur = ts[-1]
        # One backward solve across all the output times, with the forward's maxiters
        # (concrete_solve.jl passes the solve's keywords on to adjoint_sensitivities).
        maxiters, attempts = _maxiters(cfg), 0
        for k, tau in enumerate(visits):
            if tau != t_cur:
                if not np.all(np.isfinite(z)):  # a NaN cotangent: NaN error estimate, NaN dt
                    raise JuliaError(AdjointSolveFailed(["NaN dt detected."]), None)
                if cfg.fixed_step:  # upstream's backward steps: the forward's grid (see _backward_steps)
                    attempts += _backward_steps(t_cur, tau, cfg.dt)
                    if attempts > maxiters:
                        raise JuliaError(AdjointSolveFailed(["Interrupted. Larger maxiters is needed."]), None)
                solver = DOP853(rhs, t_cur, z, tau, rtol=cfg.rtol, atol=cfg.atol)
                while solver.status == "running":
                    before = solver.nfev
                    solver.step()
                    attempts += 0 if cfg.fixed_step else _attempts(solver, before)
                    if attempts > maxiters:
                        warning = "Interrupted. Larger maxiters is needed."  # DiffEqBase check_error
                    elif solver.status == "failed" or not np.all(np.isfinite(solver.y)):
                        warning = "Instability detected. Aborting"
                    else:
                        continue
                    # SciMLSensitivity returns the gradients of the failed solve (no retcode check);
                    # bridge.jl's backward sees the solver's warning and throws AdjointSolveFailed.
                    raise JuliaError(AdjointSolveFailed([warning]), None)
                z = solver.y.copy()
                t_cur = tau
            z[:n] += ybar[..., T - 1 - k].reshape(-1, order="F")
        return z[:n].reshape(handle.shape, order="F"), z[n:]

    def adjoint_failure(self, err: BaseException) -> str | None:
        """The engine interface's failed-backward check (JuliaEngine.adjoint_failure), on the stand-in's JuliaError."""
        if isinstance(err, JuliaError) and isinstance(err.exception, AdjointSolveFailed):
            return "\n".join(err.exception.messages)
        return None
