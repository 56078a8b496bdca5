"""The adjoint method of Chen et al. (2018): reconstruct the state backwards together with the adjoint.

In backward time ``r = -s`` (``s`` the forward solver time, ``g`` the field in solver time) the
augmented state ``x = [z, a, q]`` obeys

    dz/dr = -g(s, z),    da/dr = a^T dg/dz,    dq/dr = a^T dg/dtheta,

from ``z = y(s_N)``, ``a = dL/dy(s_N)``, ``q = 0``. One backward solve covers all output intervals: at
each inner output time the cotangent ``dL/dy(s_i)`` is added to ``a`` and ``z`` is reset to the stored
forward state (which bounds the reconstruction's drift to one interval); step-size control runs on.
At the end ``a = dL/dy0`` and ``q = dL/dtheta``. Output times get dL/dt_i = <dL/dy_i, f(t_i, y_i)>
(i > 0) and dL/dt_0 = -<a(t_0), f(t_0, y_0)>, the derivatives of the continuous solution.

Memory is O(1) in the number of steps. On contracting or stiff problems the reconstructed ``z`` can
drift far from the forward trajectory (the backward solve of a contracting system is expanding);
:class:`~hybrid_node.sensitivity.interpolating.Interpolating` avoids that.

Reference: Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations", NeurIPS
2018, Algorithm 1 and Appendix B; seminorm: Kidger, Chen, Lyons, ICML 2021.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._errors import Status
from .._problem import Problem
from .._solution import Stats
from ..loop import integrate
from ..loop.compiled_step import PureField
from ..loop.device import Impulses
from ..loop.host import Integration
from ..solvers.base import ExternalSolver
from ._backward import (
    AdjointRun,
    AugmentedTerm,
    channel_part,
    split_params,
    traceable_vjp,
)


class Backsolve(AdjointRun):
    """One solve's backsolve adjoint: ``forward`` solves without a graph, ``backward`` solves [z, a, q].

    Args:
        problem, plan, params, event_fn, throw: as for :class:`~hybrid_node.sensitivity._backward.AdjointRun`.
    """

    method_name = "BacksolveAdjoint"
    n_channels = 2

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        """Solve without a graph; returns the stacked flat states at the output (or event) times."""
        problem = self.problem
        with torch.no_grad():
            if isinstance(problem.solver, ExternalSolver):  # scipy runs its own loop (no events)
                term = problem.term()
                ys = problem.solver.integrate(term, y0.detach(), problem.ts, problem.rtol, problem.atol)
                stats = Stats(nfe=term.nfe)
                self.integration = Integration(list(ys.unbind(0)), stats, Status.SUCCESS, problem.ts[-1])
                return ys
            self.integration = integrate(
                problem, problem.term(), y0.detach(), problem.ts, event_fn=self.event_fn, throw=self.throw
            )
        if self.integration.event_t is not None:
            self.ts = [problem.ts[0], self.integration.event_t]
        return torch.stack(self.integration.ys)

    def backward(self, ys: torch.Tensor, grad_ys: torch.Tensor, need_t: bool):
        """Solve the augmented system from the last output time to the first.

        Returns:
            (dL/dt or None, dL/dy0, [dL/dp for p in params]).
        """
        problem, params = self.problem, self.params
        ts, ys, grad_ys = self.reached(ys, grad_ys)
        fterm = problem.term(callbacks=False)
        dtype = ys.dtype
        n = ys[0].numel()
        shape = ys[0].shape
        a_end, q0 = self.end_state(ts, ys, grad_ys)
        last = len(ts) - 1
        x = torch.cat([ys[-1].reshape(-1), a_end.reshape(-1), q0])

        def field(r: float, xx: torch.Tensor, perturb: int = 0) -> torch.Tensor:
            g, grads = self.field_vjp(fterm, r, xx[:n].reshape(shape), xx[n : 2 * n].reshape(shape), perturb)
            out = torch.cat([g.detach().reshape(-1).to(dtype)] + [channel_part(gr, dtype) for gr in grads])
            out[:n].neg_()  # dz/dr = -g, negated in place rather than as one more tensor
            return out

        def at_output(j: int, xx: torch.Tensor) -> torch.Tensor:
            i = last - j  # backward output j is forward output i
            return torch.cat([ys[i].reshape(-1), xx[n : 2 * n] + grad_ys[i].reshape(-1), xx[2 * n :]])

        def unpack(xx: torch.Tensor) -> tuple[torch.Tensor, ...]:
            # (y, adj_y, *adj_params), as torchdiffeq's adjoint callbacks see the augmented state
            z, a = xx[:n].reshape(shape), xx[n : 2 * n].reshape(shape)
            return (z, a, *split_params(xx[2 * n :], params))

        term = AugmentedTerm(field, problem, unpack)
        if self.plan.solver.compile:
            term.pure_field = traceable_augmented_field(problem, params, dtype)
        impulses = output_impulses(ys, grad_ys) if self.plan.solver.compile and last > 0 else None
        x, steps = self.solve_backward(term, x, ts, ys, at_output, impulses=impulses)
        tterm = problem.term()
        out = self.gradients(need_t, tterm, ts, ys, grad_ys, x[n : 2 * n].reshape(shape), x[2 * n :])
        # every evaluation of the user's field in this pass: one per augmented evaluation (eager or
        # compiled), plus the time gradients'
        self.count_backward(term.nfe + tterm.nfe, steps)
        return out


def output_impulses(ys: torch.Tensor, grad_ys: torch.Tensor) -> Impulses:
    """The backward pass's ``at_output`` as tensors, for a backward solve run as one compiled graph:
    at backward output j (forward output i = T - 1 - j) the state part is reset to ``ys[i]`` and
    ``grad_ys[i]`` is added to the adjoint part; the parameter part is left alone.

    Args:
        ys, grad_ys: the forward outputs and their cotangents, shape (T, *state).

    Returns:
        The :class:`~hybrid_node.loop.device.Impulses` over the first ``2 * state.numel()`` components.
    """
    n = ys[0].numel()
    back = torch.arange(len(ys) - 2, -1, -1, device=ys.device)  # rows j - 1 for j = 1 .. T - 1
    keep = torch.cat([torch.zeros(n, dtype=ys.dtype), torch.ones(n, dtype=ys.dtype)]).to(ys.device)
    rows = torch.cat([ys.reshape(len(ys), -1)[back], grad_ys.reshape(len(ys), -1)[back].to(ys.dtype)], dim=1)
    return Impulses(keep=keep, add=rows, outputs=torch.tensor([len(ys)], device=ys.device))


def traceable_augmented_field(
    problem: Problem, params: tuple[torch.Tensor, ...], dtype: torch.dtype
) -> PureField | None:
    """The augmented field ``[-g, a^T dg/dz, a^T dg/dtheta]`` on ``x = [z, a, q]`` in a form a compiler
    can trace (:func:`~hybrid_node.sensitivity._backward.traceable_vjp`); None: the eager field serves."""
    found = traceable_vjp(problem, params, dtype, "backsolve")
    if found is None:
        return None
    vjp_at, vjp_by_grad, key = found
    n = problem.y0.numel()

    def augmented(vjp: Callable) -> Callable:
        def field(module, r, xx):
            gz, a_z, a_p = vjp(module, r, xx[:n], xx[n : 2 * n])
            return torch.cat([-gz, a_z] + a_p)

        return field

    return PureField(problem.func, key, augmented(vjp_at), augmented(vjp_by_grad))
