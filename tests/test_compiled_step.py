"""Compiled step attempts (options={"compile": True}) against the eager solver they replace."""

import shutil
import time
import warnings

import pytest
import torch
from conftest import CountingMLP

import hybrid_node as hn
from hybrid_node.loop import compiled_step, inductor

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None,
    reason="torch.compile needs a C++ compiler for CPU tensors",
)


@pytest.fixture
def field(time_mlp):
    return time_mlp


def test_compiled_forward_equals_eager_both_directions(field):
    y0 = torch.randn(8, 2)
    for t in (torch.linspace(0.0, 3.0, 7), torch.linspace(3.0, 0.0, 7)):
        with torch.no_grad():
            eager = hn.solve(field, y0, t, solver=hn.Dopri5(), controller=hn.PIDController(rtol=1e-7, atol=1e-9))
            fast = hn.solve(
                field, y0, t, solver=hn.Dopri5().compiled(), controller=hn.PIDController(rtol=1e-7, atol=1e-9)
            )
        # the same arithmetic, fused: equal up to rounding, and the same step sequence
        torch.testing.assert_close(fast.ys, eager.ys, rtol=1e-11, atol=1e-12)
        assert (fast.stats.nfe, fast.stats.n_accepted, fast.stats.n_rejected) == (
            eager.stats.nfe,
            eager.stats.n_accepted,
            eager.stats.n_rejected,
        )
    with torch.no_grad():  # fixed grid: no error estimate in the graph
        t = torch.linspace(0.0, 3.0, 7)
        eager = hn.odeint(field, y0, t, method="rk4", options={"step_size": 0.1})
        fast = hn.odeint(field, y0, t, method="rk4", options={"step_size": 0.1, "compile": True})
    torch.testing.assert_close(fast, eager, rtol=1e-11, atol=1e-12)
    graphs = compiled_step._CACHE[field]
    assert {key[2] for key in graphs if len(key) == 3} == {False}  # the fixed-grid step graph ran
    # compile=True runs an adaptive solve without autograd as one whole-solve graph (loop/whole.py)
    assert any(key[0] == "whole_solve" for key in graphs)


@pytest.mark.parametrize("method, options", [("dopri5", {}), ("rk4", {"step_size": 0.1})])
def test_compiled_backsolve_gradients_equal_eager(field, method, options):
    y0 = torch.randn(8, 2, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 5)
    target = torch.randn(5, 8, 2)

    def gradients(extra):
        field.zero_grad()
        y0.grad = None
        ys = hn.odeint_adjoint(field, y0, t, rtol=1e-8, atol=1e-10, method=method, options={**options, **extra})
        ((ys - target) ** 2).sum().backward()
        return [y0.grad.clone()] + [p.grad.clone() for p in field.parameters()]

    for fast, eager in zip(gradients({"compile": True}), gradients({})):
        torch.testing.assert_close(fast, eager, rtol=1e-9, atol=1e-11)
    keys = list(compiled_step._CACHE[field])
    if method == "dopri5":  # an adaptive method with a whole-solve graph runs the backward pass in it
        assert any(key[0] == "whole_solve" and key[1][0] == "backsolve" for key in keys)
    else:  # fixed steps: the per-step graph of the augmented field
        assert any(isinstance(key[0], tuple) and key[0][0] == "backsolve" for key in keys)


