"""logqp's KL integral at each method's own order: what the method does to a state dk = rate dt with no diffusion.

torchsde integrates the KL term as one more state component without diffusion, so heun, midpoint,
reversible_heun, log_ode and srk integrate it with their own stages. hybrid_node integrates it beside the
solve with the same quadratures (:meth:`hybrid_node.sde.solvers.SDESolver.logqp_step`): on the same Brownian
path the KL increments equal torchsde's to rounding, and where the noise vanishes they converge at the
methods' deterministic order 2 (the left-point rule, used before for every method, is first order). The
gradients of the KL term: exact for the reversible adjoint (tests/test_sde_gradients.py), convergent for the
stochastic adjoint, which differentiates it by the left-point rule.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from _sde_problems import NeuralSDE
from scipy.integrate import solve_ivp
from test_sde_parity_probe import DT, TS, Field, _bm, _FirstChannels, _y0

import hybrid_node as hn

torchsde = pytest.importorskip("torchsde")

pytestmark = pytest.mark.usefixtures("one_thread")

STRATONOVICH_STAGES = ["heun", "midpoint", "reversible_heun", "log_ode"]
NOISES = ["diagonal", "scalar", "additive", "general"]
PARITY = [(m, "stratonovich", n) for m in STRATONOVICH_STAGES for n in NOISES] + [("srk", "ito", "additive")]


@pytest.mark.parametrize("method,sde_type,noise", PARITY, ids=[f"{m}-{n}" for m, _, n in PARITY])
def test_stage_methods_kl_equals_torchsde_on_one_path(method, sde_type, noise):
    # Both libraries do the same arithmetic on the KL state (its rate at the method's stages), so the
    # increments agree to float64 rounding: 2.4e-15 relative measured on KL values up to 67 (general noise:
    # the pseudo-inverse makes the rate large). The left-point rule differed by 5-25 % here.
    sde = Field(noise, sde_type)
    levy = "foster" if method == "log_ode" else "space-time"
    channels = 4 if noise == "diagonal" else None  # torchsde's KL state takes a noise channel of its own

    def path():
        return _bm(sde, channels=channels, levy=levy)

    ours_bm = _FirstChannels(path(), 3) if noise == "diagonal" else path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's warnings about its own defaults
        ys_t, kl_t = torchsde.sdeint(sde, _y0(), TS, bm=path(), method=method, dt=DT, logqp=True)
    ys_h, kl_h = hn.sdeint(sde, _y0(), TS, bm=ours_bm, method=method, dt=DT, logqp=True)
    assert kl_h.shape == kl_t.shape == (len(TS) - 1, 2)
    torch.testing.assert_close(ys_h, ys_t, rtol=0, atol=1e-12)
    torch.testing.assert_close(kl_h, kl_t, rtol=1e-12, atol=1e-12)


class _QuietField(torch.nn.Module):
    """A nonlinear SDE whose noise (sigma = 1e-9) is negligible, with a prior drift h = f - g v.

    The KL rate is then 1/2 |v(t, y)|^2 whatever sigma is, and y follows the ODE dy = f dt to within ~1e-9,
    so the KL integral is that of the ODE augmented with dk = |v|^2 / 2 dt, which scipy solves to 1e-12.
    """

    SIGMA = 1e-9

    def __init__(self, noise_type: str, sde_type: str):
        super().__init__()
        self.noise_type, self.sde_type = noise_type, sde_type
        self.a = torch.tensor([[0.6, -0.9], [1.1, 0.3]], dtype=torch.float64)

    def f(self, t, y):
        return torch.tanh(y @ self.a) - 0.3 * y + torch.cos(3 * t)

    def v(self, t, y):
        return torch.sin(2 * y) + t

    def g(self, t, y):
        if self.noise_type == "diagonal":
            return self.SIGMA * (1.0 + 0.1 * torch.tanh(y))
        return self.SIGMA * torch.eye(2, dtype=y.dtype).expand(y.shape[0], 2, 2)

    def h(self, t, y):
        gv = self.g(t, y) * self.v(t, y) if self.noise_type == "diagonal" else self.SIGMA * self.v(t, y)
        return self.f(t, y) - gv


def _ode_kl(sde: _QuietField, y0: torch.Tensor, t1: float) -> np.ndarray:
    """The KL integral of the noiseless limit, by scipy's DOP853 at rtol 1e-12 (an independent solver)."""
    batch = y0.shape[0]

    def rhs(t, x):
        y = torch.from_numpy(x[: 2 * batch].reshape(batch, 2))
        tt = torch.tensor(t, dtype=torch.float64)
        dk = 0.5 * (sde.v(tt, y) ** 2).sum(-1)
        return np.concatenate([sde.f(tt, y).reshape(-1).numpy(), dk.numpy()])

    x0 = np.concatenate([y0.reshape(-1).numpy(), np.zeros(batch)])
    sol = solve_ivp(rhs, (0.0, t1), x0, method="DOP853", rtol=1e-12, atol=1e-12)
    return sol.y[2 * batch :, -1]


