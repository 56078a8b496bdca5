"""Bad input to the ready-made models, as a new user hits it: each is refused before any solve with a
message naming the argument and the fix, instead of torch's error from inside a layer or a NaN loss."""

import pytest
import torch

from hybrid_node.irregular import from_sequences
from hybrid_node.nn import CNF, LatentODE
from hybrid_node.nn.cnf_fields import TimeMLPField


def _batch(dtype: torch.dtype = torch.float32):
    times = [torch.tensor([0.1, 0.4, 0.9], dtype=dtype), torch.tensor([0.2, 0.3], dtype=dtype)]
    return from_sequences(times, [torch.randn(3, 2, dtype=dtype), torch.randn(2, 2, dtype=dtype)])


@pytest.mark.parametrize(
    ("model_dtype", "batch_dtype"), [(torch.float32, torch.float64), (torch.float64, torch.float32)]
)
def test_latent_ode_batch_of_another_dtype_names_both_and_the_fix(model_dtype, batch_dtype):
    """Used to raise torch's "mat1 and mat2 must have the same dtype" from inside the encoder."""
    torch.manual_seed(0)
    model = LatentODE(obs_dim=2, latent_dim=3).to(model_dtype)
    batch = _batch(batch_dtype)
    for call in (lambda: model(batch), lambda: model.predict(batch, torch.linspace(0, 1, 4))):
        with pytest.raises(TypeError, match=rf"parameters are {model_dtype}.*{batch_dtype}.*batch\.to\("):
            call()
    # the fix the message gives works, and gives a finite loss
    assert torch.isfinite(model(batch.to(model_dtype)))


@pytest.mark.parametrize("t0", [float("nan"), float("inf"), float("-inf")])
def test_latent_ode_non_finite_t0_is_named(t0):
    """A NaN t0 used to be reported by the solver as "y0 contains NaN", an argument the user never gave."""
    model = LatentODE(obs_dim=2, latent_dim=3)
    batch = _batch()
    for call in (lambda: model(batch, t0=t0), lambda: model.predict(batch, torch.linspace(0, 1, 4), t0=t0)):
        with pytest.raises(ValueError, match="t0 must be a finite time"):
            call()


def test_cnf_loss_of_an_empty_batch_is_refused():
    """The mean NLL of no points is 0/0: it used to come back as a NaN loss after a whole solve."""
    flow = CNF([TimeMLPField(2, hidden=(8,))], dim=2)
    with pytest.raises(ValueError, match="no points"):
        flow.loss(torch.zeros(0, 2))
    assert flow.log_prob(torch.zeros(0, 2)).shape == (0,)  # per-point log-densities of no points: empty, not an error
    loss, _ = flow.loss(torch.zeros(3, 2))
    assert torch.isfinite(loss)


def _latent_sde():
    from hybrid_node.nn import LatentSDE

    torch.manual_seed(0)
    return LatentSDE(1, 3, hidden=8, context_dim=4, obs_std=0.1, dt=0.1)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_latent_sde_sample_count_is_checked(n):
    """n = 0 gave (T, 0, d) paths, a negative or fractional n torch's randn error."""
    model = _latent_sde()
    ts = torch.linspace(0.0, 1.0, 4)
    with pytest.raises(ValueError, match="positive int"):
        model.sample_prior(ts, n=n)
    with pytest.raises(ValueError, match="positive int"):
        model.sample_posterior(torch.zeros(4, 2, 1), ts, n=n)
    assert model.sample_prior(ts, n=2).shape == (4, 2, 1)
    assert model.sample_posterior(torch.zeros(4, 2, 1), ts, n=3).shape == (4, 6, 1)


@pytest.mark.parametrize(
    ("xs_dtype", "message"),
    [
        (torch.float64, r"parameters are torch.float32 but xs is torch.float64.*xs\.to\("),
        (torch.int64, r"xs\.float\(\)"),
    ],
)
def test_latent_sde_observations_of_another_dtype_name_the_fix(xs_dtype, message):
    """An int64 xs got torch's advice to convert the model to int64; a float64 one a message from the GRU."""
    model = _latent_sde()
    xs, ts = torch.zeros(4, 2, 1, dtype=xs_dtype), torch.linspace(0.0, 1.0, 4)
    with pytest.raises(TypeError, match=message):
        model(xs, ts)
    with pytest.raises(TypeError, match=message):
        model.sample_posterior(xs, ts)
    assert torch.isfinite(model.double()(xs.double(), ts).loss)  # the model converted instead works


