"""The stochastic adjoint: gradients of an SDE solve by a backward SDE on the same Brownian path.

The forward pass stores no graph, only the states at the output times. The backward pass solves the
augmented Stratonovich SDE for (y, a = dL/dy, a_theta = dL/dtheta) from ts[-1] back to ts[0] with the
stochastic midpoint method, on the forward step grid and the forward Brownian increments. Over a step,
with phi(t, y) = f(t, y) h + g(t, y) dW (f the Stratonovich drift), the increment of the augmented state
is (-phi, a dphi/dy, a dphi/dtheta): one vector-Jacobian product gives both the drift and the diffusion
parts. Ito SDEs are converted to Stratonovich form first (f - 1/2 (dg/dy) g; diagonal, scalar and
additive noise). Memory is O(len(ts)); the gradient error vanishes as dt -> 0.

Reference:
    X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud, "Scalable Gradients for Stochastic Differential
    Equations", AISTATS 2020, sections 3-4 (the stochastic adjoint and its backward Brownian path).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._autocast import full_precision_backward
from .._errors import SolverError, Status
from ..sensitivity._backward import first_order_only
from ._cotangents import step_cotangents, vjp
from ._loop import ForcedSteps, Trajectory, check_advance, error_ratio, integrate, logqp_rate, time_tolerance
from ._sde import SDEView
from ._validate import Prepared
from .solvers.base import SDESolver
from .solvers.milstein import diffusion_derivative_product


def _stratonovich_drift(sde: SDEView, t: float, y: torch.Tensor) -> torch.Tensor:
    f = sde.f(t, y)
    if sde.sde_type == "stratonovich" or sde.noise_type == "additive":
        return f
    _, bdb = diffusion_derivative_product(sde, t, y)
    return f - 0.5 * bdb


def _increment_vjp(
    sde: SDEView, params: Sequence[torch.Tensor], t: float, y: torch.Tensor, a: torch.Tensor, h: float, dw
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """phi(t, y) = f h + g dW and the cotangent a pulled back to y and to the parameters."""
    with torch.enable_grad():
        yy = y.detach().requires_grad_(True)
        if sde.sde_type == "ito" and sde.noise_type in ("diagonal", "scalar") and sde.plain_g:
            # The Ito-to-Stratonovich correction already evaluates the diffusion column b: reuse it for
            # the noise term instead of a second diffusion call.
            b, bdb = diffusion_derivative_product(sde, t, yy)
            phi = torch.addcmul(torch.add(sde.f(t, yy), bdb, alpha=-0.5) * h, b, dw)
        else:
            phi = _stratonovich_drift(sde, t, yy) * h + sde.g_prod(t, yy, dw)
        grads = vjp(phi, (yy, *params), a)
    return phi.detach(), grads[0], grads[1:]


def rate_vjp(
    sde: SDEView, params: Sequence[torch.Tensor], t: float, y: torch.Tensor, h: float, cot: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The cotangent ``cot`` of the KL increment rate(t, y) h pulled back to y and to the parameters.

    Args:
        sde: the SDE (its drift, diffusion and prior drift give the rate); params: tensors to differentiate;
        t, y: where the rate is evaluated; h: the step; cot: the cotangent of the increment, (batch,).

    Returns:
        (the cotangent of y, [the cotangent of p for p in params]), zeros where the rate does not depend on one.
    """
    with torch.enable_grad():
        yy = y.detach().requires_grad_(True)
        grads = vjp(logqp_rate(sde, t, yy) * h, (yy, *params), cot)
    return grads[0], grads[1:]


