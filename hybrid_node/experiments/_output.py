"""Run folders and result tables shared by the model experiments (mnist, nfe, anode)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_folder(out: str | None, name: str) -> Path:
    """Create and return the run folder: ``out`` if given, else ``runs/<name>-<timestamp>``."""
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = f"runs/{name}-{stamp}"
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """Format ``rows`` (dicts) as a markdown table with the given column order."""
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_results(
    folder: Path, stem: str, rows: Sequence[Mapping], columns: Sequence[str], meta: Mapping | None = None
) -> str:
    """Write ``<stem>.md`` and ``<stem>.json`` into ``folder`` and return the markdown table."""
    table = markdown_table(rows, columns)
    header = ""
    if meta:
        header = "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n\n"
    (folder / f"{stem}.md").write_text(header + table + "\n")
    (folder / f"{stem}.json").write_text(
        json.dumps({"meta": dict(meta or {}), "rows": list(rows)}, indent=2, default=str)
    )
    return table


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
