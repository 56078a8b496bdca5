"""The native path's MLP translation, checked by evaluating the Julia formula in numpy against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from julia_standin import julia_weight, mlp_forward, mlp_vjp
from torch import nn

from hybrid_node.julia.translate import MLPVectorField, make_callbacks, translate_mlp

ACTS = [nn.Tanh(), nn.ReLU(), nn.Softplus(), nn.Sigmoid(), nn.SiLU(), nn.ELU()]


def _theta(spec):
    return torch.cat([p.detach().double().reshape(-1) for p in spec.params]).numpy()


@pytest.mark.parametrize("act", ACTS, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("time_input", [False, True])
def test_julia_formula_matches_torch(act, time_input):
    torch.manual_seed(0)
    D = 3
    net = nn.Sequential(
        nn.Linear(D + time_input, 5), act, nn.Linear(5, 4, bias=False), nn.Tanh(), nn.Linear(4, D)
    ).double()
    func = MLPVectorField(net, time_input=time_input)
    spec, why = translate_mlp(func)
    assert spec is not None, why
    theta = _theta(spec)
    assert np.array_equal(theta, nn.utils.parameters_to_vector(net.parameters()).detach().numpy())
    y = torch.randn(7, D, dtype=torch.float64) * 3  # wide range: exercises both sides of ReLU/ELU
    t = 0.37
    expected = func(torch.tensor(t, dtype=torch.float64), y).detach().numpy()
    got, _ = mlp_forward(spec, theta, y.numpy().T, t)  # Julia layout (D, B)
    np.testing.assert_allclose(got.T, expected, rtol=1e-13, atol=1e-13)


def test_weights_read_as_transposed_column_major_block():
    net = nn.Sequential(nn.Linear(2, 3)).double()
    spec, _ = translate_mlp(MLPVectorField(nn.Sequential(*net, nn.Linear(3, 2).double())))
    W, b = julia_weight(spec, _theta(spec), 0)
    np.testing.assert_array_equal(W, net[0].weight.detach().numpy())
    np.testing.assert_array_equal(b, net[0].bias.detach().numpy())


def test_softplus_threshold_branch_matches_torch():
    net = nn.Sequential(nn.Linear(1, 1), nn.Softplus(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(0.0)
        net[2].weight.fill_(1.0)
        net[2].bias.fill_(0.0)
    spec, _ = translate_mlp(MLPVectorField(net))
    y = torch.tensor([[-30.0], [0.5], [19.9], [20.0], [20.1], [45.0]], dtype=torch.float64)
    got, _ = mlp_forward(spec, _theta(spec), y.numpy().T, 0.0)
    np.testing.assert_allclose(got.T, net(y).detach().numpy(), rtol=1e-15)


def test_hand_written_mlp_vjp_matches_autograd():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 2)).double()
    func = MLPVectorField(net, time_input=True)
    spec, _ = translate_mlp(func)
    y = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    lam = torch.randn(5, 2, dtype=torch.float64)
    out = func(torch.tensor(0.2, dtype=torch.float64), y)
    grads = torch.autograd.grad(out, (y, *net.parameters()), lam)
    gu, gp = mlp_vjp(spec, _theta(spec), y.detach().numpy().T, 0.2, lam.numpy().T)
    np.testing.assert_allclose(gu.T, grads[0].numpy(), rtol=1e-12)
    np.testing.assert_allclose(gp, torch.cat([g.reshape(-1) for g in grads[1:]]).numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    "net, reason",
    [
        (nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.Linear(2, 2)), "not translatable"),
        (nn.Sequential(nn.Linear(2, 2), nn.Softplus(beta=2.0), nn.Linear(2, 2)), "not translatable"),
        (nn.Sequential(nn.Linear(2, 2), nn.ELU(alpha=0.5), nn.Linear(2, 2)), "not translatable"),
        (nn.Sequential(nn.Tanh(), nn.Linear(2, 2)), "must follow a Linear"),
        (nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Tanh(), nn.Linear(2, 2)), "must follow a Linear"),
        (nn.Sequential(nn.Linear(2, 3), nn.Linear(2, 2)), "takes 2 features"),
        (nn.Sequential(nn.Linear(2, 3)), "maps 2 state features to 3"),
    ],
)
def test_untranslatable_networks_fall_back_with_a_reason(net, reason):
    spec, why = translate_mlp(MLPVectorField(net))
    assert spec is None and reason in why


def test_plain_modules_take_the_callback_path():
    spec, why = translate_mlp(lambda t, y: -y)
    assert spec is None and "mlp_spec" in why


def test_callbacks_match_autograd_and_use_column_major_jacobian():
    torch.manual_seed(2)
    A = torch.randn(2, 2, dtype=torch.float64)
    w = torch.tensor([0.7, -0.3], dtype=torch.float64, requires_grad=True)

    def field(t, y):  # (B, D) -> (B, D)
        return torch.tanh(y @ A.T) * w + t

    B, D = 3, 2
    cb = make_callbacks(field, (B, D), (w,), torch.float64, torch.device("cpu"))
    y = torch.randn(B, D, dtype=torch.float64)
    u = y.reshape(-1).numpy()  # torch (B, D) order == Julia vec((D, B))
    np.testing.assert_allclose(cb.f(u, 0.5), field(torch.tensor(0.5), y).detach().reshape(-1).numpy())
    lam = np.random.default_rng(0).normal(size=B * D)
    yr = y.clone().requires_grad_(True)
    gy, gw = torch.autograd.grad(field(torch.tensor(0.5), yr), (yr, w), torch.tensor(lam).reshape(B, D))
    out = cb.vjp(lam, u, 0.5)
    assert out.shape == (B * D + 2,) and cb.n_state == B * D and cb.n_params == 2
    np.testing.assert_allclose(out[: B * D], gy.reshape(-1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(out[B * D :], gw.numpy(), rtol=1e-12)
    J = cb.jac(u, 0.5).reshape((B * D, B * D), order="F")  # as Julia reads it
    eps = 1e-7
    for j in range(B * D):
        e = np.zeros(B * D)
        e[j] = eps
        fd = (cb.f(u + e, 0.5) - cb.f(u - e, 0.5)) / (2 * eps)
        np.testing.assert_allclose(J[:, j], fd, atol=1e-7)


def test_callbacks_without_parameters_send_one_dummy_zero():
    cb = make_callbacks(lambda t, y: -y, (1, 2), (), torch.float64, torch.device("cpu"))
    out = cb.vjp(np.ones(2), np.ones(2), 0.0)
    assert cb.n_params == 1 and out.shape == (3,) and out[2] == 0.0


class _DoubledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


class _DoubledSequential(nn.Sequential):
    def forward(self, x):
        return 2 * super().forward(x)


def _hooked(module: nn.Module) -> nn.Module:
    module.register_forward_hook(lambda m, inputs, out: 3 * out)
    return module


def _pre_hooked(module: nn.Module) -> nn.Module:
    module.register_forward_pre_hook(lambda m, inputs: (inputs[0] + 1,))
    return module


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(_DoubledLinear(2, 4), nn.Tanh(), nn.Linear(4, 2)),
        lambda: _DoubledSequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)),
        lambda: nn.Sequential(_hooked(nn.Linear(2, 4)), nn.Tanh(), nn.Linear(4, 2)),
        lambda: nn.Sequential(nn.Linear(2, 4), _hooked(nn.Tanh()), nn.Linear(4, 2)),
        lambda: nn.Sequential(nn.Linear(2, 4), _pre_hooked(nn.Identity()), nn.Linear(4, 2)),
        lambda: _hooked(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))),
    ],
    ids=["Linear subclass", "Sequential subclass", "Linear hook", "activation hook", "Identity pre-hook", "net hook"],
)
def test_layers_that_compute_something_else_take_the_callback_path(make):
    # They look like Linear/Tanh/Sequential, but Julia would rebuild the plain layers and solve
    # another ODE: max |y| difference 0.24 (doubled Linear) and 0.37 (tripling hook) at t = 1.
    from julia_standin import StandinEngine

    import hybrid_node as hn
    from hybrid_node.julia import backend as jb

    torch.manual_seed(0)
    func = MLPVectorField(make().double())
    spec, why = translate_mlp(func)
    assert spec is None and ("overrides" in why or "not translatable" in why), why
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    y0 = torch.randn(3, 2, dtype=torch.float64)
    tol = dict(rtol=1e-10, atol=1e-12)
    julia = jb.solve_with_engine(StandinEngine(), func, y0, t, **tol).ys
    # two independent solvers at rtol 1e-10 over a unit interval agree far better than 1e-7
    torch.testing.assert_close(julia, hn.odeint(func, y0, t, **tol), rtol=1e-7, atol=1e-8)


def test_subclasses_that_keep_the_forward_are_still_translated():
    # e.g. nn.MultiheadAttention's NonDynamicallyQuantizableLinear: same forward, same maths
    net = nn.Sequential(nn.modules.linear.NonDynamicallyQuantizableLinear(2, 4), nn.Tanh(), nn.Linear(4, 2))
    spec, why = translate_mlp(MLPVectorField(net))
    assert spec is not None, why
