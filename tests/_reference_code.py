"""Reference implementations' code, read from their repositories at test time.

Some tests check this library against other projects' own code: torchdiffeq's and torchsde's examples, FFJORD's
``lib/layers``, Dupont et al.'s ``anode`` package, Rubanova et al.'s ``lib``. That code is read when the tests run
from the project's repository (a checkout, or a bare git directory such as a mirror), which an environment variable
names, and it is never copied into this repository. Without the repository, or without git to read a bare one, those
tests skip with a one-line reason that names the variable.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import types
from collections.abc import Sequence
from pathlib import Path

import pytest

#: seconds one git command may take: reading one file or folder of a local repository takes well under one
GIT_TIMEOUT_S = 60


def repository(env_var: str, default: str) -> Path:
    """The repository that ``env_var`` names.

    Args:
        env_var: the environment variable that may name the repository (a checkout or a bare git directory).
        default: the path to use when the variable is unset.

    Returns:
        The repository's path (which need not exist: the readers below skip when it does not).
    """
    return Path(os.environ.get(env_var, default))


def _git(repo: Path, args: list[str], env_var: str, what: str) -> bytes:
    """The output of ``git -C repo *args``; skips the test when git is missing or the command fails."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=GIT_TIMEOUT_S)
    except OSError:
        pytest.skip(f"git is not available to read {what} at {repo} (set {env_var} to a checkout)")
    except subprocess.TimeoutExpired:
        pytest.skip(f"git took over {GIT_TIMEOUT_S} s to read {what} at {repo} (set {env_var})")
    if done.returncode != 0:
        # git's own first line says which: no repository there, or no such path in it
        reason = (done.stderr.decode(errors="replace").strip().splitlines() or ["git failed"])[0]
        pytest.skip(f"{what} is not at {repo} (set {env_var}): {reason}")
    return done.stdout


def read_source(repo: Path, relpath: str, env_var: str, what: str) -> str:
    """The text of one file of a reference repository: from the checkout, else ``git show HEAD:relpath``.

    Args:
        repo: the repository (see :func:`repository`).
        relpath: the file's path inside the repository, with forward slashes.
        env_var: the environment variable that names the repository, for the skip reason.
        what: the repository in words (e.g. ``"torchsde's repository"``), for the skip reason.

    Returns:
        The file's text.

    Raises:
        pytest.skip.Exception: the file is neither in a checkout at ``repo`` nor readable from it with git.
    """
    if (repo / relpath).is_file():
        return (repo / relpath).read_text()
    return _git(repo, ["show", f"HEAD:{relpath}"], env_var, what).decode()


def extract_tree(repo: Path, reldir: str, dest: Path, env_var: str, what: str) -> Path:
    """A copy of one folder of a reference repository at ``dest / reldir``: from the checkout, else ``git archive``.

    The copy, not the checkout, goes on ``sys.path``, so that importing it leaves nothing in the checkout.

    Args:
        repo: the repository (see :func:`repository`).
        reldir: the folder's path inside the repository, with forward slashes.
        dest: where to put it (an empty folder, usually the test's ``tmp_path``).
        env_var: the environment variable that names the repository, for the skip reason.
        what: the repository in words, for the skip reason.

    Returns:
        ``dest``, the folder to put on ``sys.path`` to import the copy as the package ``reldir``.

    Raises:
        pytest.skip.Exception: the folder is neither in a checkout at ``repo`` nor readable from it with git.
    """
    if (repo / reldir).is_dir():
        shutil.copytree(repo / reldir, dest / reldir, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        data = _git(repo, ["archive", "--format=tar", "HEAD", reldir], env_var, what)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            # the "data" filter (refuse links and paths out of dest) exists from Python 3.10.12 / 3.11.4 on
            archive.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest


def load_module(path: Path, name: str) -> types.ModuleType:
    """The Python file at ``path`` run as a module called ``name`` (not entered in ``sys.modules``).

    Args:
        path: the file, e.g. one written from :func:`read_source` into the test's ``tmp_path``.
        name: the module's ``__name__``; anything but ``"__main__"`` leaves a script's command line unrun.

    Returns:
        The module.

    Raises:
        ImportError: ``path`` cannot be loaded as a Python module.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as a module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_package(
    root: Path, package: str, names: Sequence[str], monkeypatch: pytest.MonkeyPatch
) -> list[types.ModuleType]:
    """``package.<name>`` for each of ``names``, imported from ``root`` for the current test only.

    References call their packages by common names (``lib``): another package of that name already imported
    (another reference's) is hidden during the test and put back after it, and the modules imported here leave
    ``sys.modules`` with the test, so that no test sees another's ``lib``.

    Args:
        root: the folder that holds ``package`` (e.g. what :func:`extract_tree` returns).
        package: the top-level package's name.
        names: its modules to import, relative to the package (``"layers"`` for ``package.layers``).
        monkeypatch: the test's monkeypatch, which undoes all of this after the test.

    Returns:
        The modules, in the order of ``names``.
    """

    def loaded() -> list[str]:
        return [key for key in sys.modules if key == package or key.startswith(f"{package}.")]

    for key in loaded():
        monkeypatch.delitem(sys.modules, key)
    monkeypatch.syspath_prepend(str(root))  # which also invalidates the import caches
    try:
        return [importlib.import_module(f"{package}.{name}") for name in names]
    finally:  # even after a failed import: entered anew, so that the monkeypatch removes them after the test
        for key in loaded():
            monkeypatch.setitem(sys.modules, key, sys.modules.pop(key))
