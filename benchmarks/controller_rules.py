"""Work-precision of the step-size rule after a rejected step (``PIDController(grow_after_reject=...)``).

Solves the non-stiff problems of ``benchmarks/nonstiff.py`` (Hairer, Nørsett, Wanner, Solving ODEs I,
II.10) at rtol = atol = tol with ``odeint``'s controller for the method (torchdiffeq's rules: an accepted
step never shrinks the next, a step right after a rejection may grow), then with the same controller and
``grow_after_reject=False`` (Hairer's ``facmax = 1`` after a rejection, as scipy's RK45). Prints, per
problem and method, ``error / NFE (rejected)`` for both and the ratio of their NFE.

    python benchmarks/controller_rules.py [--problems arenstorf,kepler] [--methods dopri5,tsit5] [--tols 1e-3,1e-6]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

import hybrid_node as hn
from benchmarks import nonstiff as ns
from hybrid_node._registry import build_solver

F64 = torch.float64
METHODS = ("dopri5", "tsit5", "bosh3", "dopri8")


def run(p: ns.Problem, method: str, tol: float, ref, grow_after_reject: bool) -> ns.Run:
    """One solve with ``odeint``'s controller for ``method``, with the given rule after a rejection.

    Args:
        p: the problem; method: an explicit pair of ``odeint``'s table; tol: rtol = atol.
        ref: the reference end state; grow_after_reject: the setting under test.

    Returns:
        The error at the end time, the field evaluations (every call) and the step counts.
    """
    count = [0]

    def field(t, y):
        count[0] += 1
        return p.f(t, y)

    solver, controller, _ = build_solver(method, {"max_num_steps": 200_000}, tol, tol)
    controller = dataclasses.replace(controller, grow_after_reject=grow_after_reject)
    t = torch.tensor([0.0, p.t_end], dtype=F64)
    sol = hn.solve(field, torch.tensor(p.y0, dtype=F64), t, solver=solver, controller=controller)
    err = ns.error(sol.ys[-1].numpy(), ref)
    return ns.Run(err, count[0], int(sol.stats.n_accepted), int(sol.stats.n_rejected))


def _cell(r: ns.Run) -> str:
    return f"{r.err:.1e} / {r.nfe} ({r.rejected})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default=",".join(ns.PROBLEMS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--tols", default="1e-4,1e-6,1e-8,1e-10")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.problems.split(",")) - set(ns.PROBLEMS)) + sorted(
        set(args.methods.split(",")) - set(METHODS)
    )
    if unknown:
        parser.error(f"unknown problems or methods {unknown}; problems: {sorted(ns.PROBLEMS)}, methods: {METHODS}")
    torch.set_num_threads(1)
    tols = [float(t) for t in args.tols.split(",")]
    print("| problem | method | tol | default: error / NFE (rejected) | grow_after_reject=False | NFE ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.problems.split(","):
        p = ns.PROBLEMS[name]()
        ref = ns.reference(p)
        for m in args.methods.split(","):
            for tol in tols:
                free, held = run(p, m, tol, ref, True), run(p, m, tol, ref, False)
                ratio = held.nfe / free.nfe
                print(f"| {name} | {m} | {tol:.0e} | {_cell(free)} | {_cell(held)} | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
