"""The latent SDE against independent references: torchsde's latent SDE example, a closed-form KL, finite
differences and the stochastic adjoint."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import torch
from _reference_code import load_module, read_source, repository
from torch import nn

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("one_thread", "float64_default")

#: torchsde's repository (a checkout or a bare git directory), for its examples/latent_sde_lorenz.py
TORCHSDE_REPO = repository("TORCHSDE_REPO", "/work/.mirror/google-research+torchsde/repo")
EXAMPLE = "examples/latent_sde_lorenz.py"


def _load_torchsde_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """torchsde's latent SDE example as a module, read from the repository into ``tmp_path`` (skip if absent)."""
    pytest.importorskip("torchsde")
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    path = tmp_path / "latent_sde_lorenz.py"
    path.write_text(read_source(TORCHSDE_REPO, EXAMPLE, "TORCHSDE_REPO", "torchsde's repository"))
    # the example imports fire only for its command line, which is not used here
    monkeypatch.setitem(sys.modules, "fire", sys.modules.get("fire") or types.ModuleType("fire"))
    return load_module(path, "torchsde_latent_sde_lorenz")


class _FirstChannels:
    """A torchsde Brownian motion seen through its first ``d`` channels.

    torchsde's logqp adds a state, and a noise channel, for the KL integral; hybrid_node's does not.
    """

    def __init__(self, bm, d: int):
        self.bm, self.d = bm, d
        self.shape = (*bm.shape[:-1], d)
        self.dtype, self.device, self.levy_area_approximation = bm.dtype, bm.device, bm.levy_area_approximation

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        assert not (return_U or return_A)
        return self.bm(ta, tb)[..., : self.d]


