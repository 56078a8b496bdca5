"""Statistics of the spirals generator and the periodic toy set."""

import math

import numpy as np
import pytest
import torch

from hybrid_node.data.periodic import PeriodicConfig, make_periodic
from hybrid_node.data.spirals import SpiralConfig, bayes_forecast, make_spirals, spiral_curves
from hybrid_node.irregular import IrregularBatch


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


@pytest.mark.parametrize("field", ["noise_std", "b", "a", "stop"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_spiral_settings_are_refused(field, value):
    # Before, these were accepted and every generated series was NaN.
    with pytest.raises(ValueError, match="finite"):
        SpiralConfig(**{field: value})


@pytest.mark.parametrize("field", ["noise_std", "max_t", "amplitude"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_periodic_settings_are_refused(field, value):
    with pytest.raises(ValueError, match="finite"):
        PeriodicConfig(**{field: value})


def test_periodic_set():
    batch, clean = make_periodic(PeriodicConfig(n_traj=200), seed=0)
    assert batch.values.shape == (200, 100, 1)
    assert torch.equal(batch.times[0], batch.times[1])  # shared irregular times
    assert bool((batch.times[0, 1:] > batch.times[0, :-1]).all()) and float(batch.times.max()) <= 5.0
    assert abs((batch.values - clean).std().item() - 0.01) < 0.001
    own, _ = make_periodic(PeriodicConfig(n_traj=5, shared_times=False), seed=0)
    assert not torch.equal(own.times[0], own.times[1])


def test_bayes_forecast_against_brute_force_posterior():
    cfg = SpiralConfig(nspiral=6)
    data = make_spirals(cfg, seed=3)
    batch = data.subsample(10, seed=4)
    ts, cw, cc = spiral_curves(cfg)
    k = np.round(batch.times.numpy() / (ts[1] - ts[0])).astype(int)  # (B, L) window indices
    expected = []
    for b in range(6):
        x = batch.values[b].double().numpy()
        logp, fut = [], []
        for curve in (cw, cc):
            for start in range(cfg.nsample, cfg.ntotal - cfg.nsample - cfg.nextrap):
                resid = x - curve[start + k[b]]
                logp.append(-0.5 * (resid**2).sum() / cfg.noise_std**2)
                fut.append(curve[start + cfg.nsample : start + cfg.nsample + cfg.nextrap])
        w = np.exp(np.array(logp) - max(logp))
        expected.append(np.tensordot(w / w.sum(), np.array(fut), axes=1))
    got = bayes_forecast(cfg, batch, chunk=4)
    np.testing.assert_allclose(got.numpy(), np.array(expected), atol=1e-5)
    assert torch.equal(got, bayes_forecast(cfg, batch, chunk=100))


def test_bayes_forecast_finds_the_true_future_at_low_noise():
    cfg = SpiralConfig(nspiral=50, noise_std=0.01)
    data = make_spirals(cfg, seed=1)
    # Neighbouring starts differ by ~0.1 per point, i.e. ~50 nats per observed point at this noise.
    assert torch.allclose(bayes_forecast(cfg, data.subsample(10, seed=2)), data.extrap, atol=1e-4)


def test_bayes_forecast_rejects_bad_input():
    data = make_spirals(SpiralConfig(nspiral=3), seed=0)
    batch = data.subsample(5, seed=0)
    with pytest.raises(ValueError, match="noise_std > 0"):
        bayes_forecast(SpiralConfig(noise_std=0.0), batch)
    shifted = IrregularBatch(batch.times + 0.01, batch.values, batch.mask)
    with pytest.raises(ValueError, match="grid"):
        bayes_forecast(SpiralConfig(), shifted)


@pytest.mark.parametrize("field", ["nspiral", "ntotal", "nsample", "nextrap"])
@pytest.mark.parametrize("value", [100.0, True])
def test_non_integer_spiral_counts_are_refused(field, value):
    # Before, nsample=100.0 failed inside make_spirals with "arrays used as indices must be of integer type".
    with pytest.raises(TypeError, match=field):
        SpiralConfig(**{field: value})


@pytest.mark.parametrize("field", ["n_traj", "n_points"])
def test_non_integer_periodic_counts_are_refused(field):
    # Before, n_traj=2.5 failed inside make_periodic with "expand() takes 1 positional argument".
    with pytest.raises(TypeError, match=field):
        PeriodicConfig(**{field: 10.0})


@pytest.mark.parametrize("freq_range", [(0.3,), (0.1, 0.2, 0.3), 0.3])
def test_periodic_freq_range_must_be_a_pair(freq_range):
    # Before: "not enough values to unpack" or "cannot unpack non-iterable float object".
    with pytest.raises(ValueError, match="freq_range must be a pair"):
        PeriodicConfig(freq_range=freq_range)


def test_numpy_integer_counts_are_accepted():
    data = make_spirals(SpiralConfig(nspiral=np.int64(3), nsample=np.int64(10), ntotal=np.int64(150)), seed=0)
    assert data.observed.shape == (3, 10, 2)
    batch, _ = make_periodic(PeriodicConfig(n_traj=np.int64(3), n_points=np.int64(7)), seed=0)
    assert batch.values.shape == (3, 7, 1)
