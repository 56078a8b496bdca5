"""The log-ODE midpoint method: a Stratonovich scheme that uses an (approximate) Levy area."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..._autocast import full_precision
from .._kl import logqp_rate, stage
from .._sde import SDEView
from .base import StagedKLSolver


def bracket_term(sde: SDEView, t, y: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """sum_{j,k} (dg_k/dy g_j)(y) A_jk: the Lie brackets of the diffusion columns against the Levy area.

    Only the antisymmetric part of the iterated integrals enters (the symmetric part, W W^T / 2, is what
    the midpoint stage already reproduces), so this is zero unless the noise is general. The m
    Jacobian-vector products sum_k (dg_k/dy) v_k with v_k = sum_j g_j A_jk are taken at once: the state
    is repeated m times, block k is pushed along v_k, and one Jacobian-vector product (a double vector-
    Jacobian product) of the repeated diffusion is read off column k of block k. The graph is kept when
    gradients are on, so direct backprop sees the term.

    Args:
        sde: the SDE (general noise); t: time; y: state (batch, d); area: A of shape (batch, m, m).

    Returns:
        (batch, d).
    """
    create = torch.is_grad_enabled()
    batch, d = y.shape
    m = area.shape[-1]
    with torch.enable_grad():
        yy = y if y.requires_grad else y.detach().requires_grad_(True)
        g = sde.g(t, yy)  # (batch, d, m)
        with full_precision(g.device.type):  # the library's product: not in autocast's lower dtype
            v = torch.bmm(g, area)  # column k: sum_j g_j A_jk
        reps = yy.repeat(m, 1)  # block k (rows k*batch ... (k+1)*batch - 1) is a copy of y for column k
        g_rep = sde.g(t, reps).view(m, batch, d, m)
        if not g_rep.requires_grad:  # g does not depend on y: no brackets
            return torch.zeros_like(y)
        cols = g_rep.diagonal(dim1=0, dim2=3)  # (batch, d, m): [:, :, k] = column k of g at block k's copy
        probe = torch.zeros_like(cols, requires_grad=True)
        (vjp,) = torch.autograd.grad(cols, reps, probe, create_graph=True, allow_unused=True)
        if vjp is None:
            return torch.zeros_like(y)
        tangent = v.permute(2, 0, 1).reshape(m * batch, d)  # block k's direction: v_k
        (jvp,) = torch.autograd.grad(vjp, probe, tangent, create_graph=create)
    return jvp.sum(-1)


@dataclasses.dataclass(frozen=True)
class LogODEMidpoint(StagedKLSolver):
    """Log-ODE midpoint method: the midpoint method plus the Levy-area (Lie bracket) term.

    Over a step the SDE is replaced by the ODE driven by the log-signature (W, A) of the Brownian path
    truncated at depth 2; that ODE is solved by one explicit midpoint step:
    y' = y + f(t0, y) h / 2 + g(t0, y) W / 2;  y1 = y + f(t', y') h + g(t', y') W + sum (dg_k g_j)(y') A_jk.
    With an exact Levy area this is strong order 1 for every noise type; with Davie's or Foster's
    approximation (which match the first two moments of A, not A itself) it is strong order 0.5 for
    general noise and 1 for commutative noise, and weak order 1.

    Reference:
        J. Foster, "Numerical approximations for stochastic differential equations", PhD thesis,
        University of Oxford, 2020 (log-ODE methods with Levy area approximations); T. Lyons, "Rough paths,
        signatures and the modelling of functions on streams", ICM 2014 (the log-ODE method).
    """

    name = "log_ode"
    sde_types = ("stratonovich",)
    needs_levy_area = True
    needs_diffusion_matrix = True
    needs_full_levy_area = True

    def strong_order(self, noise_type: str) -> float:
        return 0.5 if noise_type == "general" else 1.0

    def advance(self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, kl: bool):
        """One log-ODE midpoint step (bm must give areas); the mean KL rate is r(t_mid, y_mid), as the
        midpoint method's (a component without diffusion has no bracket term); as
        :meth:`StagedKLSolver.advance`."""
        h = t1 - t0
        dw, area = bm(t0, t1, return_A=True)
        f, gw = sde.f_and_g_prod(t0, y, dw)
        t_mid = t0 + 0.5 * h
        y_mid = y + 0.5 * (f * h + gw)
        with stage(sde, t_mid, y_mid, kl):
            f_mid, gw_mid = sde.f_and_g_prod(t_mid, y_mid, dw)
            rate = logqp_rate(sde, t_mid, y_mid) if kl else None
        y1 = y + f_mid * h + gw_mid
        if sde.noise_type == "general":
            y1 = y1 + bracket_term(sde, t_mid, y_mid, area)
        return y1, rate
