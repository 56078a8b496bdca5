"""Per-sample terminal events with gradients: time, field work and accuracy against the batch size.

Usage::

    python -m benchmarks.per_sample_event_grads [--batches 100 1000 10000] [--repeats 2] [--threads 1]

Workload (the docs' "Scaling: batch" oscillators): x'' = -w_i^2 x, x(0) = 1, x'(0) = 0 for B samples
with frequencies w_i from 1 to 2, float64, dopri5 at rtol 1e-6, atol 1e-8; each sample stops where
x = -0.5, at t_i = 2 pi / (3 w_i), and ``t_e.sum() + x'_e.sum()`` is backpropagated to the w_i
(``dt_i/dw_i = -t_i / w_i``; the event speed -w_i sin(2 pi / 3) has ``dx'_i/dw_i = -sin(2 pi / 3)``
once its time moves with it). Prints one row per batch size: the best time of forward plus
backward, the field's calls and the rows they evaluated, and the largest errors of t_e and of the
gradient against the closed form. The field counts its calls, so the table says whether the work
grows like B (the rows) or like B^2 (one whole-batch call per sample, as before 2026-12-06).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import hybrid_node as hn

from ._cli import positive_int


class Oscillators(torch.nn.Module):
    """y = (x, x'), y' = (x', -w^2 x) with one learnable frequency per sample; counts its work."""

    def __init__(self, batch: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(1.0, 2.0, batch, dtype=torch.float64).unsqueeze(-1))
        self.calls = 0
        self.rows = 0

    def forward(self, t, y):
        self.calls += 1
        self.rows += y.shape[0]
        return torch.cat([y[:, 1:], -self.w * self.w * y[:, :1]], 1)


def run(batch: int) -> dict[str, float]:
    """One forward solve and backward pass; its time, field work and errors."""
    field = Oscillators(batch)
    y0 = torch.zeros(batch, 2, dtype=torch.float64)
    y0[:, 0] = 1.0
    start = time.perf_counter()
    t_e, ys = hn.odeint_event(
        field,
        y0,
        torch.tensor(0.0, dtype=torch.float64),
        event_fn=lambda t, y: y[:, 0] + 0.5,
        per_sample=True,
        rtol=1e-6,
        atol=1e-8,
    )
    loss = t_e.sum() + ys[-1][:, 1].sum()
    (grad,) = torch.autograd.grad(loss, field.w)
    seconds = time.perf_counter() - start
    w = field.w.detach().reshape(-1)
    exact_t = (2 * math.pi / 3) / w
    exact_grad = -exact_t / w - math.sin(2 * math.pi / 3)
    return {
        "seconds": seconds,
        "calls": field.calls,
        "rows": field.rows,
        "t_err": float((t_e.detach() - exact_t).abs().max()),
        "grad_err": float((grad.reshape(-1) - exact_grad).abs().max()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeats", type=positive_int, default=2)
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| B | forward + backward (s) | field calls | rows evaluated | max error t_e | max error d(loss)/dw |")
    print("| --- | --- | --- | --- | --- | --- |")
    for batch in args.batches:
        runs = [run(batch) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["seconds"])
        print(
            f"| {batch:,} | {best['seconds']:.3g} | {best['calls']:,} | {best['rows']:,} | "
            f"{best['t_err']:.1e} | {best['grad_err']:.1e} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
