"""Side-by-side benchmark of hybrid_node against torchdiffeq, torchode and diffrax (each where installed).

Usage::

    python -m benchmarks.run                      # all workloads, CPU
    python -m benchmarks.run --quick              # 3 rounds, memory at 10/100 steps
    python -m benchmarks.run --workloads mlp-fwd mlp-train-direct --repeats 20
    python -m benchmarks.run --device cuda        # the same workloads on the GPU

The frameworks run interleaved in one process (a shuffled order in every round), so that the load of
a shared machine hits them alike; ratios are the median of the per-round ratios. Solver overhead is
wall time / (NFE x the time of one bare call of the dynamics, timed in the same rounds). The gradient
error is relative to a float64 torchdiffeq solve at tolerance 1e-10 (an independent implementation).
diffrax (JAX) runs compiled: its compile time is reported apart, its NFE is counted in an untimed
instrumented run (see benchmarks/diffrax_peer.py), and workloads it has no port of are marked skipped.
``hybrid_node+compile`` is hybrid_node with ``options={"compile": True}`` (the whole solve as one
graph for forward solves without autograd, compiled step attempts otherwise, see docs/compiled_solve.md;
its NFE is the solution's count from an untimed run, since the field's own counter does not advance
inside a compiled loop);
its first, compiling run is timed apart like diffrax's compilation. ``hybrid_node+device`` uses the
device-resident loop (``options={"device_loop": True}``), ``hybrid_node+device+compile`` compiles its runs.
Results: a printed table, and ``results.json`` + ``results.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

import torch

from . import frameworks
from ._cli import check_device, non_negative_int, positive_int
from .workloads import WORKLOADS, Workload, make

PEERS = (
    "hybrid_node",
    "hybrid_node+compile",
    "hybrid_node+device",
    "hybrid_node+device+compile",
    "torchdiffeq",
    "torchode",
    "diffrax",
)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved(runs: dict, rounds: int, device: str = "cpu") -> dict[str, list[float]]:
    """Seconds of each unit of ``runs`` in ``rounds`` rounds, in a new shuffled order every round
    (seeded, so a run repeats its order), synchronising ``device`` around each."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(runs)
        rng.shuffle(order)
        for name in order:
            times[name].append(_timed(runs[name], device))
    return times


def _grads(field) -> torch.Tensor | None:
    gs = [p.grad.reshape(-1) for p in field.parameters() if p.grad is not None]
    return torch.cat(gs).double() if gs else None


def reference_gradient(w: Workload) -> torch.Tensor | None:
    """The loss gradient from a float64 torchdiffeq direct solve at rtol = atol = 1e-10."""
    try:
        import torchdiffeq
    except ImportError:
        return None
    field = copy.deepcopy(w.field).double()
    ys = torchdiffeq.odeint(
        field,
        w.y0.double(),
        w.t.double(),
        rtol=1e-10,
        atol=1e-10,
        method=w.method,
        options={"step_size": w.step_size} if w.step_size else None,
    )
    w.loss(ys).backward()
    return _grads(field)


