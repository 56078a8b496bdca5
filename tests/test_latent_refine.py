"""Refining a latent ODE's z0 towards the posterior mode (LatentODE.refine_z0)."""

import pytest
import torch

from hybrid_node.irregular import IrregularBatch
from hybrid_node.nn.latent_ode import LatentODE

pytestmark = pytest.mark.usefixtures("one_thread")


def _model_and_batch(poisson=False):
    torch.manual_seed(0)
    model = LatentODE(rtol=1e-9, atol=1e-11, poisson=poisson).double()
    g = torch.Generator().manual_seed(1)
    times = (torch.rand(3, 12, generator=g, dtype=torch.float64) * 2 + 0.05).sort(dim=1).values
    # Observations decoded by the model from known z0 (per series), plus noise at the model's std.
    with torch.no_grad():
        z_true = torch.randn(3, 4, generator=g, dtype=torch.float64)
        clean = torch.stack([model.decode(z_true[i : i + 1], times[i])[0] for i in range(3)])
    values = clean + 0.3 * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    return model, IrregularBatch(times=times, values=values, mask=torch.ones_like(values))


def _neg_log_posterior(model, batch, z0):
    loglik, poisson = model.log_likelihood(z0, batch)
    return -(loglik - 0.5 * (z0**2).sum(-1) + (0 if poisson is None else poisson))


def test_refinement_reaches_the_analytic_mode_of_a_linear_gaussian_model():
    # With zero dynamics (z(t) = z0) and a linear decoder x = W z0 + b, the posterior of z0 under the
    # prior N(0, I) and noise std s is Gaussian with mode (I + T W^T W / s^2)^-1 W^T sum_t (x_t - b) / s^2.
    model, batch = _model_and_batch()
    for p in model.dynamics.parameters():
        p.data.zero_()
    model.decoder = torch.nn.Linear(4, 2).double()
    w, b, s = model.decoder.weight.detach(), model.decoder.bias.detach(), model.obs_std
    steps = batch.times.shape[1]
    precision = torch.eye(4, dtype=torch.float64) + steps * w.T @ w / s**2
    mode = torch.linalg.solve(precision, (w.T @ (batch.values - b).sum(1).T).T.unsqueeze(-1) / s**2).squeeze(-1)
    *_, z0 = model.refine_z0(batch, 600)
    start = model.encode(batch)[0].detach()
    assert (z0 - mode).abs().max() < 1e-5 and (start - mode).abs().max() > 0.1


def test_refinement_path_starts_at_the_encoder_mean_and_leaves_weights_alone():
    model, batch = _model_and_batch(poisson=True)
    before = [p.detach().clone() for p in model.parameters()]
    path = list(model.refine_z0(batch, 5))
    assert len(path) == 6 and torch.equal(path[0], model.encode(batch)[0].detach())
    with torch.no_grad():
        losses = [float(_neg_log_posterior(model, batch, z).sum()) for z in path]
    assert losses[-1] < losses[0]  # the Poisson term is part of the posterior it climbs
    assert all(torch.equal(p, q) and p.grad is None for p, q in zip(model.parameters(), before))
    times = torch.linspace(0.1, 3.0, 7, dtype=torch.float64)
    assert torch.allclose(model.predict(batch, times, refine_steps=5), model.decode(path[-1], times))
    assert torch.equal(model.predict(batch, times, refine_steps=0), model.predict(batch, times))


def test_refinement_rejects_bad_arguments():
    model, batch = _model_and_batch()
    with pytest.raises(ValueError, match="steps >= 0"):
        model.refine_z0(batch, -1)
    with pytest.raises(ValueError, match="lr > 0"):
        model.refine_z0(batch, 3, lr=0.0)
    with pytest.raises(ValueError, match="not both"):
        model.predict(batch, batch.times[0], sample=True, refine_steps=2)
    batch.values[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):  # the solve refuses the encoder's NaN z0
        list(model.refine_z0(batch, 2))
