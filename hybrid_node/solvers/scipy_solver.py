"""``method="scipy_solver"``: solves with scipy's ODE solvers (the ``OdeSolver`` classes of solve_ivp).

The solver objects are stepped here as ``solve_ivp`` steps them, with its output times filled from each
step's dense output, so that the solve can stop after ``max_num_steps`` steps (``solve_ivp`` has no
limit: a blow-up kept scipy's LSODA stepping for hours).

scipy computes no gradients, so direct backpropagation through it is refused; the adjoint method
(``odeint_adjoint``) needs none and solves its backward system with scipy as well (the black-box
adjoint of Chen et al. 2018, who used scipy's LSODA this way)."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from .._errors import SolverError, Status, blowup_cause, field_cause
from ..controllers import PIDController, check_max_num_steps, sign_hint
from .base import ExternalSolver, unread_controller_settings

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
    """The error of a scipy solve that stopped early (its steps shrank below the spacing of the times).

    Its own message names only the symptom; where the field was non-finite at the time it stopped
    (its trial steps kept meeting it) or the state had grown by orders of magnitude, that is named
    as the cause (:mod:`hybrid_node.loop.diagnose`), as the torch loops name it.

    Args:
        term: the field (for the user's time).
        message: scipy's message; reached: the solver time of the last field evaluation.
        nonfinite: the solver time of the last non-finite field value (None: none).
        size: max|y| of the last accepted state; y0: the flat initial state.

    Returns:
        NONFINITE naming the field where it was non-finite there, else STEP_UNDERFLOW (with a
        blow-up named where the state grew so).
    """
    user_t = _user_time(term, reached)
    if nonfinite is not None and abs(nonfinite - reached) <= 1e-6 * max(1.0, abs(reached)):
        return SolverError(Status.NONFINITE, user_t, f"scipy: {message}", field_cause("NaN or inf", user_t))
    return SolverError(Status.STEP_UNDERFLOW, user_t, message, blowup_cause(user_t, size, _scale(y0)))


def _scale(y0: np.ndarray) -> float:
    """max(1, max|y0|): the size from which a state's growth counts as a blow-up."""
    return max(1.0, float(np.abs(y0).max())) if y0.size else 1.0


def _max_abs(y: np.ndarray) -> float:
    """max|y| of a flat state (0 for no elements)."""
    return float(np.abs(y).max()) if y.size else 0.0


def _march(stepper, t_eval: np.ndarray, max_num_steps: int) -> tuple[list[np.ndarray], str | None, str]:
    """Step a scipy ``OdeSolver`` to its end, evaluating its dense output at the output times.

    The output times of each step are those in (t_old, t] (the first step's include t0), each
    step's interpolant evaluated on the slice of ``t_eval`` at once, as ``solve_ivp`` does with
    ``t_eval`` on an increasing interval: the same calls give the same numbers.

    Args:
        stepper: a freshly built ``scipy.integrate.OdeSolver`` (RK45, LSODA, ...) on an increasing interval.
        t_eval: the increasing output times, from the stepper's start to its end.
        max_num_steps: the most accepted steps.

    Returns:
        The (n, k) blocks of states at the output times reached, in order; how the solve stopped
        (None: it reached the end, "failed": scipy's step failed, "max_steps", or "stalled": an accepted
        step of zero length); and scipy's message of a failed step ("" otherwise).

    Reference: E. Hairer, S. P. Norsett, G. Wanner, "Solving Ordinary Differential Equations I",
    2nd ed., Springer 1993, II.6 (dense output of Runge-Kutta methods).
    """
    blocks: list[np.ndarray] = []
    done = 0  # how many output times are filled
    for _ in range(max_num_steps):
        message = stepper.step()
        if stepper.status == "failed":
            return blocks, "failed", str(message)
        if stepper.t == stepper.t_old:
            # LSODA's step size can underflow to 0 near a singularity, after which it reports zero-length
            # steps as accepted forever (the other methods fail once a step falls below the spacing of t)
            return blocks, "stalled", ""
        # "right": an output time equal to the step's end belongs to this step
        upto = int(np.searchsorted(t_eval, stepper.t, side="right"))
        if upto > done:
            blocks.append(stepper.dense_output()(t_eval[done:upto]))
            done = upto
        if stepper.status == "finished":
            return blocks, None, ""
    return blocks, "max_steps", ""


def _user_time(term, s: float) -> float:
    """The user's time of the solver time ``s`` (negated for a solve backwards in time)."""
    return -float(s) if getattr(term, "reverse", False) else float(s)


@functools.cache
def lsoda_applies_min_step() -> bool:
    """Whether the installed scipy's LSODA keeps its steps at or above ``min_step``.

    scipy 1.17's C port of LSODA parses ``min_step`` (ODEPACK's HMIN) and never stores it where the
    step-size rules read it (scipy issue gh-25827), so it takes the same steps with or without it. The
    probe steps LSODA on y' = -y from a step of 1e-4, with and without ``min_step`` = 0.5: ODEPACK
    raises a changed step to at least HMIN (Hindmarsh, "ODEPACK, a systematized collection of ODE
    solvers", 1983; STODA), so the two step sequences differ exactly where the option is applied.
    It costs about a millisecond, once per process.

    Returns:
        False where the two runs take the same steps.
    """
    import scipy.integrate

    def times(**options) -> list[float]:
        stepper = scipy.integrate.LSODA(lambda t, y: -y, 0.0, np.ones(1), 100.0, first_step=1e-4, **options)
        out = []
        for _ in range(20):
            stepper.step()
            out.append(stepper.t)
            if stepper.status != "running":
                break
        return out

    return times() != times(min_step=0.5)


def _merged_first_step(own: float | None, given) -> float | None:
    """The first step of a solve from the ScipySolver's (``own``) and the controller's (``given``).

    Raises:
        ValueError: both are set and differ (neither is the stricter), naming both.
    """
    if given is None:
        return own
    # a one-element tensor or array is one step (PIDController checked it; per_sample is refused before)
    step = float(given.reshape(-1)[0]) if isinstance(given, (torch.Tensor, np.ndarray)) else float(given)
    if own is None or float(own) == step:
        return step
    raise ValueError(
        f"scipy_solver: first_step is set twice, {own!r} on the ScipySolver and {step!r} on the PIDController; "
        "give it on one of them."
    )


@dataclasses.dataclass(frozen=True)
class ScipySolver(ExternalSolver):
    """Wraps scipy's ODE solvers (those of solve_ivp); the field is evaluated by torch under no_grad.

    Args:
        solver: a solve_ivp method name (RK45, RK23, DOP853, Radau, BDF, LSODA).
        min_step: LSODA's smallest step (0: none), passed to scipy as torchdiffeq does; the other
            methods have none and refuse a positive one. A step that fails LSODA's error test at
            min_step fails the solve (a ``PIDController``'s min_step accepts it in the torch loops).
        max_step: the largest step (inf: none).
        first_step: the first step (None: scipy chooses).
        max_num_steps: the most accepted steps of a solve, the torch solvers' option and default
            (``PIDController.max_num_steps``); the solve fails with ``MAX_STEPS`` after them.

    Raises:
        ValueError: an unknown solver, a step bound that is not a number or out of range (min_step
            above max_step, a positive min_step with another method than LSODA), or a
            ``max_num_steps`` that is not a positive int.

    Reference: P. Virtanen et al., "SciPy 1.0", Nature Methods 17 (2020).
    """

    solver: str = "LSODA"
    min_step: float = 0.0
    max_step: float = math.inf
    first_step: float | None = None
    max_num_steps: int = PIDController.max_num_steps
    name = "scipy_solver"
    adaptive = True
    #: the PIDController settings it takes (:meth:`with_controller`); scipy's step-size rules are its own
    controller_reads = frozenset({"rtol", "atol", "first_step", "min_step", "max_step", "max_num_steps"})

    def __post_init__(self):
        if self.solver not in SCIPY_METHODS:
            raise ValueError(f"scipy_solver: unknown solver {self.solver!r}; choose one of {SCIPY_METHODS}.")
        if not (_number("min_step", self.min_step) >= 0 and _number("max_step", self.max_step) > 0):
            raise ValueError(
                f"scipy_solver: min_step must be >= 0 and max_step > 0, got {self.min_step!r} and {self.max_step!r}."
                + sign_hint(float(self.min_step), float(self.max_step))
            )
        if self.first_step is not None and not _number("first_step", self.first_step) > 0:
            raise ValueError(
                f"scipy_solver: first_step must be positive, got {self.first_step!r}."
                + sign_hint(float(self.first_step))
            )
        if float(self.min_step) > float(self.max_step):
            raise ValueError(
                f"scipy_solver: min_step ({self.min_step!r}) must not exceed max_step ({self.max_step!r})."
            )
        if float(self.min_step) > 0 and self.solver != "LSODA":
            # scipy only warned that the option "has no effect" and solved without it
            raise ValueError(
                f"scipy_solver: min_step={self.min_step!r} applies to LSODA only: scipy's {self.solver} has no "
                "smallest step and would ignore it. Use solver='LSODA', or leave min_step at 0 (on the "
                "ScipySolver and, in hn.solve, on the PIDController)."
            )
        if float(self.min_step) > 0 and not lsoda_applies_min_step():
            import scipy

            raise ValueError(
                f"scipy_solver: min_step={self.min_step!r} would be ignored: the installed scipy "
                f"{scipy.__version__}'s LSODA reads min_step and never applies it (its steps are the same with or "
                "without it; scipy issue gh-25827, scipy 1.16's LSODA applied it). Leave min_step at 0 (on the "
                "ScipySolver and, in hn.solve, on the PIDController), or install a scipy whose LSODA applies it."
            )
        check_max_num_steps(self.max_num_steps, "scipy_solver: ")

    def with_controller(self, controller: PIDController) -> ScipySolver:
        """This solver with the step settings of ``controller`` that scipy takes.

        A setting given on one of the two alone is the one that applies (the defaults of both mean "not
        set"). Given on both, the solve keeps within both bounds: the smaller ``max_step`` and
        ``max_num_steps``, the larger ``min_step``; two different ``first_step`` values have no such
        order and are refused. ``rtol`` and ``atol`` reach scipy with the solve (not here). The
        proposal rules (the PID formula, ``shrink_after_accept``, ``grow_after_reject``) are not ones
        scipy has: its solvers propose their own steps (Hairer, Norsett, Wanner, Solving ODEs I, 2nd
        ed., II.4), so they are refused away from their defaults.

        Args:
            controller: the solve's ``PIDController``.

        Returns:
            ``self``, or a copy with the controller's settings merged in.

        Raises:
            ValueError: a controller setting scipy cannot honour (the PID formula's ``safety``,
                ``ifactor``, ``dfactor``, ``pcoeff``/``icoeff``/``dcoeff``, ``norm``, ``per_sample``,
                ``device_loop``, ``sync_every``, ``shrink_after_accept``, ``grow_after_reject``) away from
                its default; two different ``first_step`` values; merged bounds that do not fit (``min_step`` above
                ``max_step``, ``min_step`` with a method other than LSODA).
        """
        inert = unread_controller_settings(self, controller)
        if inert:
            # accepted, they changed nothing: scipy's step-size rules are its own
            raise ValueError(
                f"scipy_solver: the PIDController settings {inert} have no effect, since scipy chooses its own "
                f"step sizes ({self.solver}'s own rules); leave them at their defaults (scipy takes rtol, atol, "
                "first_step, min_step, max_step and max_num_steps), or use a torch method such as hn.Dopri5() "
                "for the PID controller."
            )
        return dataclasses.replace(
            self,
            first_step=_merged_first_step(self.first_step, controller.first_step),
            min_step=max(float(self.min_step), float(controller.min_step)),
            max_step=min(float(self.max_step), float(controller.max_step)),
            max_num_steps=min(self.max_num_steps, controller.max_num_steps),
        )

    def _step_options(self) -> dict:
        """The step bounds that differ from scipy's defaults (the others are not passed: scipy
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

        A complex state is solved in complex128 (scipy's complex domain: RK45, RK23, DOP853, BDF).

        Raises:
            SolverError: scipy stopped before the last time (its ``t`` is where, in the user's time):
                ``MAX_STEPS`` after ``max_num_steps`` accepted steps, else STEP_UNDERFLOW or NONFINITE.
            TypeError: a complex state with Radau or LSODA (:meth:`check_complex`).
        """
        shape, dtype, device = y0.shape, y0.dtype, y0.device
        if len(ts) > 1:  # one time is y0 itself, whatever the method
            self.check_complex(dtype)
        # scipy computes in double precision; a complex state stays complex (.double() dropped its imaginary part)
        wide = torch.complex128 if dtype.is_complex else torch.float64
        # the solver time of the last field evaluation: where a failed step got to (the last accepted
        # time can be far behind it, e.g. the initial time)
        reached = [ts[0]]
        # the solver time of the last non-finite field value (None: none yet). scipy has no test of its
        # own: a NaN at y0 made RK45, RK23 and DOP853 loop forever (their first step became NaN, which no
        # step-size bound compares below), BDF and Radau raised numpy's "array must not contain infs or
        # NaNs", and LSODA returned NaN states as a success
        nonfinite: list[float | None] = [None]
        calls = [0]
        y0n = y0.detach().reshape(-1).cpu().to(wide).numpy()

        def rhs(t, y):
            reached[0] = float(t)
            with torch.no_grad():
                yt = torch.as_tensor(y, dtype=dtype, device=device).reshape(shape)
                out = term(float(t), yt).reshape(-1).cpu().to(wide).numpy()
            calls[0] += 1
            if not np.isfinite(out).all():
                if calls[0] == 1:  # every scipy method evaluates the field at (t0, y0) first
                    raise SolverError(Status.INITIAL_FAILURE, _user_time(term, t), _NONFINITE_AT_Y0)
                nonfinite[0] = float(t)  # a rejected trial step may recover: scipy shrinks it
            return out

        if len(ts) == 1:
            out = y0n[None]
        else:
            out = self._solve(term, rhs, y0n, ts, self._scipy_tolerances(rtol, atol, y0), reached, nonfinite)
        ys = torch.as_tensor(out, dtype=dtype, device=device).reshape(len(ts), *shape)
        needs = [x for x in (y0,) + tuple(grad_inputs) if isinstance(x, torch.Tensor) and x.requires_grad]
        if needs and torch.is_grad_enabled():
            ys = _NoGradient.apply(ys, *needs)
        return ys

    def _check_first_step(self, term, s0: float, s1: float) -> None:
        """Refuse a ``first_step`` longer than the interval [s0, s1] (solver times) that scipy solves.

        Raises:
            ValueError: naming the step and the interval in the user's time, where scipy said only
                "`first_step` exceeds bounds." (the adjoint's backward solves run between consecutive
                output times, so a first step that fits the forward solve can fail there).
        """
        if self.first_step is None or float(self.first_step) <= abs(s1 - s0):
            return
        ends = sorted((_user_time(term, s0), _user_time(term, s1)))
        raise ValueError(
            f"scipy_solver: first_step={float(self.first_step)!r} is longer than the interval [{ends[0]!r}, "
            f"{ends[1]!r}] scipy solves (it needs first_step <= |t1 - t0|); with odeint_adjoint each backward "
            "solve runs between consecutive output times. Give a shorter first_step, or leave it None."
        )

    def _scipy_tolerances(self, rtol, atol, y0: torch.Tensor) -> dict:
        """``rtol`` and ``atol`` as this method takes them (numbers, or one value per flat element)."""
        rt, at = _flat_tolerance(rtol, y0), _flat_tolerance(atol, y0)
        if self.solver in SCIPY_SCALAR_RTOL and not isinstance(rt, float):
            # BDF and Radau take a scalar rtol only (an array raised "The truth value of an array ... is
            # ambiguous" from their Newton tolerance, a 0-d tensor's too): the smallest value, which
            # meets every element's tolerance (as the Newton test of the torch implicit methods)
            rt = float(rt.min()) if rt.size else 1e-3  # no elements: any valid value (scipy's default)
        return {"rtol": rt, "atol": at}

    def _solve(self, term, rhs, y0n: np.ndarray, ts, tolerances: dict, reached: list, nonfinite: list) -> np.ndarray:
        """Build scipy's solver as solve_ivp builds it and step it to ``ts[-1]`` (:func:`_march`).

        Args:
            term: the field (for the user's time); rhs: its numpy wrapper, which records ``reached``
                (the time of its last call) and ``nonfinite`` (of its last non-finite value).
            y0n: the flat initial state; ts: the increasing output times (two or more).
            tolerances: ``rtol`` and ``atol`` (:meth:`_scipy_tolerances`).

        Returns:
            The states at ``ts``, shape (len(ts), y0n.size).

        Raises:
            SolverError: MAX_STEPS, STEP_UNDERFLOW or NONFINITE (:func:`_failure`), each naming a blow-up
                where the last accepted state grew by orders of magnitude.
        """
        import scipy.integrate  # scipy is needed by this method only

        t_eval = np.asarray(ts, dtype=np.float64)
        self._check_first_step(term, float(ts[0]), float(ts[-1]))
        try:
            stepper = getattr(scipy.integrate, self.solver)(
                rhs, float(ts[0]), y0n, float(ts[-1]), vectorized=False, **tolerances, **self._step_options()
            )
            blocks, stop, message = _march(stepper, t_eval, self.max_num_steps)
        except (ValueError, np.linalg.LinAlgError) as e:
            if nonfinite[0] is None:
                raise
            # BDF's and Radau's Newton matrices refuse the non-finite values the field returned
            raise SolverError(
                Status.NONFINITE, _user_time(term, nonfinite[0]), f"func returned NaN or inf there; scipy: {e}"
            ) from e
        if stop == "max_steps":
            user_t = _user_time(term, stepper.t)
            cause = blowup_cause(user_t, _max_abs(stepper.y), _scale(y0n))
            raise SolverError(Status.MAX_STEPS, user_t, f"max_num_steps={self.max_num_steps}", cause)
        if stop == "stalled":
            user_t = _user_time(term, stepper.t)  # the user's time: scipy steps in s = -t for a decreasing t
            message = f"scipy's {self.solver} step size underflowed to 0 (its steps stopped at t={user_t:.10g})"
        if stop is not None:
            raise _failure(term, message, reached[0], nonfinite[0], _max_abs(stepper.y), y0n)
        out = np.hstack(blocks).T
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():  # LSODA reports success with NaN states
            raise SolverError(
                Status.NONFINITE, _user_time(term, ts[int(bad.argmax())]), "first non-finite output of scipy"
            )
        return out
