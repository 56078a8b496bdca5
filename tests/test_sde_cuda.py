"""SDE solves, Brownian intervals and the latent SDE on CUDA (skipped without it)."""

from __future__ import annotations

import math

import pytest
import torch

import hybrid_node as hn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_latent_sde_trains_and_samples_on_cuda():
    # sample_prior drew its noise with a plain randn (a CPU tensor) and failed to add it to the CUDA mean.
    torch.manual_seed(0)
    model = hn.nn.LatentSDE(1, 3, hidden=16, dt=0.05).cuda()
    ts = torch.linspace(0.0, 1.0, 6, device="cuda")
    xs = torch.randn(6, 4, 1, device="cuda")
    model(xs, ts).loss.backward()
    assert model.sample_prior(ts, 5).device.type == "cuda"
    assert model.sample_posterior(xs, ts, n=2).shape == (6, 8, 1)


def test_space_time_area_on_cuda_in_float32():
    # The knots' time integrals are kept in float64 on the device too (see test_sde_brownian.py).
    n, t1, h = 20000, 10.0, 1e-5
    bm = hn.BrownianInterval(
        0.0, t1, (n,), dtype=torch.float32, device="cuda", entropy=5, levy_area_approximation="space-time"
    )
    bm(0.0, t1)
    w, u = bm(5.0, 5.0 + h, return_U=True)
    assert w.device.type == u.device.type == "cuda" and u.dtype == torch.float32
    tol = 5 / math.sqrt(n)  # ~3.5 sampling standard deviations of a variance ratio
    assert abs(float(w.double().var()) / h - 1) < tol
    assert abs(float(u.double().var()) / (h**3 / 3) - 1) < tol


def test_adaptive_srk_with_a_space_time_area_runs_on_cuda():
    class GBM:
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return 0.5 * y

        def g(self, t, y):
            return 0.8 * y

    kwargs = dict(method="srk", adaptive=True, dt=0.1, rtol=1e-3, atol=1e-4)
    y0 = torch.ones(8, 1, dtype=torch.float64)
    ts = [0.0, 0.5, 1.0]
    make = lambda device: hn.BrownianInterval(  # noqa: E731
        0.0, 1.0, (8, 1), dtype=torch.float64, device=device, entropy=3, levy_area_approximation="space-time"
    )
    ys_gpu = hn.sdeint(GBM(), y0.cuda(), ts, bm=make("cuda"), **kwargs)
    assert ys_gpu.device.type == "cuda" and bool(torch.isfinite(ys_gpu).all())
