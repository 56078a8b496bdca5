"""Per-sample terminal events: the forward loop's time per solve with an MLP field (explicit and stiff methods).

Usage::

    python -m benchmarks.per_sample_event_loop [--batch 256] [--repeats 5] [--threads 1] [--backward]
        [--methods dopri5 dopri8 rodas5p ...] [--stiffness 0] [--profile]

Workload: B samples of a 2-d state under an MLP field (2-64-64-2, tanh, seeded weights, its output
scaled by 0.5) plus a unit drift in the first coordinate, float64, rtol 1e-8, atol 1e-10; sample i
starts at x = -1 + 2 i / B and stops where x = 8, so the events spread over the solve and the
per-sample loop locates a few samples in most steps. The parameters require gradients, so the
forward loop runs as it does in training (``--backward`` adds the backward pass of the summed
event times). ``--stiffness L`` adds ``-L * y_2`` to the second coordinate's rate, a mildly stiff
decay for the implicit methods (Rosenbrock23, Rodas4, Rodas5P, BDF; e.g. L = 1000, whose explicit
solves take ~L times the span in steps). Prints one row per method: the best and median wall time
of ``--repeats`` solves, the best process CPU time (steadier than the wall time on a shared machine: with one thread it
leaves out the time spent waiting for a core), the accepted steps, the field's calls and the rows
they evaluated (the same whatever the code's speed: a change that moves them changed the steps, or
the work per step: one whole-batch call per fired sample shows as about B more calls of B rows).
``--profile`` adds the share of the solve's time spent locating events in the step's dense output
(the rows and the event-time rates), from a cProfile of one extra solve.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import hybrid_node as hn

from ._cli import positive_int


class DriftMLP(torch.nn.Module):
    """y' = (1, 0) + 0.5 * MLP(y), an MLP 2-64-64-2 with tanh; counts its calls and their rows."""

    def __init__(self, seed: int = 0, stiffness: float = 0.0):
        super().__init__()
        self.stiffness = stiffness
        gen = torch.Generator().manual_seed(seed)
        sizes = (2, 64, 64, 2)
        layers: list[torch.nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            lin = torch.nn.Linear(a, b, dtype=torch.float64)
            with torch.no_grad():  # seeded here, so the workload does not depend on the global seed
                lin.weight.copy_(torch.randn(b, a, generator=gen, dtype=torch.float64) / a**0.5)
                lin.bias.copy_(0.1 * torch.randn(b, generator=gen, dtype=torch.float64))
            layers += [lin, torch.nn.Tanh()]
        self.net = torch.nn.Sequential(*layers[:-1])
        self.register_buffer("drift", torch.tensor([1.0, 0.0], dtype=torch.float64))
        self.calls = 0
        self.rows = 0

    def forward(self, t, y):
        self.calls += 1
        self.rows += y.shape[0]
        out = self.drift + 0.5 * self.net(y)
        if self.stiffness:  # a fast decay of the second coordinate: stiff, with the events still in x
            out = out - torch.nn.functional.pad(self.stiffness * y[:, 1:], (1, 0))
        return out


#: the methods by their names on the command line
METHODS = {
    "dopri5": hn.Dopri5,
    "dopri8": hn.Dopri8,
    "rosenbrock23": hn.Rosenbrock23,
    "rodas4": hn.Rodas4,
    "rodas5p": hn.Rodas5P,
    "bdf": hn.BDF,
}


def run(method: str, batch: int, backward: bool, stiffness: float = 0.0) -> dict[str, float]:
    """One per-sample event solve (and its backward pass with ``backward``); time and work."""
    field = DriftMLP(stiffness=stiffness)
    y0 = torch.zeros(batch, 2, dtype=torch.float64)
    y0[:, 0] = torch.linspace(-1.0, 1.0, batch, dtype=torch.float64)
    y0[:, 1] = torch.linspace(0.5, -0.5, batch, dtype=torch.float64)
    start, cpu = time.perf_counter(), time.process_time()
    sol = hn.solve(
        field,
        y0,
        torch.tensor([0.0, 50.0], dtype=torch.float64),
        solver=METHODS[method](),
        controller=hn.PIDController(rtol=1e-8, atol=1e-10),
        event_fn=lambda t, y: y[:, 0] - 8.0,
        per_sample_events=True,
        event_t_end=50.0,
    )
    if backward:
        sol.t_final.sum().backward()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "steps": sol.stats.n_accepted, "calls": field.calls, "rows": field.rows}


def locating_share(method: str, args: argparse.Namespace) -> float:
    """The percentage of one profiled solve spent in the event loop's bisection and event-time rates."""
    profile = cProfile.Profile()
    profile.runcall(run, method, args.batch, args.backward, args.stiffness)
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, name), (_, _, tt, _, _) in stats.items())
    inside = sum(
        ct
        for (path, _, name), (_, _, _, ct, _) in stats.items()
        if path.endswith("events.py") and name in ("locate", "rates")
    )
    return 100.0 * inside / total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=positive_int, default=256)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--methods", nargs="+", default=["dopri5", "dopri8"], choices=sorted(METHODS))
    parser.add_argument("--stiffness", type=float, default=0.0, help="decay rate L of the second coordinate")
    parser.add_argument("--profile", action="store_true", help="add the share of time locating events")
    parser.add_argument("--backward", action="store_true", help="time the backward pass too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    what = "forward + backward" if args.backward else "forward"
    print(
        f"| method | B | {what} best of {args.repeats} (ms) | median (ms) | process CPU, best (ms) "
        "| accepted steps | field calls | field rows |" + (" locating events (% of solve) |" if args.profile else "")
    )
    print("| --- " * (9 if args.profile else 8) + "|")
    for method in args.methods:
        run(method, args.batch, args.backward, args.stiffness)  # warm-up: first-call imports and allocations
        runs = sorted(
            (run(method, args.batch, args.backward, args.stiffness) for _ in range(args.repeats)),
            key=lambda r: r["seconds"],
        )
        best, median = runs[0], runs[len(runs) // 2]
        share = f" {locating_share(method, args):.0f} |" if args.profile else ""
        print(
            f"| {method} | {args.batch} | {1e3 * best['seconds']:.1f} | {1e3 * median['seconds']:.1f} | "
            f"{1e3 * min(r['cpu'] for r in runs):.1f} | {best['steps']} | {best['calls']} | {best['rows']} |{share}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
