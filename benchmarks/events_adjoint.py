"""Time and work of event gradients: direct backprop vs the backsolve and interpolating adjoints.

Workload: a batch of 64 bouncing balls (heights 1..3, restitution 0.8) under gravity plus a small
learned force (an MLP 2->32->2, scaled by 0.1), float64, dopri5 at rtol 1e-8 / atol 1e-10 over
t in [0, 3] (about 230 impacts, each a jump and a restart); loss = sum of y(3)^2 plus the sum of
the impact times; forward plus backward, best of ``--repeats``, one torch thread.

Usage::

    python benchmarks/events_adjoint.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

import hybrid_node as hn

try:
    from ._cli import positive_int
except ImportError:  # run as a script (python benchmarks/events_adjoint.py): its folder is on sys.path
    from _cli import positive_int


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))

    def forward(self, t, y):
        gravity = torch.stack([y[:, 1], torch.full_like(y[:, 1], -9.81)], 1)
        return 0.1 * self.net(y) + gravity


def bounce(t, y, fired):
    return torch.stack([y[:, 0], torch.where(fired, -0.8 * y[:, 1], y[:, 1])], 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # small tensors: threads only add contention on a shared machine
    func = Field()
    y0 = torch.stack([torch.linspace(1.0, 3.0, 64), torch.zeros(64)], 1)
    t = torch.linspace(0.0, 3.0, 4)
    event = hn.Event(lambda t, y: y[:, 0], direction=-1, on_event=bounce)
    methods = {
        "DirectBackprop": None,
        "BacksolveAdjoint": hn.BacksolveAdjoint(),
        "InterpolatingAdjoint": hn.InterpolatingAdjoint(),
    }
    print("| gradient | time | impacts | field evaluations forward / backward |")
    print("|---|---|---|---|")
    for name, sensitivity in methods.items():
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            sol = hn.solve(
                func, y0, t, event=event, controller=hn.PIDController(rtol=1e-8, atol=1e-10), sensitivity=sensitivity
            )
            loss = sol.ys[-1].pow(2).sum() + sum(r.t for r in sol.events)
            loss.backward()
            best = min(best, time.perf_counter() - start)
        print(f"| {name} | {best:.1f} s | {len(sol.events)} | {sol.stats.nfe} / {sol.stats.nfe_backward} |")


if __name__ == "__main__":
    main()
