"""The SDE time-stepping loop: fixed steps or step doubling, linear interpolation at the output times."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from .._errors import SolverError, Status
from ..controllers import error_ratio as ode_error_ratio
from ..controllers import rms_norm
from ._kl import logqp_rate as logqp_rate  # the adjoints take the rate from here
from ._sde import SDEView
from .solvers.base import SDESolver


@dataclasses.dataclass
class Trajectory:
    """What one solve produced.

    Attributes:
        ys: the state at each output time.
        log_ratios: with logqp, the integral of 1/2 |u|^2 from ts[0] to each output time, (batch,) each.
        steps: the accepted step times, ts[0] first.
        weights: per output j, (k, w): ys[j] = (1 - w) y(steps[k]) + w y(steps[k + 1]).
        kept: the states at the step times that outputs are interpolated from (only when recorded).
        extra: the solver's extra state at the end.
    """

    ys: list[torch.Tensor]
    log_ratios: list[torch.Tensor]
    steps: list[float]
    weights: list[tuple[int, float]]
    kept: dict[int, torch.Tensor]
    extra: tuple


def time_tolerance(t0: float, t1: float) -> float:
    """How close a step's end may come to a time it heads for before it counts as there.

    Step times built by repeated addition miss t0 + k dt in the last bits, and a step left over by that
    rounding would be a few ulps long. A trillionth of the times' size covers that, and a billionth of
    the span keeps the tolerance far below any step: 1e-12 max(1, |t0|, |t1|) alone was 1.7e-3 at
    t = 1.7e9 (a Unix time), which merged the last two steps of dt = 1e-3 before each output (3 % off
    torchsde on GBM), and on [0, 1e-13] it took no step at all (y(t1) = y0).

    Args:
        t0, t1: the ends of the span that is stepped over.

    Returns:
        The tolerance (non-negative).
    """
    return min(1e-12 * max(1.0, abs(t0), abs(t1)), 1e-9 * abs(t1 - t0))


def check_advance(t: float, next_t: float, step_size: float) -> None:
    """Raise unless a step from t to next_t moves forward or backward in time at all.

    Args:
        t: where the step starts; next_t: where it ends; step_size: the size asked for.

    Raises:
        SolverError: the step is below the spacing of floats near t (the loop would never end).
    """
    if next_t == t:
        raise SolverError(
            Status.STEP_UNDERFLOW,
            t,
            f"a step of {step_size:g} does not change t, where floats are {math.ulp(t):g} apart: take a larger dt "
            "(dt_min when adaptive), or shift ts to start near 0 (and t inside f and g with it)",
        )


@dataclasses.dataclass
class ForcedSteps:
    """Steps accepted at dt_min although their error ratio was above 1, for one warning per solve.

    Attributes:
        count: how many; worst: the largest error ratio among them; t: where that step began.
    """

    count: int = 0
    worst: float = 0.0
    t: float = 0.0

    def add(self, err: float, t: float) -> None:
        """Record an accepted step of error ratio ``err`` that began at ``t`` (no-op when err <= 1)."""
        if err > 1.0:
            self.count += 1
            if err > self.worst:
                self.worst, self.t = err, t

    def warn(self, dt_min: float) -> None:
        """Warn once if any step was forced, as torchsde does (its first sentence, so its filters apply)."""
        if self.count:
            warnings.warn(
                f"Hitting minimum allowed step size in adaptive time-stepping: {self.count} step(s) of "
                f"dt_min={dt_min:g} were accepted with an error ratio above 1 (the largest, {self.worst:.3g}, at "
                f"t={self.t:.6g}), so the solution may miss rtol/atol there. Lower dt_min or loosen the tolerances.",
                stacklevel=4,
            )


def _interp(w: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if w == 0.0:
        return a
    if w == 1.0:
        return b
    return a + w * (b - a)


def error_ratio(y_full: torch.Tensor, y_half: torch.Tensor, rtol: float, atol: float) -> float:
    """The step-doubling error test: the RMS of ``y_full - y_half`` scaled by
    ``atol + rtol * max(|y_full|, |y_half|)`` (:func:`~hybrid_node.controllers.error_ratio`, so with
    atol = 0 a component that is 0 in both solutions counts as no error, and a NaN stays NaN)."""
    return ode_error_ratio(y_full - y_half, y_full, y_half, rtol, atol, rms_norm)


def _nonfinite_outputs(ys: list[torch.Tensor], ts: Sequence[float]) -> SolverError:
    """The failure of a solve whose last output is not finite, at its first non-finite output.

    A NaN stays NaN, so the outputs are finite up to some index and not after it; the error used to
    name the end of the solve, however early the state had turned non-finite.

    Args:
        ys: the outputs at ``ts`` (the last one not finite).
        ts: the output times.

    Returns:
        A NONFINITE SolverError at the first non-finite output, naming the last finite one and the fix.
    """
    finite = torch.stack([torch.isfinite(y).all() for y in ys]).tolist()  # one synchronisation
    j = finite.index(False)
    return SolverError(
        Status.NONFINITE,
        ts[j],
        f"first non-finite output of the SDE; the last finite one is at t={ts[j - 1]:.6g}; fixed steps do not "
        "stop where it happens: the drift or diffusion returned NaN or inf in between, dt is too large for the "
        "problem, or the solution blows up; use a smaller dt, or adaptive=True, which stops at the step where "
        "the state turns non-finite",
    )


def integrate(
    solver: SDESolver,
    sde: SDEView,
    bm: Any,
    y0: torch.Tensor,
    ts: Sequence[float],
    *,
    dt: float,
    adaptive: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-4,
    dt_min: float = 1e-5,
    logqp: bool = False,
    record: bool = False,
    extra0: tuple | None = None,
) -> Trajectory:
    """Solve the SDE from y0 at ts[0] and return the states at every time of ``ts``.

    Steps of ``dt`` (the last one shortened to end at ts[-1]); outputs between step times are linearly
    interpolated, as torchsde does. With ``adaptive`` the step size is chosen by step doubling: one step
    of h and two of h/2 are compared (rtol, atol; a root-mean-square norm), the two half steps are kept
    if accepted, as two steps (outputs are interpolated between the half steps' states). Rejected steps
    leave their Brownian samples in ``bm``, so the accepted path is the same Brownian path (no bias from
    rejection).

    Args:
        solver: the method; sde: the SDE; bm: Brownian motion over [ts[0], ts[-1]].
        y0: (batch, d); ts: increasing output times (floats).
        dt: (initial) step size; adaptive, rtol, atol, dt_min: step-size control.
        logqp: also integrate 1/2 |u|^2 for the KL term, by the method's own quadrature
            (:meth:`~hybrid_node.sde.solvers.base.SDESolver.logqp_step`).
        record: keep the step times' states that outputs depend on (for adjoints).
        extra0: the solver's extra state at ts[0] (default: solver.init).

    Returns:
        A :class:`Trajectory`.

    Raises:
        SolverError: the state became non-finite (adaptive: at the step where the error estimate did).
            Also a step too short to change t (below the spacing of floats there).

    Reference:
        P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992;
        J. G. Gaines, T. J. Lyons, "Variable step size control in the numerical solution of stochastic
        differential equations", SIAM J. Appl. Math. 57(5), 1997 (step control on a Brownian tree).
    """
    t_end = ts[-1]
    eps = time_tolerance(ts[0], t_end)
    t, y = ts[0], y0
    extra = solver.init(sde, t, y0) if extra0 is None else extra0
    lr = y0.new_zeros(y0.shape[0]) if logqp else None
    carry: Any = None  # what a method's KL quadrature hands from one step to the next (logqp_step)
    prev_t, prev_y, prev_lr = t, y, lr
    ys: list[torch.Tensor] = [y0]
    lrs: list[torch.Tensor] = [lr] if lr is not None else []
    steps, weights, kept = [t], [(0, 0.0)], {0: y0} if record else {}
    step_size = dt
    # Adaptive: an accepted step is its two half steps, taken one after the other: the second waits here.
    # Every step the solution took is then a step of ``steps`` (the reversible adjoint undoes them one by
    # one; the KL integral and the interpolation of outputs use the half steps' states).
    pending: tuple[float, torch.Tensor, tuple, Any, Any] | None = None
    forced = ForcedSteps()

    def advance(t0: float, t1: float, y0: torch.Tensor, extra0: tuple, carry0: Any):
        """One step and, with logqp, its KL increment by the method's own quadrature (else None)."""
        if lr is None:
            return (*solver.step(sde, bm, t0, t1, y0, extra0), None, None)
        return solver.logqp_step(sde, bm, t0, t1, y0, extra0, carry0)

    for out_t in ts[1:]:
        while t < out_t - eps:
            if pending is not None:
                (next_t, y_new, extra_new, inc, carry_new), pending = pending, None
            elif adaptive:
                next_t = min(t + step_size, t_end)
                if t_end - next_t < eps:
                    next_t = t_end
                check_advance(t, next_t, step_size)
                h = next_t - t
                y_full, _ = solver.step(sde, bm, t, next_t, y, extra)
                mid = t + 0.5 * h
                y_mid, extra_mid, inc_mid, carry_mid = advance(t, mid, y, extra, carry)
                y_end, extra_end, inc_end, carry_end = advance(mid, next_t, y_mid, extra_mid, carry_mid)
                with torch.no_grad():
                    err = error_ratio(y_full, y_end, rtol, atol)
                if not math.isfinite(err):
                    # Reject and shrink (a step too long can overflow); at dt_min fail here, where it began:
                    # accepting would cross the rest of the interval in dt_min steps of NaN.
                    if step_size <= dt_min:
                        raise SolverError(
                            Status.NONFINITE,
                            t,
                            "the step-doubling error estimate is not finite even at dt_min (the drift, the "
                            "diffusion or the state is NaN or infinite here)",
                        )
                    step_size = max(0.2 * step_size, dt_min)
                    continue
                factor = 10.0 if err == 0 else min(10.0, max(0.2, 0.9 * err**-0.5))
                accept = err <= 1.0 or step_size <= dt_min
                step_size = max(step_size * factor, dt_min)
                if not accept:
                    continue
                forced.add(err, t)
                pending = (next_t, y_end, extra_end, inc_end, carry_end)
                next_t, y_new, extra_new, inc, carry_new = mid, y_mid, extra_mid, inc_mid, carry_mid
            else:
                next_t = min(t + step_size, t_end)
                if t_end - next_t < eps:
                    next_t = t_end
                check_advance(t, next_t, step_size)
                y_new, extra_new, inc, carry_new = advance(t, next_t, y, extra, carry)
            prev_t, prev_y, prev_lr = t, y, lr
            if lr is not None:
                lr = lr + inc
            t, y, extra, carry = next_t, y_new, extra_new, carry_new
            steps.append(t)
        # ts is strictly increasing, so at least one step lies behind every output after the first.
        k = len(steps) - 2
        w = 1.0 if abs(out_t - t) <= eps else (out_t - prev_t) / (t - prev_t)
        weights.append((k, w))
        if record:
            kept[k], kept[k + 1] = prev_y, y
        ys.append(_interp(w, prev_y, y))
        if lr is not None and prev_lr is not None:
            lrs.append(_interp(w, prev_lr, lr))
    if not bool(torch.isfinite(ys[-1]).all()):
        raise _nonfinite_outputs(ys, ts)
    forced.warn(dt_min)
    return Trajectory(ys, lrs, steps, weights, kept, extra)
