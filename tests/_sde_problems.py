"""SDEs with known solutions and small neural SDEs shared by the SDE tests."""

from __future__ import annotations

import torch


class GBM(torch.nn.Module):
    """Geometric Brownian motion dy = mu y dt + sigma y dW (diagonal noise), Ito or Stratonovich."""

    noise_type = "diagonal"

    def __init__(self, sde_type: str = "ito", mu: float = 0.5, sigma: float = 0.8):
        super().__init__()
        self.sde_type = sde_type
        self.mu = torch.nn.Parameter(torch.tensor(mu, dtype=torch.float64))
        self.sigma = torch.nn.Parameter(torch.tensor(sigma, dtype=torch.float64))

    def f(self, t, y):
        return self.mu * y

    def g(self, t, y):
        return self.sigma * y

    def exact(self, y0: torch.Tensor, t: float, w: torch.Tensor) -> torch.Tensor:
        """The solution at time t given W(t) - W(0) = w."""
        drift = self.mu - 0.5 * self.sigma**2 if self.sde_type == "ito" else self.mu
        return y0 * torch.exp(drift * t + self.sigma * w)


class Decay(torch.nn.Module):
    """dy = -y dt + 0.1 y dW (diagonal noise, Ito) without parameters, so in any state's dtype."""

    noise_type = "diagonal"
    sde_type = "ito"

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return 0.1 * y


class ScalarGBM(GBM):
    """GBM written with scalar noise: g of shape (batch, d, 1)."""

    noise_type = "scalar"

    def g(self, t, y):
        return (self.sigma * y).unsqueeze(-1)


class OU(torch.nn.Module):
    """Ornstein-Uhlenbeck dy = -theta y dt + sigma dW (additive noise)."""

    noise_type = "additive"
    sde_type = "ito"

    def __init__(self, theta: float = 1.0, sigma: float = 0.8):
        super().__init__()
        self.theta, self.sigma = theta, sigma

    def f(self, t, y):
        return -self.theta * y

    def g(self, t, y):
        return torch.full((*y.shape, 1), self.sigma, dtype=y.dtype)


class NeuralSDE(torch.nn.Module):
    """A small neural SDE with a time-dependent drift and a diagonal or general diffusion."""

    def __init__(self, noise_type: str = "diagonal", sde_type: str = "stratonovich", d: int = 3, m: int = 2):
        super().__init__()
        self.noise_type, self.sde_type, self.d, self.m = noise_type, sde_type, d, m
        self.drift = torch.nn.Linear(d, d)
        self.scale = torch.nn.Parameter(0.3 * torch.randn(d))
        self.mix = torch.nn.Linear(d, d * m)

    def f(self, t, y):
        return torch.tanh(self.drift(y)) * torch.cos(t)

    def g(self, t, y):
        if self.noise_type == "diagonal":
            return torch.sigmoid(self.scale * y) + 0.1 * t  # g_i depends on y_i only
        return torch.sigmoid(self.mix(y)).view(-1, self.d, self.m)


class Heisenberg:
    """dx1 = dW1, dx2 = dW2, dx3 = x1 o dW2 - x2 o dW1 (Stratonovich, general non-commutative noise).

    From x = 0, x3(T) = 2 A_12(0, T), twice the Levy area of (W1, W2), whose characteristic function gives
    E[cos x3(T)] = 1 / cosh(T) (P. Levy, 1951)."""

    noise_type = "general"
    sde_type = "stratonovich"

    def f(self, t, y):
        return torch.zeros_like(y)

    def g(self, t, y):
        one, zero = torch.ones_like(y[:, 0]), torch.zeros_like(y[:, 0])
        rows = [torch.stack([one, zero], -1), torch.stack([zero, one], -1), torch.stack([-y[:, 1], y[:, 0]], -1)]
        return torch.stack(rows, 1)


def fine_grid_levy_area(bm, h: float, cells: int) -> torch.Tensor:
    """A_01 over [0, h] from the path on a fine grid: sum of W(t_k) x dW_k, antisymmetrised.

    It misses the areas inside the cells, a variance deficit of h^2 / (4 cells)."""
    area = 0.0
    for k in range(cells):
        a, b = k * h / cells, (k + 1) * h / cells
        w_a = bm(a) if k else 0.0 * bm(0.0, b)
        dw = bm(a, b)
        area = area + 0.5 * (w_a[:, 0] * dw[:, 1] - w_a[:, 1] * dw[:, 0])
    return area
