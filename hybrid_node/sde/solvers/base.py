"""What every SDE solver declares and does: a frozen settings object with ``init`` and ``step``.

A solver never keeps per-solve state on ``self``: ``init`` returns the extra state a method carries
between steps (empty for one-step methods) and ``step`` returns the new state and extra state.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch

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
