"""Checkpointed (interpolating) adjoint: the backward solve reads the state from re-solved segments.

The forward solve keeps the state at checkpoint times (the output times, whose states are returned
anyway, plus ``checkpoints`` evenly spaced times). In backward time ``r = -s`` the augmented state
``x = [a, q]`` obeys

    da/dr = a^T dg/dz(s, z(s)),    dq/dr = a^T dg/dtheta(s, z(s)),

where ``z(s)`` is not reconstructed backwards (as the backsolve adjoint does, which drifts on
contracting problems) but read from the dense output of a forward re-solve of the segment between
two checkpoints, made when the backward solve enters that segment. Steps end at the checkpoint
times, so one segment's dense output is held at a time: memory is O(checkpoints + steps of one
segment). As in the backsolve adjoint it is one backward solve with the cotangents added at the
output times. Fixed-step solvers checkpoint on grid points and re-solve with cubic Hermite output.

References: SciMLSensitivity's InterpolatingAdjoint(checkpointing=true) (Rackauckas et al.,
"Universal Differential Equations for Scientific Machine Learning", 2020); Zhuang et al.,
"Adaptive Checkpoint Adjoint Method for Gradient Estimation in Neural ODE", ICML 2020.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence

import torch

from .._errors import SolverError
from .._problem import Problem
from .._solution import Stats
from .._term import PureField, term_field
from ..controllers import ConstantStepSize
from ..loop import integrate, whole_segments
from ..loop.host import integrate_fixed
from ._backward import (
    AdjointRun,
    AugmentedTerm,
    BackwardPlan,
    channel_part,
    channel_tolerance,
    forward_grid,
    in_backward,
    merge_times,
    split_params,
    traceable_vjp,
)


def checkpoint_times(ts: Sequence[float], checkpoints: int | None, grid: Sequence[float] | None) -> list[float]:
    """Where the forward state is kept (solver time, increasing, including both ends).

    Adaptive solves: the output times plus ``checkpoints - 1`` evenly spaced inner times (``checkpoints``
    equal segments). Fixed grids: grid points only (an output between grid points is an interpolated
    value, no place to restart), ``checkpoints`` (default one per output interval) evenly spaced by
    index, plus the output times that are grid points.
    """
    s0, s1 = ts[0], ts[-1]
    if grid is None:
        extra = [s0 + (s1 - s0) * j / checkpoints for j in range(1, checkpoints)] if checkpoints else []
        return merge_times(extra, ts)
    k = checkpoints if checkpoints else max(1, len(ts) - 1)
    last = len(grid) - 1
    chosen = {grid[round(j * last / k)] for j in range(k + 1)}
    return sorted(chosen | (set(ts) & set(grid)))


@dataclasses.dataclass
class _Segment:
    """The dense forward solution over one checkpoint interval (solver time)."""

    index: int
    starts: list[float]
    pieces: list

    def __call__(self, s: float) -> torch.Tensor:
        i = min(max(bisect.bisect_right(self.starts, s) - 1, 0), len(self.pieces) - 1)
        piece = self.pieces[i]
        return piece(min(max(s, piece.t0), piece.t1))


class Interpolating(AdjointRun):
    """One solve's checkpointed adjoint: ``forward`` keeps checkpoints, ``backward`` solves [a, q].

    Args:
        problem, plan, params, event_fn, throw: as for :class:`~hybrid_node.sensitivity.backsolve.Backsolve`.
        checkpoints: number of evenly spaced segments besides the output times (None: outputs only).
    """

    method_name = "InterpolatingAdjoint"
    n_channels = 1

    def __init__(
        self,
        problem: Problem,
        plan: BackwardPlan,
        params: tuple[torch.Tensor, ...],
        event_fn: Callable | None,
        throw: bool,
        checkpoints: int | None,
    ):
        super().__init__(problem, plan, params, event_fn, throw)
        self.checkpoints = checkpoints
        self.grid: list[float] | None = None
        self.cps: list[float] = []
        self.states: dict[float, torch.Tensor] = {}

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        """Solve without a graph, keeping the checkpoint states; returns the stacked outputs."""
        problem = self.problem
        y0 = y0.detach()
        fixed = isinstance(problem.controller, ConstantStepSize)
        with torch.no_grad():
            term = problem.term()
            outputs = None
            if self.event_fn is not None:
                self.integration = integrate(problem, term, y0, problem.ts, event_fn=self.event_fn, throw=self.throw)
                outputs = self.integration.ys
                if self.integration.event_t is None:  # a failed solve reported by status
                    # its outputs are the checkpoints: the backward pass re-solves the part it reached
                    self.cps = list(self.ts)
                    self.states = dict(zip(self.ts, outputs))
                    return torch.stack(outputs)
                self.ts = [problem.ts[0], self.integration.event_t]
            self.grid = forward_grid(problem, self.ts) if fixed else None
            self.cps = checkpoint_times(self.ts, self.checkpoints, self.grid)
            if outputs is not None and len(self.cps) == 2:
                self.states = dict(zip(self.ts, outputs))
                return torch.stack(outputs)
            # outputs do not change the steps, so one pass yields the outputs and the checkpoints
            times = sorted(set(self.cps) | set(self.ts))
            if outputs is not None:
                term.callbacks = None  # the event solve above called them already
            if fixed:
                assert self.grid is not None  # set for fixed steps
                kept = integrate_fixed(
                    term,
                    problem.solver,
                    problem.controller,
                    self.grid,
                    y0,
                    times,
                    jump_t=problem.jump_t,
                    step_t=problem.step_t,
                    times_dtype=problem.t.dtype,
                )
            else:
                kept = integrate(problem, term, y0, times, throw=self.throw)
        at = dict(zip(times, kept.ys))
        self.states = {c: at[c] for c in self.cps}
        if outputs is not None:
            assert self.integration is not None  # the event solve above
            self.integration.stats.nfe = term.nfe
            return torch.stack(outputs)
        kept.ys = [at[s] for s in self.ts]
        self.integration = kept
        return torch.stack(kept.ys)

    def adopt(self, states: dict[float, torch.Tensor], stats: Stats) -> None:
        """Take a forward solution computed elsewhere (an event loop) instead of running :meth:`forward`.

        Args:
            states: the flat states (no graph) at increasing solver times, both ends included; they
                are the checkpoints (the backward pass re-solves between consecutive ones) and the
                outputs whose cotangents the backward pass takes.
            stats: the solve's counters; the backward pass adds its work to them.
        """
        super().adopt(states, stats)
        self.cps = self.ts
        self.grid = None
        self.states = dict(states)

    def _resolve(self, j: int, term) -> _Segment:
        """Re-solve checkpoint interval j forwards with dense output (no graph)."""
        problem = self.problem
        c0, c1 = self.cps[j], self.cps[j + 1]
        y = self.states[c0]
        with torch.no_grad():
            if self.grid is not None:
                grid = [g for g in self.grid if c0 <= g <= c1]
                ctrl = dataclasses.replace(problem.controller, interp="cubic")
                # the same steps as the solve above: the stops inside [c0, c1] are added to the grid again
                result = integrate_fixed(
                    term,
                    problem.solver,
                    ctrl,
                    grid,
                    y,
                    [c0, c1],
                    jump_t=problem.jump_t,
                    step_t=problem.step_t,
                    times_dtype=problem.t.dtype,
                    dense=True,
                )
            else:
                result = integrate(problem, term, y, [c0, c1], dense=True)
        pieces = result.segments
        assert pieces is not None  # dense=True
        return _Segment(j, [p.t0 for p in pieces], pieces)

    def _whole_backward(self, term: AugmentedTerm, fterm, rterm, ys, grad_ys, x0) -> tuple | None:
        """The backward solve as one compiled graph per checkpoint segment (``compile=True``), or None
        where that does not apply (:func:`~hybrid_node.loop.whole_segments.applies`) or the compiler
        rejects the field; the eager pass then runs."""
        problem, plan = self.problem, self.plan
        if not (plan.same_as_forward and self.grid is None and self.event_fn is None) or torch.is_grad_enabled():
            return None
        if term.callbacks is not None or not whole_segments.applies(plan.solver, plan.controller):
            return None
        augmented = traceable_interpolating_field(problem, self.params, ys.dtype)
        if augmented is None:
            return None
        q = x0.numel() - ys[0].numel()  # the parameter channel
        outputs = {s: i for i, s in enumerate(self.ts)}

        def impulse(c: float) -> torch.Tensor | None:
            i = outputs.get(c)
            return None if i is None else torch.cat([grad_ys[i].reshape(-1).to(x0.dtype), x0.new_zeros(q)])

        assert self.integration is not None  # set by forward
        capacity = whole_segments.table_rows(self.integration.stats.n_accepted)
        try:
            out = self._segments(term, rterm, x0, augmented, impulse, capacity, ys[0], q)
        except SolverError as err:  # named as the eager pass names it
            raise in_backward(err) from err
        if out is None:
            return None
        x, stats = out
        fterm.nfe += term.nfe  # each augmented evaluation is one of the user's field
        term.nfe = 0
        return x, stats.n_accepted

    def _segments(self, term, rterm, x0, augmented, impulse, capacity: int, y_like, q: int) -> tuple | None:
        """:func:`~hybrid_node.loop.whole_segments.integrate_segments` over this solve's checkpoints
        (``y_like``: a state, for the tolerances' shape; ``q``: the size of the parameter channel)."""
        problem, plan = self.problem, self.plan
        return whole_segments.integrate_segments(
            term_field(rterm),
            augmented,
            term,
            plan.solver,
            plan.controller,
            self.cps,
            self.states,
            x0,
            impulse,
            tolerances=(
                problem.rtol,
                problem.atol,
                channel_tolerance(plan.rtol, 1, y_like, q),
                channel_tolerance(plan.atol, 1, y_like, q),
            ),
            norms=(problem.norm, self.norm.resolve()),
            fterm=rterm,
            capacity=capacity,
        )

    def backward(self, ys: torch.Tensor, grad_ys: torch.Tensor, need_t: bool):
        """Solve the adjoint backwards over the re-solved forward trajectory.

        Returns:
            (dL/dt or None, dL/dy0, [dL/dp for p in params]).
        """
        problem, params = self.problem, self.params
        ts, ys, grad_ys = self.reached(ys, grad_ys)
        # adaptive checkpoints include every output time, so those up to the last reached one end there
        cps = self.cps if len(ts) == len(self.ts) else [c for c in self.cps if c <= ts[-1]]
        fterm, rterm = problem.term(callbacks=False), problem.term(callbacks=False)
        dtype, n, shape = ys.dtype, ys[0].numel(), ys[0].shape
        a_end, q0 = self.end_state(ts, ys, grad_ys)
        last = len(ts) - 1
        x = torch.cat([a_end.reshape(-1), q0])
        current: list[_Segment | None] = [None]

        def z_at(s: float) -> torch.Tensor:
            if s in self.states:
                return self.states[s]
            j = min(max(bisect.bisect_right(cps, s) - 1, 0), len(cps) - 2)
            if current[0] is None or current[0].index != j:
                current[0] = None  # free the previous segment before re-solving the next
                current[0] = self._resolve(j, rterm)
            assert current[0] is not None
            return current[0](s)

        def field(r: float, xx: torch.Tensor, perturb: int = 0) -> torch.Tensor:
            _, grads = self.field_vjp(fterm, r, z_at(-r).reshape(shape), xx[:n].reshape(shape), perturb)
            return torch.cat([channel_part(gr, dtype) for gr in grads])

        def at_output(j: int, xx: torch.Tensor) -> torch.Tensor:
            i = last - j
            return torch.cat([xx[:n] + grad_ys[i].reshape(-1), xx[n:]])

        def unpack(xx: torch.Tensor) -> tuple[torch.Tensor, ...]:
            # (adj_y, *adj_params): this adjoint does not carry the state
            return (xx[:n].reshape(shape), *split_params(xx[n:], params))

        term = AugmentedTerm(field, problem, unpack)
        steps = 0
        # the compiled pass covers whole solves (a failed one's reached part takes the eager pass)
        whole = self._whole_backward(term, fterm, rterm, ys, grad_ys, x) if 0 < last == len(self.ts) - 1 else None
        if whole is not None:
            x, steps = whole
        else:
            stops = [-c for c in reversed(cps[1:-1])]
            x, steps = self.solve_backward(term, x, ts, ys, at_output, stops=stops)
        current[0] = None
        out = self.gradients(need_t, fterm, ts, ys, grad_ys, x[:n].reshape(shape), x[n:])
        self.count_backward(fterm.nfe + rterm.nfe, steps)
        return out


def traceable_interpolating_field(
    problem: Problem, params: tuple[torch.Tensor, ...], dtype: torch.dtype
) -> PureField | None:
    """The checkpointed adjoint's augmented field ``field(module, r, x, z)``: ``[a^T dg/dz,
    a^T dg/dtheta]`` on ``x = [a, q]`` with ``z`` the forward state at ``s = -r``, in a form a compiler
    can trace (:func:`~hybrid_node.sensitivity._backward.traceable_vjp`); None: the eager field serves."""
    found = traceable_vjp(problem, params, dtype, "interpolating")
    if found is None:
        return None
    vjp_at, _, key = found
    n = problem.y0.numel()

    def field(module, r, xx, z):
        _, a_z, a_p = vjp_at(module, r, z, xx[:n])
        return torch.cat([a_z.to(dtype)] + a_p)

    return PureField(problem.func, key, field)
