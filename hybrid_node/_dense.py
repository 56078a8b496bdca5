"""``odeint_dense`` and the continuous solution it returns (the solver's dense output as a callable)."""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import torch

from ._api import _records_compiled_steps
from ._dense_time import time_slope_term
from ._double_backward import first_order_only
from ._problem import Problem, make_problem
from ._registry import (
    build_solver,
)
from ._solution import State
from ._transforms import inside_transform
from .controllers import PIDController
from .loop import integrate
from .sensitivity.settings import DirectBackprop
from .solvers.base import ExternalSolver


@dataclasses.dataclass
class DenseSolution:
    """A continuous solution y(t) over [t0, t1] (callable), from :func:`odeint_dense`.

    Call with a scalar time or a 1-D tensor of times inside the solved interval. A query past an end
    by no more than its dtype's rounding (float32 ``0.1`` is 0.10000000149) is taken as that end.
    The states carry gradients with respect to y0 and the field's parameters; of a solve whose step
    attempts ran compiled (``compile=True``) first-order ones only (a second backward pass is refused
    with the fix, :mod:`hybrid_node._double_backward`). Query times that require grad get the
    interpolant's own slope dy/dt as their gradient (first order; a backward pass with
    ``create_graph=True`` through them is refused with the fix, :mod:`hybrid_node._dense_time`).
    """

    problem: Problem
    segments: list
    stats: Any
    #: whether the segments were made by compiled step attempts that autograd recorded
    first_order: bool = False
    #: the solve's state at its end time (flat), the read there; None: the last interpolant's value
    end: torch.Tensor | None = None

    def __post_init__(self):
        self._starts = [s.t0 for s in self.segments]

    def _node(self, i: int, s: float) -> torch.Tensor | None:
        """The step's own state where ``s`` (solver time, in segment ``i``) is a step time, else None.

        A read there returns the state the solver stepped from (as odeint returns it), not the
        interpolant's sum, which some interpolants reproduce only to rounding: dopri5's polynomial at
        its step's end, the Nordsieck one (adams, bdf, lsoda) at its step's start.
        """
        seg = self.segments[i]
        if s == seg.t1 and i == len(self.segments) - 1:
            return self.end if self.end is not None else seg.interpolant(1.0)
        if s != seg.t0:
            return None
        start = getattr(seg.interpolant, "y0", None)
        if isinstance(start, torch.Tensor):  # the state the loop passed to the step
            return start
        # the previous step's end (there Nordsieck's sum is its first term alone), or the initial state
        return self.segments[i - 1].interpolant(1.0) if i > 0 else self.problem.y0

    def __call__(self, t) -> State:
        """The solution at ``t``.

        Args:
            t: a time (float or 0-d tensor) or a 1-D tensor of times in the solved interval.

        Returns:
            The state at ``t`` (for a 1-D ``t``, stacked along a new leading dimension).

        Raises:
            ValueError: a time outside the solved interval by more than its dtype's rounding (NaN
                included), or ``t`` of more than one dimension.
            TypeError: ``t`` of bool or complex dtype.
        """
        query_dtype = t.dtype if isinstance(t, torch.Tensor) and t.is_floating_point() else torch.float64
        # a tensor stays itself, with its graph; numpy reads Python floats as float64 (torch: the default dtype)
        given = t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t))
        if given.dtype == torch.bool or given.is_complex():  # float64 would take True as 1, drop an imaginary part
            raise TypeError(f"t must be real times (floats or integers), got dtype {given.dtype}.")
        tt = given.to(torch.float64)
        if tt.dim() > 1:  # the states would come back stacked along one flattened dimension
            raise ValueError(
                f"t must be a scalar or a 1-D tensor of times, got shape {tuple(tt.shape)}; pass t.reshape(-1) "
                "and reshape the states."
            )
        scalar = tt.dim() == 0
        if tt.numel() == 0:  # no times, no states: (0, *y0.shape), as a read of n times gives (n, ...)
            y0 = self.problem.y0
            return self.problem.unflatten(torch.empty((0,) + tuple(y0.shape), dtype=y0.dtype, device=y0.device))
        lo, hi = self.segments[0].t0, self.segments[-1].t1
        # a time rounded to the query's dtype lies within half its eps (relative) of the time meant, so
        # one eps of the interval's scale takes an end given in float32 (or bfloat16) as that end
        slack = max(1e-12 * max(1.0, abs(lo), abs(hi)), torch.finfo(query_dtype).eps * max(abs(lo), abs(hi)))
        queries: list[float] = []  # solver time, clamped into its segment
        groups: dict[int, list[int]] = {}  # segment -> positions of its queries
        for x in tt.reshape(-1).tolist():
            s = -x if self.problem.reverse else x
            if not (lo - slack <= s <= hi + slack):
                ends = (-hi, -lo) if self.problem.reverse else (lo, hi)
                raise ValueError(f"t={x} is outside the solved interval [{ends[0]!r}, {ends[1]!r}].")
            i = min(max(bisect.bisect_right(self._starts, s) - 1, 0), len(self.segments) - 1)
            queries.append(min(max(s, self.segments[i].t0), self.segments[i].t1))
            groups.setdefault(i, []).append(len(queries) - 1)
        # one batched evaluation per step's dense output (as odeint's outputs), not one per query, which
        # costs ~80 us each, most of it Python and small kernels
        rows: list[torch.Tensor | None] = [None] * len(queries)  # in the order asked
        where: list[int] = []  # the query of each row of the segments' evaluations, in their order
        for i, js in groups.items():
            inner = []
            for j in js:
                rows[j] = self._node(i, queries[j])
                if rows[j] is None:
                    inner.append(j)
            if inner:
                for j, row in zip(inner, self.segments[i].many([queries[j] for j in inner])):
                    rows[j] = row
            where.extend(js)
        ys = torch.stack(cast(list[torch.Tensor], rows))
        if isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled():
            ys = ys + time_slope_term(tt.reshape(-1).to(ys.device), self._slopes(groups, queries, where, ys))
        if self.first_order:
            # the interpolant's coefficients come from compiled stages: torch's own error for a second
            # backward came from its engine, naming neither the option nor a fix
            ys = first_order_only(ys)
        ys = self.problem.unflatten(ys)
        if scalar:
            return tuple(y[0] for y in ys) if isinstance(ys, tuple) else ys[0]
        return ys

    def _slopes(self, groups: dict[int, list[int]], queries: list[float], where: list[int], ys: torch.Tensor):
        """dy/dt in the caller's time at each query, rows in the order asked, shape ``ys.shape``.

        The interpolant's theta-derivative over its step (Hairer, Nørsett, Wanner, Solving ODEs I,
        2nd ed., Section II.6); negated for a backward-in-time solve, whose solver time is -t.
        """
        rows = []
        for i, js in groups.items():
            seg = self.segments[i]
            h = seg.t1 - seg.t0
            thetas = [1.0 if queries[j] == seg.t1 else (queries[j] - seg.t0) / h for j in js]
            idx = torch.zeros(len(js), dtype=torch.long, device=ys.device)
            rows.append(seg.interpolant.sample_slopes(thetas, idx, 1) / h)
        slopes = torch.cat(rows).reshape(ys.shape)
        order = sorted(range(len(where)), key=where.__getitem__)
        slopes = slopes[torch.tensor(order, device=ys.device)]
        return -slopes if self.problem.reverse else slopes


