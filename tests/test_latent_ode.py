"""Latent ODE, ODE-RNN and RNN baselines: ELBO pieces by hand, masks, per-sample grids, training."""

import math

import pytest
import torch
from scipy import stats

from hybrid_node.data.spirals import SpiralConfig, make_spirals
from hybrid_node.irregular import IrregularBatch, from_sequences, select
from hybrid_node.nn._solve import odeint
from hybrid_node.nn.latent_ode import (
    LatentODE,
    RecognitionRNN,
    gaussian_log_likelihood,
    normal_kl,
    poisson_process_log_likelihood,
)
from hybrid_node.nn.ode_rnn import ODERNN
from hybrid_node.nn.rnn_baselines import RNNBaseline

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(bsz=3, length=6, dim=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    times = (torch.rand(bsz, length, generator=g, dtype=dtype) * 2 + 0.05).sort(dim=1).values
    values = torch.randn(bsz, length, dim, generator=g, dtype=dtype)
    return IrregularBatch(times=times, values=values, mask=torch.ones_like(values))


# --- ELBO pieces against hand computation ---------------------------------------------------------
def test_gaussian_log_likelihood_matches_scipy_and_honours_mask():
    x = torch.tensor([[[0.3, -1.0], [2.0, 0.5]]], dtype=torch.float64)
    mu = torch.tensor([[[0.0, -0.5], [1.0, 1.5]]], dtype=torch.float64)
    mask = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    expected = stats.norm.logpdf(x.numpy(), mu.numpy(), 0.3)
    assert torch.allclose(gaussian_log_likelihood(x, mu, 0.3), torch.tensor([expected.sum()], dtype=torch.float64))
    masked = expected[0, 0].sum() + expected[0, 1, 1]
    assert torch.allclose(gaussian_log_likelihood(x, mu, 0.3, mask), torch.tensor([masked], dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        gaussian_log_likelihood(x, mu, 0.0)


def test_normal_kl_matches_closed_form_and_torch_distributions():
    mean = torch.tensor([[0.5, -1.0], [0.0, 0.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.2, -0.7], [0.0, 0.0]], dtype=torch.float64)
    var = logvar.exp()
    by_hand = 0.5 * (var + mean**2 - 1 - logvar).sum(-1)
    q = torch.distributions.Normal(mean, var.sqrt())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    assert torch.allclose(normal_kl(mean, logvar), torch.distributions.kl_divergence(q, p).sum(-1))
    assert torch.allclose(normal_kl(mean, logvar), by_hand)
    assert normal_kl(mean, logvar)[1] == 0  # q = prior


def test_poisson_log_likelihood_constant_rate():
    # k events of a homogeneous process with rate lam on a window of length T: k log lam - lam T.
    lam, T = 2.5, 3.0
    mask = torch.tensor([[[1.0], [1.0], [0.0], [1.0]]])
    log_rates = torch.full((1, 4, 1), math.log(lam))
    out = poisson_process_log_likelihood(log_rates, mask, torch.tensor([[lam * T]]))
    assert torch.allclose(out, torch.tensor([3 * math.log(lam) - lam * T]))


def test_model_poisson_term_integrates_the_intensity():
    torch.manual_seed(0)
    model = LatentODE(obs_dim=2, poisson=True, rtol=1e-9, atol=1e-11).double()
    with torch.no_grad():  # constant intensity exp(b) per channel: the integral is exp(b) * (t_end - t0)
        model.log_intensity.weight.zero_()
        model.log_intensity.bias.copy_(torch.tensor([0.3, -0.2]))
    batch = _batch()
    terms = model.elbo(batch, t0=0.0)
    rate = torch.tensor([0.3, -0.2], dtype=torch.float64).exp()
    t_end = batch.times[:, -1:]
    expected = (batch.mask * rate.log()).sum((1, 2)) - (rate * t_end).sum(-1)
    assert torch.allclose(terms.poisson, expected, rtol=1e-7)
    assert torch.allclose(terms.elbo, terms.log_likelihood - terms.kl + terms.poisson)


def test_elbo_matches_per_sample_hand_computation():
    """The union-of-times solve with gathering equals solving every sample on its own grid."""
    torch.manual_seed(0)
    model = LatentODE(obs_dim=2, rtol=1e-10, atol=1e-12).double()
    batch = _batch()
    terms = model.elbo(batch, t0=0.0, generator=torch.Generator().manual_seed(5))
    mean, logvar = model.encode(batch, 0.0)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5), dtype=mean.dtype)
    z0 = mean + (0.5 * logvar).exp() * eps
    for b in range(batch.batch_size):
        grid = torch.cat([torch.zeros(1, dtype=torch.float64), batch.times[b]])
        zs = odeint(model.dynamics, z0[b : b + 1], grid, rtol=1e-10, atol=1e-12)[1:, 0]
        x_hat = model.decoder(zs)
        loglik = stats.norm.logpdf(batch.values[b].numpy(), x_hat.detach().numpy(), 0.3).sum()
        kl = 0.5 * (logvar[b].exp() + mean[b] ** 2 - 1 - logvar[b]).sum()
        assert abs(terms.log_likelihood[b].item() - loglik) < 1e-6 * abs(loglik)
        assert torch.allclose(terms.kl[b], kl)
    assert torch.allclose(terms.loss, -(terms.log_likelihood - terms.kl).mean())


# --- masks --------------------------------------------------------------------------------------------
def test_recognition_rnn_with_full_mask_equals_plain_backward_rnn():
    torch.manual_seed(0)
    rnn = RecognitionRNN(obs_dim=2, hidden=7, latent_dim=3).double()
    batch = _batch()
    mean, logvar = rnn(batch, torch.tensor(0.0, dtype=torch.float64))
    gaps = batch.gaps(0.0)
    h = torch.zeros(3, 7, dtype=torch.float64)
    for k in reversed(range(6)):  # an unmasked Elman RNN written out by hand
        x = torch.cat([batch.values[:, k], torch.ones(3, 2, dtype=torch.float64), gaps[:, k : k + 1], h], -1)
        h = torch.tanh(x @ rnn.i2h.weight.T + rnn.i2h.bias)
    out = h @ rnn.h2o.weight.T + rnn.h2o.bias
    assert torch.allclose(torch.cat([mean, logvar], -1), out)


def test_recognition_gru_equals_hand_written_backward_gru():
    torch.manual_seed(0)
    rnn = RecognitionRNN(obs_dim=2, hidden=7, latent_dim=3, cell="gru").double()
    batch = _batch()
    mean, logvar = rnn(batch, torch.tensor(0.0, dtype=torch.float64))
    gaps = batch.gaps(0.0)
    w_ih, w_hh, b_ih, b_hh = rnn.gru.weight_ih, rnn.gru.weight_hh, rnn.gru.bias_ih, rnn.gru.bias_hh
    h = torch.zeros(3, 7, dtype=torch.float64)
    for k in reversed(range(6)):  # Cho et al. (2014) update, gates in torch's (reset, update, new) order
        x = torch.cat([batch.values[:, k], torch.ones(3, 2, dtype=torch.float64), gaps[:, k : k + 1]], -1)
        xr, xz, xn = (x @ w_ih.T + b_ih).chunk(3, -1)
        hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        h = (1 - z) * torch.tanh(xn + r * hn) + z * h
    out = h @ rnn.h2o.weight.T + rnn.h2o.bias
    assert torch.allclose(torch.cat([mean, logvar], -1), out)
    with pytest.raises(ValueError, match="cell"):
        RecognitionRNN(obs_dim=2, cell="lstm")


@pytest.mark.parametrize("encoder", ["rnn", "gru", "ode-rnn"])
def test_padding_with_masked_garbage_changes_nothing(encoder):
    torch.manual_seed(0)
    model = LatentODE(obs_dim=2, encoder=encoder, rtol=1e-9, atol=1e-11).double()
    full = _batch(bsz=2, length=5)
    short = IrregularBatch(full.times[1:, :3], full.values[1:, :3], full.mask[1:, :3])
    padded = from_sequences([full.times[0], short.times[0]], [full.values[0], short.values[0]])
    padded.values[1, 3:] = 123.0  # garbage where the mask is 0
    g = lambda: torch.Generator().manual_seed(1)
    both = model.elbo(padded, 0.0, generator=g())
    first = model.elbo(select(full, torch.tensor([0])), 0.0, generator=g())
    assert torch.allclose(both.log_likelihood[0], first.log_likelihood[0])
    mean_s, logvar_s = model.encode(short, 0.0)
    mean_p, logvar_p = model.encode(padded, 0.0)
    assert torch.allclose(mean_p[1], mean_s[0]) and torch.allclose(logvar_p[1], logvar_s[0])
    eps = torch.randn(2, 4, generator=g(), dtype=torch.float64)[1:]
    z0 = mean_s + (0.5 * logvar_s).exp() * eps
    x_hat = model.decode(z0, short.times[0], 0.0)
    ll = gaussian_log_likelihood(short.values, x_hat, 0.3)
    assert torch.allclose(both.log_likelihood[1], ll[0])


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_rnn_baseline_padding_changes_nothing(cell):
    torch.manual_seed(0)
    full = _batch(bsz=2, length=5)
    future = torch.tensor([2.2, 2.4, 2.5], dtype=torch.float64)
    for gaps in (False, True):
        model = RNNBaseline(obs_dim=2, hidden=6, use_time_gaps=gaps, cell=cell).double()
        padded = from_sequences([full.times[0], full.times[1, :3]], [full.values[0], full.values[1, :3]])
        padded.values[1, 3:] = -50.0
        alone = IrregularBatch(full.times[1:, :3], full.values[1:, :3], full.mask[1:, :3])
        assert torch.allclose(model.extrapolate(padded, future)[1], model.extrapolate(alone, future)[0])
        assert torch.allclose(model(padded)[1, :2], model(alone)[0])


def _with_unobserved_time(batch: IrregularBatch, at: int) -> IrregularBatch:
    """``batch`` with a time inserted before position ``at`` at which no channel is observed."""
    t = batch.times
    times = torch.cat([t[:, :at], (t[:, at - 1 : at] + t[:, at : at + 1]) / 2, t[:, at:]], dim=1)
    junk = torch.full_like(batch.values[:, :1], 7.0)
    values = torch.cat([batch.values[:, :at], junk, batch.values[:, at:]], dim=1)
    mask = torch.cat([batch.mask[:, :at], torch.zeros_like(junk), batch.mask[:, at:]], dim=1)
    return IrregularBatch(times, values, mask)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_rnn_baseline_ignores_a_time_without_observations(cell):
    # lengths counts observed times, not positions: the forecast starts after the last observation,
    # and the time gaps run between observations, whatever unobserved times lie between them.
    torch.manual_seed(0)
    alone = _batch(bsz=2, length=5)
    inserted = _with_unobserved_time(alone, 2)
    future = torch.tensor([2.2, 2.4, 2.5], dtype=torch.float64)
    for gaps in (False, True):
        model = RNNBaseline(obs_dim=2, hidden=6, use_time_gaps=gaps, cell=cell).double()
        torch.testing.assert_close(model.extrapolate(inserted, future), model.extrapolate(alone, future))
        torch.testing.assert_close(model(inserted)[:, [0, 1, 3, 4]], model(alone))


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_recognition_rnn_ignores_a_time_without_observations(cell):
    # The gap fed with an observation runs from the previous observed time, not the previous position.
    torch.manual_seed(0)
    rnn = RecognitionRNN(obs_dim=2, hidden=7, latent_dim=3, cell=cell).double()
    alone = _batch()
    t0 = torch.tensor(0.0, dtype=torch.float64)
    for at in (1, 4):
        for got, want in zip(rnn(_with_unobserved_time(alone, at), t0), rnn(alone, t0)):
            torch.testing.assert_close(got, want)


# --- ODE-RNN ------------------------------------------------------------------------------------------
def test_ode_rnn_per_sample_gaps_equal_separate_solves():
    torch.manual_seed(0)
    net = ODERNN(obs_dim=1, hidden=4, ode_hidden=8, rtol=1e-10, atol=1e-12).double()
    h = torch.randn(3, 4, dtype=torch.float64)
    gaps = torch.tensor([0.0, 0.4, -1.3], dtype=torch.float64)
    out = net.evolve(h, gaps)
    for b in range(3):
        t = torch.tensor([0.0, gaps[b].item()], dtype=torch.float64)
        ref = h[b] if gaps[b] == 0 else odeint(lambda t, y: net.field(y), h[b], t, rtol=1e-10, atol=1e-12)[-1]
        assert torch.allclose(out[b], ref, atol=1e-8)


def test_ode_rnn_refuses_a_start_after_the_observations_as_the_latent_encoder_does():
    # A t_start after an observation would integrate backwards in time without a word.
    net = ODERNN(obs_dim=2, hidden=4, ode_hidden=8).double()
    batch = _batch()
    late = batch.times.min() + 0.01
    for call in (lambda: net.run(batch, t_start=late), lambda: net.loss(batch, t_start=late)):
        with pytest.raises(ValueError, match="t_start must not be after"):
            call()
    with pytest.raises(ValueError, match="t_start must not be after"):
        net.run(batch, t_start=late, backwards=True)
    with pytest.raises(ValueError, match=">= t0"):
        LatentODE(obs_dim=2, encoder="ode-rnn").encode(batch.to(torch.float32), t0=late.item())
    net.run(batch, t_start=batch.times.min())  # at the first observation: fine


@pytest.mark.parametrize("encoder", ["rnn", "ode-rnn"])
def test_latent_ode_with_no_series_or_no_times(encoder):
    torch.manual_seed(0)
    model = LatentODE(obs_dim=2, encoder=encoder)
    batch = _batch(dtype=torch.float32)
    empty = select(batch, torch.zeros(3, dtype=torch.bool))
    # no output times: nothing to decode
    assert model.predict(batch, torch.zeros(0)).shape == (3, 0, 2)
    # no series: empty outputs, but a loss (a mean over the series) is refused
    assert model.predict(empty, torch.tensor([0.5, 1.0])).shape == (0, 2, 2)
    assert model.log_likelihood(torch.zeros(0, 4), empty)[0].shape == (0,)
    with pytest.raises(ValueError, match="no series"):
        model(empty)
    no_times = IrregularBatch(torch.zeros(3, 0), torch.zeros(3, 0, 2), torch.zeros(3, 0, 2))
    with pytest.raises(ValueError, match="no time points"):
        model(no_times)


# --- training -----------------------------------------------------------------------------------------
def _train(model, loss_fn, iters, lr=0.01):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(iters):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def tiny_spirals():
    return make_spirals(SpiralConfig(nspiral=16), seed=0).subsample(20, seed=0)


def test_latent_ode_trains_on_tiny_set(tiny_spirals):
    torch.manual_seed(0)
    # Fixed-step RK4 keeps the cost of this test independent of how stiff training makes the field.
    model = LatentODE(method="rk4", options={"step_size": 0.4})
    losses = _train(model, lambda: model(tiny_spirals), 20)
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_rnn_baselines_train_on_tiny_set(tiny_spirals, cell):
    for gaps in (False, True):
        torch.manual_seed(0)
        model = RNNBaseline(use_time_gaps=gaps, cell=cell)
        losses = _train(model, lambda m=model: m.loss(tiny_spirals), 30)
        assert losses[-1] < 0.5 * losses[0]


def test_ode_rnn_trains_and_extrapolates(tiny_spirals):
    torch.manual_seed(0)
    batch = select(tiny_spirals, torch.arange(8))
    batch = IrregularBatch(batch.times[:, :8], batch.values[:, :8], batch.mask[:, :8])
    model = ODERNN(obs_dim=2, hidden=8, ode_hidden=16, method="rk4", options={"step_size": 0.5})
    losses = _train(model, lambda: model.loss(batch), 25, lr=0.02)
    assert losses[-1] < 0.6 * losses[0]
    out = model.extrapolate(batch, batch.times.max() + torch.tensor([0.1, 0.2]))
    assert out.shape == (8, 2, 2)


def test_latent_variants_give_gradients(tiny_spirals):
    torch.manual_seed(0)
    batch = select(tiny_spirals, torch.arange(4))
    rk4 = {"method": "rk4", "options": {"step_size": 0.5}}
    for kwargs in ({"encoder": "ode-rnn", "ode_rnn_kwargs": rk4}, {"poisson": True}):
        model = LatentODE(method="rk4", options={"step_size": 0.5}, **kwargs)
        model(batch).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="encoder"):
        LatentODE(encoder="lstm")
    with pytest.raises(ValueError, match="cell"):
        RNNBaseline(cell="lstm")
    with pytest.raises(ValueError, match="obs_std"):
        LatentODE(obs_std=0)
    model = LatentODE()
    with pytest.raises(ValueError, match="t0"):
        model.encode(_batch(dtype=torch.float32), t0=1.0)
