"""The diffrax adapter of the benchmark runner solves the same problem as the torch frameworks.

Skipped where JAX/diffrax are not installed (they are optional: the ``bench`` extra).
"""

import numpy as np
import pytest
import torch

pytest.importorskip("jax")
pytest.importorskip("diffrax")

from benchmarks import diffrax_peer, frameworks
from benchmarks.workloads import make


def _small(name):
    """The workload at batch 16 (the weights and tolerances are those of the benchmark)."""
    return make(name, batch=16)


def test_mlp_fwd_matches_a_float64_torch_solve():
    # both solve dy/dt = MLP(y) at rtol 1e-5 / atol 1e-6 in float32; a tight float64 solve is the truth,
    # and each solution's global error is a small multiple of the tolerance
    import torchdiffeq

    w = _small("mlp-fwd")
    run = diffrax_peer.prepare_diffrax(w)
    ys = torch.from_numpy(np.array(run()[0])).double()
    with torch.no_grad():
        ref = torchdiffeq.odeint(w.field.double(), w.y0.double(), w.t.double(), rtol=1e-10, atol=1e-10)
    assert ys.shape == ref.shape == (50, 16, 2)
    assert (ys - ref).abs().max() < 1e-4
    assert run.compile_s > 0 and run.num_steps > 0
    assert run.nfe() >= 6 * run.num_steps  # dopri5: six new stages per step (FSAL)


@pytest.mark.slow
def test_mlp_train_gradients_match_the_reference_direct_and_adjoint():
    from benchmarks.run import reference_gradient

    for name in ("mlp-train-direct", "mlp-train-adjoint"):
        w = _small(name)
        ref = reference_gradient(w)
        run = frameworks.PREPARE["diffrax"](w)
        run()
        g = run.grads()
        assert g.shape == ref.shape
        assert float((g - ref).norm() / ref.norm()) < 1e-4, name


def test_conv_field_matches_the_torch_field():
    # the JAX ODE-Net block (GroupNorm, time-channel convs, same weights) gives the torch block's output
    # to float32 rounding, at two times (the time channel matters)
    import jax

    w = make("conv-fwd", batch=2)
    params = diffrax_peer._params(w.field)
    y = w.y0.numpy()
    for shifted in (False, True):  # lax.conv_general_dilated, and the CPU's nine shifted matmuls
        f = diffrax_peer._conv_field(w.field, shifted)
        for t in (0.0, 0.7):
            with torch.no_grad():
                ref = w.field(torch.tensor(t), w.y0).numpy()
            with jax.default_matmul_precision("highest"):
                out = np.asarray(f(np.float32(t), y, params))
            assert out.shape == ref.shape == (2, 64, 7, 7)
            assert np.abs(out - ref).max() < 1e-4 * np.abs(ref).max()
