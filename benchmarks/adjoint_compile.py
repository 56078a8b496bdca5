"""Time of one adjoint training step, eager and with ``compile=True``: interpolating vs backsolve.

The mlp-train-adjoint workload (MLP 2-64-64-2 tanh, batch 512, float32, dopri5, rtol 1e-5, atol 1e-6,
50 outputs on [0, 5], MSE loss) on one thread: forward solve and backward pass, with the
interpolating (checkpointed) adjoint eagerly and compiled (one graph per checkpoint segment,
:mod:`hybrid_node.loop.whole_segments`) and the backsolve adjoint compiled (one graph for the whole
backward solve). Prints the first call (compilation included), the median and minimum of shuffled
interleaved rounds, the backward steps and evaluations, and each gradient's largest difference from
the eager interpolating adjoint's relative to its largest entry::

    python -m benchmarks.adjoint_compile --rounds 7
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

import hybrid_node as hn

from ._cli import positive_int
from .workloads import make


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=7, help="timed rounds per configuration")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    w = make("mlp-train-adjoint")
    ctrl = hn.PIDController(rtol=w.rtol, atol=w.atol)
    cases = {
        "interpolating, eager": (hn.Dopri5(), hn.InterpolatingAdjoint()),
        "interpolating, compile=True": (hn.Dopri5().compiled(), hn.InterpolatingAdjoint()),
        "backsolve, compile=True": (hn.Dopri5().compiled(), hn.BacksolveAdjoint()),
    }

    def step(name: str):
        solver, sensitivity = cases[name]
        w.field.zero_grad()
        sol = hn.solve(w.field, w.y0, w.t, solver=solver, controller=ctrl, sensitivity=sensitivity)
        w.loss(sol.ys).backward()
        return sol.stats, [p.grad.clone() for p in w.field.parameters()]

    first, stats, grads = {}, {}, {}
    for name in cases:
        start = time.perf_counter()
        stats[name], grads[name] = step(name)
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases)
    for _ in range(args.rounds):
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
    reference = grads["interpolating, eager"]
    print(f"torch {torch.__version__}, one thread, {args.rounds} rounds")
    print()
    print("| configuration | first call s | median ms | min ms | backward steps | backward nfe | grad diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in cases:
        diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(grads[name], reference))
        print(
            f"| {name} | {first[name]:.1f} | {1e3 * statistics.median(times[name]):.1f} | "
            f"{1e3 * min(times[name]):.1f} | {stats[name].n_steps_backward} | {stats[name].nfe_backward} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
