"""An SDE given by f and g, by f_and_g, by g_prod or by f_and_g_prod steps to the same bits (torchsde's promise)."""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


def _variants(sde_type: str, vector: torch.Tensor):
    """The six ways torchsde's tests spell one general-noise SDE: dy = -y dt + sigmoid(y) v^T dW."""

    def g(t, y):
        return y.unsqueeze(-1).sigmoid() * vector

    def g_prod(t, y, v):
        return g(t, y).bmm(v.unsqueeze(-1)).squeeze(-1)

    def f(t, y):
        return -y

    def make(**methods):
        sde = type("SDE", (), {})()
        sde.noise_type, sde.sde_type = "general", sde_type
        for name, fn in methods.items():
            setattr(sde, name, fn)
        return sde

    return [
        make(f=f, g=g),
        make(f_and_g=lambda t, y: (f(t, y), g(t, y))),
        make(f=f, g_prod=g_prod),
        make(f_and_g_prod=lambda t, y, v: (f(t, y), g_prod(t, y, v))),
        make(f_and_g=lambda t, y: (f(t, y), g(t, y)), g_prod=g_prod),
        make(f=f, f_and_g=lambda t, y: (f(t, y), g(t, y)), g_prod=g_prod),
    ]


@pytest.mark.parametrize("sde_type,method", [("ito", "euler"), ("stratonovich", "midpoint")])
@pytest.mark.parametrize("seed", range(4))
def test_every_spelling_of_the_sde_gives_the_same_bits(sde_type, method, seed):
    # The g path fused y + f h + g dW into two torch.add calls, the g_prod path summed y + f * h + gdw:
    # one ulp apart (up to 2.2e-16 on these seeds), where torchsde's test_specialised_functions wants equality.
    gen = torch.Generator().manual_seed(seed)
    vector = torch.randn(2, generator=gen)
    y0 = torch.randn(4, 3, generator=gen)
    outs = []
    for sde in _variants(sde_type, vector):
        bm = hn.BrownianInterval(0.0, 0.3, (4, 2), entropy=45678)
        outs.append(hn.sdeint(sde, y0, [0.0, 0.3], dt=0.05, bm=bm, method=method)[1])
    for out in outs[1:]:
        assert torch.equal(out, outs[0]), float((out - outs[0]).abs().max())
