"""Atomic file writes: a crash or a kill leaves the old file or the new one, never a truncated one.

Every write goes to a temporary file in the destination's folder, is flushed and fsynced, and then
renamed over the destination with ``os.replace`` (atomic on POSIX and Windows); the folder is fsynced
too where the platform allows, so the rename survives a power cut. The temporary file is named
``<name>.<pid>-<random>.tmp``: a process killed mid-write (SIGKILL, power cut) leaves it behind, and
the next write of the same destination, or :func:`remove_stale_temp_files`, removes every such file
whose writing process no longer runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .._errors import CheckpointError

PathLike = str | os.PathLike

#: ``.<pid>-<8 hex>.tmp`` (:func:`_temp_name`) or ``.<8 of [a-z0-9_]>.tmp`` (``tempfile.mkstemp``, older
#: versions): exactly these, so that a user's ``<name>.backup.tmp`` beside the file is never deleted.
_TEMP = re.compile(r"\.(?:(?P<pid>\d+)-[0-9a-f]{8}|[a-z0-9_]{8})\.tmp")


def _temp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (owned by someone else) or cannot tell: leave its file alone
    return True


def stale_temp_files(path: PathLike) -> list[Path]:
    """The temporary files of earlier writes of ``path`` whose writing process has ended.

    Args:
        path: the destination file (``<folder>/<name>``).

    Returns:
        The ``<name>.<pid>-<random>.tmp`` files in its folder whose process ``pid`` no longer runs, and
        the ``<name>.<random>.tmp`` files of older versions (which did not record a pid).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = path.name + "."
    stale = []
    for entry in path.parent.iterdir():
        name = entry.name
        if not name.startswith(prefix):
            continue
        match = _TEMP.fullmatch(name[len(path.name) :])
        if match is None:
            continue
        pid = match.group("pid")
        if pid is None or not _pid_alive(int(pid)):
            stale.append(entry)
    return stale


def remove_stale_temp_files(path: PathLike) -> list[Path]:
    """Delete the temporary files left by interrupted writes of ``path`` (see :func:`stale_temp_files`).

    Args:
        path: the destination file.

    Returns:
        The files removed.
    """
    removed = []
    for entry in stale_temp_files(path):
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file that then replaces ``path``.

    Args:
        path: destination; its folder is created if needed.
        write: called with the open binary temporary file.

    Returns:
        The path written.

    Raises:
        Whatever ``write`` raises; ``path`` is then unchanged and the temporary file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)
    remove_stale_temp_files(path)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`).

    Args:
        path: destination.
        data: the file's new content.

    Returns:
        The path written.
    """
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`).

    Args:
        path: destination.
        text: the file's new content.
        encoding: text encoding.

    Returns:
        The path written.
    """
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    """Serialise ``obj`` with ``json.dumps(obj, **dumps_kwargs)`` and write it atomically.

    Args:
        path: destination.
        obj: JSON-serialisable object.
        dumps_kwargs: passed to :func:`json.dumps` (e.g. ``indent=2``).

    Returns:
        The path written.
    """
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def atomic_savefig(fig: Any, path: PathLike, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure to ``path`` atomically (the format follows the suffix, as savefig's).

    Args:
        fig: a matplotlib ``Figure``.
        path: destination image.
        savefig_kwargs: passed to ``fig.savefig`` (e.g. ``dpi``).

    Returns:
        The path written.
    """
    path = Path(path)
    buffer = io.BytesIO()
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or None)
    fig.savefig(buffer, **savefig_kwargs)
    return atomic_write_bytes(path, buffer.getvalue())


def unreadable(path: Path, what: str, error: OSError) -> CheckpointError:
    """The error for a file that cannot be opened: it is not called damaged, nor to be deleted.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. "checkpoint").
        error: what opening it raised.

    Returns:
        The error to raise; the message names the file, the reason and what to check (a missing file is
        said to be missing, not to need read permission).
    """
    reason = error.strerror or str(error)
    if isinstance(error, (FileNotFoundError, IsADirectoryError)):
        found = "does not exist" if isinstance(error, FileNotFoundError) else "is a folder, not a file"
        return CheckpointError(path, f"The {what} {str(path)!r} {found}: check the path, then run again.")
    return CheckpointError(
        path,
        f"The {what} {str(path)!r} cannot be opened ({type(error).__name__}: {reason}). It was left as it is: "
        "give this user permission to read it (or check the disk it is on), then run again.",
    )


def read_json(
    path: PathLike, what: str = "file", fix: str = "Delete it or restore it from a backup, then run again."
) -> Any:
    """Read a JSON file written by :func:`atomic_write_json`, with a clear error when it is damaged.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. "results file").
        fix: what to do about a damaged file, for the message.

    Returns:
        The parsed content.

    Raises:
        CheckpointError: the file cannot be opened (no read permission) or is not valid JSON; the message
            names the file and what to do.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise unreadable(path, what, e) from e
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            path,
            f"The {what} {str(path)!r} cannot be read ({type(e).__name__}: {e}): it is damaged (cut short by "
            f"an interrupted write of an older version, or by a disk problem). {fix}",
        ) from e