def bench_workload(name: str, fws: list[str], args) -> list[dict]:
    """Time one workload for every framework, interleaved; return one row per framework."""
    w = make(name, device=args.device)
    runs, rows = {}, {}
    for fw in fws:
        try:
            runs[fw] = frameworks.PREPARE[fw](w)
        except NotImplementedError as e:  # a workload the adapter has no port of
            rows[fw] = {"workload": name, "framework": fw, "skipped": str(e)}
        except Exception as e:  # noqa: BLE001 -- a framework that cannot do a workload is reported, not fatal
            rows[fw] = {"workload": name, "framework": fw, "error": f"{type(e).__name__}: {e}"}
    if w.mode == "fwd":  # one bare evaluation of the dynamics, the unit of the solver overhead

        def bare():
            with torch.no_grad():
                for _ in range(10):
                    w.field(w.t[0], w.y0)

        runs["bare f (x10)"] = bare
    ref = reference_gradient(w) if (w.mode != "fwd" and not name.startswith("conv") and args.grad_error) else None
    nfe, grad_err = {}, {}
    for fw, run in list(runs.items()):  # warm-up, NFE and gradient error
        try:
            for _ in range(args.warmup):
                run()
            w.field.nfe = 0
            run()
            nfe[fw] = run.nfe() if hasattr(run, "nfe") else w.field.nfe
            if ref is not None and fw != "bare f (x10)":
                g = run.grads() if hasattr(run, "grads") else _grads(w.field)
                grad_err[fw] = float((g - ref).norm() / ref.norm()) if g is not None else math.nan
        except Exception as e:  # noqa: BLE001 -- a failing framework is reported in the table
            rows[fw] = {"workload": name, "framework": fw, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            del runs[fw]
    times = interleaved(runs, args.repeats, args.device)
    bare_t = statistics.median(times.pop("bare f (x10)")) / 10 if "bare f (x10)" in times else None
    runs.pop("bare f (x10)", None)
    for fw, run in runs.items():
        ts = times[fw]
        row = {
            "workload": name,
            "framework": fw,
            "median_ms": 1e3 * statistics.median(ts),
            "min_ms": 1e3 * min(ts),
            "max_ms": 1e3 * max(ts),
            "nfe": nfe.get(fw),
            "grad_rel_err": grad_err.get(fw),
        }
        if times.get("torchdiffeq"):
            row["speedup_vs_torchdiffeq"] = statistics.median(a / b for a, b in zip(times["torchdiffeq"], ts))
        if bare_t and nfe.get(fw):
            row["overhead"] = statistics.median(ts) / (nfe[fw] * bare_t)
        if hasattr(run, "compile_s"):  # ahead-of-time compilation, outside the timed rounds
            row["compile_ms"] = 1e3 * run.compile_s
            if hasattr(run, "num_steps"):
                row["num_steps"] = run.num_steps
        rows[fw] = row
    if bare_t:
        for row in rows.values():
            row["bare_f_ms"] = 1e3 * bare_t
    return [rows[fw] for fw in fws if fw in rows]


def memory_rows(fws: list[str], steps: list[int], args) -> list[dict]:
    """Peak memory of one forward+backward, each in a fresh process (see benchmarks/memory.py)."""
    rows = []
    for fw in fws:
        for mode in ("direct", "adjoint"):
            row = {"workload": "memory-vs-steps", "framework": fw, "mode": mode}
            for n in steps:
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.memory",
                    "--framework",
                    fw,
                    "--mode",
                    mode,
                    "--steps",
                    str(n),
                    "--device",
                    args.device,
                ]
                res = subprocess.run(
                    cmd,
                    check=False,
                    capture_output=True,
                    text=True,
                    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                )
                try:
                    row[f"peak_mb_{n}"] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
                except (ValueError, IndexError, KeyError):  # the child failed: keep its last error line
                    row[f"peak_mb_{n}"] = None
                    row["error"] = (res.stderr.strip().splitlines() or ["no output"])[-1][:200]
            rows.append(row)
    return rows


