"""An explicit Runge-Kutta step whose stages are the iterations of an inner ``while_loop``.

:meth:`ExplicitRungeKutta.step <hybrid_node.solvers.runge_kutta.ExplicitRungeKutta.step>` writes a
step's stages one after the other, so a traced loop body holds one copy of the field per stage. For
the whole-solve graph of the backsolve adjoint's backward solve (:mod:`.whole_impulses`), whose
field is a vector-Jacobian product, those copies are most of what the compiler traces, lowers,
generates and builds on a first call. Here stage ``i`` is one iteration of a ``while_loop``: its
input ``y + dt * sum_j a_ij k_j`` is the row ``a_i`` of the tableau (a graph input) times the stack
of stage derivatives, and the field appears once in the graph (twice for a method without
first-same-as-last, DOP853, whose derivative at the step's end is evaluated apart). The mlp adjoint's backward graph
then compiles in 4.4-4.7 instead of 7.1-7.6 s and its training step takes 8% longer: every stage
writes the whole stack anew (a loop may not update its input in place), so the whole-solve graph
loops over the stages only where that stack is small
(:meth:`~hybrid_node.loop.whole.WholeSolve.loops_stages`). The forward graphs keep the unrolled
stages: there the loop's own cost per stage (a predicate, the stack written anew) is a large part of
a cheap field's evaluation (the mlp forward solve 1.9 instead of 1.3 ms). Measurements:
docs/compiled/first_call.md, "The backward graph's stages in a loop, and no pattern matcher".

The same sums in another order: the step's results equal the unrolled step's up to rounding.

Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.1 (explicit Runge-Kutta
methods and their stages).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch._higher_order_ops.while_loop import while_loop

from ..interpolation import linear_combination
from ..solvers.runge_kutta import ExplicitRungeKutta, RKStep


class StageTable(NamedTuple):
    """The tableau's stage coefficients as tensors, inputs of the graph (the C++ wrapper of torch 2.13
    cannot hold a tensor constant inside a nested loop body).

    Attributes:
        a: (s, s) float64, row i the coefficients a_ij of stage i (zeros from j = i on).
        c: (s,) float64, the stage times as fractions of the step.
    """

    a: torch.Tensor
    c: torch.Tensor


def stage_table(solver: ExplicitRungeKutta, like: torch.Tensor) -> StageTable:
    """The :class:`StageTable` of ``solver``'s tableau on ``like``'s device."""
    tab = solver.tableau
    n = tab.stages
    rows = [list(tab.a[i]) + [0.0] * (n - len(tab.a[i])) for i in range(n)]
    a = torch.tensor(rows, dtype=torch.float64, device=like.device)
    return StageTable(a, torch.tensor(list(tab.c), dtype=torch.float64, device=like.device))


def looped_step(
    solver: ExplicitRungeKutta,
    table: StageTable,
    field: Callable,
    t: torch.Tensor,
    y: torch.Tensor,
    f0: torch.Tensor,
    dt: torch.Tensor,
    fresh_f0: torch.Tensor,
) -> RKStep:
    """One step of ``solver``'s tableau from (t, y) of size ``dt``, the stages in a ``while_loop``.

    Args:
        solver: an explicit embedded pair.
        table: its :func:`stage_table`.
        field: ``field(t, y)``.
        t, dt: 0-d float64 start and step.
        y: the state.
        f0: the derivative at (t, y), unless ``fresh_f0``.
        fresh_f0: 0-d bool: evaluate the derivative at (t, y) as stage 0 (``f0`` is stale: the state
            jumped); the step's ``ks[0]`` is then that evaluation.

    Returns:
        The step as :meth:`ExplicitRungeKutta.step` returns it: the solution (for a first-same-as-last
        pair the last stage's input itself, where its derivative was evaluated), the error estimate
        and the stage derivatives.
    """
    tab = solver.tableau
    n = tab.stages
    column = (n,) + (1,) * y.dim()
    stage = torch.arange(n, device=y.device).reshape(column)

    def cond_fn(i, ks, yi):
        return i < n

    def body_fn(i, ks, yi):
        row = i.reshape(1)
        # the step times each coefficient in float64, rounded once to the state's dtype (as the
        # unrolled step's factors are)
        weights = (table.a.index_select(0, row).reshape(column) * dt).to(y.dtype)
        yi = y + (weights * ks).sum(0)
        k = field(t + table.c.index_select(0, row).reshape(()) * dt, yi)
        return i + 1, torch.where(stage == i, k.unsqueeze(0), ks), yi

    ks0 = torch.cat([f0.unsqueeze(0), f0.new_zeros((n - 1,) + tuple(f0.shape))])
    start = torch.where(fresh_f0, 0, 1).to(torch.int64)
    _, ks, last_input = while_loop(cond_fn, body_fn, (start, ks0, y.clone()))
    stages = tuple(ks.unbind(0))
    y1 = last_input if tab.fsal else linear_combination(y, dt, tab.b, stages)
    return RKStep(y1, solver.error_of(dt, stages), stages)
