"""A batch format for irregularly sampled time series with per-sample time grids and masks.

Different series are observed at different times, and a series may miss some channels at a time. An
:class:`IrregularBatch` keeps each sample's own (sorted) time grid, padded to a common length, with a
mask that says which entries were observed. Padding repeats the sample's last time, so time gaps at
padded positions are zero and padded times never add new points to a union grid.

Two ways to decode a batch with an ODE both start from this format:

* union of times (:func:`union_grid`): solve once, batched, on the sorted union of every observed time
  in the batch and gather each sample's own times with an index (:meth:`IrregularBatch.union_index`);
* per sample: solve each series on its own grid (simple, but one solve per sample).

The latent ODE in :mod:`hybrid_node.nn.latent_ode` uses the union of times: one batched solve is far
cheaper than B small ones, and on data whose times come from a shared clock (sensors, the spirals) the
union stays short.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import torch

from ._problem import broadcasts_to

Tensor = torch.Tensor


def zero_unobserved(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` with every entry where ``mask`` is 0 set to 0.

    Unobserved entries may hold anything, NaN included (a common marker of a missing value); a product
    ``values * mask`` would keep such a NaN (NaN * 0 is NaN, and so is its gradient), this does not.

    Args:
        values: observed values.
        mask: 0/1 tensor broadcastable to ``values``; 1 where a value was observed.

    Returns:
        A tensor shaped like ``values``.

    Raises:
        ValueError: ``mask`` does not broadcast to the shape of ``values`` (torch's "The size of tensor a
            must match" named neither; a larger broadcast would return a tensor of another shape).
    """
    if not broadcasts_to(mask.shape, values.shape):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} must broadcast to values of shape {tuple(values.shape)} (one 0/1 "
            "entry per value, or fewer dimensions that broadcast)."
        )
    return torch.where(mask > 0, values, torch.zeros_like(values))


