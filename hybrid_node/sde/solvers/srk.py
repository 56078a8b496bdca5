"""Stochastic Runge-Kutta methods of strong order 1.5 for Ito SDEs with additive, scalar or diagonal noise."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from .._kl import logqp_rate, stage
from .._sde import SDEView
from .base import StagedKLSolver

# Roessler's SRA1 tableau (two stages): drift nodes c0, diffusion nodes c1, stage coupling A0, B0 and
# weights alpha, beta1, beta2 (Roessler 2010, Table 5.1).
_SRA1_C0 = (0.0, 0.75)
_SRA1_C1 = (1.0, 0.0)
_SRA1_A0_21 = 0.75
_SRA1_B0_21 = 1.5
_SRA1_ALPHA = (1.0 / 3.0, 2.0 / 3.0)
_SRA1_BETA1 = (1.0, 0.0)
_SRA1_BETA2 = (-1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class SRK(StagedKLSolver):
    """Strong order 1.5 stochastic Runge-Kutta for Ito SDEs; needs the space-time Levy area U.

    Additive noise: Roessler's SRA1, two drift and two diffusion evaluations per step.

    Scalar and diagonal noise: the drift part is SRA1's second stage, which for diagonal noise perturbs
    each component by its own b_i I_(i,0) and so reproduces the cross term sum_i (df/dy_i) b_i I_(i,0);
    the diffusion part is the derivative-free order-1.5 scheme of Kloeden & Platen (eq. 11.2.1), whose
    finite differences decouple by component because b_i depends on y_i only. Two drift and five
    diffusion evaluations per step.

    Reference:
        A. Roessler, "Runge-Kutta methods for the strong approximation of solutions of stochastic
        differential equations", SIAM J. Numer. Anal. 48(3), 2010 (SRA1).
        P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992,
        section 11.2 (explicit order 1.5 strong schemes) and section 10.4 (the Ito-Taylor scheme they match).
    """

    name = "srk"
    sde_types = ("ito",)
    noise_types = ("additive", "scalar", "diagonal")
    needs_levy_area = True

    def strong_order(self, noise_type: str) -> float:
        return 1.5

    def advance(self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, kl: bool):
        """One SRK step (bm: a Brownian motion with a space-time Levy area); the mean KL rate is SRA1's
        drift quadrature r0 / 3 + 2 r1 / 3, r0 the rate at (t0, y) and r1 at the second drift stage,
        which is what both schemes do to a component without diffusion (its diffusion terms vanish); as
        :meth:`StagedKLSolver.advance`."""
        h = t1 - t0
        dw, du = bm(t0, t1, return_U=True)  # du = I_(1,0) = int (W - W(t0)) ds
        stages = self._additive if sde.noise_type == "additive" else self._diagonal
        y1, (r0, r1) = stages(sde, t0, h, y, dw, du, kl)
        return y1, (_SRA1_ALPHA[0] * r0 + _SRA1_ALPHA[1] * r1 if kl else None)

    @staticmethod
    def _additive(sde: SDEView, t0: float, h: float, y, dw, du, kl: bool = False):
        t_stage = t0 + _SRA1_C0[1] * h
        with stage(sde, t0, y, kl):  # C0[0] = C1[1] = 0: f0 and g_b are the rate's f and g at (t0, y)
            f0 = sde.f(t0 + _SRA1_C0[0] * h, y)
            g_a = sde.g(t0 + _SRA1_C1[0] * h, y)  # additive noise: g does not depend on y
            g_b = sde.g(t0 + _SRA1_C1[1] * h, y)
            r0 = logqp_rate(sde, t0, y) if kl else None
        y_stage = y + _SRA1_A0_21 * f0 * h + _SRA1_B0_21 * sde.prod(g_a, du / h)
        with stage(sde, t_stage, y_stage, kl):
            f1 = sde.f(t_stage, y_stage)
            r1 = logqp_rate(sde, t_stage, y_stage) if kl else None
        drift = (_SRA1_ALPHA[0] * f0 + _SRA1_ALPHA[1] * f1) * h
        noise = sde.prod(g_a, _SRA1_BETA1[0] * dw + _SRA1_BETA2[0] * du / h)
        noise = noise + sde.prod(g_b, _SRA1_BETA1[1] * dw + _SRA1_BETA2[1] * du / h)
        return y + drift + noise, (r0, r1)

    @staticmethod
    def _diagonal(sde: SDEView, t0: float, h: float, y, dw, du, kl: bool = False):
        t1 = t0 + h
        sqrt_h = math.sqrt(h)

        def b(t: float, x: torch.Tensor) -> torch.Tensor:
            g = sde.g(t, x)
            return g if sde.noise_type == "diagonal" else g[..., 0]

        with stage(sde, t0, y, kl):
            f0 = sde.f(t0, y)
            b0 = b(t0, y)
            r0 = logqp_rate(sde, t0, y) if kl else None
        t_stage = t0 + _SRA1_C0[1] * h
        y_stage = y + _SRA1_A0_21 * f0 * h + _SRA1_B0_21 * b0 * (du / h)
        with stage(sde, t_stage, y_stage, kl):
            f1 = sde.f(t_stage, y_stage)
            r1 = logqp_rate(sde, t_stage, y_stage) if kl else None
        drift = (_SRA1_ALPHA[0] * f0 + _SRA1_ALPHA[1] * f1) * h
        # Supporting values y +- b sqrt(h) (at t1, so that the second difference also carries db/dt).
        y_plus, y_minus = y + f0 * h + b0 * sqrt_h, y + f0 * h - b0 * sqrt_h
        b_plus, b_minus = b(t1, y_plus), b(t1, y_minus)
        phi_plus, phi_minus = b(t1, y_plus + b_plus * sqrt_h), b(t1, y_plus - b_plus * sqrt_h)
        i11 = dw * dw - h  # 2 I_(1,1)
        i01 = dw * h - du  # I_(0,1)
        i111 = (dw * dw / 3 - h) * dw  # 2 I_(1,1,1)
        y1 = (
            y
            + drift
            + b0 * dw
            + (b_plus - b_minus) * (i11 / (4 * sqrt_h))
            + (b_plus - 2 * b0 + b_minus) * (i01 / (2 * h))
            + (phi_plus - phi_minus - b_plus + b_minus) * (i111 / (4 * h))
        )
        return y1, (r0, r1)
