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
