"""memory-vs-steps: peak memory of one training step versus the number of solver steps, per gradient method.

Workload (memory-vs-steps): dynamics MLP 2->64->64->2 tanh, batch 512, y0 ~ N(0, 1) (numpy seed 0),
fixed-step rk4 over t in [0, 5] with 10, 100, 1000 steps, MSE of y(5) against zeros, one
forward+backward. Each measurement runs in a fresh process:

* CPU: the growth of the process's peak resident set during the step (``_rss.rss_growth``), over its
  resident set after a warm-up step with 2 solver steps (imports, allocator and thread pools already paid for).
  The children run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that large freed buffers go back to the
  system; without it glibc's heap fragmentation (small long-lived tensors between freed activation
  buffers) is counted too. ``--raw-malloc`` measures without it.
* CUDA: ``torch.cuda.max_memory_allocated`` above the memory allocated before the step.

Usage::

    python benchmarks/memory_vs_steps.py                 # table for every method
    python benchmarks/memory_vs_steps.py --device cuda
    python benchmarks/memory_vs_steps.py --one direct 100   # one measurement (what the table runs)

Direct backpropagation keeps every stage's activations: memory grows linearly with the steps;
"checkpointed-8" (``DirectBackprop(checkpoints=8)``, binomial checkpointing) computes the same gradient
holding at most 8 states and one step's graph. The adjoints keep O(1) (backsolve) or O(checkpoints +
steps per segment) (interpolating; "interpolating" has one segment here, "interpolating-32" 32
checkpoints) states.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

try:
    from ._cli import check_device, positive_int
    from ._rss import rss_growth
except ImportError:  # run as a script (python benchmarks/memory_vs_steps.py): its folder is on sys.path
    from _cli import check_device, positive_int
    from _rss import rss_growth

METHODS = ("direct", "checkpointed-8", "backsolve", "interpolating", "interpolating-32", "reversible")
STEPS = (10, 100, 1000)


def _field(width: int = 64):
    import numpy as np
    import torch

    rng = np.random.default_rng(0)

    def linear(n_in, n_out):
        layer = torch.nn.Linear(n_in, n_out)
        bound = 1 / np.sqrt(n_in)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(rng.uniform(-bound, bound, (n_out, n_in))))
            layer.bias.copy_(torch.from_numpy(rng.uniform(-bound, bound, n_out)))
        return layer

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                linear(2, width), torch.nn.Tanh(), linear(width, width), torch.nn.Tanh(), linear(width, 2)
            )

        def forward(self, t, y):
            return self.net(y)

    y0 = torch.from_numpy(rng.standard_normal((512, 2))).float()
    return Field(), y0


def measure(method: str, steps: int, device: str) -> float:
    """Peak memory in MiB of one forward+backward (run this in a fresh process)."""
    import torch

    import hybrid_node as hn

    torch.set_num_threads(1)
    field, y0 = _field()
    field, y0 = field.to(device), y0.to(device)
    t = torch.tensor([0.0, 5.0], device=device)
    sensitivity = {
        "direct": hn.DirectBackprop(),
        # revolve over the steps with 8 stored states: the same discrete gradient as "direct"
        "checkpointed-8": hn.DirectBackprop(checkpoints=8),
        "backsolve": hn.BacksolveAdjoint(),
        "interpolating": hn.InterpolatingAdjoint(),
        "interpolating-32": hn.InterpolatingAdjoint(checkpoints=32),
        "reversible": hn.ReversibleAdjoint(),  # on hn.Reversible(rk4): exact discrete gradient, O(1) memory
    }[method]
    solver = hn.Reversible(hn.RK4()) if method == "reversible" else hn.RK4()

    def step(n):
        sol = hn.solve(
            field, y0, t, solver=solver, controller=hn.ConstantStepSize(step_size=5.0 / n), sensitivity=sensitivity
        )
        loss = sol.ys[-1].pow(2).mean()
        loss.backward()
        field.zero_grad(set_to_none=True)

    if device.startswith("cuda"):
        step(2)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(steps)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return rss_growth(step, steps, warmup=2)[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "STEPS"), help="one measurement, printed as JSON")
    parser.add_argument("--steps", type=positive_int, nargs="+", default=list(STEPS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--raw-malloc", action="store_true", help="do not set MALLOC_MMAP_THRESHOLD_ for the children")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if args.one:
        if args.one[0] not in METHODS:
            parser.error(f"argument --one: unknown method {args.one[0]!r}; known: {', '.join(METHODS)}")
        try:
            positive_int(args.one[1])
        except argparse.ArgumentTypeError as e:
            parser.error(f"argument --one: steps {e}")
        print(json.dumps({"peak_mib": measure(args.one[0], int(args.one[1]), args.device)}))
        return 0
    env = dict(os.environ)
    if not args.raw_malloc:
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    rows = {}
    for method in args.methods:
        for steps in args.steps:
            out = subprocess.run(
                [sys.executable, __file__, "--device", args.device, "--one", method, str(steps)],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            rows[method, steps] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    unit = (
        "max_memory_allocated"
        if args.device.startswith("cuda")
        else ("peak RSS growth" + (", raw malloc" if args.raw_malloc else ""))
    )
    print(f"memory-vs-steps ({args.device}, {unit}, MiB): MLP 2-64-64-2 tanh, batch 512, rk4, MSE at t=5")
    print("| method | " + " | ".join(f"{s} steps" for s in args.steps) + " |")
    print("| --- | " + " | ".join("---" for _ in args.steps) + " |")
    for method in args.methods:
        print(f"| {method} | " + " | ".join(f"{rows[method, s]:.1f}" for s in args.steps) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
