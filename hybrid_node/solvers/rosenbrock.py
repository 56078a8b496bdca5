"""Rosenbrock (linearly implicit) methods: Rodas5P, Rodas4, ROS3P and Rosenbrock23.

A Rosenbrock step solves s linear systems with the one matrix ``I - h*gamma*J`` instead of a nonlinear
system, so it needs the exact Jacobian at the start of each step (computed once per accepted step and
reused by retries of a rejected step) and no Newton iteration. The generic step uses Hairer & Wanner's
transformed variables (Solving ODEs II, 2nd ed., Section IV.7, eq. (7.25)):

    (I/(h gamma) - J) k_i = f(t + c_i h, y + sum_j a_ij k_j) + sum_j (C_ij / h) k_j + h d_i df/dt
    y1 = y + sum_i b_i k_i,   error = sum_i (b_i - bhat_i) k_i

and the methods' continuous extensions ``y(theta) = (1-theta) y0 + theta (y1 + (1-theta)(K1 + theta(K2
+ theta K3)))`` with ``K_r = sum_j H_rj k_j``.

References:
- Rodas4: Hairer & Wanner, Solving ODEs II, Section VI.4 (code RODAS; dense output of
  Steinebach's RODASP family).
- Rodas5P: G. Steinebach, "Construction of Rosenbrock-Wanner method Rodas5P and numerical benchmarks
  within the Julia Differential Equations package", BIT Numer. Math. 63 (2023).
- ROS3P: J. Lang & J. Verwer, "ROS3P - an accurate third-order Rosenbrock solver designed for
  parabolic problems", BIT 41 (2001).
- Rosenbrock23: L. F. Shampine & M. W. Reichelt, "The MATLAB ODE suite", SIAM J. Sci. Comput. 18 (1997)
  (ode23s: a W-method of order 2 with a third-order error estimate, L-stable).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..interpolation import HermiteInterpolant, host_matrix
from .base import AbstractSolver, Interpolant
from .linalg import (
    TIME_DERIVATIVE_MODES,
    UNPROBED,
    Factorization,
    JacobianSettings,
    TimeRoute,
    block_jacobian,
    factorize,
    jacobian_and_time_derivative,
)


class _LUSolve(torch.autograd.Function):
    """``M^{-1} b`` (or ``M^{-H} b`` with ``adjoint``) from LU factors of M computed outside autograd.

    Differentiating ``torch.linalg.lu_solve`` through ``lu_factor_ex`` unpacks the factors with
    ``tril``/``triu`` at every stage, which runs as a parallel loop even on a 2 x 2 block: on a machine
    whose cores are busy each call waits milliseconds for the thread pool (rodas5p by direct
    backpropagation on a 2-state problem: 1.3-3.7 s of backward instead of 0.05 s). The gradient of a
    linear solve needs only another solve with the same factors (``gb = M^{-H} g``, ``gM = -gb x^H``),
    and that solve goes through this function again, so higher derivatives stay available. In forward
    mode (dual tensors), ``dx = M^{-1} (db - dM x)`` (``M^{-H} (db - dM^H x)`` with ``adjoint``): the
    factors' own tangents are not used, the tangent of M is.
    """

    @staticmethod
    def forward(ctx, m: torch.Tensor, lu: torch.Tensor, pivots: torch.Tensor, b: torch.Tensor, adjoint: bool):
        x = torch.linalg.lu_solve(lu, pivots, b, adjoint=adjoint)
        ctx.save_for_backward(m, lu, pivots, x)
        ctx.save_for_forward(lu, pivots, x)
        ctx.adjoint = adjoint
        return x

    @staticmethod
    def jvp(ctx, dm: torch.Tensor | None, _dlu, _dpivots, db: torch.Tensor | None, _dadjoint) -> torch.Tensor:
        lu, pivots, x = ctx.saved_tensors
        rhs = torch.zeros_like(x) if db is None else db
        if dm is not None:
            rhs = rhs - (dm.mH @ x if ctx.adjoint else dm @ x)
        return _LUSolve.apply(None, lu, pivots, rhs, ctx.adjoint)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        m, lu, pivots, x = ctx.saved_tensors
        gb = _LUSolve.apply(m, lu, pivots, g, not ctx.adjoint)
        gm = None
        if ctx.needs_input_grad[0]:
            # x = M^{-1} b: dL/dM = -gb x^H; x = M^{-H} b: dL/dM = -x gb^H
            gm = -(x @ gb.mH) if ctx.adjoint else -(gb @ x.mH)
        return gm, None, None, gb, None


@dataclasses.dataclass(frozen=True)
class _TrackedFactorization:
    """LU factors of ``M = I - scale * J`` whose solves are differentiable in J and the right-hand side
    without differentiating the factorisation (see :class:`_LUSolve`); same ``solve`` as
    :class:`~hybrid_node.solvers.linalg.Factorization`."""

    m: torch.Tensor
    lu: torch.Tensor
    pivots: torch.Tensor
    shape: torch.Size

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """Solve ``(I - scale J) x = rhs`` blockwise; rhs has the state's shape."""
        b = rhs.reshape(self.lu.shape[:-1] + (1,))
        return _LUSolve.apply(self.m, self.lu, self.pivots, b, False).reshape(self.shape)


