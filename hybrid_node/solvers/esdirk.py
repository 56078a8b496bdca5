"""Singly diagonally implicit Runge-Kutta methods (ESDIRK/SDIRK) with simplified Newton.

Each implicit stage solves ``Y_i = y + h sum_{j<i} a_ij k_j + h gamma f(t + c_i h, Y_i)`` by simplified
Newton (:mod:`.newton`) with the LU factors of ``I - h gamma J``, shared by all stages (one diagonal
value). The Jacobian is kept across steps while Newton converges fast (rate below ``0.1``), refreshed
when it converges slowly or fails; the LU factors are reused while ``h gamma`` stays within 20% of the
value they were built for. The embedded error estimate is filtered through the same LU factors
(``smooth_error``). The stage derivative is recovered as ``k_i = (Y_i - base_i) / (h gamma)``
(no extra evaluation, robust for stiff components); the last stage's, for a stiffly accurate method,
is the next step's explicit first stage. A Jacobian is kept for the next step only while it
still satisfies the secant condition along the step (one extra evaluation per accepted step), since a
stale one can make Newton stop early and the filtered error estimate miss the error. Dense output of
kencarp4 and kvaerno5 is a continuous extension of order 4 from the step's stages (:mod:`.dirk_dense`);
the other methods' is cubic Hermite on the end values and the method's own end slopes (the recovered
last-stage derivative of a stiffly accurate method), not on ``f(t, y)``, which amplifies
tolerance-level errors of stiff components by their eigenvalues.

References:
- Hairer & Wanner, Solving ODEs II, 2nd ed., Sections IV.6 (SDIRK methods) and IV.8 (Newton, reuse).
- TR-BDF2: M. E. Hosea & L. F. Shampine, "Analysis and implementation of TR-BDF2", Appl. Numer. Math.
  20 (1996) (ESDIRK form, embedded third-order estimate).
- KenCarp4: C. A. Kennedy & M. H. Carpenter, "Additive Runge-Kutta schemes for convection-diffusion-
  reaction equations", Appl. Numer. Math. 44 (2003), ARK4(3)6L[2]SA, implicit part.
- Kvaerno3/Kvaerno5: A. Kværnø, "Singly diagonally implicit Runge-Kutta methods with an explicit first
  stage", BIT 44 (2004).
- SDIRK2: R. Alexander, "Diagonally implicit Runge-Kutta methods for stiff ODEs", SIAM J. Numer. Anal.
  14 (1977), the two-stage L-stable method of order 2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar

import torch

from ..interpolation import HermiteInterpolant, PolynomialInterpolant
from .base import AbstractSolver
from .dirk_dense import continuous_extension
from .implicit_common import NamedMethod, fixed_step_newton_error, solve_with_refreshes
from .linalg import Factorization, JacobianSettings, block_jacobian, factorize
from .newton import FIXED_STEP_REFRESHES, NewtonSettings, error_scale, tolerances


@dataclasses.dataclass(frozen=True)
class DirkTableau:
    """A (E)SDIRK tableau; checked on construction.

    Attributes:
        a: lower-triangular rows including the diagonal (row i has i+1 entries); the diagonal is
            ``gamma`` except possibly a zero first entry (explicit first stage).
        c: stage times; b: weights; b_error: b - bhat (None for a method without an error estimate).
        order, error_order: orders of the method and its embedded estimate.
        dense: optional continuous extension: ``dense[i][p]`` is the coefficient of theta^(p+1) in
            b_i(theta), so that y(t + theta h) = y + h sum_i b_i(theta) k_i; None: cubic Hermite.
        dense_order: the order of that extension.
    """

    a: tuple[tuple[float, ...], ...]
    c: tuple[float, ...]
    b: tuple[float, ...]
    order: int
    b_error: tuple[float, ...] | None = None
    error_order: int | None = None
    dense: tuple[tuple[float, ...], ...] | None = None
    dense_order: int | None = None

    def __post_init__(self):
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s or (self.b_error is not None and len(self.b_error) != s):
            raise ValueError("DIRK tableau: a, b, b_error need one entry per stage.")
        for i, row in enumerate(self.a):
            if len(row) != i + 1:
                raise ValueError(f"DIRK tableau: row {i} must have {i + 1} entries (including the diagonal).")
            if abs(sum(row) - self.c[i]) > 1e-9:
                raise ValueError(f"DIRK tableau: row {i} sums to {sum(row)}, not c[{i}] = {self.c[i]}.")
        diag = {row[-1] for row in self.a[1:]} | ({self.a[0][0]} if self.a[0][0] != 0 else set())
        if len(diag) != 1:
            raise ValueError("DIRK tableau: the implicit stages must share one diagonal coefficient.")
        if abs(sum(self.b) - 1.0) > 1e-9:
            raise ValueError("DIRK tableau: the weights must sum to 1.")
        if self.b_error is not None and abs(sum(self.b_error)) > 1e-9:
            raise ValueError("DIRK tableau: the error weights must sum to 0.")
        if self.dense is not None:
            if len(self.dense) != s or self.dense_order is None:
                raise ValueError("DIRK tableau: dense needs one row per stage and a dense_order.")
            for i, row in enumerate(self.dense):
                if abs(sum(row) - self.b[i]) > 1e-12:
                    raise ValueError(f"DIRK tableau: dense row {i} gives {sum(row)} at theta = 1, not b[{i}].")

    @property
    def gamma(self) -> float:
        return self.a[-1][-1]

    @property
    def explicit_first(self) -> bool:
        return self.a[0][0] == 0.0

    @property
    def stages(self) -> int:
        return len(self.c)


_SQ2 = math.sqrt(2.0)
_TRBDF2_D = 1.0 - _SQ2 / 2.0
_TRBDF2_W = _SQ2 / 4.0
TRBDF2_TABLEAU = DirkTableau(
    a=((0.0,), (_TRBDF2_D, _TRBDF2_D), (_TRBDF2_W, _TRBDF2_W, _TRBDF2_D)),
    c=(0.0, 2.0 - _SQ2, 1.0),
    b=(_TRBDF2_W, _TRBDF2_W, _TRBDF2_D),
    order=2,
    b_error=(_TRBDF2_W - (1 - _TRBDF2_W) / 3, _TRBDF2_W - (3 * _TRBDF2_W + 1) / 3, _TRBDF2_D - _TRBDF2_D / 3),
    error_order=2,
)

_KV3_G = 0.4358665215
_KV3_ROW3 = (0.490563388419108, 0.073570090080892, _KV3_G)
_KV3_ROW4 = (0.308809969973036, 1.490563388254106, -1.235239879727145, _KV3_G)
KVAERNO3_TABLEAU = DirkTableau(
    a=((0.0,), (_KV3_G, _KV3_G), _KV3_ROW3, _KV3_ROW4),
    c=(0.0, 2 * _KV3_G, 1.0, 1.0),
    b=_KV3_ROW4,
    order=3,
    b_error=tuple(b - e for b, e in zip(_KV3_ROW4, _KV3_ROW3 + (0.0,))),
    error_order=2,
)

_KC4_ROWS = (
    (0.0,),
    (0.25, 0.25),
    (8611 / 62500, -1743 / 31250, 0.25),
    (5012029 / 34652500, -654441 / 2922500, 174375 / 388108, 0.25),
    (15267082809 / 155376265600, -71443401 / 120774400, 730878875 / 902184768, 2285395 / 8070912, 0.25),
    (82889 / 524892, 0.0, 15625 / 83664, 69875 / 102672, -2260 / 8211, 0.25),
)
_KC4_BHAT = (
    4586570599 / 29645900160,
    0.0,
    178811875 / 945068544,
    814220225 / 1159782912,
    -3700637 / 11593932,
    61727 / 225920,
)
_KC4_C = (0.0, 0.5, 83 / 250, 31 / 50, 17 / 20, 1.0)
KENCARP4_TABLEAU = DirkTableau(
    a=_KC4_ROWS,
    c=_KC4_C,
    b=_KC4_ROWS[-1],
    order=4,
    # b - bhat (this tableau's convention, as diffrax's) with ARK4(3)6L[2]SA's embedded weights bhat; the
    # values here were bhat - b, an estimate of the opposite sign (its norm the same up to rounding)
    b_error=tuple(b - e for b, e in zip(_KC4_ROWS[-1], _KC4_BHAT)),
    error_order=3,
    # order 4 and cubic-exact in the stiff limit, the only such extension of degree 4 (dirk_dense); the
    # paper's own (ARK4(3)6L[2]SA's b*, order 3) measured 2-10x worse between steps (docs/stiff.md)
    dense=continuous_extension(_KC4_ROWS, _KC4_C, _KC4_ROWS[-1], order=4, degree=4, stiff_degree=3),
    dense_order=4,
)

_KV5_G = 0.26
_KV5_ROWS = (
    (0.0,),
    (_KV5_G, _KV5_G),
    (0.13, 0.84033320996790809, _KV5_G),
    (0.22371961478320505, 0.47675532319799699, -0.06470895363112615, _KV5_G),
    (0.16648564323248321, 0.1045001884159172, 0.03631482272098715, -0.13090704451073998, _KV5_G),
    (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676, _KV5_G),
    (
        0.13659751177640291,
        0.0,
        -0.05496908796538376,
        -0.04118626728321046,
        0.62993304899016403,
        0.06962479448202728,
        _KV5_G,
    ),
)
_KV5_C = (0.0, 0.52, 1.230333209967908, 0.895765984350076, 0.436393609858648, 1.0, 1.0)
KVAERNO5_TABLEAU = DirkTableau(
    a=_KV5_ROWS,
    c=_KV5_C,
    b=_KV5_ROWS[-1],
    order=5,
    b_error=tuple(b - e for b, e in zip(_KV5_ROWS[-1], _KV5_ROWS[-2] + (0.0,))),
    error_order=4,
    # no extension is published; order 5 needs more stages' freedom than the 7 leave (dirk_dense)
    dense=continuous_extension(_KV5_ROWS, _KV5_C, _KV5_ROWS[-1], order=4, degree=4, stiff_degree=3),
    dense_order=4,
)

IMPLICIT_EULER_TABLEAU = DirkTableau(a=((1.0,),), c=(1.0,), b=(1.0,), order=1)
_SD2_G = 1.0 - _SQ2 / 2.0
SDIRK2_TABLEAU = DirkTableau(a=((_SD2_G,), (1.0 - _SD2_G, _SD2_G)), c=(_SD2_G, 1.0), b=(1.0 - _SD2_G, _SD2_G), order=2)
TRAPEZOID_TABLEAU = DirkTableau(a=((0.0,), (0.5, 0.5)), c=(0.0, 1.0), b=(0.5, 0.5), order=2)


@dataclasses.dataclass(frozen=True)
class DirkState:
    """Per-solve state carried between steps: f at the step start, the Jacobian and the LU factors.

    ``dy0`` is the derivative at the step start for dense output: the previous step's recovered last-stage
    derivative (None at the start of a solve, then ``f0`` is used).
    """

    f0: torch.Tensor
    jac: torch.Tensor | None
    jac_t: float | None
    lu: Factorization | None
    dy0: torch.Tensor | None = None
    #: the last attempt from this point was rejected (set by :meth:`Dirk.reject`)
    rejected: bool = False
    #: the accepted step that led here came right after a rejection: the next step may not grow
    hold: bool = False
    #: that rejected attempt's Newton iteration did not converge (its iterate finite)
    newton_failed: bool = False


@dataclasses.dataclass(frozen=True)
class DirkStep:
    """What one step produced; ``failed`` marks a Newton failure (the error is then infinite).

    ``dy0``/``dy1`` are the derivatives at the step's ends used by dense output (None: use f there);
    ``y0`` is the state the step started from; ``e`` is the failed stage's last Newton iterate (None
    when Newton converged). The loop reads ``converged`` and ``e`` as it reads a multistep step's
    (:class:`~hybrid_node.solvers.multistep.NordsieckStep`): a step whose Newton did not converge at
    ``min_step`` ends the solve as NEWTON_FAILED, not as a NaN state, unless the iterate itself is not
    finite (a NaN from the field). ``after_reject``: the attempt before this one was rejected.
    """

    y1: torch.Tensor
    error: torch.Tensor | None
    f0: torch.Tensor
    jac: torch.Tensor
    jac_t: float | None
    lu: Factorization
    theta: float
    failed: bool
    dy0: torch.Tensor | None = None
    dy1: torch.Tensor | None = None
    y0: torch.Tensor | None = None
    e: torch.Tensor | None = None
    after_reject: bool = False
    #: the stage derivatives, for a tableau's continuous extension (``DirkTableau.dense``)
    ks: tuple[torch.Tensor, ...] = ()

    #: what did not converge, for the loop's failure message
    iteration: ClassVar[str] = "Newton iteration"

    @property
    def converged(self) -> bool:
        """Whether every stage's Newton iteration converged (the loop's name for ``not failed``)."""
        return not self.failed


@dataclasses.dataclass(frozen=True, repr=False)
class Dirk(AbstractSolver):
    """An (E)SDIRK method solved by simplified Newton.

    Args:
        tableau: the coefficients.
        name: the method name for ``odeint(method=...)``.
        adaptive: use the embedded estimate (needs ``tableau.b_error``); False for fixed steps.
        jacobian, batch_dims: see :class:`~hybrid_node.solvers.linalg.JacobianSettings`.
        max_newton_iters, newton_kappa: the Newton iteration's limits (:class:`NewtonSettings`).
        newton_rtol, newton_atol: the Newton test's error scale; None takes the controller's tolerances
            (fixed-step solves use 1e-9 / 1e-12).
        smooth_error: filter the embedded error estimate through ``(I - h gamma J)^{-1}`` so that stiff
            components do not inflate it (Shampine's device; Hairer & Wanner IV.8, eq. 8.20).
        cap_after_reject: after a rejected attempt, the next accepted step proposes no larger step than
            itself (Hairer & Wanner IV.8; RADAU5's ``IF (REJECT) HNEW = MIN(HNEW, H)``): the controller's
            growth right after a rejection otherwise tends to repeat it. On Robertson (rtol 1e-6, atol 1e-8)
            kvaerno5 goes from 88 to 49 rejections and 3122 to 2627 evaluations, on Van der Pol (mu = 1000,
            rtol = atol = 1e-6) kencarp4 from 60 to 53 and 4047 to 3827 (docs/stiff.md). The explicit
            methods have no such cap (torchdiffeq has none).
    """

    tableau: DirkTableau
    name: str
    adaptive: bool = True
    jacobian: str | Callable = "jacrev"
    batch_dims: int | None = None
    max_newton_iters: int = 10
    newton_kappa: float = 0.01
    newton_rtol: float | None = None
    newton_atol: float | None = None
    smooth_error: bool = True
    cap_after_reject: bool = True

    def __post_init__(self):
        JacobianSettings(self.jacobian, self.batch_dims)
        _ = self.newton  # validates the Newton settings
        if self.adaptive and self.tableau.b_error is None:
            raise ValueError(f"method {self.name!r} has no error estimate; use fixed steps (adaptive=False).")
        # both act on the error estimate and the step proposal, which fixed steps have neither of: they
        # were accepted and changed nothing
        inert = [name for name in ("smooth_error", "cap_after_reject") if getattr(self, name) is not True]
        if inert and not self.adaptive:
            raise ValueError(
                f"{inert} of method {self.name!r} shape adaptive steps (the error estimate, the step after a "
                "rejection); on fixed steps they have no effect: drop them, or take adaptive steps."
            )

    @property
    def newton(self) -> NewtonSettings:
        return NewtonSettings(
            self.max_newton_iters,
            self.newton_kappa,
            1e-9 if self.newton_rtol is None else self.newton_rtol,
            1e-12 if self.newton_atol is None else self.newton_atol,
        )

    def with_tolerances(self, rtol, atol) -> Dirk:
        """This solver with the controller's tolerances as the Newton scale (unless set explicitly)."""
        r, a = tolerances(rtol, atol)
        return dataclasses.replace(
            self,
            newton_rtol=r if self.newton_rtol is None else self.newton_rtol,
            newton_atol=a if self.newton_atol is None else self.newton_atol,
        )

    def fixed_steps(self) -> Dirk:
        """The same method on fixed steps (torchdiffeq's meaning of ``trbdf2`` with a step_size)."""
        return dataclasses.replace(self, adaptive=False)

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def error_order(self) -> int | None:
        return self.tableau.error_order

    implicit = True

    def derivative(self, state) -> torch.Tensor:
        return state.f0

    def init(self, f, t0: float, y0: torch.Tensor) -> DirkState:
        """State at the start: f(t0, y0); the Jacobian is computed by the first step."""
        return DirkState(f(t0, y0), None, None, None)

    def _jacobian(self, f, t, y):
        f0, jac = block_jacobian(f, t, y, JacobianSettings(self.jacobian, self.batch_dims), differentiable=False)
        return f0, jac.detach()  # J only steers Newton: its derivative is not needed (see newton.py)

    def step(self, f, t: float, y: torch.Tensor, state: DirkState, dt: float) -> DirkStep:
        """One step of size dt.

        Raises:
            SolverError: Newton failed on a fixed-step solve, also with the Jacobian taken afresh at the
                failing stage (up to ``FIXED_STEP_REFRESHES`` times); adaptive solves reject the step instead.
        """
        tab = self.tableau
        settings = self.newton
        f0, jac, jac_t = state.f0, state.jac, state.jac_t
        if jac is None:
            _, jac = self._jacobian(f, t, y)
            jac_t = t
        hg = dt * tab.gamma
        lu = state.lu
        if lu is None or lu.lu.shape[:-2] != jac.shape[:-2] or not (0.8 <= hg / lu.scale <= 1.25):
            lu = factorize(jac, hg, y.shape)
        scale = error_scale(y, settings.rtol, settings.atol)
        # The explicit first stage (and the first implicit stage's predictor) is the previous step's
        # recovered last-stage derivative where there is one (the method's own slope at y, as Julia's
        # ESDIRKs take it): f(t, y) multiplies the state's tolerance-level offset from a stiff slow manifold
        # by the stiff eigenvalue (1e6 on Van der Pol with eps = 1e-12), which sent Newton off at about
        # half the attempts there.
        d0 = f0 if state.dy0 is None else state.dy0
        ks = []
        theta_max = 0.0
        failed = False
        for i in range(tab.stages):
            row = tab.a[i]
            if i == 0 and tab.explicit_first:
                ks.append(d0)
                continue
            base = y
            for a, k in zip(row[:-1], ks):
                if a != 0.0:
                    base = base + (dt * a) * k
            ti = t + tab.c[i] * dt
            z0 = hg * (ks[-1] if ks else d0)

            def residual(z: torch.Tensor, ti: float = ti, base: torch.Tensor = base) -> torch.Tensor:
                return z - hg * f(ti, base + z)

            # Every stage starts from eta = 1: its first iterate is accepted only when that increment is
            # itself below kappa. A rate carried over from the previous stage or step (Hairer & Wanner's eta =
            # max(eta_old, eps)^0.8) accepted first iterates of 10 tolerances and more after a stage whose
            # iteration had converged at once (eta ~1e-4), and the embedded estimate, built from the same
            # inexact stages, does not see their error: kencarp4 on Robertson at rtol 1e-3 ended 0.28
            # relative off (279 rtol) in 287 steps and 262 rejections; a fixed step has no estimate at all.
            def refresh(z: torch.Tensor, ti: float = ti, base: torch.Tensor = base) -> Callable:
                """A fixed step's fresh Jacobian at this stage's iterate ``z``; kept for the later stages."""
                nonlocal jac, jac_t, lu
                _, jac = self._jacobian(f, ti, base + z)
                jac_t = ti
                lu = factorize(jac, hg, y.shape)
                return lu.solve

            refreshes = 0 if self.adaptive else FIXED_STEP_REFRESHES
            res = solve_with_refreshes(residual, lu.solve, z0, scale, settings, refresh, refreshes)
            theta_max = max(theta_max, res.theta)
            if not res.converged:
                failed = True
                break
            ks.append(res.z / hg)
        if failed:
            if not self.adaptive:
                raise fixed_step_newton_error(f, t, y, self.batch_dims, res.z)
            bad = torch.full_like(y, math.inf)
            return DirkStep(bad, bad, f0, jac, jac_t, lu, math.inf, True, e=res.z.detach())
        y1 = y
        for b, k in zip(tab.b, ks):
            if b != 0.0:
                y1 = y1 + (dt * b) * k
        error = None
        if tab.b_error is not None:
            error = torch.zeros_like(y)
            for be, k in zip(tab.b_error, ks):
                if be != 0.0:
                    error = error + (dt * be) * k
            if self.smooth_error:
                error = lu.solve(error)
        # stiffly accurate (y1 is the last stage, at c = 1): its recovered derivative is the method's own
        # slope at t + dt, used by dense output instead of f(t + dt, y1) (see interpolant)
        dy1 = ks[-1] if self._recovers_end_derivative else None
        return DirkStep(
            y1,
            error,
            f0,
            jac,
            jac_t,
            lu,
            theta_max,
            False,
            state.dy0,
            dy1,
            y,
            after_reject=state.rejected,
            ks=tuple(ks),
        )

    def next_state(self, f, t1: float, step: DirkStep) -> DirkState:
        """Carry the Jacobian and LU on while they are still good, else refresh them at the next step.

        They are kept when Newton converged fast (rate at most 0.1) and the Jacobian still satisfies the
        secant condition along the step (:func:`_secant_mismatch` at most 0.5). The rate alone can miss a
        stale Jacobian: when the old iteration matrix barely contracts a slow mode, the increments of that
        mode are tiny, the measured rate is set by the fast modes and Newton stops far from the solution;
        the filtered error estimate ``(I - h gamma J)^{-1} err`` is then wrong too.
        """
        f1 = f(t1, step.y1)
        keep = step.theta <= 0.1 and _secant_mismatch(f, t1, step, f1) <= 0.5
        return DirkState(
            f1,
            step.jac if keep else None,
            step.jac_t if keep else None,
            step.lu if keep else None,
            step.dy1,
            hold=step.after_reject,
        )

    def reject(self, f, t: float, y: torch.Tensor, state: DirkState, step: DirkStep) -> DirkState:
        """After a rejected step: keep a current Jacobian, refresh a stale one if Newton failed."""
        # a NaN iterate (from the field) is not a convergence failure: the controller's dfactor then
        failed = step.failed and step.e is not None and bool(torch.isfinite(step.e).all())
        if step.failed and step.jac_t != t:
            return DirkState(state.f0, None, None, None, state.dy0, rejected=True, newton_failed=failed)
        lu = step.lu if not step.failed else None
        return DirkState(state.f0, step.jac, step.jac_t, lu, state.dy0, rejected=True, newton_failed=failed)

    def propose_step(self, state: DirkState, dt: float, proposal: float) -> float:
        """The controller's proposal, held at ``dt`` after an accepted step that followed a rejection.

        After a Newton failure the step is halved (RADAU5's ``H = H * 0.5``, OrdinaryDiffEq's
        ``failfactor = 2``), not cut to the controller's ``dfactor * dt`` for an infinite error: the failure
        says nothing of the error, which at the last accepted step often allowed the step that failed. On
        Robertson kvaerno5's error ratio stayed at 1.5e-4 while Newton failed at every 5x growth, and
        ``0.2 * 5`` left each pair of attempts 4% ahead of the last accepted step.

        Args:
            state: the state after the attempt (:meth:`next_state` or :meth:`reject`).
            dt: the attempt's step size.
            proposal: the controller's next step.

        Returns:
            ``max(proposal, dt / 2)`` after a Newton failure; ``min(proposal, dt)`` where ``cap_after_reject``
            holds the step (``state.hold``); else ``proposal``.
        """
        if state.newton_failed:
            return max(proposal, 0.5 * dt)
        if self.cap_after_reject and state.hold:
            return min(proposal, dt)
        return proposal

    def interpolant(self, f, t0: float, y0: torch.Tensor, dt: float, step: DirkStep, state: DirkState):
        """The tableau's continuous extension where it has one, else cubic Hermite (third order).

        The extension ``y0 + dt sum_i b_i(theta) k_i`` (``DirkTableau.dense``) uses the step's own stage
        derivatives: no evaluation, the order of its construction (4 for kencarp4 and kvaerno5), and in
        the stiff limit it follows a cubic slow manifold exactly (:mod:`.dirk_dense`).

        Hermite's slope at each end, for a stiffly accurate method, is the last stage's recovered derivative
        ``(Y_s - base_s) / (h gamma)``, not ``f(t, y)``: on a stiff component ``f`` multiplies the
        state's error (Newton's and the tolerance-level one) by the stiff eigenvalue, and over a long
        step ``dt * f`` then dominates the interpolant, while the recovered slope's error stays of the
        size of the Newton error divided by ``h gamma``.
        """
        dense = self.tableau.dense
        if dense is not None and len(step.ks) == len(dense):
            return PolynomialInterpolant(y0, step.ks, dt, dense, y1=step.y1)
        d0 = step.f0 if step.dy0 is None else step.dy0
        d1 = state.f0 if step.dy1 is None else step.dy1
        return HermiteInterpolant(y0, step.y1, d0, d1, dt)

    @property
    def _recovers_end_derivative(self) -> bool:
        tab = self.tableau
        return tab.b == tab.a[-1] and tab.c[-1] == 1.0


def _secant_mismatch(f, t1: float, step: DirkStep, f1: torch.Tensor) -> float:
    """How far the step's Jacobian is from the secant condition along the step (one evaluation of f).

    Returns ``max over samples of |df - J dy| / max(|df|, |J dy|)`` with ``dy = y1 - y0`` and
    ``df = f(t1, y1) - f(t1, y0)`` (both at t1, so a time-dependent forcing does not count): about
    ``|dy| * |f''| / |J|`` (small) for a current Jacobian, of order 1 for one from a different regime.

    Reference: the secant condition of quasi-Newton updates, J. E. Dennis & R. B. Schnabel, Numerical
    Methods for Unconstrained Optimization and Nonlinear Equations (1983), Chapter 8.
    """
    jac = step.jac
    assert step.y0 is not None  # set on every step that Newton completed
    with torch.no_grad():
        df = (f1 - f(t1, step.y0)).reshape(jac.shape[:-1])
        dy = (step.y1 - step.y0).reshape(jac.shape[:-1])
        jdy = (jac @ dy.unsqueeze(-1)).squeeze(-1)
        num = (df - jdy).norm(dim=-1)
        den = torch.maximum(df.norm(dim=-1), jdy.norm(dim=-1))
        if not bool((den > 0).all()):
            den = den.clamp_min(torch.finfo(den.dtype).tiny)
        return float((num / den).max()) if num.numel() else 0.0  # (a batch of no samples)


class TRBDF2(NamedMethod, Dirk):
    """TR-BDF2 (Hosea & Shampine), order 2, L-stable, with an embedded estimate (``method="trbdf2"``)."""

    preset = {"tableau": TRBDF2_TABLEAU, "name": "trbdf2"}


class Kvaerno3(NamedMethod, Dirk):
    """Kværnø's ESDIRK 3(2), stiffly accurate, L-stable (``method="kvaerno3"``)."""

    preset = {"tableau": KVAERNO3_TABLEAU, "name": "kvaerno3"}


class KenCarp4(NamedMethod, Dirk):
    """Kennedy & Carpenter's ESDIRK 4(3) (implicit part of ARK4(3)6L[2]SA), L-stable (``method="kencarp4"``)."""

    preset = {"tableau": KENCARP4_TABLEAU, "name": "kencarp4"}


class Kvaerno5(NamedMethod, Dirk):
    """Kværnø's ESDIRK 5(4), stiffly accurate, L-stable (``method="kvaerno5"``)."""

    preset = {"tableau": KVAERNO5_TABLEAU, "name": "kvaerno5"}


class ImplicitEuler(NamedMethod, Dirk):
    """Backward Euler, order 1, fixed steps (``method="implicit_euler"``)."""

    preset = {"tableau": IMPLICIT_EULER_TABLEAU, "name": "implicit_euler", "adaptive": False}


class SDIRK2(NamedMethod, Dirk):
    """Alexander's two-stage L-stable SDIRK of order 2, fixed steps (``method="sdirk2"``)."""

    preset = {"tableau": SDIRK2_TABLEAU, "name": "sdirk2", "adaptive": False}


class Trapezoid(NamedMethod, Dirk):
    """The trapezoidal rule (Crank-Nicolson), order 2, A-stable, fixed steps (``method="trapezoid"``)."""

    preset = {"tableau": TRAPEZOID_TABLEAU, "name": "trapezoid", "adaptive": False}
