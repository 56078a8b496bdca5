"""Times given to the latent ODE: a finer dtype than the model's, and shapes it cannot take."""

import pytest
import torch

from hybrid_node.irregular import from_sequences
from hybrid_node.nn.latent_ode import LatentODE
from hybrid_node.nn.ode_rnn import ODERNN
from hybrid_node.nn.rnn_baselines import RNNBaseline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_float64_times_that_round_to_one_float32_time_score_as_that_time():
    # 40 + 1e-7 and 40 + 2e-7 are distinct in float64 but one float32 number (its spacing at 40 is
    # 3.8e-6): the float32 solve cannot tell them apart, so they must share one point of its grid
    # instead of making two equal grid times (which the solver refuses).
    torch.manual_seed(0)
    model = LatentODE(obs_dim=2)
    g = torch.Generator().manual_seed(0)
    values = [torch.randn(2, 2, generator=g), torch.randn(2, 2, generator=g)]
    fine = [torch.tensor([1.0, 40 + 1e-7], dtype=torch.float64), torch.tensor([0.5, 40 + 2e-7], dtype=torch.float64)]
    assert float(fine[0][1]) != float(fine[1][1]) and float(fine[0][1].float()) == float(fine[1][1].float())
    coarse = [t.float() for t in fine]
    got = model.elbo(from_sequences(fine, values), 0.0, generator=torch.Generator().manual_seed(1))
    want = model.elbo(from_sequences(coarse, values), 0.0, generator=torch.Generator().manual_seed(1))
    # the same float32 arithmetic on the same float32 times
    assert torch.equal(got.log_likelihood, want.log_likelihood) and torch.equal(got.kl, want.kl)
    # a first time after t0 in float64 but equal to it in float32: the solve starts there
    z0 = torch.zeros(2, 4)
    times = torch.tensor([1 + 1e-9, 2.0], dtype=torch.float64)
    torch.testing.assert_close(model.decode(z0, times, 1.0), model.decode(z0, times.float(), 1.0), rtol=0, atol=0)


def test_latent_ode_refuses_per_sample_decode_times_and_start_times():
    model = LatentODE(obs_dim=2)
    batch = from_sequences([torch.tensor([0.5, 1.0]), torch.tensor([0.2, 0.7])], [torch.zeros(2, 2)] * 2)
    with pytest.raises(ValueError, match=r"times must be 1-D \(T,\).*got shape \(2, 2\).*IrregularBatch"):
        model.decode(torch.zeros(2, 4), batch.times)
    # two series of two points: a (B,) t0 broadcast against the time axis without complaint
    for call in (lambda t0: model.elbo(batch, t0), lambda t0: model.predict(batch, torch.tensor([1.5]), t0)):
        with pytest.raises(ValueError, match=r"t0 must be one time shared by the whole batch; got shape \(2,\)"):
            call(torch.tensor([0.0, 0.1]))


def _two_series():
    g = torch.Generator().manual_seed(0)
    return from_sequences(
        [torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.3, 0.4])],
        [torch.randn(3, 2, generator=g), torch.randn(2, 2, generator=g)],
    )


@pytest.mark.parametrize("model", [ODERNN(2, hidden=4, ode_hidden=5), RNNBaseline(2, hidden=4, use_time_gaps=True)])
def test_baselines_refuse_extrapolation_times_they_would_misread(model):
    batch = _two_series()
    # per-sample rows were read as one shared time per step (sample 0 got 1.5 then 1.2)
    with pytest.raises(ValueError, match=r"1-D \(T,\), shared by every sample; got shape \(2, 2\)"):
        model.extrapolate(batch, torch.tensor([[1.5, 1.7], [1.2, 1.3]]))
    # a decreasing time fed a negative gap (or evolved backwards past the forecasts already made)
    with pytest.raises(ValueError, match="sorted"):
        model.extrapolate(batch, torch.tensor([1.5, 1.2]))
    with pytest.raises(ValueError, match="precede the last observation"):
        model.extrapolate(batch, torch.tensor([0.8, 1.2]))


@pytest.mark.parametrize("model", [ODERNN(2, hidden=4, ode_hidden=5), RNNBaseline(2, hidden=4, use_time_gaps=True)])
def test_baselines_extrapolate_to_no_times(model):
    batch = _two_series()
    assert model.extrapolate(batch, torch.zeros(0)).shape == (2, 0, 2)
    if isinstance(model, RNNBaseline):
        # no future points: the forecasting loss is the teacher-forced loss alone
        torch.testing.assert_close(model.forecast_loss(batch, torch.zeros(0), torch.zeros(2, 0, 2)), model.loss(batch))


@pytest.mark.parametrize(
    "kwargs, names", [({"hidden": 3}, "rec_hidden"), ({"out_dim": 3, "obs_dim": 2}, r"obs_dim, latent_dim")]
)
def test_ode_rnn_encoder_settings_name_the_model_argument_to_use(kwargs, names):
    # these used to fail with Python's "got multiple values for argument", naming no fix
    with pytest.raises(ValueError, match=f"ode_rnn_kwargs must not set .*pass {names}"):
        LatentODE(encoder="ode-rnn", ode_rnn_kwargs=kwargs)
    assert LatentODE(encoder="ode-rnn", ode_rnn_kwargs={"ode_hidden": 3}).encoder.ode_rnn.field[0].out_features == 3
