"""``options={"compile": True}`` (the "worker" compiler) and ``"background"``: graphs compiled by a worker
process while the first solves run them uncompiled.

Until the worker answers, a deferred graph runs its traced ATen graph eagerly; after, the compiled
graph. Both must give the eager solver's results up to rounding: float64 fields, where the compiled
kernels and the eager operations differ by a few ulps per operation over the same steps (the
whole-solve tests measure ~1e-14), so 1e-10 relative leaves room for accumulation. The worker's
failure and the process's exit are tested with real processes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from conftest import CountingMLP

import hybrid_node as hn
from hybrid_node._registry import build_solver
from hybrid_node.loop import background

TOL = {"rtol": 1e-10, "atol": 1e-12}
WAIT_S = 600  # a generous bound on one worker compilation on a loaded 2-core machine (measured 10-20 s)


@pytest.fixture(autouse=True)
def fresh_cache_and_worker(monkeypatch):
    """A new on-disk cache (the graphs saved by an earlier test or run would load at once, and nothing
    would be deferred) and a worker of this test's own, which compiles into that cache."""
    from torch._inductor.utils import fresh_cache

    workers: list = []
    monkeypatch.setattr(background, "_WORKERS", workers)
    with fresh_cache():
        yield
    for worker in workers:
        worker.kill()


def _field():
    torch.manual_seed(0)
    return CountingMLP()


def _solve(func, y0, t, compile_mode, adjoint=False):
    options = {} if compile_mode is None else {"compile": compile_mode}
    odeint = hn.odeint_adjoint if adjoint else hn.odeint
    return odeint(func, y0, t, rtol=1e-7, atol=1e-9, options=options)


@contextlib.contextmanager
def _cpp_builds():
    """The C++ compiler's command lines run in this process meanwhile."""
    from torch._inductor import cpp_builder

    commands: list[str] = []
    run = cpp_builder._run_compile_cmd

    def recorded(command, cwd):
        commands.append(command)
        return run(command, cwd)

    cpp_builder._run_compile_cmd = recorded
    try:
        yield commands
    finally:
        cpp_builder._run_compile_cmd = run


def _deferred_since(before: set) -> list:
    return [g for g in background.GRAPHS if g not in before]


def test_the_compiler_is_an_option_of_the_compiled_solvers(monkeypatch):
    monkeypatch.delenv("HYBRID_NODE_COMPILER", raising=False)
    plain, _, _ = build_solver("dopri5", {"compile": True}, 1e-6, 1e-8)
    assert plain.compile and plain.compiler is None and plain.compiled_in == "worker"  # the default
    for name in ("background", "in_process", "worker"):
        solver, _, _ = build_solver("dopri5", {"compile": name}, 1e-6, 1e-8)
        assert solver.compile and solver.compiled_in == name
        assert solver == plain  # the graphs cached per method are shared: it only says how they are made
    monkeypatch.setenv("HYBRID_NODE_COMPILER", "background")
    assert plain.compiled_in == "background"
    monkeypatch.setenv("HYBRID_NODE_COMPILER", "later")
    with pytest.raises(
        ValueError, match=r"HYBRID_NODE_COMPILER='later': expected one of worker, background, in_process"
    ):
        plain.compiled_in  # noqa: B018 - read for its error
    with pytest.raises(ValueError, match=r"compiler='background' .* needs compile=True"):
        hn.Dopri5(compiler="background")
    with pytest.raises(ValueError, match=r"compiler='gpu'; expected one of"):
        hn.Dopri5().compiled(compiler="gpu")
    with pytest.raises(ValueError, match="explicit Runge-Kutta methods only"):
        hn.odeint(
            lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method="bdf", options={"compile": "background"}
        )


@pytest.mark.parametrize("wait", [True, False], ids=["worker", "background"])
def test_when_a_graph_takes_the_answer(wait):
    """ "worker": only in a later solve than its first, however early the answer came; "background": at
    the first call after the answer. A failed answer is taken the same way: with one warning."""
    answer: concurrent.futures.Future = concurrent.futures.Future()
    answer.set_exception(RuntimeError("the compile worker has exited"))  # x + 1, answered already
    graph = background.TieredGraph(
        torch.fx.symbolic_trace(lambda x: x + 1), answer, [torch.zeros(1)], {}, {}, wait=wait
    )
    if wait:
        for _ in range(2):  # the solve that made it: uncompiled, the answer untouched
            graph([torch.zeros(1)])
        assert graph.uncompiled_calls == 2 and graph._future is not None
        background.new_solve()
    with pytest.warns(RuntimeWarning, match="worker process could not compile a graph"):
        out = graph([torch.ones(1)])
    assert graph._future is None and not graph.compiled
    torch.testing.assert_close(out, torch.full((1,), 2.0))


class _Interrupted:
    """An answer awaited when Ctrl-C is pressed, and a failure when awaited again."""

    def __init__(self) -> None:
        self.waits = 0

    def done(self) -> bool:
        return False

    def result(self):
        self.waits += 1
        raise KeyboardInterrupt if self.waits == 1 else RuntimeError("the compile worker has exited")


