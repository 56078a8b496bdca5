"""The whole adaptive solve as one compiled graph (``options={"compile": True}``, hybrid_node.loop.whole).

Compiling a while_loop graph takes tens of seconds on a small shared CPU, so the tests that compile
are marked slow; the selection logic and the helpers are tested in the default suite.
"""

import warnings
import weakref

import pytest
import torch
from conftest import CountingMLP

import hybrid_node as hn
from hybrid_node.loop import compiled_step, whole
from hybrid_node.loop.graph_inputs import tolerance_tensor
from hybrid_node.solvers.registry import METHOD_SPECS


def pretend_compiling(patch: pytest.MonkeyPatch) -> None:
    """Stand in for a ``torch.compile`` trace: the library's ``traced`` answers True (torch's own flags
    are left alone: patched, they led torch's eager ``while_loop`` astray for the rest of the process)."""
    patch.setattr("hybrid_node._api.traced", lambda: True)
    patch.setattr("hybrid_node._traced_solve.traced", lambda: True)
    patch.setattr("hybrid_node.nn.ode_block.traced", lambda: True)


@pytest.fixture
def field(float64_default, one_thread):
    torch.manual_seed(0)
    return CountingMLP()


def _eager(func, y0, t, method="dopri5", **tol):
    solver = METHOD_SPECS[method].solver()
    return hn.solve(func, y0, t, solver=solver, controller=hn.PIDController(**tol))


def _compiled(func, y0, t, method="dopri5", **tol):
    solver = METHOD_SPECS[method].solver().compiled()
    return hn.solve(func, y0, t, solver=solver, controller=hn.PIDController(**tol))


def test_registry_declares_the_whole_solve_loop():
    for name in ("dopri5", "tsit5", "bosh3", "dopri8"):
        assert "whole_solve" in METHOD_SPECS[name].loops
    # DOP853's dense output needs three more evaluations: the graph makes them, the device loop does not
    assert "device_loop" not in METHOD_SPECS["dopri8"].loops
    assert "whole_solve" not in METHOD_SPECS["rk4"].loops


def test_compile_option_routes_forward_solves_to_the_whole_graph(field, monkeypatch):
    """no_grad forward solves go to the whole-solve graph; dense output and events do not."""
    calls = []

    def fake(term, solver, controller, y0, ts, **kw):
        calls.append(solver.name)
        return None  # as if the compiler rejected the field: the per-step path runs instead

    monkeypatch.setattr("hybrid_node.loop.dispatch.integrate_whole", fake)
    monkeypatch.setattr("hybrid_node.loop.host.compiled_attempt", lambda *a, **k: None)  # keep it eager
    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 3)
    with torch.no_grad():
        out = hn.odeint(field, y0, t, rtol=1e-6, atol=1e-8, options={"compile": True})
        assert calls == ["dopri5"]
        torch.testing.assert_close(out, _eager(field, y0, t, rtol=1e-6, atol=1e-8).ys)
        hn.odeint(field, y0, t, method="dopri8", options={"compile": True})
        assert calls == ["dopri5", "dopri8"]
        hn.odeint(field, y0, t, method="rk4", options={"compile": True, "step_size": 0.5})
        hn.odeint(field, y0, t, method="fehlberg2", options={"compile": True})
        hn.odeint(field, y0, t, options={"compile": True, "step_t": [0.5]})
        hn.odeint(field, y0, t)
    assert calls == ["dopri5", "dopri8"]


def test_solves_that_need_autograd_do_not_build_the_whole_graph(field, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("no graph may be built for a differentiated solve")

    monkeypatch.setattr(whole, "WholeSolve", boom)
    monkeypatch.setattr("hybrid_node.loop.host.compiled_attempt", lambda *a, **k: None)
    y0 = torch.randn(4, 2, requires_grad=True)
    ys = hn.odeint(field, y0, torch.linspace(0.0, 1.0, 3), options={"compile": True})
    ys.sum().backward()
    assert y0.grad is not None


def test_counters_are_found_shown_as_zero_and_advanced_by_what_the_graph_added(field):
    from hybrid_node.loop.counters import advance, frozen_counters, probe

    class Term:  # what probe needs of a term: a call and an nfe to put back
        nfe = 7

        def __call__(self, t, y):
            self.nfe += 1
            field.scale *= 2.0  # a number that changes by another amount on every call: no counter
            return field(torch.tensor(t), y)

    field.nfe, field.scale = 41, 1.0
    term = Term()
    found, writes_buffers = probe(field, term, 0.0, torch.zeros(1, 2))
    assert not writes_buffers
    assert sorted((ref() is field, k, step) for ref, k, step in found) == [(True, "nfe", 1), (True, "scale", None)]
    assert (field.nfe, field.scale, term.nfe) == (41, 1.0, 7)  # the probe is no part of the solve
    counters = found + [(weakref.ref(field.net), "gone", 1)]  # a vanished one is skipped
    with frozen_counters(counters):
        assert field.nfe == 0
        field.nfe += 3  # a per-step graph replays the field's increments
    assert field.nfe == 44 and not hasattr(field.net, "gone")
    with frozen_counters(counters):
        pass  # a whole-solve loop puts them back inside the graph ...
    advance(counters, 5)  # ... and its caller adds what its 5 evaluations would have
    assert (field.nfe, field.scale) == (49, 1.0) and not hasattr(field.net, "gone")


class NormedField(torch.nn.Module):
    """A field with a batch norm: in training mode every evaluation updates its running statistics."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.norm = torch.nn.BatchNorm1d(2)

    def forward(self, t, y):
        return torch.tanh(self.norm(self.linear(y)))


def test_the_probe_puts_back_the_buffers_an_evaluation_writes(float64_default):
    from hybrid_node._term import Term
    from hybrid_node.loop.counters import probe

    field = NormedField()
    state = {k: v.clone() for k, v in field.state_dict().items()}
    y0 = torch.randn(5, 2)
    term = Term(field, y0, torch.float64)
    effects = probe(field, term, 0.0, y0)
    assert effects.writes_buffers and effects.counters == []
    for k, v in field.state_dict().items():  # the probe is no part of the solve
        assert torch.equal(v, state[k]), k
    field.eval()  # running statistics are only read
    assert not probe(field, term, 0.0, y0).writes_buffers


@pytest.mark.slow
def test_a_field_writing_its_buffers_keeps_every_write_with_compile(float64_default, one_thread):
    """A whole-solve loop would drop a batch norm's updates of its running statistics (it kept 2 of
    56); such a field runs with per-step graphs, which write them as the eager solve does."""
    torch.manual_seed(0)
    field, y0, t = NormedField(), torch.randn(16, 2), torch.linspace(0.0, 1.0, 5)
    start = {k: v.clone() for k, v in field.state_dict().items()}

    def solve(compile):
        field.load_state_dict(start)
        with torch.no_grad():
            ys = hn.odeint(field, y0, t, rtol=1e-7, atol=1e-9, options={"compile": compile})
        return ys, {k: v.clone() for k, v in field.state_dict().items()}

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a choice of loop, not a compiler failure
        compiled, after = solve(True)
    eager, expected = solve(False)
    assert int(after["norm.num_batches_tracked"]) == int(expected["norm.num_batches_tracked"]) > 20
    torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=1e-12)
    # averages of the batch statistics of every stage's state, which the compiled stages round
    # differently (~1e-9 apart here; a loop that dropped the updates left them ~1e-3 apart)
    for k in ("norm.running_mean", "norm.running_var"):
        torch.testing.assert_close(after[k], expected[k], rtol=1e-7, atol=1e-9)


class CountingLinear(torch.nn.Linear):
    """A linear layer counting its own calls: a counter in a submodule, not in the field's root."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


