"""Two-stage Stratonovich schemes: Euler-Heun, Heun and the midpoint method."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .._kl import logqp_rate, stage
from .._sde import SDEView
from .base import Extra, SDESolver, StagedKLSolver


@dataclasses.dataclass(frozen=True)
class _TwoStage(SDESolver):
    """What the three schemes share: they converge to the Stratonovich solution, at strong order 0.5
    for general noise and 1.0 for commuting (diagonal, scalar, additive) noise, where the Levy areas
    they leave out vanish.

    Reference:
        P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992,
        section 11.1 (the order 1 schemes need commutative noise, section 10.3).
    """

    sde_types = ("stratonovich",)

    def strong_order(self, noise_type: str) -> float:
        return 0.5 if noise_type == "general" else 1.0


@dataclasses.dataclass(frozen=True)
class EulerHeun(_TwoStage):
    """Euler-Heun: y_bar = y + g(t0, y) dW; y1 = y + f(t0, y) h + (g(t0, y) + g(t1, y_bar)) dW / 2.

    The corrector's diffusion is taken at t1 (torchsde's choice, so a time-dependent g gives the same
    steps in both libraries): the time-dependence of g is then averaged over the step by the trapezoidal
    rule, as the Stratonovich integral asks.

    Converges to the Stratonovich solution: strong order 0.5 (1.0 for diagonal, scalar, additive noise).

    Reference:
        P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992,
        section 11.1; R. Gaines, T. Lyons, "Variable step size control in the numerical solution of
        stochastic differential equations", SIAM J. Appl. Math. 1997.
    """

    name = "euler_heun"

    def step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra
    ) -> tuple[torch.Tensor, Extra]:
        """One Euler-Heun step; args and returns as :meth:`SDESolver.step`."""
        dw = bm(t0, t1)
        f, gdw = sde.f_and_g_prod(t0, y, dw)
        gdw_bar = sde.g_prod(t1, y + gdw, dw)
        return y + f * (t1 - t0) + 0.5 * (gdw + gdw_bar), extra


@dataclasses.dataclass(frozen=True)
class Heun(_TwoStage, StagedKLSolver):
    """Heun's method: a full Euler predictor, then the trapezoidal average of drift and diffusion.

    Converges to the Stratonovich solution: strong order 0.5 (1.0 for diagonal, scalar, additive noise).

    Reference:
        P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992,
        section 11.1 (eq. 11.1.10, the Stratonovich version of the trapezoidal/Heun scheme).
    """

    name = "heun"

    def advance(self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, kl: bool):
        """One Heun step; the mean KL rate is the trapezoid (r(t0, y) + r(t1, y_bar)) / 2, y_bar the
        predictor; as :meth:`StagedKLSolver.advance`."""
        h = t1 - t0
        dw = bm(t0, t1)
        with stage(sde, t0, y, kl):
            f0, gdw0 = sde.f_and_g_prod(t0, y, dw)
            r0 = logqp_rate(sde, t0, y) if kl else None
        y_bar = y + f0 * h + gdw0
        with stage(sde, t1, y_bar, kl):
            f1, gdw1 = sde.f_and_g_prod(t1, y_bar, dw)
            r1 = logqp_rate(sde, t1, y_bar) if kl else None
        # 0.5 is exact, so h * this mean is the trapezoid h (r0 + r1) / 2 bit for bit
        rate = 0.5 * (r0 + r1) if r0 is not None and r1 is not None else None
        return y + 0.5 * ((f0 + f1) * h + gdw0 + gdw1), rate


@dataclasses.dataclass(frozen=True)
class Midpoint(_TwoStage, StagedKLSolver):
    """The stochastic midpoint method: a half Euler step, then a full step with the midpoint's fields.

    Converges to the Stratonovich solution: strong order 0.5 (1.0 for diagonal, scalar, additive noise).

    Reference:
        P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992,
        section 11.1; E. Platen, "An introduction to numerical methods for SDEs", Acta Numerica 1999.
    """

    name = "midpoint"

    def advance(self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, kl: bool):
        """One midpoint step; the mean KL rate is r(t_mid, y_mid) at the midpoint stage; as
        :meth:`StagedKLSolver.advance`."""
        h = t1 - t0
        t_mid = t0 + 0.5 * h
        dw = bm(t0, t1)
        if sde.plain_g:
            f0, g0 = sde.f_and_g(t0, y)
            y_mid = sde.increment(y, f0, h, g0, dw, 0.5)
            with stage(sde, t_mid, y_mid, kl):
                f1, g1 = sde.f_and_g(t_mid, y_mid)
                rate = logqp_rate(sde, t_mid, y_mid) if kl else None
            return sde.increment(y, f1, h, g1, dw), rate
        f0, gdw0 = sde.f_and_g_prod(t0, y, dw)
        y_mid = sde.increment_prod(y, f0, h, gdw0, 0.5)
        with stage(sde, t_mid, y_mid, kl):
            f1, gdw1 = sde.f_and_g_prod(t_mid, y_mid, dw)
            rate = logqp_rate(sde, t_mid, y_mid) if kl else None
        return sde.increment_prod(y, f1, h, gdw1), rate
