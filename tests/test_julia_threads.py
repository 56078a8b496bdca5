"""Julia is entered from its own Python thread only; other threads get a BackendError, not a hang.

A garbage collection Julia begins on a Python thread other than the one Julia was started on waits
forever for that thread, which sits in Python outside any Julia safepoint (PythonCall.jl#578, open:
``threading.Thread(target=jl.GC.gc).start()`` hangs every time). Solves allocate, so a solve from a
thread pool or ``nn.DataParallel`` replicas would hang sooner or later. No Julia is needed here: a
recording stand-in plays the Julia module.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from hybrid_node._errors import BackendError
from hybrid_node.julia import backend as jb
from hybrid_node.julia import runtime as julia_runtime


class RecordingModule:
    """Plays the juliacall handle of HybridNODE: records which Julia functions were entered."""

    def __init__(self):
        self.calls: list[str] = []

    def backward(self, handle, ybar):
        self.calls.append("backward")
        return np.zeros((2, 1)), np.zeros(1)


def _on_thread(action):
    """Run ``action()`` on a new Python thread; return its result or the exception it raised."""
    out: dict = {}

    def run():
        try:
            out["result"] = action()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    worker = threading.Thread(target=run, name="worker")
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    return out.get("error", out.get("result"))


@pytest.fixture
def julia_on_this_thread(monkeypatch):
    """Julia started (and HybridNODE loaded) on the calling thread."""
    module = RecordingModule()
    monkeypatch.setattr(julia_runtime, "_MODULE", module)
    monkeypatch.setattr(julia_runtime, "_JULIA_THREAD", threading.get_ident(), raising=False)
    return module


def test_the_thread_julia_runs_on_may_enter_it(julia_on_this_thread):
    assert julia_runtime.load_module() is julia_on_this_thread
    engine = jb.JuliaEngine(julia_on_this_thread)
    engine.backward(None, np.zeros((2, 1, 2)))
    assert julia_on_this_thread.calls == ["backward"]


def test_another_thread_is_refused_before_entering_julia(julia_on_this_thread):
    # Before, a solve from another thread went into Julia, where the first garbage collection hangs.
    err = _on_thread(julia_runtime.load_module)
    assert isinstance(err, BackendError), err
    assert "PythonCall.jl#578" in str(err) and "'worker'" in str(err) and "backend='torch'" in str(err)


def test_a_backward_pass_on_another_thread_is_refused(julia_on_this_thread):
    # .backward() on another thread than the solve enters Julia through the engine directly.
    engine = jb.JuliaEngine(julia_on_this_thread)
    err = _on_thread(lambda: engine.backward(None, np.zeros((2, 1, 2))))
    assert isinstance(err, BackendError), err
    assert julia_on_this_thread.calls == []


def test_a_solve_from_another_thread_fails_fast_with_the_reason(julia_on_this_thread):
    func = torch.nn.Linear(2, 2).double()
    y0, t = torch.ones(1, 2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    err = _on_thread(lambda: jb.solve(lambda tt, y: func(y), y0, t))
    assert isinstance(err, BackendError) and "thread" in str(err)


def test_before_julia_starts_any_thread_may_be_the_one(monkeypatch):
    monkeypatch.setattr(julia_runtime, "_JULIA_THREAD", None, raising=False)
    assert _on_thread(julia_runtime.thread_problem) == ""
