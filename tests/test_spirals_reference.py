"""The spirals generator against torchdiffeq's ``examples/latent_ode.py`` (``generate_spiral2d``), read from
torchdiffeq's repository at test time (set TORCHDIFFEQ_REPO; skipped when it is absent).

Both sides are fed the same random draws (window starts, direction draws and noise), so with the reference's
start range (``nextrap=0``) the data sets must agree exactly.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from _reference_code import load_module, read_source, repository

from hybrid_node.data import spirals
from hybrid_node.data.spirals import SpiralConfig, make_spirals

TORCHDIFFEQ_REPO = repository("TORCHDIFFEQ_REPO", "/work/.mirror/rtqichen+torchdiffeq/repo")


@pytest.fixture
def generate_spiral2d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """torchdiffeq's ``examples/latent_ode.py`` as a module (skip if absent)."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("torchdiffeq")
    path = tmp_path / "torchdiffeq_latent_ode_example.py"
    source = read_source(TORCHDIFFEQ_REPO, "examples/latent_ode.py", "TORCHDIFFEQ_REPO", "torchdiffeq's repository")
    path.write_text(source)
    monkeypatch.setattr(sys, "argv", ["latent_ode.py"])  # the example parses its command line on import
    return load_module(path, "torchdiffeq_latent_ode_example")


class _Draws:
    """Pre-drawn randomness, handed out as the reference's ``numpy.random`` calls and as ours ask for it."""

    def __init__(self, n: int, nsample: int, ntotal: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.nsample, self.ntotal = nsample, ntotal
        self.starts = rng.integers(nsample, ntotal - nsample, size=n)
        self.uniform = rng.random(n)
        self.noise = rng.standard_normal((n, nsample, 2))
        self.calls = {"multinomial": 0, "rand": 0, "randn": 0}

    # the reference's per-spiral calls: npr.multinomial(1, pvals), npr.rand(), npr.randn(nsample, 2)
    def multinomial(self, count: int, pvals: list) -> np.ndarray:
        assert count == 1 and len(pvals) == self.ntotal - 2 * self.nsample
        out = np.zeros(len(pvals), dtype=int)
        out[self.starts[self.calls["multinomial"]] - self.nsample] = 1
        self.calls["multinomial"] += 1
        return out

    def rand(self) -> float:
        self.calls["rand"] += 1
        return float(self.uniform[self.calls["rand"] - 1])

    def randn(self, *shape: int) -> np.ndarray:
        self.calls["randn"] += 1
        return self.noise[self.calls["randn"] - 1].reshape(shape)

    # our one batch of calls on a numpy Generator
    def generator(self, seed: object = None) -> types.SimpleNamespace:
        def integers(low: int, high: int, size: int) -> np.ndarray:
            # the reference's start range, [nsample, ntotal - nsample)
            assert (low, high, size) == (self.nsample, self.ntotal - self.nsample, len(self.starts))
            return self.starts

        def standard_normal(shape: tuple) -> np.ndarray:
            return self.noise if shape == self.noise.shape else np.zeros(shape)  # the empty future's noise

        return types.SimpleNamespace(integers=integers, random=lambda n: self.uniform, standard_normal=standard_normal)


def test_windows_equal_the_reference_given_the_same_draws(generate_spiral2d, monkeypatch):
    # The example's own settings (main block): start 0, stop 6 pi, a 0, b 0.3, noise 0.3, and the defaults
    # ntotal 500, nsample 100 of generate_spiral2d (its main sets ntotal = 1000 but does not pass it).
    n = 64
    cfg = SpiralConfig(nspiral=n, nextrap=0)
    draws = _Draws(n, cfg.nsample, cfg.ntotal, seed=5)
    monkeypatch.setattr(generate_spiral2d, "npr", draws)
    orig_trajs, samp_trajs, orig_ts, samp_ts = generate_spiral2d.generate_spiral2d(
        nspiral=n, start=0.0, stop=6 * math.pi, noise_std=0.3, a=0.0, b=0.3, savefig=False
    )
    assert draws.calls == {"multinomial": n, "rand": n, "randn": n}
    monkeypatch.setattr(spirals.np.random, "default_rng", draws.generator)
    ours = make_spirals(cfg, seed=0)
    # float32 storage of values up to ~6 in size: a relative 6e-8 rounding, so 1e-5 absolute is ample
    np.testing.assert_allclose(ours.observed.numpy(), samp_trajs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.clean.numpy() + 0.3 * draws.noise, samp_trajs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.times.numpy(), samp_ts, rtol=0, atol=1e-6)  # start 0: the same clock
    np.testing.assert_array_equal(ours.start_index.numpy(), draws.starts)
    # the reference's direction: counter-clockwise when rand() > 0.5; its orig_trajs is the chosen curve
    _, cw, cc = spirals.spiral_curves(cfg)
    np.testing.assert_array_equal(ours.clockwise.numpy(), ~(draws.uniform > 0.5))
    for i in range(n):
        np.testing.assert_allclose(orig_trajs[i], cw if bool(ours.clockwise[i]) else cc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(orig_ts, np.linspace(0, 6 * math.pi, 500), rtol=0, atol=1e-12)
