"""Compiled step attempts: one explicit Runge-Kutta step and its error ratio as one torch.compile graph.

With ``options={"compile": True}`` (or ``solver.compiled()``) the adaptive and fixed-grid loops hand
each step attempt to a function that runs every stage of the method, the field included, the stage
combinations and the error norm as one compiled graph. Inductor fuses the elementwise work (the stage
sums, the field's bias-and-activation pairs, the error scaling) into a few kernels, where the eager
step launches one kernel per operation. The loop itself stays in Python: it reads the error ratio
(one host scalar per attempt) and decides the step exactly as in eager mode, so the step sequence and
the dense output are those of the eager solver up to rounding.

Two fields can be compiled: the user's field of a forward solve, and the backsolve adjoint's
augmented field when the user's field is an ``nn.Module`` differentiated with respect to its own
parameters (its vector-Jacobian products are then written with ``torch.func.vjp``, which the
compiler traces, instead of ``torch.autograd.grad``). Other fields run eagerly.

Compilation happens on the first step of a solve with a new field, shape or grad mode (seconds to
tens of seconds); later solves reuse the compiled graph, so it pays for repeated solves of one
model, as in training.

Reference: Ansel et al., "PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode
Transformation and Graph Compilation", ASPLOS 2024 (TorchDynamo and TorchInductor).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import types
import warnings
import weakref
from collections.abc import Callable

import torch

from .._term import PureField as PureField
from .._term import solver_time_field as solver_time_field
from .._term import term_field as term_field
from ..controllers import error_ratio, error_ratio_tensor
from ..solvers.runge_kutta import ExplicitRungeKutta, RKStep
from . import fast_tanh
from .counters import find_counters, frozen_counters

# owner (the user's field) -> {key -> compiled attempt}; weak (no graph refers to its owner), so a
# dropped model frees its graphs
_CACHE: weakref.WeakKeyDictionary[Callable, dict] = weakref.WeakKeyDictionary()


#: fields whose compilation failure was reported (one warning per field, however many graphs fall back)
_WARNED: weakref.WeakSet = weakref.WeakSet()


def warn_fallback(owner, error: Exception, outcome: str, hint: str = "", stacklevel: int = 2) -> None:
    """Report that a graph of ``owner`` (the user's field) could not be compiled, once per field.

    One solve can try several graphs of one field (the whole-solve graph, then the per-step graphs;
    an adjoint's forward and backward passes), and a field the compiler refuses usually fails all of
    them for one reason: the first failure is reported, with what the solve does instead, and the
    later ones are not. A field that cannot be weakly referenced is reported every time.

    Args:
        owner: the field.
        error: the compiler's exception (its first line is quoted).
        outcome: what runs instead, e.g. "it runs eagerly".
        hint: a sentence on how to make the field compile, or "".
        stacklevel: as for :func:`warnings.warn`, counted from the caller.
    """
    try:
        if owner in _WARNED:
            return
        _WARNED.add(owner)
    except TypeError:
        pass
    warnings.warn(
        f"compile=True: this field cannot be compiled ({type(error).__name__}: "
        f"{str(error).splitlines()[0][:200]}); {outcome}.{hint}",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )


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
    constant gets its own entry (tested); the value is torch's version and :data:`DECOMPOSITIONS`, so a
    change of either starts afresh.
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
    ``triton.cudagraphs``: replay the graph as a CUDA graph (mode "reduce-overhead").

    Args:
        cuda_graphs: replay as a CUDA graph.
        cpu: the graph runs on the CPU.

    Returns:
        The ``options`` of ``torch.compile``.
    """
    options: dict = {
        "cpp.use_decompose_tanh": fast_tanh_enabled(),
        # the tag changes with torch and with the rational tanh (the graphs' cache key includes it)
        "unsafe_marked_cacheable_functions": dict.fromkeys(
            _CACHEABLE_OPERATORS, f"{torch.__version__} {DECOMPOSITIONS}"
        ),
    }
    if cuda_graphs:
        options["triton.cudagraphs"] = True
    if cpu:
        options["cpp_wrapper"] = True
        options["cpp.enable_floating_point_contract_flag"] = "fast"
        options["aot_inductor.enable_line_tables"] = False
        options["cpp_wrapper_build_separate"] = True
    return options


def fast_tanh_enabled() -> bool:
    """Whether CPU graphs compute ``tanh`` in a faster form (unless ``TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH=0``)."""
    return os.environ.get("TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH", "1") != "0"


def _cpu_backend(gm: torch.fx.GraphModule, example_inputs, options: dict | None = None):
    """Inductor with this library's CPU decompositions (:func:`cpu_decompositions`; loop bodies included)
    and its float32 ``tanh`` (:func:`rational_tanh_codegen`, for the graph and a backward graph
    compiled later).

    The entries are put into Inductor's own decomposition table for the duration of this compilation
    and taken out after: handing ``compile_fx`` a table of its own would keep the graph out of torch's
    on-disk cache (the table is part of the compile arguments it hashes and cannot be pickled), and
    the cache key still tells these graphs apart from others (``inductor_options`` tags them with
    :data:`DECOMPOSITIONS`). A compilation running in another thread at the same moment would see the
    entries too.
    """
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    from torch._inductor.decomposition import select_decomp_table

    with torch._inductor.config.patch(options or {}):
        table = select_decomp_table()  # the table compile_fx will read, under the same settings
    entries = cpu_decompositions(table)
    previous = {op: table.get(op) for op in entries}
    table.update(entries)

    def inner(*args, **kwargs):  # every graph of this compilation, a backward compiled later included
        tanh = rational_tanh_codegen() if fast_tanh_enabled() else contextlib.nullcontext()
        with tanh, parallel_cpp_builds():
            return compile_fx_inner(*args, **kwargs)

    try:
        return compile_fx(gm, example_inputs, inner_compile=inner, config_patches=options)
    finally:
        for op, entry in previous.items():
            if entry is None:
                del table[op]
            else:
                table[op] = entry


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
DECOMPOSITIONS = f"{fast_tanh.VERSION} unfused-addmm-v1 narrow-mm-v1"


def cpu_decompositions(table: dict) -> dict:
    """The entries the solver's CPU graphs add to Inductor's decomposition table ``table``.

    - ``aten.addmm`` with a vector bias (``nn.Linear``): ``mm(x, w) + bias``. On the CPU Inductor
      keeps ``addmm`` as one library call, which first copies the bias into every row of the output
      and then runs the GEMM accumulating onto it; the bias then costs a pass over the output of its
      own. Written as a sum, the bias add fuses into the kernel that consumes the product (a field's
      activation, the stage sum after its last layer). The same sum in the same precision (the
      benchmark's direct training step gave bit-identical gradients); the MLP's forward solve is 2-3%
      faster (docs/compiled_solve.md). Torch itself unfuses it this way on GPUs
      (``unfuse_bias_add_to_pointwise``). Other scalings, bias shapes and dtypes keep the table's entry.
    - ``aten.mm`` with at most 4 output columns and rows contiguous along the inner dimension (a
      field's output layer, e.g. 64 -> 2): one dot product per output element, written as
      elementwise products summed along the row. Inductor generates it as a reduction that reads
      its input through the producer's code, so the layer before it (bias and tanh) is computed
      inside the same loop and never written to memory, where the library GEMM needs it written,
      and for so few columns spends most of its time on call and packing (11.9 us of an MLP
      evaluation's ~100). MLP forward solve ~5% faster, adjoint step ~2% (docs/compiled_solve.md).
      Float32 and float64 only; the backward pass's products (other shapes) keep the GEMM.

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
                return torch.mm(mat1, mat2) + bias
        return NotImplemented if fallback is None else fallback(bias, mat1, mat2, beta=beta, alpha=alpha)

    return addmm


def _narrow_mm(fallback: Callable | None) -> Callable:
    def mm(mat1, mat2):
        n = mat2.shape[-1]
        if mat1.dim() == mat2.dim() == 2 and isinstance(n, int) and n <= 4 and mat1.stride(1) == 1:
            if mat1.dtype == mat2.dtype and mat1.dtype in (torch.float32, torch.float64):
                return torch.stack([(mat1 * mat2[:, j]).sum(1) for j in range(n)], 1)
        return NotImplemented if fallback is None else fallback(mat1, mat2)

    return mm


def compile_for(fn: Callable, cpu: bool, **kwargs) -> Callable:
    """``torch.compile(fn, **kwargs)``, with :func:`_cpu_backend` for CPU graphs (``options`` go to
    Inductor either way)."""
    return torch.compile(fn, backend=_cpu_backend if cpu else "inductor", **kwargs)


def own_code(fn: Callable) -> Callable:
    """``fn`` on a code object of its own: the compiler's cache and recompilation limit are per code
    object, so graphs for other fields, shapes or devices must not use up each other's."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, None, fn.__closure__)


def _compile(fn: Callable, mode: str | None = None) -> Callable:
    """``torch.compile(fn)``, per device type of its tensor arguments (the options differ: see
    :func:`inductor_options`), run with integer module attributes as inputs; ``mode``
    "reduce-overhead" replays it as a CUDA graph."""
    compiled: dict[str, Callable] = {}

    def run(*args):
        leaf = next((x for x in torch.utils._pytree.tree_leaves(args) if isinstance(x, torch.Tensor)), None)
        kind = "cpu" if leaf is None else leaf.device.type
        graph = compiled.get(kind)
        if graph is None:
            options = inductor_options(mode == "reduce-overhead", cpu=kind == "cpu")
            graph = compiled[kind] = compile_for(own_code(fn), kind == "cpu", options=options)
        # an integer attribute the field updates (a module counting its own calls, ``self.nfe += 1``,
        # is common) must be a graph input, not a constant guarded on: else every call recompiles
        with torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True):
            return graph(*args)

    return run


def _build_attempt(field: Callable, solver: ExplicitRungeKutta, adaptive: bool) -> Callable:
    def attempt(owner, t, y, dt, f0, rtol, atol, norm):
        step = solver.step(lambda tt, yy: field(owner, tt, yy), t, y, f0, dt)
        ratio = (
            error_ratio_tensor(step.error, y, step.y1, rtol, atol, norm)
            if adaptive and step.error is not None
            else None
        )
        return step.y1, step.error, step.ks, ratio

    return _compile(attempt)


class CompiledAttempt:
    """Step attempts of ``solver`` on a pure field, and single evaluations of the field (the
    derivative a restarted solver needs), through compiled graphs cached per field.

    A field the compiler cannot handle (the first compiled call raises a compiler error) is run
    eagerly from then on, for this and every later solve, after one warning: compilation is an
    optimisation and never changes whether a solve works.

    Args:
        term: the loop's term (its ``nfe`` counts the evaluations; eager fallbacks call it).
        pure: the traceable field.
        solver: an explicit Runge-Kutta solver.
        rtol, atol, norm: the error test (ignored for fixed-step tableaus).

    Raises:
        ValueError: ``solver`` is not an explicit Runge-Kutta method.
    """

    def __init__(self, term, pure: PureField, solver, rtol=None, atol=None, norm=None):
        if not isinstance(solver, ExplicitRungeKutta):
            raise ValueError(
                f"compile=True is available for the explicit Runge-Kutta methods only, not "
                f"{solver.name!r}; drop the option for this method."
            )
        self.term, self.owner, self.solver = term, pure.owner, solver
        self.rtol, self.atol, self.norm = rtol, atol, norm
        self.n_evals = solver.tableau.stages - 1
        self.adaptive = solver.tableau.b_error is not None
        self._step_key = (pure.key, solver, self.adaptive)
        self._field_key = (pure.key, "field")
        self._counters_key = (pure.key, "counters")
        try:
            self._graphs = _CACHE.setdefault(pure.owner, {})
        except TypeError:  # an owner that cannot be weakly referenced: compiled per solve
            self._graphs = {}
        if self._step_key not in self._graphs:
            self._graphs[self._step_key] = _build_attempt(pure.field, solver, self.adaptive)
            self._graphs[self._field_key] = _compile(pure.field)

    def _run(self, key, t: float, y: torch.Tensor, *args):
        """The graph ``key`` on (t, y, *args), or None when it has failed (now or in an earlier solve).

        The field's call counters are frozen around the call (:mod:`.counters`; found by one eager
        evaluation the first time), and ``y`` enters as :meth:`_tracked`: so one graph serves every
        attempt of a solve and of the next ones.
        """
        graph = self._graphs[key]
        if graph is None:
            return None
        counters = self._graphs.get(self._counters_key)
        if counters is None:
            counters = self._graphs[self._counters_key] = find_counters(self.owner, self.term, t, y)
        try:
            with frozen_counters(counters):
                return graph(self.owner, self._time(t, y), self._tracked(y), *args)
        except torch._dynamo.exc.TorchDynamoException as e:
            warn_fallback(self.owner, e, "it runs eagerly", stacklevel=3)
            self._graphs[self._step_key] = self._graphs[self._field_key] = None
            return None

    def _tracked(self, y: torch.Tensor) -> torch.Tensor:
        """``y``, or a leaf copy of it that requires grad where the field's parameters do and ``y``
        does not (the first attempt of a differentiated solve from a data ``y0``): the graph is
        specialised on whether ``y`` requires grad, and this way the first attempt runs the graph of
        all the others instead of compiling one of its own (the gradient that reaches the copy is
        dropped, as ``y0``'s would be)."""
        if y.requires_grad or not torch.is_grad_enabled() or not isinstance(self.owner, torch.nn.Module):
            return y
        if not any(p.requires_grad for p in self.owner.parameters()):
            return y
        return y.detach().requires_grad_()

    @staticmethod
    def _time(x: float, like: torch.Tensor) -> torch.Tensor:
        # times travel as 0-d tensors: Python floats would be specialised into the graph (one
        # recompilation per value) or handled symbolically, which the compiler gets wrong for some ops
        return torch.full((), x, dtype=torch.float64, device=like.device)

    def __call__(self, t: float, y: torch.Tensor, f0: torch.Tensor, dt: float) -> tuple[RKStep, float | None]:
        """One attempt from (t, y) with f0 = f(t, y) and step ``dt``.

        Returns:
            The step (as :meth:`ExplicitRungeKutta.step` returns it) and the error ratio as a host
            float (None for fixed-step tableaus).
        """
        out = self._run(self._step_key, t, y, self._time(dt, y), f0, self.rtol, self.atol, self.norm)
        if out is None:
            step = self.solver.step(self.term, t, y, f0, dt)
            ratio = (
                error_ratio(step.error, y, step.y1, self.rtol, self.atol, self.norm)
                if self.adaptive and step.error is not None
                else None
            )
            return step, ratio
        y1, error, ks, ratio = out
        self.term.nfe += self.n_evals
        return RKStep(y1, error, tuple(ks)), (None if ratio is None else float(ratio))

    def init(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """The solver state at (t, y), as ``solver.init(term, t, y)``: the derivative f(t, y)."""
        out = self._run(self._field_key, t, y)
        if out is None:
            return self.solver.init(self.term, t, y)
        self.term.nfe += 1
        return out


def compiled_attempt(term, solver, rtol=None, atol=None, norm=None) -> CompiledAttempt | None:
    """A :class:`CompiledAttempt` when ``solver`` asks for compilation and the field can be traced, else None."""
    if not (isinstance(solver, ExplicitRungeKutta) and solver.compile):  # only they declare ``compile``
        return None
    pure = term.pure_field
    return None if pure is None else CompiledAttempt(term, pure, solver, rtol, atol, norm)
