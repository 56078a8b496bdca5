"""Run torchdiffeq's own test suite against hybrid_node, through a ``torchdiffeq`` shim.

Usage::

    python -m benchmarks.torchdiffeq_suite --tests /path/to/torchdiffeq/tests
    python -m benchmarks.torchdiffeq_suite --tests DIR --failures failures.md --json results.json
    python -m benchmarks.torchdiffeq_suite --tests DIR --reference    # the installed torchdiffeq, no shim

Nothing is fetched: ``--tests`` is a local copy of the ``tests/`` folder of the torchdiffeq repository
(``api_tests.py``, ``odeint_tests.py``, ..., ``problems.py``). None of it is part of this repository.

What it does, in a temporary directory:

* writes a package named ``torchdiffeq`` whose ``__init__`` re-exports torchdiffeq's public API
  (``odeint``, ``odeint_adjoint``, ``odeint_event``, ``odeint_dense``) from hybrid_node. The test files
  are scanned for every ``torchdiffeq`` name they use; a name beyond that public API (torchdiffeq's
  ``_impl`` internals) is not shimmed and is listed as not applicable;
* copies the test files, and runs pytest on the ``*_tests.py`` files (torchdiffeq's own ``run_all.py``
  collects the same set) in a subprocess whose ``sys.path`` starts with the shim (so an installed
  torchdiffeq is shadowed) and then this repository's root (so the working tree's hybrid_node is tested);
* records every pytest report through a small plugin (``-p``), including the reports of
  ``unittest.TestCase.subTest`` blocks, which pytest >= 9 makes itself (older pytest needs the
  ``pytest-subtests`` plugin for them; without either, a test function stops at its first failing subtest
  and subtests are not counted). The plugin also checks that ``torchdiffeq`` and ``hybrid_node`` were
  imported from where they should be, and enforces ``--timeout``: a subtest (or test function) that makes
  no progress for that many seconds is interrupted with an exception (SIGALRM) and counted as failed, and
  the run goes on with the next one.

It prints a table of test functions (passed / failed / errored / skipped) and subtests (passed / failed /
skipped), then one line per test function. A test function counts as failed when its body or any of its
subtests failed (pytest's own summary line counts a function whose subtests failed as passed, and each
failed subtest as a failure). ``--failures FILE`` writes every failure grouped by its first error line,
with the digits of that line masked so that "0.31 not less than 0.001" and "0.29 not less than 0.001" land
in one group; ``--json FILE`` writes everything in machine-readable form.

Exit status: 0 when the suite ran (whatever its failures), 2 when the harness could not run it (no test
files, nothing collected, the shim not in use, pytest crashed).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# torchdiffeq's public API (torchdiffeq/__init__.py): what a user imports, and what the shim provides.
PUBLIC_API = ("odeint", "odeint_adjoint", "odeint_event", "odeint_dense")

# What torch's own autograd nodes have: a test reading these from grad_fn is not reaching into torchdiffeq.
# ``adjoint_options``: hybrid_node's adjoint node holds the backward norm there as torchdiffeq's does.
_TORCH_GRAD_FN_ATTRIBUTES = {
    "next_functions",
    "name",
    "metadata",
    "register_hook",
    "register_prehook",
    "adjoint_options",
}

_SHIM = '''\
"""torchdiffeq's public API served by hybrid_node (written by benchmarks.torchdiffeq_suite; not torchdiffeq)."""

from hybrid_node import {names}