def _factorize(jac: torch.Tensor, scale: float, shape: torch.Size) -> Factorization | _TrackedFactorization:
    """:func:`~hybrid_node.solvers.linalg.factorize`, with the Jacobian's graph kept by
    :class:`_LUSolve` where autograd records it (direct backpropagation through the step).

    Args:
        jac: the Jacobian blocks, shape ``(*batch, D, D)``.
        scale: h * gamma.
        shape: the state's shape.

    Returns:
        An object whose ``solve(rhs)`` gives ``(I - scale J)^{-1} rhs`` in the state's shape.
    """
    if not (torch.is_grad_enabled() and jac.requires_grad):
        return factorize(jac, scale, shape)
    eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
    m = eye - scale * jac
    with torch.no_grad():
        lu, pivots, _ = torch.linalg.lu_factor_ex(m)
    return _TrackedFactorization(m, lu, pivots, shape)


@dataclasses.dataclass(frozen=True)
class RosenbrockTableau:
    """Coefficients of a Rosenbrock method in transformed variables, checked on construction.

    Attributes:
        gamma: the diagonal coefficient.
        a: ``a[i]`` holds a_i0 .. a_i(i-1) (stage arguments).
        C: ``C[i]`` holds C_i0 .. C_i(i-1).
        c: stage times; d: coefficients of df/dt (gamma_i).
        b, b_error: solution weights and b - bhat over the k_i.
        order, error_order: orders of the solution and of the embedded one.
        dense: rows of H for the continuous extension (None: cubic Hermite).
    """

    gamma: float
    a: tuple[tuple[float, ...], ...]
    C: tuple[tuple[float, ...], ...]
    c: tuple[float, ...]
    d: tuple[float, ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...]
    order: int
    error_order: int
    dense: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self):
        s = len(self.c)
        if not (len(self.a) == len(self.C) == len(self.d) == len(self.b) == len(self.b_error) == s):
            raise ValueError("Rosenbrock tableau: a, C, c, d, b, b_error need one entry per stage.")
        for i in range(s):
            if len(self.a[i]) != i or len(self.C[i]) != i:
                raise ValueError(f"Rosenbrock tableau: row {i} of a and C must have {i} entries.")
        if self.dense is not None and any(len(row) != s for row in self.dense):
            raise ValueError("Rosenbrock tableau: every dense-output row needs one entry per stage.")

    @property
    def stages(self) -> int:
        return len(self.c)


