"""sde-memory: peak memory of a fixed-step ``sdeint`` versus the number of steps (the Brownian grid's noise).

Workload (docs/performance.md, "Scaling", Brownian motion and SDEs): diagonal-noise SDE
dy = -y dt + 0.1 y dW, state and noise 16 x 64, float32, ``method="euler"``, ``dt = 1/n`` on [0, 1]
(``sdeint`` builds a ``dt``-hinted ``BrownianInterval``), under ``torch.no_grad()``; and
``sdeint_adjoint`` of the same SDE with a learnable drift scale (forward and backward pass).
Each measurement runs in a fresh process: the growth of its peak resident set (``ru_maxrss``) during
the solve over the peak after a warm-up solve of 10 steps, with ``MALLOC_MMAP_THRESHOLD_=65536`` so
that freed buffers go back to the system.

Usage::

    python benchmarks/sde_memory.py                      # table: no_grad 10^3..10^5, adjoint 10^3, 10^4
    python benchmarks/sde_memory.py --one no_grad 1000   # one measurement (what the table runs)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _solve(kind: str, n: int) -> None:
    import torch

    import hybrid_node as hn

    class SDE(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(1.0))

        def f(self, t, y):
            return -self.a * y

        def g(self, t, y):
            return 0.1 * y

    sde = SDE()
    y0 = torch.ones(16, 64)
    if kind == "no_grad":
        with torch.no_grad():
            hn.sdeint(sde, y0, torch.tensor([0.0, 1.0]), method="euler", dt=1.0 / n)
    else:
        ys = hn.sdeint_adjoint(sde, y0, torch.tensor([0.0, 1.0]), method="euler", dt=1.0 / n)
        ys[-1].sum().backward()


def _one(kind: str, n: int) -> dict:
    _solve(kind, 10)  # warm-up: imports, allocator, thread pools
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    _solve(kind, n)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "n": n, "mb": (peak - base) / 1024, "us_per_step": 1e6 * seconds / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("KIND", "N"), help="one measurement: no_grad|adjoint and steps")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one[0], int(args.one[1]))))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for kind, n in [("no_grad", 1000), ("no_grad", 10000), ("no_grad", 100000), ("adjoint", 1000), ("adjoint", 10000)]:
        out = subprocess.run(
            [sys.executable, __file__, "--one", kind, str(n)], env=env, capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['kind']:8s} n={r['n']:>6d}  +{r['mb']:7.1f} MB  {r['us_per_step']:8.1f} us/step", flush=True)


if __name__ == "__main__":
    main()