__version__ = "hybrid_node-shim"
HYBRID_NODE_SHIM = True
'''

# The pytest plugin, loaded in the subprocess with ``-p _torchdiffeq_suite_plugin``. It appends one JSON
# line per report to $TORCHDIFFEQ_SUITE_RECORD, so that a run killed half-way still leaves what it did.
_PLUGIN = r"""
import json
import os
import signal

import pytest

_RECORD = os.environ["TORCHDIFFEQ_SUITE_RECORD"]
_TIMEOUT = float(os.environ.get("TORCHDIFFEQ_SUITE_TIMEOUT", "0"))


def _write(entry):
    with open(_RECORD, "a") as f:
        f.write(json.dumps(entry) + "\n")


class SuiteTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise SuiteTimeout(f"no progress for {_TIMEOUT:g} s (torchdiffeq_suite --timeout)")


def _arm():
    if _TIMEOUT > 0:
        signal.setitimer(signal.ITIMER_REAL, _TIMEOUT)


def _disarm():
    if _TIMEOUT > 0:
        signal.setitimer(signal.ITIMER_REAL, 0)


def pytest_sessionstart(session):
    entry = {"kind": "session", "pytest": pytest.__version__}
    for name in ("torchdiffeq", "hybrid_node", "torch"):
        try:
            module = __import__(name)
            entry[name] = {"file": getattr(module, "__file__", None), "version": getattr(module, "__version__", None),
                           "shim": bool(getattr(module, "HYBRID_NODE_SHIM", False))}
        except Exception as e:  # recorded, the harness decides
            entry[name] = {"error": f"{type(e).__name__}: {e}"}
    threads = os.environ.get("TORCHDIFFEQ_SUITE_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    _write(entry)
    if _TIMEOUT > 0:
        signal.signal(signal.SIGALRM, _on_alarm)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    _arm()
    try:
        return (yield)
    finally:
        _disarm()


def _crash(report):
    longrepr = report.longrepr
    message, where = None, None
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        message = crash.message
        where = f"{crash.path}:{crash.lineno}"
    elif isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, lineno, reason)
        message = str(longrepr[2])
        where = f"{longrepr[0]}:{longrepr[1]}"
    elif longrepr is not None:
        text = str(longrepr)
        lines = [line[2:] for line in text.splitlines() if line.startswith("E ")]
        message = "\n".join(lines) if lines else text.strip().splitlines()[-1] if text.strip() else ""
    return message, where


def pytest_runtest_logreport(report):
    context = getattr(report, "context", None)
    if context is not None and report.when == "call":
        _arm()  # a finished subtest is progress: the next one gets the full --timeout
    entry = {"kind": "subtest" if context is not None else "test", "nodeid": report.nodeid, "when": report.when,
             "outcome": report.outcome, "duration": report.duration}
    if context is not None:
        entry["msg"] = context.msg
        entry["params"] = {str(k): str(v) for k, v in dict(context.kwargs).items()}
    if report.outcome != "passed":
        entry["message"], entry["where"] = _crash(report)
        entry["longrepr"] = (report.longreprtext or "")[-4000:]
    _write(entry)


def pytest_collectreport(report):
    if report.outcome != "passed":
        message, where = _crash(report)
        _write({"kind": "collect", "nodeid": report.nodeid, "outcome": report.outcome, "message": message,
                "where": where, "longrepr": (report.longreprtext or "")[-4000:]})
"""

_PYTEST_INI = """\
[pytest]
python_files = *_tests.py
python_classes = Test*
python_functions = test*
addopts =
"""


def scan_from_imports(text, package):
    """The names ``from <package>[.sub] import ...`` statements of ``text`` import, each prefixed by its
    submodule path (``"odeint"``, ``"_impl.misc._rms_norm"``); an ``as`` alias is left out.

    The list is one line, a parenthesised list over several lines (comments inside it allowed) or
    lines joined by backslashes; it ends there. A pattern whose list took any run of whitespace read
    on past the end of the line, into the words of the lines below (``import``, ``torch``, ``def``).

    Args:
        text: a Python source file.
        package: the package's name (``"torchdiffeq"``, ``"torchsde"``).

    Returns:
        The names, in order of appearance (repeats kept).
    """
    names = []
    pattern = rf"^[ \t]*from[ \t]+{re.escape(package)}(\.[\w.]+)?[ \t]+import[ \t]+(\([^)]*\)|(?:[^\n#;\\]|\\\n)*)"
    for match in re.finditer(pattern, text, re.M):
        prefix = match.group(1)[1:] + "." if match.group(1) else ""
        body = re.sub(r"#[^\n]*", "", match.group(2)).strip("()").replace("\\\n", " ")
        for item in body.split(","):
            words = item.split()  # "name" or "name as alias"
            if words:
                names.append(prefix + words[0])
    return names


def scan_torchdiffeq_names(test_files):
    """Every ``torchdiffeq`` attribute or submodule the test files use: {name: [file, ...]}.

    Also the attributes they read from a solution's ``grad_fn`` (torchdiffeq's autograd Function), keyed
    ``<result>.grad_fn.NAME``: implementation details a drop-in need not have.
    """
    used = collections.defaultdict(set)
    for path in test_files:
        text = path.read_text()
        for match in re.finditer(r"\btorchdiffeq((?:\.\w+)+)", text):
            used[match.group(1)[1:]].add(path.name)
        for name in scan_from_imports(text, "torchdiffeq"):
            used[name].add(path.name)
        # torchdiffeq's autograd internals reached through a result's grad_fn (e.g. grad_fn.adjoint_options)
        for match in re.finditer(r"\.grad_fn\.(\w+)", text):
            if match.group(1) not in _TORCH_GRAD_FN_ATTRIBUTES:
                used["<result>.grad_fn." + match.group(1)].add(path.name)
    return {name: sorted(files) for name, files in sorted(used.items())}


def _shim_names():
    """The public API names hybrid_node provides (imported in a subprocess: this process stays torch-free)."""
    code = f"import hybrid_node, json; print(json.dumps([n for n in {PUBLIC_API!r} if hasattr(hybrid_node, n)]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _first_line(message):
    return (message or "").strip().splitlines()[0] if (message or "").strip() else "(no message)"


def _mask(line):
    """Numbers as #, and a list of numbers as [#, ...] (names such as float64 keep their digits)."""
    line = re.sub(r"(?<![\w.])[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", "#", line)
    return re.sub(r"\[#(?:, #)*\]", "[#, ...]", line)


def _label(entry):
    if entry.get("params") is not None or entry.get("msg"):
        params = ", ".join(f"{k}={v}" for k, v in (entry.get("params") or {}).items())
        msg = f"[{entry['msg']}] " if entry.get("msg") else ""
        return f"{entry['nodeid']} ({msg}{params})"
    return entry["nodeid"] + ("" if entry.get("when", "call") == "call" else f" [{entry['when']}]")


def summarise(entries):
    """Fold the plugin's report lines into per-function results, counts and the list of failures."""
    session = next((e for e in entries if e["kind"] == "session"), None)
    functions = collections.OrderedDict()
    failures, collect_errors = [], []
    for e in entries:
        if e["kind"] == "collect":
            collect_errors.append(e)
            failures.append({**e, "kind": "collect error"})
            continue
        if e["kind"] not in ("test", "subtest"):
            continue
        f = functions.setdefault(e["nodeid"], {"phases": {}, "subtests": collections.Counter(), "duration": 0.0})
        f["duration"] += e.get("duration") or 0.0
        if e["kind"] == "subtest":
            f["subtests"][e["outcome"]] += 1
            if e["outcome"] == "failed":
                failures.append({**e, "kind": "subtest"})
        else:
            f["phases"][e["when"]] = e["outcome"]
            if e["outcome"] == "failed":
                failures.append({**e, "kind": "test" if e["when"] == "call" else "error"})
    for f in functions.values():
        phases = f["phases"]
        if "failed" in (phases.get("setup"), phases.get("teardown")):
            f["outcome"] = "errored"
        elif "skipped" in (phases.get("setup"), phases.get("call")):
            f["outcome"] = "skipped"
        elif "call" not in phases:
            f["outcome"] = "incomplete"  # the run was cut short inside this function
        elif phases["call"] == "failed" or f["subtests"]["failed"]:
            f["outcome"] = "failed"
        else:
            f["outcome"] = "passed"
    counts = {
        "functions": collections.Counter(f["outcome"] for f in functions.values()),
        "subtests": sum((f["subtests"] for f in functions.values()), collections.Counter()),
        "collect_errors": len(collect_errors),
    }
    return {"session": session, "functions": functions, "counts": counts, "failures": failures}


def group_failures(failures):
    """Failures grouped by their first error line (digits masked), largest group first."""
    groups = collections.defaultdict(list)
    for f in failures:
        groups[_mask(_first_line(f.get("message")))].append(f)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def format_table(result, title):
    c = result["counts"]
    fn, st = c["functions"], c["subtests"]
    rows = [
        ("", "passed", "failed", "errored", "skipped", "incomplete", "total"),
        (
            "test functions",
            fn["passed"],
            fn["failed"],
            fn["errored"],
            fn["skipped"],
            fn["incomplete"],
            sum(fn.values()),
        ),
        ("subtests", st["passed"], st["failed"], "", st["skipped"], "", sum(st.values())),
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = [title, ""]
    lines += [
        "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows
    ]
    if c["collect_errors"]:
        lines.append(f"collection errors: {c['collect_errors']} (see --failures)")
    lines.append("")
    name_w = max((len(n) for n in result["functions"]), default=10)
    lines.append(f"{'test function'.ljust(name_w)}  {'outcome':>10}  {'subtests ok/failed':>18}  {'time':>7}")
    for nodeid, f in result["functions"].items():
        st = f["subtests"]
        sub = f"{st['passed']}/{st['failed']}" if sum(st.values()) else "-"
        lines.append(f"{nodeid.ljust(name_w)}  {f['outcome']:>10}  {sub:>18}  {f['duration']:6.1f}s")
    return "\n".join(lines)


def format_failures(result, title, examples=3):
    groups = group_failures(result["failures"])
    lines = [
        f"# {title}",
        "",
        f"{len(result['failures'])} failures in {len(groups)} groups (first error line, digits masked as #).",
        "",
    ]
    for key, members in groups:
        lines.append(f"## {len(members)} x {key}")
        lines.append("")
        raw = list(dict.fromkeys(_first_line(m.get("message")) for m in members))
        if raw != [key]:
            for line in raw[:examples]:
                lines.append(f"    e.g. {line}")
            lines.append("")
        per_function = collections.Counter(m["nodeid"] for m in members)
        for nodeid, n in per_function.items():
            lines.append(f"- {nodeid}: {n}")
        lines.append("")
        for m in members:
            where = f"  @ {m['where']}" if m.get("where") else ""
            lines.append(f"  - {m['kind']}: {_label(m)}{where}")
        lines.append("")
        first = next((m for m in members if m.get("longrepr")), None)
        if first is not None:
            lines.append("  first traceback (tail):")
            lines.append("")
            lines.append(textwrap.indent(first["longrepr"][-1500:], "      "))
            lines.append("")
    return "\n".join(lines)


def pytest_env(path, prefix, record, timeout, threads):
    """The environment of a suite's pytest process: ``path`` first on PYTHONPATH, the plugin's settings.

    Args:
        path: folders to put first on PYTHONPATH (the plugin's, the shim's, this repository).
        prefix: the plugin's environment prefix (``TORCHDIFFEQ_SUITE``, ``TORCHSDE_SUITE``).
        record: the JSON-lines file the plugin writes its reports to.
        timeout: seconds a subtest may run without progress (0 or None: no limit).
        threads: torch threads in the process (None: torch's default).

    Returns:
        The environment, without the caller's PYTEST_ADDOPTS and PYTEST_PLUGINS (they would change the run).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(path + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env[f"{prefix}_RECORD"] = str(record)
    env[f"{prefix}_TIMEOUT"] = str(timeout or 0)
    if threads:
        env[f"{prefix}_THREADS"] = str(threads)
        env.setdefault("OMP_NUM_THREADS", str(threads))
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    return env


def run_recorded(cmd, *, cwd, env, record, strip, log=None, log_prefix="suite_", echo=False, total_timeout=None):
    """Run a suite's pytest command and read back what its plugin recorded.

    Args:
        cmd: the command; cwd, env: where and with what it runs.
        record: the plugin's JSON-lines file.
        strip: folder prefixes cut from the recorded locations, so that runs compare.
        log: the file for pytest's output (None: a new temporary file, which outlives the work folder).
        log_prefix: the temporary log file's name prefix.
        echo: also print pytest's output as it comes.
        total_timeout: seconds after which the whole process group is killed (None: no limit).

    Returns:
        ``(entries, run)``: the recorded reports, and ``log``, ``returncode``,
        ``killed_after_total_timeout`` and ``wall_s`` of the run.
    """
    if log is None:
        fd, log = tempfile.mkstemp(prefix=log_prefix, suffix=".log")
        os.close(fd)
    log = Path(log)
    start = time.monotonic()
    killed = False
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE if echo else out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            if echo:
                for line in proc.stdout:
                    out.write(line)
                    sys.stdout.write(line)
            proc.wait(timeout=total_timeout)
        except subprocess.TimeoutExpired:
            killed = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    entries = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    for e in entries:
        if e.get("where"):
            for folder in strip:
                e["where"] = e["where"].replace(f"{folder}{os.sep}", "")
    run = {
        "log": str(log),
        "returncode": proc.returncode,
        "killed_after_total_timeout": killed,
        "wall_s": time.monotonic() - start,
    }
    return entries, run


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a suite harness runs: the keyword arguments of its ``run_suite``.

    Attributes:
        reference: run against the installed peer package (no shim).
        timeout: seconds a test (or subtest) may make no progress before it is interrupted (0: never).
        total_timeout: seconds after which the whole pytest process group is killed (None: never).
        threads: torch threads in the pytest process (None: torch's default).
        keyword: a pytest ``-k`` expression, to run a part of the suite.
        workdir: the work folder (None: a new temporary one, removed after a run that counts).
        log: the file for pytest's output (None: a new temporary file, kept).
        echo: also print pytest's output as it comes.
    """

    reference: bool = False
    timeout: float = 300.0
    total_timeout: float | None = None
    threads: int | None = 1
    keyword: str | None = None
    workdir: str | Path | None = None
    log: str | Path | None = None
    echo: bool = False


@dataclasses.dataclass(frozen=True)
class SuiteRun:
    """One run of a peer's test suite: its work folder and options (made by :func:`start_run`).

    Attributes:
        peer: the package whose tests run (``torchdiffeq``, ``torchsde``); the plugin module is
            ``_<peer>_suite_plugin``, its environment prefix ``<PEER>_SUITE``.
        tests: the peer's tests folder (resolved).
        tmp: the work folder; copied: the tests' copy in it (``tmp / "tests"``); plugin_dir: the plugin's folder.
        options: how it runs.
    """

    peer: str
    tests: Path
    tmp: Path
    copied: Path
    plugin_dir: Path
    options: RunOptions


def start_run(peer, tests, pattern, plugin, options):
    """Check that ``tests`` has test files and lay out the work folder: a copy of the tests (stray conftest
    files removed) and the plugin.

    Args:
        peer: the package whose tests run (``torchdiffeq``, ``torchsde``).
        tests: the peer's tests folder.
        pattern: the glob of its test files (``*_tests.py``, ``test_*.py``).
        plugin: the plugin's source.
        options: the ``run_suite`` keyword arguments (see :class:`RunOptions`).

    Returns:
        The :class:`SuiteRun`.

    Raises:
        FileNotFoundError: no file in ``tests`` matches ``pattern``.
        TypeError: an unknown option.
    """
    options = RunOptions(**options)
    tests = Path(tests).resolve()
    if not any(tests.glob(pattern)):
        raise FileNotFoundError(f"no {pattern} files in {tests} (expected {peer}'s tests/ folder)")
    tmp = Path(options.workdir) if options.workdir else Path(tempfile.mkdtemp(prefix=f"{peer}_suite_"))
    tmp.mkdir(parents=True, exist_ok=True)
    copied = tmp / "tests"
    if copied.exists():
        shutil.rmtree(copied)
    shutil.copytree(tests, copied, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
    for conftest in copied.rglob("conftest.py"):  # not expected, but a stray one must not change the run
        conftest.unlink()
    plugin_dir = tmp / "plugin"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / f"_{peer}_suite_plugin.py").write_text(plugin)
    return SuiteRun(peer, tests, tmp, copied, plugin_dir, options)


def pytest_command(run, target, *, ini, rootdir, options=(), after=()):
    """The pytest command of a suite run: quiet, short tracebacks, no cache, the harness's plugin loaded.

    Args:
        run: the :class:`SuiteRun` (its plugin; the JUnit report goes to its work folder; its ``-k``).
        target: what pytest collects (a folder, relative to the run's folder or absolute).
        ini: the pytest.ini the run reads; rootdir: pytest's root folder.
        options: further pytest options, before ``--junitxml``; after: further ones after it, before ``-k``.

    Returns:
        The command (a list of arguments).
    """
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        target,
        "-c",
        str(ini),
        "--rootdir",
        str(rootdir),
        "-p",
        "no:cacheprovider",
        "-p",
        f"_{run.peer}_suite_plugin",
        "-q",
        "--tb=short",
        "-rN",
        *options,
        "--junitxml",
        str(run.tmp / "junit.xml"),
        *after,
    ]
    return cmd + (["-k", run.options.keyword] if run.options.keyword else [])


def run_and_summarise(run, cmd, *, cwd, path, strip, extra):
    """Run a suite's pytest command with the plugin's environment and fold what it recorded.

    Args:
        run: the :class:`SuiteRun` (the record goes to its work folder).
        cmd: the command (:func:`pytest_command`); cwd: where it runs.
        path: folders first on PYTHONPATH (see :func:`pytest_env`).
        strip: the tests' copy, cut (with this repository's root) from the recorded locations.
        extra: the harness's own entries of ``info`` (the shim's names, the names the tests use).

    Returns:
        ``(result, info)``: :func:`summarise` of the reports, and what the run was (the command, the log,
        the exit status, ``extra``).
    """
    o = run.options
    record = run.tmp / "record.jsonl"
    record.unlink(missing_ok=True)
    env = pytest_env(path, f"{run.peer.upper()}_SUITE", record, o.timeout, o.threads)
    entries, ran = run_recorded(
        cmd,
        cwd=cwd,
        env=env,
        record=record,
        strip=(strip, REPO_ROOT),  # locations relative to the tests' copy / this repository
        log=o.log,
        log_prefix=f"{run.peer}_suite_",
        echo=o.echo,
        total_timeout=o.total_timeout,
    )
    info = {
        "tests": str(run.tests),
        "workdir": str(run.tmp),
        "command": cmd,
        **ran,
        "reference": o.reference,
        **extra,
        "timeout_s": o.timeout,
        "threads": o.threads,
    }
    return summarise(entries), info


def run_suite(tests, **options):
    """Run the suite; returns ``(result, info)`` where ``info`` has the shim, the names and the log path.

    Args:
        tests: torchdiffeq's tests folder.
        options: see :class:`RunOptions`.
    """
    run = start_run("torchdiffeq", tests, "*_tests.py", _PLUGIN, options)
    copied = run.copied
    (copied / "pytest.ini").write_text(_PYTEST_INI)

    used = scan_torchdiffeq_names(sorted(run.tests.glob("*_tests.py")))
    path = [str(run.plugin_dir)]
    shim_names = []
    if not run.options.reference:
        shim_names = _shim_names()
        shim = run.tmp / "shim" / "torchdiffeq"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "__init__.py").write_text(_SHIM.format(names=", ".join(shim_names)))
        path += [str(shim.parent), str(REPO_ROOT)]
    not_applicable = {name: files for name, files in used.items() if name.split(".")[0] not in PUBLIC_API}
    missing = [name for name in PUBLIC_API if name not in shim_names] if not run.options.reference else []

    cmd = pytest_command(run, str(copied), ini=copied / "pytest.ini", rootdir=copied)
    extra = {
        "shim_names": shim_names,
        "missing_public_api": missing,
        "torchdiffeq_names_used": used,
        "not_applicable": not_applicable,
    }
    return run_and_summarise(run, cmd, cwd=copied, path=path, strip=copied, extra=extra)


def check(result, info, peer="torchdiffeq", collect_errors_count=False):
    """Reasons the run does not count (an empty list when it does).

    Args:
        result, info: what :func:`run_suite` returned.
        peer: the package the tests import (``torchdiffeq``, ``torchsde``).
        collect_errors_count: a run whose only results are files that failed to import still counts
            (the torchsde harness reports such files rather than stopping).
    """
    problems = []
    session = result["session"]
    if session is None:
        problems.append(f"pytest did not start (exit {info['returncode']}; see {info['log']})")
        return problems
    imported = session.get(peer, {})
    if "error" in imported:
        problems.append(f"import {peer} failed in the subprocess: {imported['error']}")
    elif imported.get("shim") == info["reference"]:
        problems.append(
            f"{peer} came from {imported.get('file')}, not from {'the install' if info['reference'] else 'the shim'}"
        )
    if not info["reference"]:
        hn = session.get("hybrid_node", {})
        expected = str(REPO_ROOT / "hybrid_node")
        if not str(hn.get("file", "")).startswith(expected):
            problems.append(f"hybrid_node came from {hn.get('file') or hn.get('error')}, not from {expected}")
    if not result["functions"] and not (collect_errors_count and result["counts"]["collect_errors"]):
        problems.append(f"no test function ran (exit {info['returncode']}; see {info['log']})")
    if info["returncode"] not in (0, 1) and not info["killed_after_total_timeout"]:
        problems.append(f"pytest exited with {info['returncode']} (see {info['log']})")
    return problems


def title_of(result, info, peer="torchdiffeq"):
    """The report's title line: whose tests ran against what, and for how long."""
    session = result["session"] or {}
    if info["reference"]:
        what = f"the installed {peer} {session.get(peer, {}).get('version')}"
    else:
        what = f"hybrid_node {session.get('hybrid_node', {}).get('version')} through the {peer} shim"
    return f"{peer}'s tests ({info['tests']}) against {what}: {info['wall_s']:.0f} s"


def finish(args, result, info, title, problems):
    """The end of a harness run: the log's path, the ``--failures`` and ``--json`` files, the harness
    problems on stderr, and the work folder removed after a run that counts (unless ``--workdir``).

    Returns:
        The exit status: 2 when the run does not count, else 0.
    """
    if info["killed_after_total_timeout"]:
        print(f"the run was killed after --total-timeout {args.total_timeout:g} s: counts are partial")
    print(f"pytest log: {info['log']}")
    if args.failures:
        Path(args.failures).write_text(format_failures(result, title) + "\n")
        print(f"failures: {args.failures}")
    if args.json:
        data = {
            "info": info,
            "counts": result["counts"],
            "session": result["session"],
            "functions": result["functions"],
            "failures": result["failures"],
        }
        Path(args.json).write_text(json.dumps(data, indent=1, default=dict) + "\n")
        print(f"json: {args.json}")
    for p in problems:
        print(f"HARNESS PROBLEM: {p}", file=sys.stderr)
    if not args.workdir and not problems:
        shutil.rmtree(info["workdir"], ignore_errors=True)
    return 2 if problems else 0


def add_run_arguments(parser, peer, timeout_help):
    """The command-line options a suite harness has: where the tests are, what to write, how to run them.

    Args:
        parser: the harness's parser.
        peer: the package whose tests run (``torchdiffeq``, ``torchsde``), for the help texts.
        timeout_help: what ``--timeout`` limits (the defaults are appended).
    """
    parser.add_argument("--tests", help=f"a local copy of {peer}'s tests/ folder")
    parser.add_argument("--failures", help="write the failures, grouped by first error line, to this file")
    parser.add_argument("--json", help="write counts, per-function results and failures to this JSON file")
    parser.add_argument("--reference", action="store_true", help=f"run against the installed {peer} (no shim)")
    parser.add_argument("--timeout", type=float, default=300.0, help=f"{timeout_help} (0: never; default 300)")
    parser.add_argument("--total-timeout", type=float, default=None, help="kill the whole run after this many s")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the pytest process (default 1)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression, to run a part of the suite")
    parser.add_argument("--workdir", help="use this directory instead of a fresh temporary one (kept afterwards)")
    parser.add_argument("--log", help="write pytest's output to this file (default: a temporary file, kept)")
    parser.add_argument("--echo", action="store_true", help="also show pytest's output while it runs")


def run_options(args):
    """The keyword arguments of a harness's ``run_suite`` (:class:`RunOptions`) from the options of
    :func:`add_run_arguments`."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(RunOptions)}


def run_and_print_table(args, peer, run, title):
    """A harness's run from its command line: the suite run with the options of :func:`add_run_arguments`,
    and its table printed.

    Args:
        args: the parsed options.
        peer: the package whose tests run (names the harness in the error message).
        run: the harness's ``run_suite``; title: its ``title_of``.

    Returns:
        ``(result, info, title)``, or None when the tests folder has no test files (said on stderr).
    """
    try:
        result, info = run(args.tests, **run_options(args))
    except FileNotFoundError as e:  # no test files: the harness could not run the suite (exit status 2)
        print(f"{peer}_suite: {e}", file=sys.stderr)
        return None
    heading = title(result, info)
    print(format_table(result, heading))
    print()
    return result, info, heading


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, "torchdiffeq", "seconds without progress before a subtest/test is interrupted")
    parser.add_argument("--summarise", metavar="JSON", help="no run: print and --failures a --json file written before")
    args = parser.parse_args(argv)

    if args.summarise:
        data = json.loads(Path(args.summarise).read_text())
        result = {k: data[k] for k in ("session", "functions", "failures")}
        result["counts"] = {k: collections.Counter(v) if isinstance(v, dict) else v for k, v in data["counts"].items()}
        for f in result["functions"].values():
            f["subtests"] = collections.Counter(f["subtests"])
        title = title_of(result, data["info"])
        print(format_table(result, title))
        if args.failures:
            Path(args.failures).write_text(format_failures(result, title) + "\n")
            print(f"failures: {args.failures}")
        return 0

    if args.tests is None:
        parser.error("--tests DIR is needed (a local copy of torchdiffeq's tests/ folder), or --summarise JSON")
    ran = run_and_print_table(args, "torchdiffeq", run_suite, title_of)
    if ran is None:
        return 2
    result, info, title = ran
    if info["not_applicable"]:
        print("torchdiffeq names the tests use beyond its public API (not shimmed; failures there are not applicable):")
        for name, files in info["not_applicable"].items():
            shown = name if name.startswith("<") else f"torchdiffeq.{name}"
            print(f"  {shown}  ({', '.join(files)})")
    else:
        used = ", ".join(f"torchdiffeq.{n}" for n in info["torchdiffeq_names_used"])
        print(f"torchdiffeq names the tests use: {used or 'none'} (all public API)")
    if info["missing_public_api"]:
        print(f"public API hybrid_node lacks (not in the shim): {', '.join(info['missing_public_api'])}")
    return finish(args, result, info, title, check(result, info))


if __name__ == "__main__":
    sys.exit(main())
