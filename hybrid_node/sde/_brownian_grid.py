"""The ``dt`` grid of a :class:`~hybrid_node.sde.brownian.BrownianInterval`: its cells drawn chunk by chunk.

The cells of the grid t0, t0 + dt, ... (laid out by repeated addition, as sdeint's steps) are drawn in chunks
of ``chunk_cells`` cells, one ``randn`` per chunk seeded by (entropy, chunk index), so that a chunk dropped
from memory is re-created bit for bit; only the last ``_CHUNKS_KEPT`` chunks used are held (a fixed-step
solve reads its cells in order, an adjoint's backward solve in reverse order). Knot values on the grid are
W(chunk start) plus the chunk's partial sums, the chunk starts kept once found.

:class:`_Grid` is owned by the Brownian interval (composition): it needs only the interval's ends, its
sample shape and precision, the seed and the snap tolerance, all given when it is built, and calls back
into nothing.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ._brownian_draws import _MASK, _Sampling, _Value
from ._loop import time_tolerance

# Grid chunks: about this many sampled numbers per chunk (1 MB of float32), between the cell bounds below;
# a 16 x 64 noise gets 256 cells per chunk. A query of a cell whose chunk was dropped re-draws the whole
# chunk (1-6 ms at this size on one CPU core; 4x that with 2**20 numbers), while sequential reads pay the
# same per cell whatever the size. Two chunks are enough for a solve that crosses a chunk boundary in
# either direction; a third spares a re-draw when a query jumps back one chunk.
_CHUNK_NUMBERS = 2**18
_CHUNK_CELLS = (64, 4096)
_CHUNKS_KEPT = 3


@dataclass
class _Chunk:
    """Cells [first, first + m) of a ``dt`` grid: their times, draws and (once asked for) knot values.

    Attributes:
        times: the m + 1 knot times of the chunk (its last one is the next chunk's first).
        index: knot time -> position in ``times``.
        dw: (m, *size) increments of the cells.
        du: (m, *size) integrals int (W - W(s_k)) du over the cells (space-time Levy area only).
        w, k: (m + 1, *size) knot values W and K (None until a query off the cells needs them).
    """

    times: list[float]
    index: dict[float, int]
    dw: torch.Tensor
    du: torch.Tensor | None
    w: torch.Tensor | None = None
    k: torch.Tensor | None = None


class _Grid:
    """The chunked cells of a ``dt`` grid on [t0, t1] (none until :meth:`lay_out` is called).

    Args:
        t0, t1: the interval.
        eps: the snap tolerance (a time this close to a grid time is that time).
        sampling: the shape, precision and seed of the draws.
    """

    def __init__(self, t0: float, t1: float, eps: float, sampling: _Sampling):
        self.t0, self.t1, self.eps, self.s = t0, t1, eps, sampling
        self.n = 0  # cells of the grid (0: no grid)
        self.dt = 0.0
        self.chunk_t: list[float] = []  # first time of each chunk
        numel = max(1, math.prod(sampling.size))
        self.chunk_cells = min(max(_CHUNK_NUMBERS // numel, _CHUNK_CELLS[0]), _CHUNK_CELLS[1])
        self.chunks: OrderedDict[int, _Chunk] = OrderedDict()  # least recently used first
        self.starts: list[_Value] = []  # (W, K) at each chunk's start
        self.materialised = False  # whether any knot value of the grid was summed

    def lay_out(self, dt: float) -> None:
        """Lay out the grid t0, t0 + dt, ... (by repeated addition, as sdeint's steps), ending at t1.

        Only the first time of every chunk is kept: a chunk's times are re-created by the same repeated
        additions from it, so they are bit for bit the solver's step times.

        Raises:
            ValueError: dt too small to advance the times (the loop would never end).
        """
        # The last cell ends where sdeint's loop ends its last step: a step that would stop this close to t1
        # is stretched to t1 there (hybrid_node.sde._loop), so the cells stay the solver's steps.
        merge = time_tolerance(self.t0, self.t1)
        far = max(abs(self.t0), abs(self.t1))
        if far + dt == far:  # the loop below would never end
            raise ValueError(
                f"the grid hint dt={dt} does not advance a time near {far:g}, where floats are {math.ulp(far):g} "
                "apart; shift the times to start near 0 or take a larger dt."
            )
        t, n, c = self.t0, 1, self.chunk_cells
        self.chunk_t = [t]
        while t + dt < self.t1 - merge:  # n cells so far end at t + dt (or at t1)
            t += dt
            if n % c == 0:
                self.chunk_t.append(t)
            n += 1
        self.n, self.dt = n, dt

    def draw_chunk(self, j: int) -> _Chunk:
        """Create chunk j of the grid from its seed (the same values every time).

        The normal draws of a chunk are seeded by (entropy, chunk index) only, and its times come from
        the same repeated additions as the layout, so a chunk dropped from the cache is re-created exactly.
        """
        s = self.s
        first = j * self.chunk_cells
        m = min(self.chunk_cells, self.n - first)
        times = [self.chunk_t[j]]
        for _ in range(m):
            times.append(times[-1] + self.dt)
        if first + m == self.n:
            times[-1] = self.t1  # the last step is stretched to t1
        hs = self.cell_lengths(times, s.dtype)
        s.gen.manual_seed(hash((s.entropy, j, -2)) & _MASK)  # 3-tuple: apart from knot and area seeds
        shape = (2 * m if s.levy else m, *s.size)
        z = torch.randn(shape, generator=s.gen, dtype=s.dtype, device=s.device)
        dw = hs.sqrt() * z[:m]
        # The integral of (W - W(s_k)) over cell k, drawn jointly with the cell's increment.
        du = hs * (0.5 * dw + (hs / 12).sqrt() * z[m:]) if s.levy else None
        return _Chunk(times, {t: i for i, t in enumerate(times)}, dw, du)

    def cell_lengths(self, times: list[float], dtype: torch.dtype) -> torch.Tensor:
        """The lengths of the cells between consecutive ``times`` (differences taken in Python floats), shaped
        (cells, 1, ...) to broadcast against draws of the size."""
        hs = torch.tensor([b - a for a, b in zip(times[:-1], times[1:])], dtype=dtype, device=self.s.device)
        return hs.reshape(-1, *([1] * len(self.s.size)))

    def chunk(self, j: int) -> _Chunk:
        """Chunk j, from the cache or re-created; keeps at most ``_CHUNKS_KEPT`` chunks."""
        chunk = self.chunks.get(j)
        if chunk is not None:
            self.chunks.move_to_end(j)
            return chunk
        chunk = self.draw_chunk(j)
        self.chunks[j] = chunk
        while len(self.chunks) > _CHUNKS_KEPT:
            self.chunks.popitem(last=False)
        return chunk

    def cells_held(self) -> int:
        """How many cells' draws are held in memory now (bounded by the chunk cache)."""
        return sum(len(c.dw) for c in self.chunks.values())

    def sum_chunk(self, chunk: _Chunk, w0: torch.Tensor, k0: torch.Tensor | None) -> None:
        """Fill the chunk's knot values from W and K at its start.

        W(s_{i+1}) = W(s_i) + dW_i and K(s_{i+1}) = K(s_i) + h_i W(s_i) + int_{s_i}^{s_{i+1}} (W - W(s_i)) du,
        as cumulative sums (K in float64, see ``_Sampling.kdtype``)."""
        self.materialised = True
        chunk.w = torch.cat([w0.unsqueeze(0), w0 + chunk.dw.cumsum(0)])
        if chunk.du is not None and k0 is not None:
            hs = self.cell_lengths(chunk.times, self.s.kdtype)
            steps = chunk.du.to(self.s.kdtype) + hs * chunk.w[:-1].to(self.s.kdtype)
            chunk.k = torch.cat([k0.unsqueeze(0), k0 + steps.cumsum(0)])

    def chunk_knots(self, j: int) -> _Chunk:
        """Chunk j with its knot values, summing the chunks before it first if their sums are not known.

        A chunk's start (W, K) is the previous chunk's last knot value, so every grid knot has one value
        whichever chunk it is read from and whatever the order of the queries."""
        if not self.starts:
            self.starts.append((self.s.zeros(), self.s.zeros(self.s.kdtype) if self.s.levy else None))
        while len(self.starts) <= j:  # the chunks before j, in order (each once)
            i = len(self.starts) - 1
            chunk = self.chunks.get(i) or self.draw_chunk(i)
            if chunk.w is None:
                self.sum_chunk(chunk, *self.starts[i])
            assert chunk.w is not None
            # Copies: a view of the last knot would keep the whole chunk's knot values alive.
            self.starts.append((chunk.w[-1].clone(), None if chunk.k is None else chunk.k[-1].clone()))
        chunk = self.chunk(j)
        if chunk.w is None:
            self.sum_chunk(chunk, *self.starts[j])
        return chunk

    def knot(self, loc: tuple[int, int]) -> tuple[float, _Value]:
        """The time and value (W, K) of the grid knot at (chunk, position) ``loc`` (from :meth:`locate`)."""
        chunk = self.chunk_knots(loc[0])
        assert chunk.w is not None
        return chunk.times[loc[1]], (chunk.w[loc[1]], None if chunk.k is None else chunk.k[loc[1]])

    def locate(self, t: float) -> tuple[int, int] | None:
        """(chunk, position) of the grid knot within the snap tolerance of t, or None."""
        j, times, i = self.search(t)
        for p in (i - 1, i):
            if 0 <= p < len(times) and abs(times[p] - t) <= self.eps:
                if p == len(times) - 1 and j + 1 < len(self.chunk_t):
                    return j + 1, 0  # a chunk's end is read as the next chunk's start (one value)
                return j, p
        return None

    def neighbours(self, t: float) -> tuple[float, float]:
        """The grid times just below and above a time t that is no grid time."""
        _, times, i = self.search(t)
        return times[i - 1], times[i]

    def search(self, t: float) -> tuple[int, list[float], int]:
        """The chunk whose span holds time t (the first or the last one for a time beyond the grid's ends),
        its knot times, and the position where t would be inserted among them (``bisect_left``)."""
        j = min(max(bisect.bisect_right(self.chunk_t, t) - 1, 0), len(self.chunk_t) - 1)
        times = self.chunk(j).times
        return j, times, bisect.bisect_left(times, t)

    def cell(self, ta: float, tb: float) -> tuple[_Chunk, int] | None:
        """(chunk, cell) when [ta, tb] is exactly one cell of the grid, else None."""
        j = bisect.bisect_right(self.chunk_t, ta) - 1
        if j < 0:
            return None
        chunk = self.chunk(j)
        i = chunk.index.get(ta)
        if i is None or i + 1 >= len(chunk.times) or chunk.times[i + 1] != tb:
            return None
        return chunk, i