@dataclasses.dataclass(frozen=True)
class IrregularBatch:
    """A padded batch of irregularly sampled series.

    Attributes:
        times: (B, L) observation times of each sample, non-decreasing along L. Padded positions
            repeat the sample's last observed time.
        values: (B, L, D) observed values; entries where ``mask`` is 0 are ignored (any value, NaN
            included); observed entries must be finite.
        mask: (B, L, D) 1.0 where a value was observed, 0.0 otherwise (same dtype as ``values``).
    """

    times: Tensor
    values: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        t, v, m = self.times, self.values, self.mask
        if not all(isinstance(x, torch.Tensor) for x in (t, v, m)):
            raise TypeError("IrregularBatch needs torch tensors for times, values and mask.")
        if t.ndim != 2:
            raise ValueError(f"times must have shape (B, L); got {tuple(t.shape)}.")
        if v.ndim != 3 or v.shape[:2] != t.shape:
            raise ValueError(f"values must have shape (B, L, D) matching times {tuple(t.shape)}; got {tuple(v.shape)}.")
        if m.shape != v.shape:
            raise ValueError(f"mask must have the shape of values {tuple(v.shape)}; got {tuple(m.shape)}.")
        if t.is_floating_point() and not bool(t.isfinite().all()):
            # a NaN time passes the sorting check (every comparison with NaN is False) and fails later
            raise ValueError(
                "times must be finite; got NaN or infinite times. Drop those points (from_sequences pads "
                "each series with its last time)."
            )
        if t.shape[1] > 1 and bool((t[:, 1:] < t[:, :-1]).any()):
            raise ValueError("times must be sorted (non-decreasing) within each sample; sort them first.")
        if v.is_floating_point() and not bool((v.isfinite() | (m == 0)).all()):
            raise ValueError(
                "values holds NaN or infinite entries where mask is 1 (observed); mark a missing value "
                "with mask 0 there (unobserved entries may hold anything)."
            )

    @property
    def batch_size(self) -> int:
        return self.times.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.values.shape[2]

    @property
    def time_mask(self) -> Tensor:
        """(B, L) 1.0 where at least one channel was observed."""
        return (self.mask.sum(-1) > 0).to(self.values.dtype)

    @property
    def observed_values(self) -> Tensor:
        """(B, L, D) ``values`` with every unobserved entry set to 0 (see :func:`zero_unobserved`)."""
        return zero_unobserved(self.values, self.mask)

    @property
    def lengths(self) -> Tensor:
        """(B,) number of time points with at least one observation."""
        return self.time_mask.sum(-1).long()

    def to(self, *args, **kwargs) -> IrregularBatch:
        """Move/cast like ``Tensor.to``; times keep a floating dtype, the mask follows ``values``."""
        values = self.values.to(*args, **kwargs)
        times = self.times.to(*args, **kwargs)
        return IrregularBatch(times=times, values=values, mask=self.mask.to(device=values.device, dtype=values.dtype))

    def union_index(self, union_times: Tensor) -> Tensor:
        """(B, L) index of each sample's times in a sorted ``union_times`` that contains all of them.

        Raises:
            ValueError: if some time of the batch is not in ``union_times``.
        """
        idx = torch.searchsorted(union_times.contiguous(), self.times.contiguous())
        idx = idx.clamp(max=union_times.numel() - 1)
        if not torch.equal(union_times[idx], self.times):
            raise ValueError("union_times does not contain every time of the batch; build it with union_grid().")
        return idx

    def gaps(self, t0: Tensor | None = None) -> Tensor:
        """(B, L) time since the previous observation; the first observation's gap is measured from ``t0``.

        The previous observation is the latest earlier position where some channel was observed: a time
        at which nothing was observed is no observation, so inserting one changes no other gap.

        Args:
            t0: scalar or (B,) start time; defaults to each sample's first observed time (first gap 0,
                and 0 at the unobserved times before it).

        Returns:
            (B, L) gaps; padding (which repeats the last observed time) has gap 0.
        """
        bsz, length = self.times.shape
        if length == 0:
            return self.times.clone()
        observed = self.time_mask > 0
        pos = torch.arange(length, device=self.times.device).expand(bsz, length)
        # index of the latest observed position at or before each position (-1: none yet)
        latest = torch.where(observed, pos, -1).cummax(dim=1).values
        before = torch.cat([latest.new_full((bsz, 1), -1), latest[:, :-1]], dim=1)
        if t0 is None:
            # each sample's first observed time (its first time when it has no observation); the
            # unobserved times before it get gap 0 too
            first_obs = torch.where(observed, pos, length).min(dim=1).values.clamp(max=length - 1)
            first = torch.minimum(self.times.gather(1, first_obs.unsqueeze(1)), self.times)
        else:
            first = torch.as_tensor(t0, dtype=self.times.dtype, device=self.times.device).reshape(-1, 1)
        prev = torch.where(before >= 0, self.times.gather(1, before.clamp(min=0)), first.expand(bsz, length))
        return self.times - prev


def check_future_times(batch: IrregularBatch, times: Tensor) -> None:
    """Check the extrapolation ``times`` of a model that steps from each sample's last time to them.

    Args:
        batch: the observed series.
        times: (T,) times to predict, shared by every sample (T = 0 allowed).

    Raises:
        ValueError: ``times`` is not 1-D, decreases somewhere, or starts before the last time of some
            sample (padding repeats it).
    """
    if times.ndim != 1:
        raise ValueError(
            f"extrapolation times must be 1-D (T,), shared by every sample; got shape {tuple(times.shape)}."
        )
    if times.numel() > 1 and bool((times[1:] < times[:-1]).any()):
        raise ValueError("extrapolation times must be sorted (non-decreasing); sort them first.")
    if times.numel() and bool((times[0] < batch.times[:, -1]).any()):
        raise ValueError(
            "extrapolation times must not precede the last observation of any sample; start them at or after "
            "the latest observed time, batch.times[:, -1].max()."
        )