def test_an_interrupted_wait_leaves_the_answer_awaited():
    answer = _Interrupted()
    graph = background.TieredGraph(
        torch.fx.symbolic_trace(lambda x: x + 1), answer, [torch.zeros(1)], {}, {}, wait=True
    )
    background.new_solve()
    with pytest.raises(KeyboardInterrupt):
        graph([torch.zeros(1)])
    assert graph._future is answer and graph.uncompiled_calls == 0
    with pytest.warns(RuntimeWarning, match="worker process could not compile a graph"):
        graph([torch.zeros(1)])  # the next call waits again, and takes the failure
    assert graph._future is None and graph.uncompiled_calls == 1


class Recorded(torch.autograd.Function):
    """The identity, whose backward pass begins a solve (which :func:`background.new_solve` must not count)."""

    seen = -1

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        background.new_solve()
        Recorded.seen = background._SOLVES[0]
        return grad


def test_a_backward_pass_begins_no_solve():
    count = background._SOLVES[0]
    y = Recorded.apply(torch.ones(2, requires_grad=True))
    background.new_solve()
    y.sum().backward()
    assert Recorded.seen == count + 1 and background._SOLVES[0] == count + 1


def test_forward_solve_runs_uncompiled_then_compiled_with_the_eager_results(float64_default, one_thread):
    func = _field()
    y0, t = torch.randn(16, 2), torch.linspace(0.0, 1.0, 5)
    before = set(background.GRAPHS)
    with torch.no_grad():
        eager = _solve(func, y0, t, None)
        first = _solve(func, y0, t, "background")
        deferred = _deferred_since(before)
        assert len(deferred) == 1 and not deferred[0].compiled  # the whole-solve graph, not yet compiled
        torch.testing.assert_close(first, eager, **TOL)
        assert background.wait(WAIT_S)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        with _cpp_builds() as builds:
            second = _solve(func, y0, t, "background")
        third = _solve(func, y0, t, "background")
    assert deferred[0].compiled and deferred[0].uncompiled_calls == 1
    assert not background._SUBMITTED  # the answers, compiled graphs in bytes, are not kept
    torch.testing.assert_close(second, eager, **TOL)
    torch.testing.assert_close(third, eager, **TOL)
    # loading the compiled graph changes nothing Dynamo guards on: no new trace
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    # and builds none of its C++ again (loaded under other settings, its libraries' keys would differ);
    # only Inductor's check of the precompiled header runs the preprocessor
    assert all(" -E " in command for command in builds)


def test_the_default_runs_a_graph_uncompiled_in_its_first_solve_and_compiled_from_the_next(
    float64_default, one_thread, monkeypatch
):
    """compile=True: the second solve waits for the worker (no explicit wait here) and runs the compiled
    graph; the results are the eager solver's either way."""
    monkeypatch.delenv("HYBRID_NODE_COMPILER", raising=False)
    func = _field()
    y0, t = torch.randn(16, 2), torch.linspace(0.0, 1.0, 5)
    before = set(background.GRAPHS)
    with torch.no_grad():
        eager = _solve(func, y0, t, None)
        first = _solve(func, y0, t, True)
        deferred = _deferred_since(before)
        assert len(deferred) == 1 and not deferred[0].compiled
        second = _solve(func, y0, t, True)
    assert deferred[0].compiled and deferred[0].uncompiled_calls == 1
    for got in (first, second):
        torch.testing.assert_close(got, eager, **TOL)


@pytest.mark.parametrize("compile_mode", [True, "background"], ids=["worker", "background"])
@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "direct"])
def test_gradients_equal_eager_before_and_after_the_worker_answers(
    float64_default, one_thread, monkeypatch, adjoint, compile_mode
):
    """compile=True: a training step's backward graphs (the adjoint's backward solve, direct backprop's
    backward graphs) belong to the step's solve, uncompiled in the first step; the second step waits
    for them. "background": compiled once the worker has answered."""
    monkeypatch.delenv("HYBRID_NODE_COMPILER", raising=False)
    func = _field()
    y0, t = torch.randn(16, 2, requires_grad=True), torch.linspace(0.0, 1.0, 5)
    params = [y0, *func.parameters()]

    def gradients(compile_mode):
        ys = _solve(func, y0, t, compile_mode, adjoint=adjoint)
        return [ys.detach(), *torch.autograd.grad((ys**2).sum(), params)]

    eager = gradients(None)
    before = set(background.GRAPHS)
    first = gradients(compile_mode)
    deferred = _deferred_since(before)
    # the adjoint defers its forward and backward solves; direct backprop its backward graphs (its
    # forward graphs report their output strides to the backward compilation and compile here)
    assert deferred and not any(g.compiled for g in deferred)
    if compile_mode == "background":
        assert background.wait(WAIT_S)  # no solve waits for it
    second = gradients(compile_mode)
    assert all(g.compiled for g in deferred)
    for got in (first, second):
        for a, b in zip(got, eager, strict=True):
            torch.testing.assert_close(a, b, **TOL)


