"""A float32 matrix product of the solver's own for CPU graphs on cores with 512-bit vectors.

A neural field's linear layers are small products (a batch of 512 states through a 64x64 weight)
repeated in every stage of every step. Inside the solver's compiled graphs Inductor leaves them to
the BLAS library torch links (MKL), which on some AVX-512 CPUs runs a 256-bit kernel: on an AMD
Zen 5 core MKL's ``sgemm`` took 40 us for 512x64 @ 64x64, this kernel 18 us (docs/compiled/cpu_kernels.md,
"An own product kernel"). While :func:`own_products` is open, Inductor lowers a float32 CPU ``mm``
to a call of :data:`SOURCE`, generated into the graph's kernel file and compiled with it; other
products keep torch's lowering.

The kernel is the register-blocked inner kernel of Goto's algorithm: each 6-row by 64-column tile
of the output is accumulated in 24 vector registers, one rank-1 update per step along the inner
dimension (a row of ``b``, 4 vector loads, times 6 broadcast elements of ``a``), and stored once.
``b`` is first copied into rows of contiguous columns when its columns are strided (an
``nn.Linear`` weight seen as ``w.t()``); ``a`` may have any strides. Without cache blocking it is
meant for the small products of neural fields: products larger than :data:`LARGEST` keep the
library's kernel. Each output element is one sequence of fused multiply-adds along the inner
dimension, so results agree with the library's to float32 rounding (not bit for bit).

Reference: K. Goto and R. A. van de Geijn, "Anatomy of high-performance matrix multiplication",
ACM TOMS 34(3), 2008; F. G. Van Zee and R. A. van de Geijn, "BLIS: A framework for rapidly
instantiating BLAS functionality", ACM TOMS 41(3), 2015 (the micro-kernel and its register tile).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import cast

import sympy
import torch
from torch._inductor import ir
from torch._inductor.lowering import lowerings
from torch._inductor.select_algorithm import realize_inputs
from torch._inductor.utils import parallel_num_threads
from torch._inductor.virtualized import V

#: the largest ``m * k``, ``k * n`` and ``m * n`` handed to this kernel (larger ones keep the library's)
LARGEST = 1 << 20

#: the fewest multiply-adds (``m * n * k``) run on more than one thread (~2.5 us on one Zen 5 core)
PARALLEL = 1 << 18

#: the kernel's C++; ``{name}`` is the function's name in the graph
SOURCE = r"""
#include <cstdint>
#include <vector>
#ifndef HYBRID_NODE_SGEMM_TILES
#define HYBRID_NODE_SGEMM_TILES
#if defined(__AVX512F__)
#include <immintrin.h>
namespace hybrid_node_sgemm {
// one rows x (16 * vectors) tile of c = a @ b; the last vector's columns are masked by `tail`
template <int rows, int vectors>
inline void tile(const float* a, int64_t sam, int64_t sak, const float* b, int64_t ldb,
                 float* c, int64_t ldc, int64_t k, __mmask16 tail) {
  __m512 acc[rows][vectors];
#pragma GCC unroll 16
  for (int r = 0; r < rows; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < vectors; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < k; ++p) {
    __m512 row[vectors];
#pragma GCC unroll 16
    for (int v = 0; v < vectors; ++v)
      row[v] = v == vectors - 1 ? _mm512_maskz_loadu_ps(tail, b + p * ldb + 16 * v)
                                : _mm512_loadu_ps(b + p * ldb + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < rows; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * sam + p * sak]);
#pragma GCC unroll 16
      for (int v = 0; v < vectors; ++v) acc[r][v] = _mm512_fmadd_ps(x, row[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < rows; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < vectors; ++v) {
      if (v == vectors - 1) _mm512_mask_storeu_ps(c + r * ldc + 16 * v, tail, acc[r][v]);
      else _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
    }
}

// the columns [0, 16 * vectors) of c for all m rows: 6 rows at a time, the last m % 6 one by one
template <int vectors>
void panel(const float* a, int64_t sam, int64_t sak, const float* b, int64_t ldb, float* c,
           int64_t ldc, int64_t m, int64_t k, __mmask16 tail) {
  int64_t i = 0;
  for (; i + 6 <= m; i += 6) tile<6, vectors>(a + i * sam, sam, sak, b, ldb, c + i * ldc, ldc, k, tail);
  for (; i < m; ++i) tile<1, vectors>(a + i * sam, sam, sak, b, ldb, c + i * ldc, ldc, k, tail);
}

// c (m x n, row stride n) = a @ b for m rows: the columns in panels of up to 64
inline void rows(const float* a, int64_t sam, int64_t sak, const float* b, int64_t ldb, float* c,
                 int64_t n, int64_t m, int64_t k) {
  for (int64_t j = 0; j < n; j += 64) {
    const int64_t width = n - j < 64 ? n - j : 64;
    const __mmask16 tail = width % 16 ? static_cast<__mmask16>((1u << (width % 16)) - 1) : 0xFFFF;
    switch ((width + 15) / 16) {
      case 4: panel<4>(a, sam, sak, b + j, ldb, c + j, n, m, k, tail); break;
      case 3: panel<3>(a, sam, sak, b + j, ldb, c + j, n, m, k, tail); break;
      case 2: panel<2>(a, sam, sak, b + j, ldb, c + j, n, m, k, tail); break;
      default: panel<1>(a, sam, sak, b + j, ldb, c + j, n, m, k, tail); break;
    }
  }
}
}  // namespace hybrid_node_sgemm
#endif
#endif

// c (m x n, contiguous) = a (m x k at offset oa, strides sam, sak) @ b (k x n at offset ob,
// strides sbk, sbn), the rows split into one block per thread (a multiple of 6 rows each)
extern "C" void {name}(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k,
                       int64_t oa, int64_t sam, int64_t sak, int64_t ob, int64_t sbk, int64_t sbn,
                       int64_t threads) {
  a += oa;
  b += ob;
#if defined(__AVX512F__)
  int64_t ldb = sbk;
  if (sbn != 1) {  // rows of contiguous columns, read by every row tile
    thread_local std::vector<float> packed;
    packed.resize(static_cast<size_t>(k * n));
    for (int64_t p = 0; p < k; ++p)
      for (int64_t j = 0; j < n; ++j) packed[p * n + j] = b[p * sbk + j * sbn];
    b = packed.data();
    ldb = n;
  }
  if (threads <= 1) {  // (an OpenMP region of one thread still costs a runtime call)
    hybrid_node_sgemm::rows(a, sam, sak, b, ldb, c, n, m, k);
    return;
  }
  const int64_t block = ((m + threads - 1) / threads + 5) / 6 * 6;
#pragma omp parallel for num_threads(threads)
  for (int64_t i = 0; i < m; i += block)
    hybrid_node_sgemm::rows(a + i * sam, sam, sak, b, ldb, c + i * n, n, m - i < block ? m - i : block, k);
#else
  (void)threads;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float s = 0.0f;
      for (int64_t p = 0; p < k; ++p) s += a[i * sam + p * sak] * b[p * sbk + j * sbn];
      c[i * n + j] = s;
    }
#endif
}
"""

#: names the kernel and its lowering in the graphs' cache tag (:func:`~.inductor.inductor_options`)
TAG = "own-sgemm-v2-" + hashlib.sha256(SOURCE.encode()).hexdigest()[:12]


def supported() -> bool:
    """Whether Inductor generates 512-bit vector code on this CPU (the kernel's instruction set)."""
    from torch._inductor.cpu_vec_isa import VecAVX512, pick_vec_isa

    return isinstance(pick_vec_isa(), VecAVX512)


@contextlib.contextmanager
def own_products():
    """Inductor lowers float32 CPU products to :data:`SOURCE` while the context is open.

    Inductor's ``aten.mm`` lowering is replaced for the duration and restored after (a compilation
    running in another thread at the same moment would use the kernel too).
    """
    op = torch.ops.aten.mm.default
    library = lowerings[op]

    def mm(mat1, mat2, out_dtype=None, *, layout=None):
        if out_dtype is None and layout is None:
            node = _gemm(mat1, mat2)
            if node is not None:
                return node
        return library(mat1, mat2, out_dtype, layout=layout)

    lowerings[op] = mm
    try:
        yield
    finally:
        lowerings[op] = library


def _gemm(mat1, mat2) -> ir.TensorBox | None:
    """The product as a call of the kernel, or None where the library's kernel is kept (another
    dtype or device, a graph with Python's wrapper, or a product larger than :data:`LARGEST`).

    Sizes, offsets and strides may be symbolic (a graph compiled for any batch size): they enter the
    call as the wrapper's expressions, and the size limit and the thread count are decided on the
    sizes the graph was traced with.
    """
    if not V.graph.cpp_wrapper:  # the call below is C++ (every solver graph on the CPU has the C++ wrapper)
        return None
    if mat1.get_device().type != "cpu" or not mat1.get_dtype() == mat2.get_dtype() == torch.float32:
        return None
    (m, k), n = mat1.get_size(), mat2.get_size()[1]
    mh, kh, nh = (V.graph.sizevars.optimization_hint(x, fallback=LARGEST) for x in (m, k, n))
    if min(mh, nh, kh) < 1 or max(mh * kh, kh * nh, mh * nh) > LARGEST:
        return None
    a, b = realize_inputs(mat1, mat2)
    numbers = [m, n, k]
    for x in (a, b):
        with contextlib.suppress(NotImplementedError):
            ir.as_storage_and_layout(x, freeze=True)  # the kernel reads the strides seen now
        numbers += [x.get_layout().offset, *x.get_stride()]
    # as Inductor's own kernels, on its thread count; a small product stays on one thread
    numbers.append(parallel_num_threads() if mh * nh * kh >= PARALLEL else 1)
    layout = ir.FixedLayout(a.get_device(), torch.float32, [m, n])
    return ir.TensorBox.create(_Product(layout, [a, b], tuple(numbers)))


class _Product(ir.ExternKernelOut):
    """``c = a @ b`` by the kernel of :data:`SOURCE`, defined once in the graph's kernel file."""

    def __init__(self, layout: ir.Layout, inputs: list, numbers: tuple) -> None:
        super().__init__(layout, inputs, python_kernel_name="hybrid_node_sgemm")
        self.numbers = numbers  # the kernel's integer arguments: sizes, offsets and strides, threads

    def codegen(self, wrapper) -> None:
        name = _define(wrapper)
        # a view is read through its buffer's pointer (its name) with its offset and strides
        buffers = [cast(ir.IRNode, x).get_name() for x in self.inputs]
        numbers = [wrapper.codegen_sizevar(sympy.sympify(x)) for x in self.numbers]
        args = [*buffers, self.get_name(), *numbers]
        types = ["const float*", "const float*", "float*"] + ["int64_t"] * len(self.numbers)
        wrapper.generate_kernel_call(name, args, triton=False, arg_types=types)


def _define(wrapper) -> str:
    """The kernel's name in the graph, defining it in the graph's kernel file on the first call."""
    if SOURCE not in wrapper.src_to_kernel:  # shared by the loop bodies' wrappers and their graph's
        name = f"cpp_hybrid_node_sgemm_{wrapper.next_kernel_suffix()}"
        wrapper.src_to_kernel[SOURCE] = name
        source = SOURCE.replace("{name}", name)
        start = source.index('extern "C"')
        declaration = source[start : source.index(")", start) + 1] + ";\n"
        wrapper.define_kernel(name, source, gpu=False, cpp_definition=declaration)
    return wrapper.src_to_kernel[SOURCE]
