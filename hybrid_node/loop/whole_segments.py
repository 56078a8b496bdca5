"""The checkpointed (interpolating) adjoint's backward pass as one compiled graph per checkpoint segment.

The eager backward pass (:class:`~hybrid_node.sensitivity.interpolating.Interpolating`) solves the
adjoint system in backward time ``r = -s`` in one pass whose steps end at every checkpoint; on
entering the segment between two checkpoints ``c0 < c1`` it re-solves the forward problem over
``[c0, c1]`` with dense output and reads the state ``z(s)`` from it. Both halves are adaptive loops,
so here one graph does a segment's whole work:

1. the forward re-solve from ``(c0, z(c0))``, its derivative and Hairer's initial step included, as
   a ``while_loop`` of the device loop's step attempts that keeps every accepted step (start, size,
   start state and stages: the pair's continuous extension, Hairer, Nørsett, Wanner, Solving ODEs I,
   2nd ed., Section II.6) in a table of fixed capacity;
2. the backward solve from ``-c1`` to ``-c0`` as a second ``while_loop``, whose augmented field
   evaluates ``z(s)`` from that table (the checkpoint states themselves at ``c0`` and ``c1``, as the
   eager pass reads them) and continues from the loop state the previous segment ended with: the step
   size, the controller's memory and the counters carry over, the cotangent of an output at ``c1`` is
   added and the derivative evaluated again there, as the eager pass does at its output times.

So the steps are the eager pass's up to the rounding of compiled kernels, and the host reads one small
vector per segment. A re-solve needing more steps than the table holds is reported in that vector
and run again with a table twice as large (another graph).

References: SciMLSensitivity's InterpolatingAdjoint(checkpointing=true) (Rackauckas et al., "Universal
Differential Equations for Scientific Machine Learning", 2020); Zhuang et al., "Adaptive Checkpoint
Adjoint Method for Gradient Estimation in Neural ODE", ICML 2020; Ansel et al., "PyTorch 2", ASPLOS
2024 (``while_loop``, ``torch.cond``, Inductor).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch._higher_order_ops.while_loop import while_loop

from .._errors import Status
from .._solution import Stats
from .._term import PureField
from ..controllers import PIDController
from ..solvers.runge_kutta import ExplicitRungeKutta
from . import core
from .core import RUNNING
from .device import LoopState, Tables, attempt, initial_state, summary
from .graph_inputs import graph_control, settings_vector, tolerance_tensor, with_settings
from .whole import (
    WholeSolve,
    _loop,
    _restoring,
    count_evaluations,
    evaluations_per_attempt,
    initial_step_tensor,
    pack,
    read_out,
    solve_error,
    unpack,
)

#: the most memory the table of re-solved steps may take (bytes); a larger problem runs eagerly. The
#: loop rewrites the whole table on every attempt (a masked row write, and the loop's copy of its
#: carried values), about 3 ms per attempt for 16 rows of a 50,000-element float32 state on one core
TABLE_BYTES = 64 * 2**20


class Record(NamedTuple):
    """The accepted steps of a re-solve (rows beyond ``steps`` unused; a start of +inf sorts them last).

    Attributes:
        t0: (M,) float64 step starts; h: (M,) float64 step sizes.
        y0: (M, n) start states; ks: (M, stages, n) stages.
        steps: accepted steps so far (0-d int64; more than M means the table overflowed).
    """

    t0: torch.Tensor
    h: torch.Tensor
    y0: torch.Tensor
    ks: torch.Tensor
    steps: torch.Tensor


def applies(solver, controller) -> bool:
    """Whether a checkpointed backward pass with these settings can run as segment graphs (given a
    traceable augmented field and no step callbacks, which the caller checks).

    Args:
        solver: the forward and backward solver; controller: their controller.

    Returns:
        True for a compiled first-same-as-last pair with a polynomial continuous extension (dopri5,
        tsit5) under a plain PID controller.
    """
    return bool(
        isinstance(solver, ExplicitRungeKutta)
        and solver.compile
        and solver.supports_whole_solve
        and solver.tableau.dense is not None
        and solver.dense_output is None
        and isinstance(controller, PIDController)
        and not (controller.per_sample or controller.device_loop)
    )


def table_rows(forward_steps: int) -> int:
    """The first capacity of the table of re-solved steps: room for all of the forward solve's
    ``forward_steps`` and a few more (a re-solve starts again with Hairer's step), rounded up to a
    power of two so that the graphs of later solves repeat."""
    return 1 << max(4, (forward_steps + 8).bit_length())


def _empty_record(capacity: int, stages: int, like: torch.Tensor) -> Record:
    dev, n = like.device, like.numel()
    return Record(
        torch.full((capacity,), math.inf, dtype=torch.float64, device=dev),
        torch.ones((capacity,), dtype=torch.float64, device=dev),
        torch.zeros((capacity, n), dtype=like.dtype, device=dev),
        torch.zeros((capacity, stages, n), dtype=like.dtype, device=dev),
        torch.zeros((), dtype=torch.int64, device=dev),
    )


def _keep(rec: Record, accepted, t, h, y, ks) -> Record:
    """``rec`` with the attempt (t, h, y, ks) appended if ``accepted`` (one masked row write)."""
    capacity = rec.t0.shape[0]
    row = (torch.arange(capacity, device=rec.steps.device) == rec.steps) & accepted
    stages = torch.stack([k.reshape(-1) for k in ks])
    return Record(
        torch.where(row, t, rec.t0),
        torch.where(row, h, rec.h),
        torch.where(row[:, None], y.reshape(1, -1), rec.y0),
        torch.where(row[:, None, None], stages.unsqueeze(0), rec.ks),
        rec.steps + accepted.long(),
    )


def _recording_loop(field, solver, c, tables, rtol, atol, norm, state: LoopState, rec: Record):
    """:func:`~hybrid_node.loop.whole._loop` that also keeps the accepted steps in ``rec``."""
    n_state = len(LoopState._fields)

    def cond_fn(*s):
        return s[LoopState._fields.index("status")] == RUNNING

    def body_fn(*s):
        kept: list[Record] = []
        old = Record(*s[n_state:])

        def on_step(accepted, t, h, y, ks):
            kept.append(_keep(old, accepted, t, h, y, ks))

        new = attempt(field, solver, c, tables, rtol, atol, norm, LoopState(*s[:n_state]), on_step=on_step)
        return tuple(new) + tuple(kept[0])

    out = while_loop(cond_fn, body_fn, tuple(state) + tuple(rec))
    return LoopState(*out[:n_state]), Record(*out[n_state:])


def state_at(rec: Record, tables: Tables, s: torch.Tensor, z0, z1, c0, c1) -> torch.Tensor:
    """The re-solved state at solver time ``s`` in [c0, c1]: the checkpoint states at the ends, else
    the continuous extension ``y0 + h sum_i b_i(theta) k_i`` of the recorded step holding ``s``
    (the eager pass's :class:`~hybrid_node.sensitivity.interpolating._Segment` lookup)."""
    assert tables.dense is not None and tables.powers is not None  # applies() asks for a polynomial
    last = (rec.steps.clamp(max=rec.t0.shape[0]) - 1).clamp(min=0).reshape(1)
    i = torch.minimum((torch.searchsorted(rec.t0, s.reshape(1), right=True) - 1).clamp(min=0), last)
    t0, h = rec.t0.index_select(0, i), rec.h.index_select(0, i)
    theta = (torch.minimum(torch.maximum(s, t0), t0 + h) - t0) / h
    weights = (theta[:, None] ** tables.powers) @ tables.dense.t() * h  # .t(): see WholeSolve.__call__
    stages = rec.ks.index_select(0, i).reshape(rec.ks.shape[1], -1)
    z = torch.addmm(rec.y0.index_select(0, i), weights.to(z0.dtype), stages).reshape(z0.shape)
    return torch.where(s == c0, z0, torch.where(s == c1, z1, z))


def _segment_function(
    forward: PureField, augmented: PureField, solver: ExplicitRungeKutta, c: core.StepControl, capacity: int
) -> Callable:
    """``solve(owner, zs, cps, j, tables, carried, add, first, refresh, tolerances, norm_f, norm_b, settings)
    -> (carried, info, z)``: segment ``j``'s re-solve and backward solve (module docstring). ``zs`` and
    ``cps`` are all checkpoint states and times and ``j`` a (1,) index, so that the inputs of all
    segments are the same tensors; ``carried`` is the backward loop's :func:`pack`-ed state without
    the output buffer, ``tolerances`` (rtol_f, atol_f, rtol_b, atol_b); ``info`` is the two loops'
    :func:`summary`; ``z`` the re-solve's last accepted state (where a failed re-solve stopped). ``c`` is
    a :func:`~hybrid_node.loop.graph_inputs.graph_control` and ``settings`` its
    :func:`~hybrid_node.loop.graph_inputs.settings_vector`, an input of the graph as in the forward one (both
    loops start from Hairer's step or a carried one: its first entry is not read)."""
    order = int(solver.error_order or 0)
    stages = solver.tableau.stages

    def solve(owner, zs, cps, j, tables, carried, add, first, refresh, tolerances, norm_f, norm_b, settings):
        c_in = with_settings(c, settings)
        floats, ints, flags, x, f0 = carried
        rtol_f, atol_f, rtol_b, atol_b = tolerances
        # the forward re-solve over [c0, c1] from the checkpoint z0
        field_f = _restoring(owner, lambda t, y: forward.field(owner, t, y))
        ends = torch.cat([j, j + 1])
        times = cps.index_select(0, ends)
        # two selections: views of one tensor would be aliased inputs of the loops, which they refuse
        z0, z1 = zs.index_select(0, j)[0], zs.index_select(0, j + 1)[0]
        c0, c1 = times[0].clone(), times[1].clone()
        g0 = field_f(c0, z0)
        h0 = initial_step_tensor(field_f, c0, z0, g0, order, rtol_f, atol_f, norm_f)
        dt_f = torch.clamp(h0, min=c_in.min_step, max=c_in.max_step)
        state_f = initial_state(z0, g0, c0, dt_f, 2)
        ts_f = Tables(times, tables.index, tables.dense, tables.powers)
        state_f, rec = _recording_loop(
            field_f, solver, c_in, ts_f, rtol_f, atol_f, norm_f, state_f, _empty_record(capacity, stages, z0)
        )

        # the backward solve over [-c1, -c0], reading z from the re-solve
        def field_b(r, xx):
            return augmented.field(owner, r, xx, state_at(rec, tables, -r, z0, z1, c0, c1))

        field_b = _restoring(owner, field_b)
        # this segment's times; the step size, controller memory and counters are the last segment's
        floats = torch.cat([-times[1:], floats[1:]])
        ints = torch.cat([ints.new_ones(1), ints[1:4], ints.new_full((1,), RUNNING)])
        state = unpack(floats, ints, flags, x + add, f0, x.new_full((1,) + tuple(x.shape), math.nan))
        r0, y = state.t, state.y
        f_start = torch.cond(first | refresh, lambda yy: field_b(r0, yy), lambda yy: f0.clone(), (y,))

        def heuristic(yy, ff):
            h = initial_step_tensor(field_b, r0, yy, ff, order, rtol_b, atol_b, norm_b)
            return torch.clamp(h, min=c_in.min_step, max=c_in.max_step).reshape(1)

        dt_b = torch.cond(first, heuristic, lambda yy, ff: state.dt.reshape(1).clone(), (y, f_start))
        state = state._replace(f0=f_start, dt=dt_b.reshape(()))
        ts_b = Tables(-times.flip(0), tables.index, tables.dense, tables.powers)
        out = _loop(field_b, solver, c_in, ts_b, rtol_b, atol_b, norm_b, state)
        # the re-solve's last accepted state too: where it failed, the cause is named from it
        return pack(out)[:5], torch.cat([summary(state_f), summary(out)]), state_f.y

    return solve


def integrate_segments(
    forward: PureField,
    augmented: PureField,
    term,
    solver: ExplicitRungeKutta,
    controller: PIDController,
    checkpoints: Sequence[float],
    states: dict[float, torch.Tensor],
    x0: torch.Tensor,
    impulse: Callable[[float], torch.Tensor | None],
    *,
    tolerances: tuple,
    norms: tuple,
    fterm,
    capacity: int,
) -> tuple[torch.Tensor, Stats] | None:
    """The checkpointed adjoint's backward solve, one segment graph per checkpoint interval.

    Args:
        forward: the forward field's traceable form (solver time).
        augmented: the augmented field's traceable form, ``field(owner, r, x, z)`` with ``z`` the
            forward state at ``s = -r``.
        term: the augmented term (counts the evaluations).
        solver, controller: the method and its controller (forward and backward).
        checkpoints: increasing solver times, both ends included.
        states: the forward states (no graph) at every checkpoint.
        x0: the augmented state at ``-checkpoints[-1]``.
        impulse: ``impulse(c)``: what is added to the augmented state at checkpoint ``c`` (the
            cotangent of the output there) or None where nothing is (no output there).
        tolerances: (rtol_f, atol_f, rtol_b, atol_b), the re-solve's and the backward solve's.
        norms: (norm_f, norm_b).
        fterm: the forward term, whose ``nfe`` counts the re-solves' evaluations.
        capacity: rows of the table of re-solved steps (doubled while a segment needs more).

    Returns:
        (the augmented state at ``-checkpoints[0]``, the backward solve's counters), or None when the
        compiler rejects the field or the table would not fit in :data:`TABLE_BYTES` (nothing has
        been counted then).

    Raises:
        SolverError: a re-solve or the backward solve failed.
    """
    zs = torch.stack([states[c] for c in checkpoints])  # one tensor: the graph's inputs may not alias
    z_like = zs[0]
    row_bytes = (solver.tableau.stages + 1) * z_like.numel() * z_like.element_size()
    # the step settings and PID numbers are inputs (as in the forward graph): a new max_step or safety
    # compiles nothing
    control = core.StepControl.of(controller, int(solver.error_order or 0), x0.dtype)
    c, settings = graph_control(control), settings_vector(controller, control, x0)
    dev = x0.device
    dense = torch.tensor(solver.tableau.dense, dtype=torch.float64, device=dev)
    tables = Tables(
        torch.zeros(0, dtype=torch.float64, device=dev),
        torch.ones(1, dtype=torch.int64, device=dev),
        dense,
        torch.arange(1, dense.shape[1] + 1, dtype=torch.float64, device=dev),
    )
    tol = tuple(tolerance_tensor(v, like, i) for i, (v, like) in enumerate(zip(tolerances, (z_like, z_like, x0, x0))))
    norm_f, norm_b = norms
    # every input a tensor of its own: two inputs that are one tensor in one call and not in the next
    # (a shared zero, a shared flag) fail the compiler's aliasing guard and compile the graph again
    first_flag = {b: torch.tensor(b, device=dev) for b in (False, True)}
    refresh_flag = {b: torch.tensor(b, device=dev) for b in (False, True)}
    zero = torch.zeros_like(x0)
    state = initial_state(x0, torch.zeros_like(x0), -checkpoints[-1], 0.0, 2)
    carried = pack(state)[:5]
    nfe_f, nfe_b = fterm.nfe, term.nfe
    n_att = n_acc = n_rej = 0
    cps = torch.tensor(list(checkpoints), dtype=torch.float64, device=dev)
    for j in range(len(checkpoints) - 2, -1, -1):
        c0, c1 = checkpoints[j], checkpoints[j + 1]
        first = j == len(checkpoints) - 2
        add = None if first else impulse(c1)
        index = torch.tensor([j], device=dev)
        while True:
            graph = (
                None
                if capacity * row_bytes > TABLE_BYTES
                else _graph(forward, augmented, solver, c, norm_b, dev.type, capacity)
            )
            if graph is None or graph.failed:
                fterm.nfe, term.nfe = nfe_f, nfe_b
                return None
            counters = graph.counters(fterm, c0, states[c0])  # probed once per graph
            if counters is None:  # the field writes its buffers
                fterm.nfe, term.nfe = nfe_f, nfe_b
                return None
            extra = zero if add is None else add, first_flag[first], refresh_flag[add is not None], tol, norm_f
            out = graph(zs, cps, index, tables, carried, *extra, counters=counters, extra=(settings,))
            if out is None:
                fterm.nfe, term.nfe = nfe_f, nfe_b
                return None
            info = out[1].tolist()  # the one host read of the segment
            if info[4] <= capacity:  # the re-solve's accepted steps fit in the table
                break
            capacity *= 2
        status_f, t_f, dt_f, att_f, _, _ = read_out(info[:7])
        status_b, t_b, dt_b, att_b, n_acc, n_rej = read_out(info[7:])
        # the re-solve: f(c0), the initial step's trial, the attempts
        count_evaluations(fterm, counters, 2 + evaluations_per_attempt(solver) * att_f)
        if status_f is not Status.SUCCESS:
            # The re-solve can fail where the forward solve did not: it starts afresh at the checkpoint
            # (its own initial step), so its stages sample the field where the forward's steps passed
            # over (a NaN in a window the forward stepped across). The cause is named from the state
            # where it stopped and the checkpoint state it started from, as the eager pass's re-solve
            # (an adaptive solve from that state) names it.
            raise solve_error(status_f, t_f, dt_f, controller, fterm, stopped=(solver, out[2], states[c0]))
        # the backward solve (its counters run on through the segments): the attempts, f and the
        # initial step's trial at the start, f again after each cotangent
        # (the augmented field evaluates the forward one once, in its VJP: the same counter steps)
        count_evaluations(
            term, counters, evaluations_per_attempt(solver) * (att_b - n_att) + 2 * first + (add is not None)
        )
        n_att = att_b
        if status_b is not Status.SUCCESS:
            # the carried state is where the backward loop stopped: the cause is named from it
            raise solve_error(status_b, t_b, dt_b, controller, term, stopped=(solver, out[0][3], x0))
        carried = out[0]
    return carried[3], Stats(term.nfe, n_acc, n_rej)


def _graph(forward, augmented, solver, c, norm, device_type: str, capacity: int) -> WholeSolve:
    return WholeSolve(
        augmented,
        solver,
        c,
        norm,
        device_type=device_type,
        start="segments",
        build=lambda: _segment_function(forward, augmented, solver, c, capacity),
        variant=(forward.key, capacity),
    )
