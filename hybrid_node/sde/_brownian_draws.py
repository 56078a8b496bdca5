"""The seeded draws of a :class:`~hybrid_node.sde.brownian.BrownianInterval`, shared by its grid and its knots.

Every draw is seeded by the entropy and what it is drawn for (a knot's time, a grid chunk's index, a Levy
area's interval), never by how many draws came before, so that two objects with one entropy agree wherever
they were queried in the same way and a value dropped from memory is re-drawn bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK = (1 << 63) - 1

# A knot's value as stored: W, and K = int_{t0}^{s} W(u) du with a Levy area (None without one).
_Value = tuple[torch.Tensor, torch.Tensor | None]


def _seed(entropy: int, t: float) -> int:
    # The draw of a knot depends only on the entropy and the knot's time (not on how many draws came
    # before), so two objects with one entropy agree wherever they were queried in the same way.
    return hash((entropy, float(t))) & _MASK


@dataclass
class _Sampling:
    """What the draws of a Brownian interval are made of, shared by its grid and its knots.

    Attributes:
        size, dtype, device: of W.
        kdtype: of K(s) = int_{t0}^{s} W(u) du (float64 whatever the dtype, see the interval).
        levy: whether K is sampled (a Levy area approximation other than "none").
        entropy: the seed.
        gen: the generator every draw is seeded on.
    """

    size: torch.Size
    dtype: torch.dtype
    device: torch.device
    kdtype: torch.dtype
    levy: bool
    entropy: int
    gen: torch.Generator

    def zeros(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Zeros of the size, in ``dtype`` (default: that of W)."""
        return torch.zeros(self.size, dtype=self.dtype if dtype is None else dtype, device=self.device)

    def randn(self, t: float, n: int = 1) -> torch.Tensor:
        """Standard normals of the size (n of them stacked when n > 1), seeded by (entropy, t)."""
        self.gen.manual_seed(_seed(self.entropy, t))
        shape = self.size if n == 1 else (n, *self.size)
        return torch.randn(shape, generator=self.gen, dtype=self.dtype, device=self.device)

    def pair(self, w: torch.Tensor, k: torch.Tensor | None = None) -> _Value:
        """A knot value as stored: (W, K), K in ``kdtype`` (zeros if not given), or (W, None) without a Levy area."""
        if not self.levy:
            return w, None
        return w, self.zeros(self.kdtype) if k is None else k.to(self.kdtype)
