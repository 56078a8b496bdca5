"""benchmarks/_rss.py: the peak-memory measurement of brownian_memory.py and sde_memory.py, one process per cell."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks import _rss

ROOT = Path(__file__).resolve().parent.parent


def test_rss_growth_counts_what_the_run_keeps():
    kept = []

    def run(n):
        kept.append(b"x" * (n * 2**20))  # n MiB, every page written (bytearray(n) would leave them unmapped)

    mb, seconds = _rss.rss_growth(run, 64, warmup=1)
    # the 64 MiB held count in full; the bound from below only: the allocator and the interpreter may add
    assert mb >= 60 and seconds >= 0
    assert len(kept) == 2


def test_rss_growth_is_not_hidden_by_an_earlier_peak():
    """A process that once held more (here 256 MiB, given back) still counts a later 64 MiB run: the peak
    is reset after the warm-up (``ru_maxrss`` cannot be, and a child inherits its parent's)."""
    big = bytearray(b"y") * (256 * 2**20)  # every page written, then freed (mmap'ed: back to the system)
    del big
    kept = []
    mb, _ = _rss.rss_growth(lambda n: kept.append(b"x" * (n * 2**20)), 64, warmup=1)
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
