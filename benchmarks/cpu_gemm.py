"""Time the solver's own float32 product kernel against torch's ``mm`` for a neural field's shapes.

Builds ``hybrid_node.loop.cpu_gemm.SOURCE`` with ``g++`` (the flags Inductor gives a 512-bit
kernel file) and calls it through ``ctypes`` on one thread, interleaved with ``torch.mm`` into
a preallocated output. Prints one row per shape: median microseconds of each and their ratio.

    python -m benchmarks.cpu_gemm [--repeats 2000]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from hybrid_node.loop import cpu_gemm

from ._cli import positive_int

#: (name, m, k, n, a transposed, b transposed): the mlp field's layers and its backward products,
#: and a product at the kernel's size limit (``cpu_gemm.LARGEST`` elements per operand)
SHAPES = [
    ("64 -> 64 layer, x @ w.t()", 512, 64, 64, False, True),
    ("2 -> 64 layer", 512, 2, 64, False, True),
    ("weight gradient, g.t() @ x", 64, 512, 64, True, False),
    ("input gradient, g @ w", 512, 64, 64, False, False),
    ("100 -> 50 layer", 512, 100, 50, False, True),
    ("1024 -> 1024 layer (the largest taken)", 1024, 1024, 1024, False, True),
]


#: the instruction sets Inductor compiles a 512-bit kernel file for
AVX512_FLAGS = ("-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma")


def build(folder: Path, flags: Sequence[str] = AVX512_FLAGS) -> Callable:
    """``cpu_gemm.SOURCE`` built in ``folder`` by ``g++`` with ``flags`` (``-O3``, OpenMP); its function."""
    source = folder / "sgemm.cpp"
    source.write_text(cpu_gemm.SOURCE.replace("{name}", "sgemm"))
    library = folder / "sgemm.so"
    subprocess.run(["g++", "-O3", "-fopenmp", *flags, "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    return ctypes.CDLL(str(library)).sgemm


def arguments(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, threads: int = 1) -> list:
    """The kernel's C arguments for ``out = a @ b`` (float32, ``out`` contiguous)."""
    sizes = (a.shape[0], b.shape[1], a.shape[1], a.storage_offset(), *a.stride(), b.storage_offset(), *b.stride())
    pointers = (x.untyped_storage().data_ptr() for x in (a, b))
    return [*map(ctypes.c_void_p, pointers), ctypes.c_void_p(out.data_ptr()), *map(ctypes.c_int64, (*sizes, threads))]


def _median_us(fn, repeats: int) -> float:
    for _ in range(100):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=2000, help="timed calls of each, in 5 rounds")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error(f"argument --repeats: at least 5 (one per interleaved round), got {args.repeats}")
    if not cpu_gemm.supported():  # the kernel is built with 512-bit instructions: another CPU would trap
        parser.error(
            "this CPU has no AVX-512 (Inductor picks no 512-bit vector code here): the kernel serves only those"
        )
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        kernel = build(Path(folder))
        print("| product | m x k x n | torch.mm (us) | own kernel (us) | ratio |\n| --- | --- | --- | --- | --- |")
        for name, m, k, n, a_t, b_t in SHAPES:
            a = torch.randn(k, m).t() if a_t else torch.randn(m, k)
            b = torch.randn(n, k).t() if b_t else torch.randn(k, n)
            out = torch.empty(m, n)
            call = arguments(a, b, out)

            def own(call=call):
                kernel(*call)

            def library(a=a, b=b, out=out):
                torch.mm(a, b, out=out)

            library_us, own_us = [], []
            for _ in range(5):  # interleaved rounds
                library_us.append(_median_us(library, args.repeats // 5))
                own_us.append(_median_us(own, args.repeats // 5))
            lib, mine = statistics.median(library_us), statistics.median(own_us)
            print(f"| {name} | {m} x {k} x {n} | {lib:.1f} | {mine:.1f} | {mine / lib:.2f} |")


if __name__ == "__main__":
    main()
