"""How the solver's graphs are compiled: Inductor's settings, the CPU backend and what it changes.

Every graph a solve compiles (whole-solve loops, per-step attempts, device-loop runs) goes through
:func:`compile_for` with :func:`inductor_options`. On the CPU it goes through :func:`_cpu_backend`,
which adds the solver's decompositions (:func:`cpu_decompositions`), has the code generator emit a
rational float32 ``tanh`` (:func:`rational_tanh_codegen`) and, on CPUs with 512-bit vectors, float32
products as calls of the solver's own kernel (:mod:`~hybrid_node.loop.cpu_gemm`), and compiles the
graph's two C++ files on two cores (:func:`parallel_cpp_builds`), each for the length of the
solver's own compilations: the user's other ``torch.compile`` graphs are left as torch makes them.
Measurements behind each setting: docs/compiled/cpu_kernels.md and docs/compiled/first_call.md.

Reference: Ansel et al., "PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode
Transformation and Graph Compilation", ASPLOS 2024 (TorchDynamo and TorchInductor).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import threading
import types
from collections.abc import Callable

import torch

from . import fast_tanh

#: the structured control flow of the whole-solve graphs, by the name torch's cache checks look up
_CACHEABLE_OPERATORS = ("torch.ops.higher_order.while_loop", "torch.ops.higher_order.cond")


def inductor_options(cuda_graphs: bool = False, cpu: bool = False) -> dict:
    """The Inductor settings of every graph compiled for a solve.

    ``cpp.use_decompose_tanh``: on the CPU, ``tanh`` is generated as ``2 / (1 + exp(-2x)) - 1`` with
    the vectorised ``exp`` instead of the vectorised library ``tanh``, about 3x faster per element
    (86 against 27 us for 512x64 float32 elements on one core, measured in this work); the tanh layers
    of a typical neural field dominate its evaluation. Its absolute error is at most ~2 ulp of 1 (1.8e-7
    in float32, against 6e-8 for the library ``tanh``); the relative error near 0 is larger, which
    matters for nothing that only adds tanh outputs up (a linear layer) and is why torch leaves it off
    by default (pytorch/pytorch#148241: ``atan2`` of a tanh near 0). The GPU code is unaffected.
    Float32 and 16-bit tensors get the cheaper :mod:`~hybrid_node.loop.fast_tanh` instead
    (:func:`rational_tanh_codegen`), so the exp form serves float64. Torch's own switch, the environment
    variable ``TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH=0``, turns both off.
    ``unsafe_marked_cacheable_functions``: torch's on-disk FX-graph and AOTAutograd caches refuse a
    graph that holds a higher-order operator unless it is marked cacheable, so without the mark every
    new process lowers the whole-solve graph (``while_loop``, ``cond``) again. The cache key of a graph
    includes the code and constants of its subgraphs (``FxGraphCachePickler`` pickles the submodules
    of the graph module with the same reducer), so a loop body that differs in any operation or
    constant gets its own entry (tested); the value is torch's version, :data:`DECOMPOSITIONS` and
    the product kernel's tag (:data:`~hybrid_node.loop.cpu_gemm.TAG`, or that it is switched off),
    so a change of any starts afresh.
    ``cpp_wrapper`` (CPU graphs): the code that calls a graph's kernels is generated as C++ instead of
    Python. A step attempt runs about 40 kernels and 30 buffer allocations, each a Python call of a
    few microseconds from the default wrapper, on every iteration of the whole-solve loop; for the
    benchmark's MLP (one thread, same process, interleaved) the forward solve took 5.9 instead of
    6.5 ms, the adjoint training step 190 instead of 213 ms and the direct one (per-step graphs)
    23.2 instead of 25.2 ms, with identical outputs and no longer first call. Not set for other
    devices, where it is untested here.
    ``cpp.enable_floating_point_contract_flag="fast"`` (CPU graphs): the C++ compiler may fuse a
    multiply and an add into one FMA instruction (rounded once instead of twice), which Inductor
    forbids by default. The rational tanh's Horner steps become FMAs: its kernel's own work ~20%
    less and its largest absolute error 3.0e-7 instead of 3.3e-7 (tested); the adjoint training step
    ~3% faster. Results change at the level of float rounding, as any other fusion does.
    ``cpp_wrapper_build_separate`` (CPU graphs): the wrapper and the kernels are two C++ files, the
    wrapper compiled at ``-O1`` and with a precompiled header that covers the kernels' headers too
    (in one file, the kernels' vectorisation headers are parsed anew for every graph); with
    :func:`parallel_cpp_builds` the two compile on two cores. The mlp forward graph's ``g++`` time
    on a first call: 5.7 s in one file, ~3 s in two one after the other, ~1.8 s in parallel; its
    solve time is unchanged (2.82 against 2.86 ms interleaved; a light field with 8x more steps
    2.11 against 2.11 ms). A wrapper at ``-O0`` would save another 0.6 s but made that light
    field's solve 37% slower.
    ``aot_inductor.enable_line_tables=False`` (CPU graphs): the C++ compiler builds the kernels
    without line tables (``-g1``, which only profilers read): the mlp forward graph's ``g++`` run
    ~0.6 s of 7.4 s shorter on a first compilation.
    ``pattern_matcher=False`` (CPU graphs): Inductor's graph-rewriting patterns (hundreds, matched
    against every node of the graph and of each loop body) are not applied, nor built
    (:func:`patterns_left_unregistered`). On the solver's CPU graphs they cost compile time and
    bought nothing: the mlp adjoint's first call 9.7-9.9 instead of 10.0-10.2 s and the forward
    solve's 6.1 instead of 6.3-6.4 s; the adjoint step, the forward solve, the conv forward solve and
    the CNF's direct step no slower, the mlp direct training step 5.5 instead of 6.4 ms (interleaved,
    docs/compiled/first_call.md, "The backward graph's stages in a loop, and no pattern matcher").
    ``triton.cudagraphs``: replay the graph as a CUDA graph (mode "reduce-overhead").

    Args:
        cuda_graphs: replay as a CUDA graph.
        cpu: the graph runs on the CPU.

    Returns:
        The ``options`` of ``torch.compile``.
    """
    from . import cpu_gemm  # (Inductor's lowering: options are asked for only to compile a graph)

    products = cpu_gemm.TAG if own_sgemm_enabled() else "library-sgemm"
    options: dict = {
        "cpp.use_decompose_tanh": fast_tanh_enabled(),
        # the tag changes with torch, the rational tanh and the product kernel (the graphs' cache
        # key includes it)
        "unsafe_marked_cacheable_functions": dict.fromkeys(
            _CACHEABLE_OPERATORS, f"{torch.__version__} {DECOMPOSITIONS} {products}"
        ),
    }
    if cuda_graphs:
        options["triton.cudagraphs"] = True
    if cpu:
        options["cpp_wrapper"] = True
        options["cpp.enable_floating_point_contract_flag"] = "fast"
        options["aot_inductor.enable_line_tables"] = False
        options["cpp_wrapper_build_separate"] = True
        options["pattern_matcher"] = False
    return options


def own_sgemm_enabled() -> bool:
    """Whether CPU graphs may compute float32 products with :mod:`~hybrid_node.loop.cpu_gemm` (unless
    ``HYBRID_NODE_OWN_SGEMM=0``; only on CPUs with 512-bit vectors)."""
    return os.environ.get("HYBRID_NODE_OWN_SGEMM", "1") != "0"


def fast_tanh_enabled() -> bool:
    """Whether CPU graphs compute ``tanh`` in a faster form (unless ``TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH=0``)."""
    return os.environ.get("TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH", "1") != "0"


def _cpu_backend(gm: torch.fx.GraphModule, example_inputs, options: dict | None = None, worker: str | None = None):
    """Inductor with this library's CPU decompositions (:func:`cpu_decompositions`; loop bodies included)
    and code generation (:func:`codegen_contexts`, for the graph and a backward graph compiled later).

    The entries are put into Inductor's own decomposition table for the duration of this compilation
    and taken out after: handing ``compile_fx`` a table of its own would keep the graph out of torch's
    on-disk cache (the table is part of the compile arguments it hashes and cannot be pickled), and
    the cache key still tells these graphs apart from others (``inductor_options`` tags them with
    :data:`DECOMPOSITIONS`). A compilation running in another thread at the same moment would see the
    entries too. With a ``worker`` ("worker" or "background", see
    :data:`~hybrid_node.solvers.runge_kutta.COMPILERS`), a graph the on-disk cache does not hold is
    compiled by :mod:`~hybrid_node.loop.background`'s worker process and runs uncompiled until then.
    """
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    from torch._inductor.decomposition import select_decomp_table

    with torch._inductor.config.patch(options or {}):
        table = select_decomp_table()  # the table compile_fx will read, under the same settings
    entries = cpu_decompositions(table)
    previous = {op: table.get(op) for op in entries}
    table.update(entries)

    def inner(*args, **kwargs):  # every graph of this compilation, a backward compiled later included
        with codegen_contexts():
            if worker is None:
                return compile_fx_inner(*args, **kwargs)
            return _compile_or_defer(compile_fx_inner, worker == "worker", *args, **kwargs)

    try:
        with patterns_left_unregistered():
            options = eager_rounding(options, example_inputs)
            return compile_fx(gm, example_inputs, inner_compile=inner, config_patches=options)
    finally:
        for op, entry in previous.items():
            if entry is None:
                del table[op]
            else:
                table[op] = entry


def _compile_or_defer(compile_fx_inner: Callable, wait: bool, *args, **kwargs):
    """``compile_fx_inner(*args, **kwargs)`` with a cache miss sent to the worker process (``wait``: a
    solve after the graph's first waits for it, :class:`~hybrid_node.loop.background.TieredGraph`)."""
    from torch._inductor import compile_fx as module
    from torch._inductor.codecache import FxGraphCache
    from torch._inductor.exc import InductorError

    from . import background

    keys: list = []  # the on-disk cache's key of the graph, for the compiled graph when it arrives
    prepare_key = FxGraphCache.prepare_key

    def recorded(*key_args, **key_kwargs):
        key_info, cache_info = prepare_key(*key_args, **key_kwargs)
        keys.append(key_info)
        return key_info, cache_info

    defer = background.deferring(module.fx_codegen_and_compile, keys, wait)
    try:
        with _replaced(module, "fx_codegen_and_compile", defer), _replaced(FxGraphCache, "prepare_key", recorded):
            return compile_fx_inner(*args, **kwargs)
    except InductorError as error:  # Inductor wraps what its code generation raises
        if isinstance(error.inner_exception, background._Deferred):
            return error.inner_exception.graph
        raise


@contextlib.contextmanager
def codegen_contexts():
    """The solver's code generation, open for a CPU graph's compilation (here or in the background worker):
    :func:`rational_tanh_codegen` (unless switched off), the product kernel of :mod:`~hybrid_node.loop.cpu_gemm`
    (on CPUs it supports) and :func:`parallel_cpp_builds`."""
    from . import cpu_gemm  # imports Inductor's lowering, which only a compilation needs

    tanh = rational_tanh_codegen() if fast_tanh_enabled() else contextlib.nullcontext()
    own = own_sgemm_enabled() and cpu_gemm.supported()
    products = cpu_gemm.own_products() if own else contextlib.nullcontext()
    with tanh, products, parallel_cpp_builds():
        yield


def eager_rounding(options: dict | None, example_inputs) -> dict | None:
    """``options`` with ``emulate_precision_casts`` set when a graph input is float16 or bfloat16.

    Inductor fuses a chain of 16-bit operations into float32 arithmetic and rounds only the fused
    result, where eager torch rounds after every operation. In a solve that changes what the error
    test sees: a float16 network's solve at ``rtol`` 1e-7 (below float16's resolution) ended
    "successfully" 0.2-0.6 off the float64 solution with ``compile=True``, where the eager solve stops
    with a step size underflow. With the setting Inductor keeps the eager roundings (the compiled solve
    then equals the eager one: ``tests/test_half_error_control.py``); wider dtypes are unaffected.

    Args:
        options: the Inductor settings of the graph (:func:`inductor_options`), or None.
        example_inputs: the graph's inputs as the backend receives them.

    Returns:
        ``options``, or a copy with the setting added.
    """
    half = (torch.float16, torch.bfloat16)
    if any(isinstance(x, torch.Tensor) and x.dtype in half for x in example_inputs):
        return {**(options or {}), "emulate_precision_casts": True}
    return options


@contextlib.contextmanager
def patterns_left_unregistered():
    """Inductor's joint-graph passes do not build their rewriting patterns while the context is open.

    torch 2.13 builds them (``fx_passes.joint_graph.lazy_init``: padded products, attention, a few
    others, each traced from example functions) on the first compilation of a process, whether or
    not ``pattern_matcher`` is on; with it off, as for the solver's CPU graphs (:func:`inductor_options`),
    nothing reads them. Building them takes 0.2 s on a Zen 3 core once the compiler has warmed up
    (``compile_times()`` charges 0.75 s to it on a first call, most of it first-use work that the
    compilation would do later anyway; in ``benchmarks.first_call`` the gain is within the spread
    of runs). ``lazy_init`` is replaced by a no-op for the duration and restored after; it is
    torch's own cached function, so the user's graphs with the matcher on still build the patterns
    the first time they need them (tested; a compilation running in another thread at the same
    moment would leave them unbuilt too, and build them on its next graph). If the name is missing
    (another torch version), nothing is replaced.
    """
    from torch._inductor.fx_passes import joint_graph

    if "lazy_init" not in joint_graph.__dict__:
        yield
        return
    with _replaced(joint_graph, "lazy_init", lambda input_device=None: None):
        yield


@contextlib.contextmanager
def rational_tanh_codegen():
    """Inductor's CPU code generator emits a float32 ``tanh`` as :func:`~hybrid_node.loop.fast_tanh.cpp_expression`
    while the context is open (other dtypes keep torch's code).

    The rational enters as C++ for the one ``tanh`` operation rather than as a decomposition into
    tensor operations, which the compiler would lower and generate one by one (about 4 s of the mlp
    whole-solve graph's first compilation). The code generator's two ``tanh`` methods (scalar and
    vector) are replaced for the duration and restored after; a compilation running in another
    thread at the same moment would get the rational too.
    """
    from torch._inductor.codegen.cpp import CppOverrides, CppVecOverrides

    def rational(overrides, vector: bool):
        library = overrides.tanh

        def tanh(x):
            if getattr(x, "dtype", None) == torch.float32:
                return fast_tanh.cpp_expression(str(x), vector)
            return library(x)

        return staticmethod(tanh)

    with (
        _replaced(CppOverrides, "tanh", rational(CppOverrides, vector=False)),
        _replaced(CppVecOverrides, "tanh", rational(CppVecOverrides, vector=True)),
    ):
        yield


@contextlib.contextmanager
def parallel_cpp_builds():
    """Inductor compiles a C++-wrapped graph's wrapper and kernels on two cores at once while the context is open.

    With ``cpp_wrapper_build_separate`` a CPU graph is two C++ files, the wrapper (``-O1``) and the
    kernels (``-O3``), which torch 2.13 compiles one after the other before linking them; for the
    mlp forward graph each takes ~1.2 s of the first call. Here they are compiled in two threads
    (each a ``g++`` process), then linked, under the same file lock. torch's private
    ``codecache._worker_compile_cpp`` is replaced for the duration and restored after; if it is
    missing (another torch version) or is given other than those three builds, torch's own runs.
    """
    from torch._inductor import codecache

    serial = getattr(codecache, "_worker_compile_cpp", None)
    if serial is None or (os.cpu_count() or 1) < 2:
        yield
        return

    def worker(lock_path: str, builders) -> None:
        if len(builders) != 3:
            return serial(lock_path, builders)
        from torch.utils._filelock import FileLock

        *parts, linker = builders
        with FileLock(lock_path, timeout=codecache.LOCK_TIMEOUT):
            todo = [b for b in parts if not os.path.exists(b.get_target_file_path())]
            with concurrent.futures.ThreadPoolExecutor(max(len(todo), 1)) as pool:
                for done in [pool.submit(b.build) for b in todo]:
                    done.result()
            if not os.path.exists(linker.get_target_file_path()):
                linker.build()

    with _replaced(codecache, "_worker_compile_cpp", worker):
        yield


@contextlib.contextmanager
def _replaced(owner, name: str, value):
    """``owner.name`` is ``value`` while the context is open (set back to what it was after)."""
    saved = owner.__dict__[name]
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


#: names the decompositions of :func:`cpu_decompositions` in the graphs' cache tag
DECOMPOSITIONS = f"{fast_tanh.VERSION} unfused-addmm-v2 narrow-mm-v1"


def cpu_decompositions(table: dict) -> dict:
    """The entries the solver's CPU graphs add to Inductor's decomposition table ``table``.

    - ``aten.addmm`` with a vector bias (``nn.Linear``): ``mm(x, w) + bias``. On the CPU Inductor
      keeps ``addmm`` as one library call, which first copies the bias into every row of the output
      and then runs the GEMM accumulating onto it; the bias then costs a pass over the output of its
      own. Written as a sum, the bias add fuses into the kernel that consumes the product (a field's
      activation, the stage sum after its last layer). The same sum in the same precision (the
      benchmark's direct training step gave bit-identical gradients); the MLP's forward solve is 2-3%
      faster (docs/compiled/cpu_kernels.md). Torch itself unfuses it this way on GPUs
      (``unfuse_bias_add_to_pointwise``). Other scalings, bias shapes and dtypes keep the table's entry.
    - ``aten.mm`` with at most 4 output columns and rows contiguous along the inner dimension (a
      field's output layer, e.g. 64 -> 2): one dot product per output element, written as
      elementwise products summed along the row. Inductor generates it as a reduction that reads
      its input through the producer's code, so the layer before it (bias and tanh) is computed
      inside the same loop and never written to memory, where the library GEMM needs it written,
      and for so few columns spends most of its time on call and packing (11.9 us of an MLP
      evaluation's ~100). MLP forward solve ~5% faster, adjoint step ~2% (docs/compiled/cpu_kernels.md).
      Float32 and float64 only; the backward pass's products (other shapes) keep the GEMM. A layer
      with a bias (``addmm``) adds the bias to each column's sum: added afterwards, the (columns,)
      bias broadcast over the rows kept Inductor from running the (rows, columns) kernels that
      follow (the field's output, the stage sums) as one flat loop, and it vectorised them along the
      2 columns, one masked 2-lane vector per row; with the bias inside they run over whole vectors
      (mlp forward solve another ~5% faster).

    Args:
        table: Inductor's decomposition table (its ``addmm`` and ``mm`` entries are kept as the fallbacks).

    Returns:
        ``{operator: decomposition}``.
    """
    addmm, mm = torch.ops.aten.addmm.default, torch.ops.aten.mm.default
    return {addmm: _unfused_addmm(table.get(addmm)), mm: _narrow_mm(table.get(mm))}


def _unfused_addmm(fallback: Callable | None) -> Callable:
    def addmm(bias, mat1, mat2, *, beta=1, alpha=1):
        if beta == 1 and alpha == 1 and bias.dim() == 1 and bias.dtype == mat1.dtype == mat2.dtype:
            if bias.dtype in (torch.float32, torch.float64):  # 16-bit: addmm adds the bias before rounding
                return _row_sums(mat1, mat2, bias) if _narrow(mat1, mat2) else torch.mm(mat1, mat2) + bias
        return NotImplemented if fallback is None else fallback(bias, mat1, mat2, beta=beta, alpha=alpha)

    return addmm


def _narrow(mat1, mat2) -> bool:
    n = mat2.shape[-1]
    if mat1.dim() == mat2.dim() == 2 and isinstance(n, int) and n <= 4 and mat1.stride(1) == 1:
        return mat1.dtype == mat2.dtype and mat1.dtype in (torch.float32, torch.float64)
    return False


def _narrow_mm(fallback: Callable | None) -> Callable:
    def mm(mat1, mat2):
        if _narrow(mat1, mat2):
            return _row_sums(mat1, mat2)
        return NotImplemented if fallback is None else fallback(mat1, mat2)

    return mm


def _row_sums(mat1, mat2, bias=None) -> torch.Tensor:
    """``mat1 @ mat2 (+ bias)`` with a dot product per output element (few columns, see :func:`cpu_decompositions`)."""
    columns = [(mat1 * mat2[:, j]).sum(1) for j in range(mat2.shape[-1])]
    return torch.stack(columns if bias is None else [c + bias[j] for j, c in enumerate(columns)], 1)


def compile_for(fn: Callable, cpu: bool, compiler: str = "in_process", **kwargs) -> Callable:
    """``torch.compile(fn, **kwargs)``, with :func:`_cpu_backend` for CPU graphs (``options`` go to
    Inductor either way); the first CPU graph of a process starts :func:`_detect_vector_isa`.
    ``compiler``: one of :data:`~hybrid_node.solvers.runge_kutta.COMPILERS`; "worker" and "background"
    compile CPU graphs in :mod:`.background`'s worker process on POSIX systems (other devices and
    systems compile in the process)."""
    if not cpu:
        return torch.compile(fn, backend="inductor", **kwargs)
    _detect_vector_isa()
    # the worker runs in a process group of its own
    worker = compiler if compiler != "in_process" and os.name == "posix" else None
    if worker is not None:
        from . import background

        background.start()
    return torch.compile(fn, backend=functools.partial(_cpu_backend, worker=worker), **kwargs)


_ISA_DETECTION: list[threading.Thread] = []


def _detect_vector_isa() -> None:
    """Start Inductor's detection of the CPU's vector instruction set in a background thread, once
    per process.

    Inductor finds the instruction set its kernels may use by building a probe library per candidate
    and loading it in a new process, once per process, when it generates the first CPU kernel (six
    processes here, 1.1 s, nearly all of it spent waiting for them). The graph is traced, lowered
    and scheduled for seconds before that, and the waiting releases the interpreter, so started
    here the detection is done by then and the first call does not wait for it. The result is
    torch's own cache (``cpu_vec_isa.pick_vec_isa``); a failure here is left for the compilation to
    meet and report.
    """
    if _ISA_DETECTION:
        return

    def detect() -> None:
        with contextlib.suppress(Exception):
            from torch._inductor.cpu_vec_isa import pick_vec_isa

            pick_vec_isa()

    thread = threading.Thread(target=detect, name="hybrid_node-isa-detection", daemon=True)
    _ISA_DETECTION.append(thread)
    thread.start()


def own_code(fn: Callable) -> Callable:
    """``fn`` on a code object of its own: the compiler's cache and recompilation limit are per code
    object, so graphs for other fields, shapes or devices must not use up each other's."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, None, fn.__closure__)
