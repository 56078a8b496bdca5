"""Variable-step, variable-order multistep methods in Nordsieck form: Adams, BDF and LSODA's switching.

One engine serves the three methods. The solution is carried as the Nordsieck array of a polynomial
``p`` of degree q (the order), ``z = [y, h y', h^2 y''/2!, ..., h^q y^(q)/q!]`` at the current time,
scaled for the step h. A step predicts by re-expanding ``p`` at ``t + h`` (the Pascal matrix), then
corrects with one vector ``e``: ``z1 = z_pred + l e``, where ``l`` (the coefficients of a polynomial
``Lambda``) fixes the family:

- Adams-Moulton of order q: ``Lambda(-1) = 0``, ``Lambda'(-j) = 0`` for j = 1..q-1, so ``p`` keeps the
  last value and the last q derivatives (orders 1-12, corrected by functional iteration: PECE with up
  to ``max_iters`` corrector iterations, as LSODE's Adams mode);
- BDF of order q: ``Lambda(-j) = 0`` for j = 1..q, so ``p`` interpolates the last q+1 values (orders
  1-5, corrected by a quasi-Newton iteration with the LU factors of ``I - l0 h J``, reused across steps
  while ``l0 h`` stays within 30% of the value they were built for and the Jacobian for up to 20 steps).

Both normalise ``Lambda'(0) = 1``, so the corrector equation is ``e = h f(t1, y_pred + l0 e) - (h y')_pred``.
Changing the step rescales column j by ``r^j`` (the fixed-leading-coefficient form of Gear, LSODE and
LSODA); changing the order adds or drops the last column. The step is held for q+1 steps after every
change (so a new order is estimated from equally spaced data), and then step and order come from the
local-error estimates at orders q-1, q and q+1 (from the last column, the correction ``e`` and the
difference of two successive corrections), each with its own exponent: the step-size proposal of a
PID controller, which assumes one fixed order, is replaced through :meth:`AbstractSolver.propose_step`.
The error constants are computed here (:func:`_lte`), not tabulated.

LSODA (``family="lsoda"``) starts with Adams and switches to BDF when the Adams step, at an order of
at most 5, is limited by stability (the step times a Lipschitz estimate from the corrector iteration
reaches the stability bound of the Adams method) and BDF could take a step at least 5 times longer; it
switches back when the Adams step allowed by accuracy and by the spectral bound ``||J||_inf`` is at least
the BDF step. The Nordsieck array is the same polynomial for both families, so a switch only changes the
coefficients.

References:
- Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section III.6 (Nordsieck methods, their
  equivalence with multistep methods) and III.7 (variable order); Hairer & Wanner, Solving ODEs II,
  Section VI.1 (Nordsieck BDF codes) and IV.8 (quasi-Newton, Jacobian and LU reuse).
- A. C. Hindmarsh, "ODEPACK, a systematized collection of ODE solvers", in Scientific Computing (1983)
  (LSODE: step/order selection with the biases 1.2, 1.3, 1.4, the 20-step Jacobian age).
- P. N. Brown, G. D. Byrne, A. C. Hindmarsh, "VODE: a variable-coefficient ODE solver", SIAM J. Sci.
  Stat. Comput. 10 (1989) (Adams and BDF in Nordsieck form, corrector convergence test).
- L. Petzold, "Automatic selection of methods for solving stiff and nonstiff systems of ordinary
  differential equations", SIAM J. Sci. Stat. Comput. 4 (1983) (LSODA's switching; the stability
  bounds of the Adams methods, ``_ADAMS_STABILITY``).
- L. F. Shampine & M. K. Gordon, Computer Solution of Ordinary Differential Equations (1975), Ch. 5-6
  (order selection from the error estimates at the neighbouring orders).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.polynomial import Polynomial

from ..controllers import error_precision, initial_step, rms_norm
from ..interpolation import host_matrix
from .adams import check_max_iters, integer_setting
from .base import AbstractSolver, Field, Interpolant
from .linalg import Factorization, JacobianSettings, block_jacobian, factorize
from .newton import tolerances

MAX_ADAMS_ORDER = 12
MAX_BDF_ORDER = 5
FAMILIES = ("adams", "bdf", "lsoda")
# LSODE's safety biases on the error estimates at orders q, q-1 and q+1 (prefer keeping the order)
_BIAS_DOWN, _BIAS_UP = 1.3, 1.4
# ... and at the same order, per family. Adams keeps LSODE's 1.2. BDF takes 1.3, the margin scipy's BDF
# keeps in effect: safety 0.9 on an estimate of the truncation error, which is alpha_q = 1 + 1/2 + ...
# + 1/q times the local error estimated here, so 0.9^-1 * alpha_q^(1/(q+1)) = 1.25-1.3 at orders 2-5.
# With 1.2, 13% of the BDF steps on Van der Pol (mu=1000) failed the error test while the step shrank
# towards the fast transitions; with 1.3, 11%, with 9% fewer accepted steps (docs/stiff.md).
_BIAS_SAME_ADAMS, _BIAS_SAME_BDF = 1.2, 1.3
_MAX_GROWTH = 10.0  # largest step increase at one change
_MIN_CHANGE = 1.1  # a smaller increase is not worth a rescale (it resets the q+1 step wait)
_MAX_JAC_AGE = 20  # steps a Jacobian is kept at most (LSODE's MSBP)
_LU_DRIFT = 0.3  # refactor when l0 h moved more than this fraction from the factored value
# Petzold (1983), LSODA: the step of Adams order q times ||J|| must stay below this for stability.
_ADAMS_STABILITY = (0.5, 0.575, 0.55, 0.45, 0.35, 0.25, 0.2, 0.15, 0.1, 0.075, 0.05, 0.025)
_SWITCH_RATIO = 5.0  # BDF must promise this much longer steps before LSODA leaves Adams
SWITCH_WAIT = 20  # steps between two LSODA switches
# Adams steps in a row at 90% of the stability bound that make LSODA switch to BDF in any case: there
# the error estimate carries the weakly damped stiff mode, so the BDF step predicted from it is too short
_LIMITED_STEPS = 10


def _adams_lambda(q: int) -> Polynomial:
    """Lambda of Adams-Moulton order q: Lambda' vanishes at -1..-(q-1), Lambda(-1) = 0, Lambda'(0) = 1."""
    d = Polynomial([1.0])
    for j in range(1, q):
        d = d * Polynomial([float(j), 1.0])
    d = d / d(0.0)
    return d.integ(lbnd=-1.0)


def _bdf_lambda(q: int) -> Polynomial:
    """Lambda of BDF order q: Lambda vanishes at -1..-q, Lambda'(0) = 1."""
    p = Polynomial([1.0])
    for j in range(1, q + 1):
        p = p * Polynomial([float(j), 1.0])
    return p / p.deriv()(0.0)