class _DropTime(nn.Module):
    """Our drift networks read (z, [context,] t); the example's read (z, [context]): drop the t column."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x[:, :-1])


class _ExampleDiffusion(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, t, z):
        return self.model.g(t, z)


def _wire_ours_to(example: nn.Module, sizes: tuple[int, int, int, int], obs_std: float) -> hn.nn.LatentSDE:
    """Our LatentSDE computing what ``example`` computes.

    The drift, diffusion and decoder networks are the example's own modules (their parameters shared);
    the GRU and context layer are copies; our q(z0) layer reads the GRU output where the example's reads
    the context, so it is the composition of the example's two linear layers.
    """
    data, latent, context, hidden = sizes
    ours = hn.nn.LatentSDE(data, latent, context, hidden, obs_std=obs_std, method="euler", dt=1e-2)
    with torch.no_grad():
        ours.encoder.load_state_dict(example.encoder.gru.state_dict())
        ours.to_context.load_state_dict(example.encoder.lin.state_dict())
        q, lin = example.qz0_net, example.encoder.lin
        ours.to_q0.weight.copy_(q.weight @ lin.weight)
        ours.to_q0.bias.copy_(q.weight @ lin.bias + q.bias)
        ours.p0_mean.copy_(example.pz0_mean[0])
        ours.p0_logstd.copy_(example.pz0_logstd[0])
    ours.posterior_drift, ours.prior_drift = _DropTime(example.f_net), _DropTime(example.h_net)
    ours.diffusion, ours.decoder = _ExampleDiffusion(example), example.projector
    return ours


@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_latent_sde_elbo_equals_torchsdes_example_on_the_same_path(tmp_path, monkeypatch, method):
    ref = _load_torchsde_example(tmp_path, monkeypatch)
    import torchsde

    class Example(ref.LatentSDE):
        def f(self, t, y):
            # The example's drift on [t_i, t_{i+1}) reads ctx[i + 1] (searchsorted with right=True, no
            # minus one); ours reads ctx[i], the encoder's summary of the observations from t_i on
            # (docs/sde.md). Re-indexed so that the rest of the two models can be compared.
            ts, ctx = self._ctx
            i = max(int(torch.searchsorted(ts, t, right=True)) - 1, 0)
            return self.f_net(torch.cat((y, ctx[i]), dim=1))

    sizes, batch, n_obs, obs_std = (2, 3, 4, 8), 5, 6, 0.1
    torch.manual_seed(0)
    example = Example(*sizes)
    ours = _wire_ours_to(example, sizes, obs_std)
    ours.method = method
    xs, ts = torch.randn(n_obs, batch, sizes[0]), torch.linspace(0.0, 1.0, n_obs)

    def path():  # the same Brownian path for both: torchsde's, with its logqp channel
        return torchsde.BrownianInterval(0.0, 1.0, (batch, sizes[1] + 1), entropy=7)

    def run_example(model):
        bm = path()
        sdeint = lambda *args, **kwargs: torchsde.sdeint(*args, bm=bm, **kwargs)  # noqa: E731
        monkeypatch.setattr(ref, "torchsde", types.SimpleNamespace(sdeint=sdeint))
        torch.manual_seed(11)  # the same z0 noise: both draw randn_like of q(z0)'s mean first
        return model(xs, ts, obs_std, method=method)

    log_pxs, kl = run_example(example)
    torch.manual_seed(11)
    out = ours(xs, ts, bm=_FirstChannels(path(), sizes[1]))
    # float64 rounding: the same operations, but q(z0)'s layer is a product of two matrices here
    torch.testing.assert_close(out.log_likelihood, log_pxs, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.kl_z0 + out.kl_path, kl, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.loss * n_obs * sizes[0], -log_pxs + kl, rtol=1e-10, atol=0)
    # and the gradients of the networks both models share
    shared = [*example.f_net.parameters(), *example.h_net.parameters(), *example.g_nets.parameters()]
    shared += list(example.projector.parameters())
    want = torch.autograd.grad(-log_pxs + kl, shared)
    got = torch.autograd.grad(out.loss * n_obs * sizes[0], shared)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-12)  # rounding of sums of many products

    # the example's own indexing gives another ELBO: the comparison sees the context each step reads
    example.__class__ = ref.LatentSDE
    log_pxs_own, _ = run_example(example)
    assert abs(float((log_pxs_own - log_pxs).detach())) > 1e-6 * abs(float(log_pxs.detach()))


class _Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, t, z):
        return torch.full_like(z, self.value)


def test_latent_sde_kl_matches_the_closed_form_for_ornstein_uhlenbeck_processes():
    # posterior dz = (c - a z) dt + s dW, prior dz = -b z dt + s dW, z0 ~ N(m0, v0): the path KL is
    # E int 1/2 ((f - h) / s)^2 dt with z_t ~ N(m_t, v_t) under the posterior, m' = c - a m, v' = s^2 - 2 a v
    a, c, b, s, m0, v0, dt = 1.5, 0.8, 0.3, 0.5, 0.4, 0.09, 4e-3
    model = hn.nn.LatentSDE(1, 1, context_dim=2, hidden=4, method="euler", dt=dt)
    post, prior = nn.Linear(1 + 2 + 1, 1), nn.Linear(1 + 1, 1)  # inputs (z, context, t) and (z, t)
    with torch.no_grad():
        for layer, weight, bias in ((post, -a, c), (prior, -b, 0.0)):
            layer.weight.zero_()
            layer.weight[0, 0] = weight
            layer.bias.fill_(bias)
        model.to_q0.weight.zero_()  # q(z0 | x) = N(m0, v0) whatever the observations
        model.to_q0.bias.copy_(torch.tensor([m0, 0.5 * math.log(v0)]))
    model.posterior_drift, model.prior_drift, model.diffusion = post, prior, _Constant(s)
    ts = torch.linspace(0.0, 1.0, 5)

    def rate(m: float, v: float) -> float:
        return (((b - a) * m + c) ** 2 + (b - a) ** 2 * v) / (2 * s * s)

    def mean_var(t: float) -> tuple[float, float]:
        return c / a + (m0 - c / a) * math.exp(-a * t), s * s / (2 * a) + (v0 - s * s / (2 * a)) * math.exp(-2 * a * t)

    # the exact KL: the rate is a sum of exponentials in t, integrated here by Simpson's rule on 2000 cells
    grid = torch.linspace(0.0, 1.0, 4001).tolist()
    values = [rate(*mean_var(t)) for t in grid]
    exact = (grid[1] / 3) * (values[0] + values[-1] + 4 * sum(values[1:-1:2]) + 2 * sum(values[2:-1:2]))
    # what Euler-Maruyama with the left-point KL sum estimates: its own moments, step by step
    m, v, euler = m0, v0, 0.0
    for _ in range(round(1.0 / dt)):
        euler += rate(m, v) * dt
        m, v = m + (c - a * m) * dt, (1 - a * dt) ** 2 * v + s * s * dt
    assert abs(euler - exact) < 2 * dt * exact  # first order in dt

    torch.manual_seed(0)
    estimates = []
    for _ in range(20):  # 20 batches of 300 paths: the spread of their means gives the standard error
        out = model(torch.zeros(5, 300, 1), ts)
        estimates.append(float(out.kl_path.detach()))
    mean = sum(estimates) / len(estimates)
    se = math.sqrt(sum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1) / len(estimates))
    assert abs(mean - euler) < 4 * se, (mean, euler, se)  # 4 standard errors: fails by chance 1 in 16000
    assert se < 0.025 * euler  # the check has power: a 10 % error in the KL is 4 standard errors away
    # and KL(q(z0) || p(z0)) against N(0, 1), the initial prior
    kl0 = 0.5 * (v0 + m0 * m0 - 1 - math.log(v0))
    torch.testing.assert_close(out.kl_z0.detach(), torch.tensor(kl0), rtol=1e-12, atol=0)  # float64 rounding


def _tiny_model() -> tuple[hn.nn.LatentSDE, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = hn.nn.LatentSDE(1, 2, context_dim=3, hidden=4, obs_std=0.3, method="euler", dt=0.05)
    return model, torch.randn(4, 3, 1), torch.linspace(0.0, 1.0, 4)


def _loss(model: hn.nn.LatentSDE, xs: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(3)  # the same z0 noise and the same Brownian path every time
    return model(xs, ts, bm=hn.BrownianInterval(0.0, 1.0, (3, 2), entropy=5)).loss


def test_latent_sde_elbo_gradient_matches_finite_differences():
    model, xs, ts = _tiny_model()
    params = list(model.parameters())
    grads = torch.autograd.grad(_loss(model, xs, ts), params)
    eps = 1e-6
    with torch.no_grad():
        for p, g in zip(params, grads):
            flat, gflat = p.view(-1), g.view(-1)
            for j in range(min(3, flat.numel())):  # three entries of each weight and bias
                old = float(flat[j])
                flat[j] = old + eps
                up = float(_loss(model, xs, ts))
                flat[j] = old - eps
                down = float(_loss(model, xs, ts))
                flat[j] = old
                # central differences: O(eps^2) truncation, O(1e-16 |loss| / eps) rounding
                assert abs((up - down) / (2 * eps) - float(gflat[j])) < 1e-6 * (1 + abs(float(gflat[j])))


def test_latent_sde_adjoint_gradient_converges_to_direct_backprop():
    model, xs, ts = _tiny_model()
    params = list(model.parameters())
    errors = []
    for dt in (0.05, 0.01):
        model.dt, model.adjoint = dt, False
        direct_loss = _loss(model, xs, ts)
        direct = torch.autograd.grad(direct_loss, params)
        model.adjoint = True
        adjoint_loss = _loss(model, xs, ts)
        adjoint = torch.autograd.grad(adjoint_loss, params)
        torch.testing.assert_close(adjoint_loss, direct_loss, rtol=0, atol=0)  # the same forward solve
        # every parameter gets a gradient, the encoder's through the contexts handed to the adjoint
        assert all(float(g.abs().sum()) > 0 for g in adjoint)
        num = sum(float((a - d).pow(2).sum()) for a, d in zip(adjoint, direct))
        errors.append(math.sqrt(num / sum(float(d.pow(2).sum()) for d in direct)))
    # the stochastic adjoint solves its backward SDE on the forward grid: its error shrinks with dt
    # (measured 1.1e-3 at dt = 0.05 and 4.2e-4 at dt = 0.01)
    assert errors[1] < 2e-3 and errors[1] < 0.7 * errors[0], errors
    with pytest.raises(TypeError, match="adjoint must be True or False"):
        hn.nn.LatentSDE(1, 2, adjoint="no")