def odeint_dense(
    func: Callable,
    y0: State,
    t0: float | torch.Tensor,
    t1: float | torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> DenseSolution:
    """Solve on [t0, t1] and return the continuous solution (the solver's dense output) as a callable.

    Args:
        func: ``func(t, y)`` returning dy/dt.
        y0: initial state (a tensor or a tuple of tensors).
        t0, t1: the interval's ends (t1 < t0 solves backwards in time).
        rtol, atol, method, options: as :func:`odeint` (torch backend).

    Returns:
        DenseSolution; ``sol(t)`` gives y(t) for any t in the interval, with gradients (direct).

    Raises:
        ValueError: unknown method or options, invalid input (e.g. t1 equal to t0), ``scipy_solver``
            (no dense output here), ``device_loop`` (the dense solve runs the host loop), or a call inside a
            ``torch.func`` transform (no dense output there).
        TypeError, BackendError: as for :func:`odeint`.
        SolverError: the solve failed.
    """
    solver, controller, extras = build_solver(method, options, rtol, atol)
    if isinstance(controller, PIDController) and controller.device_loop:
        # accepted, it changed nothing: dense output keeps every step on the host, so the host loop ran
        raise ValueError(
            "odeint_dense keeps every step for its dense output in the host loop, so device_loop has no effect "
            "there; drop it (hn.odeint takes it for the output times it returns)."
        )
    if isinstance(controller, PIDController) and not isinstance(solver, ExternalSolver):
        # the implicit solvers' Newton test at the solve's tolerances, as odeint's solve sets it: without
        # it kencarp4's steps differed from odeint's by 1e-8 at rtol 1e-6
        solver = solver.with_tolerances(controller.rtol, controller.atol)
    ends = [float(e.detach()) if isinstance(e, torch.Tensor) else float(e) for e in (t0, t1)]
    # named here: the grid check below would speak of a tensor t the caller never passed
    if not all(math.isfinite(e) for e in ends) or ends[0] == ends[1]:
        raise ValueError(f"odeint_dense needs finite t0 and t1 that differ, got t0={ends[0]!r}, t1={ends[1]!r}.")
    if inside_transform():
        # the solve refuses dense output there; under a forward-mode transform (torch.func.hessian) the time
        # tensor made here was refused first, with advice to pass t from outside that no caller can follow
        raise ValueError(
            "odeint_dense has no dense output inside torch.func transforms (vmap, grad, jacrev, hessian, ...): call "
            "it outside the transform and differentiate with torch.autograd (create_graph=True for second "
            "derivatives), or inside the transform use hn.odeint at the output times you need."
        )
    t = torch.tensor(ends, dtype=torch.float64)
    problem = make_problem(
        func,
        y0,
        t,
        solver,
        controller,
        t_dtype=extras.get("t_dtype"),
        jump_t=extras.get("jump_t", ()),
        step_t=extras.get("step_t", ()),
    )
    if isinstance(solver, ExternalSolver):
        raise ValueError(f"odeint_dense needs a torch solver; {solver.name} has no dense output here.")
    integration = integrate(problem, problem.term(), problem.y0, problem.ts, dense=True)
    assert integration.segments is not None  # dense=True
    first_order = bool(_records_compiled_steps(solver, DirectBackprop()))
    end = integration.ys[-1]  # the state at t1 as the solve returns it (the interpolant's sum may round)
    return DenseSolution(problem, integration.segments, integration.stats, first_order, end)
