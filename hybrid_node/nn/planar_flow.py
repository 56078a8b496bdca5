"""Discrete planar normalizing flow with K layers, the baseline of the CNF comparison.

Each layer is y = z + u_hat tanh(w^T z + b) with log|det dy/dz| = log|1 + u_hat^T (1 - tanh^2(w^T z + b)) w|
(Rezende & Mohamed 2015, "Variational inference with normalizing flows", Eq. 10-12). u_hat is u moved
along w so that w^T u_hat >= -1, which makes every layer invertible (their Appendix A.1):
u_hat = u + (m(w^T u) - w^T u) w / ||w||^2 with m(a) = -1 + softplus(a).

For density estimation the layers run in the normalising direction, data x -> base z, so
log p(x) = log N(z) + sum_k log|det_k| is exact. Sampling inverts each layer: along w the map is the
strictly increasing scalar equation w^T y = a + (w^T u_hat) tanh(a + b) in a = w^T z, whose root lies
within |w^T u_hat| of w^T y and is found by bisection; the rest is z = y - u_hat tanh(a + b).
Chen et al. 2018 (Section 4.1) compare a CNF with M hidden units against this flow with K = M layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ._checks import check_dtype, no_single_forward, nonfinite_rows

__all__ = ["PlanarFlow"]


class PlanarFlow(nn.Module):
    """K planar layers mapping data to a N(0, sigma^2 I) base density.

    Args:
        dim: data dimension D.
        n_layers: number of layers K.
        base_std: standard deviation of the base density.
        init_scale: standard deviation of the initial u and w.

    Raises:
        ValueError: non-positive sizes or a ``base_std`` that is not a finite positive number.
    """

    def __init__(self, dim: int, n_layers: int, base_std: float = 1.0, init_scale: float = 0.1):
        super().__init__()
        for name, value in (("dim", dim), ("n_layers", n_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        # inf would make every log-density -inf and every sample inf
        if isinstance(base_std, bool) or not (base_std > 0 and math.isfinite(base_std)):
            raise ValueError(f"base_std must be a finite positive number, got {base_std}.")
        self.dim = dim
        self.n_layers = n_layers
        self.base_std = float(base_std)
        self.u = nn.Parameter(init_scale * torch.randn(n_layers, dim))
        self.w = nn.Parameter(init_scale * torch.randn(n_layers, dim))
        self.b = nn.Parameter(torch.zeros(n_layers))

    def forward(self, *args, **kwargs):
        """Refused: the flow has several entry points (:meth:`log_prob`, :meth:`to_base`, :meth:`from_base`,
        :meth:`sample`), so ``flow(x)`` or ``torch.compile(flow)(x)`` would be ambiguous.

        Raises:
            NotImplementedError: always, naming those methods and how to compile one.
        """
        raise no_single_forward(self, ("log_prob", "to_base", "from_base", "sample"))

    def _u_hat(self) -> torch.Tensor:
        wu = (self.w * self.u).sum(-1, keepdim=True)
        w_sq = self.w.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)
        return self.u + (-1.0 + F.softplus(wu) - wu) * self.w / w_sq

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, sigma^2 I) per row."""
        var = self.base_std**2
        return -0.5 * z.pow(2).sum(-1) / var - 0.5 * self.dim * math.log(2 * math.pi * var)

    def to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map data to base points.

        Args:
            x: data, shape (B, D).

        Returns:
            (z, log_det) with log_det = sum_k log|det dz_k/dz_{k-1}|, shapes (B, D) and (B,).

        Raises:
            ValueError: ``x`` has the wrong shape or non-finite values.
            TypeError: ``x`` is not a floating-point tensor.
        """
        self._check(x, "x")
        u_hat = self._u_hat()
        z, log_det = x, x.new_zeros(x.shape[0])
        for k in range(self.n_layers):  # layers are sequential by nature
            h = torch.tanh(z @ self.w[k] + self.b[k])
            det = 1 + (1 - h * h) * (u_hat[k] @ self.w[k])
            log_det = log_det + det.abs().clamp_min(1e-12).log()
            z = z + h[:, None] * u_hat[k]
        return z, log_det

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of ``x`` (B, D), shape (B,)."""
        z, log_det = self.to_base(x)
        return self.base_log_prob(z) + log_det

    def from_base(self, z: torch.Tensor, n_bisection: int = 60) -> torch.Tensor:
        """Invert the flow: base points (B, D) to data (B, D), each layer by bisection along w_k.

        Differentiable: the gradients with respect to ``z`` and the parameters are those of the exact
        inverse (the implicit function theorem at each layer's root), so :meth:`sample` can be trained
        through.

        Args:
            z: base points, shape (B, D).
            n_bisection: bisection steps per layer; 60 halve the initial bracket of width 2 |w^T u_hat|
                below float64 resolution.

        Returns:
            Data points, shape (B, D).

        Raises:
            ValueError: ``z`` has the wrong shape or non-finite values, or ``n_bisection`` is not a
                positive int.
        """
        self._check(z, "z")
        # with no step the midpoint of the first bracket, y @ w, would be returned as the root
        if isinstance(n_bisection, bool) or not isinstance(n_bisection, int) or n_bisection <= 0:
            raise ValueError(f"n_bisection must be a positive int, got {n_bisection!r}.")
        u_hat = self._u_hat()
        y = z
        for k in reversed(range(self.n_layers)):
            w, b, uk = self.w[k], self.b[k], u_hat[k]
            wy, wu = y @ w, uk @ w
            with torch.no_grad():  # the comparisons of bisection carry no derivative
                lo, hi = wy - wu.abs() - 1e-6, wy + wu.abs() + 1e-6
                for _ in range(n_bisection):
                    mid = 0.5 * (lo + hi)
                    too_high = mid + wu * torch.tanh(mid + b) > wy
                    hi = torch.where(too_high, mid, hi)
                    lo = torch.where(too_high, lo, mid)
                a = 0.5 * (lo + hi)
            # The root a of F(a) = a + wu tanh(a + b) - wy = 0 depends on (wy, wu, b) through the
            # implicit function theorem, da = -dF / F'(a). A Newton step -F / F' has that derivative at
            # the root; adding it minus its own value keeps the bisection's value exactly.
            h = torch.tanh(a + b)
            step = -(a + wu * h - wy) / (1 + wu * (1 - h * h))
            a = a + (step - step.detach())
            y = y - torch.tanh(a + b)[:, None] * uk
        return y

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples, shape (n, D)."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}.")
        z = self.base_std * torch.randn(n, self.dim, dtype=self.u.dtype, device=self.u.device, generator=generator)
        return self.from_base(z)

    def _check(self, x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Expected a tensor of shape (batch, {self.dim}), got {shape}.")
        if not x.is_floating_point():  # torch would only name a dtype clash inside a matrix product
            raise TypeError(f"Expected a floating-point tensor, got {x.dtype}.")
        check_dtype(self, x, name)  # a float64 x on a float32 flow: torch's "addmv input tensors" error
        # A NaN or infinite row came back as a NaN log-density or sample without a word, and one such
        # row makes a training loss NaN (the CNF refuses them with the same message).
        shown = nonfinite_rows(x)
        if shown is not None:
            raise ValueError(f"The points contain NaN or infinite values ({shown}).")
