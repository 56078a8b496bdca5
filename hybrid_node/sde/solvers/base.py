"""What every SDE solver declares and does: a frozen settings object with ``init``, ``step`` and ``logqp_step``.

A solver never keeps per-solve state on ``self``: ``init`` returns the extra state a method carries
between steps (empty for one-step methods) and ``step`` returns the new state and extra state.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch

from .._kl import logqp_rate
from .._sde import SDEView

Extra = tuple[torch.Tensor, ...]


@dataclasses.dataclass(frozen=True)
class SDESolver(abc.ABC):
    """Base of the SDE solvers.

    Class attributes:
        name: the method name (as in torchsde).
        sde_types: the SDE interpretations the method converges for.
        noise_types: the noise types it supports.
        needs_levy_area: whether steps need U = int (W - W(t0)) du (a "space-time" Brownian interval).
        needs_full_levy_area: whether steps need the Levy area A too (a "davie" or "foster" one).
        needs_diffusion_matrix: whether g(t, y) itself is needed (g_prod alone is not enough).
    """

    name: ClassVar[str] = ""
    sde_types: ClassVar[tuple[str, ...]] = ("ito", "stratonovich")
    noise_types: ClassVar[tuple[str, ...]] = ("diagonal", "additive", "scalar", "general")
    needs_levy_area: ClassVar[bool] = False
    needs_full_levy_area: ClassVar[bool] = False
    needs_diffusion_matrix: ClassVar[bool] = False

    @abc.abstractmethod
    def strong_order(self, noise_type: str) -> float:
        """The strong order of convergence for this noise type."""

    def init(self, sde: SDEView, t0: float, y0: torch.Tensor) -> Extra:
        """The extra state carried between steps (empty for one-step methods)."""
        return ()

    @abc.abstractmethod
    def step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra
    ) -> tuple[torch.Tensor, Extra]:
        """One step from (t0, y) to t1 on the Brownian path ``bm``; returns (y1, extra1)."""

    def logqp_step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra, carry: Any
    ) -> tuple[torch.Tensor, Extra, torch.Tensor, Any]:
        """One step and the increment of the KL integral of ``logqp`` over it.

        The KL term is what the method would do to one more state component dk = rate(t, y) dt with no
        diffusion (torchsde's augmented state), so it converges at the method's own order. This default is
        the left-point rule, rate(t0, y) h, which Euler-Maruyama, Milstein and Euler-Heun apply to a
        component without diffusion; the rate shares the step's f and g at (t0, y).

        Args:
            sde: the SDE (with a prior drift h); bm: the Brownian motion; t0, t1: step ends; y: state at t0;
            extra: the solver's extra state; carry: what the previous step handed on (None at the start or
                for methods that hand nothing on).

        Returns:
            (y1, extra1, the KL increment (batch,), the carry for the next step).

        Reference:
            X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud, "Scalable Gradients for Stochastic
            Differential Equations", AISTATS 2020, section 5 (the KL term as an extra state).
        """
        with sde.reusing(t0, y):
            rate = logqp_rate(sde, t0, y)
            y1, extra1 = self.step(sde, bm, t0, t1, y, extra)
        return y1, extra1, rate * (t1 - t0), None


@dataclasses.dataclass(frozen=True)
class StagedKLSolver(SDESolver):
    """Base of the one-step methods that integrate ``logqp``'s KL rate with their own stages.

    A subclass writes one :meth:`advance`, which takes the step and, when asked, the KL rate averaged by
    the method's own quadrature over its stages; ``step`` and ``logqp_step`` are both that call.
    """

    @abc.abstractmethod
    def advance(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, kl: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step and the mean KL rate over it.

        Args:
            sde, bm, t0, t1, y: as :meth:`SDESolver.step`.
            kl: whether to evaluate the KL rate at the stages (each stage's f and g shared with it).

        Returns:
            (y1, the method's quadrature of the KL rate over the step divided by its length, or None
            unless ``kl``): what the step does to one more component dk = rate dt without diffusion.
        """

    def step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra
    ) -> tuple[torch.Tensor, Extra]:
        """One step; args and returns as :meth:`SDESolver.step`."""
        return self.advance(sde, bm, t0, t1, y, False)[0], extra

    def logqp_step(
        self, sde: SDEView, bm: Any, t0: float, t1: float, y: torch.Tensor, extra: Extra, carry: Any
    ) -> tuple[torch.Tensor, Extra, torch.Tensor, Any]:
        """One step and its KL increment h * :meth:`advance`'s mean rate; as :meth:`SDESolver.logqp_step`."""
        y1, rate = self.advance(sde, bm, t0, t1, y, True)
        assert rate is not None  # advance evaluates the rate when kl is True
        return y1, extra, (t1 - t0) * rate, None
