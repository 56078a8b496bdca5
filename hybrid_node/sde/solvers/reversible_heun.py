"""The reversible Heun method: a Stratonovich solver whose steps can be inverted exactly in algebra."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .._kl import rate_from
from .._sde import SDEView
from .base import Extra, SDESolver


@dataclasses.dataclass(frozen=True)
class ReversibleHeun(SDESolver):
    """Reversible Heun: state (y, z, f(z), g(z)); z is an extrapolated copy of y.

    The extra state is the tuple ``(f(z), g(z), z)``, in torchsde's order, so an ``extra_solver_state``
    returned by either library continues a solve in the other.

    z1 = 2 y - z + f(z) h + g(z) dW;  y1 = y + (f(z) + f(z1)) h / 2 + (g(z) + g(z1)) dW / 2.

    One drift and one diffusion evaluation per step; strong order 0.5 (1.0 for additive noise) to the
    Stratonovich solution. Each step can be undone exactly (:func:`reverse_step`), which gives the exact
    adjoint of :mod:`hybrid_node.sde.reversible_adjoint`.

    Reference:
        P. Kidger, J. Foster, X. Li, T. Lyons, "Efficient and Accurate Gradients for Neural SDEs",
        NeurIPS 2021, section 3 (Algorithm 1).
    """

    name = "reversible_heun"
    sde_types = ("stratonovich",)
    needs_diffusion_matrix = True

    def strong_order(self, noise_type: str) -> float:
        return 1.0 if noise_type == "additive" else 0.5

    def init(self, sde: SDEView, t0: float, y0: torch.Tensor) -> Extra:
        f, g = sde.f_and_g(t0, y0)
        return (f, g, y0)

    def step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra
    ) -> tuple[torch.Tensor, Extra]:
        """One reversible Heun step; args and returns as :meth:`SDESolver.step`, extra = (f(z), g(z), z)."""
        return forward_step(sde, t0, t1, bm(t0, t1), y, extra)

    def logqp_step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra, carry: Any
    ) -> tuple[torch.Tensor, Extra, torch.Tensor, Any]:
        """One reversible Heun step and its KL increment h (r(t0, z0) + r(t1, z1)) / 2.

        A component k without diffusion steps as z_k1 = 2 k - z_k + r(z) h, k1 = k + (r(z) + r(z1)) h / 2,
        and r does not depend on k: the increment is the trapezoid of the rate at the extrapolated states
        z, which the step evaluates f and g at anyway. The rate at z1 is handed on as the next step's
        rate at z0, so each step evaluates the prior drift h once.

        Args:
            As :meth:`SDESolver.logqp_step`; carry: the rate at extra's z, or None to evaluate it.

        Returns:
            As :meth:`SDESolver.logqp_step`; the carry is the rate at z1.
        """
        f0, g0, z0 = extra
        r0 = rate_from(sde, t0, z0, f0, g0) if carry is None else carry
        y1, extra1 = forward_step(sde, t0, t1, bm(t0, t1), y, extra)
        f1, g1, z1 = extra1
        r1 = rate_from(sde, t1, z1, f1, g1)
        return y1, extra1, 0.5 * (t1 - t0) * (r0 + r1), r1


def forward_step(
    sde: SDEView, t0: float, t1: float, dw: torch.Tensor, y: torch.Tensor, extra: Extra
) -> tuple[torch.Tensor, Extra]:
    """The reversible Heun step with a given increment dW = W(t1) - W(t0).

    Args:
        sde: the SDE; t0, t1: step ends; dw: the increment; y: state; extra: (f(t0, z), g(t0, z), z).

    Returns:
        (y1, (f(t1, z1), g(t1, z1), z1)).
    """
    f0, g0, z = extra
    h = t1 - t0
    z1 = sde.increment(2 * y - z, f0, h, g0, dw)
    f1, g1 = sde.f_and_g(t1, z1)
    y1 = sde.increment(y, f0 + f1, h, g0 + g1, dw, 0.5)
    return y1, (f1, g1, z1)


def reverse_step(
    sde: SDEView, t0: float, t1: float, dw: torch.Tensor, y1: torch.Tensor, extra1: Extra
) -> tuple[torch.Tensor, Extra]:
    """Undo :func:`forward_step`: from the state at t1 recover the state at t0 (exact in exact arithmetic).

    Args:
        sde: the SDE; t0, t1: step ends; dw: W(t1) - W(t0); y1: state at t1; extra1: (f(t1, z1), g(t1, z1), z1).

    Returns:
        (y0, (f(t0, z0), g(t0, z0), z0)).
    """
    f1, g1, z1 = extra1
    h = t1 - t0
    z0 = 2 * y1 - z1 - f1 * h - sde.prod(g1, dw)
    f0, g0 = sde.f_and_g(t0, z0)
    y0 = y1 - 0.5 * ((f0 + f1) * h + sde.prod(g0 + g1, dw))
    return y0, (f0, g0, z0)