def _stiffly_accurate(a_last: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """b and b - bhat of a Rodas-type method: y1 = u_s + k_s, the error estimate is k_s."""
    s = len(a_last) + 1
    return tuple(a_last) + (1.0,), (0.0,) * (s - 1) + (1.0,)


def _rodas_tableau(gamma, A, C, c, d, H, order, error_order) -> RosenbrockTableau:
    s = len(c)
    a = tuple(tuple(A[i][:i]) for i in range(s))
    Cr = tuple(tuple(C[i - 1][:i]) if i else () for i in range(s))
    b, be = _stiffly_accurate(tuple(A[s - 1][: s - 1]))
    dense = tuple(tuple(row) for row in H)
    return RosenbrockTableau(gamma, a, Cr, tuple(c), tuple(d), b, be, order, error_order, dense)


RODAS4_TABLEAU = _rodas_tableau(
    0.25,
    A=(
        (),
        (1.544,),
        (0.9466785280815826, 0.2557011698983284),
        (3.314825187068521, 2.896124015972201, 0.9986419139977817),
        (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950),
        (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1.0),
    ),
    C=(
        (-5.6688,),
        (-2.430093356833875, -0.2063599157091915),
        (-0.1073529058151375, -9.594562251023355, -20.47028614809616),
        (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160),
        (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054),
    ),
    c=(0.0, 0.386, 0.21, 0.63, 1.0, 1.0),
    d=(0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0),
    H=(
        (10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823, 1.025137723295662, 0.0),
        (-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386, -6.594389125716872, 0.0),
    ),
    order=4,
    error_order=3,
)

RODAS5P_TABLEAU = _rodas_tableau(
    0.21193756319429014,
    A=(
        (),
        (3.0,),
        (2.849394379747939, 0.45842242204463923),
        (-6.954028509809101, 2.489845061869568, -10.358996098473584),
        (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641),
        (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946),
        (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946, 1.0),
        (
            -7.502846399306121,
            2.561846144803919,
            -11.627539656261098,
            -0.18268767659942256,
            0.030198172008377946,
            1.0,
            1.0,
        ),
    ),
    C=(
        (-14.155112264123755,),
        (-17.97296035885952, -2.859693295451294),
        (147.12150275711716, -1.41221402718213, 71.68940251302358),
        (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306),
        (24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125, -0.6610691825249471),
        (
            30.91273214028599,
            -3.1208243349937974,
            77.79954646070892,
            34.28646028294783,
            -19.097331116725623,
            -28.087943162872662,
        ),
        (
            37.80277123390563,
            -3.2571969029072276,
            112.26918849496327,
            66.9347231244047,
            -40.06618937091002,
            -54.66780262877968,
            -9.48861652309627,
        ),
    ),
    c=(0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664, 1.0, 1.0, 1.0),
    d=(
        0.21193756319429014,
        -0.42387512638858027,
        -0.3384627126235924,
        1.8046452872882734,
        2.325825639765069,
        0.0,
        0.0,
        0.0,
    ),
    H=(
        (
            25.948786856663858,
            -2.5579724845846235,
            10.433815404888879,
            -2.3679251022685204,
            0.524948541321073,
            1.1241088310450404,
            0.4272876194431874,
            -0.17202221070155493,
        ),
        (
            -9.91568850695171,
            -0.9689944594115154,
            3.0438037242978453,
            -24.495224566215796,
            20.176138334709044,
            15.98066361424651,
            -6.789040303419874,
            -6.710236069923372,
        ),
        (
            11.419903575922262,
            2.8879645146136994,
            72.92137995996029,
            80.12511834622643,
            -52.072871366152654,
            -59.78993625266729,
            -0.15582684282751913,
            4.883087185713722,
        ),
    ),
    order=5,
    error_order=4,
)


def _ros3p_tableau() -> RosenbrockTableau:
    gamma = 0.5 + math.sqrt(3.0) / 6.0
    ig = 1.0 / gamma
    c32 = -ig * (2.0 - 0.5 * ig)
    c31 = -ig * (1.0 - c32)
    t = ig * (2.0 / 3.0 - ig / 6.0)
    b = (ig * (1.0 + t), t, ig / 3.0)
    bhat = (2.113248654051871, 1.0, 0.4226497308103742)
    return RosenbrockTableau(
        gamma=gamma,
        a=((), (ig,), (ig, 0.0)),
        C=((), (-ig * ig,), (c31, c32)),
        c=(0.0, 1.0, 1.0),
        d=(0.7886751345948129, -0.2113248654051871, -1.077350269189626),
        b=b,
        b_error=tuple(x - y for x, y in zip(b, bhat)),
        order=3,
        error_order=2,
        dense=None,
    )


ROS3P_TABLEAU = _ros3p_tableau()


@dataclasses.dataclass(frozen=True)
class RosenbrockState:
    """Per-step state: f(t, y), the Jacobian blocks and df/dt at the start of the step, and what the
    solve has learnt so far about taking df/dt of its field (handed on to the next state through the
    step, see :class:`~hybrid_node.solvers.linalg.TimeRoute`)."""

    f0: torch.Tensor
    jac: torch.Tensor
    f_t: torch.Tensor | None
    time_route: TimeRoute = UNPROBED


@dataclasses.dataclass(frozen=True)
class RosenbrockStep:
    """What one Rosenbrock step produced, and the df/dt route of the state it started from (for the next state)."""

    y1: torch.Tensor
    error: torch.Tensor
    ks: tuple[torch.Tensor, ...]
    f0: torch.Tensor
    time_route: TimeRoute = UNPROBED


def _validate(solver: Rosenbrock | Rosenbrock23) -> None:
    """Check a Rosenbrock solver's options.

    Raises:
        ValueError: an unknown Jacobian mode or ``time_derivative``, or a bad ``batch_dims``.
    """
    JacobianSettings(solver.jacobian, solver.batch_dims)  # validates
    if solver.time_derivative not in TIME_DERIVATIVE_MODES:
        raise ValueError(
            f"time_derivative must be one of {TIME_DERIVATIVE_MODES} (exact by autograd, or a forward "
            f"difference), got {solver.time_derivative!r}."
        )


@dataclasses.dataclass(frozen=True, repr=False)
class Rosenbrock(AbstractSolver):
    """A Rosenbrock method given by its tableau (adaptive, with dense output).

    Args:
        tableau: the coefficients.
        name: the method name for ``odeint(method=...)``.
        jacobian: "jacrev", "jacfwd", "loop" or a callable ``jac(t, y)`` (see :class:`JacobianSettings`).
        batch_dims: leading state dimensions that index independent samples (default all but the last).
        autonomous: the field does not depend on t: skip the df/dt evaluation (otherwise df/dt is
            exact by autograd, or a forward difference where autograd cannot follow the field: see
            :func:`~hybrid_node.solvers.linalg.time_derivative`).
        time_derivative: how df/dt is taken (OrdinaryDiffEq's ``autodiff`` / ``AutoFiniteDiff``):
            "autodiff" (default: exact, within the Jacobian's pass for "jacrev" and "jacfwd", with the
            automatic fallback to the difference; see
            :func:`~hybrid_node.solvers.linalg.jacobian_and_time_derivative`) or "fd" (a forward
            difference, one evaluation: for fields autograd cannot follow, or for speed).

    Raises:
        ValueError: an unknown ``jacobian`` or ``time_derivative``, or a bad ``batch_dims``.
    """

    tableau: RosenbrockTableau
    name: str
    jacobian: str | Callable = "jacrev"
    batch_dims: int | None = None
    autonomous: bool = False
    adaptive: bool = True
    time_derivative: str = "autodiff"

    def __post_init__(self):
        _validate(self)

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def error_order(self) -> int:
        return self.tableau.error_order

    def _state(
        self: Rosenbrock | Rosenbrock23, f, t: float, y: torch.Tensor, route: TimeRoute = UNPROBED
    ) -> RosenbrockState:
        """f, the Jacobian and df/dt at (t, y); ``route``: what the solve knew at its previous state."""
        settings = JacobianSettings(self.jacobian, self.batch_dims)
        if self.autonomous:
            f0, jac = block_jacobian(f, t, y, settings)
            return RosenbrockState(f0, jac, None, route)
        return RosenbrockState(*jacobian_and_time_derivative(f, t, y, settings, self.time_derivative, route))

    implicit = True

    def derivative(self, state) -> torch.Tensor:
        return state.f0

    def init(self, f, t0: float, y0: torch.Tensor) -> RosenbrockState:
        """State at the start: f, the Jacobian and df/dt at (t0, y0), knowing nothing yet of the field."""
        return self._state(f, t0, y0)

    def step(self, f, t: float, y: torch.Tensor, state: RosenbrockState, dt: float) -> RosenbrockStep:
        """One step of size dt; the error estimate is the embedded method's difference."""
        tab = self.tableau
        hg = dt * tab.gamma
        lu = _factorize(state.jac, hg, y.shape)
        ks: list[torch.Tensor] = []
        for i in range(tab.stages):
            u = y
            for a, k in zip(tab.a[i], ks):
                if a != 0.0:
                    u = u + a * k
            fi = state.f0 if (i == 0 or (u is y and tab.c[i] == 0.0)) else f(t + tab.c[i] * dt, u)
            rhs = fi
            for cij, k in zip(tab.C[i], ks):
                if cij != 0.0:
                    rhs = rhs + (cij / dt) * k
            if state.f_t is not None and tab.d[i] != 0.0:
                rhs = rhs + (dt * tab.d[i]) * state.f_t
            ks.append(lu.solve(hg * rhs))
        y1 = y
        error = torch.zeros_like(y)
        for b, be, k in zip(tab.b, tab.b_error, ks):
            if b != 0.0:
                y1 = y1 + b * k
            if be != 0.0:
                error = error + be * k
        return RosenbrockStep(y1, error, tuple(ks), state.f0, state.time_route)

    def next_state(self, f, t1: float, step: RosenbrockStep) -> RosenbrockState:
        """A fresh Jacobian at the accepted point (Rosenbrock methods need the exact one)."""
        return self._state(f, t1, step.y1, step.time_route)

    def interpolant(
        self, f, t0: float, y0: torch.Tensor, dt: float, step: RosenbrockStep, state: RosenbrockState
    ) -> Interpolant:
        """The method's continuous extension (Hermite from the end derivatives when it has none)."""
        if self.tableau.dense is None:
            return HermiteInterpolant(y0, step.y1, step.f0, state.f0, dt)
        kd = []
        for row in self.tableau.dense:
            acc = None
            for h, k in zip(row, step.ks):
                if h != 0.0:
                    acc = h * k if acc is None else acc + h * k
            assert acc is not None  # every dense row has a nonzero coefficient
            kd.append(acc)
        return _RodasInterpolant(y0, step.y1, tuple(kd))


def _columns(thetas: Sequence[float], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``theta`` and ``1 - theta`` as (k, 1) columns in ``like``'s dtype and device.

    ``1 - theta`` is formed in float64 before the cast, as Python forms it for a scalar theta, so
    the columns scale rows exactly as the scalars scale the whole state.
    """
    th = np.asarray(thetas, dtype=np.float64).reshape(-1, 1)
    return host_matrix(th, like), host_matrix(1 - th, like)


@dataclasses.dataclass(frozen=True)
class _RodasInterpolant(Interpolant):
    """A Rodas method's dense output ``(1 - theta) y0 + theta (y1 + (1 - theta) sum_i kd_i theta^i)``.

    ``kd``: the step's stages combined with the tableau's dense rows (Hairer and Wanner, Solving ODEs
    II, 2nd ed., Section IV.7).
    """

    y0: torch.Tensor
    y1: torch.Tensor
    kd: tuple[torch.Tensor, ...]

    def __call__(self, theta: float) -> torch.Tensor:
        inner = self.kd[-1]
        for k in reversed(self.kd[:-1]):
            inner = k + theta * inner
        return (1 - theta) * self.y0 + theta * (self.y1 + (1 - theta) * inner)

    def sample_rows(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`~hybrid_node.interpolation.SampleRows.sample_rows`: :meth:`__call__`'s operations on the
        rows, a column of thetas."""
        th, omt = _columns(thetas, self.y0)
        inner = self.kd[-1].reshape(n, -1)[idx]
        for k in reversed(self.kd[:-1]):
            inner = k.reshape(n, -1)[idx] + th * inner
        return omt * self.y0.reshape(n, -1)[idx] + th * (self.y1.reshape(n, -1)[idx] + omt * inner)

    def sample_slopes(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`~hybrid_node.interpolation.SampleRows.sample_slopes`: with ``P(theta) = sum_i kd_i theta^i``
        the output is ``(1 - theta) y0 + theta y1 + theta (1 - theta) P(theta)``, whose derivative is
        ``y1 - y0 + (1 - 2 theta) P + theta (1 - theta) P'`` (Hairer and Wanner, Solving ODEs II, 2nd
        ed., Section IV.7, the Rodas dense output)."""
        th, omt = _columns(thetas, self.y0)
        p = self.kd[-1].reshape(n, -1)[idx]
        dp = torch.zeros_like(p)
        for k in reversed(self.kd[:-1]):  # Horner for P and P' together
            dp = p + th * dp
            p = k.reshape(n, -1)[idx] + th * p
        ends = self.y1.reshape(n, -1)[idx] - self.y0.reshape(n, -1)[idx]
        return ends + (omt - th) * p + th * omt * dp


@dataclasses.dataclass(frozen=True)
class _Rosenbrock23Interpolant(Interpolant):
    """Rosenbrock23's second-order dense output (Shampine and Reichelt, SIAM J. Sci. Comput. 18, 1997).

    ``y(t0 + theta h) = y0 + h (c1(theta) k1 + c2(theta) k2)`` with ``c1 = theta (1 - theta) / (1 - 2d)``
    and ``c2 = theta (theta - 2d) / (1 - 2d)``, ``d = 1 / (2 + sqrt 2)``: the quadratic of the paper's
    Section 4.1 (ode23s) that matches y0, y1 = y0 + h k2 and the W-method's stages.
    """

    y0: torch.Tensor
    k1: torch.Tensor
    k2: torch.Tensor
    dt: float
    d: float

    def _weights(self, theta: float) -> tuple[float, float]:
        """``c1(theta), c2(theta)``, the weights of k1 and k2 at the fraction ``theta`` (Python floats)."""
        return theta * (1 - theta) / (1 - 2 * self.d), theta * (theta - 2 * self.d) / (1 - 2 * self.d)

    def __call__(self, theta: float) -> torch.Tensor:
        c1, c2 = self._weights(theta)
        return self.y0 + self.dt * (c1 * self.k1 + c2 * self.k2)

    def _rows_of(self, idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx`` of k1 and k2, the state seen as ``n`` rows."""
        return self.k1.reshape(n, -1)[idx], self.k2.reshape(n, -1)[idx]

    def sample_rows(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`~hybrid_node.interpolation.SampleRows.sample_rows`: :meth:`__call__`'s operations on the
        rows, each with its own weights (the float64 expressions of :meth:`_weights`)."""
        w = np.array([self._weights(th) for th in thetas], dtype=np.float64).reshape(-1, 2)
        c1, c2 = host_matrix(w[:, :1], self.y0), host_matrix(w[:, 1:], self.y0)
        k1, k2 = self._rows_of(idx, n)
        return self.y0.reshape(n, -1)[idx] + self.dt * (c1 * k1 + c2 * k2)

    def sample_slopes(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`~hybrid_node.interpolation.SampleRows.sample_slopes`: ``h (c1'(theta) k1 + c2'(theta) k2)`` with
        ``c1' = (1 - 2 theta) / (1 - 2d)`` and ``c2' = (2 theta - 2d) / (1 - 2d)`` (Shampine and
        Reichelt 1997, Section 4.1)."""
        th = np.asarray(thetas, dtype=np.float64).reshape(-1, 1)
        scale = 1.0 / (1 - 2 * self.d)
        c1, c2 = host_matrix((1 - 2 * th) * scale, self.y0), host_matrix((2 * th - 2 * self.d) * scale, self.y0)
        k1, k2 = self._rows_of(idx, n)
        return self.dt * (c1 * k1 + c2 * k2)


@dataclasses.dataclass(frozen=True)
class Rosenbrock23Step:
    """What one Rosenbrock23 step produced (its stages k1, k2 feed the dense output), and the df/dt
    route of the state it started from, for the next state."""

    y1: torch.Tensor
    error: torch.Tensor
    k1: torch.Tensor
    k2: torch.Tensor
    f0: torch.Tensor
    time_route: TimeRoute = UNPROBED


@dataclasses.dataclass(frozen=True, repr=False)
class Rosenbrock23(AbstractSolver):
    """Shampine & Reichelt's ode23s: order 2, L-stable, third-order error estimate, second-order dense output.

    Args: as :class:`Rosenbrock` (without a tableau).
    """

    name: str = "rosenbrock23"
    jacobian: str | Callable = "jacrev"
    batch_dims: int | None = None
    autonomous: bool = False
    adaptive: bool = True
    order: int = 2
    error_order: int = 2
    time_derivative: str = "autodiff"

    def __post_init__(self):
        _validate(self)

    _d = 1.0 / (2.0 + math.sqrt(2.0))
    _e32 = 6.0 + math.sqrt(2.0)

    implicit = True

    def derivative(self, state) -> torch.Tensor:
        return state.f0

    def init(self, f, t0, y0) -> RosenbrockState:
        return Rosenbrock._state(self, f, t0, y0)  # same state as the generic methods

    def step(self, f, t, y, state: RosenbrockState, dt) -> Rosenbrock23Step:
        d, e32 = self._d, self._e32
        lu = _factorize(state.jac, dt * d, y.shape)
        f0 = state.f0
        tterm = None if state.f_t is None else (dt * d) * state.f_t
        k1 = lu.solve(f0 if tterm is None else f0 + tterm)
        f1 = f(t + 0.5 * dt, y + (0.5 * dt) * k1)
        k2 = lu.solve(f1 - k1) + k1
        y1 = y + dt * k2
        f2 = f(t + dt, y1)
        rhs = f2 - e32 * (k2 - f1) - 2.0 * (k1 - f0)
        if tterm is not None:
            rhs = rhs + tterm
        k3 = lu.solve(rhs)
        error = (dt / 6.0) * (k1 - 2.0 * k2 + k3)
        return Rosenbrock23Step(y1, error, k1, k2, f0, state.time_route)

    def next_state(self, f, t1, step) -> RosenbrockState:
        return Rosenbrock._state(self, f, t1, step.y1, step.time_route)

    def interpolant(self, f, t0, y0, dt, step: Rosenbrock23Step, state):
        return _Rosenbrock23Interpolant(y0, step.k1, step.k2, dt, self._d)


class Rodas5P(Rosenbrock):
    """Steinebach's Rodas5P: order 5(4), stiffly accurate, L-stable, dense output (``method="rodas5p"``).

    Args:
        **options: settings of :class:`Rosenbrock` (``jacobian``, ``batch_dims``, ...).
    """

    def __init__(self, **options):
        super().__init__(**{"tableau": RODAS5P_TABLEAU, "name": "rodas5p", **options})


class Rodas4(Rosenbrock):
    """Hairer & Wanner's RODAS: order 4(3), stiffly accurate, L-stable, dense output (``method="rodas4"``).

    Args:
        **options: settings of :class:`Rosenbrock` (``jacobian``, ``batch_dims``, ...).
    """

    def __init__(self, **options):
        super().__init__(**{"tableau": RODAS4_TABLEAU, "name": "rodas4", **options})


class ROS3P(Rosenbrock):
    """Lang & Verwer's ROS3P: order 3, A-stable, fixed steps only (``method="ros3p"`` with a ``step_size``).

    Its published embedded weights cannot control the step: with gamma a root of gamma^2 - gamma + 1/6
    and beta_21 = alpha_21 + gamma_21 = 0, every weight vector of order 2 on these three stages also
    meets the linear order-3 condition, so the embedded method has the same stability function as the
    method itself and the estimate is zero on y' = lambda y whatever the step (y' = -20 y on [0, 0.25]
    at rtol 1e-8: 5 steps and -0.042 for 6.7e-3). OrdinaryDiffEq's ROS3P shares the tableau and the
    fault (SciML/OrdinaryDiffEq.jl issue 4291). For adaptive steps use ``rodas4`` or ``rosenbrock23``.

    Args:
        **options: settings of :class:`Rosenbrock` (``jacobian``, ``batch_dims``, ...).

    Raises:
        ValueError: ``adaptive=True``.
    """

    def __init__(self, **options):
        if options.get("adaptive", False):
            raise ValueError(
                "ros3p takes fixed steps only: its embedded error estimate is zero on linear problems, so "
                "adaptive steps grow without control. Give it a step (options={'step_size': h}, or "
                "hn.ConstantStepSize(h)), or use an adaptive Rosenbrock method: 'rodas4' or 'rosenbrock23'."
            )
        super().__init__(**{"tableau": ROS3P_TABLEAU, "name": "ros3p", **options, "adaptive": False})
