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
import time

HELP = "Install Julia and the Julia packages of the julia backend, and precompile them."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--julia", metavar="EXE", help="use this Julia executable (PYTHON_JULIAPKG_EXE)")
    parser.add_argument(
        "--project", metavar="DIR", help="install into this Julia project, an absolute path (PYTHON_JULIAPKG_PROJECT)"
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="download nothing; only precompile what is installed (PYTHON_JULIAPKG_OFFLINE=yes)",
    )
    parser.add_argument("--update", action="store_true", help="update the Julia packages within [compat]")


def _apply_environment(args: argparse.Namespace) -> None:
    if args.julia:
        os.environ["PYTHON_JULIAPKG_EXE"] = args.julia
    if args.project:
        if not os.path.isabs(args.project):
            raise ValueError(f"--project must be an absolute path, got {args.project!r}.")
        os.environ["PYTHON_JULIAPKG_PROJECT"] = args.project
    if args.offline:
        os.environ["PYTHON_JULIAPKG_OFFLINE"] = "yes"


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("juliacall") is None or importlib.util.find_spec("juliapkg") is None:
        print(
            "juliacall is not installed. Install the Julia extra first:\n"
            "    pip install 'hybrid_node[julia]'\n"
            "then run `hybrid-node julia-setup` again."
        )
        return 1
    try:
        _apply_environment(args)
    except ValueError as e:
        print(e)
        return 2
    import juliapkg
    import juliapkg.state

    juliapkg.state.reset_state()  # pick up the variables set above
    start = time.perf_counter()
    print("Resolving the Julia environment (installs Julia and packages when missing; can take minutes)...")
    try:
        juliapkg.resolve(force=True, update=bool(args.update))
    except Exception as e:  # noqa: BLE001 - juliapkg raises bare Exceptions ("could not find Julia ...")
        print(_failure("resolving the Julia environment", e, RESOLVE_HELP))
        return 1
    print(f"  Julia: {juliapkg.executable()}\n  project: {juliapkg.project()}")
    print("Loading HybridNODE (precompiles it and its workload on first use)...")
    try:
        from juliacall import Main as jl

        jl.seval("using HybridNODE")
    except Exception as e:  # noqa: BLE001 - a JuliaError or juliacall's own start-up error
        print(_failure("loading HybridNODE", e, LOAD_HELP))
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
