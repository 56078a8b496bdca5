"""Algebraically reversible wrapper of an explicit Runge-Kutta method (McCallum & Foster 2024).

With the base method's increment ``Psi_h(t, x) = step(t, x, h) - x`` and a coupling parameter
``lambda`` in (0, 1], the method carries a pair of states (y, z), both starting at y0:

    y_{n+1} = lambda y_n + (1 - lambda) z_n + Psi_h(t_n, z_n)
    z_{n+1} = z_n - Psi_{-h}(t_{n+1}, y_{n+1})

and returns y. Each step is inverted in closed form, with the same two base steps:

    z_n = z_{n+1} + Psi_{-h}(t_{n+1}, y_{n+1})
    y_n = (y_{n+1} - (1 - lambda) z_n - Psi_h(t_n, z_n)) / lambda

so a backward pass can rebuild the forward trajectory step by step instead of storing it: gradients
that equal direct backpropagation through the same discrete solve, in memory independent of the
number of steps (:class:`hybrid_node.ReversibleAdjoint`). The method keeps the base method's order;
lambda < 1 makes it stable where the base method is (lambda = 1 is only linearly stable on the
imaginary axis), at the price of amplifying rounding in the reconstruction by lambda^-n.

Reference: McCallum & Foster, "Efficient, accurate and stable gradients for Neural ODEs",
arXiv:2410.11648 (2024), Section 3 (the reversible scheme, its inverse, order and stability); the
ODE counterpart of reversible Heun (Kidger, Foster, Li, Lyons, ICML 2021).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..controllers import ErrorPair
from ..interpolation import LinearInterpolant
from .adams import Adams
from .base import AbstractSolver, Field
from .multistep import Nordsieck

#: The coupled mode lives in y - z (the physical mode has y = z), and its share of y is about half the
#: relative defect ``||y - z|| / ||y||``. An adaptive step whose start has a relative defect above
#: this many relative tolerances is rejected whatever its size. Measured (docs/reversible.md; Tsit5
#: base, float64 rtol 1e-9 to 1e-3 and float32 to 1e-5, lambda = 1, 0.999, 0.9): runs within 2x of
#: plain Tsit5's error stayed below 600 tolerances (a pendulum started 0.14 below the upright; an
#: eccentric Kepler orbit 290, the rest below 100), a Kepler orbit 7x to 9x off reached 1.4e3, and the
#: runs the coupled mode wrecked on contracting fields passed 3.5e3 and grew on.
_DEFECT_TOLERANCES = 3000.0
#: the relative defect above which a step is rejected at any tolerance: the coupled mode is then a
#: quarter of y (at rtol 1e-3, 3000 tolerances is more than the defect of a wholly wrong y, about 2)
_DEFECT_LIMIT = 0.5


@dataclasses.dataclass(frozen=True)
class ReversibleState:
    """The solver state between steps: the coupled state z and the base method's state at z (for the
    Runge-Kutta methods f(t, z), their first stage)."""

    z: torch.Tensor
    fz: torch.Tensor


@dataclasses.dataclass(frozen=True)
class ReversibleStep:
    """One step's result: the new y and z, and the error estimate of the step from z (the base method's,
    raised where the coupled mode has outgrown the tolerance: see :meth:`Reversible.step`).

    ``defect`` is ``||y - z|| / ||y||`` at the step's start and ``coupled`` whether the coupled mode's
    term decided some element of ``error`` (0-d tensors; None without an error estimate).
    """

    y1: torch.Tensor
    z1: torch.Tensor
    error: torch.Tensor | ErrorPair | None
    defect: torch.Tensor | None = None
    coupled: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True, repr=False)
class Reversible(AbstractSolver):
    """``hn.Reversible(hn.Tsit5(), coupling=0.999)``: the algebraically reversible form of an explicit method.

    Fixed steps with ``ConstantStepSize`` for any explicit base method; adaptive steps with a
    ``PIDController`` when the base method has an error estimate (the estimate of the forward base
    step from z decides, raised where the coupled mode y - z has outgrown the tolerance, so that a
    solve that mode takes over, on a contracting field, fails with a step-size underflow instead of
    returning garbage). Dense output between step ends is linear; put the output times on step
    ends (they are, for :class:`hybrid_node.ReversibleAdjoint`) for full accuracy.

    Args:
        base: an explicit (not implicit, not partitioned) solver, e.g. ``hn.Tsit5()`` or ``hn.RK4()``.
        coupling: lambda in (0, 1]; the paper's default is 0.999.

    Raises:
        TypeError: ``base`` is not a solver object.
        ValueError: ``base`` is implicit, partitioned or multistep (Adams), or ``coupling`` is outside (0, 1].
    """

    base: AbstractSolver
    coupling: float = 0.999

    def __post_init__(self):
        if not isinstance(self.base, AbstractSolver):
            raise TypeError(f"base must be a solver object such as hn.Tsit5(), got {type(self.base).__name__}.")
        if self.base.implicit or self.base.partitioned or isinstance(self.base, Reversible):
            raise ValueError(
                f"Reversible wraps an explicit one-state method such as hn.Tsit5() or hn.RK4(), not {self.base!r}."
            )
        if isinstance(self.base, (Adams, Nordsieck)):
            # each increment starts the base method afresh from one state: a multistep method's history
            # never builds up (fixed-step Adams silently ran its Runge-Kutta starter; 'adams' failed)
            raise ValueError(
                f"Reversible wraps an explicit one-step method such as hn.Tsit5() or hn.RK4(), not the multistep "
                f"{self.base!r}: its history of past steps cannot be carried by the reversible pair (y, z)."
            )
        if not 0.0 < self.coupling <= 1.0:
            raise ValueError(f"coupling must be in (0, 1] (the paper uses 0.999), got {self.coupling!r}.")

    def __repr__(self) -> str:
        return f"Reversible({self.base!r}, coupling={self.coupling!r})"

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"reversible_{self.base.name}"

    @property
    def order(self) -> int:
        return self.base.order

    @property
    def error_order(self) -> int | None:
        return self.base.error_order

    def fixed_steps(self) -> Reversible:
        return dataclasses.replace(self, base=self.base.fixed_steps())

    def _increment(self, f: Field, t: float, x: torch.Tensor, fx: torch.Tensor | None, dt: float):
        """``(Psi_dt(t, x), error)``: the base method's increment from (t, x) and its error estimate."""
        state = self.base.init(f, t, x) if fx is None else fx
        step = self.base.step(f, t, x, state, dt)
        return step.y1 - x, step.error

    @staticmethod
    def _with_coupled_mode(
        error: torch.Tensor | ErrorPair, y: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor | ErrorPair, torch.Tensor, torch.Tensor]:
        """``(error, defect, coupled)``: the base estimate ``error`` raised by the coupled mode's term.

        The term is ``g |y|`` elementwise with the relative defect ``rho = ||y - z|| / ||y||`` at the
        step's start and ``g = rho / _DEFECT_TOLERANCES``, or 1 once ``rho > _DEFECT_LIMIT``: its error
        ratio is about ``rho / (3000 rtol)`` where the relative tolerance governs, and about
        ``|y| / atol`` (the coupled mode is all of y) past the limit. It is taken at the step's start,
        so it does not shrink with the step: a state beyond it fails the solve with a step-size
        underflow, where a term that shrank with the step let the solve creep on with steps too small
        to grow the mode. Below it, it is far below the base estimate and leaves the steps as they were.

        Args:
            error: the base method's error estimate of the step (DOP853's pair: both raised, so that
                where the term exceeds both, their combined ratio is the term's).
            y, z: the pair at the step's start.

        Returns:
            The error estimate, ``rho`` and whether the term exceeded ``|error|`` anywhere (0-d tensors).
        """
        with torch.no_grad():  # it only decides the step
            size = torch.linalg.vector_norm(y).clamp_min(torch.finfo(y.abs().dtype).tiny)
            rho = torch.linalg.vector_norm(y - z) / size
            gain = torch.where(rho > _DEFECT_LIMIT, 1.0, rho / _DEFECT_TOLERANCES)
            term = gain * y.abs()
            if isinstance(error, ErrorPair):
                above = term > error.high.abs()
                low = torch.where(term > error.low.abs(), term, error.low)
                return ErrorPair(torch.where(above, term, error.high), low), rho, above.any()
            above = term > error.abs()
            return torch.where(above, term, error), rho, above.any()

    def failure_detail(self, step: ReversibleStep) -> str | None:
        """What to change when an adaptive solve failed at ``step`` because of the coupled mode, else None.

        For the solve's failure report (it reads tensors to the host).

        Args:
            step: the last attempted step.

        Returns:
            The explanation and the remedies, or None where the base method's estimate rejected the step.
        """
        if step.defect is None or step.coupled is None or not bool(step.coupled):
            return None
        lam = self.coupling
        # lambda e^{h |mu|} <= 1 keeps the mode from growing (docs/reversible.md: y' = -y, lambda = 0.9 and
        # max_step 0.1 solves to 40 within 9e-11, where max_step 0.2 fails)
        cap = f"max_step={-math.log(lam):.3g} / |mu|" if lam < 1.0 else "no max_step (coupling=1.0 never damps it)"
        return (
            f"the coupled mode of {self.name!r} outgrew the tolerance: ||y - z|| / ||y|| = {float(step.defect):.2g} at "
            f"the step's start. On a field contracting at rate mu < 0 it grows by coupling * exp(h |mu|) per step: "
            f"keep that at most 1 with a smaller coupling and PIDController(max_step=-ln(coupling) / |mu|) (coupling="
            f"{lam!r}: {cap}), or use a plain or implicit method (hn.Tsit5(), hn.Kvaerno5()) and another sensitivity"
        )

    def init(self, f: Field, t0: float, y0: torch.Tensor) -> ReversibleState:
        """z0 = y0 and f(t0, y0)."""
        return ReversibleState(y0, self.base.init(f, t0, y0))

    def step(self, f: Field, t: float, y: torch.Tensor, state: ReversibleState, dt: float) -> ReversibleStep:
        """One reversible step of size ``dt`` from (t, y, z): two base steps (forward from z, backward from y1).

        The base method's estimate of the forward step does not see the coupled mode: a smooth solution
        of the scheme that, on a contracting field, grows by about lambda R(-h mu) > 1 per step while
        y's physical part decays, until it is all of y (y' = -y, lambda = 0.999, rtol 1e-6: y(40) = 5e9
        with every step accepted). The estimate is raised where that mode, y - z, has outgrown the
        tolerance (:meth:`_with_coupled_mode`), so such a solve fails instead.

        Returns:
            The new y and z and the error estimate (None for fixed-step bases).
        """
        lam = self.coupling
        forward, error = self._increment(f, t, state.z, state.fz, dt)
        y1 = lam * y + (1.0 - lam) * state.z + forward if lam != 1.0 else y + forward
        backward, _ = self._increment(f, t + dt, y1, None, -dt)
        if error is None:
            return ReversibleStep(y1, state.z - backward, None)
        return ReversibleStep(y1, state.z - backward, *self._with_coupled_mode(error, y, state.z))

    def inverse(self, f: Field, t1: float, y1: torch.Tensor, z1: torch.Tensor, dt: float):
        """The step's inverse: ``(y, z)`` at t1 - dt from ``(y1, z1)`` at t1, in closed form.

        Args:
            f: the field.
            t1: the step's end time; dt: its size.
            y1, z1: the states at its end.

        Returns:
            ``(y, z)`` at its start, equal to the forward step's inputs up to rounding.
        """
        lam = self.coupling
        backward, _ = self._increment(f, t1, y1, None, -dt)
        z = z1 + backward
        forward, _ = self._increment(f, t1 - dt, z, None, dt)
        rest = y1 - (1.0 - lam) * z - forward if lam != 1.0 else y1 - forward
        return (rest / lam if lam != 1.0 else rest), z

    def next_state(self, f: Field, t1: float, step: ReversibleStep) -> ReversibleState:
        return ReversibleState(step.z1, self.base.init(f, t1, step.z1))

    def interpolant(self, f: Field, t0: float, y0: torch.Tensor, dt: float, step: Any, next_state: Any):
        """Linear between the step's ends (y alone has no dense output of the base method's order)."""
        return LinearInterpolant(y0, step.y1)

    def derivative(self, state: ReversibleState) -> torch.Tensor:
        """f(t, z) from the base method's own state (which need not be f itself)."""
        return self.base.derivative(state.fz)
