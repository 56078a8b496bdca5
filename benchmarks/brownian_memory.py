"""brownian-memory: peak memory and time per query of Brownian motions queried off a ``dt`` grid.

Workloads (docs/performance.md, "Scaling", Brownian motion and SDEs), state 16 x 64, float64:

- ``tree``: n point queries of a ``BrownianTree`` (tol 1e-6) at uniformly random times in [0, 1];
- ``seq``: n consecutive increments bm(k/n, (k+1)/n) of a ``BrownianInterval`` without a ``dt`` hint
  (what an adaptive solve asks for), then the same n increments in reverse order (an adjoint's
  backward pass); the time per query is over both passes;
- ``seq-st``: as ``seq`` with ``levy_area_approximation="space-time"`` and ``return_U=True``.

Each measurement runs in a fresh process: the growth of its peak resident set (``_rss.rss_growth``) over
the resident set after a warm-up of 10 queries, with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed buffers go
back to the system.

Usage::

    python benchmarks/brownian_memory.py                 # table: tree, seq, seq-st at 10^3 and 10^4
    python benchmarks/brownian_memory.py --one tree 1000  # one measurement (what the table runs)
"""

from __future__ import annotations

import random

try:
    from ._rss import rss_growth, table_main
except ImportError:  # run as a script (python benchmarks/brownian_memory.py): its folder is on sys.path
    from _rss import rss_growth, table_main

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
    mb, seconds = rss_growth(lambda m: _run(kind, m), n)
    queries = n if kind == "tree" else 2 * n
    return {"kind": kind, "n": n, "mb": mb, "us_per_query": 1e6 * seconds / queries}


def main() -> None:
    table_main(
        __file__,
        __doc__.splitlines()[0],
        "one measurement: tree|seq|seq-st and n",
        _one,
        [(kind, n) for kind in ("tree", "seq", "seq-st") for n in (1000, 10000)],
        lambda r: f"{r['kind']:7s} n={r['n']:>6d}  +{r['mb']:7.1f} MB  {r['us_per_query']:8.1f} us/query",
    )


if __name__ == "__main__":
    main()