class OnNet(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return self.net(y)


def test_a_counting_submodule_moved_by_a_new_submodule_keeps_its_counter_frozen(float64_default, one_thread):
    """The counters are found once per graph; a submodule inserted before the counting one later
    (Dynamo answers with a new graph) must not send the solve looking for the counter elsewhere
    (it raised AttributeError on the module now in the counter's old place)."""
    torch.manual_seed(0)
    field = OnNet(torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), CountingLinear(8, 2)))
    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 3)
    with torch.no_grad():
        first = hn.odeint(field, y0, t, options={"compile": True})
        field.net.insert(0, torch.nn.Identity())
        second = hn.odeint(field, y0, t, options={"compile": True})
        compiled = field.net[3].calls  # the two solves' evaluations, not the probes'
        eager = hn.odeint(field, y0, t)
    assert field.net[3].calls - compiled == compiled // 2 > 0  # each counted as the eager solve counts
    torch.testing.assert_close(first, eager, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(second, eager, rtol=1e-10, atol=1e-12)


def test_tolerances_become_tensors_one_per_input_slot():
    like = torch.zeros(3, dtype=torch.float32)
    rtol = tolerance_tensor(1e-5, like)
    assert rtol.dtype == torch.float32 and rtol.shape == (1,) and float(rtol) == pytest.approx(1e-5)
    assert tolerance_tensor(1e-5, like) is rtol  # cached
    assert tolerance_tensor(1e-5, like, 1) is not rtol  # an atol equal to rtol is another input
    per = tolerance_tensor(torch.tensor([1e-5, 1e-6, 1e-7], dtype=torch.float64), like)
    assert per.shape == (3,) and per.dtype == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_whole_graph_equals_eager_steps_both_directions(field, method):
    y0 = torch.randn(16, 2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to per-step graphs
        for t in (torch.linspace(0.0, 3.0, 7), torch.linspace(3.0, -1.0, 6)):
            eager = _eager(field, y0, t, method, rtol=1e-7, atol=1e-9)
            comp = _compiled(field, y0, t, method, rtol=1e-7, atol=1e-9)
            scale = float(eager.ys.abs().max())
            assert float((comp.ys - eager.ys).abs().max()) <= 1e-12 * scale
            assert (comp.stats.nfe, comp.stats.n_accepted, comp.stats.n_rejected) == (
                eager.stats.nfe,
                eager.stats.n_accepted,
                eager.stats.n_rejected,
            )
            assert comp.status == eager.status


@pytest.mark.slow
def test_dopri8_whole_graph_equals_eager_steps(field):
    """DOP853 with its own seventh-order dense output (three more stages, built on every attempt in
    the graph): the eager solver's steps and outputs up to rounding."""
    y0, t = torch.randn(16, 2), torch.linspace(0.0, 3.0, 7)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to per-step graphs
        eager = _eager(field, y0, t, "dopri8", rtol=1e-7, atol=1e-9)
        comp = _compiled(field, y0, t, "dopri8", rtol=1e-7, atol=1e-9)
    assert any(key[0] == "whole_solve" for key in compiled_step._CACHE[field])
    # every output is the dense output of some step (none falls on a step's end), so the test covers it
    assert float((comp.ys - eager.ys).abs().max()) <= 1e-12 * float(eager.ys.abs().max())
    assert (comp.stats.n_accepted, comp.stats.n_rejected) == (eager.stats.n_accepted, eager.stats.n_rejected)
    assert comp.status == eager.status
    # the graph evaluates 12 stages and the 3 dense-output stages on every attempt, plus the 2
    # evaluations of the initial step; the eager solver evaluates the dense stages only where needed
    attempts = comp.stats.n_accepted + comp.stats.n_rejected
    assert comp.stats.nfe == 2 + 15 * attempts >= eager.stats.nfe


@pytest.mark.slow
def test_direct_backprop_with_compile_falls_back_to_step_graphs_with_eager_gradients(field):
    """A solve that needs autograd does not build the whole-solve graph (with its backward it
    compiles 4x longer than the per-step graphs, docs/compiled/fixes.md): it runs per-step
    graphs, whose gradients equal eager direct backpropagation's up to rounding."""
    y0 = torch.randn(8, 2, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 5)
    target = torch.randn(5, 8, 2)

    def gradients(options):
        field.zero_grad()
        y0.grad = None
        ys = hn.odeint(field, y0, t, rtol=1e-7, atol=1e-9, options=options)
        ((ys - target) ** 2).sum().backward()
        return [ys.detach(), y0.grad.clone()] + [p.grad.clone() for p in field.parameters()]

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the per-step graphs compile: no eager fallback
        fast = gradients({"compile": True})
    graphs = compiled_step._CACHE[field]
    assert not any(key[0] == "whole_solve" for key in graphs if isinstance(key[0], str))
    assert any(len(key) == 3 and key[2] is True for key in graphs)  # the adaptive step graph ran
    for a, b in zip(fast, gradients({})):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.slow
def test_backsolve_backward_pass_runs_in_the_whole_graph_with_eager_gradients(field):
    """The backsolve adjoint's backward solve (the augmented system, vjp inside the loop, the loss's
    cotangents added at the output times between graph calls) takes the eager backward solve's steps
    and gives its gradients up to rounding; a second backward pass reuses the graph; the field's own
    call counter counts both passes as it counts the eager ones."""
    y0 = torch.randn(8, 2, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 5)
    target = torch.randn(5, 8, 2)

    def gradients(solver):
        field.zero_grad()
        y0.grad = None
        field.nfe = 0
        ctrl = hn.PIDController(rtol=1e-8, atol=1e-10)
        sol = hn.solve(field, y0, t, solver=solver, controller=ctrl, sensitivity=hn.BacksolveAdjoint())
        ((sol.ys - target) ** 2).sum().backward()
        return sol.stats, [y0.grad.clone()] + [p.grad.clone() for p in field.parameters()], field.nfe

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to per-step graphs
        fast_stats, fast, fast_calls = gradients(hn.Dopri5().compiled())
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        again = gradients(hn.Dopri5().compiled())[1]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # no recompilation
    keys = [key for key in compiled_step._CACHE[field] if key[0] == "whole_solve"]
    assert any(isinstance(key[1], tuple) and key[1][0] == "backsolve" for key in keys)  # the augmented field
    eager_stats, eager, eager_calls = gradients(hn.Dopri5())
    assert fast_stats.n_steps_backward == eager_stats.n_steps_backward > 0
    assert fast_calls == eager_calls > fast_stats.nfe  # the field's own count of both passes
    for a, b, c in zip(fast, eager, again):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(c, a, rtol=0, atol=0)


@pytest.mark.slow
def test_new_tolerances_and_solves_reuse_the_graph(field):
    """Tolerances are graph inputs and the field's call counter is frozen: one compilation, also
    when rtol and atol become equal (two inputs, not one tensor passed twice)."""
    y0, t = torch.randn(8, 2), torch.linspace(0.0, 2.0, 5)
    counters = torch._dynamo.utils.counters
    with torch.no_grad():
        _compiled(field, y0, t, rtol=1e-6, atol=1e-8)
        graphs = counters["stats"]["unique_graphs"]
        nfe = field.nfe
        for rtol, atol in ((1e-5, 1e-8), (1e-7, 1e-7), (1e-4, 1e-8)):
            comp = _compiled(field, y0 * 0.5, t, rtol=rtol, atol=atol)
            eager = _eager(field, y0 * 0.5, t, rtol=rtol, atol=atol)
            torch.testing.assert_close(comp.ys, eager.ys, rtol=1e-10, atol=1e-12)
            assert comp.stats.nfe == eager.stats.nfe
    assert counters["stats"]["unique_graphs"] == graphs
    assert field.nfe > nfe  # the counter still advances outside the graph (eager solves)


@pytest.mark.slow
def test_max_num_steps_and_status_without_throw(field):
    y0, t = torch.randn(4, 2), torch.linspace(0.0, 3.0, 4)
    with torch.no_grad():
        comp = hn.solve(
            field,
            y0,
            t,
            solver=hn.Dopri5().compiled(),
            controller=hn.PIDController(rtol=1e-9, atol=1e-11, max_num_steps=3),
            throw=False,
        )
        ctrl = hn.PIDController(rtol=1e-9, atol=1e-11, max_num_steps=3)
        eager = hn.solve(field, y0, t, solver=hn.Dopri5(), controller=ctrl, throw=False)
    assert comp.status == eager.status == hn.Status.MAX_STEPS
    assert torch.isnan(comp.ys[-1]).all()


class Blowup(torch.nn.Module):
    """y0' = -y0, y1' = y1^2: the second column reaches infinity at t = 1 (from y1(0) = 1)."""

    def forward(self, t, y):
        return torch.stack([-y[:, 0], y[:, 1] ** 2], 1)


def _first_column_norm(x):
    return x[:, 0].abs().max()


def test_non_finite_outputs_the_error_norm_ignores_are_reported(float64_default, one_thread, monkeypatch):
    """The graph tests its outputs for the host, which then skips its own test: a column the norm
    ignores leaves every step accepted and the solve successful, and must still fail it."""
    results = []

    def spy(*args, **kwargs):
        results.append(whole.integrate_whole(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr("hybrid_node.loop.dispatch.integrate_whole", spy)
    y0, t = torch.ones(3, 2), torch.linspace(0.0, 2.0, 5)
    solver, controller = hn.Dopri5().compiled(), hn.PIDController(rtol=1e-6, atol=1e-8, norm=_first_column_norm)
    with torch.no_grad():
        with pytest.raises(hn.SolverError) as info:
            hn.solve(Blowup(), y0, t, solver=solver, controller=controller)
        sol = hn.solve(Blowup(), y0, t, solver=solver, controller=controller, throw=False)
    assert info.value.status is sol.status is hn.Status.NONFINITE
    assert len(results) == 2 and all(r.status is hn.Status.SUCCESS and not r.finite for r in results)
    torch.testing.assert_close(sol.ys[:, :, 0], torch.exp(-t)[:, None].expand(-1, 3), rtol=1e-5, atol=0)
    # a finite solve is reported finite by the graph, and the host's test is skipped
    with torch.no_grad():
        hn.solve(Blowup(), y0 * 0.1, t, solver=solver, controller=controller)
    assert results[-1].finite


@pytest.mark.slow
def test_field_the_compiler_rejects_falls_back_with_one_warning(float64_default, one_thread):
    calls = []

    def func(t, y):
        calls.append(1)  # a side effect on a Python list: the loop graph cannot hold it
        return -y

    y0, t = torch.ones(3), torch.linspace(0.0, 1.0, 3)
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="compile=True"):
            out = hn.odeint(func, y0, t, options={"compile": True})
    torch.testing.assert_close(out, hn.odeint(func, y0, t))


class Transposed(torch.nn.Module):
    """f(t, y) = tanh(y) W^T, with W^T read through ``.T`` or ``.t()``."""

    def __init__(self, prop: bool):
        super().__init__()
        self.prop = prop
        self.W = torch.nn.Parameter(0.5 * torch.randn(2, 2))

    def forward(self, t, y):
        return torch.tanh(y).matmul(self.W.T if self.prop else self.W.t())


@pytest.mark.slow
def test_a_field_reading_dot_T_falls_back_with_a_hint_and_dot_t_compiles(float64_default, one_thread):
    torch.manual_seed(0)
    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 3)
    with torch.no_grad():
        field = Transposed(prop=True)
        with pytest.warns(RuntimeWarning, match=r"write `\.t\(\)`"):
            out = hn.odeint(field, y0, t, options={"compile": True})
        torch.testing.assert_close(out, hn.odeint(field, y0, t))
        field = Transposed(prop=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = hn.odeint(field, y0, t, options={"compile": True})
        torch.testing.assert_close(out, hn.odeint(field, y0, t), rtol=1e-10, atol=1e-12)


class SinMLP(CountingMLP):
    """CountingMLP's shapes, parameters and code layout with another nonlinearity."""

    def forward(self, t, y):
        self.nfe += 1
        return self.net[2](torch.sin(self.net[0](y))) * torch.cos(t)


@pytest.mark.slow
def test_whole_graphs_are_cached_on_disk_and_told_apart_by_their_loop_body(float64_default, one_thread):
    """The loop graphs go into torch's on-disk caches (a new process lowers nothing again), and a loop
    body that differs in one operation, all shapes equal, is another entry, not a false hit."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import fresh_cache

    torch.manual_seed(0)
    y0, t = torch.randn(8, 2), torch.linspace(0.0, 1.0, 4)

    def solve(func):
        before = dict(counters["inductor"])
        with torch.no_grad():
            comp = _compiled(func, y0, t, rtol=1e-7, atol=1e-9)
            eager = _eager(func, y0, t, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(comp.ys, eager.ys, rtol=1e-10, atol=1e-12)
        return {k: counters["inductor"][k] - before.get(k, 0) for k in ("fxgraph_cache_miss", "fxgraph_cache_hit")}

    first = CountingMLP()
    with fresh_cache():
        assert solve(first) == {"fxgraph_cache_miss": 1, "fxgraph_cache_hit": 0}
        other = SinMLP()
        other.load_state_dict(first.state_dict())
        assert solve(other) == {"fxgraph_cache_miss": 1, "fxgraph_cache_hit": 0}
        # a new field object of the first kind: a new Dynamo graph, whose lowering comes from the cache
        again = CountingMLP()
        again.load_state_dict(first.state_dict())
        assert solve(again) == {"fxgraph_cache_miss": 0, "fxgraph_cache_hit": 1}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_whole_solve_equals_eager():
    torch.manual_seed(0)
    func = CountingMLP().cuda()
    y0, t = torch.randn(64, 2, device="cuda"), torch.linspace(0.0, 2.0, 5, device="cuda")
    with torch.no_grad():
        comp = hn.odeint(func, y0, t, rtol=1e-5, atol=1e-7, options={"compile": True})
        eager = hn.odeint(func, y0, t, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(comp, eager, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_export_of_an_ode_block_with_dopri5_gives_the_same_outputs(one_thread):
    from hybrid_node.nn.ode_block import ODEBlock, SolveSettings

    torch.manual_seed(0)
    settings = SolveSettings(rtol=1e-6, atol=1e-8)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), ODEBlock(CountingMLP(), (0.0, 1.5), train_settings=settings))
    model.eval()
    x = torch.randn(8, 3)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        assert "while_loop" in program.graph_module.code  # the adaptive loop itself is in the program
        for inputs in (x, torch.randn(8, 3)):
            torch.testing.assert_close(program.module()(inputs), model(inputs), rtol=1e-5, atol=1e-6)


def test_a_solve_traced_by_torch_compile_without_gradients_is_the_traced_loop(field, monkeypatch):
    """Inside a ``torch.compile`` trace (stood in for by ``traced``), a solve no gradient can
    flow through runs as ``odeint_graph`` (the traced while_loop, here run eagerly) with the host
    loop's outputs, and a failed one raises (it returned NaN rows); a differentiated one keeps the
    host loop."""
    from hybrid_node.loop import whole as whole_module

    calls = []
    graph = whole_module.odeint_graph

    def recording(*args, **kwargs):
        calls.append(args[3].name)
        return graph(*args, **kwargs)

    monkeypatch.setattr("hybrid_node._api.odeint_graph", recording)
    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 3)
    back = t.flip(0)  # decreasing times: the traced loop runs in -t (it returned NaN rows)
    with torch.no_grad():
        expected = hn.odeint(field, y0, t, rtol=1e-8, atol=1e-10, method="tsit5")
        expected_back = hn.odeint(field, y0, back, rtol=1e-8, atol=1e-10)
    pretend_compiling(monkeypatch)
    with torch.no_grad():
        traced = hn.odeint(field, y0, t, rtol=1e-8, atol=1e-10, method="tsit5")
        traced_back = hn.odeint(field, y0, back, rtol=1e-8, atol=1e-10)
        hn.odeint(field, y0, t, method="rk4", options={"step_size": 0.1})  # no whole-solve loop
    assert calls == ["tsit5", "dopri5"]
    torch.testing.assert_close(traced, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(traced_back, expected_back, rtol=1e-10, atol=1e-12)
    with torch.no_grad(), pytest.raises(RuntimeError, match="traced adaptive solve failed"):
        hn.odeint(lambda t, y: y * y, torch.ones(2, 1), torch.linspace(0.0, 2.0, 3))  # blows up at t = 1
    assert calls == ["tsit5", "dopri5", "dopri5"]
    calls.pop()
    hn.odeint(field, y0, t).sum().backward()  # the parameters require grad: the host loop
    assert calls == ["tsit5", "dopri5"]
    for p in field.parameters():
        p.requires_grad_(False)
    hn.odeint(field, y0, t)  # nothing to differentiate
    assert calls == ["tsit5", "dopri5", "dopri5"]


def test_an_ode_block_counts_its_evaluations_unless_its_solve_is_traced(float64_default, monkeypatch):
    """Under ``torch.compile`` a training forward keeps the host loop and the block's count; an
    inference forward is traced (``odeint_graph``), which cannot carry the counting wrapper."""
    from hybrid_node.nn.ode_block import ODEBlock

    torch.manual_seed(0)
    block = ODEBlock(CountingMLP(), (0.0, 1.0))
    x = torch.randn(4, 2)
    pretend_compiling(monkeypatch)
    block(x).sum().backward()
    assert block.nfe_forward > 0
    with torch.no_grad():
        block(x)
    assert block.nfe_forward == 0


def _eager_paths(field):
    """``run()``: an eager solve of ``field`` on the host loop and on the device loop, and an ODE block's
    count of evaluations, each of which takes another path inside a trace."""
    from hybrid_node.nn.ode_block import ODEBlock

    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 5)
    block = ODEBlock(field, (0.0, 1.0))
    device_loop = hn.PIDController(rtol=1e-6, atol=1e-8, device_loop=True)

    def run():
        with torch.no_grad():
            host = _eager(field, y0, t, rtol=1e-6, atol=1e-8)
            device = hn.solve(field, y0, t, solver=hn.Dopri5(), controller=device_loop)
            block(y0)
        return host, device, block.nfe_forward

    return run


def _assert_same_eager_paths(got, expected) -> None:
    """The same outputs bit for bit and the same counts as :func:`_eager_paths` outside any trace."""
    for solution, reference in zip(got[:2], expected[:2]):
        assert solution.stats.nfe == reference.stats.nfe > 0
        assert torch.equal(solution.ys, reference.ys)
    assert got[2] == expected[2] > 0


def test_an_eager_solve_while_another_thread_compiles_keeps_the_host_loop(field, monkeypatch):
    """``torch.compiler.is_compiling()`` is one flag for the process, True while any thread compiles
    (set here as such a compilation sets it). An eager solve in another thread then ran the traced
    loop (no counts, and only after that compilation released torch's lock) and the device loop its
    compiled dense output; an ODE block counted nothing. Each keeps its eager path: the same outputs
    bit for bit, the same counts."""
    run = _eager_paths(field)
    expected = run()
    monkeypatch.setattr(torch.compiler, "_is_compiling_flag", True)
    assert torch.compiler.is_compiling()
    _assert_same_eager_paths(run(), expected)


def test_an_eager_solve_while_another_thread_exports_keeps_the_host_loop(field):
    """``torch.compiler.is_exporting()`` is one flag for the process too, True while any thread runs a
    non-strict ``torch.export``; the export's fake-tensor mode is its own thread's. Eager solves in
    another thread (started here from inside the exported forward) keep their eager paths."""
    import threading

    run = _eager_paths(field)
    expected = run()
    results = []

    class Exported(torch.nn.Module):
        def forward(self, x):
            assert torch.compiler.is_exporting()
            thread = threading.Thread(target=lambda: results.append(run()))
            thread.start()
            thread.join()
            return 2 * x

    torch.export.export(Exported(), (torch.ones(3),), strict=False)
    (paths,) = results
    _assert_same_eager_paths(paths, expected)


@pytest.mark.slow
def test_torch_compile_fullgraph_of_a_model_holding_a_solve(one_thread):
    """``torch.compile(..., fullgraph=True)`` of a model with an ODE block, and of a function taking
    the output times as an input, for inference: one graph, the eager outputs; from a y0 with other
    strides than a contiguous tensor's too, and ``compile=True`` from such a y0; and through
    torch's automatic dynamic shapes (the host loop under torch.compile failed there with "Guard
    failed on the same frame it was created")."""
    from hybrid_node.nn.ode_block import ODEBlock

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), ODEBlock(CountingMLP(), (0.0, 1.5))).eval()
    x, t = torch.randn(8, 3), torch.linspace(0.0, 1.0, 4)
    field = CountingMLP()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-5, atol=1e-6)
        compiled = torch.compile(model)
        for rows in (8, 5, 6):  # a new batch size: torch recompiles with a symbolic one
            torch.testing.assert_close(compiled(x[:rows]), model(x[:rows]), rtol=1e-5, atol=1e-6)
        solve = torch.compile(lambda y, t: hn.odeint(field, y, t, rtol=1e-6, atol=1e-8), fullgraph=True)
        expected = hn.odeint(field, x[:, :2], t, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(solve(x[:, :2], t), expected, rtol=1e-5, atol=1e-6)  # a column slice
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # such a y0 fell back to per-step graphs
            compiled = hn.odeint(field, x[:, :2], t, rtol=1e-6, atol=1e-8, options={"compile": True})
        torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-6)


def test_library_guards_leave_out_only_the_librarys_own_objects():
    """The guard filter of the whole-solve graph drops guards on the graph function's closure and on
    this library's and torch's modules, and keeps those on the field, the inputs and user modules."""

    def solve(owner, y0):  # a function with a closure, as the graph's
        return solver, owner, y0

    solver = object()
    keep = whole.library_guards(solve)
    names = [
        "G['torch']",  # this module's own global (whole.py's globals hold torch)
        "G['__import_hybrid_node_dot_loop_dot_core'].RUNNING",
        "G['__import_torch_dot_nn_dot_modules_dot_linear'].F",
        "G['__builtins_dict___2']['len']",
        "solver.tableau",  # the closure
        "L['owner']._modules['net']",  # the field
        "type(L['owner'].__dict__['_forward_hooks'])",
        "L['y0']",
        "G['__import_my_model'].SCALE",  # a user module's global
        "G['__import_torchvision_dot_ops'].nms",  # not torch itself
        "G['__import_hybrid_node_extras'].X",
    ]
    entries = [type("Entry", (), {"name": n})() for n in names]
    assert keep(entries) == [False] * 5 + [True] * 6


def test_forward_tables_are_cached_per_output_times():
    solver, like = hn.Dopri5(), torch.zeros(3)
    a = whole.cached_tables(solver, [0.0, 0.5, 1.0], like)
    assert whole.cached_tables(solver, [0.0, 0.5, 1.0], like) is a
    b = whole.cached_tables(solver, [-0.0, 0.5, 1.0], like)  # -0.0 is another time (a reverse solve's)
    assert b is not a and torch.signbit(b.ts[0]) and not torch.signbit(a.ts[0])
    torch.testing.assert_close(a.ts, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))


