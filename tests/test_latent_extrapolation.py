"""Extrapolation bookkeeping of the latent ODE on the spirals: targets, clocks and time offsets.

The spirals score is the RMSE on the 100 grid points after each window. These tests pin down that the
targets are those points on the training clock, and that the model decodes them from z0 at t0 = 0 (the
window start) along the same latent trajectory that reconstructs the window.
"""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from hybrid_node.data.spirals import SpiralConfig, make_spirals, spiral_curves
from hybrid_node.nn.latent_ode import LatentODE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return make_spirals(SpiralConfig(nspiral=8), seed=3)


def _model():
    torch.manual_seed(0)
    return LatentODE(rtol=1e-10, atol=1e-12).double()


def test_targets_are_the_next_grid_points_on_the_training_clock(data):
    ts, cw, cc = spiral_curves(SpiralConfig())
    dt = ts[1] - ts[0]
    # One clock for window and targets: the first target is one grid step after the last window point.
    assert torch.allclose(data.extrap_times[0] - data.times[-1], torch.tensor(dt, dtype=torch.float32))
    for i in range(data.observed.shape[0]):
        s = int(data.start_index[i])
        curve = cw if data.clockwise[i] else cc
        # The window's relative times are the grid times shifted by the start time.
        assert np.allclose(data.times.numpy() + ts[s], ts[s : s + 100], atol=1e-5)
        assert np.allclose(data.extrap_times.numpy() + ts[s], ts[s + 100 : s + 200], atol=1e-4)
        assert np.allclose(data.extrap[i].numpy(), curve[s + 100 : s + 200], atol=1e-5)


def test_extrapolation_continues_the_reconstruction(data):
    model = _model()
    batch = data.subsample(30, seed=0).to(torch.float64)
    times, future = data.times.double(), data.extrap_times.double()
    both = model.predict(batch, torch.cat([times, future]))
    assert torch.allclose(model.predict(batch, times), both[:, :100], atol=1e-7)
    assert torch.allclose(model.predict(batch, future), both[:, 100:], atol=1e-7)


def test_decoder_uses_absolute_times_from_t0(data):
    # Reference: scipy's DOP853 solve of the same latent field from z0 at t = 0 (not at the first
    # requested time), decoded by the same decoder. A solve restarted at the first extrapolation time
    # would differ by the whole window's worth of flow.
    model = _model()
    batch = data.subsample(30, seed=0).to(torch.float64)
    future = data.extrap_times.double()
    mean, _ = model.encode(batch)
    with torch.no_grad():

        def field(t, z):
            return model.dynamics(t, torch.as_tensor(z).reshape(mean.shape)).reshape(-1).numpy()

        sol = solve_ivp(
            field,
            (0.0, float(future[-1])),
            mean.reshape(-1).numpy(),
            method="DOP853",
            t_eval=future.numpy(),
            rtol=1e-11,
            atol=1e-12,
        )
        z = torch.as_tensor(sol.y.T).reshape(len(future), *mean.shape)
        expected = model.decoder(z).transpose(0, 1)
    got = model.predict(batch, future)
    assert torch.allclose(got, expected, atol=1e-6)
