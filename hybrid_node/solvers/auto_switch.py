"""Automatic stiffness switching: Tsit5 while the problem is non-stiff, Rodas5P (or BDF) while it is stiff.

Tsit5's last two stages are both evaluated at the end of the step (c6 = c7 = 1), at two different
states, so ``|k7 - k6| / |y7 - y6|`` (in the error test's weights) estimates the largest eigenvalue
magnitude of the Jacobian along the step for free (per sample; the batch takes the largest). Every
Tsit5 attempt, accepted or rejected, votes stiff when ``dt * rho`` exceeds 9/10 of the length of
Tsit5's stability region on the negative real axis (3.5068); after 10 stiff votes, with no 6 non-stiff
votes in a row among them, the step is limited by stability rather than accuracy and the solve
continues with Rodas5P (L-stable, Jacobian-based). In the stiff phase the Jacobian blocks that Rodas5P
evaluates at every step bound the spectral radius (their inf-norm); after 3 steps in a row where Tsit5
could take Rodas5P's step stably it switches back. Both methods carry a 4th-order error estimate, so
the PID controller's step rule holds through a switch. The switches are counted in ``stats.n_switches``.

With ``stiff_method="bdf"`` the stiff phase runs the variable-order BDF of :mod:`.multistep` instead
(fewer Jacobians and LU factorisations per step than Rodas5P, more steps): it starts at order one from
(t1, y1) with the last Tsit5 step, chooses its own steps and orders (:meth:`AutoSwitch.propose_step`
hands them to the loop) and retries rejected steps by its own rules (:meth:`AutoSwitch.reject`); its
Jacobian blocks give the spectral bound of the test for switching back, counted only after 20 BDF
steps (BDF restarts at order one, and its short steps while it builds its order say nothing about
stiffness).

References: the stiffness test of Hairer & Wanner, Solving ODEs II, Section IV.2 (eigenvalue estimate
from two stages at the same time, and the count of DOPRI5's stiffness detection: 6 non-stiff results
in a row reset it); the switching with hysteresis of DifferentialEquations.jl's ``AutoTsit5(Rodas5P())``
(C. Rackauckas & Q. Nie, "DifferentialEquations.jl", J. Open Res. Softw. 5 (2017); OrdinaryDiffEq.jl's
``lib/OrdinaryDiffEqCore/src/composite_algs.jl``, whose ``AutoSwitch`` tests after every attempt);
L. Petzold, SIAM J. Sci. Stat. Comput. 4 (1983) (method switching).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..controllers import ErrorPair, error_precision
from ..interpolation import linear_combination
from .base import AbstractSolver, Field, Interpolant
from .linalg import system_shape
from .multistep import BDF, SWITCH_WAIT, NordsieckState, count_switch
from .newton import tolerances
from .rosenbrock import Rodas5P, RosenbrockState
from .tsit5 import Tsit5

#: length of Tsit5's stability region along the negative real axis
TSIT5_STABILITY = 3.5068
_STIFF_TOL = 0.9  # dt * rho above this fraction of the region counts as stiff
_NONSTIFF_TOL = 0.9  # ... and below it (with Rodas5P's step) as non-stiff
_MAX_STIFF_STEPS = 10  # stiff votes before switching to the stiff method
#: non-stiff votes in a row that end a run of stiff votes (Hairer's DOPRI5 and DOP853: NONSTI = 6)
_NONSTIFF_RESET = 6
_MAX_NONSTIFF_STEPS = 3  # non-stiff steps in a row before switching back
#: the stiff methods ``auto`` can switch to
STIFF_METHODS = ("rodas5p", "bdf")


@dataclasses.dataclass(frozen=True)
class AutoState:
    """The active method, its state, the run of votes for the other method, and (non-stiff phase) the
    non-stiff votes in a row since the run's last stiff vote."""

    stiff: bool
    inner: Any
    votes: int = 0
    misses: int = 0


@dataclasses.dataclass(frozen=True)
class AutoStep:
    """One attempt: the active method's step result, which method took it, and the votes before it."""

    y1: torch.Tensor
    error: torch.Tensor | ErrorPair | None
    inner: Any
    stiff: bool
    y0: torch.Tensor
    dt: float
    votes: int
    misses: int = 0

    @property
    def converged(self) -> bool:
        """Whether the active method's iteration converged (BDF's corrector; True for Tsit5 and Rodas5P).

        The loop's failure report (:func:`~hybrid_node.loop.host.settle_failure`) reads it: a BDF corrector
        that failed at ``min_step`` is NEWTON_FAILED, not a non-finite state.
        """
        return bool(getattr(self.inner, "converged", True))

    @property
    def e(self) -> torch.Tensor | None:
        """The active method's last correction (BDF's; None for Tsit5 and Rodas5P)."""
        return getattr(self.inner, "e", None)

    @property
    def iteration(self) -> str:
        """What the active method iterates, for the failure report ("corrector" for BDF)."""
        return str(getattr(self.inner, "iteration", "corrector"))


