"""memory-vs-steps: peak memory of one forward+backward of the mlp workload with fixed-step rk4.

Run in a fresh process per measurement (``benchmarks/run.py`` does this)::

    python -m benchmarks.memory --framework hybrid_node --mode adjoint --steps 1000

Prints one JSON line ``{"peak_mb": ...}``. On the CPU the figure is the growth of the process's peak
resident set (VmHWM, reset just before the solve) over its size then (after a small warm-up solve); on CUDA it is
``torch.cuda.max_memory_allocated`` above the memory allocated before the solve.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from . import frameworks
from ._cli import check_device, positive_int
from .workloads import Workload, mlp_problem

#: the frameworks with a fixed-step rk4 here (torchode only prints a note): the device loop is adaptive
#: only, and the diffrax adapter runs dopri5 only
FRAMEWORKS = ("hybrid_node", "hybrid_node+compile", "torchdiffeq", "torchode")


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of the resident set (Linux: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", default="hybrid_node", choices=FRAMEWORKS)
    parser.add_argument("--mode", default="adjoint", choices=("direct", "adjoint"))
    parser.add_argument("--steps", type=positive_int, default=100)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    torch.set_num_threads(1)
    field, y0, _, _ = mlp_problem(device=args.device)
    t = torch.tensor([0.0, 5.0], device=args.device)
    target = torch.zeros_like(y0)

    def build(steps):
        return Workload(
            "memory",
            field,
            y0,
            t,
            0.0,
            0.0,
            args.mode,
            lambda ys: (ys[-1] - target).pow(2).mean(),
            method="rk4",
            step_size=5.0 / steps,
        )

    if args.framework == "torchode":
        print(json.dumps({"peak_mb": None, "note": "torchode has no fixed-step rk4 adapter here"}))
        return 0
    frameworks.PREPARE[args.framework](build(2))()  # warm-up: allocator, thread pools, lazy imports
    run = frameworks.PREPARE[args.framework](build(args.steps))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        _reset_peak_rss()
        base = _status_mb("VmRSS")
        run()
        peak = _status_mb("VmHWM") - base
    print(json.dumps({"peak_mb": round(max(peak, 0.0), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
