"""Vector fields for continuous normalizing flows; each is called as ``field(t, z)`` with a scalar time
tensor ``t`` and a batch ``z`` of shape (B, D), and returns (B, D).

- :class:`PlanarCNFField`: the planar CNF of Chen et al. 2018 (Section 4, "Using multiple hidden units"):
  f(z, t) = sum_m sigma(g_m(t)) u_m(t) tanh(w_m(t)^T z + b_m(t)), M hidden units whose parameters come
  from a small hypernetwork of t, with a learned gate sigma(g_m(t)) in (0, 1) deciding when unit m acts.
- :class:`TimeMLPField`: the multilayer perceptron of FFJORD's toy experiments (Grathwohl et al. 2019,
  Section 5.1): hidden layers of width 64 with t concatenated to the input of every layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["PlanarCNFField", "TimeMLPField"]

_ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}.")
    return value


def _time_column(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=z.dtype, device=z.device).reshape(1, 1).expand(z.shape[0], 1)


class PlanarCNFField(nn.Module):
    """Gated planar CNF dynamics with M hidden units (Chen et al. 2018, Section 4).

    Args:
        dim: data dimension D.
        width: number of hidden units M (a CNF with M units is compared with a planar NF of M layers).
        hyper_hidden: width of the hypernetwork t -> (w, u, b, g).
        gated: multiply each unit by sigmoid(g_m(t)); False gives the plain sum of M units.

    Raises:
        TypeError / ValueError: non-positive or non-integer sizes.
    """

    def __init__(self, dim: int, width: int, hyper_hidden: int = 32, gated: bool = True):
        super().__init__()
        self.dim = _positive_int("dim", dim)
        self.width = _positive_int("width", width)
        self.gated = bool(gated)
        hyper_hidden = _positive_int("hyper_hidden", hyper_hidden)
        self.hyper = nn.Sequential(
            nn.Linear(1, hyper_hidden),
            nn.Tanh(),
            nn.Linear(hyper_hidden, hyper_hidden),
            nn.Tanh(),
            nn.Linear(hyper_hidden, width * (2 * dim + 2)),
        )

    def unit_parameters(self, t: torch.Tensor, like: torch.Tensor):
        """Hypernetwork output at time ``t``: w (M, D), u (M, D), b (M,), gate (M,) in (0, 1]."""
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device).reshape(1, 1)
        p = self.hyper(t).reshape(self.width, 2 * self.dim + 2)
        w, u = p[:, : self.dim], p[:, self.dim : 2 * self.dim]
        b, g = p[:, 2 * self.dim], p[:, 2 * self.dim + 1]
        gate = torch.sigmoid(g) if self.gated else torch.ones_like(g)
        return w, u, b, gate

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        w, u, b, gate = self.unit_parameters(t, z)
        return (torch.tanh(z @ w.T + b) * gate) @ u

    def divergence(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Closed-form tr(df/dz) = sum_m gate_m (1 - tanh^2(w_m^T z + b_m)) u_m^T w_m, shape (B,)."""
        w, u, b, gate = self.unit_parameters(t, z)
        h = torch.tanh(z @ w.T + b)
        return ((1 - h * h) * gate) @ (u * w).sum(-1)


class TimeMLPField(nn.Module):
    """MLP vector field with time input (FFJORD's toy architecture, Grathwohl et al. 2019).

    Args:
        dim: data dimension D.
        hidden: widths of the hidden layers, default (64, 64, 64).
        activation: "tanh", "softplus" or "elu".
        time_every_layer: concatenate t to the input of every layer (FFJORD's "concat" layers); False
            feeds [t, z] to the first layer only.

    Raises:
        TypeError / ValueError: bad sizes or unknown activation.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        activation: str = "tanh",
        time_every_layer: bool = True,
    ):
        super().__init__()
        self.dim = _positive_int("dim", dim)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}.")
        hidden = [_positive_int("hidden width", h) for h in hidden]
        if not hidden:
            raise ValueError("hidden must list at least one layer width.")
        self.time_every_layer = bool(time_every_layer)
        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList()
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            extra = 1 if (i == 0 or self.time_every_layer) else 0
            self.layers.append(nn.Linear(n_in + extra, n_out))
        self.act = _ACTIVATIONS[activation]()

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        tc = _time_column(t, z)
        h = z
        for i, layer in enumerate(self.layers):
            if i == 0 or self.time_every_layer:
                h = torch.cat([tc, h], dim=1)
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h