def _fmt(x, spec=".1f"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def markdown(rows: list[dict], mem: list[dict], meta: dict) -> str:
    header = (
        f"device: {meta['device']}, torch {meta['torch']}, threads {meta['threads']}, "
        f"rounds {meta['repeats']}, {meta['date']}"
    )
    lines = [
        header,
        "",
        "| workload | framework | median ms | min | max | NFE | speedup vs torchdiffeq | overhead | grad rel err |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['workload']} | {r['framework']} | skipped: {r['skipped'][:80]} | | | | | | |")
            continue
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['framework']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        lines.append(
            f"| {r['workload']} | {r['framework']} | {_fmt(r['median_ms'])} | {_fmt(r['min_ms'])} | "
            f"{_fmt(r['max_ms'])} | {_fmt(r['nfe'], 'd')} | {_fmt(r.get('speedup_vs_torchdiffeq'), '.2f')} | "
            f"{_fmt(r.get('overhead'), '.2f')} | {_fmt(r.get('grad_rel_err'), '.1e')} |"
        )
    compiled = [r for r in rows if "compile_ms" in r]
    if compiled:
        lines += [
            "",
            "Compile time, outside the timed rounds: "
            + ", ".join(f"{r['workload']} {r['framework']} {r['compile_ms'] / 1e3:.1f} s" for r in compiled)
            + ".",
        ]
    if mem:
        steps = sorted({int(k[8:]) for r in mem for k in r if k.startswith("peak_mb_")})
        lines += [
            "",
            "| memory-vs-steps (peak MB) | mode | " + " | ".join(f"{n} steps" for n in steps) + " |",
            "| --- | --- | " + " | ".join("---" for _ in steps) + " |",
        ]
        for r in mem:
            lines.append(
                f"| {r['framework']} | {r['mode']} | "
                + " | ".join(_fmt(r.get(f"peak_mb_{n}")) for n in steps)
                + " |"
                + (f" {r['error']}" if "error" in r and all(r.get(f"peak_mb_{n}") is None for n in steps) else "")
            )
    return "\n".join(lines)


def _memory_steps(parser: argparse.ArgumentParser, values: list[str]) -> list[int]:
    """The step counts of ``--memory-steps``: ``[]`` (skip) for no value or ``none``, else integers >= 1.

    Args:
        parser: the runner's parser (its ``error`` exits with status 2).
        values: the option's values as given.

    Returns:
        The step counts.
    """
    if values in ([], ["none"]):
        return []
    try:
        return [positive_int(v) for v in values]
    except argparse.ArgumentTypeError as e:
        parser.error(f"argument --memory-steps: {e} (or 'none' alone, to skip)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS) + ["none"])
    parser.add_argument("--frameworks", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed rounds per workload")
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 warm-up, memory at 10 and 100 steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=int(os.environ.get("BENCH_THREADS", "2")),
        help="torch CPU threads (default 2, the reference machine's cores)",
    )
    parser.add_argument(
        "--memory-steps",
        nargs="*",
        default=None,
        help="step counts of memory-vs-steps (default 10 100 1000; 'none' or no value to skip)",
    )
    parser.add_argument("--no-grad-error", dest="grad_error", action="store_false")
    parser.add_argument("--out", default=None, help="result folder (default runs/benchmarks-<timestamp>)")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if args.memory_steps is not None:
        args.memory_steps = _memory_steps(parser, args.memory_steps)
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 3), 1
    if args.memory_steps is None:
        args.memory_steps = [10, 100] if args.quick else [10, 100, 1000]
    torch.set_num_threads(args.threads)
    have = frameworks.available()
    fws = [f for f in args.frameworks if have.get(f)]
    skipped = [f for f in args.frameworks if not have.get(f)]
    if skipped:
        print("skipped (not installed): " + ", ".join(skipped))
    rows = []
    names = [n for n in args.workloads if n != "none"]
    try:
        from tqdm import tqdm

        names_iter = tqdm(names, desc="workloads")
    except ImportError:
        names_iter = names
    for name in names_iter:
        rows.extend(bench_workload(name, fws, args))
    # only the plain torch frameworks: diffrax has no fixed-step rk4 adapter here (and its memory is
    # XLA's, not the process's torch allocations), compiled steps change the time per step, not what
    # the graph keeps, and the device loop is adaptive only (every "+" variant)
    mem_fws = [f for f in fws if f != "diffrax" and "+" not in f]
    mem = memory_rows(mem_fws, args.memory_steps, args) if args.memory_steps else []
    meta = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "skipped": skipped,
        "argv": sys.argv[1:],
    }
    table = markdown(rows, mem, meta)
    print(table)
    out = args.out or os.path.join("runs", "benchmarks-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump({"meta": meta, "timings": rows, "memory": mem}, fh, indent=2)
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(table + "\n")
    print(f"wrote {out}/results.json and results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