def test_direct_backprop_runs_one_attempt_graph_for_every_attempt_and_solve(float64_default, one_thread):
    """A differentiated solve from a data y0 (no grad) with a counting field: the first attempt
    (whose y does not require grad), the field's changing counter and each new tolerance (a Python
    float, a constant of the graph) used to cost a graph each; now one graph serves all, the
    counter counts every evaluation as eagerly, and the gradients are the eager solver's."""
    torch.manual_seed(0)
    field = CountingMLP()
    y0, t, target = torch.randn(8, 2), torch.linspace(0.0, 2.0, 5), torch.randn(5, 8, 2)

    def train_step(options, rtol, atol):
        field.zero_grad()
        field.nfe = 0
        ys = hn.odeint(field, y0, t, rtol=rtol, atol=atol, options=options)
        ((ys - target) ** 2).sum().backward()
        return ys.detach(), [p.grad.clone() for p in field.parameters()], field.nfe

    stats = torch._dynamo.utils.counters["stats"]
    before = stats["unique_graphs"]
    for tolerances in [(1e-7, 1e-9), (1e-7, 1e-9), (1e-6, 1e-6)]:  # equal rtol and atol: two inputs still
        eager = train_step({}, *tolerances)
        ys, grads, nfe = train_step({"compile": True}, *tolerances)
        torch.testing.assert_close(ys, eager[0], rtol=1e-11, atol=1e-12)
        for got, want in zip(grads, eager[1]):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
        assert nfe == eager[2]
    assert stats["unique_graphs"] - before == 1


def test_compile_option_is_checked():
    with pytest.raises(ValueError, match="explicit Runge-Kutta"):
        hn.odeint(
            lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 3), method="explicit_adams", options={"compile": True}
        )
    with pytest.raises(ValueError, match="per_sample"):
        hn.odeint(
            lambda t, y: -y, torch.ones(2, 2), torch.linspace(0, 1, 3), options={"compile": True, "per_sample": True}
        )


class GradientField(torch.nn.Module):
    """dy/dt = -w * y^3 through autograd.grad of an energy, as an exact CNF trace builds its own graph."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, t, y):
        with torch.enable_grad():
            z = y if y.requires_grad else y.detach().requires_grad_(True)
            energy = self.w * (z**4).sum() / 4
            return -torch.autograd.grad(energy, z, create_graph=True)[0]


def _gradient_field_solves(odeint):
    """A :class:`GradientField`, its y0 and times, and ``solve(options) -> (ys, dL/dw)`` by ``odeint``."""
    field = GradientField()
    y0 = torch.linspace(0.5, 1.5, 4)
    t = torch.linspace(0.0, 1.0, 3)

    def solve(options):
        field.w.grad = None
        ys = odeint(field, y0, t, rtol=1e-9, atol=1e-11, options=options)
        ys.pow(2).sum().backward()
        return ys.detach(), field.w.grad.clone()

    return field, y0, t, solve


def test_field_taking_its_own_gradient_in_an_adjoint_compiles_its_steps(float64_default, one_thread):
    field, y0, t, solve = _gradient_field_solves(hn.odeint_adjoint)

    # the whole-solve graphs refuse the field (autograd.grad inside a loop body; torch.func refuses
    # requires_grad_), reported once; the forward pass's per-step graphs trace its autograd.grad and
    # the backward pass's take the augmented field written with autograd.grad (the alternative)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ys, grad = solve({"compile": True})
    reports = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(reports) == 1 and "eagerly where those are refused too" in str(reports[0].message)
    graphs = compiled_step._CACHE[field]
    taken = [key[0] for key, value in graphs.items() if key[-1] == "alternative" and value is True]
    assert len(taken) == 1 and taken[0][0][0] == "backsolve" and graphs[taken[0]] is not None
    per_step = [graph for key, graph in graphs.items() if key[0] != "whole_solve" and key[-1] in (True, "field")]
    assert len(per_step) == 4 and all(callable(graph) for graph in per_step)  # forward and backward: compiled
    exact = y0 / torch.sqrt(1 + 2 * y0**2 * t[:, None])  # dy/dt = -y^3 at w = 1
    torch.testing.assert_close(ys, exact, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(grad, solve({})[1], rtol=1e-8, atol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        solve({"compile": True})  # remembered: no second attempt, no second warning


def test_a_field_taking_its_own_gradient_is_one_graph_per_attempt_with_direct_backprop(float64_default, one_thread):
    _, _, _, solve = _gradient_field_solves(hn.odeint)

    torch._dynamo.reset()
    stats = torch._dynamo.utils.counters["stats"]
    before = stats["unique_graphs"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiled: no fallback
        ys, grad = solve({"compile": True})
    # torch.autograd.grad is traced into the attempt's graph: one graph, not pieces of every stage
    assert stats["unique_graphs"] - before == 1
    eager_ys, eager_grad = solve({})
    torch.testing.assert_close(ys, eager_ys, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-10, atol=1e-12)


class BreakingField(torch.nn.Module):
    """dy/dt = -y, with a host branch on the state's values that splits a compiled graph."""

    def forward(self, t, y):
        if float(y.abs().max()) > 1e6:  # a graph break: the value is read on the host
            raise RuntimeError("diverged")
        return -y


