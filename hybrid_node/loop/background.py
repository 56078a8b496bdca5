"""Compiling a solve's graphs in a worker process while the first solves run them uncompiled.

``options={"compile": True}`` on the CPU shortens the first call of a compiled solve to the part that
must happen in the user's process: Dynamo's trace of the solve (the field included, with its guards)
and AOTAutograd's graph. What follows, Inductor's lowering, C++ generation and ``g++`` (more than half
of a first call; docs/compiled/first_call.md), runs in one worker process, started with the first
compiled function so that it imports the compiler while the process traces. Meanwhile the graph
runs its traced ATen graph eagerly (the same operations the compiled graph fuses, so the results
equal the eager solver's up to rounding). When it switches to the compiled graph depends on the
solver's compiler (:data:`~hybrid_node.solvers.runge_kutta.COMPILERS`):

- "worker" (the default): after the solve that made it. The next solve waits for the worker's
  answer, so which solves ran uncompiled never depends on the machine's speed or load: a run gives
  the same numbers each time. A solve begins at each call of the solve loop outside a backward pass
  (:func:`new_solve`), so an adjoint's backward solve belongs to its forward solve.
- "background": at the first call after the answer arrives; no solve ever waits.

How it plugs into torch 2.13: a CPU graph's ``compile_fx_inner`` first looks the graph up in
Inductor's on-disk cache, and only on a miss calls ``fx_codegen_and_compile``. That function is
replaced for the compilation by one that sends the graph to the worker and raises :class:`_Deferred`,
which the solver's backend catches (:func:`~hybrid_node.loop.inductor._cpu_backend`): a graph compiled
before on the machine still loads at once, and nothing unfinished enters the cache. The worker
compiles with the same Inductor settings and code generation (:func:`compile_in_worker`) and writes
the compiled files into the same cache directory; the process saves the compiled graph in the cache
under the key Inductor computed for it, so the next process loads it at once. Graphs whose output
strides feed a later backward compilation (the forward graph of direct backprop) are compiled in the
process as before: Inductor reports those strides only when it compiles.

Safe where a compiling thread is not (docs/compiled/first_call.md, "Compiling in a background
thread"): the worker shares no random state, class patches or interpreter lock with the user's
process. It is killed, with its ``g++`` children, when the process exits; an answer that cannot be
used (a failed compilation, a worker that died) leaves the graph running uncompiled, with a warning.

Reference: Ansel et al., "PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode
Transformation and Graph Compilation", ASPLOS 2024 (TorchDynamo, AOTAutograd and TorchInductor).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import io
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

#: the length prefix of every message between the process and its worker
_HEADER = struct.Struct("<Q")
#: the deferred graphs still alive in this process (read by tests and diagnostics)
GRAPHS: weakref.WeakSet[TieredGraph] = weakref.WeakSet()


class _Deferred(Exception):
    """Raised in place of Inductor's code generation: the graph (a :class:`TieredGraph`) is being
    compiled by the worker."""

    def __init__(self, graph: TieredGraph) -> None:
        super().__init__("compiled in the background")
        self.graph = graph


def deferring(original: Callable, keys: list, wait: bool) -> Callable:
    """A stand-in for Inductor's ``fx_codegen_and_compile`` that defers the graph to the worker.

    Args:
        original: torch's function, still called for a training forward graph (see the module notes) and
            for a graph that cannot be pickled.
        keys: the on-disk cache keys ``compile_fx_inner`` computed so far (the last is this graph's, or
            None where the cache is bypassed): the compiled graph is saved under it when it arrives.
        wait: a solve after the graph's first waits for the compiled graph (the "worker" compiler).

    Returns:
        The function to put in its place while ``compile_fx_inner`` runs.
    """

    def codegen(gm, example_inputs, inputs_to_check, compile_region_name=None, **graph_kwargs):
        def here():
            return original(
                gm, example_inputs, inputs_to_check, compile_region_name=compile_region_name, **graph_kwargs
            )

        if not (graph_kwargs.get("is_inference") or graph_kwargs.get("is_backward")):
            return here()
        # Inductor's settings: the worker compiles under them, and this process loads the answer under them
        settings = torch._inductor.config.save_config_portable()
        try:
            job = _job(gm, example_inputs, inputs_to_check, graph_kwargs, settings)
        except Exception:  # noqa: BLE001 - a graph that cannot be sent is compiled here, as "in_process" does
            return here()
        future = _worker().submit(job)
        _SUBMITTED[:] = [f for f in _SUBMITTED if not f.done()] + [future]  # an answer holds a compiled graph
        cache = (keys[-1], torch._guards.TracingContext.try_get()) if keys and keys[-1] is not None else None
        raise _Deferred(TieredGraph(gm, future, example_inputs, graph_kwargs, settings, cache, wait))

    return codegen


def _job(gm, example_inputs, inputs_to_check, graph_kwargs, settings: dict) -> bytes:
    """The pickled compilation of ``gm``: the graph, its example inputs and Inductor's settings."""
    from torch._inductor.compile_fx_ext import (
        _current_fake_mode,
        _FakeTensorModeSerializer,
        _LoggerState,
        _LoweringSerializer,
        _VirtualizedSerializer,
        _WireProtocolInput,
    )
    from torch.fx._graph_pickler import GraphPickler, Options

    context = torch._guards.TracingContext.try_get()
    # Dynamo's own context holds code objects and weak dictionaries; Inductor reads only the metadata
    portable = torch._guards.TracingContext(None)
    portable.fw_metadata = None if context is None else context.fw_metadata
    wire = _WireProtocolInput(
        gm,
        example_inputs,
        inputs_to_check,
        graph_kwargs,
        portable,
        settings,
        _VirtualizedSerializer.serialize(),
        None,
        _LoggerState(),
        _LoweringSerializer(),
        _FakeTensorModeSerializer(_current_fake_mode()),
    )
    # the graphs hold prims, which torch's default filter (aten only) refuses. GraphPickler.dumps is not
    # used: it registers ``slice`` as a pytree node for its duration, a change of pytree's registry that
    # fails a guard of every graph compiled before (each then recompiled)
    with io.BytesIO() as stream:
        GraphPickler(stream, Options(ops_filter=_portable_op)).dump(wire)
        return stream.getvalue()


