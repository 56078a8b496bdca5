"""The forecasting objective: targets are the points after each window, and the losses cover them.

For training spirals the 100 points after the window are known; the forecasting objective scores the
model on them too while the encoder (and the RNNs' read-in) still sees only the n observed window
points. These tests pin down which points are scored and that each loss is exactly the sum over them.
"""

import numpy as np
import pytest
import torch
from scipy import stats

from hybrid_node.data.spirals import SpiralConfig, make_spirals, spiral_curves
from hybrid_node.experiments.spirals import (
    Future,
    SpiralsSettings,
    model_loss,
    run_experiment,
    train_one,
    with_future,
)
from hybrid_node.irregular import select
from hybrid_node.nn.latent_ode import LatentODE, normal_kl
from hybrid_node.nn.rnn_baselines import RNNBaseline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return make_spirals(SpiralConfig(nspiral=6), seed=5)


def _future(data):
    return Future(data.extrap_times, data.extrap_observed)


def test_forecast_targets_are_the_points_after_the_window(data):
    batch = data.subsample(30, seed=1)
    targets = with_future(batch, _future(data))
    assert targets.times.shape == (6, 130)
    assert torch.equal(targets.times[:, :30], batch.times) and torch.equal(targets.values[:, :30], batch.values)
    assert torch.equal(targets.times[:, 30:], data.extrap_times.expand(6, -1))
    assert bool(targets.mask.all())
    ts, cw, cc = spiral_curves(SpiralConfig())
    for i in range(6):
        s = int(data.start_index[i])
        curve = cw if data.clockwise[i] else cc
        # The future targets are the next 100 grid points of the same spiral, with observation noise.
        assert np.allclose(data.extrap_times.numpy() + ts[s], ts[s + 100 : s + 200], atol=1e-4)
        noise = targets.values[i, 30:].numpy() - curve[s + 100 : s + 200]
        assert np.allclose(noise, (data.extrap_observed - data.extrap)[i].numpy(), atol=1e-5)


def test_future_noise_level_and_independence():
    big = make_spirals(SpiralConfig(nspiral=1000), seed=0)
    noise = (big.extrap_observed - big.extrap).double()
    # 200,000 draws of N(0, 0.3^2): the sample std has a standard error of about 5e-4.
    assert abs(noise.std().item() - 0.3) < 0.003 and abs(noise.mean().item()) < 0.003
    window_noise = (big.observed - big.clean).double()
    # Independent of the window noise: correlation of 200,000 pairs has standard error ~0.0022.
    corr = np.corrcoef(noise.reshape(-1).numpy(), window_noise.reshape(-1).numpy())[0, 1]
    assert abs(corr) < 0.01


def test_with_future_rejects_bad_input(data):
    batch = data.subsample(30, seed=1)
    with pytest.raises(ValueError, match="after every observation"):
        with_future(batch, Future(data.times, data.observed))
    with pytest.raises(ValueError, match="shape"):
        with_future(batch, Future(data.extrap_times, data.extrap_observed[:3]))


def test_latent_forecast_elbo_scores_window_and_future_by_hand(data):
    # All 100 window points observed, so every series shares one grid and the hand computation can
    # decode window + future with one solve.
    torch.manual_seed(0)
    model = LatentODE(rtol=1e-9, atol=1e-10).double()
    batch = data.subsample(100, seed=2).to(torch.float64)
    future = Future(data.extrap_times.double(), data.extrap_observed.double())
    terms = model.elbo(batch, generator=torch.Generator().manual_seed(3), targets=with_future(batch, future))
    mean, logvar = model.encode(batch)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3), dtype=mean.dtype)
    z0 = mean + torch.exp(0.5 * logvar) * eps
    with torch.no_grad():
        pred = model.decode(z0, torch.cat([batch.times[0], future.times]))
    x = torch.cat([batch.values, future.values], dim=1)
    expected = stats.norm.logpdf(x.numpy(), pred.numpy(), 0.3).reshape(6, -1).sum(-1)
    assert np.allclose(terms.log_likelihood.detach().numpy(), expected, rtol=1e-7)
    assert torch.allclose(terms.kl, normal_kl(mean, logvar))  # the encoder saw only the window


