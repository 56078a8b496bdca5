"""Automatic stiffness switching: Tsit5 while the problem is non-stiff, Rodas5P while it is stiff.

Tsit5's last two stages are both evaluated at the end of the step (c6 = c7 = 1), at two different
states, so ``|k7 - k6| / |y7 - y6|`` estimates the largest eigenvalue magnitude of the Jacobian along
the step for free (per sample; the batch takes the largest). When ``dt * rho`` exceeds 9/10 of the
length of Tsit5's stability region on the negative real axis (3.5068) for 10 accepted steps in a row,
the step is limited by stability rather than accuracy and the solve continues with Rodas5P (L-stable,
Jacobian-based). In the stiff phase the Jacobian blocks that Rodas5P evaluates at every step bound the
spectral radius (their inf-norm); after 3 steps in a row where Tsit5 could take Rodas5P's step stably
it switches back. Both methods carry a 4th-order error estimate, so the PID controller's step rule
holds through a switch. The switches are counted in ``stats.n_switches``.

References: the stiffness test of Hairer & Wanner, Solving ODEs II, Section IV.2 (eigenvalue estimate
from two stages at the same time, as in DOPRI5's stiffness detection); the switching with hysteresis
of DifferentialEquations.jl's ``AutoTsit5(Rodas5P())`` (C. Rackauckas & Q. Nie, "DifferentialEquations.jl",
J. Open Res. Softw. 5 (2017)); L. Petzold, SIAM J. Sci. Stat. Comput. 4 (1983) (method switching).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..interpolation import linear_combination
from .base import AbstractSolver, Field, Interpolant
from .linalg import system_shape
from .multistep import _count_switch
from .newton import tolerances
from .rosenbrock import Rodas5P, RosenbrockState
from .tsit5 import Tsit5

#: length of Tsit5's stability region along the negative real axis
TSIT5_STABILITY = 3.5068
_STIFF_TOL = 0.9  # dt * rho above this fraction of the region counts as stiff
_NONSTIFF_TOL = 0.9  # ... and below it (with Rodas5P's step) as non-stiff
_MAX_STIFF_STEPS = 10  # stiff steps in a row before switching to the stiff method
_MAX_NONSTIFF_STEPS = 3  # non-stiff steps in a row before switching back


@dataclasses.dataclass(frozen=True)
class AutoState:
    """The active method, its state, and the run of steps that voted for the other method."""

    stiff: bool
    inner: Any
    votes: int = 0


@dataclasses.dataclass(frozen=True)
class AutoStep:
    """One attempt: the active method's step result, which method took it, and the votes before it."""

    y1: torch.Tensor
    error: torch.Tensor | None
    inner: Any
    stiff: bool
    y0: torch.Tensor
    dt: float
    votes: int


@dataclasses.dataclass(frozen=True, repr=False)
class AutoSwitch(AbstractSolver):
    """Tsit5 that switches to Rodas5P when the problem turns stiff and back when it clears (``"auto"``).

    Args:
        jacobian, batch_dims, autonomous: Rodas5P's settings (:class:`~.rosenbrock.Rosenbrock`);
            ``batch_dims`` also says which dimensions index samples for the stiffness estimate.
        name: the method name.

    References: see the module docstring (Hairer & Wanner II, IV.2; DifferentialEquations.jl's
    AutoTsit5(Rodas5P()); Petzold 1983).
    """

    jacobian: object = "jacrev"
    batch_dims: int | None = None
    autonomous: bool = False
    name: str = "auto"

    implicit = True

    def __post_init__(self):
        self._stiff_solver()  # validates the Jacobian settings

    @property
    def order(self) -> int:
        return 5

    @property
    def error_order(self) -> int:
        return 4  # Tsit5's and Rodas5P's estimates alike

    def _nonstiff_solver(self) -> Tsit5:
        return Tsit5()

    def _stiff_solver(self) -> Rodas5P:
        return Rodas5P(jacobian=self.jacobian, batch_dims=self.batch_dims, autonomous=self.autonomous)

    def with_tolerances(self, rtol: Any, atol: Any) -> AutoSwitch:
        tolerances(rtol, atol)  # neither method iterates: nothing to take over
        return self

    def init(self, f: Field, t0: float, y0: torch.Tensor) -> AutoState:
        """Start non-stiff (a restart too): Tsit5's state is f(t0, y0)."""
        return AutoState(False, self._nonstiff_solver().init(f, t0, y0))

    def derivative(self, state: AutoState) -> torch.Tensor:
        return state.inner.f0 if state.stiff else state.inner

    def step(self, f: Field, t: float, y: torch.Tensor, state: AutoState, dt: float) -> AutoStep:
        """One step of the active method."""
        solver = self._stiff_solver() if state.stiff else self._nonstiff_solver()
        inner = solver.step(f, t, y, state.inner, dt)
        return AutoStep(inner.y1, inner.error, inner, state.stiff, y, dt, state.votes)

    def next_state(self, f: Field, t1: float, step: AutoStep) -> AutoState:
        """The active method's next state; after enough steps in a row that voted for the other method
        (by the stiffness estimate), the other method's state at (t1, y1) instead."""
        if not step.stiff:
            inner: Any = self._nonstiff_solver().next_state(f, t1, step.inner)
            vote = step.dt * self._tsit5_rho(step) > _STIFF_TOL * TSIT5_STABILITY
            votes = step.votes + 1 if vote else 0
            if votes < _MAX_STIFF_STEPS:
                return AutoState(False, inner, votes)
            _count_switch(f)
            return AutoState(True, self._stiff_solver().init(f, t1, step.y1))
        inner = self._stiff_solver().next_state(f, t1, step.inner)
        vote = step.dt * _jacobian_rho(inner) < _NONSTIFF_TOL * TSIT5_STABILITY
        votes = step.votes + 1 if vote else 0
        if votes < _MAX_NONSTIFF_STEPS:
            return AutoState(True, inner, votes)
        _count_switch(f)
        return AutoState(False, inner.f0)  # Tsit5's state is f(t1, y1), which Rodas5P's holds

    def interpolant(
        self, f: Field, t0: float, y0: torch.Tensor, dt: float, step: AutoStep, next_state: Any
    ) -> Interpolant:
        """The dense output of the method that took the step (both have their own; no end state needed)."""
        solver: Any = self._stiff_solver() if step.stiff else self._nonstiff_solver()
        return solver.interpolant(f, t0, y0, dt, step.inner, None)

    def _tsit5_rho(self, step: AutoStep) -> float:
        """``|k7 - k6| / |y1 - y6|`` per sample, the largest: both stages sit at the step's end."""
        ks = step.inner.ks
        tab = self._nonstiff_solver().tableau
        with torch.no_grad():
            y6 = linear_combination(step.y0, step.dt, tab.a[5], ks[:5])
            dk = (ks[6] - ks[5]).detach()
            dy = (step.y1 - y6).detach()
            batch, d = system_shape(dy, self.batch_dims)
            num = torch.linalg.vector_norm(dk.reshape(batch + (d,)), dim=-1)
            den = torch.linalg.vector_norm(dy.reshape(batch + (d,)), dim=-1)
            ratio = torch.where(den > 0, num / den.clamp_min(torch.finfo(dy.dtype).tiny), 0.0)
            return float(ratio.max()) if ratio.numel() else 0.0


def _jacobian_rho(state: RosenbrockState) -> float:
    """The largest inf-norm of the Jacobian blocks: a bound on their spectral radii."""
    with torch.no_grad():
        return float(state.jac.detach().abs().sum(-1).max()) if state.jac.numel() else 0.0