def union_grid(batch: IrregularBatch, extra_times: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sorted union of the batch's times (plus ``extra_times``) and each sample's index into it.

    Args:
        batch: the batch.
        extra_times: optional 1-D times to include (for example the start time t0).

    Returns:
        ``(union_times, index)``: (T,) sorted unique times and the (B, L) index of every entry of
        ``batch.times`` in it, so ``ys[index[b, l]]`` is the state at ``batch.times[b, l]``.

    Raises:
        ValueError: ``extra_times`` holds NaN or infinite values.
    """
    t = batch.times.reshape(-1)
    if extra_times is not None:
        extra = torch.as_tensor(extra_times, dtype=t.dtype, device=t.device).reshape(-1)
        if not bool(torch.isfinite(extra).all()):  # a NaN was sorted into the grid the solve runs on
            bad = extra[~torch.isfinite(extra)][:5].tolist()
            raise ValueError(f"extra_times must be finite, got {bad}; drop the NaN and infinite times.")
        t = torch.cat([t, extra])
    union = torch.unique(t, sorted=True)
    return union, batch.union_index(union)


def union_grid_in(batch: IrregularBatch, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """:func:`union_grid` of ``batch`` with its times cast to ``dtype``, the solve's.

    Casting before the union, not after: times distinct in a finer dtype that round to one time in
    ``dtype`` must share one union point (rounding keeps them sorted).

    Args:
        batch: the series.
        dtype: the dtype the solve over the union runs in.

    Returns:
        ``(union, index)`` as :func:`union_grid`.
    """
    if batch.times.dtype != dtype:
        batch = dataclasses.replace(batch, times=batch.times.to(dtype))
    return union_grid(batch)


def gather_union(ys: Tensor, index: Tensor) -> Tensor:
    """Pick each sample's own times out of a batched solve on the union grid.

    Args:
        ys: (T, B, *S) states on the union grid, batch on dim 1 (the layout of ``odeint``).
        index: (B, L) indices into the T axis (from :func:`union_grid`).

    Returns:
        (B, L, *S) states at each sample's times.
    """
    if ys.shape[1] != index.shape[0]:
        raise ValueError(f"ys has batch size {ys.shape[1]} but index has {index.shape[0]}.")
    b = torch.arange(index.shape[0], device=index.device).unsqueeze(1).expand_as(index)
    return ys[index, b]


def from_sequences(
    times: Sequence[Tensor], values: Sequence[Tensor], masks: Sequence[Tensor] | None = None
) -> IrregularBatch:
    """Pad a list of series of different lengths into one :class:`IrregularBatch`.

    Args:
        times: B tensors of shape (L_b,), sorted within each series.
        values: B tensors of shape (L_b, D).
        masks: optional B tensors of shape (L_b, D) (default: everything observed).

    Returns:
        The padded batch (padding repeats the last time, values 0, mask 0). The times take one floating
        dtype, the promotion of every series' dtype (the default dtype when all are integers). An empty
        series is padded with the batch's earliest time, so that it adds no point to a union grid.

    Raises:
        ValueError: on empty input, mismatched lengths or channel counts, a mask not shaped like its
            values, unsorted or non-finite times, or non-finite observed values.
    """
    if len(times) == 0 or len(times) != len(values) or (masks is not None and len(masks) != len(times)):
        raise ValueError("from_sequences needs equally many (non-zero) times, values (and masks).")
    dims = {v.shape[-1] for v in values}
    if len(dims) != 1 or any(v.ndim != 2 for v in values):
        raise ValueError("every values tensor must have shape (L_b, D) with the same D.")
    if any(torch.as_tensor(t).ndim != 1 for t in times):
        raise ValueError("every times tensor must have shape (L_b,) (one time per row of its values).")
    (d,) = dims
    length = max(int(t.numel()) for t in times)
    if length == 0:
        raise ValueError("every series is empty; nothing to batch.")
    dtype = values[0].dtype
    bsz = len(times)
    # one dtype for all: the first series' would truncate later float times to an integer first
    # series', or round float64 times to a float32 first series' precision
    t_dtype = functools.reduce(torch.promote_types, (torch.as_tensor(t).dtype for t in times))
    if not t_dtype.is_floating_point:
        t_dtype = torch.get_default_dtype()
    # an empty series has no time of its own; any time of another series adds no new union point
    earliest = min(float(t.min()) for t in times if t.numel())
    out_t = torch.full((bsz, length), earliest, dtype=t_dtype)
    out_v = torch.zeros(bsz, length, d, dtype=dtype)
    out_m = torch.zeros(bsz, length, d, dtype=dtype)
    for i, (t, v) in enumerate(zip(times, values)):
        n = int(t.numel())
        if v.shape[0] != n:
            raise ValueError(f"series {i}: {n} times but {v.shape[0]} values.")
        if masks is not None and tuple(masks[i].shape) != tuple(v.shape):
            # a (L_b,) or (D,) mask would broadcast silently over the wrong axis
            raise ValueError(
                f"series {i}: mask of shape {tuple(masks[i].shape)} must have the shape of its values "
                f"{tuple(v.shape)} (one 0/1 entry per time and channel)."
            )
        if n == 0:
            continue
        out_t[i, :n] = t.to(t_dtype)
        out_t[i, n:] = t[-1]
        out_v[i, :n] = v
        out_m[i, :n] = 1.0 if masks is None else masks[i].to(dtype)
    return IrregularBatch(times=out_t, values=out_v, mask=out_m)


def collate(batches: Sequence[IrregularBatch]) -> IrregularBatch:
    """Concatenate batches along the batch axis, padding to the longest grid.

    Args:
        batches: batches with the same number of channels D.

    Returns:
        One :class:`IrregularBatch`.
    """
    if len(batches) == 0:
        raise ValueError("collate needs at least one batch.")
    length = max(b.times.shape[1] for b in batches)
    ts, vs, ms = [], [], []
    for b in batches:
        pad = length - b.times.shape[1]
        if pad:
            ts.append(torch.cat([b.times, b.times[:, -1:].expand(-1, pad)], dim=1))
            zeros = b.values.new_zeros(b.batch_size, pad, b.obs_dim)
            vs.append(torch.cat([b.values, zeros], dim=1))
            ms.append(torch.cat([b.mask, zeros], dim=1))
        else:
            ts.append(b.times)
            vs.append(b.values)
            ms.append(b.mask)
    return IrregularBatch(times=torch.cat(ts), values=torch.cat(vs), mask=torch.cat(ms))


def select(batch: IrregularBatch, index: Tensor) -> IrregularBatch:
    """The samples ``index`` (a 1-D index or boolean tensor) of a batch."""
    return IrregularBatch(times=batch.times[index], values=batch.values[index], mask=batch.mask[index])


def subsample_grid(times: Tensor, values: Tensor, n: int, generator: torch.Generator | None = None) -> IrregularBatch:
    """Keep ``n`` random points per sample (without replacement, sorted) of series on a shared grid.

    Args:
        times: (L,) shared time grid.
        values: (B, L, D) values on that grid.
        n: points to keep per sample, 1 <= n <= L.
        generator: optional torch generator for reproducibility.

    Returns:
        An :class:`IrregularBatch` with L = n where every sample has its own times.
    """
    bsz, length, _ = values.shape
    if not 1 <= n <= length:
        raise ValueError(f"n must be between 1 and the grid length {length}; got {n}.")
    if times.shape != (length,):
        raise ValueError(f"times must have shape ({length},); got {tuple(times.shape)}.")
    keys = torch.rand(bsz, length, generator=generator)
    idx = keys.argsort(dim=1)[:, :n].sort(dim=1).values
    b = torch.arange(bsz).unsqueeze(1)
    vals = values[b, idx]
    return IrregularBatch(times=times[idx], values=vals, mask=torch.ones_like(vals))