class ScaledMLP(CountingMLP):
    """A counting field with a number attribute that is a setting (not a counter)."""

    def __init__(self):
        super().__init__()
        self.scale = 1.0

    def forward(self, t, y):
        return super().forward(t, y) * self.scale


@pytest.mark.slow
def test_changed_weights_and_settings_are_seen_and_nfe_counts_the_graphs_evaluations(float64_default, one_thread):
    """The forward graph evaluates f0 and the initial step itself: its steps, outputs and nfe are the
    eager solver's; weights changed in place after a solve (an optimiser step) and a changed number
    attribute of the field are seen by the next solve; the field's own counter advances as the
    eager solve advances it (the probe that finds it is no part of a solve)."""
    torch.manual_seed(0)
    field = ScaledMLP()
    y0, t = torch.randn(16, 2), torch.linspace(0.0, 3.0, 7)

    def check(**ctrl):
        with torch.no_grad():
            eager = _eager(field, y0, t, **ctrl)
            before = field.nfe
            comp = _compiled(field, y0, t, **ctrl)
            assert field.nfe - before == eager.stats.nfe
        assert float((comp.ys - eager.ys).abs().max()) <= 1e-12 * float(eager.ys.abs().max())
        assert (comp.stats.nfe, comp.stats.n_accepted, comp.stats.n_rejected) == (
            eager.stats.nfe,
            eager.stats.n_accepted,
            eager.stats.n_rejected,
        )
        return comp

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to per-step graphs
        comp = check(rtol=1e-7, atol=1e-9)
        attempts = comp.stats.n_accepted + comp.stats.n_rejected
        assert comp.stats.nfe == 2 + 6 * attempts  # f0, the initial step's trial, 6 stages per attempt
        opt = torch.optim.SGD(field.parameters(), lr=0.5)
        field(torch.tensor(0.0), y0).square().sum().backward()
        opt.step()  # in place
        changed = check(rtol=1e-7, atol=1e-9)
        assert float((changed.ys - comp.ys).abs().max()) > 1e-3
        field.scale = 0.5  # a number attribute: guarded, so the graph is compiled again for it
        check(rtol=1e-7, atol=1e-9)
        # a given first step (no trial evaluation), clamped to max_step as the host loop clamps it
        comp = check(rtol=1e-7, atol=1e-9, first_step=0.5, max_step=0.2)
        attempts = comp.stats.n_accepted + comp.stats.n_rejected
        assert comp.stats.nfe == 1 + 6 * attempts