def test_neural_sde_state_of_another_dtype_names_the_fix():
    from hybrid_node.nn import DiagonalDiffusion, MLPDynamics, NeuralSDE

    layer = NeuralSDE(MLPDynamics(2, hidden=8), DiagonalDiffusion(2), noise_type="diagonal", dt=0.1)
    ts = torch.linspace(0.0, 1.0, 3)
    with pytest.raises(TypeError, match=r"parameters are torch.float32 but y0 is torch.float64.*y0\.to\("):
        layer(torch.zeros(3, 2, dtype=torch.float64), ts)
    assert layer(torch.zeros(3, 2), ts).shape == (3, 3, 2)


def _series_models():
    from hybrid_node.nn.ode_rnn import ODERNN
    from hybrid_node.nn.rnn_baselines import RNNBaseline

    torch.manual_seed(0)
    return [ODERNN(3, hidden=4, ode_hidden=4), RNNBaseline(3, hidden=4)]


@pytest.mark.parametrize("index", [0, 1])
def test_recurrent_models_name_a_batch_of_other_channels(index):
    """Used to fail inside the cell: "input has inconsistent input_size: got 4 expected 6"."""
    model = _series_models()[index]
    with pytest.raises(
        ValueError, match=rf"{type(model).__name__} was built for obs_dim=3 channels, but the batch has 2"
    ):
        model(_batch())


@pytest.mark.parametrize("index", [0, 1])
def test_recurrent_models_name_a_batch_of_another_dtype(index):
    model = _series_models()[index]
    batch = from_sequences([torch.tensor([0.1, 0.5], dtype=torch.float64)], [torch.zeros(2, 3, dtype=torch.float64)])
    with pytest.raises(TypeError, match=r"parameters are torch.float32 but the batch holds torch.float64.*batch\.to\("):
        model(batch)
    assert torch.isfinite(model(batch.to(torch.float32))).all()


def test_planar_flow_points_of_another_dtype_name_the_fix():
    """torch's error named only "addmv input tensors"."""
    from hybrid_node.nn.planar_flow import PlanarFlow

    flow = PlanarFlow(2, 3)
    with pytest.raises(TypeError, match=r"parameters are torch.float32 but x is torch.float64.*x\.to\("):
        flow.log_prob(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"but z is torch.float64"):
        flow.from_base(torch.zeros(4, 2, dtype=torch.float64))
    assert flow.double().log_prob(torch.zeros(4, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"channels": 0}, ValueError, "channels must be positive"),  # ZeroDivisionError before
        ({"channels": 40}, ValueError, "multiple of 32"),
        ({"channels": 8, "rk_steps": 0}, ValueError, "rk_steps must be positive"),  # ZeroDivisionError before
        ({"channels": 8, "rk_steps": 2.5}, TypeError, "rk_steps must be an int"),  # built with a 0.4 step before
    ],
)
def test_mnist_build_model_checks_its_sizes(kwargs, error, message):
    from hybrid_node.experiments.mnist import build_model

    with pytest.raises(error, match=message):
        build_model("rknet", **kwargs)
    assert build_model("rknet", 8, rk_steps=2)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("kind", ["HamiltonianNN", "BaselineODE"])
@pytest.mark.parametrize("pair", [False, True])
def test_hamiltonian_models_name_a_state_of_another_dtype(kind, pair):
    """Data from numpy is float64: a direct call on it (the paper's loss on the field) raised torch's
    "mat1 and mat2 must have the same dtype" from inside the MLP."""
    import hybrid_node.nn as hnn

    model = getattr(hnn, kind)(1, hidden=8)
    y = torch.zeros(4, 2, dtype=torch.float64)
    state = (y[:, :1], y[:, 1:]) if pair else y
    name = "q" if pair else "y"
    with pytest.raises(TypeError, match=rf"parameters are torch.float32 but {name} is torch.float64.*{name}\.to\("):
        model(torch.tensor(0.0), state)
    out = model.double()(torch.tensor(0.0), state)
    assert (out[0] if pair else out).dtype == torch.float64
