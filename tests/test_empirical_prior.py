"""The empirical (aggregate-posterior) prior on a latent ODE's z0 (hybrid_node.nn.empirical_prior)."""

import pytest
import torch

from hybrid_node.irregular import IrregularBatch
from hybrid_node.nn.empirical_prior import EmpiricalPrior
from hybrid_node.nn.latent_ode import LatentODE

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(poisson=False, points=12, noise=0.3):
    """A model, 3 series decoded from known z0s plus noise (series 2 has padding), anchors holding
    those z0s at rows 0, 2, 4 between random others."""
    torch.manual_seed(0)
    model = LatentODE(rtol=1e-9, atol=1e-11, poisson=poisson, obs_std=max(noise, 0.05)).double()
    g = torch.Generator().manual_seed(1)
    times = (torch.rand(3, points, generator=g, dtype=torch.float64) * 2 + 0.05).sort(dim=1).values
    z_true = 2 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        clean = torch.stack([model.decode(z_true[i : i + 1], times[i])[0] for i in range(3)])
    values = clean + noise * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    mask = torch.ones_like(values)
    keep = points * 2 // 3
    mask[2, keep:] = 0.0
    times[2, keep:] = times[2, keep - 1]  # padding repeats the last observed time
    values[2, keep:] = 1e3  # ignored entries: any value
    batch = IrregularBatch(times=times, values=values, mask=mask)
    others = 2 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    anchors = torch.stack([z_true[0], others[0], z_true[1], others[1], z_true[2], others[2]])
    return model, batch, EmpiricalPrior(anchors)


@pytest.mark.parametrize("poisson", [False, True])
def test_log_likelihoods_match_the_model_series_by_series(poisson):
    model, batch, prior = _setup(poisson)
    got = prior.log_likelihoods(model, batch, chunk=2)
    with torch.no_grad():
        for i, z in enumerate(prior.anchors):
            loglik, extra = model.log_likelihood(z.expand(3, -1), batch)
            want = loglik + (0 if extra is None else extra)
            # Separate adaptive solves: equal up to the solver tolerance; a wiring error is O(1).
            assert torch.allclose(got[:, i], want, rtol=1e-6, atol=1e-6), (i, got[:, i] - want)


def test_posterior_is_bayes_rule_and_predict_its_weighted_mean():
    model, batch, prior = _setup()
    ll = prior.log_likelihoods(model, batch)
    weights = prior.posterior(model, batch)
    assert torch.allclose(weights.sum(-1), torch.ones(3, dtype=torch.float64))
    # Equal prior masses: the odds of two anchors are their likelihood ratio.
    assert torch.allclose(weights[:, 0] / weights[:, 1], (ll[:, 0] - ll[:, 1]).exp())
    times = torch.linspace(0.0, 3.0, 9, dtype=torch.float64)
    with torch.no_grad():
        paths = torch.stack([model.decode(z[None], times)[0] for z in prior.anchors])  # solved one by one
    want = (weights[:, :, None, None] * paths[None]).sum(1)
    assert torch.allclose(prior.predict(model, batch, times), want, atol=1e-7)


def test_posterior_concentrates_on_the_anchor_that_generated_each_series():
    model, batch, prior = _setup(points=60, noise=0.05)
    weights = prior.posterior(model, batch)
    assert torch.equal(weights.argmax(-1), torch.tensor([0, 2, 4]))
    assert bool((weights.max(-1).values > 0.99).all())


def test_one_anchor_predicts_its_own_trajectory():
    model, batch, prior = _setup()
    single = EmpiricalPrior(prior.anchors[1:2])
    times = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    with torch.no_grad():
        want = model.decode(prior.anchors[1:2], times).expand(3, -1, -1)
    assert torch.allclose(single.predict(model, batch, times), want)


def test_from_series_uses_the_encoder_means_or_their_refinement():
    model, batch, _ = _setup()
    assert torch.equal(EmpiricalPrior.from_series(model, batch).anchors, model.encode(batch)[0].detach())
    path = list(model.refine_z0(batch, 3))
    assert torch.equal(EmpiricalPrior.from_series(model, batch, refine_steps=3).anchors, path[-1])


def test_bad_anchors_are_rejected():
    model, batch, _ = _setup()
    for bad in (torch.zeros(0, 4), torch.zeros(4), torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), [[0.0] * 4]):
        with pytest.raises(ValueError, match="anchors"):
            EmpiricalPrior(bad)
    with pytest.raises(ValueError, match="latent dimensions"):
        EmpiricalPrior(torch.zeros(2, 3, dtype=torch.float64)).posterior(model, batch)


def test_float64_times_of_float32_series_that_round_to_one_time_are_scored_as_by_the_model():
    # 1.0 and 1.0 + 1e-9 are two float64 times but one float32 time: the union grid held both, and
    # the float32 solve raised "t must be strictly increasing" (LatentODE.log_likelihood casts first)
    torch.manual_seed(0)
    model = LatentODE(rtol=1e-7, atol=1e-9)
    times = torch.tensor([[0.5, 1.0], [0.7, 1.0 + 1e-9]], dtype=torch.float64)
    values = torch.randn(2, 2, 2)
    batch = IrregularBatch(times=times, values=values, mask=torch.ones_like(values))
    prior = EmpiricalPrior(torch.randn(3, 4))
    with torch.no_grad():
        want = torch.stack([model.log_likelihood(z.expand(2, -1), batch)[0] for z in prior.anchors], dim=1)
    # float32 solves, batched differently: equal to a few float32 ulps of the O(10) log-likelihoods
    torch.testing.assert_close(prior.log_likelihoods(model, batch), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="chunk must be positive"):
        prior.log_likelihoods(model, batch, chunk=0)
