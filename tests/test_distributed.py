"""Data-parallel training: two CPU processes (torchrun, gloo, DistributedDataParallel) must produce
the gradients of single-process training on the full batch, for every gradient method."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from _ddp_problem import CASES, ODEModel, batch

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_ddp_two_processes_match_single_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        os.path.join(HERE, "_ddp_worker.py"),
        "--out",
        str(tmp_path),
    ]
    res = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"grads_rank{r}.pt") for r in range(2)]

    y0, targets = batch()
    for name in CASES:
        model = ODEModel(name)
        loss = (model(y0) - targets).pow(2).mean()  # equal halves: the mean of the ranks' means
        loss.backward()
        ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        for r, grads in enumerate(ranks):
            g = torch.cat([x.reshape(-1) for x in grads[name]])
            err = float((g - ref).norm() / ref.norm())
            # fixed steps: identical arithmetic up to the all-reduce's summation order; adaptive (rtol 1e-8):
            # the half-batch solves take different steps, so agreement is to the solver tolerance
            tol = 1e-12 if "rk4" in name else 1e-6
            assert err < tol, f"{name}, rank {r}: relative gradient difference {err:.2e}"
        # a sanity check that the comparison can fail: a different batch gives different gradients
        other = ODEModel(name)
        (other(y0[:4]) - targets[:, :4]).pow(2).mean().backward()
        g_other = torch.cat([p.grad.reshape(-1) for p in other.parameters()])
        assert float((g_other - ref).norm() / ref.norm()) > 1e-3
