"""Finding and starting Julia, lazily: importing hybrid_node never starts or downloads Julia.

Julia starts the first time a solve asks for ``backend="julia"``; :func:`probe` checks, without
starting or downloading anything, whether that can work.

Environment variables (all optional; they are juliacall's and juliapkg's own):

- ``PYTHON_JULIACALL_EXE`` and ``PYTHON_JULIACALL_PROJECT`` (set both): use this Julia and this
  Julia project as they are. The project must contain HybridNODE and PythonCall at exactly
  juliacall's version.
- ``PYTHON_JULIAPKG_EXE``: the Julia executable juliapkg should use instead of finding or
  installing one.
- ``PYTHON_JULIAPKG_PROJECT``: the Julia project (environment) juliapkg installs into.
- ``PYTHON_JULIAPKG_OFFLINE=yes``: never download; use what is installed.
- ``JULIA_NUM_THREADS``: juliacall starts one Julia thread unless told otherwise; keep it at 1
  (the callback path runs Python on the calling thread).

Julia does not survive ``fork()`` (JuliaLang/julia#8295, closed as won't fix; PythonCall.jl#455 and
pyjulia#206 report hangs and crashes of forked workers): a child forked from a process in which
Julia runs (a ``DataLoader`` worker or a ``multiprocessing`` pool with Linux's default ``fork`` start
method) inherits a runtime whose threads are gone. :func:`load_module` and :func:`probe` refuse it
there with the remedy instead of letting the solve hang.

Julia is entered from one Python thread only, the one that started it (or, when Julia was already
running, the first that asked for the backend): a garbage collection Julia begins on another
Python thread waits forever for that one, which sits in Python outside any Julia safepoint
(PythonCall.jl#578, open: ``threading.Thread(target=jl.GC.gc).start()`` hangs every time; #540).
:func:`check_thread` refuses the other threads (a thread pool, ``nn.DataParallel`` replicas, a
background trainer) with a :class:`~hybrid_node.BackendError` instead.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
import threading

from .._errors import BackendError, JuliaNotAvailableError

INSTALL_HELP = (
    "Install the Julia backend with:\n"
    "    pip install 'hybrid_node[julia]'\n"
    "    hybrid-node julia-setup        # installs Julia if needed, the Julia packages, precompiles\n"
    "To use an existing Julia set PYTHON_JULIAPKG_EXE=/path/to/julia (or PYTHON_JULIACALL_EXE and "
    "PYTHON_JULIACALL_PROJECT together); offline, add PYTHON_JULIAPKG_OFFLINE=yes. "
    "`hybrid-node doctor` shows what is missing."
)

_EXE_VARIABLES = ("PYTHON_JULIACALL_EXE", "PYTHON_JULIAPKG_EXE")


@dataclasses.dataclass(frozen=True)
class Availability:
    """What :func:`probe` found.

    Attributes:
        juliacall: juliacall is installed.
        julia_exe: a Julia executable that juliacall would use, if one was found.
        started: Julia is already running in this process.
        reason: why the backend cannot be used ("" when it can, as far as can be told).
    """

    juliacall: bool
    julia_exe: str | None
    started: bool
    reason: str

    @property
    def ok(self) -> bool:
        return not self.reason


_STARTED_PID: int | None = None  # the process in which load_module started (or found) Julia
_FORKED_FROM_JULIA = False  # this process was forked from one in which Julia was running


def _after_fork_in_child() -> None:
    """Remember, in a forked child, that the parent was running Julia (os.register_at_fork hook)."""
    global _FORKED_FROM_JULIA
    if _MODULE is not None or julia_started():
        _FORKED_FROM_JULIA = True


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork (its workers are spawned)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def forked_child_problem() -> str:
    """Why this process cannot use Julia because it is a fork of one running Julia ("" when it is not).

    The child of ``fork()`` holds a copy of the parent's Julia runtime without its threads (the
    scheduler, GC and I/O threads; JuliaLang/julia#8295), so calling into it hangs or crashes.
    Detected by the ``register_at_fork`` hook, or by a process id that is not the one Julia was
    started in (a fork that happened before this module was imported).
    """
    forked = _FORKED_FROM_JULIA or (_STARTED_PID is not None and _STARTED_PID != os.getpid())
    if not forked:
        return ""
    return (
        "this process was forked from one in which Julia is running (a DataLoader worker or a multiprocessing "
        "pool with the 'fork' start method), and Julia's runtime does not survive fork() (it hangs or crashes, "
        "JuliaLang/julia#8295). Solve in the main process (e.g. DataLoader(num_workers=0), or keep the solve out "
        "of the Dataset), or start the workers with multiprocessing_context='spawn' (each then starts its own "
        "Julia)"
    )


def julia_started() -> bool:
    """Whether juliacall has already started Julia in this process."""
    module = sys.modules.get("juliacall")
    return bool(module is not None and getattr(module, "CONFIG", {}).get("inited"))


#: the first juliacall that takes its executable from ``PYTHON_JULIACALL_BINDIR`` (``{bindir}/julia``)
#: when ``PYTHON_JULIACALL_EXE`` is unset (juliacall/__init__.py: 0.9.35 sets ``exepath`` from
#: ``bindir``); 0.9.34 only hands the directory to Julia as ``--home`` and takes the executable from
#: ``PYTHON_JULIACALL_EXE`` alone, or from juliapkg.
BINDIR_EXECUTABLE_SINCE = (0, 9, 35)


def juliacall_version() -> tuple[int, ...] | None:
    """The installed juliacall's version, read from its metadata (importing juliacall starts Julia).

    Returns:
        The leading numeric parts, e.g. ``(0, 9, 34)``; None when juliacall is not installed or its
        version cannot be read.
    """
    try:
        text = importlib.metadata.version("juliacall")
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts) or None


#: the juliacall releases HybridNODE can run with, ``[low, high)``: juliacall pins PythonCall to its own
#: version (its juliapkg.json, ``"=0.9.34"`` for 0.9.34), and HybridNODE's Project.toml admits PythonCall
#: "0.9.34", i.e. 0.9.34 up to 0.10 (the ``[julia]`` extra asks pip for the same range).
JULIACALL_SUPPORTED = ((0, 9, 34), (0, 10))


def juliacall_version_problem() -> str:
    """Why the installed juliacall cannot load HybridNODE ("" when it can, or its version is unknown).

    Outside :data:`JULIACALL_SUPPORTED` juliapkg cannot find a PythonCall that satisfies both
    juliacall's pin and HybridNODE's ``[compat]``, and the failure surfaces only while Julia starts,
    as a package-resolution error.
    """
    version = juliacall_version()
    low, high = JULIACALL_SUPPORTED
    if version is None or low <= version < high:
        return ""
    text = ".".join(str(v) for v in version)
    return (
        f"juliacall {text} is installed, but the Julia package HybridNODE needs juliacall >= 0.9.34, < 0.10 "
        "(juliacall pins PythonCall to its own version, and HybridNODE admits PythonCall 0.9.34 to 0.9.x); "
        "run pip install 'juliacall>=0.9.34,<0.10'"
    )


def bindir_names_executable() -> bool:
    """Whether juliacall takes ``{PYTHON_JULIACALL_BINDIR}/julia`` as its executable (0.9.35 on).

    Returns:
        True from :data:`BINDIR_EXECUTABLE_SINCE` on, and when the version is unknown (the newer
        rule); False for juliacall 0.9.34.
    """
    version = juliacall_version()
    return version is None or version >= BINDIR_EXECUTABLE_SINCE


def _julia_in(bindir: str) -> str:
    """The path of the Julia executable in directory ``bindir`` (as juliacall forms it from the BINDIR)."""
    return os.path.join(bindir, "julia.exe" if os.name == "nt" else "julia")


def find_julia_executable() -> str | None:
    """A Julia executable juliacall could use, found without running or downloading anything.

    Looks at the override variables, ``PYTHON_JULIACALL_BINDIR`` (where juliacall takes the
    executable from it, :func:`bindir_names_executable`), juliapkg's own install prefix, then
    ``julia`` and ``juliaup`` on the PATH.
    """
    for var in _EXE_VARIABLES:
        value = os.environ.get(var)
        if value:
            return shutil.which(value) or (value if os.path.isfile(value) else None)
    bindir = os.environ.get("PYTHON_JULIACALL_BINDIR") if bindir_names_executable() else None
    if bindir:
        exe = _julia_in(bindir)
        if os.path.isfile(exe):
            return exe
    if importlib.util.find_spec("juliapkg") is not None:
        try:
            from juliapkg.state import STATE  # reading juliapkg's settings downloads nothing
        except Exception:  # noqa: BLE001 - an unusable juliapkg just means "not found here"
            STATE = {}
        install = STATE.get("install")
        if install:
            found = shutil.which(os.path.join(install, "bin", "julia"))
            if found:
                return found
    return shutil.which("julia") or shutil.which("juliaup")


def juliacall_variables_problem() -> str:
    """Why juliacall would refuse its environment variables ("" when it would not).

    juliacall raises "Both PYTHON_JULIACALL_PROJECT and PYTHON_JULIACALL_EXE must be set together"
    when only one of executable and project is given (juliacall/__init__.py). The executable is
    ``PYTHON_JULIACALL_EXE``, or from juliacall 0.9.35 on ``{PYTHON_JULIACALL_BINDIR}/julia``; with
    0.9.34 ``PYTHON_JULIACALL_BINDIR`` is only Julia's ``--home`` and counts for neither side
    (:func:`bindir_names_executable`).
    """
    bindir_counts = bindir_names_executable()
    exe_var = os.environ.get("PYTHON_JULIACALL_EXE")
    bindir = os.environ.get("PYTHON_JULIACALL_BINDIR")
    exe = exe_var or (bindir if bindir_counts else None)
    project = os.environ.get("PYTHON_JULIACALL_PROJECT")
    if bool(exe) == bool(project):
        return ""
    if project:
        given = "PYTHON_JULIACALL_PROJECT"
        missing = "PYTHON_JULIACALL_EXE (or PYTHON_JULIACALL_BINDIR)" if bindir_counts else "PYTHON_JULIACALL_EXE"
    else:
        given = "PYTHON_JULIACALL_EXE" if exe_var else "PYTHON_JULIACALL_BINDIR"
        missing = "PYTHON_JULIACALL_PROJECT"
    problem = (
        f"{given} is set without {missing}; juliacall needs both together (or neither: then "
        "PYTHON_JULIAPKG_EXE selects the Julia executable)"
    )
    if project and bindir and not bindir_counts:
        version = ".".join(str(v) for v in juliacall_version() or ())
        problem += (
            f"; juliacall {version} does not take the executable from PYTHON_JULIACALL_BINDIR (0.9.35 and "
            "later do): set PYTHON_JULIACALL_EXE"
        )
    return problem


def executable_variable_problem() -> str:
    """Why the Julia executable a variable names cannot be used ("" when it can, or none is set).

    ``find_julia_executable`` stops at the first of ``PYTHON_JULIACALL_EXE``/``PYTHON_JULIAPKG_EXE``
    that is set; neither juliacall nor juliapkg falls back to another Julia (or downloads one) when
    it names no executable, so the fix is the variable, not ``julia-setup``.
    """
    for var in _EXE_VARIABLES:
        value = os.environ.get(var)
        if value:
            if shutil.which(value) or os.path.isfile(value):
                break  # the first variable set is the one used
            return f"{var}={value} is not a Julia executable (correct the path, or unset {var})"
    return bindir_variable_problem()


def bindir_variable_problem() -> str:
    """Why juliacall would refuse ``PYTHON_JULIACALL_BINDIR`` ("" when it would not, or it is unset).

    juliacall reads it with ``path_option('home', check_exists=True)`` and raises "path does not
    exist" for a missing directory (every version from 0.9.34 on); from 0.9.35 on, without
    ``PYTHON_JULIACALL_EXE``, it runs ``{bindir}/julia`` (:func:`bindir_names_executable`).
    """
    bindir = os.environ.get("PYTHON_JULIACALL_BINDIR")
    if not bindir:
        return ""
    if not os.path.isdir(bindir):
        return f"PYTHON_JULIACALL_BINDIR={bindir} is not a directory (correct the path, or unset it)"
    exe = _julia_in(bindir)
    if not os.environ.get("PYTHON_JULIACALL_EXE") and bindir_names_executable() and not os.path.isfile(exe):
        return f"PYTHON_JULIACALL_BINDIR={bindir} holds no julia executable (juliacall runs {exe})"
    return ""


def probe() -> Availability:
    """Check whether the Julia backend can start, without starting or downloading anything."""
    forked = forked_child_problem()
    if forked:
        return Availability(True, None, False, forked)  # juliacall ran in the parent
    if julia_started():
        return Availability(True, None, True, "")
    has_juliacall = importlib.util.find_spec("juliacall") is not None
    exe = find_julia_executable()
    mismatch = juliacall_variables_problem() or executable_variable_problem()
    if not has_juliacall:
        reason = "juliacall is not installed"
    else:
        reason = juliacall_version_problem() or mismatch
        if not reason and exe is None:
            reason = "no Julia executable found (juliacall would download one; run `hybrid-node julia-setup`)"
    return Availability(has_juliacall, exe, False, reason)


_MODULE = None  # the loaded Julia module; filled on first use, never at import
_JULIA_THREAD: int | None = None  # threading.get_ident() of the one Python thread that enters Julia


def thread_problem() -> str:
    """Why this Python thread must not enter Julia ("" when it may; see the module docstring).

    Returns:
        "" on the thread Julia runs on, or before any thread has entered it; else the reason.
    """
    if _JULIA_THREAD is None or threading.get_ident() == _JULIA_THREAD:
        return ""
    return (
        f"the Julia backend is called from Python thread {threading.current_thread().name!r}, but Julia runs on "
        "the thread that started it: a garbage collection Julia begins on another thread waits forever for that "
        "one (PythonCall.jl#578), so the solve would hang. Call the solve and .backward() on the thread that first "
        "used the Julia backend (normally the main thread), not from a thread pool, nn.DataParallel replicas or a "
        "background thread; or use backend='torch' there"
    )


def check_thread() -> None:
    """Refuse to enter Julia from a thread other than its own (:func:`thread_problem`).

    Raises:
        BackendError: this is not the thread Julia runs on.
    """
    problem = thread_problem()
    if problem:
        raise BackendError(problem[0].upper() + problem[1:] + ".")


def load_module():
    """Start Julia (once) and return the Julia module ``HybridNODE``.

    Returns:
        The juliacall handle of ``HybridNODE``.

    Raises:
        JuliaNotAvailableError: juliacall or Julia is missing, HybridNODE cannot be loaded, or this
            process is a fork of one running Julia (:func:`forked_child_problem`).
        BackendError: called from another Python thread than the one Julia runs on (:func:`check_thread`).
    """
    global _MODULE, _STARTED_PID, _JULIA_THREAD
    forked = forked_child_problem()
    if forked:  # checked before the cached module: a fork inherits _MODULE with the dead runtime
        raise JuliaNotAvailableError(f"The Julia backend cannot be used here: {forked}.")
    check_thread()
    if _MODULE is not None:
        return _MODULE
    status = probe()
    if not status.ok:
        raise JuliaNotAvailableError(f"The Julia backend is not available: {status.reason}.\n{INSTALL_HELP}")
    try:
        from juliacall import Main as jl  # noqa: PLC0415 - starting Julia is deliberately lazy

        _STARTED_PID = os.getpid()
        # juliacall starts Julia on the thread that first imports it: this one, unless the user had
        # started Julia before (then this, the first thread to use the backend, is the best guess).
        _JULIA_THREAD = threading.get_ident()
        jl.seval("using HybridNODE")
        _MODULE = jl.HybridNODE
    except JuliaNotAvailableError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to start Julia means "not available"
        raise JuliaNotAvailableError(
            f"Julia could not load the HybridNODE package: {type(e).__name__}: {e}\n{INSTALL_HELP}"
        ) from e
    return _MODULE