def test_a_worker_that_fails_leaves_the_graph_uncompiled_with_a_warning(float64_default, one_thread, monkeypatch):
    # a worker that exits at once: every answer it owes fails
    monkeypatch.setattr(background, "WORKER_COMMAND", [sys.executable, "-c", "import sys; sys.exit(3)"])
    net = torch.nn.Sequential(torch.nn.Linear(2, 7), torch.nn.Softplus(), torch.nn.Linear(7, 2))

    def func(t, y):
        return net(y)

    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 3)
    before = set(background.GRAPHS)
    with torch.no_grad():
        eager = hn.odeint(func, y0, t)
        # said on the first call that finds the answer: the first, or the one after the wait
        with pytest.warns(RuntimeWarning, match="worker process could not compile a graph .* keeps running uncompiled"):
            first = hn.odeint(func, y0, t, options={"compile": "background"})
            deferred = _deferred_since(before)
            assert len(deferred) == 1
            background.wait(WAIT_S)
            second = hn.odeint(func, y0, t, options={"compile": "background"})
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and only once
            third = hn.odeint(func, y0, t, options={"compile": "background"})
    assert not deferred[0].compiled and deferred[0].uncompiled_calls == 3
    for got in (first, second, third):
        torch.testing.assert_close(got, eager, **TOL)


def test_a_graph_that_cannot_be_sent_compiles_in_the_process(float64_default, one_thread, monkeypatch):
    def unpicklable(*args):
        raise TypeError("cannot pickle")

    monkeypatch.setattr(background, "_job", unpicklable)
    func = _field()
    y0, t = torch.randn(8, 2), torch.linspace(0.0, 1.0, 3)
    before = set(background.GRAPHS)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning: it compiles as "in_process" does
        got = _solve(func, y0, t, "background")
    assert _deferred_since(before) == []
    torch.testing.assert_close(got, _solve(func, y0, t, None), **TOL)


def test_a_graph_with_an_operator_of_the_users_code_compiles_in_the_process(float64_default, one_thread, monkeypatch):
    """The worker would not know it: the graph is compiled here, as "in_process" does, not deferred."""
    monkeypatch.delenv("HYBRID_NODE_COMPILER", raising=False)

    @torch.library.custom_op("hn_test_background::softsign", mutates_args=())
    def softsign(x: torch.Tensor) -> torch.Tensor:
        return x / (1 + x.abs())

    softsign.register_fake(torch.empty_like)
    net = torch.nn.Linear(2, 2)

    def func(t, y):
        return softsign(net(y))

    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 3)
    before = set(background.GRAPHS)
    with torch.no_grad():
        eager = hn.odeint(func, y0, t, **TOL)
        got = hn.odeint(func, y0, t, options={"compile": True}, **TOL)
    assert _deferred_since(before) == []
    torch.testing.assert_close(got, eager, **TOL)


def test_the_worker_ends_with_the_process(tmp_path):
    """A script that exits while its worker compiles neither waits for it nor leaves it running."""
    script = textwrap.dedent(
        """
        import torch, hybrid_node as hn
        from hybrid_node.loop import background
        torch.set_num_threads(1)
        net = torch.nn.Sequential(torch.nn.Linear(2, 9), torch.nn.Tanh(), torch.nn.Linear(9, 2))
        with torch.no_grad():
            hn.odeint(lambda t, y: net(y), torch.ones(3, 2), torch.linspace(0, 1, 3), options={"compile": True})
        print(background._WORKERS[-1].process.pid, flush=True)
        """
    )
    # a cache miss, so that the graph is deferred; the default compiler
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    env.pop("HYBRID_NODE_COMPILER")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    pid = int(done.stdout.split()[-1])
    # the worker was the script's child: once reaped it is gone, and a kill finds no process
    ps = subprocess.run(["ps", "-o", "pid=", "-p", str(pid)], capture_output=True, text=True)
    assert ps.stdout.strip() == ""


def test_a_new_process_loads_the_graph_the_worker_compiled(tmp_path):
    """The worker's graph is saved in Inductor's on-disk cache when it arrives: the next process
    compiles nothing and defers nothing, and gives the same results."""
    script = textwrap.dedent(
        """
        import json, torch, hybrid_node as hn
        from hybrid_node.loop import background
        torch.set_num_threads(1)
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(2, 9), torch.nn.Tanh(), torch.nn.Linear(9, 2)).double()
        y0 = torch.randn(5, 2, dtype=torch.float64)
        field = lambda t, y: net(y)  # one field object: the graphs are cached per field
        solve = lambda: hn.odeint(field, y0, torch.linspace(0, 1, 3, dtype=torch.float64),
                                  rtol=1e-8, atol=1e-10, options={"compile": "background"})
        with torch.no_grad():
            first = solve()
            deferred = len(background.GRAPHS)
            background.wait(600)
            second = solve()
        print(json.dumps({"deferred": deferred, "compiled": all(g.compiled for g in background.GRAPHS),
                          "ys": second.tolist(), "first": first.tolist()}))
        """
    )
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    assert runs[0]["deferred"] == 1 and runs[0]["compiled"]
    assert runs[1]["deferred"] == 0  # a cache hit: compiled at once
    for got in (runs[0]["first"], runs[1]["ys"]):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(runs[0]["ys"]), **TOL)
