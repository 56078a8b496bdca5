"""A batch of no samples (a state with a zero-size dimension) solves to empty outputs.

Such a batch is what a filtered or split mini-batch can leave. The RMS error norm of an empty tensor
is 0 (diffrax's convention): its mean, NaN, made the first-step heuristic pick a step below float32's
resolution, every adaptive method then failed with a step-size underflow ("the problem may be
stiff"), and the implicit methods' Newton iteration never converged. torchdiffeq fails the same way
(``AssertionError: underflow in dt``).
"""

import pytest
import torch
from conftest import TimeMLP

import hybrid_node as hn
from hybrid_node.controllers import rms_norm

T = torch.linspace(0.0, 1.0, 3)
TORCH_METHODS = [name for name, spec in hn.METHODS.items() if spec.solver is not None]
TUPLE_METHODS = ("symplectic_euler", "leapfrog", "yoshida4", "yoshida6")


@pytest.fixture
def field():
    torch.manual_seed(0)
    return TimeMLP()


def _options(method: str) -> dict:
    return {} if getattr(hn.METHODS[method].solver(), "adaptive", True) else {"step_size": 0.25}


def test_the_rms_norm_of_an_empty_tensor_is_zero():
    assert rms_norm(torch.ones(0, 3)).item() == 0.0
    assert rms_norm(torch.ones(0, dtype=torch.complex64)).dtype == torch.float32
    assert rms_norm(torch.ones(0, dtype=torch.float16)).dtype == torch.float32
    assert rms_norm(torch.tensor([3.0, 4.0])).item() == pytest.approx(12.5**0.5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float16])
def test_the_rms_norm_along_a_dimension_is_the_norm_of_each_row(dtype):
    x = (torch.arange(12.0) - 5.0).reshape(3, 4).to(dtype) * 40  # float16 squares of 200 overflow
    rows = rms_norm(x, dim=1)
    assert torch.equal(rows, torch.stack([rms_norm(r) for r in x]))
    assert torch.isfinite(rows).all()
    assert torch.equal(rms_norm(torch.ones(3, 0, dtype=dtype), dim=1), torch.zeros(3, dtype=rows.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", [m for m in TORCH_METHODS if m not in TUPLE_METHODS])
def test_every_method_solves_a_batch_of_no_samples(field, method, dtype):
    field.to(dtype)
    y0 = torch.ones(0, 2, dtype=dtype)
    with torch.no_grad():
        out = hn.odeint(field, y0, T, method=method, options=_options(method))
    assert out.shape == (3, 0, 2) and out.dtype == dtype


@pytest.mark.parametrize("method", TUPLE_METHODS)
def test_the_symplectic_methods_solve_a_batch_of_no_samples(method):
    q, p = torch.ones(0, 2), torch.zeros(0, 2)
    qs, ps = hn.odeint(lambda t, s: (s[1], -s[0]), (q, p), T, method=method, options={"step_size": 0.25})
    assert qs.shape == ps.shape == (3, 0, 2)


@pytest.mark.parametrize("options", [{"device_loop": True}, {"per_sample": True}], ids=["device_loop", "per_sample"])
def test_the_other_loops_solve_a_batch_of_no_samples(field, options):
    with torch.no_grad():
        out = hn.odeint(field, torch.ones(0, 2), T, options=options)
    assert out.shape == (3, 0, 2)


@pytest.mark.parametrize("options", [{}, {"device_loop": True}, {"per_sample": True}], ids=["host", "device", "per"])
def test_samples_of_no_components_solve_to_empty_outputs(options):
    with torch.no_grad():
        out = hn.odeint(lambda t, y: -y, torch.ones(4, 0), T, options=options)
    assert out.shape == (3, 4, 0)


@pytest.mark.parametrize(
    "sensitivity",
    [hn.DirectBackprop(), hn.BacksolveAdjoint(), hn.InterpolatingAdjoint()],
    ids=["direct", "backsolve", "interpolating"],
)
def test_gradients_through_a_batch_of_no_samples_are_zero(field, sensitivity):
    y0 = torch.ones(0, 2, requires_grad=True)
    sol = hn.solve(field, y0, T, sensitivity=sensitivity)
    sol.ys.sum().backward()
    assert y0.grad is not None and y0.grad.shape == (0, 2)
    for p in field.parameters():
        assert p.grad is None or torch.equal(p.grad, torch.zeros_like(p))


class _Decay(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


@pytest.mark.parametrize("adaptive", [False, True])
def test_an_sde_solves_a_batch_of_no_samples(adaptive):
    out = hn.sdeint(_Decay(), torch.ones(0, 2), T, dt=0.1, adaptive=adaptive)
    assert out.shape == (3, 0, 2)


@pytest.mark.slow
def test_a_compiled_solve_of_a_batch_of_no_samples(field):
    with torch.no_grad():
        out = hn.odeint(field, torch.ones(0, 2), T, options={"compile": True})
    assert out.shape == (3, 0, 2)
