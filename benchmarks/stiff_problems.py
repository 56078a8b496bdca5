"""Stiff test problems in torch, written once for the stiff benchmarks and the tests that solve them.

Each right-hand side works on a state of shape (..., D), so that a batch of initial states is solved in one
call. Nothing here is solved and nothing is patched: importing this module has no side effect (the
benchmark ``stiff.py`` counts LU factorisations by wrapping the solvers' ``factorize`` when imported).

References:
    E. Hairer, G. Wanner, "Solving Ordinary Differential Equations II: Stiff and Differential-Algebraic
    Problems", 2nd ed., Springer 1996, section IV.10 (Robertson's reaction, Van der Pol, HIRES).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: HIRES's initial state (Hairer & Wanner 1996, IV.10)
HIRES_Y0 = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057]


def robertson(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Robertson's chemical reaction (rate constants 0.04, 3e7, 1e4): three species, stiffness ratio ~1e11."""
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2], -1)


def van_der_pol(mu: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The Van der Pol oscillator y'' = mu (1 - y^2) y' - y as a first-order system (y, y'); stiff for large mu.

    Args:
        mu: the damping parameter.

    Returns:
        The right-hand side f(t, y).
    """

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[..., 1], mu * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)

    return f


def hires(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """HIRES: eight reactions of plant physiology (light-induced growth), from ``HIRES_Y0`` to t = 321.8122."""
    y1, y2, y3, y4, y5, y6, y7, y8 = y.unbind(-1)
    return torch.stack(
        [
            -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
            1.71 * y1 - 8.75 * y2,
            -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
            8.32 * y2 + 1.71 * y3 - 1.12 * y4,
            -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
            -280.0 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
            280.0 * y6 * y8 - 1.81 * y7,
            -280.0 * y6 * y8 + 1.81 * y7,
        ],
        -1,
    )
