"""A device-resident adaptive loop: runs of step attempts decided on the state's device, no host read per step.

The host loop (:func:`~hybrid_node.loop.host.integrate_adaptive`) reads the error ratio
of every attempt to decide it. On a GPU that read waits for the whole queue of kernels, so the step
rate is bounded by launch latency and synchronisation rather than by arithmetic. Here everything the
decision needs lives in tensors on the state's device: the time, the proposed step, the PID
controller's memory, the counters, the index of the next output and a status code. One *run* is
``sync_every`` attempts executed back to back; each attempt

1. clamps the step to the end time as the host loop does (:func:`~hybrid_node.loop.core.landing`),
2. evaluates the stages and the error ratio (:func:`~hybrid_node.controllers.error_ratio_tensor`),
3. accepts when the ratio is at most 1 (a NaN ratio is a rejection), and selects the new state, time,
   first-same-as-last derivative and controller memory with ``torch.where``,
4. writes every output time inside an accepted step from the method's dense output into an output
   buffer of shape (T - 1, *state) (a mask over the output times; the end point is the step's y1),
5. proposes the next step with the PID formula and sets a failure code (maximum number of attempts,
   step below the floor, non-finite state) exactly where the host loop would fail.

Attempts after the solve has ended are masked no-ops (a zero step, not counted). After each run the
host reads one small tensor (status, time, step, counters) and stops when the status is no longer
"running". A run is a plain function of tensors, so with ``compile`` it is handed to ``torch.compile``
whole (with CUDA graphs, mode "reduce-overhead", for CUDA solves without autograd).

The decisions are those of the host loop: same initial step (computed on the host), same stretch
rule, controller formula, step bounds, floor and failures, and the stage sums rounded as the host
step rounds them (one kernel, :func:`~hybrid_node.interpolation.linear_combination`), so run eagerly
on the CPU it takes the
very same accepted and rejected steps, and its outputs differ only by the rounding of the dense
output's matrix product. Compiled, or on a GPU, the kernels may round differently, so a step whose
error ratio lies within rounding of 1 may be decided the other way.

The price is work the host loop does not do: the dense output is evaluated for all T output times
on every attempt (masked), and up to ``sync_every - 1`` masked attempts run after the end; direct
backpropagation keeps every attempt in the graph (a rejected attempt receives a zero cotangent; if
its stages were non-finite that zero can still turn into NaN in the gradient, for which a warning
is raised). A field that counts its own calls counts the masked attempts too; the solve's ``nfe``
counts only the attempts the host loop would make.

Scope: forward solves with an explicit first-same-as-last embedded pair (dopri5, tsit5, bosh3) and
a torch field; no events, ``jump_t``/``step_t``, impulses at outputs or dense output over the whole
interval (the callers fall back to the host loop for the latter two).

References: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.4 (error norm, step-size
control, initial step); G. Söderlind, "Digital filters in adaptive time-stepping", ACM TOMS 29 (2003)
(PID control); Ansel et al., "PyTorch 2", ASPLOS 2024 (torch.compile and CUDA graphs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from .._errors import SolverError, Status
from .._solution import Stats
from .._term import Term
from .._tracing import traced
from ..controllers import PIDController, error_ratio_tensor
from ..interpolation import hermite_weights, linear_combination
from ..solvers.runge_kutta import ExplicitRungeKutta
from . import core
from .compiled_step import PureField, _compile, compiler_failed, graphs_of, warn_fallback
from .core import RUNNING, TENSOR
from .diagnose import failure_cause
from .graph_inputs import graph_control, settings_vector, with_settings
from .host import Integration, first_step
from .stage_loop import StageTable, looped_step, stage_table
from .stiff_watch import StiffnessWatch, row_hrho, watch_for

# the step-control constants of a solve (the old name of :class:`~hybrid_node.loop.core.StepControl`)
LoopConstants = core.StepControl


class LoopState(NamedTuple):
    """Everything a device solve carries from one attempt to the next (all tensors on the state's device).

    Attributes:
        t, dt: current solver time and proposed next step (0-d float64).
        r1, r2: the controller's memory, the error ratios of the last two accepted steps (0-d float64).
        y, f0: current state and its derivative (first same as last).
        outs: states at the output times ts[1:], NaN where not reached yet, shape (T - 1, *y.shape).
        i_out: index in ts of the next output to write (0-d int64).
        n_att, n_acc, n_rej: attempted, accepted and rejected steps (0-d int64).
        status: RUNNING or the code the solve ended with (0-d int64).
        last_nonfinite: the last attempt was rejected with a non-finite error ratio (0-d bool).
        saw_nonfinite: some attempt had a non-finite error ratio (0-d bool; gradients may be NaN).
        stale_f0: ``f0`` is not the derivative at (t, y) (0-d bool): the state jumped, and the next
            attempt's stage loop evaluates it first (:mod:`.stage_loop`; only there is it set).
    """

    t: torch.Tensor
    dt: torch.Tensor
    r1: torch.Tensor
    r2: torch.Tensor
    y: torch.Tensor
    f0: torch.Tensor
    outs: torch.Tensor
    i_out: torch.Tensor
    n_att: torch.Tensor
    n_acc: torch.Tensor
    n_rej: torch.Tensor
    status: torch.Tensor
    last_nonfinite: torch.Tensor
    saw_nonfinite: torch.Tensor
    stale_f0: torch.Tensor


class Tables(NamedTuple):
    """Per-solve constants on the device: output times and the dense-output coefficients.

    Attributes:
        ts: all output times in solver time (T,), float64.
        index: 1..T-1 (the indices of the buffered outputs), int64.
        dense: (stages, degree) float64 coefficients of the tableau's continuous extension, or None
            for the cubic Hermite interpolant.
        powers: 1..degree as float64 (exponents of theta), or None.
        stages: the tableau's stage coefficients, for a loop whose attempts run their stages in an
            inner loop (:mod:`.stage_loop`); None for unrolled stages.
    """

    ts: torch.Tensor
    index: torch.Tensor  # type: ignore[assignment]  # the field shadows tuple.index, which is never used
    dense: torch.Tensor | None
    powers: torch.Tensor | None
    stages: StageTable | None = None


def check_device_loop(problem, event_fn) -> None:
    """Raise ValueError where the device loop cannot serve a problem; the message says what to do instead.

    Args:
        problem: the validated problem (its solver, controller, ``jump_t`` and ``step_t``).
        event_fn: the terminal event function of the solve, or None.

    Raises:
        ValueError: events, ``jump_t``/``step_t``, per-sample control or an unsupported method.
    """
    fix = "drop options['device_loop'] (the host loop supports it)"
    if not problem.solver.supports_device_loop:
        raise ValueError(
            f"device_loop=True needs a first-same-as-last embedded pair (dopri5, tsit5, bosh3) without "
            f"its own dense output or error estimate, not {problem.solver.name!r}; choose one of those or {fix}."
        )
    if event_fn is not None:
        raise ValueError(f"device_loop=True does not locate events; {fix}.")
    if problem.jump_t or problem.step_t:
        raise ValueError(f"device_loop=True does not support jump_t or step_t; {fix}.")
    if problem.controller.per_sample:
        raise ValueError("device_loop=True and per_sample=True cannot be combined; choose one of them.")


def make_tables(
    solver: ExplicitRungeKutta, ts: Sequence[float], like: torch.Tensor, stage_loop: bool = False
) -> Tables:
    """The per-solve constants of :class:`Tables` on ``like``'s device (with the stage coefficients
    for a loop whose attempts run their stages in an inner loop, ``stage_loop``)."""
    dev = like.device
    times = torch.tensor(list(ts), dtype=torch.float64, device=dev)
    index = torch.arange(1, len(ts), dtype=torch.int64, device=dev)
    stages = stage_table(solver, like) if stage_loop else None
    if solver.tableau.dense is None:
        return Tables(times, index, None, None, stages)
    dense = torch.tensor(solver.tableau.dense, dtype=torch.float64, device=dev)
    powers = torch.arange(1, dense.shape[1] + 1, dtype=torch.float64, device=dev)
    return Tables(times, index, dense, powers, stages)


class Impulses(NamedTuple):
    """Jumps of the state at the inner output times, applied inside the loop (the backsolve adjoint's
    cotangents): at output ``i`` (1 <= i < T - 1) the leading ``m`` components become
    ``keep * x[:m] + add[i - 1]``, the rest are left as they are.

    Attributes:
        keep: (m,) multipliers (0 resets a component, 1 keeps it).
        add: (rows - 1, m) what is added at each output (rows T - 1 and after are never used).
        outputs: (1,) int64, the number T of output times; the table of output times may hold more
            rows (padding, see :meth:`~hybrid_node.loop.whole.WholeSolve.padded`), which the
            loop never reaches: it ends at output T - 1.
    """

    keep: torch.Tensor
    add: torch.Tensor
    outputs: torch.Tensor


def _impulse(impulses: Impulses, i: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` after the impulse of output ``i`` (a 0-d index into ``ts``)."""
    m = impulses.keep.shape[0]
    row = impulses.add.index_select(0, (i - 1).clamp(min=0).reshape(1)).reshape(-1)
    head = impulses.keep * y.reshape(-1)[:m] + row
    return torch.cat([head, y.reshape(-1)[m:]]).reshape(y.shape)


