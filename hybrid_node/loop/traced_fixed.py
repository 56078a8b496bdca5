"""A fixed-step solve in traceable tensor operations, for ``torch.export`` and a user's ``torch.compile``.

The host loop (:func:`~hybrid_node.loop.host.integrate_fixed`) builds its grid on the host from the
output times, which a tracer cannot read. Here the grid is tensor arithmetic on the times,
``g_k = t0 + k h`` for ``k < n`` and ``g_n = t1`` with ``n = max(1, ceil((t1 - t0) / h - 1e-9))``
(:meth:`~hybrid_node.controllers.ConstantStepSize.grid`'s formula, the same float64 operations), or
the output times themselves without a step size; a ``while_loop`` takes the steps, and each step
writes the output times it covers (:func:`~hybrid_node.loop.core.emission`): the linear interpolant
between its ends (the fixed grid's default, as in torchdiffeq) or the cubic Hermite one
(``interp="cubic"``) and, at its end, the end state itself. Differentiated (a traced program run
with autograd), the loop's carries start marked as differentiable (:mod:`.while_grad`).

Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Sections II.1 (explicit Runge-Kutta steps)
and II.6 (Hermite interpolation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._higher_order_ops.while_loop import while_loop

from .._autocast import traced_field_autocast
from ..controllers import ConstantStepSize
from ..interpolation import hermite_weights
from ..solvers.base import AbstractSolver
from ..solvers.runge_kutta import ExplicitRungeKutta
from . import core
from .core import TENSOR
from .while_grad import differentiable_carries
from .whole import solver_time

#: the message of a traced fixed-step solve whose grid is longer than ``max_num_steps``
_TOO_MANY_STEPS = (
    "hybrid_node: the traced fixed-step solve has more steps than max_num_steps; use a larger step_size "
    "or raise options['max_num_steps']."
)


def traceable_fixed(solver, controller) -> str:
    """Why :func:`odeint_graph_fixed` cannot run a solve with these settings ("" when it can)."""
    if not (isinstance(solver, ExplicitRungeKutta) and not solver.adaptive):
        return f"the method {solver.name!r}"
    if controller.grid_constructor is not None:
        return "a grid_constructor"
    return "perturb=True" if controller.perturb else ""


@traced_field_autocast
def odeint_graph_fixed(
    func: Callable,
    y0: torch.Tensor,
    t: torch.Tensor,
    solver: AbstractSolver,
    controller: ConstantStepSize,
    t_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A fixed-step solve as one ``while_loop`` of tensor operations: the host loop's states.

    Args:
        func: ``func(t, y)``, a tensor field free of side effects other than counters.
        y0: the initial state (a tensor).
        t: strictly increasing or strictly decreasing 1-D output times.
        solver: an explicit Runge-Kutta method without error estimate (rk4, euler, midpoint, ...).
        controller: the grid: ``step_size`` apart, or the output times without one (no ``perturb``,
            no ``grid_constructor``: see :func:`traceable_fixed`), and the outputs' interpolation.
        t_dtype: the dtype of the time handed to ``func`` (None: the state's real dtype).

    Returns:
        The states at ``t``, shape (len(t), *y0.shape).

    Raises:
        ValueError: settings :func:`traceable_fixed` refuses.
        RuntimeError: (when the program runs) the grid is longer than ``max_num_steps``.
    """
    why = traceable_fixed(solver, controller)
    if why:
        raise ValueError(f"a traced fixed-step solve cannot run {why}.")
    assert isinstance(solver, ExplicitRungeKutta)  # (traceable_fixed checked it)
    y0 = y0.contiguous()  # the loop's carried state must keep its strides
    field, ts = solver_time(func, y0, t, t_dtype)
    start, end = ts[0].clone(), ts[-1].clone()  # (views of ts would alias it inside the loop, refused)

    if controller.step_size is None:
        n = torch.tensor(ts.shape[0] - 1, device=ts.device)

        def point(k: torch.Tensor) -> torch.Tensor:
            return ts.index_select(0, k.reshape(1)).reshape(())  # (a tensor index the tracer keeps)
    else:
        h = float(controller.step_size)
        n = torch.clamp(torch.ceil((end - start) / h - 1e-9), min=1).to(torch.int64)
        torch._assert_async(n <= controller.max_num_steps, _TOO_MANY_STEPS)

        def point(k: torch.Tensor) -> torch.Tensor:
            return torch.where(k < n, start + k.to(torch.float64) * h, end)

    cubic = controller.interp == "cubic"

    def body(k, y, f, outs):
        t0, t1 = point(k), point(k + 1)
        step = solver.step(field, t0, y, f, t1 - t0)
        f1 = solver.next_state(field, t1, step)  # type: ignore[arg-type]
        within, at_end, theta = core.emission(TENSOR, ts[1:], t0, t1)
        column = (-1,) + (1,) * y.dim()
        th = theta.reshape(column)
        if cubic:  # f0 and f1 the derivatives at the step's ends
            weights = hermite_weights(th, t1 - t0)
            ends = (y, step.y1, f, f1)
            values = sum(w.to(y.dtype) * x.unsqueeze(0) for w, x in zip(weights, ends))
        else:
            values = torch.lerp(y.unsqueeze(0), step.y1.unsqueeze(0), th.to(y.dtype))
        values = torch.where(at_end.reshape(column), step.y1.unsqueeze(0), values)  # the end is y1 itself
        outs = torch.where(within.reshape(column), values, outs)
        return k + 1, step.y1, f1, outs

    outs = y0.new_zeros((ts.shape[0] - 1, *y0.shape))
    k0 = torch.zeros((), dtype=torch.int64, device=ts.device)
    # under autograd the state, its derivative and the output buffer start as differentiable carries:
    # torch 2.13's while_loop backward otherwise drops the gradient of a carry that starts constant
    carries = differentiable_carries((k0, y0, field(start, y0), outs), which=(1, 2, 3))
    *_, outs = while_loop(lambda k, y, f, outs: k < n, body, carries)
    return torch.cat([y0.unsqueeze(0), outs])