def _observed_order(method: str, sde_type: str, noise: str) -> tuple[float, list[float]]:
    sde = _QuietField(noise, sde_type)
    y0 = torch.tensor([[0.4, -0.7], [-1.0, 0.2]], dtype=torch.float64)
    ref = _ode_kl(sde, y0, 1.0)
    levy = "foster" if method == "log_ode" else "space-time"
    errs = []
    for k in range(3, 7):
        bm = hn.BrownianInterval(0.0, 1.0, (2, 2), dtype=torch.float64, entropy=7, levy_area_approximation=levy)
        _, kl = hn.sdeint(sde, y0, [0.0, 1.0], bm=bm, method=method, dt=2.0**-k, logqp=True)
        errs.append(float(np.abs(kl[0].detach().numpy() - ref).max()))
    # the least-squares slope of log2(err) against log2(dt)
    slope = np.polyfit(np.arange(3, 7), -np.log2(errs), 1)[0]
    return float(slope), errs


QUIET = [(m, "stratonovich", "diagonal") for m in STRATONOVICH_STAGES] + [
    ("heun", "stratonovich", "additive"),
    ("srk", "ito", "additive"),
    ("srk", "ito", "diagonal"),  # another scheme than torchsde's SRID2: its KL is checked by its order here
]


@pytest.mark.parametrize("method,sde_type,noise", QUIET, ids=[f"{m}-{n}" for m, _, n in QUIET])
def test_stage_methods_kl_converges_at_second_order_without_noise(method, sde_type, noise):
    # Without noise these methods are second-order Runge-Kutta schemes (Heun's trapezoid, the midpoint rule,
    # Ralston's 2/3-3/4 pair for SRA1's drift, reversible Heun's extrapolated trapezoid), and the KL state is
    # integrated with the same stages: errors fall 4x per halving of dt (slopes 1.98-2.00 measured over
    # dt = 2^-3 ... 2^-6, errors 1.4e-2 down to 1.5e-4, far above the 1e-9 the noise and the reference add).
    # The left-point rule gave slope 0.90 (errors 0.13 down to 0.019).
    slope, errs = _observed_order(method, sde_type, noise)
    assert 1.8 < slope < 2.3, (slope, errs)


@pytest.mark.parametrize("method,sde_type", [("euler_heun", "stratonovich"), ("euler", "ito"), ("milstein", "ito")])
def test_left_point_methods_kl_stays_first_order(method, sde_type):
    # Euler-Maruyama, Milstein and Euler-Heun do the left-point rule to a component without diffusion (as in
    # torchsde): the order test above tells the quadratures apart (slope 0.90 measured over these coarse
    # steps, 1.0 asymptotically).
    slope, errs = _observed_order(method, sde_type, "diagonal")
    assert 0.85 < slope < 1.2, (slope, errs)