def _lte(family: str, q: int) -> tuple[float, float]:
    """The local error and the correction ``e`` of one unit step on ``y = s^(q+1)/(q+1)!`` (y^(q+1) = 1).

    The history polynomial is the one the method itself keeps (Adams: the value at -1 and the
    derivatives at -1..-q; BDF: the values at -1..-(q+1)), taken from the exact solution; the step to 0
    then errs by ``C h^(q+1) y^(q+1)`` and corrects by ``e = E h^(q+1) y^(q+1)`` (the field depends on t
    only, so the corrector is exact). Returns ``(|C|, |E|)``: the estimate of the local error is
    ``(C / E) e``.
    """
    y = Polynomial([0.0] * (q + 1) + [1.0 / math.factorial(q + 1)])
    dy = y.deriv()
    rows, rhs = [], []
    powers = range(q + 1)
    if family == "adams":
        rows.append([(-1.0) ** i for i in powers])
        rhs.append(y(-1.0))
        for j in range(q):
            s = -1.0 - j
            rows.append([i * s ** (i - 1) if i else 0.0 for i in powers])
            rhs.append(dy(s))
        lam = _adams_lambda(q)
    else:
        for j in range(q + 1):
            s = -1.0 - j
            rows.append([s**i for i in powers])
            rhs.append(y(s))
        lam = _bdf_lambda(q)
    coef = np.linalg.solve(np.array(rows), np.array(rhs))
    e = dy(0.0) - coef[1]
    lte = coef[0] + lam.coef[0] * e - y(0.0)
    return abs(float(lte)), abs(float(e))


@dataclasses.dataclass(frozen=True)
class _Family:
    """The coefficients of one family, index q for order q (index 0 unused)."""

    name: str
    max_order: int
    l: tuple[tuple[float, ...], ...]  # noqa: E741 - the literature's name
    lte: tuple[float, ...]  # |C_q|: local error per h^(q+1) y^(q+1)
    e: tuple[float, ...]  # |E_q|: correction per h^(q+1) y^(q+1)
    bias: float  # the safety bias on the estimate at the same order

    @functools.cached_property
    def const(self) -> tuple[float, ...]:
        """Local error estimate per unit correction, C_q / E_q."""
        return tuple(c / e if e else 0.0 for c, e in zip(self.lte, self.e))


def _family(name: str, max_order: int) -> _Family:
    lam = _adams_lambda if name == "adams" else _bdf_lambda
    ls: list[tuple[float, ...]] = [()]
    lte: list[float] = [0.0]
    es: list[float] = [0.0]
    # one order beyond the last: the estimate at order q+1 needs its error constant
    for q in range(1, max_order + 2):
        coef = lam(q).coef
        ls.append(tuple(float(c) for c in coef) + (0.0,) * (q + 1 - len(coef)))
        c, e = _lte(name, q)
        lte.append(c)
        es.append(e)
    bias = _BIAS_SAME_ADAMS if name == "adams" else _BIAS_SAME_BDF
    return _Family(name, max_order, tuple(ls), tuple(lte), tuple(es), bias)


ADAMS = _family("adams", MAX_ADAMS_ORDER)
BDF_FAMILY = _family("bdf", MAX_BDF_ORDER)


