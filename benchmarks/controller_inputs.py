"""A compiled solve with other PID numbers after the first one: does it compile again?

The mlp-fwd workload (64-wide tanh MLP, batch 512, 50 output times, float32, rtol 1e-5, atol 1e-6)
is solved with ``options={"compile": True}`` once with the default controller (the compilation),
then with other numbers, one change per solve: ``safety``, the PID gains, ``ifactor``/``dfactor``.
Each later solve's wall time and the graphs Dynamo compiled for it are printed (one JSON line per
solve). With ``--adjoint`` each solve is a training step through the backsolve adjoint instead (a
forward and a backward graph)::

    python -m benchmarks.controller_inputs [--adjoint]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import hybrid_node as hn

from .workloads import mlp_problem

#: the controller of each solve after the first (the first is the default PIDController)
VARIANTS = (
    ("safety=0.8", dict(safety=0.8)),
    ("pid(0.3,0.4,0.1)", dict(pcoeff=0.3, icoeff=0.4, dcoeff=0.1)),
    ("ifactor=5,dfactor=0.3", dict(ifactor=5.0, dfactor=0.3)),
)


def _solve(field, y0, t, target, adjoint: bool, **ctrl) -> float:
    """One solve (or an adjoint training step) with the controller ``ctrl``; its wall time in seconds."""
    controller = hn.PIDController(rtol=1e-5, atol=1e-6, **ctrl)
    solver = hn.Dopri5().compiled()
    start = time.perf_counter()
    if adjoint:
        field.zero_grad()
        sol = hn.solve(field, y0, t, solver=solver, controller=controller, sensitivity=hn.BacksolveAdjoint())
        (sol.ys - target).pow(2).mean().backward()
    else:
        with torch.no_grad():
            hn.solve(field, y0, t, solver=solver, controller=controller)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Run the solves and print one JSON line each (name, seconds, graphs compiled)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adjoint", action="store_true", help="time backsolve-adjoint training steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    field, y0, t, target = mlp_problem()
    counters = torch._dynamo.utils.counters
    for name, ctrl in (("first (default)", {}), *VARIANTS, ("default again", {})):
        before = counters["stats"]["unique_graphs"]
        seconds = _solve(field, y0, t, target, args.adjoint, **ctrl)
        graphs = counters["stats"]["unique_graphs"] - before
        print(json.dumps({"solve": name, "seconds": round(seconds, 4), "graphs_compiled": graphs}), flush=True)


if __name__ == "__main__":
    main()
