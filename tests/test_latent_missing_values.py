"""Missing values: whatever an unobserved entry holds (NaN, the usual marker of a missing value,
included) must change no loss, encoding or gradient of the irregular-series models."""

import pytest
import torch

from hybrid_node.data.spirals import SpiralConfig, bayes_forecast, make_spirals
from hybrid_node.irregular import IrregularBatch
from hybrid_node.nn.latent_ode import LatentODE, gaussian_log_likelihood
from hybrid_node.nn.ode_rnn import ODERNN
from hybrid_node.nn.rnn_baselines import RNNBaseline

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch_with_missing(fill: float) -> IrregularBatch:
    """Two series on their own grids with some channels missing; ``fill`` is what the missing entries hold."""
    g = torch.Generator().manual_seed(0)
    times = (torch.rand(2, 5, generator=g, dtype=torch.float64) * 2 + 0.05).sort(dim=1).values
    values = torch.randn(2, 5, 2, generator=g, dtype=torch.float64)
    mask = torch.ones_like(values)
    mask[0, 1, 0] = mask[1, 3, 1] = mask[1, 0] = 0.0  # one channel missing twice, one time missing outright
    values = torch.where(mask > 0, values, torch.full_like(values, fill))
    return IrregularBatch(times=times, values=values, mask=mask)


def test_gaussian_log_likelihood_skips_nan_at_unobserved_entries():
    batch = _batch_with_missing(float("nan"))
    mean = torch.zeros_like(batch.values, requires_grad=True)
    out = gaussian_log_likelihood(batch.values, mean, 0.5, batch.mask)
    # independent reference: torch.distributions over the observed entries only
    normal = torch.distributions.Normal(0.0, 0.5)
    expected = [normal.log_prob(batch.values[b][batch.mask[b] > 0]).sum() for b in range(2)]
    torch.testing.assert_close(out, torch.stack(expected))
    (grad,) = torch.autograd.grad(out.sum(), mean)
    assert bool(grad.isfinite().all()) and bool((grad[batch.mask == 0] == 0).all())


def _losses(fill: float) -> dict[str, torch.Tensor]:
    batch = _batch_with_missing(fill)
    future = torch.tensor([2.2, 2.5], dtype=torch.float64)
    out = {}
    for encoder in ("rnn", "gru", "ode-rnn"):
        torch.manual_seed(0)
        model = LatentODE(obs_dim=2, encoder=encoder, rtol=1e-9, atol=1e-11).double()
        out[f"latent-{encoder}"] = model.elbo(batch, 0.0, generator=torch.Generator().manual_seed(1)).loss
    torch.manual_seed(0)
    out["ode-rnn"] = ODERNN(2, hidden=5, ode_hidden=6).double().loss(batch, 0.0)
    for cell in ("rnn", "gru"):
        torch.manual_seed(0)
        rnn = RNNBaseline(2, hidden=5, use_time_gaps=True, cell=cell).double()
        out[f"baseline-{cell}"] = rnn.loss(batch)
        out[f"forecast-{cell}"] = rnn.forecast_loss(batch, future, torch.zeros(2, 2, 2, dtype=torch.float64))
    return out


def test_models_ignore_what_unobserved_entries_hold():
    zero, nan, huge = _losses(0.0), _losses(float("nan")), _losses(1e6)
    for name in zero:
        # the same arithmetic on the same observed numbers: bit-identical, whatever was missing
        assert torch.equal(nan[name], zero[name]) and torch.equal(huge[name], zero[name]), name


def test_latent_ode_gradients_stay_finite_with_nan_at_unobserved_entries():
    torch.manual_seed(0)
    model = LatentODE(obs_dim=2, encoder="gru").double()
    model.elbo(_batch_with_missing(float("nan")), 0.0).loss.backward()
    assert all(bool(p.grad.isfinite().all()) for p in model.parameters())


def test_bayes_forecast_ignores_nan_at_unobserved_entries():
    config = SpiralConfig(nspiral=3, ntotal=120, nsample=20, nextrap=10)
    batch = make_spirals(config, seed=0).subsample(8, seed=1)
    mask = batch.mask.clone()
    mask[:, 2] = 0.0
    missing = IrregularBatch(batch.times, torch.where(mask > 0, batch.values, float("nan")), mask)
    kept = IrregularBatch(batch.times, batch.values, mask)
    assert torch.equal(bayes_forecast(config, missing), bayes_forecast(config, kept))
