"""Determinism: the same solve gives the same bits, and a per-sample solve of one sample does not depend
on the other samples of its batch."""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("one_thread")


def _rowwise(t, y):
    """A field with no operation across samples: each row of its output is computed from that row
    alone by elementwise kernels, so any batch dependence of a result comes from the solver."""
    return torch.tanh(0.7 * y.roll(1, -1) + torch.sin(y)) - 0.1 * y


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8", "fehlberg2", "adaptive_heun"])
def test_a_per_sample_solve_of_a_sample_alone_equals_its_row_of_the_batch(method):
    # Per-sample control steps every sample with its own step sizes, and each sample's state, error
    # norm and dense output are computed from its own row only, so the sample alone must give the same
    # bits as in the batch. dopri5's and tsit5's dense output was one batched matrix product whose
    # kernel depends on the batch's shape: alone, samples differed from their batch rows by an ulp.
    y0 = torch.tensor([[0.3, -0.2, 0.5], [0.1, 0.4, -0.6], [2.0, -1.5, 0.7], [0.0, 0.0, 0.01]], dtype=torch.float64)
    t = torch.linspace(0, 2, 6, dtype=torch.float64)  # interior outputs: the dense output is used
    options = {"per_sample": True}
    batch = hn.odeint(_rowwise, y0, t, method=method, options=options, rtol=1e-6, atol=1e-8)
    for i in range(len(y0)):
        alone = hn.odeint(_rowwise, y0[i : i + 1], t, method=method, options=options, rtol=1e-6, atol=1e-8)
        assert torch.equal(alone[:, 0], batch[:, i]), i
    order = torch.tensor([2, 0, 3, 1])
    permuted = hn.odeint(_rowwise, y0[order], t, method=method, options=options, rtol=1e-6, atol=1e-8)
    assert torch.equal(permuted, batch[:, order])


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_per_sample_dense_output_is_the_continuous_extension(method):
    """The elementwise form of the dense output is still the method's: the per-sample solve of a
    linear problem meets the exact solution at interior outputs to the tolerance (the output times
    fall inside steps, so they are interpolated)."""
    lam = torch.tensor([[-0.5], [-1.3], [-2.0]], dtype=torch.float64)
    t = torch.linspace(0, 2, 9, dtype=torch.float64)
    y0 = torch.ones(3, 1, dtype=torch.float64)
    ys = hn.odeint(lambda s, y: lam * y, y0, t, method=method, options={"per_sample": True}, rtol=1e-8, atol=1e-10)
    exact = torch.exp(lam[None] * t[:, None, None])
    # a 4th-order interpolant within steps chosen for rtol 1e-8 errs by at most ~1e-8 relative; 1e-6
    # leaves a margin of 100 while a wrong weight (any coefficient) gives errors of order 1e-2
    assert torch.allclose(ys, exact, rtol=1e-6, atol=0)


# Solves whose results a fresh process must reproduce bit for bit: the adaptive, implicit, multistep
# and switching loops, both adjoints' gradients, per-sample control and an SDE with a seeded Brownian
# motion. Printed as hex digests of the result bytes.
_SCRIPT = """
import hashlib, torch, hybrid_node as hn
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
w = torch.tensor([[0.3, -0.5, 0.2], [0.4, 0.2, -0.3], [0.1, 0.6, -0.2]], requires_grad=True)
f = lambda t, y: torch.tanh(y @ w.T) - 0.1 * y
y0 = torch.tensor([[0.3, -0.2, 0.5], [0.1, 0.4, -0.6]])
t = torch.linspace(0, 1, 5)
outs = []
for m, o in [("dopri5", None), ("kvaerno5", None), ("bdf", None), ("lsoda", None), ("adams", None),
             ("dopri5", {"per_sample": True}), ("rodas5p", None)]:
    ys = hn.odeint(f, y0, t, method=m, options=o, rtol=1e-6, atol=1e-8)
    outs += [ys, *torch.autograd.grad(ys.square().sum(), w)]
ys = hn.odeint_adjoint(f, y0, t, rtol=1e-6, atol=1e-8, adjoint_params=(w,))
outs += [ys, *torch.autograd.grad(ys.square().sum(), w)]
ys = hn.solve(f, y0, t, sensitivity=hn.InterpolatingAdjoint(), adjoint_params=(w,)).ys
outs += [ys, *torch.autograd.grad(ys.square().sum(), w)]

class SDE(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"
    def f(self, t, y):
        return f(t, y)
    def g(self, t, y):
        return 0.2 * torch.cos(y)

bm = hn.BrownianInterval(0.0, 1.0, size=(2, 3), entropy=11, dtype=torch.float64)
outs.append(hn.sdeint(SDE(), y0, t, bm=bm, method="euler", dt=0.05, adaptive=True))
print(" ".join(hashlib.sha256(x.detach().contiguous().numpy().tobytes()).hexdigest()[:16] for x in outs))
"""


@pytest.mark.slow  # two fresh interpreters importing torch (~10 s)
def test_two_processes_give_the_same_bits():
    """torch's CPU kernels are deterministic at a fixed thread count, so any difference between two
    fresh processes would come from the library: iteration over sets or dicts keyed by ``id`` or by
    salted string hashes (each process draws its own PYTHONHASHSEED), seeds taken from the clock, or
    memory read before it was written. The processes get different hash seeds on purpose."""
    import os
    import subprocess
    import sys

    digests = []
    for seed in ("1", "98765"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        run = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        digests.append(run.stdout.split())
    assert len(digests[0]) == 19 and digests[0] == digests[1]
