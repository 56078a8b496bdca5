"""Statistics of the spirals generator and the periodic toy set."""
import math

import numpy as np
import pytest
import torch

from hybrid_node.data.periodic import PeriodicConfig, make_periodic
from hybrid_node.data.spirals import SpiralConfig, make_spirals, spiral_curves


@pytest.fixture(scope="module")
def data():
    return make_spirals(SpiralConfig(), seed=0)


def test_shapes_and_time_grid(data):
    assert data.observed.shape == data.clean.shape == (1000, 100, 2)
    assert data.extrap.shape == (1000, 100, 2)
    dt = 6 * math.pi / 499  # 500 points on [0, 6 pi]
    assert torch.allclose(data.times, torch.arange(100) * dt)
    assert torch.allclose(data.extrap_times, (100 + torch.arange(100)) * dt)


def test_direction_split_is_fair(data):
    # Binomial(1000, 1/2): standard deviation of the fraction is 0.0158; allow 4 of them.
    frac = data.clockwise.float().mean().item()
    assert abs(frac - 0.5) < 4 * 0.0158


def test_noise_level(data):
    noise = (data.observed - data.clean).double()
    # 200,000 draws of N(0, 0.3^2): the sample std has a standard error of 0.3 / sqrt(400,000) ~ 5e-4.
    assert abs(noise.std().item() - 0.3) < 0.003
    assert abs(noise.mean().item()) < 0.003


def test_windows_lie_on_the_reference_curves(data):
    ts, cw, cc = spiral_curves(SpiralConfig())
    starts = data.start_index.numpy()
    assert starts.min() >= 100 and starts.max() < 500 - 100 - 100
    for i in range(0, 1000, 97):
        curve = cw if data.clockwise[i] else cc
        s = starts[i]
        assert np.allclose(data.clean[i].numpy(), curve[s : s + 100], atol=1e-5)
        assert np.allclose(data.extrap[i].numpy(), curve[s + 100 : s + 200], atol=1e-5)
    # counter-clockwise: radius b * t around (5, 0); clockwise: 50 b / (stop + 1 - t) around (-5, 0)
    assert np.allclose(np.hypot(cc[:, 0] - 5, cc[:, 1]), 0.3 * ts)
    assert np.allclose(np.hypot(cw[:, 0] + 5, cw[:, 1]), 15 / (6 * math.pi + 1 - ts))


def test_subsample_sizes(data):
    for n in (30, 50, 100):
        b = data.subsample(n, seed=1)
        assert b.times.shape == (1000, n) and bool(b.mask.all())
    b = data.subsample(30, seed=1)
    assert not torch.equal(b.times[0], b.times[1])


def test_config_validation():
    with pytest.raises(ValueError, match="ntotal"):
        SpiralConfig(ntotal=250)


def test_periodic_set():
    batch, clean = make_periodic(PeriodicConfig(n_traj=200), seed=0)
    assert batch.values.shape == (200, 100, 1)
    assert torch.equal(batch.times[0], batch.times[1])  # shared irregular times
    assert bool((batch.times[0, 1:] > batch.times[0, :-1]).all()) and float(batch.times.max()) <= 5.0
    assert abs((batch.values - clean).std().item() - 0.01) < 0.001
    own, _ = make_periodic(PeriodicConfig(n_traj=5, shared_times=False), seed=0)
    assert not torch.equal(own.times[0], own.times[1])
