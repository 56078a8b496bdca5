"""Per-solve cost of the compiled forward solve (``options={"compile": True}``, the whole-solve graph).

The mlp-fwd workload (MLP 2-64-64-2 tanh, batch 512, float32, dopri5, rtol 1e-5, atol 1e-6, 50 outputs
on [0, 5]: 4 steps) under ``torch.no_grad`` on one thread: the first call, then the median and minimum
of ``--solves`` timed solves after warm-up, and how much of a solve lies outside the compiled graph.

With ``--baseline DIR`` the ``hybrid_node`` package of another checkout (e.g. main) is imported
under another name in the same process and the two are timed in shuffled interleaved rounds, with
the eager solver as a third, so that the machine's load hits all alike::

    python -m benchmarks.host_cost --solves 150 --baseline /path/to/main
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

import hybrid_node

from ._cli import positive_int
from .ab import baseline_package, check_baseline, first_calls, unit
from .run import interleaved
from .workloads import make


def _outside_graph(pkg, solve, n: int) -> tuple[float, float]:
    """Median and minimum ms of a solve spent outside the call of the compiled graph."""
    whole = importlib.import_module(pkg.__name__ + ".loop.whole")
    inside: list[float] = []
    original = whole.WholeSolve._call

    def timed(self, *args):
        start = time.perf_counter()
        out = original(self, *args)
        inside.append(time.perf_counter() - start)
        return out

    whole.WholeSolve._call = timed
    try:
        total = []
        for _ in range(n):
            start = time.perf_counter()
            solve()
            total.append(time.perf_counter() - start)
    finally:
        whole.WholeSolve._call = original
    outside = [a - b for a, b in zip(total, inside)]
    return 1e3 * statistics.median(outside), 1e3 * min(outside)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solves", type=positive_int, default=100, help="timed solves per implementation")
    parser.add_argument("--baseline", default=None, help="another checkout whose hybrid_node to compare with")
    args = parser.parse_args(argv)
    check_baseline(parser, args.baseline)
    torch.set_num_threads(1)
    w = make("mlp-fwd")
    packages = {"this": hybrid_node}
    if args.baseline:
        packages = {"baseline": baseline_package(args.baseline), **packages}
    runs = {name: unit(w, pkg, {"compile": True}) for name, pkg in packages.items()}
    runs["eager"] = unit(w, hybrid_node, None)
    first_calls(runs)
    for _ in range(5):
        for run in runs.values():
            run()
    for name, ts in interleaved(runs, args.solves).items():
        print(f"{name:8s} median {1e3 * statistics.median(ts):7.3f} ms  min {1e3 * min(ts):7.3f} ms  (n={len(ts)})")
    for name, pkg in packages.items():
        med, low = _outside_graph(pkg, runs[name], args.solves)
        print(f"{name:8s} outside the graph call: median {med:.3f} ms  min {low:.3f} ms")


if __name__ == "__main__":
    main()