def _portable_op(name: str) -> bool:
    """Whether the worker process has the operator ``name``: torch's own. One that the user's code
    registers (``torch.library``) exists only in its process, so such a graph is compiled there (the
    pickler refuses it)."""
    return name.startswith(("torch.ops.aten.", "torch.ops.prims."))


#: the solves begun in this process (:func:`new_solve`)
_SOLVES = [0]


def new_solve() -> None:
    """Count a solve: called by the solve loop's dispatch on each call outside a backward pass (a call
    inside one, an adjoint's backward solve, belongs to the solve whose gradient it computes)."""
    if torch._C._current_graph_task_id() == -1:
        _SOLVES[0] += 1


class TieredGraph:
    """A graph that runs uncompiled until its compiled form arrives from the worker.

    Called as Inductor's compiled graphs are (boxed: one list of inputs).

    Args:
        gm: the traced ATen graph, run eagerly until then.
        future: the worker's answer (the pickled compiled graph).
        example_inputs, graph_kwargs: the compilation's, for the compiled graph's ``post_compile``.
        settings: Inductor's settings during the compilation (the worker's), under which the compiled
            graph is loaded: its C++ libraries are found by a key that includes the compiler flags
            they set, and loading under other settings would build them again with other flags.
        cache: ``((key, debug_lines), tracing_context)`` to save the compiled graph in Inductor's on-disk
            cache under (a new process then loads it at once, as after ``"in_process"``), or None.
        wait: a call in a later solve than the one that made the graph waits for the answer.
    """

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        future: concurrent.futures.Future,
        example_inputs: Any,
        graph_kwargs: dict,
        settings: dict,
        cache: tuple | None = None,
        wait: bool = False,
    ) -> None:
        self._boxed_call = True  # an instance attribute: the wrappers that copy __dict__ keep it
        self._gm: torch.fx.GraphModule | None = gm
        self._future: concurrent.futures.Future | None = future
        self._post: tuple | None = (example_inputs, graph_kwargs, settings)
        self._cache = cache
        self._compiled: Any = None
        self._solve = _SOLVES[0] if wait else None  # the solve that may run it uncompiled
        self.uncompiled_calls = 0
        GRAPHS.add(self)

    @property
    def compiled(self) -> bool:
        """Whether calls run the compiled graph."""
        return self._compiled is not None

    def __call__(self, args: list) -> Any:
        pending = self._future
        # "worker": from the next solve on, waiting for the answer where it has not come; "background": once it has
        if pending is not None and (pending.done() if self._solve is None else self._solve != _SOLVES[0]):
            self._load(pending)
        if self._compiled is not None:
            return self._compiled(args)
        self.uncompiled_calls += 1
        assert self._gm is not None
        return self._gm(*args)

    def _load(self, future: concurrent.futures.Future) -> None:
        from torch._inductor.output_code import CompiledFxGraphConstantsWithGm

        try:
            # waits for the answer where it has not come: an interruption (Ctrl-C) leaves it awaited
            graph = pickle.loads(future.result())
        except Exception as error:  # noqa: BLE001 - any failure leaves the graph running uncompiled
            self._future = None
            warnings.warn(
                f"compile=True: the compiler's worker process could not compile a graph ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:300] if str(error) else ''}); it keeps running uncompiled "
                "(same results, slower). options={'compile': 'in_process'} compiles in this process and "
                "reports the compiler's error.",
                RuntimeWarning,
                stacklevel=4,
            )
            return
        self._future = None
        assert self._post is not None and self._gm is not None
        example_inputs, graph_kwargs, settings = self._post
        constants = CompiledFxGraphConstantsWithGm(self._gm)
        with torch._inductor.config.patch(settings):
            graph.after_deserialization(constants)
            if self._cache is not None:
                _save(graph, example_inputs, *self._cache)
            graph.post_compile(example_inputs, constants, graph_kwargs)
        self._compiled, self._gm, self._post, self._cache = graph, None, None, None


