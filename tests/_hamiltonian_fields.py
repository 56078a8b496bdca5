"""Separable Hamiltonian test fields on a tuple state (q, p), returning (dq/dt, dp/dt)."""

from __future__ import annotations

import torch


def pendulum(t, y):
    """H = p^2 / 2 - cos q."""
    q, p = y
    return p, -torch.sin(q)


def oscillator(t, y):
    """H = (p^2 + q^2) / 2."""
    q, p = y
    return p, -q
