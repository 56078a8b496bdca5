"""Why an adaptive solve failed: the field itself, or the solution, named from the state where it stopped.

The step-size controller reports a failure by its symptom: the steps shrank to the time's resolution
with a non-finite trial state (NONFINITE) or an error that would not come down (STEP_UNDERFLOW).
The symptom's generic advice (tolerances, stiffness) is wrong for the two most frequent causes,
which one look at the state where the solve stopped tells apart:

* the field returns NaN or inf at a finite state just past ``t`` (a log or sqrt out of its
  domain, a division by zero, a NaN parameter): no step size can help, the field must;
* the state has grown by many orders of magnitude from ``y0``: a finite-time blow-up (as
  ``y' = y^2`` at ``t = 1/y0``), which no solver integrates past.

Hairer, Norsett & Wanner, *Solving Ordinary Differential Equations I* (2nd ed., 1993), Sec. II.4
(step-size control) and Sec. I.7 (finite-time blow-up of ``y' = y^2``).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable

import torch

from .._errors import Status, blowup_cause, field_cause

_EPS = float(torch.finfo(torch.float64).eps)  # the solver's times are float64 host numbers
_COUNTERS = ("nfe", "n_jacobian")  # the wrapped field's evaluation counters, reported as the solve's work


def _never_raises(fn: Callable[..., str]) -> Callable[..., str]:
    """``fn``, returning "" where it raises: a diagnosis must never replace the failure it explains
    (a state under a ``torch.func`` transform cannot be read on the host, a field may raise)."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs) -> str:
        try:
            return fn(*args, **kwargs)
        except Exception:
            return ""

    return guarded


@contextlib.contextmanager
def _uncounted(term):
    """Field calls inside the block leave ``term``'s evaluation counters as they were: a diagnosis
    is not part of the solve's reported work.

    Args:
        term: the wrapped field; the counters it lacks are left alone.
    """
    counted = [getattr(term, k, None) for k in _COUNTERS]
    try:
        yield
    finally:
        for name, value in zip(_COUNTERS, counted):
            if value is not None:
                setattr(term, name, value)


def _blowup(user_t: float, y: torch.Tensor, y0: torch.Tensor) -> str:
    """:func:`blowup_cause` for the state ``y`` reached from ``y0`` at the user's time ``user_t``."""
    size = float(y.detach().abs().max()) if y.numel() else 0.0
    scale = max(1.0, float(y0.detach().abs().max())) if y0.numel() else 1.0
    return blowup_cause(user_t, size, scale)


@_never_raises
def failure_cause(status: Status, term, t: float, y: torch.Tensor, y0: torch.Tensor) -> str:
    """The cause and fix of a NONFINITE or STEP_UNDERFLOW failure at solver time ``t``, or "".

    Calls the field once at the right limit of ``t`` (not counted in the solve's evaluations),
    without a graph; a field that raises there gives no diagnosis.

    Args:
        status: the failure (other statuses give "").
        term: the wrapped field ``term(t, y, perturb)`` the loop integrated (solver time).
        t: the solver time where the solve stopped; y: the state there (the last accepted one).
        y0: the initial state, for the growth of the state.

    Returns:
        A sentence naming the cause and a fix, shown in place of the status's generic advice; "" when
        neither cause is found.
    """
    if status not in (Status.NONFINITE, Status.STEP_UNDERFLOW) or not bool(torch.isfinite(y).all()):
        return ""
    sign = -1.0 if getattr(term, "reverse", False) else 1.0
    user_t = sign * t
    if status is Status.NONFINITE:
        what, t_bad = _nonfinite_field(term, t, y)
        if what and _is_backward(term):
            return (
                f"The backward (adjoint) solve's field returned {what} at t={sign * t_bad:.10g} on a finite state: "
                "the field's vector-Jacobian products are not finite there (e.g. sqrt, log or a power at the edge "
                "of its domain, whose derivative is infinite, or a custom backward returning NaN), so no step size, "
                "tolerance or solver can help. Keep the field differentiable along the solution (e.g. clamp the "
                "argument away from the edge of its domain)."
            )
        if what:
            return field_cause(what, sign * t_bad)
    return _blowup(user_t, y, y0)


def _is_backward(term) -> bool:
    """Whether ``term`` is an adjoint's augmented field (its values are vector-Jacobian products)."""
    from ..sensitivity._backward import AugmentedTerm  # the sensitivity package imports the loops

    return isinstance(term, AugmentedTerm)


def _nonfinite_field(term, t: float, y: torch.Tensor) -> tuple[str, float]:
    """("NaN" or "inf", the solver time) where the field is not finite at ``y`` just past ``t``, else ("", t).

    The last rejected steps spanned a few ulps of ``t`` at most (the steps shrank to the time's
    resolution), so the field is looked at on ``t``'s right limit and 2, 4, ..., 64 ulps past it,
    and at the step of a forward difference for df/dt (sqrt(eps) * max(1, |t|), as the Rosenbrock
    methods take it where autograd cannot), which sees the field past the step.
    """
    scale = max(1.0, abs(t))
    offsets = [0.0] + [2**k * _EPS * scale for k in range(1, 7)] + [math.sqrt(_EPS) * scale]
    try:
        with _uncounted(term), torch.no_grad():
            for dt in offsets:
                what = _nonfinite(term(t, y.detach(), 1) if dt == 0.0 else term(t + dt, y.detach()))
                if what:
                    return what, t + dt
    except Exception:  # the field raising here is not the failure being explained
        return "", t
    return "", t