def _kl_gradient_gap(method: str, sde_type: str, dt: float) -> float:
    """The relative gap between the stochastic adjoint's and direct backprop's gradients of a KL loss."""
    torch.manual_seed(0)
    sde = NeuralSDE("diagonal", sde_type)
    sde.prior = torch.nn.Linear(3, 3)
    sde.h = lambda t, y: sde.prior(y)
    y0 = torch.randn(16, 3, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (16, 3), entropy=5, levy_area_approximation="space-time")
    inputs = [y0, *(p for p in sde.parameters() if p.requires_grad)]

    def grads(solve):
        _, kl = solve(sde, y0, [0.0, 0.3, 1.0], bm=bm, method=method, dt=dt, logqp=True)
        loss = (torch.tensor([1.0, 2.0])[:, None] * kl).sum()
        return torch.autograd.grad(loss, inputs, allow_unused=True)

    direct, adjoint = grads(hn.sdeint), grads(hn.sdeint_adjoint)
    pairs = [(a, d) for a, d in zip(adjoint, direct) if d is not None]  # the general-noise layer is unused
    gap = sum(float(((a - d) ** 2).sum()) for a, d in pairs)
    return math.sqrt(gap / sum(float((d**2).sum()) for _, d in pairs))


@pytest.mark.usefixtures("float64_default")
@pytest.mark.parametrize("method,sde_type", [("midpoint", "stratonovich"), ("heun", "stratonovich"), ("srk", "ito")])
def test_stochastic_adjoint_differentiates_the_methods_own_kl_quadrature(method, sde_type):
    # The stochastic adjoint differentiates each step's KL increment through the method's stages, from the
    # state it reconstructs at the step's start, so its gradient of a KL-only loss is off direct backprop by
    # its own discretisation error only: 1.7e-5 (midpoint), 7.0e-5 (heun), 1.6e-4 (srk, through the Ito to
    # Stratonovich conversion) at dt = 0.01, 3-4x less than at dt = 0.04. Differentiating the left-point rate
    # instead was off by the quadratures' difference: 0.38-0.39 % at dt = 0.01, 1.5-1.7 % at dt = 0.04.
    coarse, fine = _kl_gradient_gap(method, sde_type, 0.04), _kl_gradient_gap(method, sde_type, 0.01)
    assert fine < 5e-4 and fine < coarse, (coarse, fine)


@pytest.mark.usefixtures("float64_default")
def test_reversible_adjoint_of_the_kl_trapezoid_is_exact_after_adaptive_steps():
    # An adaptive solve is a sequence of half steps, each with its trapezoid of the rate at z; the rate at z1
    # is handed to the next step (also across rejected steps, which leave it alone). The reversible adjoint
    # differentiates the same sum at the states z it recovers: equal to direct backprop to rounding
    # (4e-16 relative measured).
    torch.manual_seed(0)
    sde = NeuralSDE("diagonal", "stratonovich")
    sde.prior = torch.nn.Linear(3, 3)
    sde.h = lambda t, y: sde.prior(y)
    y0 = torch.randn(4, 3, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (4, 3), entropy=5)
    inputs = [y0, *(p for p in sde.parameters() if p.requires_grad)]

    def grads(solve):
        kw = dict(method="reversible_heun", dt=0.05, adaptive=True, rtol=1e-3, atol=1e-4, logqp=True)
        ys, kl = solve(sde, y0, [0.0, 0.33, 1.0], bm=bm, **kw)
        loss = torch.sin(ys).sum() + (torch.tensor([1.0, 2.0])[:, None] * kl).sum()
        return kl.detach(), torch.autograd.grad(loss, inputs, allow_unused=True)

    (kl_d, direct), (kl_a, adjoint) = grads(hn.sdeint), grads(hn.sdeint_adjoint)
    torch.testing.assert_close(kl_a, kl_d, rtol=1e-14, atol=1e-14)
    for a, d in zip(adjoint, direct):
        if d is not None:
            torch.testing.assert_close(a, d, rtol=1e-10, atol=1e-12)
