"""Toy periodic series at irregular times, after the 1-D periodic set of the Latent ODE paper.

Every trajectory is a sine wave x(t) = amplitude * sin(2 pi f t + phase) with its own frequency and
phase, observed at irregular times on [0, max_t] with Gaussian noise. By default all trajectories share
one set of 100 random times (as in the reference set); ``shared_times=False`` draws each trajectory's own
times, which exercises per-sample grids.

It is a simpler set than the reference code's generator (``generate_timeseries.py`` of
YuliaRubanova/latent_ode, as its ``parse_datasets.py`` calls it): there every wave starts at phase 0
around an offset of 1 plus a normal draw of standard deviation 0.1, with a frequency drawn from
[0.4, 0.8], and carries uniform noise in [0, 0.01) on all points but the first; its shared times are
t = 0 and 99 uniform draws on [0, max_t] (here all 100 are drawn). Numbers measured on this set are
therefore not the paper's.

Reference: Y. Rubanova, R. T. Q. Chen, D. Duvenaud, "Latent ODEs for Irregularly-Sampled Time Series",
NeurIPS 2019, Section 4.1 (toy data set).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import torch

from ..irregular import IrregularBatch


@dataclasses.dataclass(frozen=True)
class PeriodicConfig:
    """Parameters of the periodic toy set.

    Attributes:
        n_traj: number of trajectories.
        n_points: observation times per trajectory.
        max_t: end of the time interval [0, max_t].
        freq_range: range of the uniformly drawn frequency f (cycles per unit time).
        amplitude: amplitude of every wave.
        noise_std: standard deviation of the observation noise.
        shared_times: all trajectories observed at the same random times (True) or each at its own.

    Raises:
        TypeError: n_traj or n_points not an int.
        ValueError: freq_range not a pair, or settings out of range or not finite.
    """

    n_traj: int = 1000
    n_points: int = 100
    max_t: float = 5.0
    freq_range: tuple = (0.2, 0.6)
    amplitude: float = 1.0
    noise_std: float = 0.01
    shared_times: bool = True

    def __post_init__(self) -> None:
        for name in ("n_traj", "n_points"):
            value = getattr(self, name)
            # A float count would fail later inside torch.rand or expand with an unrelated message.
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {value!r}.")
        if not isinstance(self.freq_range, (tuple, list)) or len(self.freq_range) != 2:
            raise ValueError(f"freq_range must be a pair (low, high), got {self.freq_range!r}.")
        lo, hi = self.freq_range
        if not all(math.isfinite(v) for v in (self.max_t, lo, hi, self.amplitude, self.noise_std)):
            raise ValueError(
                "max_t, freq_range, amplitude and noise_std must be finite (NaN or inf makes the data NaN)."
            )
        if self.n_traj < 1 or self.n_points < 1 or self.max_t <= 0 or not 0 < lo <= hi or self.noise_std < 0:
            raise ValueError(
                "need n_traj, n_points >= 1, max_t > 0, 0 < freq_range[0] <= freq_range[1], noise_std >= 0."
            )


def make_periodic(config: PeriodicConfig = PeriodicConfig(), seed: int = 0) -> tuple:
    """Generate the periodic toy set.

    Args:
        config: settings.
        seed: torch seed of a private generator.

    Returns:
        ``(batch, clean)``: an :class:`IrregularBatch` of noisy observations and the (B, L, 1) noise-free
        values at the same times.
    """
    gen = torch.Generator().manual_seed(seed)
    b, n = config.n_traj, config.n_points
    if config.shared_times:
        times = (torch.rand(n, generator=gen) * config.max_t).sort().values.expand(b, n).clone()
    else:
        times = (torch.rand(b, n, generator=gen) * config.max_t).sort(dim=1).values
    lo, hi = config.freq_range
    freq = lo + (hi - lo) * torch.rand(b, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(b, 1, generator=gen)
    clean = (config.amplitude * torch.sin(2 * math.pi * freq * times + phase)).unsqueeze(-1)
    noisy = clean + config.noise_std * torch.randn(clean.shape, generator=gen)
    return IrregularBatch(times=times, values=noisy, mask=torch.ones_like(noisy)), clean
