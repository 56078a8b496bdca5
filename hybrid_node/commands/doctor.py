"""``hybrid-node doctor``: which backends work here, and why not.

The Julia check never downloads anything: it looks for juliacall and a Julia executable, and only
with ``--start`` starts Julia (in a child process, with ``PYTHON_JULIAPKG_OFFLINE=yes``).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys

from .._backend import _ENV, BACKENDS
from ..julia import runtime as julia_runtime

HELP = (
    "Show which backends (torch, julia) work on this machine and why not. Exit status 0 when the torch "
    "backend and the default backend (HYBRID_NODE_BACKEND) work, 1 otherwise: a missing Julia is only a "
    "failure when HYBRID_NODE_BACKEND=julia."
)

_START_SCRIPT = (
    "import os; os.environ.setdefault('PYTHON_JULIAPKG_OFFLINE', 'yes')\n"
    "from juliacall import Main as jl\n"
    "jl.seval('using HybridNODE')\n"
    "print('HybridNODE loaded, Julia', jl.seval('string(VERSION)'))\n"
)


def _seconds(value: str) -> float:
    """A finite number of seconds > 0 (``--timeout``).

    Args:
        value: the option's text.

    Returns:
        The number.

    Raises:
        argparse.ArgumentTypeError: not a number, or not finite and > 0 (which would make ``--start``
            report a working Julia as timed out, or wait forever).
    """
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):  # NaN fails both
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {value!r}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--start", action="store_true", help="also start Julia offline in a child process and load HybridNODE"
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=600.0,
        help="seconds allowed for --start (first loads precompile; default 600)",
    )


def torch_report() -> tuple[bool, list[str]]:
    """Lines describing the torch backend (always usable) and its devices."""
    import torch

    lines = [f"torch  : OK (torch {torch.__version__})"]
    if torch.cuda.is_available():
        lines.append(f"         CUDA: {torch.cuda.device_count()} device(s), {torch.cuda.get_device_name(0)}")
    else:
        lines.append("         CUDA: not available (CPU only)")
    return True, lines


def julia_report(start: bool = False, timeout: float = 600.0) -> tuple[bool, list[str]]:
    """Lines describing the Julia backend, found without downloading anything."""
    status = julia_runtime.probe()
    lines = []
    if status.started:
        return True, ["julia  : OK (already running in this process)"]
    lines.append(f"         juliacall: {'installed' if status.juliacall else 'not installed'}")
    lines.append(f"         julia executable: {status.julia_exe or 'not found'}")
    for var in (
        "PYTHON_JULIACALL_EXE",
        "PYTHON_JULIACALL_PROJECT",
        "PYTHON_JULIACALL_BINDIR",
        "PYTHON_JULIAPKG_EXE",
        "PYTHON_JULIAPKG_PROJECT",
        "PYTHON_JULIAPKG_OFFLINE",
        "JULIA_NUM_THREADS",
    ):
        if os.environ.get(var):
            lines.append(f"         {var}={os.environ[var]}")
    if not status.ok:
        first = f"julia  : NOT AVAILABLE ({status.reason})"
        hint = ["         fix: pip install 'hybrid_node[julia]' && hybrid-node julia-setup"]
        return False, [first] + lines + hint
    if not start:
        return True, ["julia  : probably OK (found juliacall and Julia; run with --start to load it)"] + lines
    try:
        proc = subprocess.run([sys.executable, "-c", _START_SCRIPT], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, [f"julia  : NOT AVAILABLE (loading HybridNODE took over {timeout:.0f} s)"] + lines
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return False, [
            "julia  : NOT AVAILABLE (HybridNODE did not load offline; run `hybrid-node julia-setup`)"
        ] + lines + ["         " + s for s in tail]
    return True, [f"julia  : OK ({proc.stdout.strip()})"] + lines


def default_backend_report(julia_ok: bool) -> tuple[bool, list[str]]:
    """Lines describing the default backend that solves without ``backend=`` use.

    Args:
        julia_ok: whether the Julia backend was found usable.

    Returns:
        ``(ok, lines)``: not ok when ``HYBRID_NODE_BACKEND`` holds an unknown name (every solve would
        then fail) or names the Julia backend while it is not available; the lines give the fix.
    """
    raw = os.environ.get(_ENV)
    if not raw:
        return True, ["default: torch (HYBRID_NODE_BACKEND is not set)"]
    name = raw.strip().lower()
    if name not in BACKENDS:
        return False, [
            f"default: INVALID ({_ENV}={raw!r} is not a backend; every solve without backend= fails)",
            f"         fix: unset {_ENV}, or set it to one of: {', '.join(BACKENDS)}",
        ]
    if name == "julia" and not julia_ok:
        return False, [
            f"default: julia ({_ENV}={raw!r}) but the Julia backend is NOT AVAILABLE (see above)",
            f"         fix: set it up (hybrid-node julia-setup), or unset {_ENV} to solve with torch",
        ]
    return True, [f"default: {name} ({_ENV}={raw!r})"]


def run(args: argparse.Namespace) -> int:
    """Print the report.

    Args:
        args: the parsed options (``start``, ``timeout``).

    Returns:
        0 when the torch backend and the default backend work, else 1.
    """
    ok_torch, torch_lines = torch_report()
    ok_julia, julia_lines = julia_report(start=getattr(args, "start", False), timeout=getattr(args, "timeout", 600.0))
    ok_default, default_lines = default_backend_report(ok_julia)
    print("hybrid_node backends")
    for line in torch_lines + julia_lines + default_lines:
        print(line)
    return 0 if ok_torch and ok_default else 1