@functools.lru_cache(maxsize=256)
def _constant(values: tuple[float, ...], shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
    """``values`` as a tensor of ``shape``, made once per key: the Nordsieck constants are the same
    every step, and building them anew took about a tenth of a step's time."""
    return torch.tensor(values, dtype=dtype, device=device).reshape(shape)


@functools.lru_cache(maxsize=64)
def _pascal(q: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (q+1) x (q+1) matrix that re-expands a Nordsieck array one step ahead: P_ij = C(j, i)."""
    p = [[float(math.comb(j, i)) if j >= i else 0.0 for j in range(q + 1)] for i in range(q + 1)]
    return torch.tensor(p, dtype=dtype, device=device)


def _column(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """``values`` as a tensor that broadcasts along the Nordsieck array's leading dimension."""
    return _constant(tuple(values), (len(values),) + (1,) * (like.dim() - 1), like.dtype, like.device)


def _powers(r: float, q: int, like: torch.Tensor) -> torch.Tensor:
    """``[1, r, ..., r^q]`` broadcasting along the Nordsieck array's leading dimension (a step rescale)."""
    return torch.pow(r, _column(tuple(float(j) for j in range(q + 1)), like))


def _rms(x: torch.Tensor, scale: torch.Tensor) -> float:
    """The weighted RMS norm of the error control (a host float: it only steers decisions)."""
    # detached operands build no graph (a no_grad block cost as much as the norm itself here)
    return float(torch.linalg.vector_norm(x.detach() / scale)) / math.sqrt(max(x.numel(), 1))


def _factor(err: float, exponent: int, bias: float) -> float:
    """LSODE's step ratio for an error estimate ``err`` of a method whose error is O(h^exponent)."""
    if not math.isfinite(err):
        return 0.0
    return 1.0 / (bias * err ** (1.0 / exponent) + bias * 1e-6)


def count_switch(f: Any) -> None:
    """Count one switch between the non-stiff and the stiff family (reported as ``stats.n_switches``)."""
    if hasattr(f, "n_switches"):
        f.n_switches += 1


@dataclasses.dataclass(frozen=True)
class NordsieckState:
    """Everything a multistep solve carries between steps.

    Attributes:
        z: the Nordsieck array, shape (order + 1, *y.shape), scaled for the step ``h``.
        h: the step ``z`` is scaled for (the last step taken).
        order: the order of the next step.
        stiff: the family of the next step is BDF (else Adams).
        n_same: steps taken with this step size and order (a change is considered after order + 1).
        e_prev: the last correction when it was taken with the same step and order (order increase).
        jac, jac_age, lu: the Jacobian blocks, the steps since they were evaluated, the LU factors.
        factor: the step change this method asks for: next step = factor * last step.
        n_fail: rejected attempts since the step size last held for two accepted steps (not only
            consecutive ones: see :meth:`Nordsieck.next_state`).
        rho: the last stiffness estimate (a bound on the Jacobian's spectral radius; LSODA).
        since_switch: steps since the last switch of family (LSODA).
        n_limited: Adams steps in a row limited by the stability bound (LSODA).
        restart_step: a state from :meth:`Nordsieck.init` that no step has left yet: its first step, the
            initial-step heuristic from its point (evaluated when asked for: one evaluation of f).
    """

    z: torch.Tensor
    h: float
    order: int
    stiff: bool
    n_same: int = 0
    e_prev: torch.Tensor | None = None
    jac: torch.Tensor | None = None
    jac_age: int = 0
    lu: Factorization | None = None
    factor: float = 1.0
    n_fail: int = 0
    rho: float = 0.0
    since_switch: int = 0
    n_limited: int = 0
    restart_step: Callable[[], float] | None = None


@dataclasses.dataclass(frozen=True)
class NordsieckStep:
    """One attempted step: the result, its error estimate and what the next state is built from.

    ``start`` is the state the attempt started from, rescaled to ``dt`` and with any Jacobian and LU
    factors evaluated during the attempt; ``converged`` is False when the corrector failed (the error is
    then infinite, so the loop rejects the step).
    """

    y1: torch.Tensor
    error: torch.Tensor
    z: torch.Tensor
    e: torch.Tensor
    start: NordsieckState
    dt: float
    converged: bool
    rho: float | None


@dataclasses.dataclass(frozen=True)
class NordsieckInterpolant(Interpolant):
    """Dense output of a multistep step: the method's own polynomial, ``y(t1 + s h) = sum_j z_j s^j``.

    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, Section III.6 (the Nordsieck vector as the
    derivatives of the interpolation polynomial); its order is the order of the step.
    """

    z: torch.Tensor

    def __call__(self, theta: float) -> torch.Tensor:
        s = theta - 1.0
        out = self.z[-1]
        for zj in reversed(self.z[:-1].unbind(0)):
            out = zj + s * out
        return out

    def many(self, thetas) -> torch.Tensor:
        """The dense output at several thetas at once, shape (len(thetas), *z.shape[1:]).

        Horner's scheme on all thetas together, with ``s = theta - 1`` as a column: the same
        operations as :meth:`__call__` and :meth:`sample_rows`, so all three agree to the last bit.
        """
        s = self._s(thetas).reshape((-1,) + (1,) * (self.z.dim() - 1))
        out = self.z[-1].unsqueeze(0)
        for zj in reversed(self.z[:-1].unbind(0)):
            out = zj + s * out
        shape = (s.shape[0],) + tuple(self.z.shape[1:])
        return out if out.shape == shape else out.expand(shape).clone()  # a constant: one row per theta

    def sample_rows(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`~hybrid_node.interpolation.SampleRows.sample_rows`: Horner's scheme of :meth:`many` on the rows."""
        return self.sample_reader(idx, n)(thetas)

    def sample_reader(self, idx: torch.Tensor, n: int) -> Callable[[Sequence[float]], torch.Tensor]:
        """:meth:`~hybrid_node.interpolation.SampleReader.sample_reader`: the rows' Nordsieck coefficients
        gathered once; each read is the Horner pass of :meth:`sample_rows` on them."""
        z = self.z.reshape(self.z.shape[0], n, -1).index_select(1, idx).unbind(0)  # order + 1 of (k, m)
        top, rest = z[-1], z[-2::-1]

        def read(thetas: Sequence[float]) -> torch.Tensor:
            s = self._s(np.asarray(thetas, dtype=np.float64).reshape(-1, 1))  # a column, made on the host
            out = top
            for zj in rest:
                out = zj + s * out
            return out

        return read

    def sample_slopes(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`~hybrid_node.interpolation.SampleRows.sample_slopes`: ``sum_j j z_j s^(j-1)``, the derivative
        of the step's polynomial (Hairer, Nørsett, Wanner, Solving ODEs I, Section III.6)."""
        z = self.z.reshape(self.z.shape[0], n, -1)[:, idx]
        s = self._s(thetas).unsqueeze(1)
        out = torch.zeros_like(z[0])
        for j in range(z.shape[0] - 1, 0, -1):
            out = j * z[j] + s * out
        return out

    def _s(self, thetas: Sequence[float] | np.ndarray) -> torch.Tensor:
        """``theta - 1`` for each theta, formed in float64 as :meth:`__call__` forms it, in the array's dtype."""
        return host_matrix(np.asarray(thetas, dtype=np.float64) - 1.0, self.z)


@dataclasses.dataclass(frozen=True, repr=False)
class Nordsieck(AbstractSolver):
    """Variable-step, variable-order Adams, BDF or LSODA-switching multistep method (Nordsieck form).

    Args:
        family: "adams" (orders 1-12, functional iteration), "bdf" (orders 1-5, quasi-Newton) or
            "lsoda" (Adams, switching to BDF and back by stiffness detection).
        max_order: the highest order (default the family's: 12 for Adams, 5 for BDF).
        min_order: the lowest order (1; equal to ``max_order`` it fixes the order, for tests).
        max_iters: corrector iterations per attempt (3, as LSODE).
        jacobian, batch_dims: how BDF obtains the Jacobian blocks (:class:`~.linalg.JacobianSettings`).
        rtol, atol: the solve's tolerances (scalars), which the corrector test and the order selection
            use (the loop passes the controller's through :meth:`with_tolerances`).
        norm: the error norm on the scaled error ``x / (atol + rtol |y|)`` that the corrector test and the
            step and order selection use: the one the loop accepts steps with (:meth:`with_tolerances`);
            None is the RMS norm, the loop's default for a tensor state.
        name: the method name.

    Raises:
        ValueError: an unknown family, or orders outside the family's range.

    References: see the module docstring (Hairer-Nørsett-Wanner III.6; Hindmarsh 1983; Brown, Byrne &
    Hindmarsh 1989; Petzold 1983).
    """

    family: str = "adams"
    max_order: int | None = None
    min_order: int = 1
    max_iters: int = 3
    jacobian: str | Callable = "jacrev"
    batch_dims: int | None = None
    rtol: float = 1e-7
    atol: float = 1e-9
    norm: Callable[[torch.Tensor], Any] | None = None
    name: str = "adams"
    #: the PIDController fields it reads: the tolerances, the step bounds and limit, the norm and the loop
    #: strategies (which refuse it themselves); not the step-size formula's settings (safety, ifactor,
    #: dfactor, pcoeff, icoeff, dcoeff) nor the two rules that bound its proposal (shrink_after_accept,
    #: grow_after_reject): its own step and order replace that proposal (:meth:`propose_step`)
    controller_reads: ClassVar[frozenset[str] | None] = frozenset(
        {"rtol", "atol", "first_step", "min_step", "max_step", "max_num_steps", "norm"}
        | {"per_sample", "device_loop", "sync_every"}
    )

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}.")
        top = MAX_BDF_ORDER if self.family == "bdf" else MAX_ADAMS_ORDER
        mo = top if self.max_order is None else integer_setting(self, "max_order")
        if mo is None or not 1 <= mo <= top:
            raise ValueError(f"max_order for {self.name!r} must be an int from 1 to {top}, got {self.max_order!r}.")
        min_order = integer_setting(self, "min_order")
        if min_order is None or not 1 <= min_order <= mo:
            raise ValueError(f"min_order must be an int from 1 to max_order={mo}, got {self.min_order!r}.")
        check_max_iters(self)
        JacobianSettings(self.jacobian, self.batch_dims)  # validates
        if self.family == "adams" and (self.jacobian != "jacrev" or self.batch_dims is not None):
            # Adams iterates its corrector without a Jacobian: these were accepted and never read
            raise ValueError(
                f"{self.name!r} (Adams, functional iteration) uses no Jacobian, so jacobian and batch_dims have "
                "no effect on it; drop them, or use 'bdf' or 'lsoda', whose stiff phase uses them."
            )

    @property
    def implicit(self) -> bool:  # type: ignore[override]
        """BDF and LSODA solve their corrector with Jacobians (Adams iterates without one)."""
        return self.family != "adams"

    @property
    def order(self) -> int:
        """The highest order the method reaches."""
        return self._top(self.family != "adams")

    @property
    def error_order(self) -> int:
        """The order the method starts with (for the first step); later steps set their own."""
        return self.min_order

    def _top(self, stiff: bool) -> int:
        top = MAX_BDF_ORDER if stiff else MAX_ADAMS_ORDER
        return min(top, self.max_order) if self.max_order is not None else top

    def with_tolerances(self, rtol: Any, atol: Any, norm: Callable[[torch.Tensor], Any] | None = None) -> Nordsieck:
        """This method with the solve's (smallest) tolerances and error norm for its corrector test and its
        step and order selection.

        Args:
            rtol, atol: the solve's tolerances (the smallest value of each where they vary).
            norm: the norm the loop accepts steps with (a tuple state's largest RMS of its parts, an
                adjoint's mixed norm, the user's); None keeps this method's.

        Returns:
            The method with those settings.
        """
        scalars = tolerances(rtol, atol)
        r, a = scalars if scalars is not None else (self.rtol, self.atol)
        return dataclasses.replace(self, rtol=r, atol=a, norm=self.norm if norm is None else norm)

    def with_norm(self, norm: Callable[[torch.Tensor], Any]) -> Nordsieck:
        """This method with the loop's error norm for its step and order selection (see :meth:`_norm`).

        Args:
            norm: the norm the loop accepts steps with.

        Returns:
            The method with that norm (itself when it has it already).
        """
        return self if norm is self.norm else dataclasses.replace(self, norm=norm)

    def _weights(self, y: torch.Tensor) -> torch.Tensor:
        """The error weights ``atol + rtol |y|`` (detached), in float32 for a half-precision state.

        In float16 ``atol = 1e-9`` rounds to 0 and the weighted norms overflow beyond 65504: the
        corrector test came out NaN and a solve whose tolerances were too tight for the dtype failed
        as a Newton failure (:func:`~hybrid_node.controllers.error_precision`).

        Args:
            y: the state the weights are taken at.

        Returns:
            The weights, of ``y``'s shape (float32 for float16 or bfloat16, else ``y``'s dtype).
        """
        return self.atol + self.rtol * error_precision(y.detach()).abs()

    def _norm(self, x: torch.Tensor, scale: torch.Tensor) -> float:
        """The error measure of ``x`` weighted by ``scale``, in the loop's norm (a host float).

        Step and order come from these estimates: in another norm than the loop's acceptance test the
        method plans steps the loop rejects (a tuple state of an oscillator (2 elements) and 50 slowly
        decaying ones at rtol 1e-10: the RMS over all 52 took the oscillator's error for 5x smaller
        than the loop's largest RMS of the parts, and the failures sent the order back to one again
        and again: 19000 evaluations where the oscillator alone takes 413, 240x its error).
        """
        if self.norm is None:
            return _rms(x, scale)
        with torch.no_grad():
            return float(self.norm(x.detach() / scale))

    # ------------------------------------------------------------------ the solver interface

    def init(self, f: Field, t0: float, y0: torch.Tensor) -> NordsieckState:
        """Order-one start (a restart too): ``z = [y0, f(t0, y0)]`` scaled for a unit step.

        A restart (after ``jump_t``, an event, an adjoint's output impulse) is a new initial value
        problem, and its first step is chosen as a solve's first one: :meth:`propose_step` gives the
        initial-step heuristic from (t0, y0) (Hairer-Nørsett-Wanner I, II.4, as the loop's first step;
        LSODE, VODE and scipy's solvers, restarted, also estimate a new one). The step before the
        restart, which the loop proposes, was chosen for the old history at up to order 12: at order
        one it failed two or three times in a row, and the third failure cut it to a tenth (VdP,
        ``odeint_adjoint`` with 41 outputs: every one of the 39 restarts of the backward solve began
        with a rejected step, 118 rejections where a fresh estimate has 12, and 30% more evaluations).

        Args:
            f: the field (after a jump, its right limit).
            t0, y0: the (re)start point.

        Returns:
            The state at order ``min_order``; the heuristic runs only where :meth:`propose_step` asks for it
            (a solve's first step is the loop's own).
        """
        f0 = f(t0, y0)
        z = torch.stack([y0, f0])
        q = self.min_order
        if q > 1:  # a fixed higher order starts from a history without curvature (tests give exact ones)
            z = torch.cat([z, torch.zeros((q - 1,) + tuple(y0.shape), dtype=y0.dtype, device=y0.device)])
        norm = self.norm if self.norm is not None else rms_norm

        def restart_step() -> float:
            # the loop's first step (:func:`~hybrid_node.loop.host.first_step`) at order q, f0 reused
            return initial_step(f, t0, y0, f0, q, self.rtol, self.atol, norm)

        return NordsieckState(z, 1.0, q, stiff=self.family == "bdf", restart_step=restart_step)

    def derivative(self, state: NordsieckState) -> torch.Tensor:
        """f at the state's point: the Nordsieck array's first derivative column."""
        return state.z[1] / state.h

    def step(self, f: Field, t: float, y: torch.Tensor, state: NordsieckState, dt: float) -> NordsieckStep:
        """Predict with the Nordsieck polynomial, correct (iteration or quasi-Newton), estimate the error."""
        s = self._rescaled(state, dt)
        if s.restart_step is not None:  # a step was chosen: the next comes from this one's estimates
            s = dataclasses.replace(s, restart_step=None)
        q = s.order
        fam = BDF_FAMILY if s.stiff else ADAMS
        z0 = (_pascal(q, s.z.dtype, s.z.device) @ s.z.reshape(q + 1, -1)).reshape(s.z.shape)
        t1 = t + dt
        ewt = self._weights(y)
        e, converged, s, rho = self._correct(f, t1, dt, z0, s, ewt, fam)
        if not converged:
            inf = torch.full_like(y, math.inf)
            return NordsieckStep(y, inf, z0, e, s, dt, False, rho)
        z1 = z0 + _column(fam.l[q], z0) * e
        return NordsieckStep(z1[0], fam.const[q] * e, z1, e, s, dt, True, rho)

    def next_state(self, f: Field, t1: float, step: NordsieckStep) -> NordsieckState:
        """The state after an accepted step: the order and the step factor for the next step."""
        s = step.start
        q = s.order
        fam = BDF_FAMILY if s.stiff else ADAMS
        ewt = self._weights(step.y1)
        n_same = s.n_same + 1
        rho = step.rho if step.rho is not None else s.rho
        # Failures are forgotten only once a step has been repeated with the same size (n_same >= 2),
        # not at the first acceptance after a rejection (issue 21). A fixed-leading-coefficient Nordsieck
        # array whose high columns carry noise of the size of the tolerance (tight rtol, order 7-9) gets
        # through the first, shrunken step (the rescale damps column j by r^j) and fails the next one at
        # the same size, where the Nordsieck map amplifies that noise again (its transient growth before
        # the q-step decay of the Adams parasitic modes); reset after every acceptance, the counter never
        # reached the order reduction and order-one restart of ``reject`` and the step shrank by ~0.77
        # per pair of attempts down to underflow. LSODE's restart after repeated failures (Hindmarsh
        # 1983) relies on that count; VODE avoids the noise with variable coefficients instead (Brown,
        # Byrne & Hindmarsh 1989; Hairer-Nørsett-Wanner I, III.7 on the instability of rescaling).
        new = dataclasses.replace(
            s,
            z=step.z,
            h=step.dt,
            n_same=n_same,
            e_prev=step.e,
            jac_age=s.jac_age + 1,
            factor=1.0,
            n_fail=0 if n_same >= 2 else s.n_fail,
            rho=rho,
            since_switch=s.since_switch + 1,
            n_limited=s.n_limited + 1 if not s.stiff and rho * step.dt >= 0.9 * _ADAMS_STABILITY[q - 1] else 0,
        )
        err = self._norm(fam.const[q] * step.e, ewt)
        r_same = _factor(err, q + 1, fam.bias)
        if self.family == "lsoda" and new.since_switch >= SWITCH_WAIT:
            # checked after every step: a stiff problem under Adams rejects often, so that the
            # q+1 equal steps the order selection waits for may never come
            switched = self._switch(f, new, step, r_same, ewt)
            if switched is not None:
                return switched
        stable = self.family == "lsoda" and not s.stiff and rho > 0.0
        if stable and rho * step.dt > _ADAMS_STABILITY[q - 1]:
            # LSODA keeps the Adams step inside its stability bound (else the corrector diverges, or the
            # error estimate fills with the unstable mode), so that stiffness shows as a limited step
            r_stab = _ADAMS_STABILITY[q - 1] / (rho * step.dt)
            if q > self.min_order:
                # ... and lowers the order where the lower order's larger bound allows a longer step (as
                # its order selection, which takes each order's bound, would): the clamp changes the step,
                # so the q+1 equal steps that order selection waits for never came, and the order stayed
                # where it was (HIRES: 7000 steps at order 6 at its bound, beyond LSODA's switch test)
                err_down = self._norm(fam.lte[q - 1] * math.factorial(q) * step.z[q], ewt)
                r_down = min(_factor(err_down, q, _BIAS_DOWN), _ADAMS_STABILITY[q - 2] / (rho * step.dt))
                if r_down > r_stab:
                    z = step.z[:q]
                    factor = min(r_down, _MAX_GROWTH)
                    return dataclasses.replace(new, z=z, order=q - 1, n_same=0, e_prev=None, factor=factor)
            return dataclasses.replace(new, n_same=0, e_prev=None, factor=r_stab)
        if n_same < q + 1:  # hold the step: the estimates at other orders need equal spacing
            return new
        r_down = 0.0
        if q > self.min_order:
            err_down = self._norm(fam.lte[q - 1] * math.factorial(q) * step.z[q], ewt)
            r_down = _factor(err_down, q, _BIAS_DOWN)
        r_up = 0.0
        if q < self._top(s.stiff) and s.e_prev is not None:
            err_up = self._norm(fam.lte[q + 1] * (step.e - s.e_prev) / fam.e[q], ewt)
            r_up = _factor(err_up, q + 2, _BIAS_UP)
        if stable:  # each candidate order within its own stability bound
            r_down = min(r_down, _ADAMS_STABILITY[max(q - 2, 0)] / (rho * step.dt))
            r_same = min(r_same, _ADAMS_STABILITY[q - 1] / (rho * step.dt))
            r_up = min(r_up, _ADAMS_STABILITY[min(q, MAX_ADAMS_ORDER - 1)] / (rho * step.dt))
        best = max(r_same, r_down, r_up)
        if best < _MIN_CHANGE:
            return new
        order = q + 1 if best == r_up else (q - 1 if best == r_down and r_down > r_same else q)
        z = step.z
        if order > q:  # the new column approximates h^(q+1) y^(q+1) / (q+1)!
            z = torch.cat([z, (step.e / (fam.e[q] * math.factorial(q + 1))).unsqueeze(0)])
        elif order < q:
            z = z[: order + 1]
        return dataclasses.replace(new, z=z, order=order, n_same=0, e_prev=None, factor=min(best, _MAX_GROWTH))

    def reject(self, f: Field, t: float, y: torch.Tensor, state: NordsieckState, step: NordsieckStep) -> NordsieckState:
        """The state to retry from: a smaller step (and order after repeated failures), LSODE's rules.

        A corrector failure retries with a quarter of the step (the attempt already refreshed the
        Jacobian); an error-test failure with the step its estimate allows (at most 0.9, at least 0.2
        of it), after two failures also at order q-1 where that allows more, and after three at order
        one from a fresh derivative with a tenth of the step. Failures count until a step size has held
        for two accepted steps, so alternating reject/accept pairs also reach the restart.
        """
        s = step.start
        q = s.order
        fam = BDF_FAMILY if s.stiff else ADAMS
        n_fail = s.n_fail + 1
        rho = max(s.rho, step.rho) if step.rho is not None else s.rho
        base = dataclasses.replace(s, n_same=0, e_prev=None, n_fail=n_fail, lu=None, rho=rho)
        if not step.converged:
            return dataclasses.replace(base, factor=0.25)
        ewt = self._weights(y)
        err = self._norm(step.error, ewt)
        factor = min(0.9, max(0.2, _factor(err, q + 1, fam.bias)))
        order = q
        z = s.z
        if n_fail >= 3:
            order, factor = self.min_order, 0.1
            fy = f(t, y)
            z = torch.stack([y, s.h * fy])
            if order > 1:
                z = torch.cat([z, s.z[2 : order + 1]])
        elif n_fail >= 2 and q > self.min_order:
            r_down = _factor(self._norm(fam.lte[q - 1] * math.factorial(q) * s.z[q], ewt), q, _BIAS_DOWN)
            if r_down > factor:
                order, factor = q - 1, min(0.9, max(0.2, r_down))
                z = s.z[: order + 1]
        return dataclasses.replace(base, z=z, order=order, factor=factor)

    def propose_step(self, state: NordsieckState, dt: float, proposal: float) -> float:
        """The method's own step: its order selection fixed ``state.factor`` (the controller's is ignored);
        from a restart, the initial-step heuristic (:meth:`init`)."""
        if state.restart_step is not None:
            return state.restart_step()
        return dt * state.factor

    def interpolant(
        self, f: Field, t0: float, y0: torch.Tensor, dt: float, step: NordsieckStep, next_state: Any
    ) -> NordsieckInterpolant:
        """The step's Nordsieck polynomial at its end (order q dense output over the step)."""
        return NordsieckInterpolant(step.z)

    # ------------------------------------------------------------------ internals

    def _rescaled(self, state: NordsieckState, dt: float) -> NordsieckState:
        """The state with its Nordsieck array rescaled from step ``state.h`` to ``dt`` (column j by r^j)."""
        r = dt / state.h
        if abs(r - 1.0) <= 1e-12:
            return state
        z = state.z * _powers(r, state.order, state.z)
        return dataclasses.replace(state, z=z, h=dt, n_same=0, e_prev=None)

    def _correct(self, f: Field, t1: float, dt: float, z0: torch.Tensor, s: NordsieckState, ewt, fam: _Family):
        """Solve ``e = h f(t1, y_pred + l0 e) - (h y')_pred`` by functional iteration (Adams) or
        quasi-Newton with ``(I - l0 h J)`` (BDF).

        The iteration stops when the estimated remaining error of the correction, ``|de| min(1, 1.5
        rate)``, is below 0.5/(q+2) of the tolerance in the units of the local-error estimate (Brown,
        Byrne & Hindmarsh 1989), and fails after ``max_iters`` iterations or when it diverges. BDF with
        a Jacobian older than this attempt evaluates a fresh one (at the prediction) and tries again.

        Returns:
            ``(e, converged, state, rho)``: the correction, whether it converged, the state with the
            Jacobian and LU factors used, and a stiffness estimate (None when this attempt gave none).
        """
        q = s.order
        l0 = fam.l[q][0]
        const = fam.const[q]
        conit = 0.5 / (q + 2)
        y_pred = z0[0]
        eps = torch.finfo(y_pred.dtype).eps
        floor = 100.0 * eps / max(self.rtol, eps)
        rho: float | None = None
        fresh = False
        e = y_pred  # replaced by the first iteration (max_iters >= 1)
        for _ in range(2):
            f_pred = None
            if s.stiff:
                if s.jac is None or s.jac_age >= _MAX_JAC_AGE:
                    settings = JacobianSettings(self.jacobian, self.batch_dims)
                    f_pred, jac = block_jacobian(f, t1, y_pred, settings, differentiable=False)
                    with torch.no_grad():  # the inf-norm bounds the spectral radius (LSODA's test)
                        rho = float(jac.detach().abs().sum(-1).max()) if jac.numel() else 0.0
                    s = dataclasses.replace(s, jac=jac, jac_age=0, lu=None)
                    fresh = True
                scale = l0 * dt
                if s.jac is not None and (s.lu is None or abs(scale / s.lu.scale - 1.0) > _LU_DRIFT):
                    s = dataclasses.replace(s, lu=factorize(s.jac, scale, y_pred.shape))
            y = y_pred
            prev = None
            rate = 0.7  # LSODE's initial convergence-rate guess
            converged = False
            for m in range(self.max_iters):
                fy = f_pred if (m == 0 and f_pred is not None) else f(t1, y)
                r = dt * fy - z0[1] if m == 0 else dt * fy - z0[1] - e  # the correction starts at zero
                de = s.lu.solve(r) if s.stiff and s.lu is not None else r
                e = de if m == 0 else e + de
                dnorm = self._norm(de, ewt)
                if not math.isfinite(dnorm):
                    break
                if prev is not None and prev > 0:
                    ratio = dnorm / prev
                    rate = max(0.2 * rate, ratio)
                    if not s.stiff:  # |d(h f)| / |dy| = ratio / (h l0): a Lipschitz estimate
                        rho = ratio / (dt * l0)
                if dnorm * min(1.0, 1.5 * rate) * const <= conit or dnorm <= floor:
                    converged = True
                    break
                if prev is not None and dnorm > 2.0 * prev:
                    break  # diverging
                prev = dnorm
                y = y_pred + l0 * e
            if converged or not s.stiff or fresh:
                return e, converged, s, rho
            s = dataclasses.replace(s, jac=None, lu=None)
        return e, False, s, rho

    def _switch(self, f: Field, new: NordsieckState, step: NordsieckStep, r_same: float, ewt) -> NordsieckState | None:
        """LSODA's method switch after an accepted step, or None to stay (Petzold 1983).

        Both families' steps are estimated from the same derivative estimate ``h^(q+1) y^(q+1)``
        (the correction divided by its constant): the accuracy-limited step of each family at the
        same order (BDF at most 5) and, for Adams, the stability limit ``bound_q / rho``.
        """
        q = new.order
        rho = new.rho
        dt = step.dt
        fam = BDF_FAMILY if new.stiff else ADAMS
        deriv = step.e / fam.e[q]  # ~ h^(q+1) y^(q+1)
        if not new.stiff:
            if rho <= 0.0 or q > MAX_BDF_ORDER:
                # LSODA tests for a switch to BDF only at Adams orders up to 5 (Petzold 1983; DSTODA's
                # "IF (NQ .GT. 5) GO TO 488"): a stiff problem drives Adams to the low orders, whose
                # stability bounds are the largest, while a non-stiff one at a tight tolerance runs at a
                # high order whose small bound limits the step too (the harmonic oscillator at rtol 1e-10:
                # order 9, rho * dt at the bound), and switching there only traded Adams for a BDF that
                # is slower and less accurate on oscillations (6 switches, 130x the tolerance)
                return None
            h_bdf = dt * _factor(self._norm(BDF_FAMILY.lte[q] * deriv, ewt), q + 1, BDF_FAMILY.bias)
            h_stab = _ADAMS_STABILITY[q - 1] / rho
            h_adams = min(dt * r_same, h_stab)
            limited = new.n_limited >= _LIMITED_STEPS
            if h_bdf <= _SWITCH_RATIO * h_adams and not limited:
                return None
            count_switch(f)
            factor = min(max(h_bdf / dt, 1.0), _MAX_GROWTH)
            return dataclasses.replace(
                new, stiff=True, n_same=0, e_prev=None, factor=factor, since_switch=0, n_limited=0
            )
        if new.jac is None or rho <= 0.0:
            return None
        h_acc = dt * _factor(self._norm(ADAMS.lte[q] * deriv, ewt), q + 1, ADAMS.bias)
        h_adams = min(h_acc, _ADAMS_STABILITY[q - 1] / rho)
        h_bdf = dt * r_same
        if h_adams < h_bdf:
            return None
        count_switch(f)
        factor = min(max(h_adams / dt, 0.2), _MAX_GROWTH)
        return dataclasses.replace(
            new, stiff=False, n_same=0, e_prev=None, factor=factor, since_switch=0, jac=None, lu=None
        )


def _settings(family: str, name: str, options: dict) -> dict:
    return {"family": family, "name": name, **options}


class VariableAdams(Nordsieck):
    """Variable-step, variable-order Adams-Bashforth-Moulton (``method="adams"``), orders 1-12.

    The predictor is the Nordsieck polynomial extrapolated (Adams-Bashforth in effect), the corrector
    Adams-Moulton by functional iteration (PECE with up to ``max_iters`` corrections); the error estimate
    is the predictor-corrector difference times the method's error constant.

    Args:
        **options: settings of :class:`Nordsieck` (``max_order``, ``max_iters``, ``rtol``, ``atol``).

    Reference: Brown, Byrne & Hindmarsh, VODE (1989), Adams mode; Hairer, Nørsett, Wanner I, III.6-7.
    """

    def __init__(self, **options):
        super().__init__(**_settings("adams", "adams", options))


class BDF(Nordsieck):
    """Variable-step, variable-order BDF (``method="bdf"``), orders 1-5, quasi-Newton corrector.

    The Jacobian blocks (per sample, :mod:`.linalg`) and the LU factors of ``I - l0 h J`` are reused
    across steps; a corrector failure with an old Jacobian evaluates a new one.

    Args:
        **options: settings of :class:`Nordsieck` (``max_order``, ``jacobian``, ``batch_dims``, ...).

    Reference: Hairer & Wanner II, Sections VI.1 and IV.8; Hindmarsh's LSODE (1983).
    """

    def __init__(self, **options):
        super().__init__(**_settings("bdf", "bdf", options))


class LSODA(Nordsieck):
    """Adams and BDF with automatic switching by stiffness detection (``method="lsoda"``).

    Args:
        **options: settings of :class:`Nordsieck` (``max_order`` caps the Adams order; BDF stays at most 5).

    Reference: L. Petzold, SIAM J. Sci. Stat. Comput. 4 (1983).
    """

    def __init__(self, **options):
        super().__init__(**_settings("lsoda", "lsoda", options))
