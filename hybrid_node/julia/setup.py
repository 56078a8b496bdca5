"""``hybrid-node julia-setup``: install Julia (if needed) and the Julia packages, then precompile.

Uses juliapkg, which reads ``hybrid_node/juliapkg.json`` and installs HybridNODE with its
dependencies into the Julia project of this Python environment (or ``PYTHON_JULIAPKG_PROJECT``).
The documented variables are honoured: ``PYTHON_JULIAPKG_EXE`` (use this Julia),
``PYTHON_JULIAPKG_PROJECT`` (install into this project), ``PYTHON_JULIAPKG_OFFLINE=yes`` (no
downloads). The command-line flags below set them for this run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time

HELP = "Install Julia and the Julia packages of the julia backend, and precompile them."


def julia_executable(value: str) -> str:
    """A Julia executable: a path to an executable file, or a command found on ``PATH``.

    Checked while the command line is parsed, before juliacall is looked for or anything downloads.

    Raises:
        argparse.ArgumentTypeError: ``value`` is neither.
    """
    if shutil.which(value) is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not an executable file nor a command on PATH")
    return value


def absolute_project(value: str) -> str:
    """A Julia project folder given as an absolute path (juliapkg reads it relative to nothing).

    Raises:
        argparse.ArgumentTypeError: ``value`` is relative.
    """
    if not os.path.isabs(value):
        raise argparse.ArgumentTypeError(f"must be an absolute path, got {value!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--julia", metavar="EXE", type=julia_executable, help="use this Julia executable (PYTHON_JULIAPKG_EXE)"
    )
    parser.add_argument(
        "--project",
        metavar="DIR",
        type=absolute_project,
        help="install into this Julia project, an absolute path (PYTHON_JULIAPKG_PROJECT)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="download nothing; only precompile what is installed (PYTHON_JULIAPKG_OFFLINE=yes)",
    )
    parser.add_argument("--update", action="store_true", help="update the Julia packages within [compat]")


def _check_arguments(args: argparse.Namespace) -> None:
    """Check the options as the parser does, for a ``run`` called with a namespace of its own.

    Raises:
        ValueError: an option is refused; the message names it.
    """
    for option, value, check in (
        ("--julia", args.julia, julia_executable),
        ("--project", args.project, absolute_project),
    ):
        if value is not None:
            try:
                check(value)
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"argument {option}: {e}") from None
    if args.update and args.offline:
        # juliapkg runs no Pkg operation at all when offline (deps.py, resolve: `if not STATE["offline"]`),
        # so the update would silently not happen.
        raise ValueError("argument --update: not allowed with --offline (offline, juliapkg installs nothing)")


def _apply_environment(args: argparse.Namespace) -> None:
    if args.julia is not None:
        os.environ["PYTHON_JULIAPKG_EXE"] = args.julia
    if args.project is not None:
        os.environ["PYTHON_JULIAPKG_PROJECT"] = args.project
    if args.offline:
        os.environ["PYTHON_JULIAPKG_OFFLINE"] = "yes"


def run(args: argparse.Namespace) -> int:
    """Install and precompile the Julia backend; messages about failures go to stderr.

    Args:
        args: the parsed options.

    Returns:
        0 when HybridNODE loaded; 2 for a refused option (before anything else is looked at); 1 when
        juliacall is missing or a step failed.
    """
    try:  # first: a bad option is reported as such, not hidden behind "install juliacall first"
        _check_arguments(args)
    except ValueError as e:
        print(f"hybrid-node julia-setup: error: {e}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("juliacall") is None or importlib.util.find_spec("juliapkg") is None:
        print(
            "juliacall is not installed. Install the Julia extra first:\n"
            "    pip install 'hybrid_node[julia]'\n"
            "then run `hybrid-node julia-setup` again.",
            file=sys.stderr,
        )
        return 1
    _apply_environment(args)
    import juliapkg
    import juliapkg.state

    juliapkg.state.reset_state()  # pick up the variables set above
    start = time.perf_counter()
    print("Resolving the Julia environment (installs Julia and packages when missing; can take minutes)...")
    try:
        juliapkg.resolve(force=True, update=bool(args.update))
    except Exception as e:  # noqa: BLE001 - juliapkg raises bare Exceptions ("could not find Julia ...")
        print(_failure("resolving the Julia environment", e, RESOLVE_HELP), file=sys.stderr)
        return 1
    print(f"  Julia: {juliapkg.executable()}\n  project: {juliapkg.project()}")
    print("Loading HybridNODE (precompiles it and its workload on first use)...")
    try:
        from juliacall import Main as jl

        jl.seval("using HybridNODE")
    except Exception as e:  # noqa: BLE001 - a JuliaError or juliacall's own start-up error
        print(_failure("loading HybridNODE", e, LOAD_HELP_OFFLINE if args.offline else LOAD_HELP), file=sys.stderr)
        return 1
    print(f"Done in {time.perf_counter() - start:.0f} s. `hybrid-node doctor --start` checks the result.")
    return 0


RESOLVE_HELP = (
    "Without --offline, juliapkg downloads Julia (if none is found) and the packages, so it needs the "
    "network; to use an installed Julia pass --julia /path/to/julia (or set PYTHON_JULIAPKG_EXE)."
)
LOAD_HELP = (
    "The packages are installed but did not load; run `hybrid-node julia-setup --update`, or "
    "`hybrid-node doctor --start` for details."
)
LOAD_HELP_OFFLINE = (
    "With --offline nothing was installed (juliapkg skips every Pkg operation offline), so the Julia packages "
    "must already be in the project; run `hybrid-node julia-setup` without --offline once (it needs the network), "
    "or pass --project pointing at an environment that holds them; `hybrid-node doctor --start` shows details."
)


def _failure(step: str, error: BaseException, help_text: str) -> str:
    """The message for a failed step: what failed, the error's first line, and what to do.

    Args:
        step: what was being done.
        error: the exception it raised.
        help_text: how to fix it.

    Returns:
        A short message (no traceback).
    """
    first = (str(error).strip().splitlines() or [""])[0]
    return f"julia-setup failed while {step}: {type(error).__name__}: {first}\n{help_text}"
