"""``method="scipy_solver"``: forward solves by scipy.integrate.solve_ivp (no gradients)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .._errors import SolverError, Status
from .base import ExternalSolver

SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


class _NoGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys, *inputs):
        return ys.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "method='scipy_solver' is forward-only: scipy computes no gradients. Use a torch solver such as "
            "'dopri5' (direct or adjoint) to differentiate."
        )


@dataclasses.dataclass(frozen=True)
class ScipySolver(ExternalSolver):
    """Wraps scipy.integrate.solve_ivp; the field is evaluated by torch under no_grad.

    Args:
        solver: a solve_ivp method name (RK45, RK23, DOP853, Radau, BDF, LSODA).

    Reference: P. Virtanen et al., "SciPy 1.0", Nature Methods 17 (2020).
    """

    solver: str = "LSODA"
    name = "scipy_solver"
    adaptive = True

    def __post_init__(self):
        if self.solver not in SCIPY_METHODS:
            raise ValueError(f"scipy_solver: unknown solver {self.solver!r}; choose one of {SCIPY_METHODS}.")

    def integrate(self, term, y0: torch.Tensor, ts, rtol, atol, grad_inputs=()):
        """Solve on the increasing host times ``ts``; returns the stacked states (T, *y0.shape)."""
        shape, dtype, device = y0.shape, y0.dtype, y0.device

        def rhs(t, y):
            with torch.no_grad():
                yt = torch.as_tensor(y, dtype=dtype, device=device).reshape(shape)
                return term(float(t), yt).reshape(-1).cpu().double().numpy()

        rt = rtol if isinstance(rtol, float) else np.asarray(torch.as_tensor(rtol).cpu()).reshape(-1)
        at = atol if isinstance(atol, float) else np.asarray(torch.as_tensor(atol).cpu()).reshape(-1)
        y0n = y0.detach().reshape(-1).cpu().double().numpy()
        if len(ts) == 1:
            out = y0n[None]
        else:
            sol = __import__("scipy.integrate", fromlist=["solve_ivp"]).solve_ivp(
                rhs, (ts[0], ts[-1]), y0n, method=self.solver, t_eval=ts, rtol=rt, atol=at
            )
            if sol.status != 0:
                raise SolverError(Status.STEP_UNDERFLOW, float(sol.t[-1]) if len(sol.t) else ts[0], sol.message)
            out = sol.y.T
        ys = torch.as_tensor(out, dtype=dtype, device=device).reshape(len(ts), *shape)
        needs = [x for x in (y0,) + tuple(grad_inputs) if isinstance(x, torch.Tensor) and x.requires_grad]
        if needs and torch.is_grad_enabled():
            ys = _NoGradient.apply(ys, *needs)
        return ys
