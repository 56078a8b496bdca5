"""The SDE adjoints with a field that reads a tensor computed once, before the solve, from an adjoint parameter.

torchsde's SDE-GAN example (``examples/sde_gan.py``) discriminates with ``torchcde.cdeint(..., backend="torchsde",
adjoint_params=(ys_coeffs, ...))``: the control path's derivatives are computed from ``ys_coeffs`` once, when the
interpolation is built, and the vector field reads them at every step. Every step's vector-Jacobian product
then runs back through that one shared part of the graph; the adjoints freed it after the first step, and the
next step raised ``RuntimeError: Trying to backward through the graph a second time``, so the example's first
``loss.backward()`` failed. torchsde keeps the graph (``retain_graph=True``).
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


class _Precomputed(torch.nn.Module):
    """dy = -c y dt + s dW with c = exp(p) and s = sigmoid(p) computed once, outside the solve (as torchcde's
    interpolation derivatives are)."""

    noise_type = "diagonal"

    def __init__(self, c: torch.Tensor, s: torch.Tensor, sde_type: str):
        super().__init__()
        self.c, self.s, self.sde_type = c, s, sde_type

    def f(self, t, y):
        return -self.c * y

    def g(self, t, y):
        return self.s * torch.cos(y)


@pytest.mark.parametrize(
    "method, sde_type, rtol",
    [
        ("reversible_heun", "stratonovich", 1e-10),  # the reversible adjoint is exact: float64 rounding
        # the stochastic adjoint solves its own backward SDE: 1.1e-3 (midpoint) and 1.9e-2 (euler, Ito, falling to
        # 6.3e-3 at dt / 4) from backprop at dt = 0.01 here
        ("midpoint", "stratonovich", 5e-3),
        ("euler", "ito", 5e-2),
    ],
)
def test_adjoint_through_a_tensor_computed_before_the_solve(method, sde_type, rtol):
    torch.manual_seed(0)
    y0, ts = torch.randn(4, 3), torch.linspace(0.0, 1.0, 5)

    def grad(adjoint: bool):
        p = torch.tensor([0.2, -0.4, 0.1], requires_grad=True)
        sde = _Precomputed(torch.exp(p), torch.sigmoid(p), sde_type)  # one node each, shared by every step
        bm = hn.BrownianInterval(0.0, 1.0, (4, 3), entropy=3)
        if adjoint:  # p, as torchcde's ys_coeffs, is reached through the fields' graph only
            ys = hn.sdeint_adjoint(sde, y0, ts, bm=bm, method=method, dt=0.01, adjoint_params=(p,))
        else:
            ys = hn.sdeint(sde, y0, ts, bm=bm, method=method, dt=0.01)
        (g,) = torch.autograd.grad((ys**2).sum(), p)
        return g

    want, got = grad(False), grad(True)
    torch.testing.assert_close(got, want, rtol=rtol, atol=0)