def test_integration_stack_reuses_the_loops_stacked_outputs_only_while_ys_holds_its_rows():
    from hybrid_node._solution import Stats
    from hybrid_node.loop.host import Integration

    ys = torch.arange(6.0).reshape(3, 2)
    out = Integration(None, Stats(), hn.Status.SUCCESS, 1.0, stacked=ys, finite=True)
    assert out.stack() is ys and out.known_finite(ys)
    assert [r.tolist() for r in out.ys] == ys.tolist()  # split on first use
    assert out.stack() is ys  # still its rows
    out.ys[0] = torch.zeros(2)  # a caller replaced an output (as direct backprop does with y0)
    stacked = out.stack()
    assert stacked is not ys and stacked[0].tolist() == [0.0, 0.0] and stacked[1:].equal(ys[1:])
    assert not out.known_finite(stacked)  # the loop's finding was about its own outputs
    assert Integration(list(ys.unbind(0)), Stats(), hn.Status.SUCCESS, 1.0).stack().equal(ys)


class _TupleField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, t, y):
        return self.linear(y[0]), -0.5 * y[1] * y[0].sum(-1)


@pytest.mark.parametrize("norm", [None, lambda parts: max(p.abs().max() for p in parts)], ids=["default", "user"])
def test_tuple_state_solves_share_one_graph(float64_default, one_thread, norm):
    """A tuple state's error norm (the largest RMS of its parts, or the user's norm on the parts) is
    an object compared by what it holds: as a closure made per solve it was a new key every solve, and
    every solve compiled its graph again. One graph for three solves, each the eager solution."""
    torch.manual_seed(0)
    field, t = _TupleField(), torch.linspace(0.0, 1.0, 4)
    before = None
    for _ in range(3):
        y0 = (torch.randn(5, 2), torch.rand(5) + 0.5)
        with torch.no_grad():
            got = _compiled(field, y0, t, rtol=1e-8, atol=1e-10, norm=norm)
            want = _eager(field, y0, t, rtol=1e-8, atol=1e-10, norm=norm)
        if before is None:
            before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        for a, b in zip(got.ys, want.ys):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert got.stats.nfe == want.stats.nfe
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before


