"""Two-stage Stratonovich schemes: Euler-Heun, Heun and the midpoint method."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .._kl import logqp_rate, stage
from .._sde import SDEView
from .base import Extra, SDESolver


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
class Heun(_TwoStage):
    """Heun's method: a full Euler predictor, then the trapezoidal average of drift and diffusion.

    Converges to the Stratonovich solution: strong order 0.5 (1.0 for diagonal, scalar, additive noise).

    Reference:
        P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992,
        section 11.1 (eq. 11.1.10, the Stratonovich version of the trapezoidal/Heun scheme).
    """

    name = "heun"

    def step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra
    ) -> tuple[torch.Tensor, Extra]:
        """One Heun step; args and returns as :meth:`SDESolver.step`."""
        return self._heun(sde, bm, t0, t1, y, False)[0], extra

    def logqp_step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra, carry: Any
    ) -> tuple[torch.Tensor, Extra, torch.Tensor, Any]:
        """One Heun step; the KL increment is the trapezoid h (r(t0, y) + r(t1, y_bar)) / 2, y_bar the
        predictor (what the step does to a component without diffusion); as :meth:`SDESolver.logqp_step`."""
        y1, r0, r1 = self._heun(sde, bm, t0, t1, y, True)
        return y1, extra, 0.5 * (t1 - t0) * (r0 + r1), None

    @staticmethod
    def _heun(sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, kl: bool):
        """(y1, the KL rate at the start, at the predictor), the rates None unless ``kl``."""
        h = t1 - t0
        dw = bm(t0, t1)
        with stage(sde, t0, y, kl):
            f0, gdw0 = sde.f_and_g_prod(t0, y, dw)
            r0 = logqp_rate(sde, t0, y) if kl else None
        y_bar = y + f0 * h + gdw0
        with stage(sde, t1, y_bar, kl):
            f1, gdw1 = sde.f_and_g_prod(t1, y_bar, dw)
            r1 = logqp_rate(sde, t1, y_bar) if kl else None
        return y + 0.5 * ((f0 + f1) * h + gdw0 + gdw1), r0, r1


@dataclasses.dataclass(frozen=True)
class Midpoint(_TwoStage):
    """The stochastic midpoint method: a half Euler step, then a full step with the midpoint's fields.

    Converges to the Stratonovich solution: strong order 0.5 (1.0 for diagonal, scalar, additive noise).

    Reference:
        P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992,
        section 11.1; E. Platen, "An introduction to numerical methods for SDEs", Acta Numerica 1999.
    """

    name = "midpoint"

    def step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra
    ) -> tuple[torch.Tensor, Extra]:
        """One midpoint step; args and returns as :meth:`SDESolver.step`."""
        return self._midpoint(sde, bm, t0, t1, y, False)[0], extra

    def logqp_step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra, carry: Any
    ) -> tuple[torch.Tensor, Extra, torch.Tensor, Any]:
        """One midpoint step; the KL increment is h r(t_mid, y_mid) at the midpoint stage (what the step
        does to a component without diffusion); as :meth:`SDESolver.logqp_step`."""
        y1, rate = self._midpoint(sde, bm, t0, t1, y, True)
        return y1, extra, (t1 - t0) * rate, None

    @staticmethod
    def _midpoint(sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, kl: bool):
        """(y1, the KL rate at the midpoint stage or None unless ``kl``)."""
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
