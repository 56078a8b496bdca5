"""SDE gradients: direct backprop vs finite differences on a fixed Brownian path (float64), adjoints vs direct."""

from __future__ import annotations

import pytest
import torch
from _sde_problems import GBM, NeuralSDE, ScalarGBM

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


def _with_prior(sde_type: str) -> NeuralSDE:
    """A diagonal-noise NeuralSDE (seed 0) with a learnable linear prior drift h, for logqp."""
    torch.manual_seed(0)
    sde = NeuralSDE("diagonal", sde_type)
    sde.prior = torch.nn.Linear(3, 3)
    sde.h = lambda t, y: sde.prior(y)
    return sde


def _loss(ys: torch.Tensor) -> torch.Tensor:
    weights = torch.linspace(0.5, 1.5, ys.shape[0]).reshape(-1, *([1] * (ys.ndim - 1)))
    return (weights * torch.sin(ys)).sum()


@pytest.mark.parametrize(
    "method,noise,sde_type",
    [
        ("euler", "general", "ito"),
        ("milstein", "diagonal", "ito"),
        ("srk", "diagonal", "ito"),
        ("heun", "general", "stratonovich"),
        ("reversible_heun", "general", "stratonovich"),
        ("log_ode", "general", "stratonovich"),
    ],
)
def test_direct_gradients_match_finite_differences(method, noise, sde_type):
    torch.manual_seed(0)
    sde = NeuralSDE(noise, sde_type, d=2, m=2)
    y0 = torch.randn(3, 2, requires_grad=True)
    m = 2
    bm = hn.BrownianInterval(0.0, 1.0, (3, m), entropy=1, levy_area_approximation="foster")  # U and A
    ts = [0.0, 0.4, 1.0]

    def f(y0_, w):
        sde.drift.weight.data.copy_(w)
        return _loss(hn.sdeint(sde, y0_, ts, bm=bm, method=method, dt=0.1))

    w0 = sde.drift.weight.detach().clone()
    sde.drift.weight.requires_grad_(True)
    loss = f(y0, w0)
    g_y0, g_w = torch.autograd.grad(loss, (y0, sde.drift.weight))
    eps = 1e-6
    with torch.no_grad():
        for i in range(2):
            e = torch.zeros_like(y0)
            e[0, i] = eps
            fd = (f(y0 + e, w0) - f(y0 - e, w0)) / (2 * eps)
            torch.testing.assert_close(g_y0[0, i], fd, rtol=1e-6, atol=1e-7)
            e = torch.zeros_like(w0)
            e[i, 1 - i] = eps
            fd = (f(y0, w0 + e) - f(y0, w0 - e)) / (2 * eps)
            torch.testing.assert_close(g_w[i, 1 - i], fd, rtol=1e-6, atol=1e-7)


def _grads(solve, sde, y0):
    inputs = (y0, *sde.parameters())
    grads = torch.autograd.grad(_loss(solve()), inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _relative_error(grads, reference) -> float:
    """The summed norms of the differences over the summed norms of the reference gradients."""
    return sum(float((a - b).norm()) for a, b in zip(grads, reference)) / sum(float(b.norm()) for b in reference)


def test_reversible_heun_adjoint_equals_direct_backprop():
    torch.manual_seed(0)
    sde = NeuralSDE("general", "stratonovich")
    y0 = torch.randn(4, 3, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (4, 2), entropy=2)
    ts = torch.tensor([0.0, 0.35, 0.8, 1.0])  # 0.35 is between steps: its cotangent is split by interpolation
    direct = _grads(lambda: hn.sdeint(sde, y0, ts, bm=bm, method="reversible_heun", dt=0.05), sde, y0)
    adjoint = _grads(lambda: hn.sdeint_adjoint(sde, y0, ts, bm=bm, method="reversible_heun", dt=0.05), sde, y0)
    for a, b in zip(adjoint, direct):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "method,noise,sde_type",
    [("midpoint", "general", "stratonovich"), ("milstein", "diagonal", "ito"), ("euler", "diagonal", "ito")],
)
def test_stochastic_adjoint_converges_to_direct_backprop(method, noise, sde_type):
    torch.manual_seed(0)
    sde = NeuralSDE(noise, sde_type)
    y0 = torch.randn(4, 3, requires_grad=True)
    m = 3 if noise == "diagonal" else 2
    bm = hn.BrownianInterval(0.0, 1.0, (4, m), entropy=3)
    ts = torch.tensor([0.0, 0.5, 1.0])
    errs = []
    for dt in (0.02, 0.005):
        direct = _grads(lambda dt=dt: hn.sdeint(sde, y0, ts, bm=bm, method=method, dt=dt), sde, y0)
        adjoint = _grads(lambda dt=dt: hn.sdeint_adjoint(sde, y0, ts, bm=bm, method=method, dt=dt), sde, y0)
        errs.append(_relative_error(adjoint, direct))
    assert errs[-1] < 0.03 and errs[-1] < errs[0], errs


