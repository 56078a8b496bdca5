"""NFE and error at the benchmark tolerances: hybrid_node's dopri5 with either embedded error estimate,
against torchdiffeq, all measured against a tight float64 reference (torchdiffeq dopri8 at 1e-11, dopri5
at 1e-7 for the conv workload).

Usage::

    python -m benchmarks.accuracy mlp-fwd mlp-hard-fwd conv-fwd cnf-direct
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

import hybrid_node as hn

from .workloads import WORKLOADS, make


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "workloads",
        nargs="*",
        choices=WORKLOADS,
        default=["mlp-fwd", "mlp-hard-fwd", "cnf-direct"],
        help="workloads to measure (default: mlp-fwd mlp-hard-fwd cnf-direct)",
    )
    names = parser.parse_args(argv).workloads
    try:
        import torchdiffeq
    except ImportError:
        parser.error("needs torchdiffeq (the compared solver): pip install torchdiffeq")

    torch.set_num_threads(1)
    print("| workload | solver | NFE | accepted | rejected | rel. error vs reference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in names:
        w = make(name)
        f64 = copy.deepcopy(w.field).double()
        tight = 1e-7 if name.startswith("conv") else 1e-11
        with torch.no_grad():
            ref = torchdiffeq.odeint(
                f64,
                w.y0.double(),
                w.t.double(),
                rtol=tight,
                atol=tight,
                method="dopri5" if name.startswith("conv") else "dopri8",
            )
            w.field.nfe = 0
            theirs = torchdiffeq.odeint(w.field, w.y0, w.t, rtol=w.rtol, atol=w.atol)
            nfe_theirs = w.field.nfe

        def err(ys, ref=ref):
            return float((ys.double() - ref).norm() / ref.norm())

        print(f"| {name} | torchdiffeq dopri5 | {nfe_theirs} | | | {err(theirs):.2e} |", flush=True)
        for embedded in ("shampine", "dormand-prince"):
            with torch.no_grad():
                sol = hn.solve(
                    w.field,
                    w.y0,
                    w.t,
                    solver=hn.solvers.Dopri5(embedded),
                    controller=hn.PIDController(rtol=w.rtol, atol=w.atol),
                )
            s = sol.stats
            print(
                f"| {name} | hybrid_node dopri5 ({embedded}) | {s.nfe} | {s.n_accepted} | {s.n_rejected} | "
                f"{err(sol.ys):.2e} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
