"""Status codes and exception types shared by every backend."""

from __future__ import annotations

import enum
import re


class Status(enum.Enum):
    """Outcome of a solve; each member carries the message shown to the user."""

    SUCCESS = "The solve reached the final time."
    EVENT = "A terminal event stopped the solve."
    MAX_STEPS = (
        "The maximum number of steps was reached. Try increasing `max_num_steps` in options (it counts the "
        "steps of the whole solve, not of each output interval as torchdiffeq's does)."
    )
    STEP_UNDERFLOW = (
        "The step size fell below the minimum. The problem may be stiff (try an implicit method such as "
        "'rodas4' or 'kvaerno5') or the tolerances too tight for the dtype (try float64 or larger rtol/atol), "
        "or the field may jump or have a kink here (pass that time in jump_t)."
    )
    NONFINITE = (
        "The state became NaN or infinite. Either the vector field returned NaN or inf (a log, sqrt or division out of "
        "its domain, NaN parameters) or the solution overflowed (a blow-up, or steps too large for a stiff "
        "problem). Check the field near this time; against overflow lower the tolerances or the first step, or "
        "use a stiff solver."
    )
    NEWTON_FAILED = (
        "The Newton iteration of the implicit solver did not converge (adaptive steps: even at the minimum "
        "step size; fixed steps: at the given step)."
    )
    INITIAL_FAILURE = (
        "The solver could not start from the initial state (for example a NaN or infinite y0, or a vector "
        "field that is not finite there)."
    )
    TIME_LIMIT = "The solver's wall-clock time limit was reached before the final time."
    STALLED = "The solver stalled: it could not make further progress towards the final time."
    FAILED = "The solver stopped before the final time (see the solver's return code)."
    NO_EVENT = (
        "The event function never changed sign, and the solve could not go on. Check event_fn (the solve stops "
        "where any of its elements changes sign) and the initial state."
    )
    TOO_MANY_EVENTS = (
        "An event crossed more often than its `max_events` allows: an accumulation of events (Zeno behaviour, "
        "e.g. a bouncing ball coming to rest) or a jump that leaves the state on the event surface. End the "
        "solve before the accumulation point, or raise `max_events` of the hn.Event."
    )

    @property
    def message(self) -> str:
        return self.value

    @property
    def symptom(self) -> str:
        """The message's first clause (what happened), without the advice on what usually causes it."""
        return re.split(r"\.\s+(?=[A-Z])", self.value)[0].rstrip(".")  # "e.g. a" does not end a sentence


#: growth of max|y| over max(1, max|y0|) from which a failed solve is put down to a blow-up
BLOWUP_GROWTH = 1e6


def field_cause(what: str, user_t: float) -> str:
    """The cause of a failure where the field returned ``what`` ("NaN", "inf") at ``user_t`` on a finite state."""
    return (
        f"The vector field returned {what} at t={user_t:.10g} on a finite state: the field itself is not finite "
        "there, so no step size, tolerance or solver can help. Look for a log, sqrt, power or division whose "
        "argument leaves its domain near this time, or NaN/inf parameters; keep the field finite (e.g. clamp the "
        "argument into its domain) or end the solve before this time."
    )


def blowup_cause(user_t: float, size: float, scale: float) -> str:
    """The cause of a failure where the state reached max|y| = ``size`` from ``scale`` (max(1, max|y0|)), or "".

    Returns:
        The blow-up named as the cause where ``size`` exceeds ``BLOWUP_GROWTH * scale``, else "".
    """
    if not size > BLOWUP_GROWTH * scale:
        return ""
    return (
        f"The solution grows without bound near t={user_t:.6g} (max|y| = {size:.3g}, from {scale:.3g} at the "
        "start): a finite-time blow-up, which no solver integrates past. End the solve before this time, or "
        "change the model (e.g. bound the field's growth)."
    )


class HybridNodeError(Exception):
    """Base class of every error raised by hybrid_node."""


class BackendError(HybridNodeError, ValueError):
    """A backend cannot do what was asked; the message names what it can do instead."""


class JuliaNotAvailableError(BackendError, ImportError):
    """The Julia backend was asked for but no usable Julia installation was found."""


class SolverError(HybridNodeError, RuntimeError):
    """A solve failed before the final time.

    Args:
        status: the :class:`Status` of the failure.
        t: the time the solver had reached (the user's time).
        detail: where or how it failed, appended in parentheses.
        cause: the known cause and its fix, shown instead of the status's generic advice (which
            names the usual causes of that status, and would mislead where the cause is known).

    Attributes:
        status: the :class:`Status` of the failure.
        t: the time the solver had reached.
        detail: as passed.
        cause: as passed ("" when the status's message is shown).
    """

    def __init__(self, status: Status, t: float, detail: str = "", cause: str = ""):
        self.status = status
        self.t = t
        self.detail = detail
        self.cause = cause
        msg = f"Solve failed at t={t:.6g}: " + (f"{status.symptom}. {cause}" if cause else status.message)
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)

    def __reduce__(self) -> tuple:
        # picklable (DataLoader workers, multiprocessing), with the message as it is now: a caller may
        # have rewritten it (a CNF names its flow time)
        return _restore_solver_error, (type(self), self.status, self.t, self.detail, self.cause, self.args)


def _restore_solver_error(cls: type, status: Status, t: float, detail: str, cause: str, args: tuple) -> SolverError:
    """A pickled :class:`SolverError` (or subclass) rebuilt with its attributes and its message."""
    err = cls(status, t, detail, cause)
    err.args = args
    return err


class StiffGradientWarning(RuntimeWarning):
    """A solve differentiated by direct backpropagation through an explicit adaptive method was stiff there.

    Its steps sat at the method's stability limit, where the gradient of the discrete solve (the steps'
    sizes held fixed) can be far from the solution's; the message names the time range and the fixes
    (a stiff method or an adjoint). Its text is the same for every solve through one method, so Python's
    default filter shows it once per calling line, not once per training step; each solve's numbers are on
    the instance (``caught.message.t_start`` under :func:`warnings.catch_warnings` with ``record=True``).
    Filter it with ``warnings.filterwarnings("ignore", category=hn.StiffGradientWarning)`` once the
    gradient has been checked.

    Args:
        message: the text.
        method: the explicit method's name.
        t_start, t_end: the user times where the stiff stretch began and where its last stiff step ended.
        h_rho: the largest step size times estimated spectral radius seen in it.
        limit: the ``h_rho`` above which a step counts as stiff for that method.
    """

    def __init__(
        self,
        message: str = "",
        *,
        method: str = "",
        t_start: float = float("nan"),
        t_end: float = float("nan"),
        h_rho: float = float("nan"),
        limit: float = float("nan"),
    ):
        super().__init__(message)
        self.method = method
        self.t_start = t_start
        self.t_end = t_end
        self.h_rho = h_rho
        self.limit = limit


class CheckpointError(HybridNodeError, ValueError):
    """A checkpoint or run file cannot be read: truncated, damaged or not written by hybrid_node.

    Attributes:
        path: the file.
    """

    def __init__(self, path: object, message: str):
        self.path = path
        super().__init__(message)

    def __reduce__(self) -> tuple:
        return type(self), (self.path, str(self))  # picklable (e.g. across DataLoader workers)


class ResumeError(HybridNodeError, ValueError):
    """``--resume`` cannot continue: nothing to resume, or the run was started with other settings."""