def _save(graph: Any, example_inputs: Any, key_info: tuple, context: Any) -> None:
    """Save a compiled graph in Inductor's on-disk cache, as ``compile_fx_inner`` does after a miss.

    Under the tracing context of its compilation, whose shape environment gives the entry's guards.
    A failure leaves the cache without the entry (Inductor's own save logs and skips its errors).
    """
    from torch._inductor.codecache import FxGraphCache

    key, debug_lines = key_info
    graph._fx_graph_cache_key, graph._fx_graph_cache_debug_lines = key, debug_lines
    with torch._guards.tracing(context), contextlib.suppress(Exception):
        FxGraphCache._save_graph(key, graph, example_inputs, local=True, remote_cache=None)


def compile_in_worker(data: bytes) -> bytes:
    """Compile one job of :func:`_job` in the worker; returns the pickled compiled graph.

    The settings are the user's process's (Inductor's configuration at the time of the trace), and the
    code generation is the solver's (:func:`~hybrid_node.loop.inductor.codegen_contexts`).
    """
    from torch._inductor.compile_fx import _InProcessFxCompile
    from torch._inductor.compile_fx_ext import _current_fake_mode, _WireProtocolPickledInput
    from torch._inductor.debug import DebugContext

    from .inductor import codegen_contexts

    wire = _WireProtocolPickledInput(data).deserialize()
    for module in wire.gm.modules():  # the loop bodies come back without their generated code
        if isinstance(module, torch.fx.GraphModule):
            module.recompile()
    with contextlib.ExitStack() as stack:
        stack.enter_context(wire.virtualized.patch())
        stack.enter_context(wire.lowering.patch())
        stack.enter_context(torch._inductor.config.patch(wire.config))
        stack.enter_context(torch._guards.tracing(wire.tracing_context))
        stack.enter_context(DebugContext())
        stack.enter_context(wire.fake_tensor_mode.patch(_current_fake_mode()))
        stack.enter_context(codegen_contexts())
        graph = _InProcessFxCompile().codegen_and_compile(
            wire.gm, wire.example_inputs, wire.inputs_to_check, wire.graph_kwargs
        )
    # what Inductor's on-disk cache stores: the generated code and the compiled library's path
    graph.prepare_for_serialization()
    return pickle.dumps(graph)


