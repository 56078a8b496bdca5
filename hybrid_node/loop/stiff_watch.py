"""Watch a directly backpropagated solve through an explicit adaptive method for stiffness.

Where a problem is stiff, an explicit method's step is held at its stability limit by the step-size
controller's feedback, not by accuracy. Direct backpropagation differentiates the accepted steps with
their sizes held fixed, and that frozen map is at (or past) the limit of stability: perturbations,
and with them the gradient, can grow without bound (van der Pol with mu = 1000 to t = 2 under dopri5
gave dy1/dmu of order 1e22 where the solution's is -3.65e-5; docs/gradients.md). The solve itself is
accurate, so nothing else would report it.

The test is Hairer's DOPRI5 stiffness detection (Hairer & Wanner, Solving ODEs II, Section IV.2):
``h * rho`` is estimated from the last two stages of an accepted step, which both sit at the step's
end (:func:`~hybrid_node.solvers.auto_switch.stage_ratios`), and the step counts as stiff where it
exceeds :data:`BOUNDARY_FRACTION` of the length of the method's stability region on the negative real
axis. Every :data:`SAMPLE_EVERY`-th accepted step is tested, and every step once one was stiff (as
Hairer's code does, there every 1000th); after :data:`STIFF_STEPS` stiff steps with no
:data:`NONSTIFF_RESET` non-stiff ones in a row among them, the solve is stiff, and one
:class:`~hybrid_node.StiffGradientWarning` at its end names the fixes and carries the time range (its
text is constant per method, so a training loop is told once per calling line, not every step). It runs only
where autograd records the steps (the state or the field's parameters require grad and grad mode is
on), so no-grad and adjoint solves pay nothing, and only for methods whose last two stages both sit at
the step's end (dopri5, tsit5, dopri8). Not bosh3 or the low-order pairs: bosh3's last two stages sit
at t + h and t + 3h/4, and their difference quotient measures the solution's rate |y''| / |y'|, not the
Jacobian's spectral radius (on van der Pol with mu = 1000, h * rho 0.13 where the steps sit at bosh3's
boundary of 2.51); OrdinaryDiffEq.jl sets no eigenvalue estimate for BS3 either (only methods with two
stages at t + h set ``eigen_est``, lib/OrdinaryDiffEqLowOrderRK/src/low_order_rk_perform_step.jl: DP5).
It watches the host loop, the forward pass of ``DirectBackprop(checkpoints=k)``, per-sample step control
(the largest ``h * rho`` of the accepted rows, read with the loop's per-step read), per-sample events
(the largest over the samples of a shared step, read with the event signs at its end:
:func:`largest_rho`) and the device loop (the last attempt of each run, read with the run's summary:
:func:`~hybrid_node.loop.device.stiffness_sample`).
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import numpy as np
import torch

from .._errors import StiffGradientWarning
from .._stack import PACKAGE_DIR, caller_stacklevel
from ..solvers.auto_switch import has_end_stage_pair, stage_ratios, stage_rho
from ..solvers.newton import tolerances

#: stiff steps in a run before the solve counts as stiff (Hairer's DOPRI5: IASTI = 15)
STIFF_STEPS = 15
#: non-stiff steps in a row that end a run (Hairer's DOPRI5: NONSTI = 6)
NONSTIFF_RESET = 6
#: outside a run, every this many accepted steps are tested (Hairer's DOPRI5 tests every NSTIFF-th
#: step, default 1000, and every step once a run has begun): the estimate costs ~20 small tensor
#: operations (0.17-0.34 ms per test on a loaded CPU core, measured), several percent of a small
#: problem's step; a stiff stretch is still found within this many steps of its start
SAMPLE_EVERY = 10
#: the fraction of the real stability boundary above which a step counts as stiff: Hairer's DOPRI5
#: tests h * rho > 3.25 against its boundary of 3.307
BOUNDARY_FRACTION = 0.98


@functools.lru_cache(maxsize=32)
def real_stability_boundary(a: tuple[tuple[float, ...], ...], b: tuple[float, ...]) -> float:
    """The length of an explicit Runge-Kutta method's stability region along the negative real axis.

    The stability function of an explicit method is the polynomial ``R(z) = 1 + sum_k z^k b^T A^(k-1) 1``
    (Hairer & Wanner, Solving ODEs II, Section IV.2); the boundary is the first ``x > 0`` with
    ``|R(-x)| > 1``, found on a grid of step 1e-3 and refined by bisection (dopri5: 3.307, tsit5: 3.507).

    Args:
        a: the tableau's strictly lower rows (row ``i`` holds ``i`` entries); b: its weights.

    Returns:
        The boundary (``inf`` for a region that holds the whole tested range [0, 50]).
    """
    s = len(b)
    matrix = np.zeros((s, s))
    for i, row in enumerate(a[:s]):
        matrix[i, : len(row)] = row
    coefficients = [1.0]  # of z^0, z^1, ...: A is nilpotent, so s terms after the 1
    power = np.ones(s)
    for _ in range(s):
        coefficients.append(float(np.asarray(b, dtype=float) @ power))
        power = matrix @ power

    def outside(x: np.ndarray) -> np.ndarray:
        return np.abs(np.polynomial.polynomial.polyval(-x, coefficients)) > 1.0 + 1e-12

    xs = np.arange(1, 50_001) * 1e-3
    hits = np.flatnonzero(outside(xs))
    if not hits.size:
        return math.inf
    hi = float(xs[hits[0]])
    lo = hi - 1e-3
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if outside(np.asarray(mid)) else (mid, hi)
    return lo


class StiffnessWatch:
    """Hairer's stiffness count over the accepted steps of one solve.

    Args:
        tableau: the explicit method's tableau (:func:`~hybrid_node.solvers.auto_switch.has_end_stage_pair`).
        name: the method's name, for the warning.
        rtol, atol: the solve's tolerances (their smallest values weight the estimate).
    """

    def __init__(self, tableau, name: str, rtol, atol):
        self.tableau = tableau
        self.name = name
        self.rtol, self.atol = tolerances(rtol, atol)
        self.limit = BOUNDARY_FRACTION * real_stability_boundary(tableau.a, tableau.b)
        self.accepted = 0  # accepted steps seen
        self.run = 0  # stiff steps in the current run
        self.misses = 0  # non-stiff steps in a row since the run's last stiff one
        self.run_start = math.nan  # where the current run began
        self.stiff_from = math.nan  # where the first run that reached STIFF_STEPS began
        self.stiff_to = math.nan  # the end of the last stiff step once stiff
        self.largest = 0.0  # the largest h * rho seen once stiff

    @property
    def stiff(self) -> bool:
        """Whether some run reached :data:`STIFF_STEPS`."""
        return not math.isnan(self.stiff_from)

    def due(self) -> bool:
        """Whether the next accepted step is tested: every :data:`SAMPLE_EVERY`-th one, and every one while a
        run of stiff steps lasts."""
        return self.run > 0 or self.accepted % SAMPLE_EVERY == 0

    def observe(self, step, t0: float, y0: torch.Tensor, t1: float) -> None:
        """Count the accepted explicit step ``step`` from (t0, y0) to t1 (solver time), testing it where
        :meth:`due`."""
        hrho = None
        if self.due():
            hrho = abs(t1 - t0) * stage_rho(self.tableau, y0, step.y1, step.ks, t1 - t0, self.rtol, self.atol)
        self.count(hrho, t0, t1)

    def count(self, hrho: float | None, t0: float, t1: float) -> None:
        """Count an accepted step from t0 to t1 (solver time) whose ``h * rho`` is ``hrho`` (None: the
        step was not tested, as it was not :meth:`due`)."""
        self.accepted += 1
        if hrho is None:
            return
        if not math.isfinite(hrho) or hrho <= self.limit:
            self.misses += 1
            if self.misses >= NONSTIFF_RESET:
                self.run, self.misses = 0, 0
            return
        if self.run == 0:
            self.run_start = t0
        self.run += 1
        self.misses = 0
        if self.run >= STIFF_STEPS:
            if not self.stiff:
                self.stiff_from = self.run_start
            self.stiff_to = t1
            self.largest = max(self.largest, hrho)

    def warn(self, reverse: bool) -> None:
        """Emit the one :class:`~hybrid_node.StiffGradientWarning` of the solve, if it was stiff.

        The text depends only on the method, so Python's default filter shows it once per calling line
        (a training loop's step warns once, not every step); the time range and ``h * rho`` are the
        instance's attributes. It is attributed to the first caller outside hybrid_node and torch.

        Args:
            reverse: the solve runs backwards in time (solver time is the user's negated).
        """
        if not self.stiff:
            return
        a, b = (-self.stiff_from, -self.stiff_to) if reverse else (self.stiff_from, self.stiff_to)
        warnings.warn(
            StiffGradientWarning(
                message_for(self.name),
                method=self.name,
                t_start=a,
                t_end=b,
                h_rho=self.largest,
                limit=self.limit,
            ),
            stacklevel=caller_stacklevel(_SKIPPED),
        )


def row_hrho(
    tableau, y0: torch.Tensor, y1: torch.Tensor, ks, h: torch.Tensor, rtol: float, atol: float
) -> torch.Tensor:
    """``h * rho`` of each row (first dimension) of a batched explicit step, on the state's device.

    ``|h|`` times :func:`~hybrid_node.solvers.auto_switch.stage_ratios` of each row (Hairer & Wanner,
    Solving ODEs II, Section IV.2: ``|k_s - k_(s-1)| / |y1 - Y_(s-1)|``, both stages at the step's end,
    weighted by the tolerances), for per-sample step control, where every row has its own step;
    nothing is read on the host, so the loop can fold the result into a read it makes anyway.

    Args:
        tableau: the method's tableau (its row ``a[s-2]`` rebuilds the stage state ``Y_(s-1)``).
        y0, y1: the step's start and end states, shape (batch, ...); ks: its stage derivatives.
        h: the rows' step sizes, shape (batch,).
        rtol, atol: the solve's (smallest) tolerances.

    Returns:
        Shape (batch,), in ``h``'s dtype; 0 where the two stage states coincide.
    """
    rows = h.shape[0]

    def flat(x: torch.Tensor) -> torch.Tensor:
        # one row per sample (elementwise work is unchanged by it); the size is spelt out, as -1 is
        # ambiguous for an empty state
        return x.reshape(rows, math.prod(x.shape[1:]))

    rho = stage_ratios(tableau, flat(y0), flat(y1), [flat(k) for k in ks], h.reshape(rows, 1), rtol, atol, 1)
    return h.abs() * rho.to(h.dtype)


def largest_rho(watch: StiffnessWatch, y0: torch.Tensor, step, dt: float, batch_dims: int) -> torch.Tensor:
    """The largest of the samples' :func:`~hybrid_node.solvers.auto_switch.stage_ratios` of a shared
    step, as a 0-d tensor on the state's device (0 for an empty state): a loop that reads on the host
    anyway folds it into that read.

    Args:
        watch: the solve's watch (its tableau and tolerances).
        y0: the step's start state; step: the explicit step (its ``y1`` and ``ks``); dt: its size.
        batch_dims: the leading dimensions that index samples.

    Returns:
        The estimate, in the error test's precision.
    """
    ratios = stage_ratios(watch.tableau, y0, step.y1, step.ks, dt, watch.rtol, watch.atol, batch_dims)
    return ratios.max() if ratios.numel() else ratios.new_zeros(())


def message_for(name: str) -> str:
    """The warning's text for method ``name``: constant, so that repeats of it collapse."""
    return (
        f"A solve through {name!r}, an explicit method, was stiff: its steps sat at the method's stability "
        "limit (the warning's t_start, t_end, h_rho and limit attributes say where and how far). Direct "
        "backpropagation differentiates those steps with their sizes frozen, which can be unstable: the "
        "gradient of this solve is unreliable (it can be off by orders of magnitude). Use a stiff method "
        "(method='bdf', 'kvaerno5' or 'rodas5p'), or an adjoint (odeint_adjoint, or "
        "sensitivity=hn.InterpolatingAdjoint()), or check the gradient against finite differences."
    )


#: the folders whose frames are skipped when naming the warning's line: this package's and torch's
_SKIPPED = (PACKAGE_DIR, os.path.dirname(os.path.abspath(str(torch.__file__))) + os.sep)


def watch_for(solver, rtol, atol, differentiated: bool | None = None) -> StiffnessWatch | None:
    """A :class:`StiffnessWatch` for a solve that direct backpropagation will differentiate, else None.

    Args:
        solver: the loop's solver; watched when it is an adaptive explicit Runge-Kutta method whose last
            two stages sit at the step's end (dopri5, tsit5, dopri8).
        rtol, atol: the solve's tolerances.
        differentiated: whether the solve's steps will be differentiated; None: grad mode is on (the
            host loop, which also checks that the first step records a graph: :func:`records_steps`).
            A solve that runs without a graph and replays its steps for the gradient passes it.

    Returns:
        None where the steps are not differentiated or for other methods.
    """
    tableau = getattr(solver, "tableau", None)
    if differentiated is None:
        differentiated = torch.is_grad_enabled()
    if not differentiated or getattr(solver, "implicit", False) or tableau is None:
        return None
    if not (tableau.adaptive and has_end_stage_pair(tableau)):
        return None
    return StiffnessWatch(tableau, getattr(solver, "name", type(solver).__name__), rtol, atol)


def records_steps(step) -> bool:
    """Whether autograd records the steps: the first accepted step's state requires grad (through y0 or
    the field's parameters)."""
    return bool(step.y1.requires_grad)
