"""Simplified Newton iteration for the stage equations of implicit Runge-Kutta methods.

The iteration solves ``G(z) = 0`` with a frozen matrix (the LU factors of ``I - h*gamma*J`` or of the
full stage system), ``z <- z + M^{-1}(-G(z))``, and stops by Hairer & Wanner's convergence test: with
the contraction rate ``theta_k = |dz_k| / |dz_(k-1)|`` and ``eta = theta / (1 - theta)``, the remaining
error is about ``eta * |dz_k|``; the iteration has converged when that is below ``kappa`` (in the units of
the error norm, where 1 is the tolerance) and fails when ``theta >= 1`` (divergence) or after
``max_iters`` iterations.

Every operation is a differentiable torch op, so backpropagating through the iterations converges to
the implicit-function derivative at the same rate as the iteration itself.

Reference: Hairer & Wanner, Solving ODEs II, 2nd ed., Section IV.8, "Stopping criterion" (eq. 8.10-8.12).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from ..controllers import refuse_bool_or_complex, rms_norm
from .linalg import system_shape


@dataclasses.dataclass(frozen=True)
class NewtonSettings:
    """Settings of the simplified Newton iteration.

    Args:
        max_iters: iterations per stage before the step is declared failed.
        kappa: stop when the estimated remaining error is below kappa (1 = the tolerance).
        rtol, atol: the error scale ``atol + rtol*|y|`` of the convergence test (the adaptive solvers
            take them from the controller; fixed-step solves use these defaults).
    """

    max_iters: int = 10
    kappa: float = 0.01
    rtol: float = 1e-9
    atol: float = 1e-12

    def __post_init__(self):
        if not (isinstance(self.max_iters, int) and self.max_iters >= 1):
            raise ValueError(f"max_newton_iters must be a positive int, got {self.max_iters!r}.")
        if not (0 < self.kappa < 1):
            raise ValueError(f"newton_kappa must be in (0, 1), got {self.kappa!r}.")
        if not (self.rtol >= 0 and self.atol >= 0 and self.rtol + self.atol > 0):
            raise ValueError("Newton tolerances must be non-negative and not both zero.")


@dataclasses.dataclass(frozen=True)
class NewtonResult:
    """Outcome of one Newton solve: the solution, whether it converged, the worst rate and the last eta."""

    z: torch.Tensor
    converged: bool
    iters: int
    theta: float
    eta: float


def newton_solve(
    residual: Callable[[torch.Tensor], torch.Tensor],
    solve: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    scale: torch.Tensor,
    settings: NewtonSettings,
) -> NewtonResult:
    """Solve ``residual(z) = 0`` by simplified Newton.

    Args:
        residual: ``G(z)``.
        solve: applies the frozen inverse, ``solve(r) ~ (dG/dz)^{-1} r``.
        z0: the predictor.
        scale: the error scale (``atol + rtol*|y|``), broadcastable to z.
        settings: iteration limits and tolerance.

    Returns:
        NewtonResult.
    """
    z = z0
    eps = torch.finfo(z0.dtype).eps
    floor = 10.0 * eps / max(settings.rtol, eps)  # round-off level of the scaled norm
    prev = None
    # before a rate is known eta = 1: the first iterate is accepted only when its increment is below kappa
    # (a rate carried over from an earlier solve accepted inexact first iterates, see esdirk.Dirk.step)
    eta = 1.0
    theta_max = 0.0
    for it in range(1, settings.max_iters + 1):
        dz = solve(-residual(z))
        z = z + dz
        # no component is asked for less than the rounding error of its own increment: a float32
        # component that starts at 0 (e.g. an adjoint's parameter channel) has scale ~atol, far
        # below what float32 resolves, and would stall the iteration in round-off
        zscale = torch.maximum(scale, (8 * eps) * z.detach().abs())
        norm = float(rms_norm(dz.detach() / zscale))  # (0 for an empty state)
        if math.isnan(norm):
            return NewtonResult(z, False, it, float("inf"), eta)
        if prev is not None:
            theta = norm / prev if prev > 0 else 0.0
            theta_max = max(theta_max, theta)
            if theta >= 1.0 and norm > floor:
                return NewtonResult(z, False, it, theta, eta)
            eta = theta / (1.0 - theta) if theta < 1.0 else 1.0
        if eta * norm <= settings.kappa or norm <= floor:
            return NewtonResult(z, True, it, theta_max, eta)
        prev = norm
    return NewtonResult(z, False, settings.max_iters, theta_max, eta)


#: Jacobian refreshes a fixed-step solve tries after a failed Newton iteration before it gives up.
FIXED_STEP_REFRESHES = 3


def contracted(res: NewtonResult) -> bool:
    """Whether a failed iteration was still contracting (so its last iterate is a better start than its first).

    Args:
        res: the outcome of :func:`newton_solve`.

    Returns:
        True when no rate reached 1 and the iterate is finite.
    """
    return res.theta < 1.0 and bool(torch.isfinite(res.z).all())


def fixed_step_failure_hint(y: torch.Tensor, batch_dims: int | None) -> str:
    """What to try when Newton fails on a fixed step, for the detail of the ``SolverError``.

    A smaller step always; and where the state has batch dimensions, ``batch_dims=0``: the Jacobian is
    taken per sample, so a field that couples the samples (``A @ y`` on a column ``y`` of shape (D, 1),
    batch statistics) gets a block-diagonal Jacobian that misses the coupling, and Newton fails at
    every step size that a stiff coupling needs.

    Args:
        y: the state at the step's start.
        batch_dims: the solver's setting (None: all dimensions but the last).

    Returns:
        The hint, e.g. ``"use a smaller step_size"``.
    """
    hint = "use a smaller step_size"
    n_batch = len(system_shape(y, batch_dims)[0])
    if n_batch:
        hint += (
            f"; the Jacobian is taken per sample along the state's first {n_batch} dimension(s) "
            f"(shape {tuple(y.shape)}): if the field couples them, pass options={{'batch_dims': 0}}"
        )
    return hint


def error_scale(y: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """``atol + rtol*|y|`` (detached: the test only decides when to stop).

    ``rtol`` is taken as at least a few units of ``y``'s rounding error, which is what a converged
    iterate can reach (the default 1e-9 is below float32's resolution).
    """
    rtol = max(rtol, 8 * torch.finfo(y.dtype).eps)
    return atol + rtol * y.detach().abs()


def tolerances(rtol, atol) -> tuple[float, float]:
    """Scalar tolerances for an iteration's stopping test from the solve's (the smallest of each).

    The Newton test of the implicit solvers and the Adams corrector's test take one value each; where the
    tolerances vary (per component, or per part of a tuple state) the smallest, so that the iteration has
    converged for every component.

    Args:
        rtol, atol: as a solve takes them: a number (Python or NumPy, or a 0-d tensor), a tensor or NumPy
            array of per-component values, or a tuple or list of those, one per part of a tuple state.

    Returns:
        ``(rtol, atol)`` as floats (odeint's defaults 1e-7 and 1e-9 for a tolerance without values, which
        an empty state's per-component tolerance is).

    Raises:
        ValueError: a value that is not a finite non-negative real number (a bool or a complex one).
    """

    def smallest(v, name: str, default: float) -> float:
        if type(v) in (float, int):  # the common case, without a tensor
            low = high = float(v)
        else:
            try:
                parts = [torch.as_tensor(x).detach().reshape(-1) for x in (v if isinstance(v, (tuple, list)) else (v,))]
            except (TypeError, ValueError, RuntimeError):  # None, a string, ragged nesting
                raise ValueError(f"{name} must be finite and non-negative, got {v!r}.") from None
            # the cast below took True as 1.0 and dropped an imaginary part (the fixed-step implicit_adams
            # has no PIDController to refuse them)
            refuse_bool_or_complex(name, v)
            values = torch.cat([p.to(device="cpu", dtype=torch.float64) for p in parts]) if parts else None
            if values is None or values.numel() == 0:  # per component of an empty state: none to hold
                return default
            low, high = float(values.min()), float(values.max())  # (a NaN propagates to both)
        if not (math.isfinite(low) and math.isfinite(high) and low >= 0):
            raise ValueError(f"{name} must be finite and non-negative, got {v!r}.")
        return low

    return smallest(rtol, "rtol", 1e-7), smallest(atol, "atol", 1e-9)
