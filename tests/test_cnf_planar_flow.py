"""Discrete planar normalizing flow (the CNF comparison's baseline)."""

import pytest
import torch

from hybrid_node.nn.planar_flow import PlanarFlow

pytestmark = pytest.mark.usefixtures("one_thread")


def _flow(seed=0, k=6):
    torch.manual_seed(seed)
    flow = PlanarFlow(2, k, init_scale=1.0).double()  # large weights: a strongly non-linear map
    return flow


def test_log_det_matches_autograd_jacobian():
    flow = _flow()
    x = torch.randn(5, 2, dtype=torch.float64)
    _, log_det = flow.to_base(x)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: flow.to_base(v[None])[0][0], x[i])
        torch.testing.assert_close(log_det[i], torch.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-10)


def test_invertibility_constraint_holds():
    flow = _flow()
    with torch.no_grad():
        flow.u.copy_(-5 * flow.w)  # a raw u that would make a layer non-invertible
        assert ((flow._u_hat() * flow.w).sum(-1) > -1).all()


def test_from_base_inverts_to_base():
    flow = _flow(1)
    with torch.no_grad():
        x = torch.randn(200, 2, dtype=torch.float64) * 2
        z, _ = flow.to_base(x)
        torch.testing.assert_close(flow.from_base(z), x, rtol=0, atol=1e-9)


def test_density_integrates_to_one():
    flow = _flow(2, k=4)
    h = 0.05
    axis = torch.arange(-9 + h / 2, 9, h, dtype=torch.float64)
    with torch.no_grad():
        mass = flow.log_prob(torch.cartesian_prod(axis, axis)).exp().sum().item() * h * h
    assert abs(mass - 1.0) < 5e-3, mass


def test_training_lowers_nll():
    torch.manual_seed(0)
    flow = PlanarFlow(2, 8)
    target = torch.randn(512, 2) * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -1.0])
    opt = torch.optim.Adam(flow.parameters(), lr=5e-2)
    start = -flow.log_prob(target).mean().item()
    for _ in range(50):
        opt.zero_grad()
        (-flow.log_prob(target).mean()).backward()
        opt.step()
    assert -flow.log_prob(target).mean().item() < start - 0.3


def test_bad_input():
    with pytest.raises(ValueError, match="n_layers"):
        PlanarFlow(2, 0)
    with pytest.raises(ValueError, match="shape"):
        PlanarFlow(2, 3).log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="positive"):
        PlanarFlow(2, 3).sample(0)


def test_from_base_gradients_are_those_of_the_inverse():
    # Sampling is trained through (reparameterised samples), so from_base must carry the inverse's
    # derivatives: d from_base / dz = (d to_base / dx)^-1 at the sample, and the parameter gradient
    # must match central differences of from_base (bisection resolves each root to float64 rounding,
    # so the differences are accurate to ~1e-9 with h = 1e-6; old code was off by O(1)).
    flow = _flow(3)
    z = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    x = flow.from_base(z)
    for i in range(4):
        row = torch.autograd.grad(x[i], z, torch.tensor([1.0, -2.0], dtype=torch.float64), retain_graph=True)[0]
        jac = torch.autograd.functional.jacobian(lambda v: flow.to_base(v[None])[0][0], x[i].detach())
        expected = torch.tensor([1.0, -2.0], dtype=torch.float64) @ torch.linalg.inv(jac)
        torch.testing.assert_close(row[i], expected, rtol=1e-10, atol=1e-12)
    weights = torch.randn(4, 2, dtype=torch.float64)
    grads = torch.autograd.grad((x * weights).sum(), [flow.u, flow.w, flow.b])
    h = 1e-6
    for param, grad in zip([flow.u, flow.w, flow.b], grads):
        for idx in [(1, 0), (4, 1)] if param.dim() == 2 else [(2,), (5,)]:
            with torch.no_grad():
                old = param[idx].item()
                param[idx] = old + h
                up = (flow.from_base(z) * weights).sum().item()
                param[idx] = old - h
                down = (flow.from_base(z) * weights).sum().item()
                param[idx] = old
            assert abs(grad[idx].item() - (up - down) / (2 * h)) < 1e-6 * max(1.0, abs(grad[idx].item()))


@pytest.mark.parametrize("base_std", [float("inf"), float("nan"), 0.0, -1.0])
def test_base_std_must_be_finite_and_positive(base_std):
    with pytest.raises(ValueError, match="finite positive"):
        PlanarFlow(2, 3, base_std=base_std)


def test_bad_input_types():
    flow = PlanarFlow(2, 3)
    with pytest.raises(TypeError, match="floating-point"):
        flow.log_prob(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="n_bisection"):
        flow.from_base(torch.zeros(4, 2), n_bisection=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_points_are_named(bad):
    # Old code returned a NaN log-density (and NaN samples) for such rows without a word.
    flow = PlanarFlow(2, 3)
    x = torch.zeros(4, 2)
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite values \(rows 2\)"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"NaN or infinite values \(rows 2\)"):
        flow.from_base(x)
