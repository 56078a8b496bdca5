"""benchmarks/_rss.py: the peak-memory measurement of brownian_memory.py and sde_memory.py, one process per cell."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

from benchmarks import _rss

ROOT = Path(__file__).resolve().parent.parent


def _fresh_pages(mib: int) -> mmap.mmap:
    """``mib`` MiB of newly mapped memory, every page written: resident, and never the reuse of memory the
    allocator already holds (in a test worker, earlier tests' freed heap would serve a ``bytes`` object
    without the resident set growing)."""
    pages = mmap.mmap(-1, mib * 2**20)
    for i in range(0, len(pages), mmap.PAGESIZE):
        pages[i] = 1
    return pages


def test_rss_growth_counts_what_the_run_keeps():
    kept = []

    def run(n):
        kept.append(_fresh_pages(n))

    mb, seconds = _rss.rss_growth(run, 64, warmup=1)
    # the 64 MiB held count in full; the bound from below only: the allocator and the interpreter may add
    assert mb >= 60 and seconds >= 0
    assert len(kept) == 2


def test_rss_growth_is_not_hidden_by_an_earlier_peak():
    """A process that once held more (here 256 MiB, given back) still counts a later 64 MiB run: the peak
    is reset after the warm-up (``ru_maxrss`` cannot be, and a child inherits its parent's)."""
    _fresh_pages(256).close()  # resident, then given back to the system
    kept = []
    mb, _ = _rss.rss_growth(lambda n: kept.append(_fresh_pages(n)), 64, warmup=1)
    assert 60 <= mb < 128  # the 64 MiB kept, not the earlier 256


def test_a_table_cell_runs_the_script_in_a_fresh_process():
    """A cell is the ``--one`` line of the script run again (its own peak), with freed buffers given back."""
    cell = _rss.measure_in_subprocess(str(ROOT / "benchmarks" / "brownian_memory.py"), "seq", 20)
    assert cell["kind"] == "seq" and cell["n"] == 20 and cell["us_per_query"] > 0
    cell = _rss.measure_in_subprocess(str(ROOT / "benchmarks" / "sde_memory.py"), "no_grad", 20)
    assert cell["kind"] == "no_grad" and cell["n"] == 20 and cell["us_per_step"] > 0


def test_the_table_prints_a_row_per_cell(monkeypatch, capsys):
    seen = []

    def fake(script, kind, n):
        seen.append((script, kind, n))
        return {"kind": kind, "n": n}

    monkeypatch.setattr(_rss, "measure_in_subprocess", fake)
    monkeypatch.setattr(sys, "argv", ["x.py"])
    _rss.table_main("x.py", "d", "h", lambda k, n: {}, [("a", 1), ("b", 2)], lambda r: f"{r['kind']}{r['n']}")
    assert capsys.readouterr().out.splitlines() == ["a1", "b2"]
    assert seen == [("x.py", "a", 1), ("x.py", "b", 2)]
