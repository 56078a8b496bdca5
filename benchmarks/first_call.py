"""First call of ``options={"compile": True}`` (or another value) for a model never compiled on the machine.

Each workload runs in a new process whose Inductor cache directory is new too, so no graph or kernel
of it can come from torch's on-disk caches. Before it, another process compiles a small unrelated
solve into that directory (a 2x2 linear field, batch 3), which builds what every graph shares once
per machine (the C++ compiler's precompiled header): what is measured is the first call of a new
model on a machine that has compiled before. The first call includes everything it does the first
time in a process (importing the compiler, Dynamo's trace, the solve; in the process or in the worker,
lowering, code generation and ``g++``)::

    python -m benchmarks.first_call --workloads mlp-fwd mlp-train-direct mlp-train-adjoint
    python -m benchmarks.first_call --workloads mlp-train-direct --compile fullgraph

``--compile`` names the value of ``options["compile"]`` measured ("true": True, whose graphs a worker
process compiles while the first call runs them uncompiled, and whose second call waits for them;
"in_process": compiled within the first call; "fullgraph": direct backprop through the whole-solve
graph; "background": never waits, so the process waits for the worker after the second call, then
calls once more). The table adds when the compiled graphs were in use, counted from the first call's
start, and the time of a call after that.

``--linear`` replaces each workload's field by one linear layer on the same state (same initial
state, times, tolerances and loss): what is left is the cost of compiling the solver itself, the
floor under any field's first call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from .workloads import WORKLOADS

#: run in the measuring process: the workload's unit of work, timed on its first and second call
_MEASURE = """
import dataclasses, json, os, sys, time, torch
from benchmarks.ab import unit
from benchmarks.workloads import Counted, make
import hybrid_node
os.environ.pop("HYBRID_NODE_COMPILER")  # set by the benchmarks package: compile=True as a user's process has it
torch.set_num_threads(1)

class Linear(Counted):
    def __init__(self, n):
        super().__init__()
        self.linear = torch.nn.Linear(n, n)
    def forward(self, t, y):
        self.nfe += 1
        return self.linear(y)

w = make(sys.argv[1])
if sys.argv[2] == "linear":
    w = dataclasses.replace(w, field=Linear(w.y0.shape[-1]))
mode = sys.argv[3]
run = unit(w, hybrid_node, {"compile": True if mode == "true" else mode})
start = time.perf_counter(); run(); first = time.perf_counter() - start
start = time.perf_counter(); run(); second = time.perf_counter() - start
# until the compiled graphs are in use, counted from the first call's start: in-process, the first call
# compiles them; compile=True's second call waits for the worker's; "background" never waits, so the
# process waits after its second call and calls once more
compiled = first if mode == "in_process" else first + second
if mode == "background":
    from hybrid_node.loop import background
    background.wait()
    run()
    compiled = first + time.perf_counter() - start  # start: the second call's, so it is counted once
start = time.perf_counter(); run(); last = time.perf_counter() - start
print(json.dumps({"first_s": first, "second_ms": 1e3 * second, "compiled_s": compiled, "last_ms": 1e3 * last}))
"""

#: run in the preparing process: a small solve of another model into the same cache directory
_PREPARE = """
import torch, hybrid_node as hn
torch.set_num_threads(1)
class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
    def forward(self, t, y):
        return self.linear(y)
with torch.no_grad():
    hn.odeint(Field(), torch.ones(3, 2), torch.linspace(0, 1, 3), options={"compile": "in_process"})
"""


def _python(code: str, cache: str, *args: str) -> str:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the measuring process failed:\n{done.stderr[-3000:]}")
    return done.stdout


def first_call(workload: str, field: str = "own", compile_mode: str = "true") -> dict:
    """The first and second call of ``workload`` compiled, in a new process with a new Inductor cache
    (``field="linear"``: with a linear field instead of the workload's; ``compile_mode``: "true",
    "in_process", "fullgraph" or "background", the value of ``options["compile"]``)."""
    with tempfile.TemporaryDirectory(prefix="hn_first_call_") as cache:
        _python(_PREPARE, cache)
        return json.loads(_python(_MEASURE, cache, workload, field, compile_mode).strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads", nargs="+", default=["mlp-fwd", "mlp-train-direct", "mlp-train-adjoint"], choices=WORKLOADS
    )
    parser.add_argument("--linear", action="store_true", help="a linear field instead of each workload's")
    parser.add_argument(
        "--compile",
        choices=("true", "in_process", "fullgraph", "background"),
        default="true",
        help="options['compile']",
    )
    args = parser.parse_args(argv)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}")
    print("| workload | first call s | second call ms | compiled after s | then a call ms |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.workloads:
        r = first_call(name, "linear" if args.linear else "own", args.compile)
        label = (f"{name} (linear field)" if args.linear else name) + (
            "" if args.compile == "true" else f" {args.compile}"
        )
        print(
            f"| {label} | {r['first_s']:.1f} | {r['second_ms']:.1f} | {r['compiled_s']:.1f} | {r['last_ms']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
