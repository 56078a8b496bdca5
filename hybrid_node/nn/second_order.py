"""Second-order Neural ODEs: learn an acceleration ``d²x/dt² = a(t, x, dx/dt)``.

The second-order system is solved as the first-order one on the state ``[x, v]`` (concatenated along
the feature dimension): ``dx/dt = v``, ``dv/dt = a(t, x, v)``. Physical systems driven by forces are
naturally of this form; the structure is a constrained augmentation with the velocity as the extra
dimensions.

Reference: Norcliffe, Bodnar, Day, Simidjievski, Liò, "On Second Order Behaviour in Augmented
Neural ODEs", NeurIPS 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .ode_block import BlockCounters, ODEBlock, SolveSettings, refuse_hidden_parameters


class SecondOrderDynamics(nn.Module):
    """Turns an acceleration ``a(t, x, v)`` into the first-order field ``f(t, [x, v]) = [v, a(t, x, v)]``.

    Args:
        acceleration: module called as ``acceleration(t, x, v)`` returning a tensor shaped like ``x``.
        dim: the dimension along which position and velocity are concatenated.

    Raises:
        TypeError: ``acceleration`` is not callable or ``dim`` is not an int.
    """

    def __init__(self, acceleration: nn.Module, dim: int = 1):
        super().__init__()
        if not callable(acceleration):
            raise TypeError(f"acceleration must be callable as a(t, x, v), got {type(acceleration).__name__}.")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int (the dimension holding position then velocity), got {dim!r}.")
        self.acceleration = acceleration
        self.dim = dim

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if z.shape[self.dim] % 2:
            raise ValueError(
                f"the state must hold position and velocity (even size along dim {self.dim}), "
                f"got shape {tuple(z.shape)}."
            )
        x, v = z.chunk(2, dim=self.dim)
        a = self.acceleration(t, x, v)
        if a.shape != x.shape:
            raise ValueError(f"acceleration returned shape {tuple(a.shape)}, expected {tuple(x.shape)}.")
        return torch.cat([v, a], dim=self.dim)


class SecondOrderNeuralODE(BlockCounters, nn.Module):
    """Solve ``x'' = a(t, x, x')`` from ``x(t0) = x0`` and ``x'(t0) = v0``.

    Args:
        acceleration: module called as ``acceleration(t, x, v)``.
        initial_velocity: module mapping ``x0`` to ``v0`` when ``v0`` is not given to ``forward``; None
            means ``v0 = 0``.
        dim: the feature dimension (1 for (N, D) and (N, C, H, W) states).
        t: integration interval or output times, as for :class:`ODEBlock`.
        train_settings, eval_settings, return_trajectory: as for :class:`ODEBlock`.
        return_velocity: return ``(x, v)`` instead of ``x`` alone.

    Raises:
        ValueError: ``acceleration`` is not an ``nn.Module`` and a setting uses an adjoint sensitivity
            (whose gradients of the callable's tensors would be lost).

    Reference: Norcliffe et al., "On Second Order Behaviour in Augmented Neural ODEs", NeurIPS 2020.
    """

    def __init__(
        self,
        acceleration: nn.Module,
        *,
        initial_velocity: nn.Module | None = None,
        dim: int = 1,
        t: Sequence[float] | torch.Tensor = (0.0, 1.0),
        train_settings: SolveSettings | None = None,
        eval_settings: SolveSettings | None = None,
        return_trajectory: bool = False,
        return_velocity: bool = False,
    ):
        super().__init__()
        # The block's field is the SecondOrderDynamics module, whose parameters are only those of an
        # acceleration module: a plain callable's tensors would be unknown to an adjoint.
        for settings in (train_settings, eval_settings):
            if settings is not None:
                refuse_hidden_parameters(acceleration, settings, "SecondOrderNeuralODE's acceleration")
        self.initial_velocity = initial_velocity
        self.dim = dim
        self.return_velocity = bool(return_velocity)
        self.block = ODEBlock(
            SecondOrderDynamics(acceleration, dim),
            t,
            train_settings=train_settings,
            eval_settings=eval_settings,
            return_trajectory=return_trajectory,
        )

    def forward(self, x0: torch.Tensor, v0: torch.Tensor | None = None, t: torch.Tensor | None = None):
        """Solve from position ``x0`` and velocity ``v0``.

        Returns:
            The position (shaped like ``x0``, or (len(t), *x0.shape) for trajectories), or the pair
            ``(position, velocity)`` if ``return_velocity``.

        Raises:
            ValueError: ``x0`` has no dimension ``dim`` (e.g. a single unbatched state with ``dim=1``),
                ``v0`` is not shaped like ``x0``, or a plain-callable acceleration under an adjoint.
        """
        if not -x0.dim() <= self.dim < x0.dim():
            raise ValueError(
                f"x0 of shape {tuple(x0.shape)} has no dimension {self.dim} to hold position and velocity side "
                f"by side; pass a batch, e.g. x0.unsqueeze(0) of shape {(1, *x0.shape)}, or build the model "
                "with dim=-1."
            )
        dynamics = self.block.func
        if isinstance(dynamics, SecondOrderDynamics):
            refuse_hidden_parameters(dynamics.acceleration, self.block.settings, "SecondOrderNeuralODE's acceleration")
        if v0 is None:
            v0 = self.initial_velocity(x0) if self.initial_velocity is not None else torch.zeros_like(x0)
        if v0.shape != x0.shape:
            raise ValueError(f"v0 must have the shape of x0 {tuple(x0.shape)}, got {tuple(v0.shape)}.")
        z = self.block(torch.cat([x0, v0], dim=self.dim), t)
        dim = self.dim if not self.block.return_trajectory or self.dim < 0 else self.dim + 1
        x, v = z.chunk(2, dim=dim)
        return (x, v) if self.return_velocity else x
