"""Brownian motion that can be queried at any time, in any order, with consistent increments.

A :class:`BrownianInterval` holds a sorted set of *knots* t0 = s_0 < s_1 < ... < s_K = t1 with the sampled
values W(s_k) (and, when a space-time Levy area is asked for, K(s_k) = int_{t0}^{s_k} W(u) du). A query
at a time that is not a knot inserts one, drawn from the Brownian bridge between its two neighbours
(Revuz & Yor 1999, ch. I.3), so every later query sees the same path: increments over adjacent intervals
add up, repeated and out-of-order queries return the same values, and the backward pass of an adjoint
sees exactly the noise of the forward pass. With a ``dt`` hint the cells of the grid t0 + k dt are drawn
chunk by chunk from seeds, a bounded number of chunks held (``_brownian_grid``).

Knot values off the grid are held in an LRU cache of ``cache_size`` entries (as torchsde's), besides
the pinned values at t0 and t1: one (size) tensor per knot, two with a Levy area (K is kept in float64,
see ``_kdtype``). Every knot is drawn from the bridge between two parent knots with a draw seeded by
(entropy, knot time), so an evicted value is re-derived bit for bit from its parents, themselves
re-derived as far as evicted (``_knot_cache``). On the halfway tree a knot's parents are the ends of its
dyadic parent cell, so the path is a function of the entropy alone; elsewhere they are its neighbours
when it was inserted, remembered as two floats per knot, and the path is a function of the entropy and
the sequence of queries, whatever the cache evicts. Dyadic knots inserted ahead of the queries
(``_scaffold``) keep those chains of parents short.

The parts live in private modules, each owned by the interval as an object (composition): the seeded
draws (``_brownian_draws._Sampling``), the ``dt`` grid (``_brownian_grid._Grid``) and the knot store with
its bridge (``_knot_cache._KnotCache``). Inserting knots off the grid (neighbours, the dyadic scaffold, the
halfway tree) stays here: it reads the grid and the store together.

References:
    P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992,
    section 10.4 (the joint law of (Delta W, int W du) used for the space-time Levy area).
    J. T. Wilson et al., "Efficiently sampling functions from Gaussian process posteriors", ICML 2020
    (pathwise conditioning, used to bridge W and its time integral jointly).
    P. Kidger, J. Foster, X. Li, T. Lyons, "Efficient and Accurate Gradients for Neural SDEs", NeurIPS
    2021, section 4 (the Brownian Interval: exact, query-order-independent noise for adjoints).
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from ._brownian_draws import _MASK, _Sampling, _Value
from ._brownian_grid import _Grid
from ._knot_cache import _CACHE_BYTES, _CHAIN, _auto_cache_size, _KnotCache, _spacing
from ._knot_cache import _bridge_coefficients as _bridge_coefficients  # re-exported: tests check the weights
from ._knot_cache import _bridge_value as _bridge_draw
from .levy_area import approximate_levy_area

LEVY_AREA_APPROXIMATIONS = ("none", "space-time", "davie", "foster")


def _check_conditions(size: Any, dtype: Any, device: Any, entropy: Any, W: Any, H: Any) -> None:
    """Refuse a size, dtype, seed or conditioning value the samples cannot be drawn with.

    Raises:
        TypeError: a size that is no sequence of ints (an int failed with "'int' object is not iterable"),
            a dtype that is not floating (torch's '"normal_kernel_cpu" not implemented for 'Long''), an
            entropy that is no int ("invalid literal for int()"), a W or H that is no tensor.
        ValueError: a negative size, the meta device (torch's "META device type not an accelerator"), a W
            or H with NaN or infinite values (the whole path came out NaN).
    """
    if size is not None:
        if not isinstance(size, (tuple, list, torch.Size)) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in size
        ):
            raise TypeError(f"size must be a tuple of ints such as (batch, noise), got {size!r}.")
        if any(n < 0 for n in size):
            raise ValueError(f"size must hold non-negative sizes, got {tuple(size)}.")
    if device is not None and torch.device(device).type == "meta":
        raise ValueError("device is the meta device, which holds no values to sample; use 'cpu' or 'cuda'.")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch dtype such as torch.float64, got {dtype!r}.")
    if entropy is not None and (isinstance(entropy, bool) or not isinstance(entropy, numbers.Integral)):
        raise TypeError(f"entropy must be an int seed, got {type(entropy).__name__} {entropy!r}.")
    for name, value in (("W", W), ("H", H)):
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}.")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or infinite values; the Brownian motion is conditioned on it.")


def _check_start(w0: Any) -> None:
    """Refuse a start value ``w0`` of a BrownianPath or BrownianTree that is no finite floating tensor.

    Raises:
        TypeError: ``w0`` is no tensor (a list failed with "'list' object has no attribute 'shape'").
        ValueError: ``w0`` holds NaN or infinite values (every value of the path was NaN).
    """
    if not isinstance(w0, torch.Tensor):
        raise TypeError(
            f"w0 must be a tensor (the start value; its shape, dtype and device are the path's), got "
            f"{type(w0).__name__}."
        )
    if w0.is_floating_point() and not bool(torch.isfinite(w0).all()):
        raise ValueError("w0 contains NaN or infinite values; give a finite start value (e.g. torch.zeros(size)).")


class BrownianInterval:
    """Brownian motion W on [t0, t1] with W(t0) = 0, sampled lazily and exactly.

    The arguments are torchsde's, in torchsde's order.

    Args:
        t0, t1: the interval; queries outside it raise.
        size: shape of W(t), e.g. (batch, noise channels) (default: the shape of W or H if given, else ()).
        dtype, device: of the samples (default: those of W or H if given, else torch's default dtype, CPU).
        entropy: seed; default a random one (reproducible runs pass an int).
        levy_area_approximation: ``"none"``; ``"space-time"`` (also return U = int_ta^tb (W(u) - W(ta)) du,
            the integral needed by the order-1.5 SRK solvers); ``"davie"`` or ``"foster"`` (U and an
            approximate Levy area A, for the log-ODE method; see :mod:`hybrid_node.sde.levy_area`).
        dt: optional grid hint: knots t0 + k dt are sampled at once (fast fixed-step solves).
        halfway_tree: as torchsde's: make the path a function of the entropy alone, whatever the times and
            the order of the queries. Knots are then only taken on the dyadic grid t0 + k (t1 - t0) / 2^n
            (the smallest n with cells no longer than ``tol``), each bridged from its parent cell's ends, and a
            query is answered at the nearest grid time (resolved to ``tol``, as torchsde's).
        tol: the time resolution with ``halfway_tree`` (must be positive then); ignored otherwise.
        pool_size: accepted for torchsde compatibility and ignored.
        cache_size: how many knot values (besides those at t0 and t1) are kept in memory, least recently
            used evicted first; None keeps all, 0 none. The default ``"auto"`` keeps as many as fit in 16 MiB,
            at least 45 (torchsde's default) and at most 4096: 2048 knots of a 16 x 64 float64 state, 1024 with
            a space-time Levy area (whose integral K doubles a knot). An evicted value is
            re-derived bit for bit from its parents when asked for again, so the size changes the memory
            and time, never the path. The ``dt`` grid's cells are cached apart (its last few chunks).
        W: optional value of W(t1) - W(t0) to condition on (a Brownian bridge).
        H: optional space-time Levy area over [t0, t1], H = U / (t1 - t0) - W / 2 (torchsde's), to condition
            on; used when the Levy area approximation is not "none".

    Raises:
        ValueError: t1 <= t0, an unknown Levy area approximation, a W or H of the wrong shape, halfway_tree
            with a tol that is not positive or with a dt hint.
    """

    def __init__(
        self,
        t0: float,
        t1: float,
        size: Sequence[int] | torch.Size | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        entropy: int | None = None,
        dt: float | None = None,
        tol: float = 0.0,
        pool_size: int = 8,
        cache_size: int | str | None = "auto",
        halfway_tree: bool = False,
        levy_area_approximation: str = "none",
        W: torch.Tensor | None = None,
        H: torch.Tensor | None = None,
    ):
        t0, t1 = float(t0), float(t1)
        if not t1 > t0:
            raise ValueError(f"BrownianInterval needs t0 < t1, got t0={t0}, t1={t1}.")
        if not (math.isfinite(t0) and math.isfinite(t1)):  # an infinite interval has no finite increments
            raise ValueError(f"BrownianInterval needs finite t0 and t1, got t0={t0}, t1={t1}.")
        if levy_area_approximation not in LEVY_AREA_APPROXIMATIONS:
            raise ValueError(
                f"unknown levy_area_approximation {levy_area_approximation!r}; "
                f"choose one of {LEVY_AREA_APPROXIMATIONS}."
            )
        if dt is not None and not dt > 0:
            raise ValueError(f"the grid hint dt must be positive, got {dt}.")
        if halfway_tree and not tol > 0:
            raise ValueError(f"halfway_tree=True needs a positive tol (the time resolution), got {tol}.")
        if halfway_tree and dt is not None:
            raise ValueError("halfway_tree=True takes no dt hint (its knots are the dyadic grid); leave dt=None.")
        if (
            cache_size is not None
            and cache_size != "auto"
            and (isinstance(cache_size, bool) or not isinstance(cache_size, numbers.Integral) or cache_size < 0)
        ):
            raise ValueError(
                f"cache_size must be a non-negative int (knot values kept in memory), None (keep all) or 'auto' "
                f"(about {_CACHE_BYTES >> 20} MB of knots), got {cache_size!r}."
            )
        self._t0, self._t1 = t0, t1
        _check_conditions(size, dtype, device, entropy, W, H)
        given = W if W is not None else H  # as torchsde, a given W or H also gives the size, dtype, device
        self._size = torch.Size(size if size is not None else () if given is None else given.shape)
        self._dtype = dtype if dtype is not None else torch.get_default_dtype() if given is None else given.dtype
        self._device = torch.device(device if device is not None else "cpu" if given is None else given.device)
        self._entropy = int(torch.randint(0, 2**62, ()).item()) if entropy is None else int(entropy)
        self.levy_area_approximation = levy_area_approximation
        self._levy = levy_area_approximation != "none"  # Davie's and Foster's areas are built on U
        self._gen = torch.Generator(device=self._device)
        # K(s) = int_{t0}^{s} W(u) du, kept in float64 whatever the dtype: U over [a, b] is the difference
        # K(b) - K(a) - (b - a) W(a) of numbers of size |W| (t1 - t0), and in float32 that cancellation left
        # U on short intervals late in the interval mostly rounding error (Var U 80x too large on
        # [5, 5 + 1e-5] of [0, 10]).
        self._kdtype = torch.float64 if self._device.type != "mps" else self._dtype  # MPS has no float64
        # Knot storage (see _knot_cache): the values (W, K) of t0 and t1 pinned, the others in an LRU cache,
        # each inserted knot's parents. ``_times`` lists every knot time off the grid; the halfway tree needs
        # neither it nor the parents (a grid time's parents are the ends of its dyadic parent cell).
        self._sampling = _Sampling(
            self._size, self._dtype, self._device, self._kdtype, self._levy, self._entropy, self._gen
        )
        self._knots = _KnotCache(_auto_cache_size(self._sampling) if isinstance(cache_size, str) else cache_size)
        self._knots.pinned[t0] = self._pair(self._zeros())
        self._dyadic_knots: set[float] = {t0, t1}  # the dyadic tree's knots: ends and those ``_scaffold`` put in
        self._times: list[float] = [t0]
        h = t1 - t0
        # Snap tolerance: a query this close to a knot is that knot (step times built by repeated addition
        # differ from t0 + k dt in the last bits; a separate knot there would only cost memory). A few dozen
        # ulps of the times, and far below the interval's length: 1e-10 max(1, |t0|, |t1|) swallowed whole
        # steps (every increment of 1e-5 on [1e6, 1e6 + 1] and of 5e-11 on [0, 1e-9] was zero).
        self._eps = min(1e-14 * max(abs(t0), abs(t1)), 1e-9 * h)
        # halfway_tree: the number of cells of the dyadic grid (0: knots anywhere). Cells stay well above the
        # snap tolerance, so that grid times never merge.
        self._cells = 0
        if halfway_tree:
            depth = max(0, math.ceil(math.log2(h / tol)))
            while depth > 0 and h / 2**depth <= 4 * self._eps:
                depth -= 1
            self._cells = 2**depth
        # With a grid hint the cells are drawn chunk by chunk and the knot values are summed only when a
        # query off the cells needs them (see _Grid.chunk_knots): a fixed-step solve reads one cell per step.
        self._grid = _Grid(t0, t1, self._eps, self._sampling)
        for name, given in (("W", W), ("H", H)):
            if given is not None and tuple(given.shape) != tuple(self._size):
                raise ValueError(f"{name} must have shape {tuple(self._size)} (the size), got {tuple(given.shape)}.")
        if dt is not None and dt < h and W is None and H is None:
            # The grid's cells are drawn unconditioned, so a given W or H (which the cells would have to
            # sum to) skips the grid: the knots are then bridged from the conditioned end, one by one.
            self._grid.lay_out(dt)
            # The grid holds t0 and t1: _times and the knot storage keep only the knots inserted off the grid.
            self._times = []
            self._knots.pinned.clear()
        else:
            w1, k1 = self._fresh(t1, h, 0.0)
            if W is not None:
                w1 = W.to(device=self._device, dtype=self._dtype)
            if W is not None or H is not None:
                # int W du over [t0, t1] = h (W / 2 + H), H the space-time area (independent of W).
                hh = math.sqrt(h / 12) * self._randn(t1 + 0.5) if H is None else H.to(self._device, self._dtype)
                k1 = h * (0.5 * w1 + hh)
            self._knots.pinned[t1] = self._pair(w1, k1)
            self._times.append(t1)

    # --- properties (torchsde names) -------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self._size

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def start(self) -> float:
        return self._t0

    @property
    def end(self) -> float:
        return self._t1

    @property
    def entropy(self) -> int:
        return self._entropy

    @property
    def num_knots(self) -> int:
        """How many times W has been sampled at: the grid's knots and those inserted off it (with
        ``halfway_tree``, whose knots are re-derived at will: the knots held, as ``knots_held``).

        The memory held is that of ``knots_held`` knot values and of ``cells_held`` grid cells."""
        if self._cells:
            return self.knots_held
        return len(self._times) + (self._grid.n + 1 if self._grid.n else 0)

    # --- sampling ------------------------------------------------------------------------------------------
    def _zeros(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self._sampling.zeros(dtype)

    def _randn(self, t: float, n: int = 1) -> torch.Tensor:
        return self._sampling.randn(t, n)

    def _fresh(self, t: float, h: float, w_prev) -> tuple[torch.Tensor, torch.Tensor]:
        """A new knot at t, h after the last one, unconditioned (W increment and its time integral)."""
        z = self._randn(t, 2) if self._levy else self._randn(t).unsqueeze(0)
        dw = math.sqrt(h) * z[0]
        if not self._levy:
            return w_prev + dw, self._zeros()
        return w_prev + dw, h * (0.5 * dw + math.sqrt(h / 12) * z[1])  # the integral of (W - W_prev) only

    # --- the dt grid (see _brownian_grid) ---------------------------------------------------------------------
    @property
    def cells_held(self) -> int:
        """How many grid cells' draws are held in memory now (bounded by the chunk cache)."""
        return self._grid.cells_held()

    @property
    def _materialised(self) -> bool:
        """Whether any knot value of the grid was summed (a fixed-step solve reads whole cells only)."""
        return self._grid.materialised

    # --- knot storage: pinned ends, an LRU cache of values, re-derivation from parents -----------------------
    @property
    def cache_size(self) -> int | None:
        """How many knot values besides t0 and t1 are kept in memory (None: all of them)."""
        return self._knots.cache_size

    @property
    def knots_held(self) -> int:
        """How many knot values are in memory: the pinned ends and the cache (at most ``cache_size`` + 2).

        The grid's cells are counted by ``cells_held``; knots off the halfway tree also keep their time and
        their parents' times (three floats each, whatever the size) so that an evicted value can be re-derived."""
        return len(self._knots)

    def _pair(self, w: torch.Tensor, k: torch.Tensor | None = None) -> _Value:
        """A knot value as stored: (W, K), K in ``_kdtype`` (zeros if not given), or (W, None) without a Levy area."""
        return self._sampling.pair(w, k)

    def _value(self, t: float) -> _Value:
        """W(t) and K(t) (None without a Levy area) at a knot time t off the halfway tree, re-derived if evicted."""
        v = self._knots.held(t)
        if v is not None:
            return v
        if t in self._knots.parents:
            # The bridge is looked up on the object at each call, so a draw replaced on it is the one used.
            return self._knots.rederive(t, self._value, self._bridge_value)
        loc = self._grid.locate(t)
        assert loc is not None, "not a knot"
        return self._grid.knot(loc)[1]

    def _bridge_value(self, t: float, a: float, b: float, va: _Value, vb: _Value) -> _Value:
        """The value at t of the Brownian bridge from ``va`` at a to ``vb`` at b (see ``_knot_cache._bridge_value``).

        Every knot off the grid is drawn through this method (tests count the draws by replacing it)."""
        return _bridge_draw(self._sampling, t, a, b, va, vb)

    def _neighbours(self, t: float, i: int | None = None) -> tuple[float, float]:
        """The knots just below and above t (grid knots included), t itself no knot.

        Args:
            t: the time.
            i: ``bisect_left(self._times, t)`` if the caller has it (saves a search per new knot).
        """
        if i is None:
            i = bisect.bisect_left(self._times, t)
        a = self._times[i - 1] if i > 0 else -math.inf
        b = self._times[i] if i < len(self._times) else math.inf
        if self._grid.n:  # the nearest knots may be grid knots
            ga, gb = self._grid.neighbours(t)
            a, b = max(a, ga), min(b, gb)
        return a, b

    def _add_knot(self, t: float, a: float, b: float, va: _Value, vb: _Value, i: int | None = None) -> _Value:
        """Insert knot t between its neighbours a and b (values va, vb), remembering them as its parents.

        ``i``, if given, is ``bisect_left(self._times, t)`` (t is no knot, so it is also where t goes)."""
        v = self._bridge_value(t, a, b, va, vb)
        if i is None:
            bisect.insort(self._times, t)
        else:
            self._times.insert(i, t)
        self._knots.parents[t] = (a, b)
        self._knots.keep(t, v)
        return v

    def _knot_near(self, t: float, i: int | None = None) -> float | None:
        """The knot off the grid within the snap tolerance of t, or None.

        ``i``, if given, is ``bisect_left(self._times, t)``: only the knots at i - 1 and i can be that near."""
        times = self._times
        if i is None:
            i = bisect.bisect_left(times, t)
        if i > 0 and t - times[i - 1] <= self._eps:
            return times[i - 1]
        if i < len(times) and times[i] - t <= self._eps:
            return times[i]
        return None

    def _scaffold(self, t: float, spacing: float) -> float | None:
        """Insert dyadic knots around a new time t that keep the chains of re-derivation short.

        A knot drawn between its neighbours depends on them, so queries in time order (an adaptive solve)
        make a chain: each knot's left parent is the one before. Re-deriving an evicted knot of such a
        chain (an adjoint's backward pass) would re-derive all knots before it. As torchsde's dependency
        tree (Kidger et al. 2021, section 4), this walks down the dyadic cells [t0 + q (t1 - t0)] that hold
        t and inserts each cell's midpoint, bridged from the cell's ends, while the cell is longer than
        ``_CHAIN`` times ``spacing`` (the distance from t to its nearest knot) and holds no knot yet; t is
        then bridged from its neighbours inside the smallest such cell. Chains so stay within a cell of
        about ``_CHAIN`` query spacings, below the ancestors of the cell (about log2 of their number).

        Args:
            t: the new time (no knot within the snap tolerance).
            spacing: distance from t to its nearest knot.

        Returns:
            The midpoint knot when t is within the snap tolerance of one (t is that knot), else None.
        """
        qlo, qhi = 0.0, 1.0
        lo, hi = self._t0, self._t1
        values: dict[float, _Value] = {}
        while hi - lo > _CHAIN * spacing and (hi - lo) / 2 > 4 * self._eps:
            qmid = 0.5 * (qlo + qhi)
            mid = self._knot_near(self._t0 + (self._t1 - self._t0) * qmid)
            if mid is None:
                if bisect.bisect_left(self._times, hi) > bisect.bisect_right(self._times, lo):
                    return None  # knots inside: a midpoint now would not be bridged from the cell's ends
                mid = self._t0 + (self._t1 - self._t0) * qmid
                va = values.get(lo) or self._value(lo)
                vb = values.get(hi) or self._value(hi)
                values[mid] = self._add_knot(mid, lo, hi, va, vb)
                self._dyadic_knots.add(mid)
            if abs(t - mid) <= self._eps:
                return mid
            if t < mid:
                qhi, hi = qmid, mid
            else:
                qlo, lo = qmid, mid
        return None

    def _point(self, t: float) -> tuple[float, _Value]:
        """The knot for time t (inserted if needed) and its value (W, K)."""
        if self._cells:
            return self._tree_point(t)
        # A time asked for before is a knot held in memory (most of a backward pass): one dictionary look-up
        # instead of the search below. No other knot lies within the snap tolerance of a knot.
        v = self._knots.held(t)
        if v is not None:
            return t, v
        if self._grid.n:
            loc = self._grid.locate(t)
            if loc is not None:
                return self._grid.knot(loc)
        # One binary search of the knot times serves the snap test, the neighbours, the spacing and the
        # insertion: each search was a Python call per new knot, a tenth of a sequential query's time.
        i = bisect.bisect_left(self._times, t)
        near = self._knot_near(t, i)
        if near is not None:
            return near, self._value(near)
        a, b = self._neighbours(t, i)
        spacing = _spacing(self._times, self._dyadic_knots, t, a, b, i)
        # No dyadic knot goes in where the gap (a, b) is already short: a cell the walk would split lies in
        # the gap and is longer than _CHAIN spacings. The grid's cells already keep chains short.
        if not self._grid.n and b - a > _CHAIN * spacing:
            snapped = self._scaffold(t, spacing)
            if snapped is not None:
                return snapped, self._value(snapped)
            i = bisect.bisect_left(self._times, t)  # the scaffold may have put knots in below t
            a, b = self._neighbours(t, i)
        return t, self._add_knot(t, a, b, self._value(a), self._value(b), i)

    def _dyadic(self, k: int) -> float:
        """Time k of the halfway tree's grid (the ends exactly: t0 + (t1 - t0) * 1 may round off t1)."""
        if k == 0:
            return self._t0
        if k == self._cells:
            return self._t1
        return self._t0 + (self._t1 - self._t0) * (k / self._cells)

    def _tree_point(self, t: float) -> tuple[float, _Value]:
        """The halfway tree's knot nearest t and its value, re-derived from the nearest ancestors held.

        Every grid time is bridged from the two ends of its parent cell (Kidger et al. 2021, section 4), so
        its value depends on the entropy only: the walk down from the deepest cell on t's path whose ends
        are both in memory (the root's ends t0, t1 always are) re-creates evicted values bit for bit.
        """
        k = min(max(round((t - self._t0) / (self._t1 - self._t0) * self._cells), 0), self._cells)
        time = self._dyadic(k)
        v = self._knots.held(time)
        if v is not None:
            return time, v
        path: list[tuple[int, int]] = []  # the cells from the root down to the one whose midpoint is k
        lo, hi = 0, self._cells
        while k not in (lo, hi):
            path.append((lo, hi))
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if k <= mid else (mid, hi)
        start, vlo, vhi = 0, self._knots.pinned[self._t0], self._knots.pinned[self._t1]
        for i in range(len(path) - 1, 0, -1):
            end_lo, end_hi = self._knots.held(self._dyadic(path[i][0])), self._knots.held(self._dyadic(path[i][1]))
            if end_lo is not None and end_hi is not None:
                start, vlo, vhi = i, end_lo, end_hi
                break
        for lo, hi in path[start:]:
            mid = (lo + hi) // 2
            tm = self._dyadic(mid)
            v = self._knots.held(tm)
            if v is None:
                v = self._bridge_value(tm, self._dyadic(lo), self._dyadic(hi), vlo, vhi)
                self._knots.keep(tm, v)
            vlo, vhi = (vlo, v) if k <= mid else (v, vhi)
        assert v is not None
        return time, v

    def _check_in_range(self, t: float) -> None:
        """Raise unless time ``t`` lies in [t0, t1] (to the snap tolerance)."""
        if not self._t0 - self._eps <= t <= self._t1 + self._eps:
            raise ValueError(
                f"the Brownian motion is defined on [{self._t0}, {self._t1}], but time {t} was asked for; create "
                "it over the whole solve interval (ts[0], ts[-1])."
            )

    def __call__(self, ta, tb=None, return_U: bool = False, return_A: bool = False):
        """The increment W(tb) - W(ta) (or W(ta) - W(t0) when ``tb`` is None).

        Args:
            ta, tb: times in [t0, t1] with ta <= tb (floats or 0-d tensors).
            return_U: also return U = int_ta^tb (W(u) - W(ta)) du (needs a Levy area approximation other
                than "none").
            return_A: also return the approximate Levy area A over [ta, tb], of shape (*size, size[-1])
                (zeros of shape size when size has fewer than two dimensions, as in torchsde),
                A[..., i, j] = 1/2 int (W_i - W_i(ta)) dW_j - 1/2 int (W_j - W_j(ta)) dW_i (needs "davie"
                or "foster"). The draw is seeded by (entropy, ta, tb): a repeated query returns the same
                value, but areas of adjacent intervals are separate approximations (not glued by Chen's
                relation).

        Returns:
            W; (W, U) with ``return_U``; (W, A) with ``return_A``; (W, U, A) with both.

        Raises:
            ValueError: times outside [t0, t1], ta > tb, or an area the object was not built to give.
        """
        if return_A and self.levy_area_approximation not in ("davie", "foster"):
            raise ValueError(
                'return_A needs BrownianInterval(..., levy_area_approximation="foster") (or "davie"), got '
                f"{self.levy_area_approximation!r}."
            )
        if return_U and not self._levy:
            raise ValueError('return_U needs BrownianInterval(..., levy_area_approximation="space-time").')
        if tb is None:
            ta, tb = self._t0, ta
        ta, tb = float(ta), float(tb)  # once: a 0-d tensor's float() is a call into torch
        if self._grid.n and not return_A:
            # Fast path: a query of one whole grid cell is the cell's own draw.
            cell = self._grid.cell(ta, tb)
            if cell is not None:
                chunk, i = cell
                if not return_U:
                    return chunk.dw[i]
                assert chunk.du is not None
                return chunk.dw[i], chunk.du[i]
        # A point query before t0 read as "need ta <= tb, got ta=t0, tb=t": the range is checked first.
        self._check_in_range(ta)
        self._check_in_range(tb)
        if ta > tb + self._eps:  # before the halfway tree rounds both to one grid time
            raise ValueError(f"need ta <= tb, got ta={ta}, tb={tb}.")
        a, (wa, ka) = self._point(ta)
        b, (wb, kb) = self._point(tb)
        w = wb - wa
        if not (return_U or return_A):
            return w
        assert ka is not None and kb is not None
        u = (kb - ka - (b - a) * wa).to(self._dtype)
        if not return_A:
            return w, u
        if len(self._size) < 2:
            # No channel dimension: a one-dimensional motion has no area. (The noise for it would be a
            # (batch, batch) draw: 3.4 GB and 27 s for a batch of 20000.)
            return (w, u, torch.zeros_like(w)) if return_U else (w, torch.zeros_like(w))
        area = approximate_levy_area(w, u, b - a, self.levy_area_approximation, self._area_noise(a, b))
        return (w, u, area) if return_U else (w, area)

    def _area_noise(self, a: float, b: float) -> torch.Tensor:
        """Standard normal draws for the Levy area on [a, b], seeded by the interval, of shape (*size, m)."""
        m = self._size[-1] if len(self._size) else 1
        self._gen.manual_seed(hash((self._entropy, a, b, -1.0)) & _MASK)
        return torch.randn((*self._size, m), generator=self._gen, dtype=self._dtype, device=self._device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(t0={self._t0}, t1={self._t1}, size={tuple(self._size)}, dtype={self._dtype}, "
            f"device={self._device}, entropy={self._entropy}, levy_area_approximation={self.levy_area_approximation!r})"
        )


class BrownianPath(BrownianInterval):
    """torchsde's ``BrownianPath(t0, w0)``: a Brownian motion started at value w0 with point queries.

    ``bm(t)`` returns the value w0 + W(t) and ``bm(ta, tb)`` the increment. The path is defined on
    [t0, t1] (default t0 + 1, as torchsde does). The first three arguments are torchsde's, in its order.

    Args:
        t0: start time.
        w0: start value; its shape, dtype and device are the path's.
        window_size: accepted for compatibility and ignored.
        t1: end time (default t0 + 1).
        entropy: seed.
        levy_area_approximation: as for :class:`BrownianInterval`.
        cache_size: knot values kept in memory, as for :class:`BrownianInterval`.
    """

    def __init__(
        self,
        t0: float,
        w0: torch.Tensor,
        window_size: int = 8,
        t1: float | None = None,
        entropy: int | None = None,
        levy_area_approximation: str = "none",
        cache_size: int | str | None = "auto",
    ):
        _check_start(w0)
        t1 = float(t0) + 1.0 if t1 is None else t1
        super().__init__(
            t0,
            t1,
            w0.shape,
            w0.dtype,
            w0.device,
            entropy,
            cache_size=cache_size,
            levy_area_approximation=levy_area_approximation,
        )
        self._w0 = w0

    def __call__(self, ta, tb=None, return_U: bool = False, return_A: bool = False):
        out = super().__call__(ta, tb, return_U, return_A)
        if tb is None and not (return_U or return_A):
            return self._w0 + out
        return out


class BrownianTree(BrownianPath):
    """torchsde's ``BrownianTree(t0, w0, t1, w1)``: a Brownian motion from w0, optionally pinned to w1 at t1.

    As torchsde's, the path is a function of the entropy alone, whatever the times and order of the
    queries (a :class:`BrownianInterval` with ``halfway_tree=True``): two trees with one entropy give one
    path even when solves with different steps query them. Times are resolved to ``tol``: a query is
    answered at the nearest time of a dyadic grid with cells no longer than ``tol``. ``pool_size``,
    ``cache_depth`` and ``safety`` are accepted and ignored. Memory is bounded: at most ``cache_size`` grid
    values are kept, and an evicted one is re-derived exactly from its ancestors (about log2((t1 - t0) /
    tol) bridge draws at worst).

    Args:
        t0, w0: start time and value.
        t1, w1: end time (default t0 + 1) and optional end value.
        entropy: seed.
        tol: the time resolution (positive).
        cache_size: knot values kept in memory besides those at t0 and t1 (default "auto": about 16 MiB, as
            for BrownianInterval; None keeps all); changes the memory and time only, never the path.
    """

    def __init__(
        self,
        t0: float,
        w0: torch.Tensor,
        t1: float | None = None,
        w1: torch.Tensor | None = None,
        entropy: int | None = None,
        tol: float = 1e-6,
        pool_size: int = 24,
        cache_depth: int = 9,
        safety: float | None = None,
        cache_size: int | str | None = "auto",
    ):
        _check_start(w0)
        t1 = float(t0) + 1.0 if t1 is None else t1
        BrownianInterval.__init__(
            self,
            t0,
            t1,
            w0.shape,
            w0.dtype,
            w0.device,
            entropy,
            tol=tol,
            cache_size=cache_size,
            halfway_tree=True,
            W=None if w1 is None else w1 - w0,
        )
        self._w0 = w0


class ReverseBrownian:
    """torchsde's ``ReverseBrownian(bm)``: the Brownian motion of ``bm`` seen in reversed time.

    Over [-t1, -t0] it answers ``rev(ta, tb) = bm(-tb, -ta)``: the increments of ``bm`` over the mirrored
    interval, not negated (as torchsde's; a solve backwards in time with ``rev`` and the negated drift and
    diffusion retraces a forward solve with ``bm``, which is how ``sdeint`` runs a reversible solver back).

    Args:
        base_brownian: the Brownian motion to reverse (a :class:`BrownianInterval` or any object answering
            ``bm(ta, tb, return_U=..., return_A=...)``).
    """

    def __init__(self, base_brownian):
        self.base_brownian = base_brownian

    def __call__(self, ta, tb=None, return_U: bool = False, return_A: bool = False):
        """The increment over [ta, tb] of the reversed path.

        Args:
            ta, tb: the interval, inside [-t1, -t0] of the base Brownian motion.
            return_U, return_A: as for :class:`BrownianInterval`.

        Returns:
            ``base_brownian(-tb, -ta, return_U, return_A)``.

        Raises:
            ValueError: tb not given (a reversed path has no value W(t), only increments).
        """
        if tb is None:
            raise ValueError("ReverseBrownian answers increments only: call it as bm(ta, tb).")
        return self.base_brownian(-tb, -ta, return_U=return_U, return_A=return_A)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_brownian={self.base_brownian!r})"

    @property
    def dtype(self) -> torch.dtype:
        return self.base_brownian.dtype

    @property
    def device(self) -> torch.device:
        return self.base_brownian.device

    @property
    def shape(self) -> torch.Size:
        return self.base_brownian.shape

    @property
    def levy_area_approximation(self) -> str:
        return self.base_brownian.levy_area_approximation
