"""``logqp=True`` costs the prior drift h at the method's KL stages, not a second drift and diffusion.

The KL rate 1/2 |(f - h) / g|^2 is integrated with the method's own stages (left point for euler, milstein and
euler_heun; start and predictor for heun; the midpoint stage for midpoint; SRA1's two drift stages for srk), where
the method evaluates f and g anyway. torchsde evaluates them once there for both (its KL term is a state of one
augmented SDE); hybrid_node evaluated them a second time for the rate: torchsde's latent SDE example
(``examples/latent_sde_lorenz.py``, euler, dt = 1e-2) ran its drift network 401 times per solve against
torchsde's 202. srk's second drift stage has no diffusion evaluation of its own, so the rate there costs one g.
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


class _Counted(torch.nn.Module):
    """A diagonal-noise SDE with a prior drift, counting its calls of f, g and h."""

    noise_type = "diagonal"

    def __init__(self, sde_type: str):
        super().__init__()
        self.sde_type = sde_type
        self.a = torch.nn.Parameter(torch.tensor([0.3, -0.5]))
        self.calls = {"f": 0, "g": 0, "h": 0}

    def f(self, t, y):
        self.calls["f"] += 1
        return torch.sin(y) * self.a + t

    def g(self, t, y):
        self.calls["g"] += 1
        return 0.5 + 0.2 * torch.tanh(y)

    def h(self, t, y):
        self.calls["h"] += 1
        return -y


def _solve(method: str, sde_type: str, logqp: bool, ts: torch.Tensor, grad: bool = True):
    torch.manual_seed(0)
    # y0 requires grad, as a latent SDE's does (Milstein differentiates g on a copy of a y0 without grad)
    sde, y0 = _Counted(sde_type), torch.randn(3, 2, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 1.0, (3, 2), entropy=5, levy_area_approximation="space-time")
    with torch.set_grad_enabled(grad):
        out = hn.sdeint(sde, y0, ts, bm=bm, method=method, dt=0.1, logqp=logqp)
    return sde, out


# method, SDE type, KL stages per step (the rate's h calls), diffusion calls per step the rate adds
STAGES = [
    ("euler", "ito", 1, 0),
    ("milstein", "ito", 1, 0),
    ("srk", "ito", 2, 1),  # the second drift stage: f is the step's, g is not
    ("euler_heun", "stratonovich", 1, 0),
    ("heun", "stratonovich", 2, 0),
    ("midpoint", "stratonovich", 1, 0),
    ("reversible_heun", "stratonovich", 1, 0),  # the rate at z1 is the next step's rate at z0
]


@pytest.mark.parametrize("method, sde_type, stages, extra_g", STAGES, ids=[s[0] for s in STAGES])
def test_logqp_reuses_the_steps_drift_and_diffusion(method, sde_type, stages, extra_g):
    ts = torch.linspace(0.0, 1.0, 11)  # the outputs are the step grid (dt = 0.1): ys holds every left point
    plain, ys_plain = _solve(method, sde_type, False, ts)
    counted, (ys, kl) = _solve(method, sde_type, True, ts)
    steps = len(ts) - 1
    # f and g as without logqp (before: one more of each per step); h once per KL stage and once in the input
    # check, which evaluates f and g once too (reversible_heun: once more at z0 of the first step)
    first = 1 if method == "reversible_heun" else 0
    assert counted.calls["f"] == plain.calls["f"], (counted.calls, plain.calls)
    assert counted.calls["g"] == plain.calls["g"] + extra_g * steps, (counted.calls, plain.calls)
    assert counted.calls["h"] == stages * steps + 1 + first
    torch.testing.assert_close(ys, ys_plain, rtol=0, atol=0)  # the same operations on the same inputs
    if stages > 1 or method in ("midpoint", "reversible_heun"):
        return  # their quadrature is checked against torchsde in tests/test_sde_logqp_order.py
    # the KL increments: the left-point rule at each step's start, computed here from the states
    with torch.no_grad():
        sde = _Counted(sde_type)
        sde.a.copy_(counted.a)
        want = torch.stack(
            [0.5 * (((sde.f(t, y) - sde.h(t, y)) / sde.g(t, y)) ** 2).sum(-1) * 0.1 for t, y in zip(ts[:-1], ys[:-1])]
        )
    torch.testing.assert_close(kl, want, rtol=1e-12, atol=0)  # float64 rounding of a few operations
    # without gradients too: Milstein's derivative of g needs g's graph, which the rate's g lacks then
    _, ys_plain = _solve(method, sde_type, False, ts, grad=False)
    _, (ys, _) = _solve(method, sde_type, True, ts, grad=False)
    torch.testing.assert_close(ys, ys_plain, rtol=0, atol=0)


def test_logqp_gradients_unchanged_by_the_shared_evaluation():
    # the rate and the step share one f and g; direct backprop through both against central differences
    ts = torch.linspace(0.0, 1.0, 6)

    def loss(a: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        sde, y0 = _Counted("ito"), torch.randn(3, 2)
        with torch.no_grad():
            sde.a.copy_(a)
        bm = hn.BrownianInterval(0.0, 1.0, (3, 2), entropy=5)
        ys, kl = hn.sdeint(sde, y0, ts, bm=bm, method="euler", dt=0.1, logqp=True)
        return (ys**2).sum() + kl.sum(), sde.a

    a0 = torch.tensor([0.3, -0.5])
    value, a = loss(a0)
    (grad,) = torch.autograd.grad(value, a)
    eps = 1e-6
    numeric = torch.stack([(loss(a0 + eps * e)[0] - loss(a0 - eps * e)[0]).detach() / (2 * eps) for e in torch.eye(2)])
    torch.testing.assert_close(grad, numeric, rtol=1e-7, atol=0)  # central differences: O(eps^2) + rounding / eps