def _nonfinite(f) -> str:
    """ "NaN" or "inf" where a field's value (a tensor or a tuple of them) holds one, else ""."""
    parts = f if isinstance(f, (tuple, list)) else (f,)
    if not all(isinstance(p, torch.Tensor) for p in parts):
        return ""
    if any(bool(torch.isnan(p).any()) for p in parts):
        return "NaN"
    if any(bool(torch.isinf(p).any()) for p in parts):
        return "inf"
    return ""


@_never_raises
def per_sample_cause(
    status: Status, field, term, t: torch.Tensor, y: torch.Tensor, y0: torch.Tensor, failed: list[int]
) -> str:
    """:func:`failure_cause` for the per-sample loop, from the first failed sample's row.

    Args:
        status: the failure; failed: the indices of the failed samples (the first is diagnosed).
        field: the loop's ``field(s, y)`` on the batch, ``s`` a (batch,) tensor of solver times.
        term: the wrapped field (its counters are restored; ``reverse`` gives the user's time).
        t: (batch,) the solver time each sample reached; y, y0: the batch's state and initial state.

    Returns:
        The cause and its fix, or "".
    """
    if status not in (Status.NONFINITE, Status.STEP_UNDERFLOW) or not failed:
        return ""
    i = failed[0]
    if not bool(torch.isfinite(y[i]).all()):
        return ""
    sign = -1.0 if term.reverse else 1.0
    t_i = float(t[i])
    if status is Status.NONFINITE:
        scale = max(1.0, abs(t_i))
        try:
            with _uncounted(term), torch.no_grad():
                for dt in [2**k * _EPS * scale for k in range(7)] + [math.sqrt(_EPS) * scale]:
                    what = _nonfinite(field(t + dt, y)[i])
                    if what:
                        return field_cause(what, sign * (t_i + dt))
        except Exception:  # the field raising here is not the failure being explained
            return ""
    return _blowup(sign * t_i, y[i], y0[i])


#: dt * rho above which an explicit method's steps are taken to be held by its stability, not its accuracy
#: (the real stability boundaries of the explicit pairs lie between 2 and 4: dopri5's at 3.3)
STIFF_STEP = 1.0


@_never_raises
def stiffness_cause(term, solver, t: float, y: torch.Tensor, dt: float, iterations: int = 8) -> str:
    """The cause of an explicit method's MAX_STEPS failure where the problem is stiff there, or "".

    Estimates the spectral radius rho of the field's Jacobian at (t, y) by power iteration on
    difference quotients (Hairer & Wanner, *Solving ODEs II*, Sec. IV.2, the stiffness detection
    of DOPRI5: steps held where dt * rho reaches the stability boundary). Where ``dt * rho`` exceeds
    :data:`STIFF_STEP`, the steps are as small as the method's stability allows rather than its
    accuracy asks, and an implicit method takes far fewer.

    Args:
        term: the wrapped field (solver time; its counters are restored); solver: the method.
        t, y: where the solve stopped; dt: its last proposed step.
        iterations: power-iteration steps (each one field evaluation).

    Returns:
        The cause naming rho and the fix, or "" (an implicit method, a non-finite state or estimate,
        or steps that are not stability-bound).
    """
    if getattr(solver, "implicit", False) or not bool(torch.isfinite(y).all()) or y.is_complex():
        return ""
    try:
        with _uncounted(term), torch.no_grad():
            f0 = term(t, y)
            gen = torch.Generator(device="cpu").manual_seed(0)  # a fixed start: the message is reproducible
            v = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
            rho = 0.0
            for _ in range(iterations):
                v = v / v.norm()
                eps = math.sqrt(float(torch.finfo(y.dtype).eps)) * max(1.0, float(y.abs().max()))
                jv = (term(t, y + eps * v) - f0) / eps
                rho = float(jv.norm())
                if not math.isfinite(rho) or rho == 0.0:
                    return ""
                v = jv
    except Exception:  # the field raising here is not the failure being explained
        return ""
    if not abs(dt) * rho > STIFF_STEP:
        return ""
    user_t = -t if getattr(term, "reverse", False) else t
    return (
        f"The problem is stiff near t={user_t:.6g}: the field's Jacobian has a spectral radius of about {rho:.3g}, "
        f"so the explicit method's steps are held near dt={abs(dt):.3g} (dt * rho = {abs(dt) * rho:.2g}) by its "
        "stability, not by the tolerances. Use an implicit method such as 'rodas4', 'kvaerno5' or 'bdf' (or "
        "'auto', which switches), or raise max_num_steps if the explicit method is wanted."
    )


def solve_cause(status: Status, term, solver, t: float, y: torch.Tensor, y0: torch.Tensor, dt: float) -> str:
    """The cause of an adaptive solve's failure: :func:`stiffness_cause` for MAX_STEPS, else
    :func:`failure_cause`; the one choice of the host loop and the whole-solve graph.

    Args:
        status: the failure; term: the wrapped field; solver: the method.
        t, y: the solver time and the (last accepted) state where the solve stopped; y0: the initial
            state; dt: the last proposed step.

    Returns:
        The cause and its fix, or "".
    """
    if status is Status.MAX_STEPS:
        return stiffness_cause(term, solver, t, y, dt)
    return failure_cause(status, term, t, y, y0)
