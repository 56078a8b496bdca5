"""Augmented Neural ODEs: solve in a space with extra zero-initialised dimensions.

The flow of an ODE is a homeomorphism, so a plain Neural ODE cannot change the topology of its input
(it cannot map -1 to 1 and 1 to -1 in one dimension, nor separate concentric spheres). Appending
``augment_dim`` zeros to the state lifts the trajectories into a space where they can pass each other.

Reference: Dupont, Doucet, Teh, "Augmented Neural ODEs", NeurIPS 2019.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import positive_int
from .ode_block import BlockCounters, ODEBlock, SolveSettings


def augment(x: torch.Tensor, augment_dim: int, dim: int = 1) -> torch.Tensor:
    """Append ``augment_dim`` zeros to ``x`` along ``dim`` (features of (N, D), channels of (N, C, H, W)).

    Args:
        x: the input tensor.
        augment_dim: number of zero features or channels to append (0 returns ``x``).
        dim: the dimension to extend.

    Returns:
        A tensor whose size along ``dim`` is larger by ``augment_dim``.

    Raises:
        TypeError: ``augment_dim`` is not an int (a bool or float).
        ValueError: if ``augment_dim`` is negative or ``dim`` is out of range.
    """
    positive_int("augment_dim", augment_dim, minimum=0)
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for a tensor with {x.dim()} dimensions.")
    if augment_dim == 0:
        return x
    shape = list(x.shape)
    shape[dim] = augment_dim
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class AugmentedNeuralODE(BlockCounters, nn.Module):
    """An :class:`ODEBlock` whose initial state is the input with ``augment_dim`` zeros appended.

    Args:
        func: vector field on the augmented state (size along ``dim`` = input size + ``augment_dim``).
        augment_dim: number of appended zero dimensions (Dupont et al. use 1 to 10; 5 in their toy tasks).
        dim: the feature/channel dimension to augment (1 for (N, D) and (N, C, H, W) inputs).
        t: integration interval or output times, as for :class:`ODEBlock`.
        train_settings, eval_settings, return_trajectory: as for :class:`ODEBlock`.

    The output keeps the augmented dimensions (a readout layer usually follows); the wrapped block is
    ``self.block`` and exposes ``nfe_forward`` / ``nfe_backward``.

    Reference: Dupont, Doucet, Teh, "Augmented Neural ODEs", NeurIPS 2019.
    """

    def __init__(
        self,
        func: nn.Module,
        augment_dim: int,
        *,
        dim: int = 1,
        t: Sequence[float] | torch.Tensor = (0.0, 1.0),
        train_settings: SolveSettings | None = None,
        eval_settings: SolveSettings | None = None,
        return_trajectory: bool = False,
    ):
        super().__init__()
        positive_int("augment_dim", augment_dim, minimum=0)
        self.augment_dim = augment_dim
        self.dim = dim
        self.block = ODEBlock(
            func, t, train_settings=train_settings, eval_settings=eval_settings, return_trajectory=return_trajectory
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Augment ``x`` and solve; returns the augmented final state (or trajectory)."""
        return self.block(augment(x, self.augment_dim, self.dim), t)