@pytest.mark.slow
def test_numbers_of_output_times_share_power_of_two_graphs(float64_default, one_thread):
    """A loop graph holds its output buffer: each number of output times was a graph of its own.
    After the first number, others run with the next power of two of rows (the last time repeated,
    the repeats dropped): seven numbers, five graphs, each solve the eager one (values and count)."""
    torch.manual_seed(0)
    field, y0 = CountingMLP(), torch.randn(4, 2)
    graphs = torch._dynamo.utils.counters["stats"]
    before = graphs["unique_graphs"]
    with torch.no_grad():
        for n in (5, 7, 12, 30, 6, 100, 9):  # graphs of 5, 8, 16, 32 and 128 rows
            t = torch.linspace(0.0, 1.0, n)
            got, want = _compiled(field, y0, t, rtol=1e-8, atol=1e-10), _eager(field, y0, t, rtol=1e-8, atol=1e-10)
            assert got.ys.shape == want.ys.shape == (n, 4, 2)
            torch.testing.assert_close(got.ys, want.ys, rtol=1e-10, atol=1e-12)
            assert got.stats.nfe == want.stats.nfe
    assert graphs["unique_graphs"] - before == 5


@pytest.mark.slow
def test_adjoint_gradients_through_padded_graphs(float64_default, one_thread):
    """The backsolve adjoint over other numbers of output times runs padded graphs: the forward pass
    (9 times in 16 rows, 6 in 8) reads the outputs it keeps, and the backward pass ends at the true
    first time, before the padded rows, whose impulses would reset the state: the eager gradients."""
    torch.manual_seed(0)
    field, y0 = CountingMLP(), torch.randn(4, 2)
    for n in (5, 9, 6):
        t, target = torch.linspace(0.0, 1.0, n), torch.randn(n, 4, 2)
        grads = []
        for solver in (hn.Dopri5(), hn.Dopri5().compiled()):
            field.zero_grad()
            ctrl = hn.PIDController(rtol=1e-9, atol=1e-11)
            sol = hn.solve(field, y0, t, solver=solver, controller=ctrl, sensitivity=hn.BacksolveAdjoint())
            ((sol.ys - target) ** 2).sum().backward()
            grads.append([p.grad.clone() for p in field.parameters()])
        for got, want in zip(grads[1], grads[0]):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    rows = {key[0][6]: seen for key, seen in compiled_step._CACHE[field].items() if key[-1] == "rows"}
    assert rows == {"forward": {5, 16, 8}, "impulses": {5, 16, 8}}  # each graph's row counts


