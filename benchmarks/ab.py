"""One workload, this checkout against another, in one process: ``compile=True`` of both and eager.

Separate processes of the same build differ by up to ~15% on a shared machine (measured on the mlp
forward solve), more than most changes to the compiled solve are worth; this script times the
workload's unit of work (a no-grad forward solve, or loss and backward pass) for the other
checkout's ``hybrid_node`` (imported under another name), this
one's and the eager solver, each on its own copy of the field, in shuffled interleaved rounds::

    python -m benchmarks.ab --workload cnf-adjoint --baseline /path/to/other/checkout --rounds 8

Without ``--baseline``, ``--modes`` compares values of ``options["compile"]`` of this checkout (and
eager), e.g. per-step graphs against the whole-solve graph for direct backprop::

    python -m benchmarks.ab --workload mlp-train-direct --modes true fullgraph --rounds 20
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import hybrid_node

from ._cli import positive_int
from .frameworks import prepare_hybrid_node
from .run import interleaved
from .workloads import WORKLOADS, Workload, make


def check_baseline(parser: argparse.ArgumentParser, checkout: str | None) -> None:
    """Stop with a usage error unless ``checkout`` (when given) holds a ``hybrid_node`` package."""
    if checkout is not None and not (Path(checkout) / "hybrid_node" / "__init__.py").is_file():
        parser.error(f"--baseline {checkout!r}: no hybrid_node package there (give the other checkout's root)")


def baseline_package(checkout: str):
    """The ``hybrid_node`` package of ``checkout``, imported as ``hn_baseline`` (its imports are relative)."""
    root = Path(tempfile.mkdtemp(prefix="hn_baseline_"))
    shutil.copytree(Path(checkout) / "hybrid_node", root / "hn_baseline", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(root))
    return importlib.import_module("hn_baseline")


def unit(w: Workload, pkg, options: dict | None):
    """The workload's unit of work with ``pkg``'s solver (the benchmark's adapter) on a copy of its field."""
    return prepare_hybrid_node(dataclasses.replace(w, field=copy.deepcopy(w.field)), options, hn=pkg)


def first_calls(runs: dict[str, Callable]) -> None:
    """Run each unit once (compiling), printing how long its first call took."""
    for name, run in runs.items():
        start = time.perf_counter()
        run()
        print(f"{name}: first call {time.perf_counter() - start:.1f} s", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mlp-fwd", choices=WORKLOADS)
    parser.add_argument("--baseline", help="the other checkout (its hybrid_node package)")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("true", "fullgraph"),
        help="without --baseline: the values of options['compile'] to compare (this checkout)",
    )
    parser.add_argument("--rounds", type=positive_int, default=8)
    args = parser.parse_args(argv)
    if (args.baseline is None) == (args.modes is None):
        parser.error("give either --baseline or --modes")
    check_baseline(parser, args.baseline)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # fallback warnings of fields the compiler refuses (the CNF's trace)
    w = make(args.workload)
    if args.baseline is not None:
        runs = {
            "baseline": unit(w, baseline_package(args.baseline), {"compile": True}),
            "this": unit(w, hybrid_node, {"compile": True}),
        }
    else:
        runs = {m: unit(w, hybrid_node, {"compile": True if m == "true" else m}) for m in args.modes}
    runs["eager"] = unit(w, hybrid_node, None)
    first_calls(runs)
    for name, ts in interleaved(runs, args.rounds).items():
        print(f"{args.workload} {name:9s} median {1e3 * statistics.median(ts):8.2f} ms  min {1e3 * min(ts):8.2f} ms")


if __name__ == "__main__":
    main()
