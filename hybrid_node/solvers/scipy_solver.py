"""``method="scipy_solver"``: solves by scipy.integrate.solve_ivp.

scipy computes no gradients, so direct backpropagation through it is refused; the adjoint method
(``odeint_adjoint``) needs none and solves its backward system with scipy as well (the black-box
adjoint of Chen et al. 2018, who used scipy's LSODA this way)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .._errors import SolverError, Status, blowup_cause, field_cause
from .base import ExternalSolver

SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
#: the solve_ivp methods that integrate in the complex domain (Radau and LSODA refuse a complex y0)
SCIPY_COMPLEX_METHODS = ("RK45", "RK23", "DOP853", "BDF")
#: the solve_ivp methods whose rtol must be one number (they derive their Newton tolerance from it)
SCIPY_SCALAR_RTOL = ("BDF", "Radau")


class _NoGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys, *inputs):
        return ys.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "method='scipy_solver' is forward-only: scipy computes no gradients. Use a torch solver such as "
            "'dopri5' (direct or adjoint) to differentiate, or odeint_adjoint with method='scipy_solver', "
            "which solves the adjoint system with scipy as well."
        )


def _number(name: str, value) -> float:
    """``value`` as a float.

    Raises:
        ValueError: ``value`` does not convert to a float (None, 'a', ...), naming the option.
    """
    try:
        return float(value)
    except (TypeError, ValueError):
        # float() alone said "float() argument must be ... not 'NoneType'", without the option's name
        raise ValueError(f"scipy_solver: {name} must be a number, got {value!r}.") from None


def _flat_tolerance(tol, y0: torch.Tensor) -> float | np.ndarray:
    """A tolerance as solve_ivp takes it: a float, or one value per element of the flattened state.

    Args:
        tol: a number, or a tensor that broadcasts to ``y0`` (the solve's per-component tolerance).
        y0: the state.

    Returns:
        ``tol`` as a float, or as a float64 array of ``y0.numel()`` values.
    """
    if isinstance(tol, (int, float)):
        return float(tol)
    # broadcast first: solve_ivp wants a scalar or exactly one value per element, and refused ("`atol` has
    # wrong shape") the 0-d tensor and the per-column tolerance of shape (D,) on a (B, D) state that
    # every torch solver takes
    t = torch.as_tensor(tol).detach()
    # real: a complex state's tolerance tensor comes in its dtype, and scipy's error test is on magnitudes
    t = (t.real if t.is_complex() else t).to("cpu", torch.float64)
    return t.expand(y0.shape).reshape(-1).numpy()


_NONFINITE_AT_Y0 = (
    "func returned NaN or inf at the initial state, where scipy chooses its first step from it; check the "
    "field at (t[0], y0)"
)


def _failure(term, message: str, reached: float, nonfinite: float | None, size: float, y0: np.ndarray) -> SolverError:
    """The error of a solve_ivp run that stopped early (its steps shrank below the spacing of the times).

    Its own message names only the symptom; where the field was non-finite at the time it stopped
    (its trial steps kept meeting it) or the state had grown by orders of magnitude, that is named
    as the cause (:mod:`hybrid_node.loop.diagnose`), as the torch loops name it.

    Args:
        term: the field (for the user's time).
        message: solve_ivp's message; reached: the solver time of the last field evaluation.
        nonfinite: the solver time of the last non-finite field value (None: none).
        size: max|y| at the last field evaluation; y0: the flat initial state.

    Returns:
        NONFINITE naming the field where it was non-finite there, else STEP_UNDERFLOW (with a
        blow-up named where the state grew so).
    """
    user_t = _user_time(term, reached)
    if nonfinite is not None and abs(nonfinite - reached) <= 1e-6 * max(1.0, abs(reached)):
        return SolverError(Status.NONFINITE, user_t, f"scipy: {message}", field_cause("NaN or inf", user_t))
    scale = max(1.0, float(np.abs(y0).max())) if y0.size else 1.0
    return SolverError(Status.STEP_UNDERFLOW, user_t, message, blowup_cause(user_t, size, scale))


def _user_time(term, s: float) -> float:
    """The user's time of the solver time ``s`` (negated for a solve backwards in time)."""
    return -float(s) if getattr(term, "reverse", False) else float(s)


@dataclasses.dataclass(frozen=True)
class ScipySolver(ExternalSolver):
    """Wraps scipy.integrate.solve_ivp; the field is evaluated by torch under no_grad.

    Args:
        solver: a solve_ivp method name (RK45, RK23, DOP853, Radau, BDF, LSODA).
        min_step: LSODA's smallest step (0: none), passed to solve_ivp as torchdiffeq does.
        max_step: the largest step (inf: none).
        first_step: the first step (None: scipy chooses).

    Raises:
        ValueError: an unknown solver, or a step bound that is not a number or out of range.

    Reference: P. Virtanen et al., "SciPy 1.0", Nature Methods 17 (2020).
    """

    solver: str = "LSODA"
    min_step: float = 0.0
    max_step: float = math.inf
    first_step: float | None = None
    name = "scipy_solver"
    adaptive = True

    def __post_init__(self):
        if self.solver not in SCIPY_METHODS:
            raise ValueError(f"scipy_solver: unknown solver {self.solver!r}; choose one of {SCIPY_METHODS}.")
        if not (_number("min_step", self.min_step) >= 0 and _number("max_step", self.max_step) > 0):
            raise ValueError(
                f"scipy_solver: min_step must be >= 0 and max_step > 0, got {self.min_step!r} and {self.max_step!r}."
            )
        if self.first_step is not None and not _number("first_step", self.first_step) > 0:
            raise ValueError(f"scipy_solver: first_step must be positive, got {self.first_step!r}.")

    def _step_options(self) -> dict:
        """The step bounds that differ from solve_ivp's defaults (the others are not passed: scipy
        warns about options a method ignores, e.g. min_step for RK45)."""
        out: dict = {}
        if float(self.min_step) > 0:
            out["min_step"] = float(self.min_step)
        if math.isfinite(float(self.max_step)):
            out["max_step"] = float(self.max_step)
        if self.first_step is not None:
            out["first_step"] = float(self.first_step)
        return out

    def check_complex(self, dtype: torch.dtype) -> None:
        """Refuse a complex state for the solve_ivp methods that do not integrate one.

        Args:
            dtype: the state's dtype.

        Raises:
            TypeError: a complex ``dtype`` with Radau or LSODA (the default), naming the methods that
                take it and the real system as the workaround.
        """
        if dtype.is_complex and self.solver not in SCIPY_COMPLEX_METHODS:
            raise TypeError(
                f"scipy_solver with solver={self.solver!r} does not integrate complex states ({dtype}): scipy's "
                f"Radau and LSODA work on real numbers only. Use options={{'solver': ...}} with one of "
                f"{', '.join(SCIPY_COMPLEX_METHODS)}, or solve the real system: torch.view_as_real(y0) as the "
                "state and a field that maps it with torch.view_as_complex / torch.view_as_real."
            )

    def integrate(self, term, y0: torch.Tensor, ts, rtol, atol, grad_inputs=()):
        """Solve on the increasing host times ``ts``; returns the stacked states (T, *y0.shape).

        A complex state is solved in complex128 (solve_ivp's complex domain: RK45, RK23, DOP853, BDF).

        Raises:
            SolverError: scipy stopped before the last time; its ``t`` is where, in the user's time.
            TypeError: a complex state with Radau or LSODA (:meth:`check_complex`).
        """
        shape, dtype, device = y0.shape, y0.dtype, y0.device
        if len(ts) > 1:  # one time is y0 itself, whatever the method
            self.check_complex(dtype)
        # scipy computes in double precision; a complex state stays complex (.double() dropped its imaginary part)
        wide = torch.complex128 if dtype.is_complex else torch.float64
        # the solver time of the last field evaluation: where a failed solve got to (with t_eval, scipy's
        # sol.t holds only the output times reached, so its last entry can be the initial time)
        reached = [ts[0]]
        # the solver time of the last non-finite field value (None: none yet). solve_ivp has no test of its
        # own: a NaN at y0 made RK45, RK23 and DOP853 loop forever (their first step became NaN, which no
        # step-size bound compares below), BDF and Radau raised numpy's "array must not contain infs or
        # NaNs", and LSODA returned NaN states as a success
        nonfinite: list[float | None] = [None]
        calls = [0]
        # the state of the last field evaluation, by reference: its max|y| names a blow-up, and is taken
        # only when the solve fails (every call's max|y| cost about 5% of a small field's call, as much as
        # the call itself for a cheap field on a large state). solve_ivp's RK methods hand every call a
        # fresh array; LSODA, BDF and Radau may hand a buffer they overwrite later, with a later state of
        # the same solve (the reference keeps the buffer alive)
        y0n = y0.detach().reshape(-1).cpu().to(wide).numpy()
        last = [y0n]

        def rhs(t, y):
            reached[0] = float(t)
            last[0] = y
            with torch.no_grad():
                yt = torch.as_tensor(y, dtype=dtype, device=device).reshape(shape)
                out = term(float(t), yt).reshape(-1).cpu().to(wide).numpy()
            calls[0] += 1
            if not np.isfinite(out).all():
                if calls[0] == 1:  # every solve_ivp method evaluates the field at (t0, y0) first
                    raise SolverError(Status.INITIAL_FAILURE, _user_time(term, t), _NONFINITE_AT_Y0)
                nonfinite[0] = float(t)  # a rejected trial step may recover: scipy shrinks it
            return out

        rt, at = _flat_tolerance(rtol, y0), _flat_tolerance(atol, y0)
        if self.solver in SCIPY_SCALAR_RTOL and not isinstance(rt, float):
            # BDF and Radau take a scalar rtol only (an array raised "The truth value of an array ... is
            # ambiguous" from their Newton tolerance, a 0-d tensor's too): the smallest value, which
            # meets every element's tolerance (as the Newton test of the torch implicit methods)
            rt = float(rt.min()) if rt.size else 1e-3  # no elements: any valid value (solve_ivp's default)
        if len(ts) == 1:
            out = y0n[None]
        else:
            try:
                sol = __import__("scipy.integrate", fromlist=["solve_ivp"]).solve_ivp(
                    rhs, (ts[0], ts[-1]), y0n, method=self.solver, t_eval=ts, rtol=rt, atol=at, **self._step_options()
                )
            except (ValueError, np.linalg.LinAlgError) as e:
                if nonfinite[0] is None:
                    raise
                # BDF's and Radau's Newton matrices refuse the non-finite values the field returned
                raise SolverError(
                    Status.NONFINITE, _user_time(term, nonfinite[0]), f"func returned NaN or inf there; scipy: {e}"
                ) from e
            if sol.status != 0:
                size = float(np.abs(last[0]).max()) if last[0].size else 0.0
                raise _failure(term, sol.message, reached[0], nonfinite[0], size, y0n)
            out = sol.y.T
            bad = ~np.isfinite(out).all(axis=1)
            if bad.any():  # LSODA reports success with NaN states
                raise SolverError(
                    Status.NONFINITE, _user_time(term, ts[int(bad.argmax())]), "first non-finite output of scipy"
                )
        ys = torch.as_tensor(out, dtype=dtype, device=device).reshape(len(ts), *shape)
        needs = [x for x in (y0,) + tuple(grad_inputs) if isinstance(x, torch.Tensor) and x.requires_grad]
        if needs and torch.is_grad_enabled():
            ys = _NoGradient.apply(ys, *needs)
        return ys