@pytest.mark.slow
def test_the_recompilation_limit_falls_back_to_step_graphs(float64_default, one_thread):
    """After torch's eight graphs of one function (here eight batch sizes) the next one raised
    ``FailOnRecompileLimitHit`` (an ``Exception``, not one of torch's compiler exception classes)
    out of the solve. Now the solves go on with per-step graphs after one warning that says why,
    each the eager solution."""
    torch.manual_seed(0)
    field, t = CountingMLP(), torch.linspace(0.0, 1.0, 4)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in range(1, 11):
            y0 = torch.randn(batch, 2)
            got, want = _compiled(field, y0, t, rtol=1e-8, atol=1e-10), _eager(field, y0, t, rtol=1e-8, atol=1e-10)
            torch.testing.assert_close(got.ys, want.ys, rtol=1e-10, atol=1e-12)
    fallbacks = [str(w.message) for w in caught if "cannot be compiled" in str(w.message)]
    assert len(fallbacks) == 1 and "eight state shapes" in fallbacks[0] and "FailOnRecompileLimitHit" in fallbacks[0]


def test_solves_the_traced_loop_cannot_run_keep_their_results_inside_torch_compile(one_thread):
    """Inside the user's ``torch.compile`` (no gradients), a solve with events, jumps or a tuple state
    is not the traced loop: the events (and step callbacks) were dropped without a word, and the host loop traced by
    Dynamo took other steps or failed in torch's guards. It now runs untraced behind a graph break:
    the eager states, bit for bit."""
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]])

    def rotate(t, y):
        return y @ rotation

    class Rotation(torch.nn.Module):  # step callbacks: the traced loop never called them
        def __init__(self):
            super().__init__()
            self.accepted = []

        def forward(self, t, y):
            return rotate(t, y)

        def callback_accept_step(self, t, y, dt):
            self.accepted.append(float(t))

    y0, t = torch.tensor([[1.0, 0.0]]), torch.linspace(0.0, 4.0, 5)
    halve = hn.Event(lambda t, y: y[..., 0], on_event=lambda t, y: 0.5 * y)
    watched = Rotation()
    cases = {
        "event": lambda y: hn.solve(rotate, y, t, event=halve).ys,
        "jump_t": lambda y: hn.solve(rotate, y, t, jump_t=[1.5]).ys,
        "tuple": lambda y: hn.odeint(lambda t, s: (-s[1], s[0]), (y[..., 0], y[..., 1]), t)[0],
        "callbacks": lambda y: hn.odeint(watched, y, t),
    }
    with torch.no_grad():
        for name, fn in cases.items():
            torch._dynamo.reset()
            watched.accepted.clear()
            compiled = torch.compile(fn)(y0)
            accepted = list(watched.accepted)
            watched.accepted.clear()
            assert torch.equal(compiled, fn(y0)), name
            assert accepted == watched.accepted, name
    assert watched.accepted, "the callback case accepted no step"