class _Worker:
    """One worker process (``python -m hybrid_node.loop.background``) and the answers it owes.

    Jobs are answered in the order they are sent. Sending happens in a thread: a new worker reads its
    first job only once it has imported torch (~2 s), and writing a job larger than the pipe's buffer
    waits for that.
    """

    def __init__(self, command: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))  # this process's imports, a checkout included
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: killed with its g++ children
            preexec_fn=_lower_priority,  # before it imports torch
        )
        self._pending: deque[concurrent.futures.Future] = deque()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name="hybrid_node-compile-answers", daemon=True).start()

    def submit(self, data: bytes) -> concurrent.futures.Future:
        """Send one job; the future's result is the worker's answer (bytes), or its error."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def send() -> None:
            with self._lock:
                try:
                    assert self.process.stdin is not None
                    self.process.stdin.write(_HEADER.pack(len(data)) + data)
                    self.process.stdin.flush()
                except (OSError, ValueError) as error:  # ValueError: the answers' reader closed the pipe
                    future.set_exception(RuntimeError(f"the compile worker has exited ({error})"))
                    return
                self._pending.append(future)

        threading.Thread(target=send, name="hybrid_node-compile-send", daemon=True).start()
        return future

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            message = _read_message(stream)
            if message is None:
                break
            ok, payload = pickle.loads(message)
            with self._lock:
                future = self._pending.popleft()
            if ok:
                future.set_result(payload)
            else:
                future.set_exception(RuntimeError(payload))
        with self._lock:  # the worker has exited: nothing more will come
            while self._pending:
                self._pending.popleft().set_exception(RuntimeError("the compile worker has exited"))
            for pipe in (self.process.stdin, stream):
                with contextlib.suppress(OSError, AttributeError):
                    pipe.close()  # type: ignore[union-attr]

    def kill(self) -> None:
        """End the worker and whatever it started (its ``g++`` processes)."""
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.wait()


#: the worker's scheduling priority below the process's (its ``g++`` children inherit it): on a machine
#: with few cores, the user's process keeps its core while both are busy
NICENESS = 10
#: the command that starts a worker (tests replace it to see a worker fail)
WORKER_COMMAND = [sys.executable, "-m", "hybrid_node.loop.background"]
_WORKERS: list[_Worker] = []
_WORKER_LOCK = threading.Lock()
#: the answers owed so far (for :func:`wait`)
_SUBMITTED: list[concurrent.futures.Future] = []


def _lower_priority() -> None:
    os.nice(NICENESS)


def start() -> None:
    """Start the worker process now (it prepares while the process traces its first graph)."""
    _worker()


def _worker() -> _Worker:
    with _WORKER_LOCK:
        if not _WORKERS or _WORKERS[-1].process.poll() is not None:
            if not _WORKERS:
                atexit.register(_kill_workers)
            _WORKERS.append(_Worker(list(WORKER_COMMAND)))
        return _WORKERS[-1]


def wait(timeout: float | None = None) -> bool:
    """Wait until the worker has answered every graph sent to it so far (each graph switches to its
    compiled form on its next call).

    Args:
        timeout: the longest wait in seconds (None: no limit).

    Returns:
        Whether every answer has arrived.
    """
    answered = not concurrent.futures.wait(list(_SUBMITTED), timeout).not_done
    _SUBMITTED[:] = [f for f in _SUBMITTED if not f.done()]
    return answered


def _kill_workers() -> None:
    for worker in _WORKERS:
        worker.kill()


def _read_message(stream) -> bytes | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    body = stream.read(size)
    return body if len(body) == size else None


def _prepare() -> None:
    """What every compilation in the worker needs first: Inductor's compiler and code generation
    imported (~2.5 s) and the CPU's vector instruction set detected (~1 s), done while the process traces."""
    from torch._inductor import compile_fx, lowering  # noqa: F401
    from torch._inductor.codegen import cpp_wrapper_cpu  # noqa: F401
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    from . import cpu_gemm  # noqa: F401

    pick_vec_isa()


def _serve() -> None:
    """The worker's loop: read a job from stdin, answer ``(ok, compiled graph or error text)`` on stdout."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a print in the compiler must not enter the channel
    torch.set_num_threads(1)
    with contextlib.suppress(Exception):  # a failure here is met again, and reported, by the compilation
        _prepare()
    while (message := _read_message(sys.stdin.buffer)) is not None:
        try:
            answer: tuple[bool, Any] = (True, compile_in_worker(message))
        except Exception as error:  # noqa: BLE001 - reported to the process, which keeps the graph uncompiled
            answer = (False, f"{type(error).__name__}: {error}")
        body = pickle.dumps(answer)
        channel.write(_HEADER.pack(len(body)) + body)
        channel.flush()


if __name__ == "__main__":
    _serve()