def test_future_points_move_the_loss_but_not_the_encoder(data):
    torch.manual_seed(0)
    model = LatentODE(rtol=1e-6, atol=1e-8).double()
    batch = data.subsample(30, seed=1).to(torch.float64)
    values = data.extrap_observed.double().clone().requires_grad_(True)
    future = Future(data.extrap_times.double(), values)
    loss = model_loss("latent_ode", model, batch, future, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(loss, values)
    assert bool((grad.abs().sum(-1) > 0).all())  # every one of the 100 future points of every series
    window_only = model_loss("latent_ode", model, batch, None, generator=torch.Generator().manual_seed(0))
    assert float(loss.detach()) > float(window_only.detach())  # more scored points: a larger negative log-likelihood


def test_rnn_forecast_loss_by_hand(data):
    torch.manual_seed(0)
    model = RNNBaseline(use_time_gaps=True).double()
    batch = data.subsample(30, seed=1).to(torch.float64)
    future = data.extrap_observed.double()
    times = data.extrap_times.double()
    loss = model.forecast_loss(batch, times, future)
    one_step = model(batch)  # predictions of observations 1..29
    ahead = model.extrapolate(batch, times)  # free-running, as at test time
    sq = ((one_step - batch.values[:, 1:]) ** 2).sum() + ((ahead - future) ** 2).sum()
    assert torch.allclose(loss, sq / (6 * 29 * 2 + 6 * 100 * 2))
    # The forecast part is trained through the rollout: its gradient differs from the window loss's.
    g_fc = torch.autograd.grad(loss, model.cell.weight_ih)[0]
    g_win = torch.autograd.grad(model.loss(batch), model.cell.weight_ih)[0]
    assert not torch.allclose(g_fc, g_win)
    with pytest.raises(ValueError, match="shape"):
        model.forecast_loss(batch, times, future[:, :5])


@pytest.mark.parametrize("name", ["latent_ode", "rnn"])
def test_forecast_training_lowers_the_forecast_loss(tmp_path, name):
    big = make_spirals(SpiralConfig(nspiral=64), seed=0)
    train, future = big.subsample(30, seed=0), _future(big)
    s = SpiralsSettings(
        ns=(30,),
        iters=25,
        rnn_iters=25,
        batch_size=64,
        lr=0.02,
        rtol=1e-4,
        atol=1e-5,
        val_every=100,
        lr_decay="none",
        select="last",
    )
    model = train_one(name, 30, s, train, tmp_path / "m.pt", False, lambda k, loss: None, None, future)
    first, last = np.mean(model.history[:3]), np.mean(model.history[-3:])
    assert last < 0.8 * first, (first, last)


def test_minibatches_select_the_matching_future_rows(data):
    future = _future(data)
    index = torch.tensor([4, 1])
    batch = select(data.subsample(30, seed=1), index)
    targets = with_future(batch, future.select(index))
    assert torch.equal(targets.values[:, 30:], data.extrap_observed[index])


@pytest.mark.parametrize("objective", ["window", "forecast"])
def test_experiment_records_objective_and_breakdown(tmp_path, objective):
    s = SpiralsSettings(
        ns=(10,),
        models=("latent_ode", "rnn"),
        iters=2,
        rnn_iters=2,
        nspiral=8,
        ntest=8,
        batch_size=8,
        nval=4,
        val_every=1,
        rtol=1e-3,
        atol=1e-4,
        objective=objective,
    )
    results = run_experiment(s, tmp_path / objective, plots=False, progress=False)
    assert results["settings"]["objective"] == objective
    entry = results["rmse"]["latent_ode/n=10"]
    assert set(entry["rmse_direction"]) == {"clockwise", "counter_clockwise"}
    assert set(entry["rmse_first"]) == {10, 25, 50}
    # The overall RMSE is the pooled RMSE of the parts.
    parts = [v for v in entry["rmse_direction"].values() if v is not None]
    assert min(parts) - 1e-6 <= entry["rmse"] <= max(parts) + 1e-6
    assert "clockwise" in (tmp_path / objective / "table2.md").read_text()


def test_rnn_forecast_variants_score_the_future_points(data):
    torch.manual_seed(0)
    model = RNNBaseline(use_time_gaps=True).double()
    batch = data.subsample(30, seed=1).to(torch.float64)
    future = Future(data.extrap_times.double(), data.extrap_observed.double())
    teacher = model_loss("rnn_gaps", model, batch, future, rnn_forecast="teacher")
    # Teacher forcing: one-step-ahead error over the 129 + 100 transitions of window + future, each
    # predicted from the true previous point and the gap to the next one.
    series = with_future(batch, future)
    pred = model(series)
    by_hand = ((pred - series.values[:, 1:]) ** 2).mean()
    assert torch.allclose(teacher, by_hand)
    assert pred.shape == (6, 129, 2)
    rollout = model_loss("rnn_gaps", model, batch, future, rnn_forecast="rollout")
    assert torch.allclose(rollout, model.forecast_loss(batch, future.times, future.values))
    assert torch.allclose(model_loss("rnn_gaps", model, batch, None), model.loss(batch))