@dataclasses.dataclass(frozen=True, repr=False)
class AutoSwitch(AbstractSolver):
    """Tsit5 that switches to a stiff method when the problem turns stiff and back when it clears (``"auto"``).

    Args:
        jacobian, batch_dims: the stiff method's Jacobian settings (:class:`~.linalg.JacobianSettings`);
            ``batch_dims`` also says which dimensions index samples for the stiffness estimate.
        autonomous: Rodas5P's setting (:class:`~.rosenbrock.Rosenbrock`; BDF does not use it).
        time_derivative: how Rodas5P takes df/dt, "autodiff" (default) or "fd" (a forward difference;
            :class:`~.rosenbrock.Rosenbrock`). BDF does not use it; it is checked all the same, so a typo
            fails whichever the stiff method.
        stiff_method: "rodas5p" (default; DifferentialEquations.jl's ``AutoTsit5(Rodas5P())``) or "bdf"
            (the variable-order BDF of :class:`~.multistep.BDF`).
        rtol, atol: the solve's tolerances, for BDF's corrector test and order selection (the loop
            passes the controller's through :meth:`with_tolerances`).
        name: the method name.

    Raises:
        ValueError: an unknown ``stiff_method`` or ``time_derivative``, or invalid Jacobian settings.

    References: see the module docstring (Hairer & Wanner II, IV.2; DifferentialEquations.jl's
    AutoTsit5(Rodas5P()); Petzold 1983).
    """

    jacobian: object = "jacrev"
    batch_dims: int | None = None
    autonomous: bool = False
    time_derivative: str = "autodiff"
    stiff_method: str = "rodas5p"
    rtol: float = 1e-7
    atol: float = 1e-9
    name: str = "auto"

    implicit = True

    def __post_init__(self):
        if self.stiff_method not in STIFF_METHODS:
            raise ValueError(
                f"stiff_method of 'auto' must be one of {STIFF_METHODS}, got {self.stiff_method!r}; "
                "pass options={'stiff_method': 'bdf'} for the BDF stiff phase."
            )
        self._stiff_solver()  # validates the Jacobian settings (and Rodas5P's time_derivative)
        if self.stiff_method == "bdf":  # BDF leaves time_derivative unread: Rodas5P's check, so a typo fails
            Rodas5P(jacobian=self.jacobian, batch_dims=self.batch_dims, time_derivative=self.time_derivative)

    @property
    def order(self) -> int:
        return 5

    @property
    def error_order(self) -> int:
        return 4  # Tsit5's and Rodas5P's estimates alike

    def _nonstiff_solver(self) -> Tsit5:
        return Tsit5()

    def _stiff_solver(self) -> Rodas5P | BDF:
        if self.stiff_method == "bdf":
            return BDF(jacobian=self.jacobian, batch_dims=self.batch_dims, rtol=self.rtol, atol=self.atol)
        return Rodas5P(
            jacobian=self.jacobian,
            batch_dims=self.batch_dims,
            autonomous=self.autonomous,
            time_derivative=self.time_derivative,
        )

    def with_tolerances(self, rtol: Any, atol: Any) -> AutoSwitch:
        """This method with the solve's (smallest) tolerances, which BDF's corrector and order selection use."""
        scalars = tolerances(rtol, atol)
        if scalars is None:
            return self
        return dataclasses.replace(self, rtol=scalars[0], atol=scalars[1])

    def init(self, f: Field, t0: float, y0: torch.Tensor) -> AutoState:
        """Start non-stiff (a restart too): Tsit5's state is f(t0, y0)."""
        return AutoState(False, self._nonstiff_solver().init(f, t0, y0))

    def derivative(self, state: AutoState) -> torch.Tensor:
        return self._stiff_solver().derivative(state.inner) if state.stiff else state.inner

    def step(self, f: Field, t: float, y: torch.Tensor, state: AutoState, dt: float) -> AutoStep:
        """One step of the active method."""
        solver = self._stiff_solver() if state.stiff else self._nonstiff_solver()
        inner = solver.step(f, t, y, state.inner, dt)
        return AutoStep(inner.y1, inner.error, inner, state.stiff, y, dt, state.votes, state.misses)

    def next_state(self, f: Field, t1: float, step: AutoStep) -> AutoState:
        """The active method's next state; after enough steps in a row that voted for the other method
        (by the stiffness estimate), the other method's state at (t1, y1) instead."""
        if not step.stiff:
            inner: Any = self._nonstiff_solver().next_state(f, t1, step.inner)
            votes, misses = self._stiff_votes(step)
            if votes < _MAX_STIFF_STEPS:
                return AutoState(False, inner, votes, misses)
            count_switch(f)
            return AutoState(True, self._stiff_start(f, t1, step.y1))
        stiff = self._stiff_solver()
        inner = stiff.next_state(f, t1, step.inner)
        # BDF's next step is its own choice (inner.factor); Rodas5P's comes from the controller, and its
        # last step stands in for it
        dt = step.dt * inner.factor if isinstance(inner, NordsieckState) else step.dt
        vote = dt * _jacobian_rho(inner) < _NONSTIFF_TOL * TSIT5_STABILITY
        if isinstance(inner, NordsieckState) and inner.since_switch < SWITCH_WAIT:
            # BDF restarts at order one and shortens its steps while it builds its order: those short
            # steps say nothing about stiffness (without this wait HIRES switched 62 times, not once)
            vote = False
        votes = step.votes + 1 if vote else 0
        if votes < _MAX_NONSTIFF_STEPS:
            return AutoState(True, inner, votes)
        count_switch(f)
        return AutoState(False, stiff.derivative(inner))  # Tsit5's state is f(t1, y1), which both hold

    def reject(self, f: Field, t: float, y: torch.Tensor, state: AutoState, step: AutoStep) -> AutoState:
        """The active method's retry state (BDF's smaller step and order, a refreshed Jacobian).

        A rejected Tsit5 step votes as an accepted one does (DifferentialEquations.jl's ``AutoSwitch``
        tests after every attempt): at the stability limit the steps that cross it are the rejected
        ones, and when the votes suffice the retry from (t, y) is the stiff method's.
        """
        if not step.stiff:
            votes, misses = self._stiff_votes(step)
            if votes < _MAX_STIFF_STEPS:
                return dataclasses.replace(state, votes=votes, misses=misses)
            count_switch(f)
            return AutoState(True, self._stiff_start(f, t, y))
        return dataclasses.replace(state, inner=self._stiff_solver().reject(f, t, y, state.inner, step.inner))

    def propose_step(self, state: AutoState, dt: float, proposal: float) -> float:
        """BDF's own step while it is active (its order changes); else the controller's proposal."""
        if state.stiff and isinstance(state.inner, NordsieckState):
            return self._stiff_solver().propose_step(state.inner, dt, proposal)
        return proposal

    def interpolant(
        self, f: Field, t0: float, y0: torch.Tensor, dt: float, step: AutoStep, next_state: Any
    ) -> Interpolant:
        """The dense output of the method that took the step (both have their own; no end state needed)."""
        solver: Any = self._stiff_solver() if step.stiff else self._nonstiff_solver()
        return solver.interpolant(f, t0, y0, dt, step.inner, None)

    def _stiff_start(self, f: Field, t: float, y: torch.Tensor) -> RosenbrockState | NordsieckState:
        """The stiff method's state at a switch from Tsit5 at (t, y).

        BDF starts at order one, but with the last Tsit5 step, not the initial-step heuristic of its
        restarts (:meth:`~.multistep.Nordsieck.init`): a switch is no new initial value problem (the
        solution is smooth there, and the step sits at Tsit5's stability bound), and the heuristic's
        step cost 1-5% more evaluations on Van der Pol (mu = 10, 1000) and Robertson.
        """
        inner = self._stiff_solver().init(f, t, y)
        if isinstance(inner, NordsieckState):
            return dataclasses.replace(inner, restart_step=None)
        return inner

    def _stiff_votes(self, step: AutoStep) -> tuple[int, int]:
        """The run of stiff votes and the non-stiff votes in a row after the Tsit5 attempt ``step``.

        A vote is stiff when ``dt * rho`` exceeds ``_STIFF_TOL`` of the stability region. A non-stiff
        vote ends the run only as the ``_NONSTIFF_RESET``-th in a row, as in Hairer's DOPRI5: at the
        stability limit the controller alternates between steps just beyond it (rejected, or accepted
        with a growing error) and steps just within it, and a run that any step within the limit ended
        reached 10 on Robertson only by chance (at rtol 1e-3 never in 200,000 attempts). An attempt
        without a finite estimate (a step that overflowed) leaves the votes as they were.
        """
        rho = self._tsit5_rho(step)
        if not math.isfinite(rho):
            return step.votes, step.misses
        if step.dt * rho > _STIFF_TOL * TSIT5_STABILITY:
            return step.votes + 1, 0
        misses = step.misses + 1
        return (0, 0) if misses >= _NONSTIFF_RESET else (step.votes, misses)

    def _tsit5_rho(self, step: AutoStep) -> float:
        """``|k7 - k6| / |y1 - y6|`` per sample in the error test's weights, the largest: both stages
        sit at the step's end (:func:`stage_rho`, with the solve's smallest tolerances)."""
        tab = self._nonstiff_solver().tableau
        return stage_rho(tab, step.y0, step.y1, step.inner.ks, step.dt, self.rtol, self.atol, self.batch_dims)


