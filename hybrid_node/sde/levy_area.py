"""Approximate Levy areas from a Brownian increment and its space-time Levy area (Davie, Foster).

For a d-dimensional Brownian motion on an interval of length h, with increment W, space-time Levy area
H = U / h - W / 2 (U = int (W(s) - W(ta)) ds) and Levy area A_ij = 1/2 int (W_i dW_j - W_j dW_i), the
conditional law of A given (W, H) has mean H_i W_j - W_i H_j and variance
h^2 / 20 + h (H_i^2 + H_j^2) / 5 (the variance follows by splitting each coordinate into its linear part,
its H part and an independent remainder whose integral vanishes). Averaged over H the variance is
h^2 / 12, which with the mean's variance h^2 / 6 gives Var A_ij = h^2 / 4.

- Davie: mean plus independent N(0, h^2 / 12) noise (the right variance on average).
- Foster: mean plus independent N(0, h^2 / 20 + h (H_i^2 + H_j^2) / 5) noise (the right conditional
  variance).

Both are exact in the first two moments of A; neither is A itself, so schemes that use them keep strong
order 0.5 for non-commutative noise but have weak order 1 in the Levy area terms.

References:
    A. M. Davie, "KMT theory applied to approximations of SDE", in Stochastic Analysis and Applications
    2014, Springer Proc. Math. Stat. 100.
    J. Foster, "Numerical approximations for stochastic differential equations", PhD thesis, University
    of Oxford, 2020, chapter 5; J. Foster, T. Lyons, H. Oberhauser, "An optimal polynomial approximation
    of Brownian motion", SIAM J. Numer. Anal. 58(3), 2020 (the space-time Levy area H).
"""

from __future__ import annotations

import torch


def conditional_mean(w: torch.Tensor, hh: torch.Tensor) -> torch.Tensor:
    """E[A | W, H] = H_i W_j - W_i H_j: the conditional mean of the Levy area.

    Args:
        w: the increment W, (*batch, m); hh: the space-time Levy area H, same shape.

    Returns:
        (*batch, m, m), antisymmetric.
    """
    return hh.unsqueeze(-1) * w.unsqueeze(-2) - w.unsqueeze(-1) * hh.unsqueeze(-2)


def approximate_levy_area(w: torch.Tensor, u: torch.Tensor, h: float, kind: str, z: torch.Tensor) -> torch.Tensor:
    """Davie's or Foster's approximation of the Levy area over one interval.

    Args:
        w: increment W over the interval, (*batch, m).
        u: U = int (W(s) - W(ta)) ds over it, same shape.
        h: the interval's length.
        kind: "davie" or "foster".
        z: standard normal draws of shape (*batch, m, m) (only the strict upper triangle is used, so the
            noise is antisymmetric like A).

    Returns:
        A of shape (*batch, m, m), antisymmetric; when there are no channel dimensions (w.ndim < 2: then the
        one dimension is the batch, as in torchsde, and a one-dimensional motion has no area) zeros of w's
        shape, torchsde's (``z`` is not read then).

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in ("davie", "foster"):
        raise ValueError(f"unknown Levy area approximation {kind!r}; choose 'davie' or 'foster'.")
    if w.ndim < 2:
        return torch.zeros_like(w)
    hh = u / h - 0.5 * w
    if kind == "davie":
        var = torch.full_like(z, h * h / 12)
    else:
        sq = hh * hh
        var = h * h / 20 + (h / 5) * (sq.unsqueeze(-1) + sq.unsqueeze(-2))
    noise = torch.triu(var.sqrt() * z, diagonal=1)
    return conditional_mean(w, hh) + noise - noise.transpose(-1, -2)