def test_a_field_the_compiler_would_split_runs_eagerly_after_one_warning(float64_default, one_thread):
    y0 = torch.linspace(0.5, 1.5, 4)
    t = torch.linspace(0.0, 1.0, 3)
    field = BreakingField()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ys = hn.odeint(field, y0, t, rtol=1e-9, atol=1e-11, options={"compile": True})
    # the whole-solve graph and then the per-step graphs refuse it (one report for both)
    reports = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(reports) == 1 and "eagerly where those are refused too" in str(reports[0].message)
    torch.testing.assert_close(ys, y0 * torch.exp(-t[:, None]), rtol=1e-8, atol=1e-10)
    assert all(graph is None for graph in compiled_step._CACHE[field].values() if callable(graph) or graph is None)


def test_compiled_graphs_use_the_exp_form_of_tanh_unless_torch_is_told_not_to(monkeypatch):
    """The solver's graphs set Inductor's decomposed tanh (docs/compiled/cpu_kernels.md, "tanh on the CPU");
    torch's own environment variable turns it off; CUDA graphs are asked for only when wanted and the
    C++ wrapper only on the CPU; the loop operators are marked cacheable for torch's on-disk caches."""
    from hybrid_node.loop.inductor import inductor_options

    monkeypatch.delenv("TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH", raising=False)
    base = inductor_options()
    assert base["cpp.use_decompose_tanh"] is True
    assert "triton.cudagraphs" not in base and "cpp_wrapper" not in base
    assert set(base["unsafe_marked_cacheable_functions"]) == {
        "torch.ops.higher_order.while_loop",
        "torch.ops.higher_order.cond",
    }
    assert inductor_options(cuda_graphs=True)["triton.cudagraphs"] is True
    assert inductor_options(cpu=True)["cpp_wrapper"] is True
    assert inductor_options(cpu=True)["cpp_wrapper_build_separate"] is True
    assert inductor_options(cpu=True)["cpp.enable_floating_point_contract_flag"] == "fast"
    assert "cpp.enable_floating_point_contract_flag" not in base
    monkeypatch.setenv("TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH", "0")
    assert inductor_options()["cpp.use_decompose_tanh"] is False


class _Build:
    """A stand-in for one of Inductor's C++ builds: records when it ran."""

    def __init__(self, path, log, seconds=0.3):
        self.path, self.log, self.seconds = path, log, seconds

    def get_target_file_path(self):
        return str(self.path)

    def build(self):
        start = time.perf_counter()
        time.sleep(self.seconds)
        self.path.write_text("")
        self.log[self.path.name] = (start, time.perf_counter())


def test_the_wrapper_and_kernels_of_a_cpu_graph_compile_at_once_then_link(tmp_path, monkeypatch):
    """:func:`parallel_cpp_builds` lends torch a worker that runs the two compilations side by side
    and links after both; other build lists, and files already built, are left to torch's order."""
    from torch._inductor import codecache

    from hybrid_node.loop.inductor import parallel_cpp_builds

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    serial = codecache._worker_compile_cpp
    log: dict = {}
    builds = [_Build(tmp_path / name, log) for name in ("main.o", "kernels.o", "linked.so")]
    with parallel_cpp_builds():
        worker = codecache._worker_compile_cpp
        assert worker is not serial
        worker(str(tmp_path / "lock"), builds)
    assert codecache._worker_compile_cpp is serial
    (main_start, main_end), (kernels_start, kernels_end) = log["main.o"], log["kernels.o"]
    assert max(main_start, kernels_start) < min(main_end, kernels_end)  # they overlapped
    assert log["linked.so"][0] >= max(main_end, kernels_end)
    log.clear()
    worker(str(tmp_path / "lock"), builds)  # every file exists: nothing is built again
    assert log == {}
    one = [_Build(tmp_path / "alone.so", log, seconds=0.0)]
    worker(str(tmp_path / "lock"), one)  # a single build: torch's own worker
    assert set(log) == {"alone.so"}


