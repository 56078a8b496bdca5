"""Dense output inside one accepted step: y(t0 + theta * dt) for theta in [0, 1]."""
from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import torch


def linear_combination(y, scale: float, coeffs: Sequence[float], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return ``y + scale * sum_i coeffs[i] * ks[i]`` (just the sum when ``y`` is None), skipping zeros.

    Used by every stage and output formula; written with in-place accumulation on a fresh tensor so
    that a step costs one kernel per nonzero coefficient.
    """
    acc = None
    for c, k in zip(coeffs, ks):
        if c == 0.0:
            continue
        if acc is None:
            acc = k * (scale * c)
        else:
            acc.add_(k, alpha=scale * c)
    if y is None:
        return acc if acc is not None else torch.zeros_like(ks[0])
    return y if acc is None else y + acc


@dataclasses.dataclass
class PolynomialInterpolant:
    """The Runge-Kutta pair's own continuous extension: y0 + dt * sum_i b_i(theta) k_i.

    ``coeffs[i][p]`` is the coefficient of theta^(p+1) in b_i(theta).
    """

    y0: torch.Tensor
    ks: Tuple[torch.Tensor, ...]
    dt: float
    coeffs: Tuple[Tuple[float, ...], ...]

    def __call__(self, theta: float) -> torch.Tensor:
        weights = [sum(c * theta ** (p + 1) for p, c in enumerate(row)) for row in self.coeffs]
        return linear_combination(self.y0, self.dt, weights, self.ks)


@dataclasses.dataclass
class HermiteInterpolant:
    """Cubic Hermite interpolation from the end values and derivatives of a step (third order).

    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.6.
    """

    y0: torch.Tensor
    y1: torch.Tensor
    f0: torch.Tensor
    f1: torch.Tensor
    dt: float

    def __call__(self, theta: float) -> torch.Tensor:
        h00 = (1 + 2 * theta) * (1 - theta) ** 2
        h10 = theta * (1 - theta) ** 2
        h01 = theta**2 * (3 - 2 * theta)
        h11 = theta**2 * (theta - 1)
        return self.y0 * h00 + self.y1 * h01 + self.f0 * (h10 * self.dt) + self.f1 * (h11 * self.dt)


@dataclasses.dataclass
class LinearInterpolant:
    """Linear interpolation between the ends of a step (the fixed-grid default, as in torchdiffeq)."""

    y0: torch.Tensor
    y1: torch.Tensor

    def __call__(self, theta: float) -> torch.Tensor:
        return torch.lerp(self.y0, self.y1, theta)
