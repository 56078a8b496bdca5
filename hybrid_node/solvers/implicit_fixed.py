"""Fully implicit Runge-Kutta methods on fixed steps: implicit midpoint, Gauss-Legendre, Radau IIA.

The s stage increments ``Z_i = h sum_j a_ij f(t + c_j h, y + Z_j)`` are solved together by simplified
Newton with the LU factors of the per-sample ``(sD) x (sD)`` matrix ``I - h A (x) J`` (Kronecker
product; block diagonal over the batch as everywhere in the implicit solvers). The step's result is
``y1 = y + sum_i d_i Z_i`` with ``d = b A^{-1}`` (no extra evaluations). The diagonally implicit
fixed-step methods (implicit_euler, trapezoid, sdirk2, trbdf2) live in :mod:`.esdirk`.

References: Hairer & Wanner, Solving ODEs II, 2nd ed., Section IV.5 (Gauss and Radau IIA tableaus,
Table 5.5/5.6) and IV.8 (simplified Newton for the stage system, eq. 8.2-8.4); the implicit midpoint
rule is the one-stage Gauss method.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

from ..interpolation import HermiteInterpolant
from .base import AbstractSolver
from .implicit_common import NamedMethod, fixed_step_newton_error, solve_with_refreshes
from .linalg import JacobianSettings, block_jacobian, system_shape
from .newton import FIXED_STEP_REFRESHES, NewtonSettings, error_scale


@dataclasses.dataclass(frozen=True)
class ImplicitTableau:
    """A fully implicit tableau (A invertible); checked on construction."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    def __post_init__(self):
        s = len(self.c)
        if len(self.a) != s or any(len(r) != s for r in self.a) or len(self.b) != s:
            raise ValueError("implicit tableau: A must be s x s with s weights and s nodes.")
        if any(abs(sum(r) - c) > 1e-12 for r, c in zip(self.a, self.c)) or abs(sum(self.b) - 1) > 1e-12:
            raise ValueError("implicit tableau: rows of A must sum to c and the weights to 1.")
        if abs(np.linalg.det(np.array(self.a))) < 1e-14:
            raise ValueError("implicit tableau: A must be invertible.")

    @property
    def d(self) -> tuple[float, ...]:
        """``b A^{-1}``: y1 = y + sum_i d_i Z_i."""
        return tuple(np.linalg.solve(np.array(self.a).T, np.array(self.b)).tolist())


