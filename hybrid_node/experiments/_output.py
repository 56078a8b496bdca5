"""Run folders and result tables shared by the model experiments (mnist, nfe, anode)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..training.atomic import atomic_write_json, atomic_write_text
from ._args import SettingsError


def run_folder(out: str | None, name: str) -> Path:
    """Create and return the run folder: ``out`` if given, else ``runs/<name>-<timestamp>``.

    Raises:
        SettingsError: the folder cannot be created (a file of that name, no permission), checked
            before any training starts; the message names the folder.
    """
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = f"runs/{name}-{stamp}"
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SettingsError(
            f"Cannot create the run folder {str(path)!r} ({e.strerror or e}). Pass --out a folder you can write to."
        ) from e
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
    """Write ``<stem>.md`` and ``<stem>.json`` into ``folder`` (each atomically) and return the markdown table.

    Args:
        folder: the run folder.
        stem: file name without suffix.
        rows: one dict per table row.
        columns: the table's column order.
        meta: settings listed above the table and stored under ``"meta"``.

    Returns:
        The markdown table.
    """
    table = markdown_table(rows, columns)
    header = ""
    if meta:
        header = "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n\n"
    atomic_write_text(folder / f"{stem}.md", header + table + "\n")
    atomic_write_json(folder / f"{stem}.json", {"meta": dict(meta or {}), "rows": list(rows)}, indent=2, default=str)
    return table


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
