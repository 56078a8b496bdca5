"""brownian-memory: peak memory and time per query of Brownian motions queried off a ``dt`` grid.

Workloads (docs/performance.md, "Scaling", Brownian motion and SDEs), state 16 x 64, float64:

- ``tree``: n point queries of a ``BrownianTree`` (tol 1e-6) at uniformly random times in [0, 1];
- ``seq``: n consecutive increments bm(k/n, (k+1)/n) of a ``BrownianInterval`` without a ``dt`` hint
  (what an adaptive solve asks for), then the same n increments in reverse order (an adjoint's
  backward pass); the time per query is over both passes;
- ``seq-st``: as ``seq`` with ``levy_area_approximation="space-time"`` and ``return_U=True``.

Each measurement runs in a fresh process: the growth of its peak resident set (``ru_maxrss``) over
the peak after a warm-up of 10 queries, with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed buffers go
back to the system.

Usage::

    python benchmarks/brownian_memory.py                 # table: tree, seq, seq-st at 10^3 and 10^4
    python benchmarks/brownian_memory.py --one tree 1000  # one measurement (what the table runs)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

SIZE = (16, 64)


def _run(kind: str, n: int) -> None:
    import torch

    import hybrid_node as hn

    if kind == "tree":
        bm = hn.BrownianTree(0.0, torch.zeros(SIZE, dtype=torch.float64), t1=1.0, entropy=1, tol=1e-6)
        rng = random.Random(0)
        for _ in range(n):
            bm(rng.random())
        return
    levy = "space-time" if kind == "seq-st" else "none"
    bm = hn.BrownianInterval(0.0, 1.0, SIZE, dtype=torch.float64, entropy=1, levy_area_approximation=levy)
    order = list(range(n))
    for k in order + order[::-1]:
        bm(k / n, (k + 1) / n, return_U=levy != "none")


def _one(kind: str, n: int) -> dict:
    _run(kind, 10)  # warm-up: imports, allocator, thread pools
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    _run(kind, n)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queries = n if kind == "tree" else 2 * n
    return {"kind": kind, "n": n, "mb": (peak - base) / 1024, "us_per_query": 1e6 * seconds / queries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("KIND", "N"), help="one measurement: tree|seq|seq-st and n")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one[0], int(args.one[1]))))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for kind in ("tree", "seq", "seq-st"):
        for n in (1000, 10000):
            out = subprocess.run(
                [sys.executable, __file__, "--one", kind, str(n)], env=env, capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['kind']:7s} n={r['n']:>6d}  +{r['mb']:7.1f} MB  {r['us_per_query']:8.1f} us/query", flush=True)


if __name__ == "__main__":
    main()