def test_adjoint_forward_equals_sdeint_and_gbm_gradient_is_exact_in_the_limit():
    # d y(T) / d y0 = y(T) / y0 for GBM on each path.
    sde = GBM("stratonovich", 0.3, 0.5)
    y0 = torch.full((200, 1), 2.0, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (200, 1), entropy=4)
    ys = hn.sdeint_adjoint(sde, y0, [0.0, 1.0], bm=bm, method="midpoint", dt=2**-8)
    torch.testing.assert_close(ys, hn.sdeint(sde, y0, [0.0, 1.0], bm=bm, method="midpoint", dt=2**-8).detach())
    (g,) = torch.autograd.grad(ys[-1].sum(), y0)
    torch.testing.assert_close(g, (ys[-1] / 2.0).detach(), rtol=1e-3, atol=1e-4)


def test_adjoint_bad_inputs():
    sde, y0 = NeuralSDE("general", "ito"), torch.randn(2, 3)
    with pytest.raises(ValueError, match="Stratonovich form"):
        hn.sdeint_adjoint(sde, y0, [0.0, 1.0], method="euler")
    with pytest.raises(ValueError, match="unknown adjoint_method"):
        hn.sdeint_adjoint(NeuralSDE("general", "stratonovich"), y0, [0.0, 1.0], adjoint_method="rk4")
    with pytest.raises(ValueError, match="needs method='reversible_heun' \\(got method='midpoint'\\)"):
        stratonovich = NeuralSDE("general", "stratonovich")
        hn.sdeint_adjoint(stratonovich, y0, [0.0, 1.0], method="midpoint", adjoint_method="adjoint_reversible_heun")
    with pytest.raises(ValueError, match="nn.Module"):
        hn.sdeint_adjoint(object(), y0, [0.0, 1.0])
    with pytest.raises(ValueError, match="adjoint_adaptive=True does not apply"):
        hn.sdeint_adjoint(
            NeuralSDE("general", "stratonovich"), y0, [0.0, 1.0], method="reversible_heun", adjoint_adaptive=True
        )
    ts = torch.tensor([0.0, 1.0], requires_grad=True)
    with pytest.raises(ValueError, match="ts.detach"):
        hn.sdeint(NeuralSDE("general", "stratonovich"), y0, ts)
    with pytest.raises(ValueError, match="ts.detach"):
        hn.sdeint_adjoint(NeuralSDE("general", "stratonovich"), y0, ts)


@pytest.mark.parametrize("adaptive", [False, True])
def test_stochastic_adjoint_with_logqp_converges_to_direct_backprop(adaptive):
    sde = _with_prior("ito")
    y0 = torch.randn(4, 3, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (4, 3), entropy=5)
    ts = torch.tensor([0.0, 0.3, 1.0])

    def loss(solve, dt, **kwargs):
        ys, kl = solve(sde, y0, ts, bm=bm, method="euler", dt=dt, logqp=True, **kwargs)
        return _loss(ys) + kl.sum()

    inputs = (y0, *sde.parameters())
    direct = torch.autograd.grad(loss(hn.sdeint, 0.005), inputs, allow_unused=True)
    # Adaptive: the backward pass still stops at every forward step, where the KL rate was evaluated.
    kwargs = dict(adjoint_adaptive=True, adjoint_rtol=1e-2, adjoint_atol=1e-4) if adaptive else {}
    adjoint = torch.autograd.grad(loss(hn.sdeint_adjoint, 0.005, **kwargs), inputs, allow_unused=True)
    direct = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, direct)]
    assert _relative_error(adjoint, direct) < 0.03
    torch.testing.assert_close(adjoint[-1], direct[-1], rtol=0.05, atol=1e-3)  # the prior's bias: KL only


