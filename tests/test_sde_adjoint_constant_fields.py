"""The adjoints with a drift, diffusion or KL rate that depends on neither the state nor the parameters.

``torch.zeros_like(y)`` as a drift (torchsde's test problem ExScalar in Stratonovich form) or a constant
diffusion has no graph; the backward passes handed it to ``torch.autograd.grad``, which refused it with
"element 0 of tensors does not require grad and does not have a grad_fn". Such a term adds nothing to
the vector-Jacobian product.
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


class _ZeroDrift(torch.nn.Module):
    """dy = 0 dt + p cos(y)^2 dW (scalar noise, Stratonovich): only the diffusion has a graph."""

    noise_type, sde_type = "scalar", "stratonovich"

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor([0.5, 0.7, 0.9]))

    def f(self, t, y):
        return torch.zeros_like(y)

    def g(self, t, y):
        return (self.p * torch.cos(y) ** 2).unsqueeze(-1)


class _Constant(torch.nn.Module):
    """dy = 1 dt + 0.3 dW (additive noise): no graph at all; y(T) = y0 + T + 0.3 sum W(T)."""

    noise_type, sde_type = "additive", "stratonovich"

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.tensor([0.5]))

    def f(self, t, y):
        return torch.ones_like(y)

    def g(self, t, y):
        return torch.full((*y.shape, 2), 0.3)

    def h(self, t, y):
        return torch.zeros_like(y)


def _grads(solve, sde, method, m, **kw):
    y0 = torch.full((4, 3), 0.1, requires_grad=True)
    bm = hn.BrownianInterval(0.0, 0.5, (4, m), entropy=1)
    out = solve(sde, y0, torch.tensor([0.0, 0.25, 0.5]), bm=bm, method=method, dt=0.01, **kw)
    ys, kl = out if isinstance(out, tuple) else (out, None)
    loss = (ys[-1] ** 2).sum() + (0.0 if kl is None else kl.sum())
    params = [p for p in sde.parameters()]
    return ys.detach(), torch.autograd.grad(loss, [y0, *params], allow_unused=True)


@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
def test_a_zero_drift_is_differentiated_as_direct_backprop(method):
    ys, direct = _grads(hn.sdeint, _ZeroDrift(), method, 1)
    _, adjoint = _grads(hn.sdeint_adjoint, _ZeroDrift(), method, 1)
    for a, d in zip(adjoint, direct):
        if method == "reversible_heun":
            # the reversible adjoint is exact: rounding only (5.6e-16 measured)
            torch.testing.assert_close(a, d, rtol=1e-10, atol=1e-12)
        else:
            # the stochastic adjoint converges with dt: 1.8e-3 off at dt = 0.01 on gradients of size 0.9
            torch.testing.assert_close(a, d, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
@pytest.mark.parametrize("logqp", [False, True])
def test_constant_fields_give_the_analytic_gradient(method, logqp):
    # y(T) = y0 + T + 0.3 (W1 + W2)(T), so d sum y(T)^2 / dy0 = 2 y(T); the KL rate 1/2 |(f - h) / g|^2
    # is a constant, adding nothing, and no parameter enters.
    ys, (gy0, gunused) = _grads(hn.sdeint_adjoint, _Constant(), method, 2, logqp=logqp)
    # exact arithmetic on both sides (the steps add constants): equal to rounding
    torch.testing.assert_close(gy0, 2 * ys[-1], rtol=1e-12, atol=1e-12)
    assert gunused is None or torch.equal(gunused, torch.zeros(1))
