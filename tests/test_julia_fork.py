"""A process forked from one running Julia refuses the Julia backend instead of hanging in it.

Julia's runtime does not survive ``fork()`` (JuliaLang/julia#8295, won't fix; PythonCall.jl#455):
the child keeps a copy of the runtime without its threads. A ``DataLoader`` worker or a
``multiprocessing`` pool with Linux's default ``fork`` start method is such a child. These tests
fork for real (POSIX only) with a stand-in for a started juliacall; no Julia is needed.
"""

from __future__ import annotations

import os
import sys
import types

import pytest

from hybrid_node._errors import JuliaNotAvailableError
from hybrid_node.julia import runtime as julia_runtime

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


def _in_child(action) -> str:
    """Run ``action()`` in a forked child and return what it reports (a short string)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, without pytest's teardown
        try:
            os.close(read)
            try:
                message = action()
            except BaseException as e:  # noqa: BLE001 - everything is reported to the parent
                message = f"{type(e).__name__}: {e}"
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def _load() -> str:
    module = julia_runtime.load_module()
    return f"loaded {module!r}"


def _probe() -> str:
    return julia_runtime.probe().reason


@pytest.fixture
def julia_running(monkeypatch):
    """This process as one in which Julia has started: juliacall inited and HybridNODE loaded."""
    fake = types.SimpleNamespace(CONFIG={"inited": True})
    monkeypatch.setitem(sys.modules, "juliacall", fake)
    monkeypatch.setattr(julia_runtime, "_MODULE", "HybridNODE-module")
    monkeypatch.setattr(julia_runtime, "_STARTED_PID", os.getpid(), raising=False)
    monkeypatch.setattr(julia_runtime, "_FORKED_FROM_JULIA", False, raising=False)


def test_the_parent_keeps_using_its_julia(julia_running):
    assert julia_runtime.load_module() == "HybridNODE-module"
    assert julia_runtime.probe().ok


def test_a_forked_child_refuses_the_julia_it_inherited(julia_running):
    # Before, the child got the parent's cached module back and the solve went into a runtime without threads.
    report = _in_child(_load)
    assert report.startswith("JuliaNotAvailableError"), report
    assert "fork" in report and "num_workers=0" in report and "spawn" in report


def test_doctor_probe_in_a_forked_child_says_why(julia_running):
    reason = _in_child(_probe)
    assert "forked from one in which Julia is running" in reason


def test_a_fork_before_this_module_saw_julia_start_is_caught_by_the_process_id(monkeypatch):
    # Julia started by the user (juliacall imported directly), the fork hook found nothing to flag because the
    # module was loaded after the fork: the process id still tells.
    monkeypatch.setattr(julia_runtime, "_MODULE", "HybridNODE-module")
    monkeypatch.setattr(julia_runtime, "_STARTED_PID", os.getpid() + 1)  # "another process started it"
    monkeypatch.setattr(julia_runtime, "_FORKED_FROM_JULIA", False, raising=False)
    with pytest.raises(JuliaNotAvailableError, match="fork"):
        julia_runtime.load_module()


def test_a_fork_without_julia_running_is_not_refused(monkeypatch):
    # Forking is fine as long as Julia has not started in the parent: the child may start its own.
    monkeypatch.delitem(sys.modules, "juliacall", raising=False)
    monkeypatch.setattr(julia_runtime, "_MODULE", None)
    monkeypatch.setattr(julia_runtime, "_STARTED_PID", None, raising=False)
    monkeypatch.setattr(julia_runtime, "_FORKED_FROM_JULIA", False, raising=False)
    reason = _in_child(_probe)
    assert "fork" not in reason
    assert julia_runtime.forked_child_problem() == ""
