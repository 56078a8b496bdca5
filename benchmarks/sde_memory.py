"""sde-memory: peak memory of a fixed-step ``sdeint`` versus the number of steps (the Brownian grid's noise).

Workload (docs/performance.md, "Scaling", Brownian motion and SDEs): diagonal-noise SDE
dy = -y dt + 0.1 y dW, state and noise 16 x 64, float32, ``method="euler"``, ``dt = 1/n`` on [0, 1]
(``sdeint`` builds a ``dt``-hinted ``BrownianInterval``), under ``torch.no_grad()``; and
``sdeint_adjoint`` of the same SDE with a learnable drift scale (forward and backward pass).
Each measurement runs in a fresh process: the growth of its peak resident set (``_rss.rss_growth``) during
the solve over the resident set after a warm-up solve of 10 steps, with ``MALLOC_MMAP_THRESHOLD_=65536`` so
that freed buffers go back to the system.

Usage::

    python benchmarks/sde_memory.py                      # table: no_grad 10^3..10^5, adjoint 10^3, 10^4
    python benchmarks/sde_memory.py --one no_grad 1000   # one measurement (what the table runs)
"""

from __future__ import annotations

try:
    from ._rss import rss_growth, table_main
except ImportError:  # run as a script (python benchmarks/sde_memory.py): its folder is on sys.path
    from _rss import rss_growth, table_main


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
    mb, seconds = rss_growth(lambda m: _solve(kind, m), n)
    return {"kind": kind, "n": n, "mb": mb, "us_per_step": 1e6 * seconds / n}


def main() -> None:
    table_main(
        __file__,
        __doc__.splitlines()[0],
        "one measurement: no_grad|adjoint and steps",
        _one,
        [("no_grad", 1000), ("no_grad", 10000), ("no_grad", 100000), ("adjoint", 1000), ("adjoint", 10000)],
        lambda r: f"{r['kind']:8s} n={r['n']:>6d}  +{r['mb']:7.1f} MB  {r['us_per_step']:8.1f} us/step",
    )


if __name__ == "__main__":
    main()
