"""logqp with a non-diagonal diffusion that does not use every noise channel: u = g^+ (f - h), torchsde's."""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


class _Unused(torch.nn.Module):
    """General noise whose diffusion uses only the channels in ``used`` (the others are zero columns)."""

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, used: list[int], m: int, d: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.used, self.m, self.d = used, m, d
        self.drift = torch.nn.Linear(d, d)
        self.mix = torch.nn.Linear(d, d * 2)  # the diffusion's columns for channels used[0], used[1]

    def f(self, t, y):
        return torch.tanh(self.drift(y))

    def h(self, t, y):
        return -y

    def g(self, t, y):
        cols = torch.sigmoid(self.mix(y)).view(-1, self.d, 2)
        out = y.new_zeros(y.shape[0], self.d, self.m)
        out[..., self.used] = cols
        return out


class _Channels:
    """The channels ``keep`` of a Brownian motion, as a Brownian motion of its own."""

    def __init__(self, bm, keep: list[int]):
        self.bm, self.keep = bm, keep
        self.shape, self.dtype, self.device = (bm.shape[0], len(keep)), bm.dtype, bm.device

    def __call__(self, ta, tb=None):
        return self.bm(ta, tb)[..., self.keep]


@pytest.mark.parametrize("sde_type,method", [("ito", "euler"), ("stratonovich", "midpoint")])
def test_kl_of_a_diffusion_with_an_unused_channel_is_that_without_it(sde_type, method):
    # A zero column of g adds no noise, so the solve and the KL rate 1/2 |g^+ (f - h)|^2 are those of the
    # SDE without that channel. torch.linalg.lstsq (gelsy) gave u = 0 for most rows of the batch: the KL
    # integrals were 99.6-100 % too small.
    y0 = torch.randn(6, 3)
    bm = hn.BrownianInterval(0.0, 1.0, (6, 3), entropy=7)
    with_unused = _Unused([0, 2], 3)
    without = _Unused([0, 1], 2)
    with_unused.sde_type = without.sde_type = sde_type
    ts = [0.0, 0.5, 1.0]
    ys, kl = hn.sdeint(with_unused, y0, ts, bm=bm, method=method, dt=1 / 32, logqp=True)
    ys_ref, kl_ref = hn.sdeint(without, y0, ts, bm=_Channels(bm, [0, 2]), method=method, dt=1 / 32, logqp=True)
    # the same arithmetic up to the pseudo-inverse of a (3, 3) against a (3, 2) matrix: rounding only
    torch.testing.assert_close(ys, ys_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-10, atol=1e-10)


def test_kl_with_an_unused_channel_matches_torchsde():
    torchsde = pytest.importorskip("torchsde")
    sde = _Unused([1, 2], 3)
    y0 = torch.randn(5, 3)
    bm = torchsde.BrownianInterval(0.0, 1.0, (5, 3), entropy=2)
    ours = hn.sdeint(sde, y0, [0.0, 0.5, 1.0], bm=bm, method="euler", dt=1 / 32, logqp=True)
    theirs = torchsde.sdeint(sde, y0, [0.0, 0.5, 1.0], bm=bm, method="euler", dt=1 / 32, logqp=True)
    # both left-point Euler sums of the same rate (torchsde's pinverse, ours pinv): equal to rounding
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-12, atol=1e-12)