_PATTERNS_PROBE = """
import torch, hybrid_node as hn
from torch._inductor.fx_passes import joint_graph
from hybrid_node.loop import whole
torch.set_num_threads(1)
init = joint_graph.lazy_init
field = torch.nn.Linear(2, 2)
with torch.no_grad():
    hn.odeint(lambda t, y: field(y), torch.ones(3, 2), torch.linspace(0, 1, 3), options={"compile": True})
assert whole.COMPILE_SECONDS, "the solve compiled no whole-solve graph"
assert joint_graph.lazy_init is init
print(init.cache_info().currsize)
torch.compile(lambda x: torch.sin(x) + 1)(torch.ones(3))
print(init.cache_info().currsize)
"""


def test_the_solver_graphs_leave_the_pattern_matchers_patterns_unbuilt_and_other_graphs_build_them(tmp_path):
    """With the pattern matcher off (the solver's CPU graphs), :func:`inductor.patterns_left_unregistered`
    keeps torch from building the joint-graph patterns; a graph of the user's compiled afterwards in
    the same process (matcher on) still builds them. A new process: torch builds them once per process."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _PATTERNS_PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["0", "1"]


def test_the_first_cpu_graph_starts_the_instruction_set_detection_in_the_background(monkeypatch):
    """Inductor's detection of the vector instruction set (probe processes, ~1 s once per process)
    runs in a thread started when the first CPU graph is set up, once, and fills torch's own cache."""
    import threading

    calls: list = []
    monkeypatch.setattr(inductor, "_ISA_DETECTION", [])
    monkeypatch.setattr(
        "torch._inductor.cpu_vec_isa.pick_vec_isa", lambda: calls.append(threading.current_thread().name)
    )
    inductor.compile_for(lambda x: x + 1, cpu=False)
    assert inductor._ISA_DETECTION == []  # not for other devices
    inductor.compile_for(lambda x: x + 1, cpu=True)
    inductor.compile_for(lambda x: x + 2, cpu=True)
    (thread,) = inductor._ISA_DETECTION
    thread.join(10)
    assert calls == ["hybrid_node-isa-detection"]


