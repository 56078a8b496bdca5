"""Bi-directional spirals: the time-series benchmark of the Neural ODE paper (Section 5.1).

Two noise-free Archimedean spirals of opposite direction are drawn on one time grid; every sample is a
window of consecutive points of one of them (direction chosen with probability 1/2) plus Gaussian
noise. The paper trains on n = 30, 50 or 100 points kept at random from the window and scores
extrapolation on the points that follow it.

Reference: R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural Ordinary Differential
Equations", NeurIPS 2018, Section 5.1 and Table 2.

One deviation from the reference recipe, forced by the extrapolation targets: the reference draws the
window start uniformly from [nsample, ntotal - nsample), which leaves fewer than 100 following points
for late windows. With ``nextrap > 0`` the start is drawn from [nsample, ntotal - nsample - nextrap), so
every sample has its full extrapolation target on the same 500-point grid (a spiral cannot be extended
past the grid: the clockwise radius diverges there).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..irregular import IrregularBatch, subsample_grid


@dataclasses.dataclass(frozen=True)
class SpiralConfig:
    """Parameters of the spirals generator (defaults: the reference example's values).

    Attributes:
        nspiral: number of samples.
        ntotal: points of the underlying time grid on [start, stop].
        start, stop: time interval of the grid (0 to 6 pi).
        a, b: spiral parameters (radius a + b z counter-clockwise, a + 50 b / z clockwise).
        nsample: points per observed window.
        nextrap: points after the window kept as (noise-free) extrapolation targets.
        noise_std: standard deviation of the Gaussian observation noise.

    Raises:
        TypeError: a count (nspiral, ntotal, nsample, nextrap) that is not an int.
        ValueError: counts out of range, a grid too short for them, or non-finite or invalid floats.
    """

    nspiral: int = 1000
    ntotal: int = 500
    start: float = 0.0
    stop: float = 6 * math.pi
    a: float = 0.0
    b: float = 0.3
    nsample: int = 100
    nextrap: int = 100
    noise_std: float = 0.3

    def __post_init__(self) -> None:
        for name in ("nspiral", "ntotal", "nsample", "nextrap"):
            value = getattr(self, name)
            # A float count (100.0 from a command line) would fail later as an indexing or numpy error.
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {value!r}.")
        if self.nspiral < 1 or self.nsample < 2 or self.nextrap < 0:
            raise ValueError("need nspiral >= 1, nsample >= 2 and nextrap >= 0.")
        if self.ntotal - 2 * self.nsample - self.nextrap < 1:
            raise ValueError(
                f"ntotal={self.ntotal} is too short for windows of {self.nsample} points, a margin of "
                f"{self.nsample} points and {self.nextrap} extrapolation points; raise ntotal."
            )
        if not all(math.isfinite(v) for v in (self.start, self.stop, self.a, self.b, self.noise_std)):
            raise ValueError("start, stop, a, b and noise_std must be finite (NaN or inf makes every series NaN).")
        if not self.stop > self.start or self.noise_std < 0:
            raise ValueError("need stop > start and noise_std >= 0.")


@dataclasses.dataclass(frozen=True)
class SpiralData:
    """A generated spirals data set (float32 tensors).

    Attributes:
        times: (nsample,) times of the window, starting at 0 (every sample shares this relative clock).
        observed: (N, nsample, 2) noisy window values.
        clean: (N, nsample, 2) noise-free window values.
        extrap_times: (nextrap,) the times after the window.
        extrap: (N, nextrap, 2) noise-free values at ``extrap_times`` (the extrapolation score's target).
        extrap_observed: (N, nextrap, 2) the same points with observation noise: what a training series
            would have recorded after its window (the targets of the forecasting objective).
        clockwise: (N,) bool direction of each sample.
        start_index: (N,) index of the window start on the underlying grid.
        config: the generator settings.
    """

    times: torch.Tensor
    observed: torch.Tensor
    clean: torch.Tensor
    extrap_times: torch.Tensor
    extrap: torch.Tensor
    extrap_observed: torch.Tensor
    clockwise: torch.Tensor
    start_index: torch.Tensor
    config: SpiralConfig

    def subsample(self, n: int, seed: int = 0) -> IrregularBatch:
        """Keep ``n`` of each window's points at random (per sample, without replacement).

        Returns:
            An :class:`~hybrid_node.irregular.IrregularBatch` of noisy observations.
        """
        gen = torch.Generator().manual_seed(seed)
        return subsample_grid(self.times, self.observed, n, generator=gen)


def spiral_curves(config: SpiralConfig = SpiralConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two noise-free spirals on the full grid.

    Returns:
        ``(ts, clockwise, counter_clockwise)`` with shapes (ntotal,), (ntotal, 2), (ntotal, 2).
    """
    ts = np.linspace(config.start, config.stop, num=config.ntotal)
    z_cw = config.stop + 1.0 - ts
    r_cw = config.a + 50.0 * config.b / z_cw
    cw = np.stack([r_cw * np.cos(z_cw) - 5.0, r_cw * np.sin(z_cw)], axis=1)
    z_cc = ts
    r_cc = config.a + config.b * z_cc
    cc = np.stack([r_cc * np.cos(z_cc) + 5.0, r_cc * np.sin(z_cc)], axis=1)
    return ts, cw, cc


def make_spirals(config: SpiralConfig = SpiralConfig(), seed: int | None = 0) -> SpiralData:
    """Generate the bi-directional spirals data set.

    Args:
        config: generator settings.
        seed: numpy seed (None: fresh entropy).

    Returns:
        :class:`SpiralData`.
    """
    rng = np.random.default_rng(seed)
    ts, cw, cc = spiral_curves(config)
    n, ns, ne = config.nspiral, config.nsample, config.nextrap
    # Leave `nsample` points of margin at the start (as the reference does) and room for the targets.
    starts = (
        rng.integers(ns, config.ntotal - ns - ne, size=n) if ne > 0 else rng.integers(ns, config.ntotal - ns, size=n)
    )
    clockwise = rng.random(n) < 0.5
    curves = np.where(clockwise[:, None, None], cw[None], cc[None])  # (N, ntotal, 2)
    window = starts[:, None] + np.arange(ns)[None]
    after = starts[:, None] + ns + np.arange(ne)[None]
    rows = np.arange(n)[:, None]
    clean = curves[rows, window]
    extrap = curves[rows, after]
    observed = clean + rng.standard_normal(clean.shape) * config.noise_std
    # Drawn after the window noise, so the windows do not depend on whether the future is used.
    extrap_observed = extrap + rng.standard_normal(extrap.shape) * config.noise_std
    dt = ts[1] - ts[0]
    f32 = torch.float32
    return SpiralData(
        times=torch.as_tensor(np.arange(ns) * dt, dtype=f32),
        observed=torch.as_tensor(observed, dtype=f32),
        clean=torch.as_tensor(clean, dtype=f32),
        extrap_times=torch.as_tensor((ns + np.arange(ne)) * dt, dtype=f32),
        extrap=torch.as_tensor(extrap, dtype=f32),
        extrap_observed=torch.as_tensor(extrap_observed, dtype=f32),
        clockwise=torch.as_tensor(clockwise),
        start_index=torch.as_tensor(starts),
        config=config,
    )


def _candidates(config: SpiralConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Every noise-free (window, future) the generator can draw: both directions times every start.

    Returns:
        ``(windows, futures)``, (K, nsample, 2) and (K, nextrap, 2) float64, K = 2 x number of starts.
    """
    _, cw, cc = spiral_curves(config)
    ns, ne = config.nsample, config.nextrap
    starts = np.arange(ns, config.ntotal - ns - ne)[:, None]  # the range make_spirals draws from
    curves = np.stack([cw, cc])  # (2, ntotal, 2)
    windows = curves[:, starts + np.arange(ns)].reshape(-1, ns, 2)
    futures = curves[:, starts + ns + np.arange(ne)].reshape(-1, ne, 2)
    return torch.as_tensor(windows), torch.as_tensor(futures)


def bayes_forecast(config: SpiralConfig, batch: IrregularBatch, chunk: int = 100) -> torch.Tensor:
    """The minimum-MSE forecast of a predictor that knows the generator: the posterior mean of the
    ``nextrap`` noise-free points after each window, given the window's observed points.

    The generator draws the direction with probability 1/2 and the start uniformly, so under a uniform
    prior over the K possible noise-free windows the posterior is proportional to the Gaussian
    likelihood (std ``noise_std``) of the observed points; the forecast averages the candidates'
    futures with it. No learner can beat its expected squared error on data from ``config``, so its
    RMSE is the floor of the extrapolation score (Bayes decision rule under squared loss).

    Args:
        config: the generator settings the series were drawn with (``nextrap`` > 0, ``noise_std`` > 0).
        batch: observed points, on the window clock (times ``k * dt`` of the shared grid, as
            :meth:`SpiralData.subsample` returns them).
        chunk: series scored at a time (memory: chunk x K x observed points).

    Returns:
        (B, nextrap, 2) float32 forecasts at ``SpiralData.extrap_times``.

    Raises:
        ValueError: for ``nextrap`` or ``noise_std`` of 0, or observation times off the grid.
    """
    if config.nextrap < 1 or config.noise_std <= 0:
        raise ValueError("bayes_forecast needs nextrap >= 1 and noise_std > 0 (the posterior is a likelihood ratio).")
    windows, futures = _candidates(config)
    dt = (config.stop - config.start) / (config.ntotal - 1)
    steps = batch.times.double() / dt
    index = steps.round().long()
    if bool((steps - index).abs().max() > 1e-3) or bool((index < 0).any()) or bool((index >= config.nsample).any()):
        raise ValueError(
            "observation times must lie on the window's grid (k * dt, 0 <= k < nsample); "
            "pass the batch SpiralData.subsample returns."
        )
    out = []
    for lo in range(0, batch.batch_size, chunk):
        rows = slice(lo, lo + chunk)
        mean = windows[:, index[rows]]  # (K, b, L, 2)
        sq = ((batch.observed_values[rows].double() - mean) ** 2 * batch.mask[rows].double()).sum((-1, -2))
        weights = torch.softmax(-sq / (2 * config.noise_std**2), dim=0)  # (K, b)
        out.append(torch.einsum("kb,ktd->btd", weights, futures))
    return torch.cat(out).float()
