"""Shared fields of the event tests: a falling ball (with its analytic impact times and its bounce), a decay
and a seeded MLP field (stiff or not)."""

from __future__ import annotations

import math

import torch

import hybrid_node as hn

G = 9.81


def fall(t, y):
    """Free fall of a batch of balls: y[:, 0] height, y[:, 1] velocity."""
    return torch.stack([y[:, 1], torch.full_like(y[:, 1], -G)], 1)


def bounce(e):
    """The jump at an impact: the balls that hit the ground (``fired``) reverse their velocity, times ``e``."""

    def on_event(t, y, fired):
        return torch.stack([y[:, 0], torch.where(fired, -e * y[:, 1], y[:, 1])], 1)

    return on_event


def ground(e, **kwargs) -> hn.Event:
    """The impact of :func:`fall`: the height crosses zero downwards and the ball bounces with restitution
    ``e``; ``kwargs`` are further :class:`~hybrid_node.Event` settings."""
    return hn.Event(lambda t, y: y[:, 0], direction=-1, on_event=bounce(e), **kwargs)


def impacts(h: float, e: float, n: int) -> list[float]:
    """The first ``n`` impact times of a ball dropped from rest at height ``h`` with restitution ``e``."""
    out = [math.sqrt(2 * h / G)]
    v = math.sqrt(2 * G * h)
    for _ in range(n - 1):
        v *= e
        out.append(out[-1] + 2 * v / G)
    return out


class Decay(torch.nn.Module):
    """y' = -theta y with a learnable theta."""

    def __init__(self, theta: float):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(theta))

    def forward(self, t, y):
        return -self.theta * y


class CountingBall(torch.nn.Module):
    """:func:`fall` with a learnable g: y = (height, speed), y' = (speed, -g); counts its calls and the rows
    they evaluate (a whole-batch call per fired sample shows as more rows)."""

    def __init__(self, g: float = G):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(g))
        self.calls = 0
        self.rows = 0

    def forward(self, t, y):
        self.calls += 1
        self.rows += y.shape[0]
        return torch.stack([y[:, 1], -self.g * torch.ones_like(y[:, 1])], 1)


class SeededMlp(torch.nn.Module):
    """y' = (1, 0) + 0.5 tanh-MLP(y) - (0, stiffness y_2), 2-16-2, with the same seeded weights in every
    test: a nonlinear field whose dense outputs are not exact. ``stiffness`` (e.g. 200, ~100x the rate of
    the first coordinate's motion) makes the second coordinate decay fast; 0 leaves the term out. Counts
    its calls and the rows they evaluate (a whole-batch call per fired sample shows as more rows)."""

    def __init__(self, dtype: torch.dtype = torch.float64, stiffness: float = 0.0):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.w1 = torch.nn.Parameter(torch.randn(2, 16, generator=gen, dtype=dtype) / 2**0.5)
        self.w2 = torch.nn.Parameter(torch.randn(16, 2, generator=gen, dtype=dtype) / 4.0)
        self.drift = torch.tensor([1.0, 0.0], dtype=dtype)
        self.stiffness = stiffness
        self.calls = 0
        self.rows = 0

    def forward(self, t, y):
        self.calls += 1
        self.rows += y.shape[0]
        out = self.drift + 0.5 * torch.tanh(y @ self.w1) @ self.w2
        if self.stiffness:
            out = out - torch.nn.functional.pad(self.stiffness * y[:, 1:], (1, 0))
        return out