def test_the_traced_loop_hands_the_field_the_host_loops_time_dtype_and_controller(monkeypatch, one_thread):
    """The traced loop (``traced`` stands in for a trace) passes the time in the state's real
    dtype (a float64 time grid with a float32 state, as torchdiffeq and the host loop do; it passed
    float64) and runs the controller's first step and limits: the host loop's states."""

    def decay(t, y):
        assert t.dtype == y.dtype, t.dtype  # (evaluated while the loop body is traced)
        return -y * (1.0 + t)

    calls = []
    graph = whole.odeint_graph
    monkeypatch.setattr("hybrid_node._api.odeint_graph", lambda *args: calls.append(1) or graph(*args))
    y0, t = torch.ones(3, 2), torch.linspace(0.0, 1.0, 4, dtype=torch.float64)
    for controller in (
        hn.PIDController(rtol=1e-6, atol=1e-8),
        hn.PIDController(rtol=1e-6, atol=1e-8, first_step=0.01, max_step=0.2),
    ):
        with torch.no_grad():
            expected = hn.solve(decay, y0, t, controller=controller).ys
            with monkeypatch.context() as inside:
                pretend_compiling(inside)
                traced = hn.solve(decay, y0, t, controller=controller).ys
        torch.testing.assert_close(traced, expected, rtol=1e-6, atol=1e-7)
    assert len(calls) == 2  # both ran as the traced loop