def has_end_stage_pair(tableau: Any) -> bool:
    """Whether an explicit tableau's last two stages both sit at the step's end (``c = 1``), the last
    one at the solution (first-same-as-last): :func:`stage_rho` needs them (dopri5, tsit5, dopri8)."""
    c = tableau.c
    return bool(tableau.fsal and len(c) >= 3 and c[-1] == 1.0 and c[-2] == 1.0)


def stage_ratios(
    tableau: Any,
    y0: torch.Tensor,
    y1: torch.Tensor,
    ks: Sequence[torch.Tensor],
    h: float | torch.Tensor,
    rtol: float,
    atol: float,
    batch_dims: int | None = None,
) -> torch.Tensor:
    """The spectral radius estimate ``|k_s - k_(s-1)| / |y1 - Y_(s-1)|`` of each sample of an explicit step
    whose last two stages sit at its end (:func:`has_end_stage_pair`), on the state's device.

    Both stages are evaluated at ``t + h``, at two nearby states, so their difference quotient
    estimates the largest eigenvalue magnitude of the Jacobian there for free (Hairer & Wanner, Solving
    ODEs II, Section IV.2, the stiffness test of DOPRI5 and DOP853). The weights
    ``1 / (atol + rtol max(|y0|, |y1|))`` make it an estimate for ``W J W^-1``, whose eigenvalues are the
    Jacobian's: unweighted, the differences of the large smooth components hid the stiff small ones
    (Robertson at rtol 1e-8, steps at Tsit5's stability limit from t = 0.3 to 7 estimated at 0.35-0.8 of
    it, 0.9-1.05 weighted). It is the one estimate behind ``auto``'s switch (:func:`stage_rho`) and the
    stiffness watch of direct backpropagation (:func:`~hybrid_node.loop.stiff_watch.row_hrho`); nothing
    is read on the host, so a loop can fold it into a read it makes anyway.

    Args:
        tableau: the method's tableau (its row ``a[s-2]`` rebuilds the stage state ``Y_(s-1)``).
        y0, y1: the step's start and end states; ks: its stage derivatives.
        h: the step: a float, or a per-sample column tensor (batch, 1, ...) for per-sample steps
            (:func:`~hybrid_node.interpolation.linear_combination`'s forms).
        rtol, atol: the solve's (smallest) tolerances, for the weights.
        batch_dims: which leading dimensions index samples (:func:`~.linalg.system_shape`).

    Returns:
        The estimates, of the batch shape, in the error test's precision (float32 for a half-precision
        state); 0 where the two stage states coincide.

    Raises:
        ValueError: ``batch_dims`` leaves no system dimension.
    """
    with torch.no_grad():
        y_stage = linear_combination(y0, h, tableau.a[-2], ks[: len(ks) - 2])
        # in float32 for a half-precision state, as the error test: float16 rounds atol = 1e-9 to 0
        y0, y1 = error_precision(y0.detach()), error_precision(y1.detach())
        scale = atol + rtol * torch.maximum(y0.abs(), y1.abs())
        dk = error_precision((ks[-1] - ks[-2]).detach()) / scale
        dy = (y1 - error_precision(y_stage.detach())) / scale
        batch, d = system_shape(dy, batch_dims)
        num = torch.linalg.vector_norm(dk.reshape(batch + (d,)), dim=-1)
        den = torch.linalg.vector_norm(dy.reshape(batch + (d,)), dim=-1)
        return torch.where(den > 0, num / den.clamp_min(torch.finfo(dy.dtype).tiny), 0.0)


def stage_rho(
    tableau: Any,
    y0: torch.Tensor,
    y1: torch.Tensor,
    ks: Sequence[torch.Tensor],
    dt: float,
    rtol: float,
    atol: float,
    batch_dims: int | None = None,
) -> float:
    """The largest of the samples' :func:`stage_ratios` of one step, as a host float (``auto``'s vote).

    Args:
        tableau, y0, y1, ks, rtol, atol, batch_dims: as :func:`stage_ratios`.
        dt: the step's size.

    Returns:
        The estimate (0 for an empty state or where the two stage states coincide).
    """
    ratio = stage_ratios(tableau, y0, y1, ks, dt, rtol, atol, batch_dims)
    return float(ratio.max()) if ratio.numel() else 0.0


def _jacobian_rho(state: RosenbrockState | NordsieckState) -> float:
    """The largest inf-norm of the Jacobian blocks: a bound on their spectral radii (0 without blocks)."""
    jac = state.jac
    if jac is None or not jac.numel():
        return 0.0
    with torch.no_grad():
        return float(jac.detach().abs().sum(-1).max())