def test_cpu_graphs_add_a_bias_after_the_product_and_sum_narrow_products_along_rows(one_thread, monkeypatch):
    from torch._inductor.decomposition import select_decomp_table
    from torch._inductor.utils import fresh_cache

    w, x = torch.randn(16, 8), torch.randn(32, 8)
    unfused = inductor._unfused_addmm(None)
    for bias in (torch.randn(16), torch.randn(16, dtype=torch.float64)):
        w64, x64 = w.to(bias.dtype), x.to(bias.dtype)
        torch.testing.assert_close(unfused(bias, x64, w64.t()), torch.addmm(bias, x64, w64.t()))
        # a narrow layer (2 columns): row sums with the bias added to each
        torch.testing.assert_close(unfused(bias[:2], x64, w64[:2].t()), torch.addmm(bias[:2], x64, w64[:2].t()))
    # anything else goes to the table's own entry (here: none, so the operator is kept)
    assert unfused(torch.randn(16), x, w.t(), beta=2) is NotImplemented
    assert unfused(torch.randn(32, 16), x, w.t()) is NotImplemented
    assert unfused(torch.randn(16).bfloat16(), x.bfloat16(), w.t().bfloat16()) is NotImplemented

    narrow = inductor._narrow_mm(None)
    for n in (1, 2, 4):
        for dtype in (torch.float32, torch.float64):
            a, b = torch.randn(32, 64, dtype=dtype), torch.randn(n, 64, dtype=dtype).t()
            torch.testing.assert_close(narrow(a, b), a @ b)
    assert narrow(x, torch.randn(8, 5)) is NotImplemented  # wider: the GEMM
    assert narrow(torch.randn(8, 32).t(), torch.randn(8, 2)) is NotImplemented  # strided rows: the GEMM
    assert narrow(x.bfloat16(), torch.randn(8, 2).bfloat16()) is NotImplemented

    seen: dict[str, set] = {"addmm": set(), "mm": set()}

    def spy(name, make):
        def build(fallback):
            inner = make(fallback)

            def op(a, b, *args, **kwargs):
                seen[name].add(tuple(b.shape) if name == "mm" else tuple(a.shape))
                return inner(a, b, *args, **kwargs)

            return op

        return build

    monkeypatch.setattr(inductor, "_unfused_addmm", spy("addmm", inductor._unfused_addmm))
    monkeypatch.setattr(inductor, "_narrow_mm", spy("mm", inductor._narrow_mm))
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    original = select_decomp_table().get(torch.ops.aten.addmm.default)
    with torch.no_grad(), fresh_cache():
        out = inductor.compile_for(inductor.own_code(lambda y: net(y)), cpu=True)(x)
    # the compiler met both layers' addmm and took the sums; the 16 -> 2 layer became row sums with
    # its bias inside (no product left for the mm entry), the 8 -> 16 layer a product and a sum
    assert seen["addmm"] == {(16,), (2,)} and seen["mm"] == {(8, 16)}
    torch.testing.assert_close(out, net(x), rtol=0, atol=1e-6)  # rational tanh: a few ulp
    assert select_decomp_table().get(torch.ops.aten.addmm.default) is original  # the user's graphs: unchanged


def test_errors_raised_while_the_compiler_traces_are_its_failures():
    """``compiler_failed``: torch's compiler errors and any error raised from Dynamo's tracer (torch
    2.13 raises bare AssertionErrors there) make the field run by other means; an error of the
    computation itself does not."""
    import os

    from hybrid_node.loop.compiled_step import compiler_failed

    def raised(code: str, filename: str) -> Exception:
        try:
            exec(compile(code, filename, "exec"), {})
        except Exception as e:
            return e
        raise AssertionError("nothing raised")

    tracer = os.path.join("site-packages", "torch", "_dynamo", "symbolic_convert.py")
    assert compiler_failed(torch._dynamo.exc.Unsupported("no"))
    assert compiler_failed(raised("assert False, 'Expected FakeTensor'", tracer))
    assert not compiler_failed(raised("raise ValueError('shape mismatch')", "user_field.py"))


def test_a_function_made_anew_for_every_solve_is_warned_about(float64_default, one_thread, monkeypatch):
    """The graphs are cached per field object: a lambda defined inside the training step compiles
    anew for every solve. The third function object of one code to compile gets a warning naming
    it; a field defined once never does."""
    from hybrid_node.loop import compiled_step

    monkeypatch.setattr(compiled_step, "_FUNCTIONS", {})
    monkeypatch.setattr(
        compiled_step, "_compile", lambda fn, mode=None, compiler="in_process": fn
    )  # no compilation needed
    y0, t = torch.ones(3, 2), torch.linspace(0.0, 1.0, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        options = {"compile": True, "step_size": 0.5}
        for scale in (0.5, 0.6, 0.7):
            hn.odeint(lambda t, y, s=scale: -s * y, y0, t, method="rk4", options=options)

        def decay(t, y):
            return -y

        for _ in range(3):
            hn.odeint(decay, y0, t, method="rk4", options=options)
    messages = [str(w.message) for w in caught if "function objects" in str(w.message)]
    assert len(messages) == 1 and "<lambda>" in messages[0] and "Define the field once" in messages[0]
