"""How close the mlp-train workloads are to the cost of the dynamics alone.

The floor of a forward+backward solve is the work no solver can avoid: for direct backprop, NFE
evaluations of the field chained with autograd and one backward pass through them; for the adjoint, NFE
vector-Jacobian products of the field (a forward with graph plus a backward each). At equal NFE no eager
solver can beat ``torchdiffeq time / floor``. Timings are interleaved rounds; ratios are medians.

Usage::

    python -m benchmarks.floors --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from . import frameworks
from .workloads import make


def _floor(w, nfe: int):
    params = tuple(w.field.parameters())
    if w.mode == "direct":

        def run():
            for p in params:
                p.grad = None
            y, ys = w.y0, []
            for _ in range(nfe):
                y = y + 0.01 * w.field(w.t[0], y)
                ys.append(y)
            torch.stack(ys).pow(2).mean().backward()
    else:
        cot = torch.randn_like(w.y0)

        def run():
            for _ in range(nfe):
                z = w.y0.detach().requires_grad_(True)
                with torch.enable_grad():
                    g = w.field(w.t[0], z)
                    torch.autograd.grad((g * cot).sum(), (z,) + params)

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workloads", nargs="+", default=["mlp-train-direct", "mlp-train-adjoint"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        "| workload | NFE (ours) | hybrid_node ms | torchdiffeq ms | floor ms | hybrid_node / floor | "
        "torchdiffeq / floor | speedup vs torchdiffeq |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.workloads:
        w = make(name)
        runs = {"hn": frameworks.PREPARE["hybrid_node"](w), "tdq": frameworks.PREPARE["torchdiffeq"](w)}
        runs["hn"]()
        w.field.nfe = 0
        runs["hn"]()
        nfe = w.field.nfe
        runs["floor"] = _floor(w, nfe)
        times = {k: [] for k in runs}
        for f in runs.values():
            f()
        for _ in range(args.repeats):
            for k, f in runs.items():
                start = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - start)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}

        def ratio(a, b, times=times):
            return statistics.median(x / y for x, y in zip(times[a], times[b]))

        print(
            f"| {name} | {nfe} | {med['hn']:.0f} | {med['tdq']:.0f} | {med['floor']:.0f} | {ratio('hn', 'floor'):.2f} | "  # noqa: E501
            f"{ratio('tdq', 'floor'):.2f} | {ratio('tdq', 'hn'):.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