def test_reversible_adjoint_with_logqp_equals_direct_backprop():
    sde = _with_prior("stratonovich")
    y0 = torch.randn(4, 3, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (4, 3), entropy=6)
    ts = torch.tensor([0.0, 0.33, 0.7, 1.0])  # 0.33 falls between steps

    def loss(solve):
        ys, kl = solve(sde, y0, ts, bm=bm, method="reversible_heun", dt=0.05, logqp=True)
        return _loss(ys) + (torch.linspace(1.0, 2.0, 3)[:, None] * kl).sum(), kl

    inputs = (y0, *sde.parameters())
    direct_loss, direct_kl = loss(hn.sdeint)
    adjoint_loss, adjoint_kl = loss(hn.sdeint_adjoint)
    torch.testing.assert_close(adjoint_kl, direct_kl.detach(), rtol=1e-12, atol=1e-14)
    direct = torch.autograd.grad(direct_loss, inputs, allow_unused=True)
    adjoint = torch.autograd.grad(adjoint_loss, inputs, allow_unused=True)
    for a, b in zip(adjoint, direct):
        if b is None:  # the general-noise mixing layer is unused with diagonal noise
            assert a is None or not bool(a.any())
            continue
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert float(direct[-1].norm()) > 1e-3  # the prior's parameters get a gradient through the KL only


def test_adaptive_adjoint_converges_to_the_exact_pathwise_gradient():
    # Stratonovich GBM: y(T) = y0 exp(mu T + sigma W(T)), so dy(T)/dy0 = y(T)/y0, dy(T)/dmu = T y(T) and
    # dy(T)/dsigma = W(T) y(T) on each path. The forward solve is fine (error ~1e-4); the backward SDE is
    # solved by step doubling from dt, so its error follows adjoint_rtol.
    sde = GBM("stratonovich", 0.3, 0.5)
    y0 = torch.full((100, 1), 2.0, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (100, 1), entropy=4)
    errs = []
    for rtol in (1e-1, 1e-3):
        ys = hn.sdeint_adjoint(
            sde,
            y0,
            [0.0, 1.0],
            bm=bm,
            method="midpoint",
            dt=2**-9,
            adjoint_adaptive=True,
            adjoint_rtol=rtol,
            adjoint_atol=1e-2 * rtol,
        )
        grads = torch.autograd.grad(ys[-1].sum(), (y0, sde.mu, sde.sigma))
        y_t = ys[-1].detach()
        exact = (y_t / 2.0, y_t.sum(), (bm(0.0, 1.0) * y_t).sum())
        errs.append(max(float((g - e).norm() / e.norm()) for g, e in zip(grads, exact)))
    assert errs[1] < 3e-3 and errs[1] < errs[0] / 5, errs


def test_adaptive_adjoint_agrees_with_direct_backprop():
    torch.manual_seed(0)
    sde = NeuralSDE("diagonal", "stratonovich")
    y0 = torch.randn(4, 3, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (4, 3), entropy=3)
    ts = torch.tensor([0.0, 0.5, 1.0])
    direct = _grads(lambda: hn.sdeint(sde, y0, ts, bm=bm, method="midpoint", dt=2**-8), sde, y0)
    errs = []
    for rtol in (1e-1, 1e-2):

        def solve(rtol=rtol):
            return hn.sdeint_adjoint(
                sde,
                y0,
                ts,
                bm=bm,
                method="midpoint",
                dt=2**-8,
                adjoint_adaptive=True,
                adjoint_rtol=rtol,
                adjoint_atol=1e-2 * rtol,
            )

        adjoint = _grads(solve, sde, y0)
        errs.append(_relative_error(adjoint, direct))
    assert errs[1] < 2e-3 and errs[1] < errs[0] / 2, errs


def test_stochastic_adjoint_of_ito_scalar_noise_converges_to_direct_backprop():
    # Ito scalar noise takes the adjoint's fused path (the correction's diffusion column reused).
    sde = ScalarGBM("ito", 0.3, 0.5)
    y0 = torch.full((50, 2), 1.5, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (50, 1), entropy=2)
    errs = []
    for dt in (2**-5, 2**-8):
        direct = _grads(lambda dt=dt: hn.sdeint(sde, y0, [0.0, 1.0], bm=bm, method="milstein", dt=dt), sde, y0)
        adjoint = _grads(lambda dt=dt: hn.sdeint_adjoint(sde, y0, [0.0, 1.0], bm=bm, method="milstein", dt=dt), sde, y0)
        errs.append(_relative_error(adjoint, direct))
    assert errs[1] < 5e-3 and errs[1] < errs[0] / 2, errs
