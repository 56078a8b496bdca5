"""brownian-sequential: time per query of sequential Brownian increments, bounded knot cache against keep-all.

A ``BrownianInterval`` without a ``dt`` hint (what an adaptive solve queries), state 16 x 64 float64 (the
sizes of docs/performance.md, "Scaling"), answers n consecutive increments bm(k/n, (k+1)/n):

- ``fwd``: the n increments in time order (a forward solve);
- ``fwd+bwd``: then the same n in reverse order (an adjoint's backward pass); time per query over both.

Modes: ``keep-all`` (``cache_size=None``), ``auto`` (the default bounded cache, 16 MiB of knots) and
torchsde's ``BrownianInterval`` (its default cache of 45 knots) on the same queries. Every cell builds a
fresh object; the modes alternate within each round, and the table gives the median over the rounds of the
CPU time (``time.process_time``, less disturbed by other jobs on a shared machine than wall time) per
query, with one torch thread.

Usage::

    python benchmarks/brownian_sequential.py             # the table, 5 rounds
    python benchmarks/brownian_sequential.py --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

try:
    from ._cli import positive_int
except ImportError:  # run as a script: its folder is on sys.path
    from _cli import positive_int

SIZE = (16, 64)
SIZES = (1000, 10000)
WORKLOADS = ("fwd", "fwd+bwd")
MODES = ("keep-all", "auto", "torchsde")


def _make(mode: str):
    """A fresh Brownian interval on [0, 1] of the benchmark's size for ``mode``."""
    if mode == "torchsde":
        import torchsde

        return torchsde.BrownianInterval(0.0, 1.0, size=SIZE, dtype=torch.float64, entropy=1)
    import hybrid_node as hn

    cache = None if mode == "keep-all" else "auto"
    return hn.BrownianInterval(0.0, 1.0, SIZE, dtype=torch.float64, entropy=1, cache_size=cache)


def _cell(mode: str, workload: str, n: int) -> float:
    """CPU seconds per query of one workload on a fresh object."""
    bm = _make(mode)
    order = list(range(n))
    if workload == "fwd+bwd":
        order += order[::-1]
    start = time.process_time()
    for k in order:
        bm(k / n, (k + 1) / n)
    return (time.process_time() - start) / len(order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds (median taken)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cells = [(w, n) for w in WORKLOADS for n in SIZES]
    times: dict[tuple[str, int, str], list[float]] = {(w, n, m): [] for w, n in cells for m in MODES}
    for _ in range(args.rounds):
        for w, n in cells:
            for m in MODES:
                times[w, n, m].append(_cell(m, w, n))
    print(f"state {SIZE[0]} x {SIZE[1]} float64, median of {args.rounds} rounds, CPU us per query")
    print("| workload | n | keep-all | auto | torchsde | auto / keep-all | torchsde / auto |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for w, n in cells:
        us = {m: 1e6 * statistics.median(times[w, n, m]) for m in MODES}
        print(
            f"| `{w}` | {n:,} | {us['keep-all']:.0f} | {us['auto']:.0f} | {us['torchsde']:.0f} | "
            f"{us['auto'] / us['keep-all']:.2f} | {us['torchsde'] / us['auto']:.2f} |"
        )


if __name__ == "__main__":
    main()