def increment_vjp(
    solver: SDESolver,
    sde: SDEView,
    bm: Any,
    params: Sequence[torch.Tensor],
    t0: float,
    t1: float,
    y: torch.Tensor,
    cot: torch.Tensor,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The cotangent ``cot`` of a step's KL increment, by the method's own quadrature, pulled back to y and params.

    The forward solve integrates the KL rate with the method's stages (:meth:`SDESolver.logqp_step`), so
    its increment over [t0, t1] is a function of the step's start state y through those stages (the
    midpoint state, Heun's predictor, ...); differentiating the left-point rate instead was off the
    forward's gradient by O(h) (1.5 % at dt = 0.04 with midpoint, tests/test_sde_logqp_order.py).
    Left-point methods take the rate alone. A method with an extra state restarts it from y here
    (reversible Heun: z = y), as the stochastic adjoint keeps no extra state.

    Args:
        solver: the forward method; sde: the SDE; bm: the forward Brownian path; params: tensors to
        differentiate; t0, t1: the step; y: the state at t0; cot: the cotangent of the increment, (batch,).

    Returns:
        (the cotangent of y, [the cotangent of p for p in params]).
    """
    if type(solver).logqp_step is SDESolver.logqp_step:  # the left-point rule: the rate at (t0, y) alone
        return rate_vjp(sde, params, t0, y, t1 - t0, cot)
    with torch.enable_grad():
        yy = y.detach().requires_grad_(True)
        _, _, inc, _ = solver.logqp_step(sde, bm, t0, t1, yy, solver.init(sde, t0, yy), None)
        grads = vjp(inc, (yy, *params), cot)
    return grads[0], grads[1:]


class StepCotangents:
    """The cotangents a backward pass over the recorded steps adds to the adjoint at each step time.

    Those of the outputs (dL/dys split over the step states they were interpolated from) and, with
    logqp, those of the KL integral: a sum of increments over the steps whose cumulative value is an
    output at every step, so the increment of step n is weighted by the cotangents of the cumulative
    integral at every later step, a running sum kept in ``later``. Each increment is differentiated as
    the method computes it from the step's start state (:func:`increment_vjp`).

    Reference: X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud, "Scalable Gradients for Stochastic
    Differential Equations", AISTATS 2020, section 5 (the KL term of the latent SDE's ELBO).

    Args:
        traj: the recorded forward solve.
        grad_ys: dL/dys; grad_log_ratios: dL/d(cumulative KL integral at each output), with logqp.
        solver, bm: the forward method and Brownian path, whose stages the KL increments are taken at.
    """

    def __init__(
        self,
        traj: Trajectory,
        grad_ys: torch.Tensor,
        grad_log_ratios: torch.Tensor | None,
        solver: SDESolver,
        bm: Any,
    ):
        self.solver, self.bm = solver, bm
        self.steps = traj.steps
        self.n_steps = len(traj.steps) - 1
        self.outputs = step_cotangents(traj, grad_ys)
        self.kl = {} if grad_log_ratios is None else step_cotangents(traj, grad_log_ratios)
        self.later: torch.Tensor | None = self.kl.get(self.n_steps)

    def at_end(self, y: torch.Tensor) -> torch.Tensor:
        """The adjoint of the last step state ``y``: its output cotangent, or zeros."""
        return self.outputs.get(self.n_steps, torch.zeros_like(y))

    def enter_at(self, n: int) -> bool:
        """Whether anything is added at step n (the adaptive backward pass must stop there)."""
        return n in self.outputs or n in self.kl or self.later is not None

    def add(
        self,
        n: int,
        sde: SDEView,
        params: Sequence[torch.Tensor],
        y: torch.Tensor,
        a: torch.Tensor,
        a_params: list[torch.Tensor],
        with_kl: bool = True,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Add what enters at step n, whose state is ``y``, to the adjoint, walking backwards.

        Args:
            n: the step index (decreasing from call to call); sde, params: the problem.
            y: the state at step n's start (the KL increment of step n is a function of it).
            a, a_params: the adjoint of y and of the parameters after step n was undone.
            with_kl: differentiate the KL increment of step n here; False where the caller does (the
                reversible adjoint, at its recovered states z), reading ``later`` (the cotangent of step n's
                increment) before this call.

        Returns:
            (a, a_params) with the KL rate's and the outputs' cotangents at step n added.
        """
        if self.later is not None and with_kl:
            t0, t1 = self.steps[n], self.steps[n + 1]
            vy, vp = increment_vjp(self.solver, sde, self.bm, params, t0, t1, y, self.later)
            a = a + vy
            a_params = [acc + v for acc, v in zip(a_params, vp)]
        if n in self.outputs:
            a = a + self.outputs[n]
        if n in self.kl:
            self.later = self.kl[n] if self.later is None else self.later + self.kl[n]
        return a, a_params


@dataclasses.dataclass(frozen=True)
class BackwardSteps:
    """How the backward adjoint SDE is stepped: on the forward grid, or adaptively by step doubling.

    Attributes:
        adaptive: step doubling (torchsde's ``adjoint_adaptive``) instead of the forward step grid.
        dt: the first step size; rtol, atol: tolerances of the error norm; dt_min: the smallest step.
    """

    adaptive: bool = False
    dt: float = 1e-3
    rtol: float = 1e-5
    atol: float = 1e-4
    dt_min: float = 1e-5


def _midpoint_back(
    sde: SDEView, params: Sequence[torch.Tensor], bm: Any, t0: float, t1: float, y: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One step of the stochastic midpoint rule for the augmented SDE, from t1 down to t0.

    Returns:
        (y at t0, a at t0, the increment of dL/dparams over the step).
    """
    h = t1 - t0
    dw = bm(t0, t1)
    phi1, vy1, _ = _increment_vjp(sde, (), t1, y, a, h, dw)  # the midpoint rule drops stage 1's dL/dparams
    phi2, vy2, vp2 = _increment_vjp(sde, params, t0 + 0.5 * h, y - 0.5 * phi1, a + 0.5 * vy1, h, dw)
    return y - phi2, a + vy2, vp2


def cotangents_finite(*cotangents: torch.Tensor | None) -> bool:
    """Whether every given output cotangent is finite (None counts as finite)."""
    return all(bool(torch.isfinite(c).all()) for c in cotangents if c is not None)


def check_gradients_finite(t: float, grad_y0: torch.Tensor, grad_params: Sequence[torch.Tensor]) -> None:
    """Raise unless the gradients a backward solve returns are finite.

    Direct backprop would give the same garbage, but the adjoint's backward solve is a solve of its own,
    which can overflow where the forward one did not (it reconstructs the state backwards in time): report
    it as the forward solve reports a non-finite state, instead of handing NaN to the optimiser.

    Args:
        t: where the backward solve ended (ts[0]); grad_y0, grad_params: its results.

    Raises:
        SolverError: some gradient is NaN or infinite.
    """
    if not cotangents_finite(grad_y0, *grad_params):
        raise SolverError(
            Status.NONFINITE,
            t,
            "the adjoint's backward solve returned NaN or infinite gradients from finite output cotangents: "
            "the state reconstructed backwards or the adjoint overflowed (take a smaller dt, or use sdeint "
            "for direct backprop)",
        )


def _error_ratio(full: Sequence[torch.Tensor], halves: Sequence[torch.Tensor], rtol: float, atol: float) -> float:
    """The largest root-mean-square error ratio over the parts of the augmented state (NaN if any is)."""
    ratios = [error_ratio(x, z, rtol, atol) for x, z in zip(full, halves)]
    # max() keeps its first argument against a NaN (NaN compares false), so a NaN adjoint or dL/dparams
    # increment behind a finite state's ratio read as a passing step.
    return math.nan if any(math.isnan(r) for r in ratios) else max(ratios, default=0.0)


def _adaptive_back(
    sde: SDEView,
    params: Sequence[torch.Tensor],
    bm: Any,
    t_lo: float,
    t_hi: float,
    y: torch.Tensor,
    a: torch.Tensor,
    control: BackwardSteps,
    step_size: float,
    forced: ForcedSteps | None = None,
    strict: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], float, int]:
    """Solve the augmented SDE from t_hi down to t_lo with step doubling on the forward Brownian path.

    A step of h is compared with two of h/2 (every part of the augmented state: y, a and the dL/dparams
    increment); the two half steps are kept when accepted. The Brownian motion is queried at the new
    times, which a Brownian interval answers from the bridge of the forward path, so the backward solve
    still sees the forward noise.

    ``forced`` (if given) records the steps accepted at dt_min with an error ratio above 1. A step whose
    error estimate is not finite is rejected and the step shrunk, as in the forward solve. With ``strict``
    False (the output cotangents were already NaN or infinite, so the gradients are too, as with direct
    backprop) such a step is accepted at once.

    Returns:
        (y at t_lo, a at t_lo, the dL/dparams increment, the next step size, the number of accepted steps).

    Raises:
        SolverError: the error estimate is not finite even at dt_min (the reconstructed state, the adjoint
            or the dL/dparams increment overflowed or became NaN).

    Reference:
        X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud, "Scalable Gradients for Stochastic Differential
        Equations", AISTATS 2020 (adaptive solves of the adjoint SDE on a Brownian tree); J. G. Gaines,
        T. J. Lyons, SIAM J. Appl. Math. 57(5), 1997 (step doubling on a Brownian path).
    """
    eps = time_tolerance(t_lo, t_hi)
    t = t_hi
    total = [torch.zeros_like(p) for p in params]
    accepted = 0
    while t > t_lo + eps:
        s = max(t - step_size, t_lo)
        if s - t_lo < eps:
            s = t_lo
        check_advance(t, s, step_size)
        mid = 0.5 * (s + t)
        y_full, a_full, p_full = _midpoint_back(sde, params, bm, s, t, y, a)
        y_mid, a_mid, p_mid = _midpoint_back(sde, params, bm, mid, t, y, a)
        y_new, a_new, p_new = _midpoint_back(sde, params, bm, s, mid, y_mid, a_mid)
        p_halves = [u + v for u, v in zip(p_mid, p_new)]
        err = _error_ratio([y_full, a_full, *p_full], [y_new, a_new, *p_halves], control.rtol, control.atol)
        if not math.isfinite(err) and not strict:
            err = 0.0  # NaN came in with the cotangents: no step size would help, so do not crawl at dt_min
        elif not math.isfinite(err):
            # Reject and shrink, as the forward solve does; at dt_min fail: accepting would carry NaN (or
            # infinity) through the rest of the backward solve into the gradients without a word.
            if step_size <= control.dt_min:
                raise SolverError(
                    Status.NONFINITE,
                    t,
                    "the backward (adjoint) solve's step-doubling error estimate is not finite even at dt_min: "
                    "the reconstructed state or the adjoint overflowed on the way back (lower dt_min, or solve "
                    "on the forward grid with adjoint_adaptive=False, or use sdeint for direct backprop)",
                )
            step_size = max(0.2 * step_size, control.dt_min)
            continue
        factor = 10.0 if err == 0 else min(10.0, max(0.2, 0.9 * err**-0.5))
        accept = err <= 1.0 or step_size <= control.dt_min
        step_size = max(step_size * factor, control.dt_min)
        if accept:
            if forced is not None:
                forced.add(err, t)
            t, y, a = s, y_new, a_new
            total = [acc + v for acc, v in zip(total, p_halves)]
            accepted += 1
    return y, a, total, step_size, accepted


def backward_pass(
    prepared: Prepared,
    params: Sequence[torch.Tensor],
    traj: Trajectory,
    grad_ys: torch.Tensor,
    grad_log_ratios: torch.Tensor | None = None,
    control: BackwardSteps | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Solve the adjoint SDE backwards, on the forward step grid or adaptively.

    On the forward grid: one midpoint step per forward step. Adaptive (``control.adaptive``): step
    doubling between the step times where the backward pass must stop, those where output cotangents
    enter or a stored forward state restarts y (and, with logqp, every forward step, where the KL
    increment's gradient is taken).

    Args:
        prepared: the checked problem; params: tensors to differentiate; traj: the recorded forward solve;
        grad_ys: dL/dys; grad_log_ratios: dL/d(cumulative KL integral at each output), with logqp;
        control: how to step (default: the forward grid).

    Returns:
        (dL/dy0, [dL/dp for p in params]).

    Raises:
        SolverError: the gradients came out NaN or infinite from finite output cotangents (the backward
            reconstruction of the state or the adjoint overflowed; adaptive: where the error estimate did).
    """
    sde, bm, steps = prepared.sde, prepared.bm, traj.steps
    strict = cotangents_finite(grad_ys, grad_log_ratios)
    entering = StepCotangents(traj, grad_ys, grad_log_ratios, prepared.solver, bm)
    n_steps = entering.n_steps
    y = traj.kept[n_steps]
    a = entering.at_end(y)
    a_params = [torch.zeros_like(p) for p in params]
    adaptive = control is not None and control.adaptive
    step_size = control.dt if control is not None else 0.0
    hi = n_steps  # adaptive: the step index the pending backward segment starts from
    forced = ForcedSteps()  # adaptive: steps accepted at dt_min above the tolerance, for one warning
    for n in range(n_steps - 1, -1, -1):
        t0, t1 = steps[n], steps[n + 1]
        stop = n in traj.kept or entering.enter_at(n) or n == 0
        if not adaptive:
            y, a, vp = _midpoint_back(sde, params, bm, t0, t1, y, a)
            a_params = [acc + v for acc, v in zip(a_params, vp)]
        elif stop:
            assert control is not None
            y, a, vp, step_size, _ = _adaptive_back(
                sde, params, bm, t0, steps[hi], y, a, control, step_size, forced, strict
            )
            a_params = [acc + v for acc, v in zip(a_params, vp)]
            hi = n
        else:
            continue  # nothing happens at this step time: the adaptive segment runs on past it
        if n in traj.kept:
            y = traj.kept[n]  # restart from the stored forward state: the reconstruction error stays local
        a, a_params = entering.add(n, sde, params, y, a, a_params)
    if control is not None:
        forced.warn(control.dt_min)
    if strict:
        check_gradients_finite(steps[0], a, a_params)
    return a, a_params


def recorded_forward(
    prepared: Prepared, settings: Mapping[str, Any], holder: list, y0: torch.Tensor
) -> tuple[Trajectory, torch.Tensor, torch.Tensor]:
    """The forward solve of an adjoint's autograd Function: without a graph, recording every step.

    Args:
        prepared: the checked solve; settings: step-size settings of :func:`~hybrid_node.sde._loop.integrate`;
        holder: receives the solver's extra state (the caller reports it); y0: the initial state.

    Returns:
        ``(trajectory, ys, log_ratios)``: ys stacked over the output times, log-ratios zeros without logqp.
    """
    with torch.no_grad():
        traj = integrate(prepared.solver, prepared.sde, prepared.bm, y0, prepared.ts, record=True, **settings)
    holder.append(traj.extra)
    ys = torch.stack(traj.ys)
    lrs = torch.stack(traj.log_ratios) if traj.log_ratios else ys.new_zeros(ys.shape[:2])
    return traj, ys, lrs


def first_order_gradients(
    grad_y0: torch.Tensor, grad_params: Sequence[torch.Tensor], depends_on: Sequence[torch.Tensor | None]
) -> list[torch.Tensor | None]:
    """The gradients an SDE adjoint's backward pass returns, refusing a second derivative.

    The backward SDE is solved with vector-Jacobian products whose results are not recorded as
    functions of the output cotangents, so ``create_graph=True`` (``torch.autograd.functional.jvp``,
    Hessians) saw them as (partly) constant and a second derivative came out wrong without an error.

    Args:
        grad_y0, grad_params: the gradients of the backward pass.
        depends_on: what they depend on (the cotangents, y0 and the parameters).

    Returns:
        The gradients, whose derivative raises (see
        :func:`hybrid_node.sensitivity._backward.first_order_only`).
    """
    message = (
        "sdeint_adjoint computes first derivatives only: its backward SDE is solved without a graph, so the "
        "gradient it returns cannot be differentiated again (create_graph=True, torch.autograd.functional.jvp or "
        "hessian, double backward). Use hn.sdeint (direct backpropagation) for those."
    )
    return first_order_only(message, [grad_y0, *grad_params], depends_on)


def no_forward_mode() -> None:
    """The forward-mode rule of the SDE adjoints' Functions: there is none, so say what to use.

    Raises:
        ValueError: always (forward-mode AD reached the adjoint with a tangent on y0 or a parameter).
    """
    raise ValueError(
        "sdeint_adjoint has no forward-mode derivative (torch.autograd.forward_ad dual tensors): its gradients "
        "come from a backward SDE. Use hn.sdeint, which differentiates in forward mode through its steps, or "
        "reverse mode (torch.autograd.grad) with sdeint_adjoint."
    )


class _StochasticAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        prepared: Prepared,
        settings: Mapping[str, Any],
        control: BackwardSteps,
        holder: list,
        y0: torch.Tensor,
        *params,
    ):
        traj, ys, lrs = recorded_forward(prepared, settings, holder, y0)
        ctx.prepared, ctx.traj, ctx.saved_params, ctx.control = prepared, traj, params, control
        ctx.y0 = y0  # only to join a second derivative's error node to what the gradients depend on
        return ys, lrs

    @staticmethod
    @full_precision_backward  # called inside torch.autocast, its solve ran in the autocast dtype
    def backward(ctx, grad_ys, grad_lrs):
        params = ctx.saved_params
        grad_lrs = grad_lrs if ctx.traj.log_ratios else None
        grad_y0, grad_params = backward_pass(ctx.prepared, params, ctx.traj, grad_ys, grad_lrs, ctx.control)
        grads = first_order_gradients(grad_y0, grad_params, [grad_ys, grad_lrs, ctx.y0, *params])
        return (None, None, None, None, *grads)

    @staticmethod
    def jvp(ctx, *tangents):
        no_forward_mode()  # raises, naming what to use


def solve_stochastic_adjoint(
    prepared: Prepared,
    y0: torch.Tensor,
    params: Sequence[torch.Tensor],
    settings: Mapping[str, Any],
    control: BackwardSteps | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Forward solve without a graph; gradients to y0 and params by the stochastic adjoint.

    Args:
        prepared: the checked problem; y0: (batch, d); params: tensors to differentiate; settings: the
            step-size settings of :func:`hybrid_node.sde._loop.integrate` (``logqp`` included); control:
            how the backward SDE is stepped (default: on the forward step grid).

    Returns:
        (ys, the cumulative KL integral at each output (len(ts), batch; zeros without logqp), the solver's
        final extra state).

    Raises:
        ValueError: an Ito SDE with general noise (no Stratonovich conversion without the full Jacobian).
    """
    if prepared.sde.sde_type == "ito" and prepared.sde.noise_type == "general":
        raise ValueError(
            "the stochastic adjoint needs a Stratonovich SDE for general noise: write the SDE in Stratonovich "
            "form (sde_type='stratonovich') or use sdeint (direct backprop)."
        )
    holder: list = []
    control = BackwardSteps() if control is None else control
    ys, log_ratios = _StochasticAdjoint.apply(prepared, settings, control, holder, y0, *params)
    return ys, log_ratios, holder[0]
