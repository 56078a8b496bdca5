"""Peak resident-set growth of a workload, measured in a fresh process per table cell.

Shared by the memory benchmarks that run as scripts (``brownian_memory.py``, ``sde_memory.py``): each has a
``--one KIND N`` mode that measures one cell in its own process, and a table mode that runs one such process
per cell, so that no cell inherits another's allocator state; the children run with
``MALLOC_MMAP_THRESHOLD_=65536`` so that large freed buffers go back to the system (else glibc's heap
fragmentation is counted too).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

#: glibc: buffers from this many bytes on are mmap'ed, so that freeing them returns them to the system
MMAP_THRESHOLD = "65536"


def _high_water_kib() -> tuple[int, int]:
    """The resident set's peak (``VmHWM``) and current size (``VmRSS``) of this process, in KiB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("VmHWM", "VmRSS")))
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


def _reset_high_water() -> bool:
    """Set the peak back to the current resident set (Linux: ``5`` to ``/proc/self/clear_refs``).

    ``ru_maxrss`` cannot be reset, and Linux carries it over ``fork`` and ``exec``: a child started by a
    parent that once held more starts with the parent's peak, and a run smaller than that counts nothing.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def rss_growth(run: Callable[[int], None], n: int, warmup: int = 10) -> tuple[float, float]:
    """Run ``run(n)`` after a warm-up ``run(warmup)``; the growth of the peak resident set and the time.

    The peak is the process's resettable high-water mark where Linux offers one (reset after the
    warm-up), else ``ru_maxrss`` (which only grows, and may start at a parent's peak).

    Args:
        run: the workload of size n (steps, queries).
        n: its size.
        warmup: the size of the warm-up run (imports, allocator and thread pools paid for before).

    Returns:
        The growth of the peak resident set over the resident set after the warm-up, in MB (MiB), and
        the seconds ``run(n)`` took.
    """
    run(warmup)
    resettable = _reset_high_water()
    base = _high_water_kib()[1] if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    run(n)
    seconds = time.perf_counter() - start
    peak = _high_water_kib()[0] if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - base) / 1024, seconds


def measure_in_subprocess(script: str, kind: str, n: int) -> dict[str, Any]:
    """One cell measured by ``python script --one kind n`` in a fresh process.

    Args:
        script: the benchmark script's path (its ``--one`` mode prints one JSON line last).
        kind, n: the cell.

    Returns:
        The JSON object the child printed last.

    Raises:
        subprocess.CalledProcessError: the child failed (its stderr is on the exception).
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
    out = subprocess.run(
        [sys.executable, script, "--one", kind, str(n)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def table_main(
    script: str,
    description: str,
    one_help: str,
    one: Callable[[str, int], dict[str, Any]],
    cells: Iterable[tuple[str, int]],
    row: Callable[[dict[str, Any]], str],
) -> None:
    """A memory benchmark's command line: ``--one KIND N`` prints one cell as JSON, no argument the table.

    Args:
        script: the benchmark script's path (``__file__``), run again per cell.
        description: the parser's description.
        one_help: the help of ``--one`` (the kinds and what N counts).
        one: measures one cell in this process.
        cells: the table's (kind, n), in order.
        row: a table line from a cell's measurement.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "N"), help=one_help)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return
    for kind, n in cells:
        print(row(measure_in_subprocess(script, kind, n)), flush=True)