_S3, _S6, _S15 = math.sqrt(3.0), math.sqrt(6.0), math.sqrt(15.0)
IMPLICIT_MIDPOINT_TABLEAU = ImplicitTableau(a=((0.5,),), b=(1.0,), c=(0.5,), order=2)
GL4_TABLEAU = ImplicitTableau(
    a=((0.25, 0.25 - _S3 / 6), (0.25 + _S3 / 6, 0.25)), b=(0.5, 0.5), c=(0.5 - _S3 / 6, 0.5 + _S3 / 6), order=4
)
GL6_TABLEAU = ImplicitTableau(
    a=(
        (5 / 36, 2 / 9 - _S15 / 15, 5 / 36 - _S15 / 30),
        (5 / 36 + _S15 / 24, 2 / 9, 5 / 36 - _S15 / 24),
        (5 / 36 + _S15 / 30, 2 / 9 + _S15 / 15, 5 / 36),
    ),
    b=(5 / 18, 4 / 9, 5 / 18),
    c=(0.5 - _S15 / 10, 0.5, 0.5 + _S15 / 10),
    order=6,
)
RADAU_IIA3_TABLEAU = ImplicitTableau(a=((5 / 12, -1 / 12), (0.75, 0.25)), b=(0.75, 0.25), c=(1 / 3, 1.0), order=3)
RADAU_IIA5_TABLEAU = ImplicitTableau(
    a=(
        ((88 - 7 * _S6) / 360, (296 - 169 * _S6) / 1800, (-2 + 3 * _S6) / 225),
        ((296 + 169 * _S6) / 1800, (88 + 7 * _S6) / 360, (-2 - 3 * _S6) / 225),
        ((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9),
    ),
    b=((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9),
    c=((4 - _S6) / 10, (4 + _S6) / 10, 1.0),
    order=5,
)


@dataclasses.dataclass(frozen=True)
class FirkStep:
    y1: torch.Tensor
    error: None
    f0: torch.Tensor


@dataclasses.dataclass(frozen=True, repr=False)
class ImplicitRungeKutta(AbstractSolver):
    """A fully implicit Runge-Kutta method on fixed steps (no error estimate).

    Args:
        tableau: the coefficients; name: the method name.
        jacobian, batch_dims: see :class:`~hybrid_node.solvers.linalg.JacobianSettings`.
        max_newton_iters, newton_kappa, newton_rtol, newton_atol: see :class:`NewtonSettings`.
    """

    tableau: ImplicitTableau
    name: str
    jacobian: str | Callable = "jacrev"
    batch_dims: int | None = None
    max_newton_iters: int = 10
    newton_kappa: float = 0.01
    newton_rtol: float = 1e-9
    newton_atol: float = 1e-12
    adaptive: bool = False
    error_order: int | None = None

    def __post_init__(self):
        JacobianSettings(self.jacobian, self.batch_dims)
        NewtonSettings(self.max_newton_iters, self.newton_kappa, self.newton_rtol, self.newton_atol)

    @property
    def order(self) -> int:
        return self.tableau.order

    implicit = True

    def init(self, f, t0: float, y0: torch.Tensor) -> torch.Tensor:
        return f(t0, y0)

    def step(self, f, t: float, y: torch.Tensor, f0: torch.Tensor, dt: float) -> FirkStep:
        """One step; the Jacobian is evaluated once per step at (t, y), and where Newton fails with it,
        at each stage (up to ``FIXED_STEP_REFRESHES`` times).

        Raises:
            SolverError: the Newton iteration did not converge (the detail suggests a smaller step_size, and
                batch_dims=0 where the state has batch dimensions).
        """
        tab = self.tableau
        s = len(tab.c)
        batch, d = system_shape(y, self.batch_dims)
        jac_settings = JacobianSettings(self.jacobian, self.batch_dims)
        _, jac = block_jacobian(f, t, y, jac_settings, differentiable=False)
        a = torch.tensor(tab.a, dtype=y.dtype, device=y.device)

        def factor(jacs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """LU of ``I - h (A kron J)`` per sample, shape (*batch, s*d, s*d); ``jacs[j]`` is the Jacobian
            that multiplies stage j (one for all stages in the simplified iteration)."""
            by_stage = jacs.detach().movedim(0, -2).unsqueeze(-4)  # (*batch, 1, d, s, d)
            kron = a[:, None, :, None] * by_stage  # (*batch, s, d, s, d): a_ij J_j
            m = torch.eye(s * d, dtype=y.dtype, device=y.device) - dt * kron.reshape(batch + (s * d, s * d))
            lu, piv, _ = torch.linalg.lu_factor_ex(m)
            return lu, piv

        lu, piv = factor(jac.expand((s,) + tuple(jac.shape)))

        def solve(r):  # r: (s, *y.shape)
            rb = r.reshape((s,) + batch + (d,)).movedim(0, -2).reshape(batch + (s * d, 1))
            x = torch.linalg.lu_solve(lu, piv, rb).reshape(batch + (s, d)).movedim(-2, 0)
            return x.reshape((s,) + tuple(y.shape))

        def residual(z):
            fz = torch.stack([f(t + tab.c[j] * dt, y + z[j]) for j in range(s)])
            return z - dt * torch.einsum("ij,j...->i...", a, fz)

        settings = NewtonSettings(self.max_newton_iters, self.newton_kappa, self.newton_rtol, self.newton_atol)
        z0 = torch.stack([(tab.c[j] * dt) * f0 for j in range(s)])
        scale = error_scale(y, settings.rtol, settings.atol)

        def refresh(z: torch.Tensor) -> Callable:
            """Each stage's own Jacobian at its time and iterate: the stage system's Newton matrix there (the
            simplified iteration's one Jacobian at the step's start misses how J changes over the step)."""
            nonlocal lu, piv
            jacs = [
                block_jacobian(f, t + c * dt, y + zj, jac_settings, differentiable=False)[1] for c, zj in zip(tab.c, z)
            ]
            lu, piv = factor(torch.stack(jacs))
            return solve

        res = solve_with_refreshes(residual, solve, z0, scale, settings, refresh, FIXED_STEP_REFRESHES)
        if not res.converged:
            raise fixed_step_newton_error(f, t, y, self.batch_dims, res.z)
        y1 = y
        for di, zi in zip(tab.d, res.z):
            y1 = y1 + di * zi
        return FirkStep(y1, None, f0)

    def next_state(self, f, t1: float, step: FirkStep) -> torch.Tensor:
        return f(t1, step.y1)

    def interpolant(self, f, t0, y0, dt, step: FirkStep, f1):
        return HermiteInterpolant(y0, step.y1, step.f0, f1, dt)


class ImplicitMidpoint(NamedMethod, ImplicitRungeKutta):
    """The implicit midpoint rule (one-stage Gauss), order 2, symplectic (``method="implicit_midpoint"``)."""

    preset = {"tableau": IMPLICIT_MIDPOINT_TABLEAU, "name": "implicit_midpoint"}


class GaussLegendre4(NamedMethod, ImplicitRungeKutta):
    """Two-stage Gauss-Legendre, order 4 (``method="gl4"``)."""

    preset = {"tableau": GL4_TABLEAU, "name": "gl4"}


class GaussLegendre6(NamedMethod, ImplicitRungeKutta):
    """Three-stage Gauss-Legendre, order 6 (``method="gl6"``)."""

    preset = {"tableau": GL6_TABLEAU, "name": "gl6"}


class RadauIIA3(NamedMethod, ImplicitRungeKutta):
    """Two-stage Radau IIA, order 3, L-stable (``method="radauIIA3"``)."""

    preset = {"tableau": RADAU_IIA3_TABLEAU, "name": "radauIIA3"}


class RadauIIA5(NamedMethod, ImplicitRungeKutta):
    """Three-stage Radau IIA, order 5, L-stable (``method="radauIIA5"``)."""

    preset = {"tableau": RADAU_IIA5_TABLEAU, "name": "radauIIA5"}
