"""Run folders, result tables and ``--resume`` checks shared by the experiments (mnist, nfe, anode, spirals)."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._errors import ResumeError
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


def resume_settings(settings: Any, resumable: frozenset[str]) -> dict[str, Any]:
    """The fields of a settings dataclass that a resumed run must keep, as JSON-compatible values.

    Args:
        settings: the run's settings (a dataclass instance).
        resumable: the fields a resumed run may change (the budget, what runs, what happens after training).

    Returns:
        A dict of plain values (tuples as lists), as stored in checkpoints and ``results.json``.
    """
    values = json.loads(json.dumps(dataclasses.asdict(settings), default=str))
    return {k: v for k, v in values.items() if k not in resumable}


def settings_differences(
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    resumable: frozenset[str],
    options: Mapping[str, str] | None = None,
) -> list[str]:
    """The command-line options whose value differs between a stored run and the current settings.

    Args:
        stored: settings saved by an earlier invocation; keys in ``resumable`` are ignored.
        current: the settings given now (:func:`resume_settings`).
        resumable: the settings a resumed run may change.
        options: the option that sets a field, where it is not ``--`` plus the field with dashes.

    Returns:
        One ``"--option stored (now given)"`` string per differing setting, empty when they agree.
    """
    options = options or {}
    missing = object()
    found = []
    for key in sorted((set(current) | set(stored)) - resumable):
        old, new = stored.get(key, missing), current.get(key, missing)
        if old != new:
            option = options.get(key, "--" + key.replace("_", "-"))
            old, new = ("(unset)" if v is missing else v for v in (old, new))
            found.append(f"{option} {old} (now {new})")
    return found


def check_same_settings(
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    where: Path,
    resumable: frozenset[str],
    options: Mapping[str, str] | None = None,
) -> None:
    """Refuse to continue a run that was started with other settings (see :func:`settings_differences`).

    Args:
        stored: the settings recorded in ``where``.
        current: the settings given now (:func:`resume_settings`).
        where: the file ``stored`` comes from, for the message.
        resumable: the settings a resumed run may change.
        options: as for :func:`settings_differences`.

    Raises:
        ResumeError: a setting differs; the one-line message names each option with both values.
    """
    differences = settings_differences(stored, current, resumable, options)
    if differences:
        raise ResumeError(
            f"Cannot resume from {str(where)!r}: it was started with other settings: {'; '.join(differences)}. "
            "Resume with the settings the run was started with (the first value of each), or drop --resume "
            "and pass another --out to start a new run with the new settings."
        )


def check_resumable(out: Path, has_run: bool, what: str) -> None:
    """Refuse ``--resume`` when ``out`` holds no run to continue.

    Args:
        out: the ``--out`` folder.
        has_run: whether ``out`` holds the command's results or checkpoints.
        what: what a run leaves there, for the message (e.g. "results.json nor checkpoints/*.pt of a spirals run").

    Raises:
        ResumeError: ``out`` does not exist, is not a folder, or holds no run; the message says what to do.
    """
    if not out.exists():
        raise ResumeError(
            f"Nothing to resume: the --out folder {str(out)!r} does not exist. Check the path, or drop "
            "--resume to start a new run there."
        )
    if not out.is_dir():
        raise ResumeError(f"--out {str(out)!r} is a file, not a run folder; pass the folder of the run to resume.")
    if not has_run:
        raise ResumeError(
            f"Nothing to resume: {str(out)!r} holds neither {what}. Check the path, or drop --resume to start a "
            "new run there."
        )
