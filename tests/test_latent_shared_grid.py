"""Series put on one shared grid (the union of a batch's times, with masks marking each series' own
points, as irregular data sets are often stored): a series must be read as it is on its own grid, not
changed by the other series' times."""

import pytest
import torch

from hybrid_node.irregular import IrregularBatch, from_sequences
from hybrid_node.nn.latent_ode import LatentODE
from hybrid_node.nn.ode_rnn import ODERNN
from hybrid_node.nn.rnn_baselines import RNNBaseline

pytestmark = pytest.mark.usefixtures("one_thread")

# the hidden-state solves run at rtol 1e-10, atol 1e-12 in float64; moving through another series'
# times splits a solve in two, which agrees with the single solve to about that tolerance
TOL = dict(rtol=1e-7, atol=1e-9)
SOLVER = dict(rtol=1e-10, atol=1e-12)


def _own_and_shared() -> tuple[list[IrregularBatch], IrregularBatch, list[torch.Tensor]]:
    """Two series alone, the same two on their union grid, and each one's positions on that grid."""
    g = torch.Generator().manual_seed(0)
    times = [torch.tensor([0.3, 0.7, 1.1], dtype=torch.float64), torch.tensor([0.1, 0.5, 1.6], dtype=torch.float64)]
    values = [torch.randn(3, 2, generator=g, dtype=torch.float64) for _ in times]
    alone = [from_sequences([t], [v]) for t, v in zip(times, values)]
    union = torch.cat(times).sort().values
    positions = [torch.searchsorted(union, t) for t in times]
    shared_values = torch.full((2, union.numel(), 2), float("nan"), dtype=torch.float64)
    mask = torch.zeros_like(shared_values)
    for b, (pos, v) in enumerate(zip(positions, values)):
        shared_values[b, pos] = v
        mask[b, pos] = 1.0
    shared = IrregularBatch(times=union.expand(2, -1).clone(), values=shared_values, mask=mask)
    return alone, shared, positions


def test_ode_rnn_encoder_reads_a_series_on_a_shared_grid_as_on_its_own():
    # Series 0 ends at 1.1 but the grid at 1.6: backwards, h must start at 0 at 1.1, not at 1.6.
    torch.manual_seed(0)
    model = LatentODE(obs_dim=2, encoder="ode-rnn", ode_rnn_kwargs=SOLVER).double()
    alone, shared, _ = _own_and_shared()
    mean, logvar = model.encode(shared, 0.0)
    for b in range(2):
        mean_b, logvar_b = model.encode(alone[b], 0.0)
        torch.testing.assert_close(mean[b : b + 1], mean_b, **TOL)
        torch.testing.assert_close(logvar[b : b + 1], logvar_b, **TOL)


def test_ode_rnn_without_t_start_starts_at_each_series_first_observation():
    # Series 0 starts at 0.3 but the grid at 0.1: forwards, h must start at 0 at 0.3.
    torch.manual_seed(0)
    model = ODERNN(2, hidden=5, ode_hidden=6, **SOLVER).double()
    alone, shared, positions = _own_and_shared()
    pred = model(shared)
    backwards = model.run(shared, backwards=True)[0]
    for b in range(2):
        torch.testing.assert_close(pred[b, positions[b]], model(alone[b])[0], **TOL)
        torch.testing.assert_close(backwards[b], model.run(alone[b], backwards=True)[0][0], **TOL)
    # the loss skips each series' first observation, wherever it lies on the grid
    both = from_sequences([a.times[0] for a in alone], [a.values[0] for a in alone])
    torch.testing.assert_close(model.loss(shared), model.loss(both), **TOL)


def test_ode_rnn_leaves_a_series_without_observations_at_zero():
    torch.manual_seed(0)
    model = ODERNN(2, hidden=5, ode_hidden=6).double()
    _, shared, _ = _own_and_shared()
    empty = IrregularBatch(shared.times, shared.values, torch.zeros_like(shared.mask))
    for backwards in (False, True):
        h, priors = model.run(empty, backwards=backwards)
        assert torch.equal(h, torch.zeros_like(h)) and torch.equal(priors, torch.zeros_like(priors))


def test_poisson_window_of_a_series_on_a_shared_grid_ends_at_its_last_observation():
    # Series 0 ends at 1.1 but the grid at 1.6: its intensity is integrated up to 1.1, as on its own grid,
    # not up to the other series' last time.
    torch.manual_seed(0)
    model = LatentODE(obs_dim=2, poisson=True, **SOLVER).double()
    alone, shared, _ = _own_and_shared()
    z0 = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gauss, poisson = model.log_likelihood(z0, shared)
    for b in range(2):
        gauss_b, poisson_b = model.log_likelihood(z0[b : b + 1], alone[b])
        torch.testing.assert_close(gauss[b : b + 1], gauss_b, **TOL)
        torch.testing.assert_close(poisson[b : b + 1], poisson_b, **TOL)
    # a series without observations has an empty window: no events and nothing integrated
    empty = IrregularBatch(shared.times, shared.values, torch.zeros_like(shared.mask))
    _, poisson = model.log_likelihood(z0, empty)
    assert torch.equal(poisson, torch.zeros_like(poisson))


@pytest.mark.parametrize("gaps", [False, True])
def test_rnn_baseline_losses_skip_a_series_first_observation_wherever_it_lies(gaps):
    # Series 0 starts at 0.3 but the grid at 0.1: its first observation comes after a time at which it
    # sees nothing, and must not be scored against the prediction the zero state makes before any input.
    torch.manual_seed(0)
    model = RNNBaseline(obs_dim=2, hidden=5, use_time_gaps=gaps).double()
    alone, shared, _ = _own_and_shared()
    both = from_sequences([a.times[0] for a in alone], [a.values[0] for a in alone])
    torch.testing.assert_close(model.loss(shared), model.loss(both), rtol=1e-12, atol=1e-14)  # the same terms
    ahead = torch.tensor([1.8, 2.0], dtype=torch.float64)
    future = torch.randn(2, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(
        model.forecast_loss(shared, ahead, future), model.forecast_loss(both, ahead, future), rtol=1e-12, atol=1e-14
    )
