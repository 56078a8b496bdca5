"""Per-sample step control: what the loop's host reads cost in a solve (``options={"per_sample": True}``).

Usage::

    python -m benchmarks.per_sample_host_sync [--batch 512] [--repeats 7] [--threads 1] [--dtype float32]

Workload: B samples of a 2-d state under an MLP field (2-64-64-2, tanh, seeded weights), dopri5,
rtol 1e-6, atol 1e-8, from t = 0 to 50 with 51 output times, on the CPU, parameters requiring
gradients (the forward pass as in training). Every batched step of
:func:`hybrid_node.loop.per_sample.integrate_per_sample` reads a few values on the host (the span of
accepted times, the accepted count, whether all are done, whether a sample failed): on the CPU a read
waits for nothing, so its cost is the small reductions that build it and the Python around them.

Prints the solve's best process CPU time over ``--repeats`` (steadier than the wall time on a
shared machine) and its batched steps, then the same reductions replayed on tensors of the batch's
size (:func:`_host_reads`), timed alone: their time per step against the solve's is the share of the
solve that reading them less often could save at most.
"""

from __future__ import annotations

import argparse
import time

import torch

import hybrid_node as hn
from hybrid_node.loop import core

from ._cli import positive_int


def _mlp(dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """An MLP 2-64-64-2 with tanh, its weights drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    sizes = (2, 64, 64, 2)
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = torch.nn.Linear(a, b, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen, dtype=dtype) / a**0.5)
            lin.bias.copy_(0.1 * torch.randn(b, generator=gen, dtype=dtype))
        layers += [lin, torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


class Field(torch.nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.net = _mlp(dtype)

    def forward(self, t, y):
        return self.net(y)


def solve_once(batch: int, dtype: torch.dtype) -> tuple[float, int]:
    """One per-sample solve; its process CPU time (s) and its batched steps (accepted + rejected)."""
    func = Field(dtype)
    gen = torch.Generator().manual_seed(1)
    y0 = torch.randn(batch, 2, generator=gen, dtype=dtype)
    start = time.process_time()
    sol = hn.solve(
        func,
        y0,
        torch.linspace(0.0, 50.0, 51, dtype=dtype),
        solver=hn.Dopri5(),
        controller=hn.PIDController(rtol=1e-6, atol=1e-8, per_sample=True),
    )
    seconds = time.process_time() - start
    return seconds, sol.stats.n_accepted + sol.stats.n_rejected


def _host_reads(t, t_new, dt, accept, lands, done, code, fused: bool) -> list:
    """The reductions the loop reads after each batched step, as it writes them: with ``fused``, the
    failure flags join the first read (one read per step); without, they are a second one."""
    tdt = t.dtype
    first = [
        torch.where(accept, t, torch.full_like(t, float("inf"))).min(),
        torch.where(accept, t_new, torch.full_like(t, -float("inf"))).max(),
        accept.sum().to(tdt),
        (done | (accept & lands)).all().to(tdt),
    ]
    flags = [(code > core.SUCCESS).any().to(tdt), (code == core.NONFINITE).any().to(tdt)]
    if fused:
        return torch.stack(first + flags).tolist()
    return torch.stack(first).tolist() + torch.stack(flags).tolist()


def time_host_reads(batch: int, fused: bool, calls: int = 20000) -> float:
    """Process CPU seconds per batched step of :func:`_host_reads` on tensors of ``batch`` samples."""
    gen = torch.Generator().manual_seed(2)
    t = torch.rand(batch, generator=gen, dtype=torch.float64)
    dt = torch.full_like(t, 0.01)
    t_new = t + dt
    accept = torch.rand(batch, generator=gen) < 0.9
    lands = torch.rand(batch, generator=gen) < 0.05
    done = torch.zeros(batch, dtype=torch.bool)
    code = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():
        for _ in range(200):  # warm-up
            _host_reads(t, t_new, dt, accept, lands, done, code, fused)
        start = time.process_time()
        for _ in range(calls):
            _host_reads(t, t_new, dt, accept, lands, done, code, fused)
    return (time.process_time() - start) / calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=positive_int, default=512)
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    solve_once(args.batch, dtype)  # warm-up
    runs = sorted(solve_once(args.batch, dtype) for _ in range(args.repeats))
    seconds, steps = runs[0]
    median = runs[len(runs) // 2][0]
    two = time_host_reads(args.batch, fused=False)
    one = time_host_reads(args.batch, fused=True)
    per_step = seconds / steps
    print(f"per-sample solve, B={args.batch}, {args.dtype}, dopri5 (process CPU time)")
    print(f"  best {1e3 * seconds:.1f} ms, median {1e3 * median:.1f} ms, {steps} batched steps")
    print(f"  {1e6 * per_step:.0f} us per step")
    print(f"host reads as two per step: {1e6 * two:.1f} us per step = {100 * two / per_step:.1f}% of a step")
    print(f"host reads fused into one:  {1e6 * one:.1f} us per step = {100 * one / per_step:.1f}% of a step")
    print(f"at most saved by fusing:    {100 * (two - one) / per_step:.2f}% of the solve")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
