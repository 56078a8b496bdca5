"""Per-sample adaptive stepping: every element of the batch has its own time, step size and
accept/reject decision, while all elements are still evaluated together in one call of the field.

A shared-step solve must take, for the whole batch, the small steps that any one element needs, at
any time any element needs them; with per-sample control an element whose dynamics are easy keeps
its large steps. It pays when the elements' hard phases differ (stiff transients at different
times, very different time scales); on a uniform batch it costs a few more tensor operations per
step. Select it with ``odeint(..., options={"per_sample": True})`` or ``PIDController(per_sample=True)``.

The field is called as ``func(t, y)`` with ``t`` of shape (batch,): each element's own time.

Reference: the batch-parallel, per-instance step-size control of M. Lienen and S. Günnemann,
"torchode: A Parallel ODE Solver for PyTorch", The Symbiosis of Deep Learning and Differential
Equations II, NeurIPS 2022 workshop; error norm and initial step from Hairer, Nørsett, Wanner,
Solving ODEs I, 2nd ed., Section II.4.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from typing import Protocol

import torch

from .._errors import SolverError, Status
from .._solution import Stats
from .._term import Term
from ..controllers import (
    ErrorPair,
    PIDController,
    combined_ratio,
    error_precision,
    first_trial_step,
    initial_step_from_trial,
    rms_norm,
    scaled_error,
    tolerance_precision,
)
from ..interpolation import hermite_weights, linear_combination
from . import core
from .core import TENSOR
from .diagnose import per_sample_cause
from .host import Integration
from .stiff_watch import StiffnessWatch, row_hrho, watch_for

#: noted on an error of the field's first call: per-sample control's ``t`` is not the scalar a
#: shared-step solve passes, and a torch broadcasting error does not say so
_T_HINT = (
    "per_sample calls func(t, y) with t of shape (batch,), one time per sample; a field written for a scalar "
    "t must shape it to broadcast against the state, e.g. t[:, None] for a (batch, n) state"
)


def check_per_sample(problem, event_fn) -> None:
    """Raise ValueError where per-sample stepping cannot serve the problem (says what to use instead)."""
    if not problem.solver.supports_per_sample:
        name = problem.solver.name
        reversible = name.startswith("reversible_")
        why = " (a reversible wrapper steps a pair of states, which per-sample control does not)" if reversible else ""
        raise ValueError(
            f"per_sample needs an explicit embedded Runge-Kutta pair (e.g. dopri5, tsit5, bosh3), got {name!r}{why}."
        )
    if problem.layout is not None:
        raise ValueError(
            "per_sample needs a single tensor state whose first dimension is the batch; "
            "concatenate tuple states into one tensor."
        )
    if problem.y0.dim() < 1:
        raise ValueError("per_sample needs a state of shape (batch, ...).")
    if event_fn is not None or problem.jump_t or problem.step_t:
        raise ValueError("per_sample does not support events, jump_t or step_t; use the shared-step solver.")
    if problem.controller.norm is not None:
        raise ValueError("per_sample uses the per-sample RMS norm; a custom norm is not supported.")
    if problem.y0.is_complex():
        raise ValueError(
            "per_sample does not integrate complex states; use the shared-step solver (per_sample=False), or "
            "torch.view_as_real(y0) as a real state."
        )


def _rms_rows(x: torch.Tensor) -> torch.Tensor:
    """The RMS of each row (first dimension) of ``x``: :func:`~hybrid_node.controllers.rms_norm` per sample."""
    return rms_norm(x.reshape(x.shape[0], -1), dim=1)


def _row_ratio(err: torch.Tensor, y: torch.Tensor, y1: torch.Tensor, rtol, atol) -> torch.Tensor:
    """Each row's RMS of ``err / (atol + rtol * max(|y|, |y1|))``: a sample's error ratio."""
    return _rms_rows(scaled_error(err, y, y1, rtol, atol))


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector shaped to broadcast against the state."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1)).to(like.dtype)


def integrate_per_sample(
    term: Term,
    solver,
    controller: PIDController,
    y0: torch.Tensor,
    ts: Sequence[float],
    *,
    rtol,
    atol,
    throw: bool = True,
) -> Integration:
    """Integrate every batch element with its own step-size control through the increasing times ``ts``.

    Args:
        term: the wrapped field (solver time); called with a per-sample time vector.
        solver: an ExplicitRungeKutta with an embedded pair.
        controller: the PIDController settings (applied per element).
        y0: initial state of shape (batch, ...).
        ts: increasing output times (host floats, solver time).
        rtol, atol: tolerances (floats or tensors broadcastable to the state).
        throw: raise SolverError on failure, else report the status. Without ``throw`` an element
            whose solve fails (step size underflow, non-finite state) stops there, its later outputs
            NaN, and the others go on to the end: each element's outputs are what it gets alone.

    Returns:
        Integration with the states at ``ts``. Its stats count batched steps: ``n_accepted`` the
        steps in which some element was accepted, ``n_rejected`` those in which none was. Its status
        is the failure of a failed element (NONFINITE where any failed for a non-finite state), at
        the earliest time where one failed; MAX_STEPS where the cap ended the solve and no element
        had failed before it.

    Raises:
        SolverError: max_num_steps reached, step-size underflow or a non-finite state, when ``throw``.
        RuntimeError, ValueError: the field's first call failed or returned the wrong shape: the field's own
            exception (or the shape check's), with a note (PEP 678) that ``t`` has one time per sample.
        TypeError: the field's first call returned no tensor, or one of another dtype than the state.
        ValueError: a ``first_step`` of neither one value nor one per sample.
    """
    tab = solver.tableau
    batch, dev = y0.shape[0], y0.device
    if batch == 0:  # no sample to step: every output is the (empty) initial state
        return Integration([y0] * len(ts), Stats(), Status.SUCCESS, ts[-1], sample_status=())
    tdt = torch.float64 if dev.type in ("cpu", "cuda") else torch.float32
    stats = Stats()

    def field(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        term.nfe += 1
        ts_ = (-s if term.reverse else s).to(term.t_dtype)
        if term._checked:
            out = term.func(ts_, y)
        else:  # the first call, where a field written for a scalar t fails: say what t is here
            try:
                out = term.func(ts_, y)
                term._check(out, y)
            except (RuntimeError, ValueError) as e:
                # a note (PEP 678), not a new exception: the caller gets the field's own error object, its
                # type, message and traceback unchanged (a user's error, an interrupt of their making)
                if hasattr(e, "add_note"):  # Python >= 3.11
                    e.add_note(_T_HINT)
                raise
        return -out if term.reverse else out

    # checked before the field is called: a wrong number of first steps is the caller's to fix
    given = (
        None if controller.first_step is None else _first_steps(controller.first_step, batch).to(device=dev, dtype=tdt)
    )
    t_end = ts[-1]
    t = torch.full((batch,), ts[0], dtype=tdt, device=dev)
    f0 = field(t, y0)
    with torch.no_grad():
        if given is not None:
            dt = given
        else:  # Hairer's initial step, per element
            # in float32 for a half-precision state, as the error test (float16 rounds atol = 1e-9 to 0)
            y0_e, f0_e = error_precision(y0), error_precision(f0)
            sc = tolerance_precision(atol) + tolerance_precision(rtol) * y0_e.abs()
            d1 = _rms_rows(f0_e / sc).to(tdt)
            h0 = first_trial_step(_rms_rows(y0_e / sc).to(tdt), d1)
    f1 = field(t + h0, y0 + _col(h0, y0) * f0) if given is None else None
    with torch.no_grad():
        if f1 is not None:
            d2 = _rms_rows((error_precision(f1) - f0_e) / sc).to(tdt) / h0
            dt = initial_step_from_trial(h0, d1, d2, solver.error_order)
        dt = dt.clamp(min=controller.min_step, max=controller.max_step)
        r_prev = torch.ones(batch, dtype=tdt, device=dev)
        r_prev2 = torch.ones(batch, dtype=tdt, device=dev)
    c = core.StepControl.of(controller, solver.error_order, y0.dtype)
    # the method's own error estimate and dense output where it has them (DOP853's), as the shared loop
    estimate = getattr(solver, "error_estimate", None)
    own_dense = getattr(solver, "dense_output", None)
    dense = tab.dense
    outs = [y0] + [torch.full_like(y0, math.nan) for _ in ts[1:]]
    y = y0
    # the elements whose solve failed (throw=False): they stop, the others are independent of them
    stopped = torch.zeros(batch, dtype=torch.bool, device=dev)
    failures: list[int] = []
    fail_status, fail_t = Status.SUCCESS, math.inf
    sample_status = [Status.SUCCESS] * batch
    n_iter = 0
    last = tab.stages - 1
    # direct backprop through an explicit method at its stability limit gives unreliable gradients: its
    # h * rho joins the read below, so watching costs no extra host sync
    watch = watch_for(solver, rtol, atol)
    while True:
        if n_iter >= controller.max_num_steps:
            with torch.no_grad():
                running = (~((t >= t_end) | stopped)).nonzero().reshape(-1).tolist()
            for i in running:
                sample_status[i] = Status.MAX_STEPS
            detail = f"max_num_steps={controller.max_num_steps}"
            # a sample that failed before the cap (throw=False) is the failure that throw=True raised there
            status = fail_status if failures else Status.MAX_STEPS
            return _failed(status, t, outs, stats, term, throw, detail, sample_status)
        n_iter += 1
        with torch.no_grad():
            done = (t >= t_end) | stopped
            # no 1% stretch here (stretch 1.0): an element lands on t_end only when its step reaches it
            lands, h, t_new = core.landing(TENSOR, t, dt, t_end, c.max_step, stretch=1.0)
            lands = lands & ~done
            h = torch.where(done, torch.zeros_like(dt), h)
            t_new = torch.where(lands, t_new, t + h)
        hc = h.reshape((-1,) + (1,) * (y.dim() - 1))  # the step as a column (in the time dtype)
        ks = [f0]
        y1 = None
        finite_in = None  # where the stages' states were finite: an element with any other is rejected
        stand_in = y.detach()
        for i in range(1, tab.stages):
            yi = linear_combination(y, hc, tab.a[i], ks)
            if i == last and tab.fsal:
                y1 = yi
            yi, ok = _finite_or(yi, stand_in)
            finite_in = ok if finite_in is None else finite_in & ok
            ks.append(field(t + tab.c[i] * h, yi))
        if y1 is None:
            y1 = linear_combination(y, hc, tab.b, ks)
        with torch.no_grad():
            if estimate is None:
                err = linear_combination(None, hc, tab.b_error, ks)
            else:  # per sample: an estimate may take norms over its whole state
                err = torch.vmap(estimate)(hc, ks)
            if isinstance(err, ErrorPair):  # DOP853's: each estimate scaled and normed per row, then combined
                ratio = combined_ratio(_row_ratio(err.high, y, y1, rtol, atol), _row_ratio(err.low, y, y1, rtol, atol))
            else:
                ratio = _row_ratio(err, y, y1, rtol, atol)
            ratio = ratio.to(tdt)
            if finite_in is not None:
                # a stage that a zero weight leaves out of the solution and the estimate (dopri5's
                # second) would otherwise let an attempt whose later stages were fed a stand-in pass
                ratio.masked_fill_(~finite_in.reshape(batch, -1).all(dim=1), math.inf)
            finite = torch.isfinite(ratio)
            accept = core.accepts(TENSOR, c, ratio, h) & ~done
            # read on the host every batched step, all needed there at once: the span of times covered (the
            # outputs to emit), the accepted count (a pair without first-same-as-last calls the field) and
            # whether all are done (the loop's end); the failure flags are a second read, after the step
            # sizes below. On the CPU a read waits for nothing: it costs the reductions that build it, both
            # reads 1.4-1.8% of a step (B=512, MLP 2-64-64-2, dopri5; benchmarks/per_sample_host_sync.py).
            # Folding the flags into this read (the step sizes computed first: the same values) saved
            # nothing measurable (1-4% in A/B runs, within their noise), so the loop keeps them apart
            reads = [
                torch.where(accept, t, torch.full_like(t, math.inf)).min(),
                torch.where(accept, t_new, torch.full_like(t, -math.inf)).max(),
                accept.sum().to(tdt),
                (done | (accept & lands)).all().to(tdt),
            ]
            if watch is not None and not y1.requires_grad:  # no graph recorded: nothing to watch
                watch = None
            tested = watch is not None and watch.due()
            if tested:  # the largest h * rho among the accepted rows
                assert watch is not None
                hrho = watch_rows(watch, y, y1, ks, h, accept)
                reads.append(hrho.to(tdt))
            lo, hi, n_acc, all_done, *hrho_read = torch.stack(reads).tolist()
        acc_col = _col(accept, y).bool()
        y_next = torch.where(acc_col, y1, y)
        f_next = ks[-1] if tab.fsal else None
        if f_next is None and n_acc > 0:
            f_next = field(t_new, y_next)
        if n_acc > 0:
            stats.n_accepted += 1
            if watch is not None:  # the batch's accepted span stands for the step's times
                watch.count(hrho_read[0] if tested else None, lo, hi)
            if dense is not None:
                interp: _Dense = _Polynomial(dense, ks)
            elif own_dense is not None:
                interp = _Own(own_dense, field, t, y, h, ks, y1)
            else:  # cubic Hermite from the derivatives at both ends, as the shared loop's
                assert f_next is not None  # ks[-1] (first-same-as-last) or evaluated above
                interp = _Hermite(y1, ks[0], f_next)
            _emit_outputs(outs, ts, lo, hi, t, t_new, h, accept, y, interp)
        else:
            stats.n_rejected += 1
        y = y_next
        if f_next is not None:
            f0 = torch.where(acc_col, f_next, f0)
        with torch.no_grad():
            t = torch.where(accept, t_new, t)
            # torchode's floor on the error ratio: a sample at rest grows its steps as torchode's does
            dt_next, r_prev, r_prev2 = core.propose(
                TENSOR, c, h, ratio, accept, r_prev, r_prev2, floor=core.PER_SAMPLE_RATIO_FLOOR
            )
            # an element rejected with a non-finite ratio is the per-element ``last_nonfinite``
            dt_next, code = core.settle(TENSOR, c, (t >= t_end) | stopped, t, dt_next, h, ~finite & ~accept, ts[0])
            dt = torch.where(~done, dt_next, dt)
        if all_done:
            break
        with torch.no_grad():
            bad, nonfinite = torch.stack([(code > core.SUCCESS).any(), (code == core.NONFINITE).any()]).tolist()
        if bad:
            status = Status.NONFINITE if nonfinite else Status.STEP_UNDERFLOW
            if throw:  # name the samples that failed: the others' outputs are theirs
                rows = (code == core.NONFINITE) if nonfinite else (code > core.SUCCESS)
                failed = rows.nonzero().reshape(-1).tolist()
                detail = _detail(status, failed, batch)
                cause = per_sample_cause(status, field, term, t, y, y0, failed)
                return _failed(status, t[failed[0]], outs, stats, term, throw, detail, sample_status, cause)
            rows = code > core.SUCCESS
            failed = rows.nonzero().reshape(-1).tolist()
            failures += failed
            for i, why in zip(failed, code[rows].tolist()):
                sample_status[i] = Status.NONFINITE if why == core.NONFINITE else Status.STEP_UNDERFLOW
            fail_status = Status.NONFINITE if Status.NONFINITE in (fail_status, status) else status
            stopped = stopped | rows
            with torch.no_grad():
                t_first, all_stopped = torch.stack([t[rows].min(), ((t >= t_end) | stopped).all().to(tdt)]).tolist()
            fail_t = min(fail_t, t_first)
            if all_stopped:
                break
    if failures:
        detail = _detail(fail_status, failures, batch)
        t_fail = torch.tensor(fail_t, dtype=torch.float64)
        return _failed(fail_status, t_fail, outs, stats, term, throw, detail, sample_status)
    stats.nfe = term.nfe
    if watch is not None:
        watch.warn(term.reverse)
    return Integration(outs, stats, Status.SUCCESS, t_end, sample_status=tuple(sample_status))


def watch_rows(watch: StiffnessWatch, y, y1, ks, h: torch.Tensor, accept: torch.Tensor) -> torch.Tensor:
    """The largest ``h * rho`` among the accepted rows of a batched step (0 where none is finite), on the
    device (:func:`~hybrid_node.loop.stiff_watch.row_hrho`)."""
    hrho = row_hrho(watch.tableau, y, y1, ks, h, watch.rtol, watch.atol)
    return torch.where(accept & torch.isfinite(hrho), hrho, torch.zeros_like(hrho)).max()


def _first_steps(first_step, batch: int) -> torch.Tensor:
    """The first step of every sample from ``PIDController.first_step``: one for all, or one per sample.

    Args:
        first_step: a number, or a tensor or array (checked positive and finite by the controller).
        batch: the number of samples.

    Returns:
        The steps, shape (batch,), without a graph.

    Raises:
        ValueError: neither one value nor one per sample.
    """
    # a Python float in float64: torch.as_tensor would round it to the default dtype (float32)
    given = (
        first_step.detach()
        if isinstance(first_step, torch.Tensor)
        else torch.as_tensor(first_step, dtype=torch.float64)
    )
    steps = given.reshape(-1)
    if steps.numel() not in (1, batch):
        raise ValueError(
            f"first_step has {steps.numel()} values but the batch has {batch} samples; give one first step "
            "for every sample, or one per sample."
        )
    return steps.expand(batch) if steps.numel() == 1 else steps


def _finite_or(x: torch.Tensor, fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` with its non-finite values replaced by ``fallback``'s, and where ``x`` was finite.

    The input of a batched call of the field: a sample whose attempt went non-finite (a failing
    sample, or a step too large for the field's domain) is still a row of every later call, and its
    rejection gives that row a zero cotangent, but the field's backward multiplies the cotangent by
    its input (a weight's gradient is ``cotangent^T @ input``): 0 * inf made the parameter gradients
    of the whole batch NaN. Fed finite stand-ins, the row's zero cotangent gives zero gradients; the
    caller rejects the attempt.

    Args:
        x: a stage's state, shape (batch, ...).
        fallback: finite values of the same shape, without a graph (the step's start, detached).

    Returns:
        ``(x_or_fallback, finite)``: the field's input and ``isfinite(x)``.
    """
    with torch.no_grad():
        finite = torch.isfinite(x)
    return torch.where(finite, x, fallback), finite


def _detail(status: Status, failed: list[int], batch: int) -> str:
    """The failure's detail: which samples failed, and how (the first ten of them)."""
    what = "non-finite state" if status is Status.NONFINITE else "step size underflow"
    more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
    return f"per-sample {what} in sample(s) {failed[:10]}{more} of {batch}"


@functools.lru_cache(maxsize=32)
def _dense_tensor(dense, dtype, device) -> torch.Tensor:
    """The continuous extension's coefficients as a (P, S) tensor (built once per dtype and device)."""
    return torch.tensor(dense, dtype=dtype, device=device).T.contiguous()


class _Dense(Protocol):
    """Each element's dense output over its own step: ``y(t + theta h)`` for thetas (J, B)."""

    def increments(self, theta: torch.Tensor, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y(t + theta h) - y`` for every output j and element b, shape (J, B, N) (state flattened)."""
        ...


class _Polynomial:
    """The tableau's continuous extension (dopri5, tsit5), as elementwise sums over its stages.

    Each element's increment is ``h sum_s b_s(theta) k_s`` with ``b_s(theta) = sum_p d_sp theta^p``
    (Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.6), the polynomials by Horner's rule.
    Elementwise operations round every element alone, so a sample's dense output does not depend on
    the others in the batch; a batched matrix product (``einsum``) picks its kernel by the batch's
    shape, and rounded a sample's outputs differently alone and in a batch (by an ulp).
    """

    def __init__(self, dense, ks: Sequence[torch.Tensor]):
        self.dense, self.ks = dense, ks
        self.used = [any(row) for row in dense]

    def increments(self, theta, h, y):
        batch = y.shape[0]
        coeffs = _dense_tensor(self.dense, y.dtype, y.device)  # (P, S): row p holds theta^(p+1)'s weights
        th = theta.to(y.dtype)[..., None]  # (J, B, 1)
        weights = coeffs[-1].expand(th.shape[:2] + coeffs.shape[1:])
        for p in range(coeffs.shape[0] - 2, -1, -1):  # Horner: b_s = theta (d_s1 + theta (d_s2 + ... theta d_sP))
            weights = weights * th + coeffs[p]
        weights = weights * th * h.to(y.dtype)[None, :, None]  # (J, B, S), scaled by each element's step
        out = None
        for s, k in enumerate(self.ks):
            if self.used[s]:
                term = weights[..., s : s + 1] * k.reshape(batch, -1)  # (J, B, N), fresh: summed in place
                out = term if out is None else out.add_(term)
        assert out is not None  # a continuous extension has a nonzero weight
        return out


class _Hermite:
    """Cubic Hermite from each element's values and derivatives at its step's ends (Hairer, Nørsett,
    Wanner, Section II.6): third order, for the pairs without a continuous extension (bosh3, fehlberg2,
    adaptive_heun), as the shared-step loop interpolates them."""

    def __init__(self, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor):
        self.y1, self.f0, self.f1 = y1, f0, f1

    def increments(self, theta, h, y):
        batch = y.shape[0]
        th = theta.to(y.dtype)[..., None]  # (J, B, 1)
        hh = h.to(y.dtype)[None, :, None]
        _, w01, w10, w11 = hermite_weights(th, hh)  # y0's weight is 1 - w01: its increment is w01 (y1 - y0)
        rows = [x.reshape(batch, -1) for x in (self.y1, self.f0, self.f1)]
        return w01 * (rows[0] - y.reshape(batch, -1)) + w10 * rows[1] + w11 * rows[2]


class _Own:
    """The method's own dense output (DOP853's, with its extra stages), built per element: the step's
    start time and size as columns, its extra stages one call of the field for the whole batch."""

    def __init__(self, factory, field, t, y, h, ks, y1):
        col = (-1,) + (1,) * (y.dim() - 1)
        stand_in = y.detach()

        def column_field(s: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            # the extra stages' times, one per element; a rejected element's stages may be non-finite
            # (see _finite_or), and its outputs are not emitted
            return field(s.reshape(-1), _finite_or(yi, stand_in)[0])

        self.interp = factory(column_field, t.reshape(col), y, h.reshape(col), _StagesOf(y1, tuple(ks)))
        self.col = col

    def increments(self, theta, h, y):
        batch = y.shape[0]
        return torch.stack([(self.interp(th.reshape(self.col)) - y).reshape(batch, -1) for th in theta])


class _StagesOf:
    """What a method's dense-output factory reads of an accepted step: its end state and stages."""

    def __init__(self, y1: torch.Tensor, ks: tuple[torch.Tensor, ...]):
        self.y1, self.ks = y1, ks


def _emit_outputs(outs, ts, lo, hi, t, t_new, h, accept, y, interp: _Dense) -> None:
    """Fill the outputs that fall inside each element's accepted step (per-element dense output).

    All output times of this batched step are interpolated at once, from thetas of shape (J, B), and
    written with one masked select: the outputs inside the batch's span ``(lo, hi]`` are found by
    bisection on the increasing ``ts`` (a scan of all of them at every step, and a select per output,
    made many output times cost O(outputs x steps) Python work).
    """
    js = range(bisect.bisect_right(ts, lo, 1), bisect.bisect_right(ts, hi, 1))
    if not js:
        return
    with torch.no_grad():
        tj = torch.tensor([ts[j] for j in js], dtype=t.dtype, device=t.device)[:, None]  # (J, 1)
        within, _, theta = core.emission(TENSOR, tj, t, t_new)  # (J, B)
        masks = accept & within
        # the outputs some sample's accepted step emits; the span also holds times that only samples
        # still behind (or already past) will emit, which would be rebuilt unchanged at every step
        hit = masks.any(1).nonzero().reshape(-1).tolist()
    if not hit:
        return
    sel = list(js)
    if len(hit) < len(sel):
        sel = [sel[r] for r in hit]
        rows = torch.tensor(hit, device=masks.device)
        theta, masks = theta[rows], masks[rows]
    batch = y.shape[0]
    block = y.reshape(batch, -1) + interp.increments(theta, h, y).to(y.dtype)  # (J, B, N)
    block = block.reshape((len(sel),) + tuple(y.shape))
    keep = masks.reshape(masks.shape + (1,) * (y.dim() - 1))  # (J, B, 1, ...)
    for j, out in zip(sel, torch.where(keep, block, torch.stack([outs[j] for j in sel])).unbind(0)):
        outs[j] = out


def _failed(status, t, outs, stats, term, throw, detail, sample_status, cause=""):
    """Raise SolverError (with ``throw``) or report ``status`` at ``t`` (solver time), the earliest
    of a vector of per-sample times or one failing sample's, with each sample's status."""
    t_min = float(t.min())
    if throw:
        raise SolverError(status, -t_min if term.reverse else t_min, detail, cause)
    stats.nfe = term.nfe
    return Integration(outs, stats, status, t_min, sample_status=tuple(sample_status))