def _column(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (rows,) mask shaped to broadcast against (rows, *like.shape)."""
    return mask.reshape((-1,) + (1,) * like.dim())


def _dense_values(
    tables: Tables,
    theta: torch.Tensor,
    h: torch.Tensor,
    y0: torch.Tensor,
    y1: torch.Tensor,
    ks: Sequence[torch.Tensor],
    f1: torch.Tensor,
) -> torch.Tensor:
    """The step's dense output at every theta (rows of the result), shape (len(theta), *y0.shape).

    The tableau's polynomial ``y0 + h sum_i b_i(theta) k_i`` where it has one, else the cubic Hermite
    interpolant of (y0, f0 = ks[0], y1, f1) (Hairer, Nørsett, Wanner, Section II.6): a matrix
    product eagerly, a broadcast product summed over the stages when compiled.
    """
    if tables.dense is not None:
        assert tables.powers is not None  # set together with dense
        weights = (theta[:, None] ** tables.powers) @ tables.dense.t() * h
        rows = torch.stack([k.reshape(-1) for k in ks])
        base: torch.Tensor | None = y0.reshape(1, -1)
    else:
        weights = torch.cat(hermite_weights(theta[:, None], h), dim=1)
        rows = torch.stack([y0.reshape(-1), y1.reshape(-1), ks[0].reshape(-1), f1.reshape(-1)])
        base = None
    weights = weights.to(y0.dtype)
    if traced():
        # a sum over the few stages as a broadcast product: the compiler unrolls a reduction this
        # short into pointwise code and fuses it with the masked write into the output buffer (as a
        # matrix product it is a library call per attempt with a small inner size, ~40 us for 49
        # outputs of a 1024-element state on one core, the largest cost of a loop iteration)
        flat = (weights[:, :, None] * rows[None, :, :]).sum(1)
        flat = flat if base is None else base + flat
    else:
        flat = weights @ rows if base is None else torch.addmm(base, weights, rows)
    return flat.reshape((len(theta),) + tuple(y0.shape))


def _write_outputs(
    s: LoopState,
    tables: Tables,
    accepted: torch.Tensor,
    t1: torch.Tensor,
    h: torch.Tensor,
    y1: torch.Tensor,
    ks,
    f1: torch.Tensor,
    interpolant: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output buffer and next output index after an attempt that ended at t1 (if ``accepted``);
    ``f1`` is the derivative at (t1, y1).

    ``interpolant``: the method's own dense output over the step, called with a float64 column of
    theta shaped to broadcast against the state (DOP853's); None for the tableau's polynomial or Hermite.
    """
    within, at_end, theta = core.emission(TENSOR, tables.ts[1:], s.t, t1)
    within = accepted & within
    if interpolant is not None:
        values = interpolant(_column(theta, y1))
    else:
        values = _dense_values(tables, theta, h, s.y, y1, ks, f1)
    values = torch.where(_column(at_end, y1), y1.unsqueeze(0), values)  # the end is y1 itself
    outs = torch.where(_column(within, y1), values, s.outs)
    i_out = torch.where(accepted, (tables.ts <= t1).sum(), s.i_out)
    return outs, i_out


def attempt(
    field: Callable,
    solver: ExplicitRungeKutta,
    c: core.StepControl,
    tables: Tables,
    rtol,
    atol,
    norm,
    s: LoopState,
    impulses: Impulses | None = None,
    on_step: Callable | None = None,
) -> LoopState:
    """One step attempt of a device solve (a masked no-op once the solve has ended).

    Args:
        field: ``field(t, y)`` with a 0-d float64 solver time.
        solver: the first-same-as-last embedded pair.
        c: the step-control constants.
        tables: the output times and dense-output coefficients.
        rtol, atol, norm: the error test.
        s: the state before the attempt.
        impulses: jumps at the inner output times; every step then ends at the next output time,
            after a jump the derivative is evaluated again (``torch.cond``: only then), and no
            output is written (``outs`` is carried as it is; the solve's result is its end state).
        on_step: called as ``on_step(accepted, t, h, y, ks)`` with the attempt's acceptance (0-d
            bool), start, step, start state and stages, so that a loop can keep the accepted steps
            (the checkpointed adjoint's re-solve, :mod:`.whole_segments`).

    Returns:
        The state after the attempt.
    """
    active = s.status == RUNNING
    status = torch.where(active, core.precheck(TENSOR, c, s.n_att, s.t, s.dt), s.status)
    active = status == RUNNING
    n_out: int | torch.Tensor
    if impulses is None:
        n_out = tables.ts.shape[0]
        stop = tables.ts[-1]
    else:  # the next output time (an index_select: a tensor index would be specialised by the compiler)
        n_out = impulses.outputs.reshape(())
        stop = tables.ts.index_select(0, s.i_out.clamp(max=n_out - 1).reshape(1)).reshape(())
    lands, step_dt, t1 = core.landing(TENSOR, s.t, s.dt, stop, c.max_step)
    step_dt = torch.where(active, step_dt, 0.0)  # an ended solve attempts a zero step (a no-op)
    if tables.stages is None:
        step = solver.step(field, s.t, s.y, s.f0, step_dt)
    else:
        step = looped_step(solver, tables.stages, field, s.t, s.y, s.f0, step_dt, s.stale_f0)
    y1, ks = step.y1, step.ks
    assert step.error is not None  # the device loop runs embedded pairs only
    # detached: the step sizes are constants of the derivative (torch.no_grad inside does not stop
    # forward-mode tangents, which jacfwd would otherwise carry into the step size)
    ratio = error_ratio_tensor(step.error, s.y, y1, rtol, atol, norm).detach().to(torch.float64)
    ok = core.accepts(TENSOR, c, ratio, step_dt)
    accepted = active & ok
    rejected = active & ~ok
    if on_step is not None:
        on_step(accepted, s.t, step_dt, s.y, ks)
    # f(t1, y1): a pair without first-same-as-last evaluates it on every attempt (the loop has no branch)
    f1 = solver.next_state(field, t1, step)
    stale_f0 = s.stale_f0.clone()  # (a loop may not return its input)
    if impulses is None:
        y_end = y1
        # a method with its own dense output (DOP853: three more stages) builds it on every attempt,
        # masked like the rest: the graph has no branch to skip it when no output time falls inside
        own = solver.dense_output(field, s.t, s.y, step_dt, step) if solver.dense_output is not None else None
        outs, i_out = _write_outputs(s, tables, accepted, t1, step_dt, y1, ks, f1, own)
    else:  # steps end at the output times: nothing to interpolate, and only the end state is kept
        jumped = accepted & lands & (s.i_out < n_out - 1)
        y_end = torch.where(jumped, _impulse(impulses, s.i_out, y1), y1)
        if tables.stages is None:  # the derivative at the new state, evaluated only after a jump
            f1 = torch.cond(jumped, lambda y, f: field(t1, y), lambda y, f: f.clone(), (y_end, f1))
        else:  # the next attempt's stage loop evaluates it first (the field stays one copy in the graph)
            stale_f0 = jumped
        outs, i_out = s.outs.clone(), s.i_out + (accepted & lands).long()  # a loop may not return its input
    t = torch.where(accepted, t1, s.t)
    nonfinite = ~torch.isfinite(ratio)
    last_nonfinite = torch.where(accepted, False, torch.where(rejected, nonfinite, s.last_nonfinite))
    dt, r1, r2 = core.propose(TENSOR, c, step_dt, ratio, accepted, s.r1, s.r2)
    done = accepted & (i_out >= n_out)
    # the floor measured from the solve's start, a graph input (a compiled graph does not bake it in)
    dt, code = core.settle(TENSOR, c, done, t, dt, step_dt, last_nonfinite, tables.ts[0])
    status = torch.where(active, code, status)
    return LoopState(
        t=t,
        dt=torch.where(active, dt, s.dt),
        r1=r1,
        r2=r2,
        y=torch.where(accepted, y_end, s.y),
        # (ks[0] is s.f0, or the derivative a stage loop evaluated afresh)
        f0=torch.where(accepted, f1, ks[0]),
        outs=outs,
        i_out=i_out,
        n_att=s.n_att + active.long(),
        n_acc=s.n_acc + accepted.long(),
        n_rej=s.n_rej + rejected.long(),
        status=status,
        last_nonfinite=last_nonfinite,
        saw_nonfinite=s.saw_nonfinite | (active & nonfinite),
        stale_f0=stale_f0,
    )


def summary(s: LoopState) -> torch.Tensor:
    """What the host reads after a run, as one float64 vector: status, t, dt, attempts, accepted,
    rejected, non-finite flag."""
    return torch.stack(
        [s.status.double(), s.t, s.dt, s.n_att.double(), s.n_acc.double(), s.n_rej.double(), s.saw_nonfinite.double()]
    )


def _run_function(
    pure_field: Callable, solver: ExplicitRungeKutta, c: core.StepControl, watch: StiffnessWatch | None = None
) -> Callable:
    """``run(owner, state, tables, rtol, atol, norm, settings) -> (state, summary)``: ``c.attempts``
    attempts. ``c`` is a :func:`~hybrid_node.loop.graph_inputs.graph_control` and ``settings`` its
    :func:`~hybrid_node.loop.graph_inputs.settings_vector` (the first step is the state's: its entry is not
    read), an input of a compiled run as of the whole-solve graph: a new max_step or safety compiles nothing.
    With a ``watch``, the summary ends with the run's last attempt's :func:`stiffness_sample`."""

    def run(owner, state, tables, rtol, atol, norm, settings):
        def field(t, y):
            return pure_field(owner, t, y)

        last: dict = {}

        def keep(accepted, t, h, y, ks):
            last.update(accepted=accepted, t=t, h=h, y=y, ks=ks)

        control = with_settings(c, settings)
        for i in range(c.attempts):
            on_step = keep if watch is not None and i == c.attempts - 1 else None
            state = attempt(field, solver, control, tables, rtol, atol, norm, state, on_step=on_step)
        if watch is None:
            return state, summary(state)
        return state, torch.cat([summary(state), stiffness_sample(watch, solver, **last)])

    return run


def stiffness_sample(watch: StiffnessWatch, solver: ExplicitRungeKutta, accepted, t, h, y, ks) -> torch.Tensor:
    """``(h * rho, t, h)`` of one attempt as a float64 vector on the device, ``h * rho`` NaN where the
    attempt was not accepted: one sample of Hairer's stiffness test per run, read with the run's summary
    (no host read of its own). The stage states ``Y_s = y1`` and ``Y_(s-1)`` are rebuilt from the
    stages (first-same-as-last: the last row of ``a`` is ``b``) for
    :func:`~hybrid_node.loop.stiff_watch.row_hrho`."""
    a = solver.tableau.a
    with torch.no_grad():
        row = [k.detach().reshape(1, -1) for k in ks]
        y0 = y.detach().reshape(1, -1)
        y1 = linear_combination(y0, h, a[-1], row[: len(row) - 1])
        hrho = row_hrho(watch.tableau, y0, y1, row, h.reshape(1), watch.rtol, watch.atol)[0]
        hrho = torch.where(accepted, hrho.to(torch.float64), math.nan)
        return torch.stack([hrho, t.to(torch.float64), h.to(torch.float64)])


class DeviceRuns:
    """Runs of ``c.attempts`` attempts of one solve's field, eager or as one compiled graph per run.

    The compiled run is cached on the user's field like :class:`~hybrid_node.loop.compiled_step.CompiledAttempt`'s
    graphs; a field the compiler rejects runs eagerly from then on, after one warning. On CUDA without
    autograd the graph is replayed as a CUDA graph (mode "reduce-overhead"); each run's outputs are then
    copied out of the graph's memory pool before the next replay overwrites it.

    Args:
        pure: the traceable field.
        solver: the first-same-as-last embedded pair.
        c: the step-control constants, a :func:`~hybrid_node.loop.graph_inputs.graph_control` (the step
            settings are an input of each run).
        compile: compile the run.
        cuda_graphs: replay the compiled run as a CUDA graph.
        watch: sample each run's last attempt for stiffness (:func:`stiffness_sample`).
    """

    def __init__(
        self,
        pure: PureField,
        solver: ExplicitRungeKutta,
        c: core.StepControl,
        compile: bool,
        cuda_graphs: bool,
        watch: StiffnessWatch | None = None,
    ):
        self.owner = pure.owner
        self.eager = _run_function(pure.field, solver, c, watch)
        self.cuda_graphs = compile and cuda_graphs
        self._graphs, self._key = None, None
        if compile:
            mode = "reduce-overhead" if self.cuda_graphs else None
            # a watched run returns a longer summary: its own graph (the tolerances are baked in)
            watched = None if watch is None else (watch.rtol, watch.atol)
            self._key = ("device_loop", pure.key, solver, c, mode, watched)
            self._graphs = graphs_of(pure.owner)
            if self._key not in self._graphs:
                self._graphs[self._key] = _compile(self.eager, mode=mode, compiler=solver.compiled_in)

    def __call__(
        self, state: LoopState, tables: Tables, rtol, atol, norm, settings: torch.Tensor
    ) -> tuple[LoopState, torch.Tensor]:
        """One run from ``state`` with the step settings ``settings`` (a
        :func:`~hybrid_node.loop.graph_inputs.settings_vector`); returns the new state and its :func:`summary`."""
        graph = None if self._graphs is None else self._graphs[self._key]
        if graph is not None:
            try:
                if self.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                    out_state, out_summary = graph(self.owner, state, tables, rtol, atol, norm, settings)
                    return LoopState(*(x.clone() for x in out_state)), out_summary.clone()
                return graph(self.owner, state, tables, rtol, atol, norm, settings)
            except Exception as e:
                if not compiler_failed(e):
                    raise
                warn_fallback(self.owner, e, "the device loop runs eagerly", stacklevel=3)
                assert self._graphs is not None  # graph came from it
                self._graphs[self._key] = None
        return self.eager(self.owner, state, tables, rtol, atol, norm, settings)


def initial_state(
    y0: torch.Tensor, f0: torch.Tensor, t0: float | torch.Tensor, dt0: float | torch.Tensor, n_out: int
) -> LoopState:
    """The state at the start of a device solve with ``n_out`` output times.

    ``t0`` and ``dt0`` are host floats, or 0-d tensors where they are computed without the host (a
    traced solve, a per-problem step under ``vmap``); every member is a tensor of its own (a loop's
    carried values may not alias each other).
    """
    dev = y0.device

    def f64(x: float | torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.to(dtype=torch.float64, device=dev, copy=True)
        return torch.full((), x, dtype=torch.float64, device=dev)

    def i64(x: int) -> torch.Tensor:
        return torch.full((), x, dtype=torch.int64, device=dev)

    def false() -> torch.Tensor:  # one tensor per flag: a compiled run guards on inputs not aliasing
        return torch.zeros((), dtype=torch.bool, device=dev)

    outs = torch.full((n_out - 1,) + tuple(y0.shape), math.nan, dtype=y0.dtype, device=dev)
    return LoopState(
        f64(t0),
        f64(dt0),
        f64(1.0),
        f64(1.0),
        y0,
        f0,
        outs,
        i64(1),
        i64(0),
        i64(0),
        i64(0),
        i64(RUNNING),
        false(),
        false(),
        false(),
    )


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in tensors)


def integrate_device(
    term: Term,
    solver: ExplicitRungeKutta,
    controller: PIDController,
    y0: torch.Tensor,
    ts: Sequence[float],
    *,
    rtol,
    atol,
    norm,
    throw: bool = True,
) -> Integration:
    """Integrate with the device-resident loop from ts[0] through the increasing times ``ts``.

    Args:
        term: the wrapped field (solver time); counts the evaluations.
        solver: a first-same-as-last embedded pair (its ``compile`` flag compiles the runs).
        controller: the step-size controller (its ``sync_every`` sets the attempts per run).
        y0: flat initial state.
        ts: increasing output times (host floats, solver time).
        rtol, atol: tolerances (floats or tensors broadcastable to the state).
        norm: error norm (must return a tensor).
        throw: raise SolverError on failure, else report the status (outputs not reached are NaN).

    Returns:
        Integration with the states at ``ts``, the counters and the status, as the host loop returns them.

    Raises:
        ValueError: the solver is not supported or the term has no traceable field.
        SolverError: on max steps, step-size underflow or a non-finite state, when ``throw``.
    """
    pure = term.pure_field
    if not solver.supports_device_loop or pure is None:
        reason = (
            f"method {solver.name!r} is not supported" if pure is not None else "the field is not a plain torch field"
        )
        raise ValueError(f"the device loop cannot run this solve: {reason}.")
    stats = Stats()
    f0 = solver.derivative(solver.init(term, ts[0], y0))
    dt0 = first_step(term, solver, controller, ts[0], y0, f0, rtol, atol, norm)
    if len(ts) == 1:
        stats.nfe = term.nfe
        return Integration([y0], stats, Status.SUCCESS, ts[0])
    assert solver.error_order is not None  # supports_device_loop: an embedded pair

    # the step settings and PID numbers are inputs of the runs (as of the whole-solve graph): a new one
    # compiles nothing
    control = core.StepControl.of(controller, solver.error_order, y0.dtype, controller.sync_every)
    c, settings = graph_control(control), settings_vector(controller, control, y0)
    grad = _needs_grad(y0, f0)
    # direct backprop through an explicit method at its stability limit gives unreliable gradients: one
    # sample of the test per run, read with the run's summary (no host read of its own)
    watch = watch_for(solver, rtol, atol) if grad else None
    cuda_graphs = y0.device.type == "cuda" and not grad
    runs = DeviceRuns(pure, solver, c, compile=solver.compile, cuda_graphs=cuda_graphs, watch=watch)
    tables = make_tables(solver, ts, y0)
    state = initial_state(y0, f0, ts[0], dt0, len(ts))
    while True:
        state, info = runs(state, tables, rtol, atol, norm, settings)
        code, t, dt, n_att, n_acc, n_rej, saw_nonfinite, *sample = info.tolist()  # the one host read per run
        if watch is not None and math.isfinite(sample[0]):  # the run's last attempt, where accepted
            watch.count(sample[0], sample[1], sample[1] + sample[2])
        if code != RUNNING:
            break
    term.nfe += (solver.tableau.stages - 1) * int(n_att)
    stats.nfe, stats.n_accepted, stats.n_rejected = term.nfe, int(n_acc), int(n_rej)
    ys = [y0] + list(state.outs.unbind(0))
    status = core.STATUS[int(code)]
    if status is not Status.SUCCESS and throw:
        detail = {Status.MAX_STEPS: f"max_num_steps={controller.max_num_steps}", Status.NO_EVENT: ""}.get(
            status, f"dt={dt:.3g}"
        )
        # the state where it stopped is at hand: name the field or a blow-up as the cause where it is one
        raise SolverError(status, -t if term.reverse else t, detail, failure_cause(status, term, t, state.y, y0))
    if saw_nonfinite and grad:
        warnings.warn(
            "device_loop: an attempted step had a non-finite error estimate; its zero cotangent may "
            "still make gradients NaN. Drop options['device_loop'] for this solve if they are.",
            RuntimeWarning,
            stacklevel=2,
        )
    if watch is not None and status is Status.SUCCESS:
        watch.warn(term.reverse)
    return Integration(ys, stats, status, t)
