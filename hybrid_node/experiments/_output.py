"""Run folders, result tables, training checkpoints and ``--resume`` checks shared by the experiments."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import datetime
import functools
import json
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .._errors import CheckpointError, ResumeError
from ..training.atomic import atomic_savefig, atomic_write_json, atomic_write_text
from ..training.checkpoint import load_checkpoint, object_state, restore_object_state, save_checkpoint
from ._args import SettingsError, positive_int


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


def save_figure(fig: Any, path: Path, dpi: int, *, layout: bool = True) -> None:
    """Write a finished figure to ``path`` atomically and close it (a run draws several; open ones keep their memory).

    Args:
        fig: the matplotlib figure.
        path: the image file (its suffix names the format).
        dpi: the resolution.
        layout: lay the figure out with ``tight_layout`` first; False where the caller did, before adding
            what ``tight_layout`` cannot place (a colorbar beside several axes).
    """
    if layout:
        fig.tight_layout()
    atomic_savefig(fig, path, dpi=dpi)
    pyplot().close(fig)


def resume_settings(settings: Any, resumable: frozenset[str]) -> dict[str, Any]:
    """The fields of a settings dataclass that a resumed run must keep, as JSON-compatible values.

    Args:
        settings: the run's settings (a dataclass instance, or a mapping of setting names to values).
        resumable: the fields a resumed run may change (the budget, what runs, what happens after training).

    Returns:
        A dict of plain values (tuples as lists), as stored in checkpoints and ``results.json``.
    """
    fields = dict(settings) if isinstance(settings, Mapping) else dataclasses.asdict(settings)
    values = json.loads(json.dumps(fields, default=str))
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


def has_run_files(folder: Path) -> bool:
    """Whether ``folder`` holds a run: its ``results.json`` or training checkpoints (``checkpoints/*.pt``)."""
    ckpts = folder / "checkpoints"
    return (folder / "results.json").is_file() or (ckpts.is_dir() and any(ckpts.glob("*.pt")))


#: The commands whose name takes "an" ("an hnn run"); the others take "a" ("a cnf run").
_AN = frozenset({"anode", "hnn", "mnist", "nfe", "sde"})


def a_run(command: str) -> str:
    """``"a <command> run"`` or ``"an <command> run"``, as the command's name is spoken."""
    return f"{'an' if command in _AN else 'a'} {command} run"


#: The checkpoint files each command writes (``checkpoints/<stem>.pt``, the stems written by the command's
#: module): they tell whose run a folder holds where nothing in it records the command (runs written
#: before the command was recorded). An ODE-Net alone (``odenet``) may be mnist's or nfe's.
_CHECKPOINT_STEMS: dict[str, re.Pattern[str]] = {
    "anode": re.compile(r"(g1d|spheres)-(node|anode)"),
    "cnf": re.compile(r"cnf|cnf-rnode|planar-nf"),
    "demo": re.compile(r"demo"),
    "hnn": re.compile(r"(spring|pendulum)-(baseline|hnn)"),
    "mnist": re.compile(r"resnet|rknet|odenet"),
    "nfe": re.compile(r"odenet"),
    "sde": re.compile(r"latent_sde"),
    "spirals": re.compile(r"(latent_ode|rnn|rnn_gaps)-n\d+(-r\d+)?"),
}


def recorded_command(folder: Path) -> str | None:
    """The command whose run ``folder`` holds, as its ``results.json`` or checkpoints record it.

    ``results.json`` records it under ``meta.command`` (``command`` at the top of a spirals run's, and
    ``meta.settings.command`` in an hnn run's); a checkpoint under ``command``. Files that cannot be read,
    or that record no command (runs written before the command was stored), say nothing.

    Args:
        folder: a run folder.

    Returns:
        The command's name, or None when nothing in ``folder`` records one.
    """
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        results = None
    if isinstance(results, dict):
        meta = results.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        settings = meta.get("settings")
        settings = settings if isinstance(settings, dict) else {}
        for found in (meta.get("command"), results.get("command"), settings.get("command")):
            if isinstance(found, str):
                return found
    for path in sorted((folder / "checkpoints").glob("*.pt")):
        try:
            state = load_checkpoint(path, restore_rng=False)
        except CheckpointError:
            continue
        if state is not None and isinstance(state.get("command"), str):
            return state["command"]
    return None


def stored_commands(folder: Path) -> frozenset[str]:
    """The commands whose run ``folder`` may hold: the one it records (:func:`recorded_command`), else
    those that write every checkpoint file it holds (:data:`_CHECKPOINT_STEMS`).

    Args:
        folder: a run folder.

    Returns:
        One command, or several where the files fit more than one (``checkpoints/odenet.pt`` alone: mnist
        or nfe), or none where nothing tells (no checkpoints, or files no one command writes): the
        command's own checks report those.
    """
    recorded = recorded_command(folder)
    if recorded is not None:
        return frozenset({recorded})
    stems = [path.stem for path in (folder / "checkpoints").glob("*.pt")]
    if not stems:
        return frozenset()
    return frozenset(c for c, names in _CHECKPOINT_STEMS.items() if all(names.fullmatch(s) for s in stems))


def _runs(commands: Iterable[str]) -> str:
    """``"an mnist run"``, or ``"an mnist or nfe run"`` for several (see :func:`a_run`)."""
    names = sorted(commands)
    return a_run(names[0])[: -len(" run")] + "".join(f" or {c}" for c in names[1:]) + " run"


def _check_command(folder: Path, command: str, stored: frozenset[str], where: Path) -> None:
    """Refuse to continue a run of another command (``stored``: :func:`stored_commands`) with ``command``.

    Raises:
        ResumeError: ``stored`` names other commands only; the message names them and ``command``.
    """
    if stored and command not in stored:
        resumes = " or ".join(f"`hybrid-node {c} --resume --out {folder}`" for c in sorted(stored))
        raise ResumeError(
            f"Cannot resume from {str(where)!r} with `hybrid-node {command}`: this folder holds "
            f"{_runs(stored)}, not {a_run(command)}. Continue it with {resumes}, or pass the --out of "
            f"{a_run(command)}."
        )


def open_run(
    out: str | Path | None,
    name: str,
    resume: bool,
    *,
    has_run: Callable[[Path], bool] = has_run_files,
    run_kind: str | None = None,
    holds: str = "results.json or checkpoints/",
    neither: str | None = None,
    command: str | None = None,
) -> Path:
    """The run folder of a command that checkpoints its training, after the ``--resume`` checks.

    Args:
        out: the ``--out`` folder (None: a new ``runs/<name>-<timestamp>``).
        name: the command, for the default folder.
        resume: ``--resume`` was given.
        has_run: whether a folder holds a run of this command.
        run_kind: the run, for the messages (default "a <name> run").
        holds: what such a run leaves in the folder, for the message that refuses to overwrite it.
        neither: what an empty folder lacks, for the message that refuses ``--resume`` (default
            "results.json nor checkpoints/*.pt of <run_kind>").
        command: the subcommand, compared with those whose run the folder may hold (:func:`stored_commands`:
            the one it records, or the one its checkpoint files belong to; default ``name``).

    Returns:
        The folder, created if needed.

    Raises:
        ResumeError: ``--resume`` without ``--out``, without a run there to continue, or of a run of
            another command; or a new run (no ``--resume``) into a folder that holds one, which it would
            overwrite.
        SettingsError: the folder cannot be created.
    """
    command = command or name
    run_kind = run_kind or a_run(name)
    if resume:
        if out is None:
            raise ResumeError("--resume needs --out pointing at the run folder to continue.")
        path = Path(out)
        if path.is_dir():
            # Before the command's own checks: another command's run is named as such, not listed as a
            # run with every setting different, nor taken for an empty folder.
            _check_command(path, command, stored_commands(path), path)
        check_resumable(
            path, path.is_dir() and has_run(path), neither or f"results.json nor checkpoints/*.pt of {run_kind}"
        )
    elif out is not None and Path(out).is_dir():
        path = Path(out)
        others = stored_commands(path)
        if others and command not in others:
            raise ResumeError(
                f"The folder {str(out)!r} holds {_runs(others)}; a new {command} run would overwrite its files. "
                "Pass another --out."
            )
        if has_run(path):
            raise ResumeError(
                f"The folder {str(out)!r} already holds {run_kind} ({holds}); a new run would overwrite it. "
                "Pass --resume to continue that run, or another --out for a new one."
            )
    folder = run_folder(None if out is None else str(out), name)
    _OPENED.set(folder)  # for the message of an interrupted run (see interruptible)
    return folder


#: The folder the running command opened with :func:`open_run` (None before it has).
_OPENED: contextvars.ContextVar[Path | None] = contextvars.ContextVar("opened_run", default=None)

#: The exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130

#: The exit status of a command stopped by SIGTERM (128 + SIGTERM), e.g. a batch scheduler's stop.
TERMINATED = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM raised as an exception where the command is, so that it unwinds as on Ctrl-C.

    By default SIGTERM ended the process on the spot: no line saying how to resume, and a checkpoint
    being written left its temporary file behind (the last complete checkpoint stayed intact).
    """


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`_Terminated` (main thread only: a handler can only be set there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_message(command: str, folder: Path | None) -> str:
    """The one line printed when Ctrl-C stops ``command``: what was kept in ``folder`` and how to go on.

    Args:
        command: the subcommand.
        folder: its run folder (None: stopped before it made one).

    Returns:
        The message, without a traceback.
    """
    if folder is not None and has_run_files(folder):
        return (
            f"hybrid-node {command}: interrupted. The run in {str(folder)!r} continues from its last checkpoint: "
            f"run the same command with --resume --out {folder}"
        )
    where = "before its run folder was made" if folder is None else f"before {str(folder)!r} held a checkpoint"
    return f"hybrid-node {command}: interrupted {where}; nothing to resume: run the command again."


def interruptible(command: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Make a command's ``run(args)`` end on Ctrl-C with one line on stderr and status 130, not a traceback
    (on SIGTERM the same line and status 143).

    The checkpoints are written atomically, so whatever the interrupt stopped, the folder holds the last
    complete one and ``--resume`` continues from it; the line says so, with the folder.

    Args:
        command: the subcommand, for the message.

    Returns:
        A decorator for ``run``.
    """

    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(run)
        def wrapped(args: argparse.Namespace) -> int:
            token = _OPENED.set(None)
            try:
                with _sigterm_as_interrupt():
                    return run(args)
            except KeyboardInterrupt as stop:
                print(interrupted_message(command, _OPENED.get()), file=sys.stderr)
                return TERMINATED if isinstance(stop, _Terminated) else INTERRUPTED
            finally:
                _OPENED.reset(token)

        return wrapped

    return wrap


def add_resume_arguments(parser: argparse.ArgumentParser, every: int, unit: str = "training iterations") -> None:
    """The ``--checkpoint-every`` and ``--resume`` options of a command that checkpoints its training.

    Args:
        parser: the command's parser.
        every: the default of ``--checkpoint-every``.
        unit: what ``--checkpoint-every`` counts, for the help.
    """
    parser.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=every,
        help=f"{unit} between the atomic checkpoints in --out/checkpoints (default {every})",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (same settings): finished models are kept, the interrupted one "
        "continues from its last checkpoint to the same result as an uninterrupted run",
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """How a command checkpoints its training loops, and continues an interrupted one exactly.

    Each loop saves its objects (model, optimizer, schedule, generators: see
    :func:`~hybrid_node.training.checkpoint.object_state`), its step, total and history, the settings
    and the global generator states to one file, atomically, every ``every`` steps and at its last
    one. :meth:`load` puts all of it back, so the loop continues with the same minibatches, noise and
    updates as a run that was never interrupted; a loop whose checkpoint is at its last step is
    finished and is not trained again.

    Attributes:
        folder: the run folder (checkpoints go to ``folder/checkpoints/<name>.pt``); None saves nothing.
        command: the subcommand, for the messages.
        settings: the settings that shape the trained weights (:func:`resume_settings`).
        resumable: the settings a resumed run may change.
        every: steps between checkpoints.
        resume: continue from the checkpoints that exist.
        options: as for :func:`settings_differences`.
    """

    folder: Path | None
    command: str
    settings: dict[str, Any]
    resumable: frozenset[str]
    every: int
    resume: bool = False
    options: Mapping[str, str] | None = None

    @classmethod
    def of(
        cls,
        folder: Path | None,
        command: str,
        settings: Any,
        resumable: frozenset[str],
        every: int,
        resume: bool = False,
        options: Mapping[str, str] | None = None,
    ) -> Checkpoints:
        """The checkpoints of a run of ``settings`` (a dataclass or a mapping), which keep its
        :func:`resume_settings`; the other arguments are the attributes of the same names."""
        return cls(folder, command, resume_settings(settings, resumable), resumable, every, resume, options)

    def path(self, name: str) -> Path | None:
        """The checkpoint file of the loop ``name`` (None without a folder)."""
        return None if self.folder is None else self.folder / "checkpoints" / f"{name}.pt"

    def due(self, path: Path | None, step: int, total: int) -> bool:
        """Whether the loop saves after ``step`` of ``total`` steps: every ``every`` steps and at the last."""
        return path is not None and (step % self.every == 0 or step == total)

    def save(self, path: Path | None, step: int, total: int, objects: Mapping[str, Any], **extra: Any) -> None:
        """Write the loop's state after ``step`` of ``total`` steps to ``path`` (nothing if None).

        Args:
            path: the checkpoint file.
            step: steps done.
            total: steps of the whole loop.
            objects: name -> stateful object (see :func:`~hybrid_node.training.checkpoint.object_state`).
            **extra: anything else the loop needs to continue (its history, counters, a kept iterate).
        """
        if path is None:
            return
        state = {name: object_state(obj) for name, obj in objects.items()}
        save_checkpoint(
            path,
            {**state, **extra, "step": step, "total": total, "settings": self.settings, "command": self.command},
        )

    def check_stored(self, paths: Iterable[Path] | None = None) -> None:
        """With ``resume``: refuse, before anything is trained, checkpoints written with other settings.

        Args:
            paths: the files to check (default: every ``checkpoints/*.pt`` of the folder).

        Raises:
            CheckpointError: a checkpoint is damaged.
            ResumeError: a checkpoint was written by another command, or with settings that shape the
                weights differently.
        """
        if not self.resume or self.folder is None:
            return
        if paths is None:
            paths = sorted((self.folder / "checkpoints").glob("*.pt"))
        for path in paths:
            state = load_checkpoint(path, restore_rng=False)
            if state is not None:
                self._check_written_here(state, path)

    def _check_written_here(self, state: Mapping[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another command, or of other settings (checkpoints written before the
        command was stored record none, and are compared by their settings alone).

        Raises:
            ResumeError: ``state`` was written by another command or with other settings.
        """
        recorded = state.get("command")
        stored = frozenset({recorded}) if isinstance(recorded, str) else frozenset()
        _check_command(path.parent.parent, self.command, stored, path)
        if isinstance(state.get("settings"), dict):
            check_same_settings(state["settings"], self.settings, path, self.resumable, self.options)

    def load(
        self,
        path: Path | None,
        objects: Mapping[str, Any],
        required: Sequence[str] = ("step", "total", "history"),
        *,
        what: str = "model",
        hint: str = "",
    ) -> dict[str, Any] | None:
        """With ``resume``: restore ``objects`` and the global generators from ``path``.

        Build every object first (a scheduler changes its optimizer's learning rate when it is built),
        then load: the stored states replace what building set.

        Args:
            path: the checkpoint file.
            objects: name -> the freshly built stateful object whose state is stored under that name.
            required: the other entries the loop reads back.
            what: what the objects make up, for the message (e.g. "RNN").
            hint: added to the message when the checkpoint does not fit (e.g. which option changes the model).

        Returns:
            The stored dict, or None (no ``resume``, no ``path``, or no file yet).

        Raises:
            CheckpointError: the file is damaged or not a checkpoint of this command.
            ResumeError: it was written by another command or with other settings, or does not fit the
                objects built now.
        """
        if not self.resume or path is None:
            return None
        state = load_checkpoint(path)
        if state is None:
            return None
        missing = [k for k in (*objects, *required) if k not in state]
        if missing:
            raise CheckpointError(
                path,
                f"The checkpoint {str(path)!r} lacks {', '.join(missing)}: it is not a checkpoint of "
                f"`hybrid-node {self.command}`. Delete it to train that model from the start, then resume.",
            )
        self._check_written_here(state, path)
        try:
            for name, obj in objects.items():
                restore_object_state(obj, state[name])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise ResumeError(
                f"The checkpoint {str(path)!r} does not fit the {what} built from the given settings "
                f"({_first_line(e)}){hint}. Resume with the settings the run was started with, or delete the "
                "checkpoint to train that model from the start."
            ) from e
        return state


def resume_job(
    ckpts: Checkpoints | None,
    job: str,
    objects: Mapping[str, Any],
    required: Sequence[str] = ("step", "total", "history"),
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint file of the training loop ``job`` and, when resuming, its restored state.

    Args:
        ckpts: the command's checkpoints (None: the loop checkpoints nothing).
        job: the loop's name (``checkpoints/<job>.pt``).
        objects: as for :meth:`Checkpoints.load`.
        required: as for :meth:`Checkpoints.load`.

    Returns:
        ``(path, state)``: the file (None without ``ckpts`` or a run folder) and the stored dict (None: the
        loop starts from its first step).

    Raises:
        CheckpointError, ResumeError: as :meth:`Checkpoints.load`.
    """
    if ckpts is None:
        return None, None
    path = ckpts.path(job)
    return path, ckpts.load(path, objects, required)


class LoopStart(NamedTuple):
    """Where a checkpointed training loop starts: its checkpoint file, the iterations already done, the
    history so far and the training seconds of earlier invocations (0 for a fresh loop)."""

    path: Path | None
    done: int
    history: Any
    seconds: float


def resume_loop(
    ckpts: Checkpoints | None, job: str, objects: Mapping[str, Any], history: Any, *, timed: bool = False
) -> LoopStart:
    """:func:`resume_job` and where the loop stands: a resumed one continues after its stored step with
    its stored history (a finished one, ``done == iters``, trains no more); a fresh one starts at 0 with
    ``history``.

    Args:
        ckpts: the command's checkpoints (None: the loop checkpoints nothing).
        job: the loop's name (``checkpoints/<job>.pt``).
        objects: as for :meth:`Checkpoints.load`.
        history: the fresh loop's (empty) history.
        timed: the checkpoints also store the training ``seconds`` so far (then required in them).

    Returns:
        The :class:`LoopStart`.

    Raises:
        CheckpointError, ResumeError: as :meth:`Checkpoints.load`.
    """
    required = ("step", "total", "history", "seconds") if timed else ("step", "total", "history")
    path, state = resume_job(ckpts, job, objects, required)
    if state is None:
        return LoopStart(path, 0, history, 0.0)
    return LoopStart(path, state["step"], state["history"], state["seconds"] if timed else 0.0)


def open_checkpointed_run(
    args: argparse.Namespace,
    command: str,
    settings: Any,
    resumable: frozenset[str],
    options: Mapping[str, str] | None = None,
    *,
    run_kind: str | None = None,
) -> tuple[Path, Checkpoints]:
    """The run folder and checkpoints of a command whose training loops all checkpoint the same way.

    Opens ``args.out`` (:func:`open_run`), then refuses stored checkpoints of other settings before
    anything is trained (:meth:`Checkpoints.check_stored`).

    Args:
        args: the parsed command line (with ``out``, ``resume`` and ``checkpoint_every``).
        command: the subcommand; it also names the default folder (``runs/<command>-<timestamp>``).
        settings: the run's settings (a dataclass or a mapping), as for :meth:`Checkpoints.of`.
        resumable: the settings a resumed run may change.
        options: as for :func:`settings_differences`.
        run_kind: as for :func:`open_run`.

    Returns:
        ``(folder, checkpoints)``.

    Raises:
        ResumeError, SettingsError: as :func:`open_run`; ResumeError, CheckpointError: as
            :meth:`Checkpoints.check_stored`.
    """
    folder = open_run(args.out, command, args.resume, run_kind=run_kind)
    ckpts = Checkpoints.of(folder, command, settings, resumable, args.checkpoint_every, args.resume, options)
    ckpts.check_stored()
    return folder, ckpts
