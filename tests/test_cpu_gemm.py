"""The solver's own float32 product for CPU graphs (hybrid_node/loop/cpu_gemm.py)."""

import shutil

import pytest
import torch
from torch._inductor.utils import run_and_get_cpp_code

from benchmarks.cpu_gemm import AVX512_FLAGS, arguments, build
from hybrid_node.loop import cpu_gemm
from hybrid_node.loop.inductor import compile_for, inductor_options, own_code

needs_avx512 = pytest.mark.skipif(not cpu_gemm.supported(), reason="the kernel serves CPUs with 512-bit vectors")

#: (m, k, n, a transposed, b transposed): row tiles of 6 and 1-5 rows, 1-4 vectors and masked
#: tails, more than one 64-column panel, k = 1, a long inner dimension, both operand layouts
SHAPES = [
    (512, 64, 64, False, True),
    (64, 512, 64, True, False),
    (7, 3, 5, False, False),
    (13, 1, 17, True, True),
    (6, 20, 64, False, False),
    (31, 9, 130, False, True),
    (1, 70, 48, True, False),
]


def _operands(m, k, n, a_t, b_t, dtype=torch.float32):
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    a = torch.randn(k, m, generator=g, dtype=dtype).t() if a_t else torch.randn(m, k, generator=g, dtype=dtype)
    b = torch.randn(n, k, generator=g, dtype=dtype).t() if b_t else torch.randn(k, n, generator=g, dtype=dtype)
    return a, b


def _bound(a, b):
    """A float32 error bound of a @ b: k roundings of at most half an ulp on |a| @ |b| (Higham, 3.5)."""
    k = a.shape[1]
    return k * 2.0**-24 * (a.abs().double() @ b.abs().double()) + 1e-30


def _call(kernel, a, b, threads=1):
    c = torch.full((a.shape[0], b.shape[1]), float("nan"))
    kernel(*arguments(a, b, c, threads))
    return c


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the kernel")
@pytest.mark.parametrize("vector", [True, False], ids=["avx512", "scalar"])
def test_kernel_source_multiplies_any_strides_within_the_rounding_bound(tmp_path, vector):
    if vector and not cpu_gemm.supported():
        pytest.skip("the 512-bit build needs a CPU with 512-bit vectors")
    kernel = build(tmp_path, AVX512_FLAGS if vector else ["-mno-avx512f"])
    for m, k, n, a_t, b_t in SHAPES:
        a, b = _operands(m, k, n, a_t, b_t)
        want = a.double() @ b.double()
        for threads in (1, 3):
            got = _call(kernel, a, b, threads)
            assert ((got.double() - want).abs() <= _bound(a, b)).all(), (m, k, n, a_t, b_t, threads)


def _product(a, b):
    return a @ b


def _compiled_product(a, b):
    fn = compile_for(own_code(_product), cpu=True, fullgraph=True, options=inductor_options(cpu=True))
    out, code = run_and_get_cpp_code(fn, a, b)
    return out, code


@needs_avx512
def test_cpu_graphs_compute_float32_products_with_the_kernel(one_thread):
    for m, k, n, a_t, b_t in [s for s in SHAPES if s[1] > 1]:  # torch writes k = 1 as a broadcast product
        a, b = _operands(m, k, n, a_t, b_t)
        torch._dynamo.reset()
        out, code = _compiled_product(a, b)
        assert "cpp_hybrid_node_sgemm" in code and "mm_out" not in code, (m, k, n)
        assert ((out.double() - a.double() @ b.double()).abs() <= _bound(a, b)).all()
    from torch._inductor.lowering import lowerings

    assert lowerings[torch.ops.aten.mm.default].__name__ == "tuned_mm"  # torch's lowering is back


@needs_avx512
def test_graphs_for_any_batch_size_pass_the_sizes_to_the_kernel(one_thread):
    fn = compile_for(own_code(_product), cpu=True, fullgraph=True, dynamic=True, options=inductor_options(cpu=True))
    torch._dynamo.reset()
    w = torch.randn(40, 64)
    for m in (512, 13, 1):  # symbolic rows: 512, then a 13-row last batch (one (m,) size: 1 is its own)
        x = torch.randn(m, 64)
        out, code = run_and_get_cpp_code(fn, x, w.t())
        assert ((out.double() - x.double() @ w.t().double()).abs() <= _bound(x, w.t())).all(), m
        call = next(line for line in code.splitlines() if "cpp_hybrid_node_sgemm_0((" in line)
        rows = call.split("data_ptr()), ")[-1].split(",")[0]  # the first number: m
        assert rows == "1L" if m == 1 else not rows.rstrip("L").isdigit(), call


def _shifted_product(x, w):
    return x[1:, 2:] @ w[3:].t()


@needs_avx512
def test_views_at_an_offset_into_their_buffer_are_read_from_there(one_thread):
    x, w = torch.randn(70, 40), torch.randn(23, 38)
    fn = compile_for(own_code(_shifted_product), cpu=True, fullgraph=True, options=inductor_options(cpu=True))
    torch._dynamo.reset()
    out, code = run_and_get_cpp_code(fn, x, w)
    assert "cpp_hybrid_node_sgemm" in code
    a, b = x[1:, 2:], w[3:].t()
    assert ((out.double() - a.double() @ b.double()).abs() <= _bound(a, b)).all()


@needs_avx512
def test_large_products_and_float64_keep_the_library_kernel(one_thread):
    big = torch.randn(2048, 1024), torch.randn(1024, 64)  # m * k above LARGEST
    wide = _operands(512, 64, 64, False, True, torch.float64)
    for a, b in (big, wide):
        torch._dynamo.reset()
        out, code = _compiled_product(a, b)
        assert "cpp_hybrid_node_sgemm" not in code and "mm_out" in code
        torch.testing.assert_close(out, a @ b)


@needs_avx512
def test_graphs_split_large_products_over_the_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, b = _operands(512, 64, 64, False, True)
        torch._dynamo.reset()
        out, code = _compiled_product(a, b)
    finally:
        torch.set_num_threads(previous)
    assert "cpp_hybrid_node_sgemm" in code and ", 2);" in code  # the thread count, the last argument
    assert ((out.double() - a.double() @ b.double()).abs() <= _bound(a, b)).all()


@needs_avx512
def test_environment_variable_keeps_the_library_kernel(monkeypatch, one_thread):
    monkeypatch.setenv("HYBRID_NODE_OWN_SGEMM", "0")
    a, b = _operands(512, 64, 64, False, True)
    torch._dynamo.reset()
    out, code = _compiled_product(a, b)
    assert "cpp_hybrid_node_sgemm" not in code and "mm_out" in code
    torch.testing.assert_close(out, a @ b)
