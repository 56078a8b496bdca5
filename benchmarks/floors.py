"""How close the mlp-train workloads are to the cost of the dynamics alone.

The floor of a forward+backward solve is the work no solver can avoid: for direct backprop, NFE
evaluations of the field chained with autograd and one backward pass through them; for the adjoint, the
forward solve's evaluations without a graph plus one vector-Jacobian product of the field (a forward with
graph plus a backward each) per evaluation of the backward solve. At equal NFE no eager solver can beat
``torchdiffeq time / floor``. Timings are rounds in a fixed order; ratios are medians. Only the training
workloads (``*-direct``, ``*-adjoint``) have a floor here.

Usage::

    python -m benchmarks.floors --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import hybrid_node as hn

from . import frameworks
from ._cli import positive_int
from .workloads import WORKLOADS, make


def _floor(w, nfe: int, nfe_forward: int = 0):
    """The unit of work no eager solver avoids at ``nfe`` evaluations (``nfe_forward`` of them, for the
    adjoint, in the forward solve: evaluations without a graph, not vector-Jacobian products)."""
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
            with torch.no_grad():
                for _ in range(nfe_forward):
                    w.field(w.t[0], w.y0)
            for _ in range(nfe - nfe_forward):
                z = w.y0.detach().requires_grad_(True)
                with torch.enable_grad():
                    g = w.field(w.t[0], z)
                    torch.autograd.grad((g * cot).sum(), (z,) + params)

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument(
        "--workloads",
        nargs="+",
        default=["mlp-train-direct", "mlp-train-adjoint"],
        choices=[n for n in WORKLOADS if not n.endswith("-fwd")],  # a forward solve has no backward floor
    )
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
        nfe_forward = 0
        if w.mode == "adjoint":  # the forward solve's share: the same steps as the adjoint's forward pass
            with torch.no_grad():
                w.field.nfe = 0
                hn.odeint(w.field, w.y0, w.t, rtol=w.rtol, atol=w.atol, method=w.method)
                nfe_forward = w.field.nfe
        runs["floor"] = _floor(w, nfe, nfe_forward)
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