def test_export_of_a_solve_the_traced_loop_cannot_run_says_why(one_thread):
    from hybrid_node.nn.ode_block import ODEBlock, SolveSettings

    settings = SolveSettings(method="rk4", options={"step_size": 0.1, "perturb": True})
    block = ODEBlock(CountingMLP().float(), (0.0, 1.0), train_settings=settings)
    with pytest.raises(ValueError, match=r"torch.export traces a solve as one loop.*perturb=True"):
        torch.export.export(block.eval(), (torch.randn(4, 2),))


@pytest.mark.parametrize(
    ("method", "options", "t"),
    [
        ("rk4", {"step_size": 0.1}, torch.linspace(0.0, 1.0, 4)),  # outputs between grid points
        ("euler", {"step_size": 0.07}, torch.tensor([0.5, 0.2, -0.3])),  # decreasing times
        ("midpoint", {}, torch.linspace(0.0, 2.0, 6)),  # the output times are the grid
        ("rk4", {"step_size": 0.1, "interp": "cubic"}, torch.linspace(0.0, 1.0, 4)),  # Hermite outputs
    ],
)
def test_a_traced_fixed_step_solve_is_the_host_loops(method, options, t, monkeypatch, one_thread):
    """A fixed-step solve inside a trace (``traced`` stands in for it) runs as one ``while_loop``
    (``loop/traced_fixed.py``): the grid from tensor arithmetic, linear or cubic outputs, the host
    loop's states to the last bit."""
    from hybrid_node.loop import traced_fixed

    calls = []
    graph = traced_fixed.odeint_graph_fixed
    monkeypatch.setattr("hybrid_node._api.odeint_graph_fixed", lambda *args: calls.append(1) or graph(*args))
    torch.manual_seed(0)
    field, y0 = CountingMLP(), torch.randn(5, 2)
    with torch.no_grad():
        expected = hn.odeint(field, y0, t, method=method, options=options)
        pretend_compiling(monkeypatch)
        traced = hn.odeint(field, y0, t, method=method, options=options)
    assert calls == [1]
    assert torch.equal(traced, expected)


@pytest.mark.slow
def test_export_of_an_ode_block_with_rk4_gives_the_same_outputs(one_thread):
    from hybrid_node.nn.ode_block import ODEBlock, SolveSettings

    torch.manual_seed(0)
    settings = SolveSettings(method="rk4", options={"step_size": 0.05})
    block = ODEBlock(CountingMLP(), torch.linspace(0.0, 1.0, 7), train_settings=settings, return_trajectory=True)
    block.eval()
    x = torch.randn(8, 2)
    with torch.no_grad():
        program = torch.export.export(block, (x,))
        assert "while_loop" in program.graph_module.code
        for inputs in (x, torch.randn(8, 2)):
            assert torch.equal(program.module()(inputs), block(inputs))


def test_a_traced_fixed_step_solve_with_several_cubic_outputs_in_a_step(monkeypatch, one_thread):
    """Several output times inside one step: the host loop evaluates its Hermite interpolant for all of
    them in one product, the traced loop term by term: the same values to float32 rounding."""
    torch.manual_seed(0)
    field, y0, t = CountingMLP(), torch.randn(5, 2), torch.linspace(0.0, 1.0, 9)
    options = {"step_size": 0.5, "interp": "cubic"}
    with torch.no_grad():
        expected = hn.odeint(field, y0, t, method="rk4", options=options)
        pretend_compiling(monkeypatch)
        traced = hn.odeint(field, y0, t, method="rk4", options=options)
    torch.testing.assert_close(traced, expected, rtol=1e-6, atol=1e-6)
    linear = hn.odeint(field, y0, t, method="rk4", options={"step_size": 0.5})
    assert not torch.allclose(traced, linear, rtol=1e-4, atol=1e-4)  # the outputs are cubic, not linear
