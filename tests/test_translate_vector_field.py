"""The vector field itself (not only its network) must compute what the native path rebuilds in Julia."""

from __future__ import annotations

import torch
from julia_standin import StandinEngine
from torch import nn

import hybrid_node as hn
from hybrid_node.julia import backend as jb
from hybrid_node.julia.translate import MLPVectorField, translate_mlp


class _Damped(MLPVectorField):
    """f(t, y) = net(y) - y: a subclass whose inherited mlp_spec() describes only net(y)."""

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().forward(t, y) - y


class _DampedWithSpec(_Damped):
    """The same formula, but the subclass answers for its own mlp_spec(): trusted, as any module offering one."""

    def mlp_spec(self) -> tuple[nn.Sequential, bool]:
        return self.net, self.time_input


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def test_a_subclass_that_overrides_forward_takes_the_callback_path():
    # Was solved natively as the bare network: max |y| difference 0.70 against the torch backend at t = 1.
    func = _Damped(_net())
    spec, why = translate_mlp(func)
    assert spec is None and "overrides MLPVectorField.forward" in why, why
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    y0 = torch.randn(3, 2, dtype=torch.float64)
    tol = dict(rtol=1e-10, atol=1e-12)
    julia = jb.solve_with_engine(StandinEngine(), func, y0, t, **tol).ys
    # two independent solvers at rtol 1e-10 over a unit interval agree far better than 1e-7
    torch.testing.assert_close(julia, hn.odeint(func, y0, t, **tol), rtol=1e-7, atol=1e-8)


def test_plain_fields_and_subclasses_with_their_own_spec_stay_native():
    assert translate_mlp(MLPVectorField(_net()))[0] is not None
    assert translate_mlp(_DampedWithSpec(_net()))[0] is not None
