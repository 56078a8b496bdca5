"""Euler-Maruyama, the explicit order-0.5 strong (order 1 weak) scheme for Ito SDEs."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .._sde import SDEView
from .base import Extra, SDESolver


@dataclasses.dataclass(frozen=True)
class EulerMaruyama(SDESolver):
    """y1 = y + f(t0, y) h + g(t0, y) dW.

    Strong order 0.5 (1.0 for additive noise), weak order 1.0, for Ito SDEs of every noise type.

    Reference:
        P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992,
        section 10.2.
    """

    name = "euler"
    sde_types = ("ito",)

    def strong_order(self, noise_type: str) -> float:
        return 1.0 if noise_type == "additive" else 0.5

    def step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra
    ) -> tuple[torch.Tensor, Extra]:
        """One Euler-Maruyama step.

        Args:
            sde: the SDE; bm: the Brownian motion; t0, t1: step ends; y: state at t0; extra: unused.

        Returns:
            (y at t1, ()).
        """
        dw = bm(t0, t1)
        if sde.plain_g:
            f, g = sde.f_and_g(t0, y)
            return sde.increment(y, f, t1 - t0, g, dw), extra
        f, gdw = sde.f_and_g_prod(t0, y, dw)
        return sde.increment_prod(y, f, t1 - t0, gdw), extra
