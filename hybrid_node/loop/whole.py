"""The whole adaptive solve as one compiled graph: a ``while_loop`` of the device loop's step attempts.

The device-resident loop (:mod:`hybrid_node.loop.device`) already writes a step attempt as a pure
tensor state machine: the landing rule, the stages, the error ratio, accept/reject by ``torch.where``,
the PID proposal, the dense output into a preallocated buffer, the counters and the status code, all
from the one step decision of :mod:`hybrid_node.loop.core`. It still returns to the host after every
``sync_every`` attempts to read the status. Here the same :func:`~hybrid_node.loop.device.attempt` is
the body of ``torch._higher_order_ops.while_loop`` whose condition is "status is RUNNING", so
``torch.compile(fullgraph=True)`` turns the whole solve, the field included, into one graph: no Python
runs between attempts and the host reads the result once, after the solve (diffrax's design, in
torch: Kidger, "On Neural Differential Equations", 2021, Section 5.1; Ansel et al., "PyTorch 2",
ASPLOS 2024, for TorchDynamo/Inductor and their higher-order operators).

What torch 2.13 does with it (measured, see ``tests/test_whole_solve.py`` and docs/compiled_solve.md):

- forward solves (no autograd graph: ``torch.no_grad``, the adjoints' forward passes, inference)
  compile and run, with the eager solver's steps and outputs up to rounding;
- direct backpropagation: autograd differentiates ``while_loop``, with the eager gradients once the
  loop's state, derivative and output buffer start as differentiable carries (torch 2.13 drops the
  gradient through a carry that starts constant, :mod:`.while_grad`), but Inductor refuses the C++
  wrapper for its backward and without it the first call took 4x longer than with per-step graphs
  (the step 2.4x shorter), so a solve that needs an autograd graph runs with those (see :func:`integrate_whole`),
  unless ``options={"compile": "fullgraph"}`` asks for the whole-solve graph (compiled without the
  C++ wrapper, its backward in the first call: :class:`WholeSolve`'s ``backprop``);
- ``torch.export`` of a module containing the loop works (:func:`export_solve` is the entry point);
- ``torch.func.vmap`` and ``jacrev`` over ``while_loop`` raise inside torch (no batching rule for the
  operator), see :func:`hybrid_node.loop.whole` tests; those transforms are documented limitations;
- side effects of the field inside the loop are not allowed by the compiler; an ``nn.Module`` field
  that counts its own calls (``self.nfe += 1``) is handled by restoring its plain number attributes
  after every evaluation inside the graph, and after the solve each such counter is advanced by its
  step times the graph's evaluations, so ``func.nfe`` reads as after an eager solve. Which attributes
  are such counters, and their steps, is found once per graph, by two eager evaluations
  (:meth:`WholeSolve.counters`); a forward solve then runs no
  Python between its arguments and its one host read: f0, the initial step, the loop and the
  outputs are all in the graph.

Decisions equal the eager solver's (the same initial step, Hairer's heuristic evaluated inside the
graph with :func:`initial_step_tensor`, the same stretch rule, controller, floor and failures); the
compiled kernels may round differently, so a
step whose error ratio lies within rounding of 1 may be decided the other way. Tolerances enter the
graph as tensors, so a new ``rtol`` or ``atol`` reuses the compiled graph; so do the step settings
``first_step``, ``min_step``, ``max_step`` and ``max_num_steps`` of a forward solve and the PID
numbers ``pcoeff``, ``icoeff``, ``dcoeff``, ``safety``, ``ifactor`` and ``dfactor``
(:func:`settings_vector`).

Scope: solves with an explicit first-same-as-last pair: dopri5, tsit5, bosh3 (as the device loop) and
dopri8, whose own dense output (three more stages) the graph builds on every attempt; no events,
``jump_t``/``step_t`` or dense output over the interval. The backsolve adjoint's backward solve is
one call of such a graph, the cotangents applied inside the loop (:mod:`.whole_impulses`); the
interpolating adjoint's backward pass is one graph call per checkpoint segment
(:mod:`.whole_segments`). Other methods and problems keep per-step compiled attempts
(:mod:`.compiled_step`).

References: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.4 (error norm, step-size
control, initial step); Ansel et al., "PyTorch 2: Faster Machine Learning Through Dynamic Python
Bytecode Transformation and Graph Compilation", ASPLOS 2024.
"""

from __future__ import annotations

import array
import functools
import math
import re
import time
import types
from collections.abc import Callable, Sequence

import torch
from torch._higher_order_ops.while_loop import while_loop

from .._autocast import field_owner, traced_field_autocast
from .._errors import SolverError, Status
from .._memo import memoized
from .._problem import real_dtype
from .._solution import Stats
from .._term import Term
from .._transforms import forward_mode_active
from ..controllers import (
    PIDController,
    error_precision,
    first_trial_step,
    initial_step_from_trial,
    rms_norm,
    tolerance_precision,
)
from ..solvers.base import AbstractSolver
from ..solvers.runge_kutta import ExplicitRungeKutta
from . import core
from .compiled_step import PureField, compiler_failed, graphs_of, term_field, warn_fallback
from .core import RUNNING
from .counters import advance, frozen_counters, number_modules, probe
from .device import Impulses, LoopState, Tables, attempt, initial_state, make_tables, summary
from .diagnose import solve_cause
from .graph_inputs import graph_control, settings_vector, tolerance_tensor, with_settings
from .host import Integration
from .inductor import compile_for, inductor_options, own_code
from .while_grad import differentiable_carries

_STATUS = LoopState._fields.index("status")
#: the carries that a tensor requiring grad can reach: the state, its derivative, the output buffer
_DIFFERENTIABLE = tuple(LoopState._fields.index(k) for k in ("y", "f0", "outs"))

#: the largest buffer of stage derivatives (bytes) whose attempts loop over their stages (about a
#: core's second-level cache; :meth:`WholeSolve.loops_stages`)
STAGE_BUFFER_BYTES = 1 << 20

#: the seconds the last compiling call of each whole-solve graph took (key -> seconds), for the
#: benchmarks and docs; a plain record, never read by the solver
COMPILE_SECONDS: dict = {}


def applies(problem, event_fn, dense: bool) -> bool:
    """Whether ``options={"compile": True}`` runs this problem as one whole-solve graph.

    Args:
        problem: the validated problem.
        event_fn: the terminal event function, or None.
        dense: dense output over the whole interval is requested.

    Returns:
        True for a compiled solver that declares ``supports_whole_solve`` with a PID controller that
        asks for no other loop strategy, no events, ``jump_t``/``step_t`` or dense output.
    """
    solver, ctrl = problem.solver, problem.controller
    return bool(
        solver.compile
        and solver.supports_whole_solve
        and isinstance(ctrl, PIDController)
        and not (ctrl.per_sample or ctrl.device_loop)
        and event_fn is None
        and not dense
        and not problem.jump_t
        and not problem.step_t
    )


_FLOATS = ("t", "dt", "r1", "r2")
_INTS = ("i_out", "n_att", "n_acc", "n_rej", "status")
_FLAGS = ("last_nonfinite", "saw_nonfinite", "stale_f0")


def pack(state: LoopState) -> tuple[torch.Tensor, ...]:
    """The graph's inputs for ``state``: its 0-d float64, int64 and bool members stacked into one
    vector each, then y, f0 and the output buffer.

    Dynamo 2.13 gives a 0-d float64 or int64 *input* a symbolic ``.item()`` value; inside the
    ``while_loop`` that symbol is specialised later, which restarts the whole analysis (Dynamo traces
    the loop twice, AOT and the pre-passes run twice: about a quarter of the first call's time). A 1-d
    vector carries no such symbol.

    Args:
        state: the loop state.

    Returns:
        (floats, ints, flags, y, f0, outs), the arguments :func:`unpack` takes.
    """
    return (
        torch.stack([getattr(state, k) for k in _FLOATS]),
        torch.stack([getattr(state, k) for k in _INTS]),
        torch.stack([getattr(state, k) for k in _FLAGS]),
        state.y,
        state.f0,
        state.outs,
    )


def unpack(floats: torch.Tensor, ints: torch.Tensor, flags: torch.Tensor, y, f0, outs) -> LoopState:
    """The :class:`LoopState` that :func:`pack` stacked (copies: a loop may not carry views of its inputs).

    Args:
        floats, ints, flags: the stacked scalar members; y, f0, outs: the tensors, as :func:`pack` returns them.

    Returns:
        The loop state.
    """
    groups = ((_FLOATS, floats), (_INTS, ints), (_FLAGS, flags))
    fields = {k: x.clone() for names, vec in groups for k, x in zip(names, vec)}
    return LoopState(y=y, f0=f0, outs=outs, **fields)


def _restoring(owner, fn: Callable) -> Callable:
    """``fn`` with the plain number attributes of ``owner``'s modules put back after each call (the
    compiler refuses a side effect that outlives the loop body; a module counting its own calls is the
    common one, so its counters are restored, traced and free), its result contiguous.

    A loop's carried values must keep their strides from one iteration to the next, and the
    derivative is carried (f0). A field may return a broadcast view (a time-only forcing
    ``b.expand_as(y)``, strides 0): the first derivative then had strides the loop's own (computed)
    one has not, and ``while_loop`` refused the graph. ``contiguous()`` costs nothing on the usual
    contiguous result."""
    modules = number_modules(owner)

    def call(*args):
        saved = [(m, k, v) for m in modules for k, v in vars(m).items() if type(v) in (int, float)]
        out = fn(*args)
        for m, k, v in saved:
            setattr(m, k, v)
        return out.contiguous()

    return call


def _restoring_field(pure: PureField, owner) -> Callable:
    """``field(t, y)``: the traceable field of ``owner``, its counters restored (:func:`_restoring`)."""
    return _restoring(owner, lambda t, y: pure.field(owner, t, y))


def _loop(
    field: Callable,
    solver: ExplicitRungeKutta,
    c: core.StepControl,
    tables: Tables,
    rtol,
    atol,
    norm,
    state: LoopState,
    impulses: Impulses | None = None,
) -> LoopState:
    def cond_fn(*s):
        return s[_STATUS] == RUNNING

    def body_fn(*s):
        return tuple(attempt(field, solver, c, tables, rtol, atol, norm, LoopState(*s), impulses))

    # under autograd (a traced solve run with gradients), torch 2.13's while_loop backward passes no
    # gradient across iterations through a carry that starts constant (the NaN output buffer; the
    # state when only the field's parameters require grad): they start differentiable
    carried = differentiable_carries(tuple(state), _DIFFERENTIABLE)
    return LoopState(*while_loop(cond_fn, body_fn, carried))


def _impulses_function(pure: PureField, solver: ExplicitRungeKutta, c: core.StepControl) -> Callable:
    """``solve(owner, floats, ints, flags, y, f0, outs, tables, rtol, atol, norm, impulses, settings) ->
    (state, summary)``: attempts until the status is not RUNNING, from the :func:`pack`-ed state, with
    the jumps ``impulses`` at the inner output times (:mod:`.whole_impulses`). ``c`` is a
    :func:`graph_control` and ``settings`` its :func:`settings_vector`, an input as in the forward
    graph (the first step is the packed state's: its entry is not read)."""

    def solve(owner, floats, ints, flags, y, f0, outs, tables, rtol, atol, norm, impulses, settings):
        state = unpack(floats, ints, flags, y, f0, outs)
        field = _restoring_field(pure, owner)
        out = _loop(field, solver, with_settings(c, settings), tables, rtol, atol, norm, state, impulses)
        return out, summary(out)

    return solve


def _forward_function(pure: PureField, solver: ExplicitRungeKutta, c: core.StepControl, heuristic: bool) -> Callable:
    """``solve(owner, y0, settings, tables, rtol, atol, norm) -> (ys, summary, y)``: the whole forward
    solve, its start included: the derivative at (ts[0], y0), the first step (Hairer's heuristic when
    ``heuristic``, else the given one, ``settings[0]``), the initial loop state, the loop, and the
    outputs at all of ``tables.ts`` (y0 first) with the :func:`summary` of the final state and its
    state ``y`` (the last accepted one). ``c`` is a :func:`graph_control`; the step settings are the
    :func:`settings_vector` ``settings``, an input (a new value compiles nothing)."""
    order = int(solver.error_order or 0)

    def solve(owner, y0, settings, tables, rtol, atol, norm):
        field = _restoring_field(pure, owner)
        control = with_settings(c, settings)
        t0 = tables.ts[0].clone()
        f0 = field(t0, y0)
        if heuristic:
            # host.first_step's clamp, min(max(dt, min_step), max_step)
            h = initial_step_tensor(field, t0, y0, f0, order, rtol, atol, norm)
            dt = torch.clamp(h, min=control.min_step, max=control.max_step)
        else:  # (clamped on the host, as host.first_step clamps it)
            dt = settings[0].clone()
        state = initial_state(y0, f0, t0, dt, tables.ts.shape[0])
        out = _loop(field, solver, control, tables, rtol, atol, norm, state)
        ys = torch.cat([y0.unsqueeze(0), out.outs])
        # whether every output is finite, read with the summary: the host need not test the outputs;
        # the state where the loop stopped is read only on a failure, to name its cause
        return ys, torch.cat([summary(out), torch.isfinite(ys).all().double().reshape(1)]), out.y

    return solve


#: the global names through which Dynamo reaches this library's and torch's own modules (the compiled
#: function's globals are this module's; functions it inlines from other modules are reached as
#: ``G['__import_<dotted module name>']``, dots written ``_dot_``)
_LIBRARY_ROOTS = ("__import_hybrid_node_dot_", "__import_torch_dot_", "__builtins_dict")
_ROOT = re.compile(r"^G\['([^']+)'\]|^(\w+)")


def library_guards(fn: Callable) -> Callable:
    """A ``guard_filter_fn`` for ``torch.compile(fn)`` that leaves out the guards on this library's
    own objects and keeps every other guard.

    Dynamo guards every object the trace read. For the whole-solve graph about a third of them
    (465 of 1388 for the benchmark's MLP) check objects that cannot change between calls: the
    closure of the graph's function (the method, step-control constants and field description, frozen
    objects that are part of the graph's cache key) and the modules of this library and of torch
    reached from its code (``math``, ``torch.where``, ``LoopState``, ...). Evaluating them cost about
    0.15 ms per call. Everything that the user can change stays guarded: the field (the owner
    argument: its parameters and buffers as tensors, its attributes, submodules, hooks, ``training``),
    the inputs' shapes and dtypes, the global state (grad mode) and the globals of the user's own
    modules. A parameter changed in place needs no guard at all: parameters are inputs of the graph,
    read on every call.
    """
    closure = set(fn.__code__.co_freevars)
    own = set(fn.__globals__)

    def ours(name: str) -> bool:
        m = _ROOT.match(name)
        if m is None:
            return False
        glob, local = m.groups()
        if glob is not None:
            return glob in own or glob in ("__import_hybrid_node", "__import_torch") or glob.startswith(_LIBRARY_ROOTS)
        return local in closure

    def guard_filter(entries) -> list[bool]:
        return [not ours(e.name) for e in entries]

    return guard_filter


class WholeSolve:
    """The compiled whole-solve graph of one field, method and step control, cached on the field.

    Args:
        pure: the traceable field.
        solver: the first-same-as-last embedded pair.
        c: the step-control constants.
        norm: the error norm (traced into the graph; an argument of each call, so another instance
            of one norm class, such as the adjoint's per-solve group norm, reuses the graph).
        device_type: where the graph runs ("cpu", "cuda", ...); a CUDA graph is replayed as a CUDA
            graph (mode "reduce-overhead").
        start: "forward": the graph is the whole forward solve from (ts[0], y0), the derivative there
            and the first step included (:func:`_forward_function`; ``heuristic``: Hairer's initial
            step, else the given one); "impulses": the graph solves from a :func:`pack`-ed state with
            jumps at the output times (:func:`_impulses_function`, :mod:`.whole_impulses`; on the
            CPU its attempts may run their stages in an inner loop, :meth:`loops_stages`); any other
            name: the graph is ``build()`` (:mod:`.whole_segments`).
        heuristic: see ``start``.
        backprop: the graph is differentiated (a "forward" graph called under autograd: direct
            backprop with ``compile="fullgraph"``): a graph of its own, compiled without Inductor's C++
            wrapper (it refuses the loop's backward, "NYI cpp wrapper for while_loop_stack_output") and
            with its backward compiled in the first call (:meth:`_call`), so that a compiler failure
            there falls back like one in the forward graph instead of raising in ``backward()``.
        build: for another ``start``, makes the function to compile, called as ``fn(owner, *args,
            norm, *extra)``; ``variant`` is what tells its graphs apart besides the other arguments.
    """

    def __init__(
        self,
        pure: PureField,
        solver: ExplicitRungeKutta,
        c: core.StepControl,
        norm,
        device_type: str,
        start: str = "impulses",
        heuristic: bool = True,
        build: Callable[[], Callable] | None = None,
        variant: tuple = (),
        backprop: bool = False,
    ):
        self.owner = pure.owner
        self.backprop = backprop
        self.cuda_graphs = cuda_graphs = device_type == "cuda"
        self._may_loop_stages = start == "impulses" and device_type == "cpu"
        # a plain function norm is its own key; an instance (the adjoint's GroupRMS, built per backward
        # pass) is keyed by its class, and the compiler's guards tell its instances apart if they differ
        norm_key = norm if isinstance(norm, types.FunctionType) else type(norm)
        self.norm = norm
        variant = (start, heuristic, backprop) if start == "forward" else (start, *variant)
        self.key = ("whole_solve", pure.key, solver, c, norm_key, device_type) + variant
        self._graphs = graphs_of(pure.owner)
        if self.key not in self._graphs:
            # fullgraph: a graph break inside while_loop is an error anyway; saying so up front makes
            # the failure immediate and the fallback clean
            if start == "forward":
                fn = _forward_function(pure, solver, c, heuristic)
            elif start == "impulses":
                fn = _impulses_function(pure, solver, c)
            else:
                assert build is not None  # another start names its own function
                fn = build()
            # a code object of its own: the compiler's cache and recompilation limit are per code
            # object, and every field, method and direction is another graph of this one function
            fn = own_code(fn)
            # dynamic=False: a value seen to change between compilations in one process must not become
            # a symbolic scalar inside the loop body, which Inductor 2.13 cannot lower (KeyError
            # 'unbacked_bindings' on aten._local_scalar_dense, seen running tsit5 after dopri5)
            # the guards on the library's own objects are left out (see library_guards)
            cpu = device_type == "cpu"
            options = {**inductor_options(cuda_graphs, cpu=cpu), "guard_filter_fn": library_guards(fn)}
            if backprop:
                options = without_cpp_wrapper(options)
            self._graphs[self.key] = compile_for(
                fn, cpu, compiler=solver.compiled_in, fullgraph=True, options=options, dynamic=False
            )
            self._graphs[(self.key, "first")] = True

    def loops_stages(self, solver: ExplicitRungeKutta, state: torch.Tensor) -> bool:
        """Whether the attempts of a solve from ``state`` run their stages in an inner loop
        (:mod:`.stage_loop`; the solve's tables then hold the stage coefficients).

        The backward solve's field (a vector-Jacobian product) is then one copy in the graph instead
        of one per stage: the mlp adjoint's backward graph compiles in 4.4-4.7 instead of 7.1-7.6 s,
        its step 8% slower. Only where the buffer of stage derivatives fits in :data:`STAGE_BUFFER_BYTES`:
        every stage writes the whole buffer anew (a loop may not update its input in place), which
        for a large state costs more than the field (the conv adjoint's 25 MB buffer: its step 637
        instead of 526 ms). Not on a GPU, where each iteration of a loop makes the host wait for
        the device's predicate. docs/compiled/first_call.md, "The backward graph's stages in a loop, and no
        pattern matcher".
        """
        size = solver.tableau.stages * state.numel() * state.element_size()
        return self._may_loop_stages and size <= STAGE_BUFFER_BYTES

    def padded(self, ts: Sequence[float]) -> list[float]:
        """The output times a solve over ``ts`` runs with: ``ts`` itself for the first number of output
        times the graph sees (and for any it has seen), and for another number ``ts`` with its last time
        repeated up to the next power of two (a forward solve writes the repeats with the end state
        and they are dropped; an "impulses" solve ends before them; the steps are the same). A graph
        holds its tables of output times, so each number of output times is a graph of its own:
        solves over many different numbers (a latent ODE's union grids) then share a few graphs
        instead of compiling one each (and running out of torch's eight)."""
        n = len(ts)
        seen = self._graphs.setdefault((self.key, "rows"), set())
        rows = n if not seen or n in seen else 1 << (n - 1).bit_length()
        seen.add(rows)
        return list(ts) + [ts[-1]] * (rows - n)

    @property
    def failed(self) -> bool:
        """The compiler rejected this field before (it is not tried again)."""
        return self._graphs.get(self.key) is None

    def counters(self, term, t0: float, y0: torch.Tensor) -> list | None:
        """The field's call counters (:func:`~hybrid_node.loop.counters.probe`, two eager
        evaluations at (t0, y0), the first time for each combination of its modules' training
        modes; kept with the graph), or None when an evaluation writes the field's buffers (a
        ``BatchNorm`` in training mode): the loop would drop those writes, so such a field is solved
        with per-step graphs, which keep them."""
        # a BatchNorm writes its running statistics in training mode only: a probe made in eval
        # mode does not hold after ``.train()`` (the compiler recompiles on the mode, the probe must too)
        modes = tuple(m.training for m in self.owner.modules()) if isinstance(self.owner, torch.nn.Module) else ()
        key = (self.key, ("counters", modes))
        effects = self._graphs.get(key)
        if effects is None:
            effects = self._graphs[key] = probe(self.owner, term, t0, y0)
        return None if effects.writes_buffers else effects.counters

    def __call__(self, *args, counters=(), extra: tuple = ()) -> tuple | None:
        """The graph's outputs on ``args`` (after the owner, before the norm), or None when the
        compiler rejects the field.

        ``counters``: the number attributes the field advances on each call (see :func:`frozen_counters`);
        ``extra``: the arguments after the norm (an "impulses" graph's
        :class:`~hybrid_node.loop.device.Impulses` and :func:`settings_vector`).
        """
        graph = self._graphs.get(self.key)
        if graph is None:
            return None
        first = self._graphs.pop((self.key, "first"), False)
        start = time.perf_counter()
        try:
            if counters:
                with frozen_counters(counters):
                    out = self._call(graph, args, extra)
            else:
                out = self._call(graph, args, extra)
        except Exception as e:
            if not compiler_failed(e):
                raise
            hint = ""
            if isinstance(e, torch._dynamo.exc.FailOnRecompileLimitHit):
                hint = (
                    " Its loop graph was compiled for eight state shapes or numbers of output times already;"
                    " the per-step graphs do not depend on the number of output times."
                )
            elif "aliasing during higher order op tracing" in str(e):
                # torch 2.13's while_loop lifts every read of ``tensor.T`` (a property of a parameter,
                # buffer or global) as an input of its own, views of one tensor, which it refuses
                hint = " If the field reads `.T` of a parameter or global tensor, write `.t()` (same values, compiles)."
            outcome = "its solves run with compiled steps instead (eagerly where those are refused too)"
            warn_fallback(self.owner, e, outcome, hint, stacklevel=4)
            self._graphs[self.key] = None
            return None
        if first:
            COMPILE_SECONDS[self.key] = time.perf_counter() - start
        return out

    def _call(self, graph, args, extra) -> tuple:
        if self.backprop:
            # AOTAutograd compiles a backward graph at the first backward() (lazily) by default; a
            # failure there would come out of the user's backward(), past the fallback: compile it with
            # the forward graph (the flag is read only while a graph is compiled)
            with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                return self._run(graph, args, extra)
        return self._run(graph, args, extra)

    def _run(self, graph, args, extra) -> tuple:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
            out = graph(self.owner, *args, self.norm, *extra)
            # the graph's outputs live in its memory pool until the next replay: copy them out
            return torch.utils._pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, out)
        return graph(self.owner, *args, self.norm, *extra)


def without_cpp_wrapper(options: dict) -> dict:
    """The options for a differentiated whole-solve graph: Python's wrapper instead of the C++ one.

    Inductor 2.13 refuses the C++ wrapper for a ``while_loop`` whose iterations are kept for the
    backward pass ("NYI cpp wrapper for while_loop_stack_output"), so such a graph runs the kernels
    from Python (a host loop over the attempts, as Inductor writes every ``while_loop``).

    Args:
        options: :func:`~.inductor.inductor_options` of a graph.

    Returns:
        The same options without ``cpp_wrapper`` and the settings that only the C++ wrapper reads.
    """
    return {k: v for k, v in options.items() if not k.startswith(("cpp_wrapper", "aot_inductor."))}


def integrate_whole(
    term: Term,
    solver: ExplicitRungeKutta,
    controller: PIDController,
    y0: torch.Tensor,
    ts: Sequence[float],
    *,
    rtol,
    atol,
    norm,
    throw: bool = True,
) -> Integration | None:
    """Integrate from ts[0] through the increasing times ``ts`` with the whole-solve graph.

    Args:
        term: the wrapped field (solver time); counts the evaluations.
        solver: a first-same-as-last embedded pair (``supports_whole_solve``).
        controller: the PID step-size controller.
        y0: flat initial state.
        ts: increasing output times (host floats, solver time).
        rtol, atol: tolerances (floats or tensors broadcastable to the state).
        norm: error norm (must be traceable; the default RMS norm is).
        throw: raise SolverError on failure, else report the status (outputs not reached are NaN).

    Returns:
        Integration as the host loop returns it, or None when the field has no traceable form, has
        step callbacks (``callback_step`` ...), the solve needs an autograd graph and the solver
        is not ``fullgraph`` (``compile=True``: per-step graphs compile 4x faster), or the compiler
        rejects it (the caller then runs another loop; ``term.nfe`` is left as it was).

    Raises:
        SolverError: on max steps, step-size underflow or a non-finite state, when ``throw``.
    """
    pure = term_field(term) if isinstance(term, Term) else getattr(term, "pure_field", None)
    if pure is None or not solver.supports_whole_solve:
        return None
    if getattr(term, "callbacks", None):
        # the user's step callbacks are host Python, called between attempts, which the graph has
        # not: the per-step graphs' host loop calls them, as the eager one does
        return None
    if forward_mode_active():
        # dual inputs (torch.autograd.forward_ad) neither require grad nor survive the graph: their
        # tangents came out zero, silently (d y(1) / d theta . v read 0 for y' = A y); eager steps carry them
        return None
    backprop = torch.is_grad_enabled() and (y0.requires_grad or _has_grad_params(pure.owner))
    if backprop and not solver.fullgraph:
        # through the loop the gradients are the eager ones (_loop), but Inductor refuses the C++
        # wrapper for its backward, and without it the first call took 63 against 16 s of the
        # per-step graphs (its step 3.8 against 9.1 ms; docs/compiled/fixes.md): those run it,
        # unless the user chose the whole graph (compile="fullgraph")
        return None
    c = core.StepControl.of(controller, int(solver.error_order or 0), y0.dtype)  # adaptive: never 0
    heuristic = controller.first_step is None
    # the settings a user varies between solves are inputs: the key and closure leave them out
    graph = WholeSolve(
        pure,
        solver,
        graph_control(c),
        norm,
        device_type=y0.device.type,
        start="forward",
        heuristic=heuristic,
        backprop=backprop,
    )
    if graph.failed:
        return None
    if len(ts) == 1:  # (the dispatcher answers such a solve itself)
        return Integration([y0], Stats(nfe=term.nfe), Status.SUCCESS, ts[0])
    counters = graph.counters(term, ts[0], y0)
    if counters is None:
        return None
    y0 = y0.contiguous()  # the loop's carried state must keep its strides (a column slice has others)
    tables = cached_tables(solver, graph.padded(ts), y0)
    settings = settings_vector(controller, c, y0)
    out = graph(y0, settings, tables, tolerance_tensor(rtol, y0), tolerance_tensor(atol, y0, 1), counters=counters)
    if out is None:
        return None
    ys, info, y_end = out
    ys = ys[: len(ts)]
    values = info.tolist()  # the one host read of the solve
    status, t, dt, n_att, n_acc, n_rej = read_out(values)
    # the graph's evaluations: f0, the initial step's trial (when it is Hairer's), the attempts
    count_evaluations(term, counters, 1 + heuristic + evaluations_per_attempt(solver) * n_att)
    stats = Stats(nfe=term.nfe, n_accepted=n_acc, n_rejected=n_rej)
    if status is not Status.SUCCESS and throw:
        raise solve_error(status, t, dt, controller, term, stopped=(solver, y_end, y0))
    return Integration(None, stats, status, t, stacked=ys, finite=bool(values[-1]))


def first_step_tensor(controller: PIDController, device: torch.device) -> torch.Tensor:
    """The controller's given first step within [min_step, max_step] (as :func:`~hybrid_node.loop.host.first_step`
    clamps it), as a (1,) float64 tensor on ``device``."""
    assert controller.first_step is not None  # the heuristic's graph takes no step
    dt = min(max(float(controller.first_step), controller.min_step), controller.max_step)
    return torch.tensor([dt], dtype=torch.float64, device=device)


#: (output times, dense-output coefficients, device) -> Tables: the tables of a forward solve, built
#: once for repeated solves over the same times (a few entries: one per distinct grid in use)
_TABLES: dict = {}
_TABLES_MAX = 32


def cached_tables(solver: ExplicitRungeKutta, ts: Sequence[float], like: torch.Tensor) -> Tables:
    """:func:`~hybrid_node.loop.device.make_tables`, cached: the graph only reads them, so solves over
    the same output times on one device share one set of tensors instead of building five per solve."""
    key = (array.array("d", ts).tobytes(), solver.tableau.dense, like.device)  # bytes: -0.0 is not 0.0
    return memoized(_TABLES, key, lambda: make_tables(solver, ts, like), _TABLES_MAX)


def read_out(info: torch.Tensor | Sequence[float]) -> tuple[Status, float, float, int, int, int]:
    """The scalar results of a graph call, read to the host at once.

    Args:
        info: the :func:`~hybrid_node.loop.device.summary` the graph returned (built in the graph, so
            the host makes one small read), or its values already read.

    Returns:
        (status, t, dt, attempts, accepted steps, rejected steps).
    """
    values = info.tolist() if isinstance(info, torch.Tensor) else info
    code, t, dt, n_att, n_acc, n_rej = values[:6]  # (the device loop's non-finite flag is not read)
    return core.STATUS[int(code)], t, dt, int(n_att), int(n_acc), int(n_rej)


def evaluations_per_attempt(solver: ExplicitRungeKutta, outputs: bool = True) -> int:
    """Field evaluations of one masked attempt: its stages after the first, f(t1, y1) for a pair
    without first-same-as-last, and the method's own dense output, built on every attempt of a loop
    that interpolates its ``outputs`` (not by one whose steps end at the output times)."""
    dense = solver.dense_output_evaluations if outputs else 0
    return solver.tableau.stages - int(solver.tableau.fsal) + dense


def count_evaluations(term, counters: list, evaluations: int) -> None:
    """Count a graph's ``evaluations`` of the field: on the term (the solution's ``stats.nfe``) and on
    the field's own call counters, which the loop could not advance (:func:`~.counters.advance`)."""
    term.nfe += evaluations
    advance(counters, evaluations)


def solve_error(
    status: Status,
    t: float,
    dt: float,
    controller: PIDController,
    term,
    stopped: tuple[AbstractSolver, torch.Tensor, torch.Tensor] | None = None,
) -> SolverError:
    """The SolverError of a graph call that ended with a failure ``status`` at solver time ``t``.

    Where the graph hands back the state it stopped at, the cause is named as the eager loops name
    it, from that state (:func:`~hybrid_node.loop.diagnose.failure_cause`: a non-finite field or a
    blow-up; :func:`~hybrid_node.loop.diagnose.stiffness_cause` for an explicit method out of steps
    on a stiff problem), with a few eager evaluations of ``term`` there and no step of the solve
    taken again.

    Args:
        status: the failure; t, dt: where it ended and the last step; controller: for its step cap.
        term: the wrapped field the loop integrated (``term.reverse``: the solver time is ``-t``).
        stopped: (the method, the state where the loop stopped, the initial state), or None where
            the graph does not return that state (the status's generic advice is given).

    Returns:
        The error to raise (the user's time, the step cap or the last step as detail, a known cause).
    """
    detail = f"max_num_steps={controller.max_num_steps}" if status is Status.MAX_STEPS else f"dt={dt:.3g}"
    cause = "" if stopped is None else solve_cause(status, term, stopped[0], t, stopped[1], stopped[2], dt)
    return SolverError(status, -t if term.reverse else t, detail, cause)


def _has_grad_params(owner, depth: int = 2) -> bool:
    """Whether the field ``owner`` holds a tensor that requires grad, so that a solve in grad mode
    needs an autograd graph: an ``nn.Module``'s parameters, or what a function reaches through its
    ``__self__`` (a module's bound method), a ``functools.partial``'s function and arguments, its
    closure cells and the globals its code names (``depth`` levels of such functions).

    Before, only a module was looked into: a bound method ``model.dynamics`` or a closure over the
    model ran the whole-solve graph under autograd, which Inductor refused ("NYI cpp wrapper for
    while_loop_stack_output"): a warning that the field cannot be compiled, and no whole-solve graph
    for that field afterwards, in its ``torch.no_grad`` solves too.
    """
    if isinstance(owner, torch.nn.Module):
        return any(p.requires_grad for p in owner.parameters())
    if isinstance(owner, torch.Tensor):
        return owner.requires_grad
    if depth == 0:
        return False
    held: list = []
    if isinstance(owner, types.MethodType):
        held += [owner.__self__, owner.__func__]
    elif isinstance(owner, functools.partial):
        held += [owner.func, *owner.args, *owner.keywords.values()]
    elif isinstance(owner, types.FunctionType):
        for cell in owner.__closure__ or ():
            try:
                held.append(cell.cell_contents)
            except ValueError:  # a variable not assigned yet
                pass
        names = owner.__globals__
        held += [names[k] for k in owner.__code__.co_names if k in names]
    return any(_has_grad_params(x, depth - 1) for x in held if isinstance(x, _HOLDERS))


#: what :func:`_has_grad_params` looks into
_HOLDERS = (torch.nn.Module, torch.Tensor, types.MethodType, types.FunctionType, functools.partial)


def initial_step_tensor(
    field: Callable, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, order: int, rtol, atol, norm=rms_norm
) -> torch.Tensor:
    """Hairer's initial-step heuristic (:func:`hybrid_node.controllers.initial_step`) as tensor operations.

    The same formula without host reads, so a traced solve (``torch.export``) or a solve inside a
    ``torch.func`` transform contains it; a 0-d float64 tensor (one value per problem under ``vmap``).
    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.4, p. 169.
    """
    with torch.no_grad():
        # in float32 for a half-precision state, as the error test (float16 rounds atol = 1e-9 to 0)
        y0_e, f0_e = error_precision(y0), error_precision(f0)
        scale = tolerance_precision(atol) + torch.abs(y0_e) * tolerance_precision(rtol)
        d1 = norm(f0_e / scale).double()
        h0 = first_trial_step(norm(y0_e / scale).double(), d1)
        f1 = field(t0 + h0, y0 + h0.to(y0.dtype) * f0)
        d2 = norm((error_precision(f1) - f0_e) / scale).double() / h0
        return initial_step_from_trial(h0, d1, d2, order).detach()


def solver_time(
    func: Callable, y0: torch.Tensor, t: torch.Tensor, t_dtype: torch.dtype | None
) -> tuple[Callable, torch.Tensor]:
    """A traced solve's field and output times in solver time, increasing whatever the direction of ``t``.

    Decreasing output times are solved in s = -t on -f(-s, y), as the host loop does; the direction
    is a tensor factor (1 or -1, exact), since a traced program cannot branch on ``t``. The field
    gets the time in ``t_dtype`` (None: the state's real dtype, as the host loop gives it), and a
    call counter of the field is put back after each call (:func:`_restoring`).

    Returns:
        ``(field(s, y), ts)``: the field in solver time and the float64 output times ``t * sign``.
    """
    sign = torch.where(t[-1] < t[0], -1.0, 1.0).to(torch.float64)
    time_dtype = real_dtype(y0.dtype) if t_dtype is None else t_dtype
    # the counters are the user's module's, beneath the autocast wrapper of traced_field_autocast
    field = _restoring(field_owner(func), lambda s, yy: func((s * sign).to(time_dtype), yy) * sign)
    return field, t.to(torch.float64) * sign


def _rms_of_nonempty(r: torch.Tensor) -> torch.Tensor:
    """The RMS error norm of ``error_ratio_tensor`` (the vector norm over the square root of the element
    count) for a state that is not empty, without its ``max(r.numel(), 1)``.

    In a ``while_loop`` body traced by a non-strict ``torch.export`` (torch 2.13), ``max`` of an element
    count and a constant returns the constant: ``max(r.numel(), 1)`` is 1, so every error ratio came out
    sqrt(N) times too large (4x for an 8x2 state) and the exported program took other, smaller steps than
    the eager solve (8 instead of 7, outputs 3.5e-10 apart at rtol 1e-9 in float64; for a 512x64 state
    the tolerance would be 181 times tighter). ``math.sqrt(r.numel())`` is traced right, with a static or
    a dynamic batch size (a count fixed outside the loop made ``math.sqrt`` specialise a dynamic batch
    dimension), and gives the eager ratio to the last bit.

    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.4 (the RMS error norm).

    Args:
        r: the scaled error, at least one element.

    Returns:
        The RMS of ``r``'s elements (0-d).
    """
    return torch.linalg.vector_norm(r) / math.sqrt(r.numel())


@traced_field_autocast
def odeint_graph(
    func: Callable,
    y0: torch.Tensor,
    t: torch.Tensor,
    solver: AbstractSolver,
    controller: PIDController,
    t_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """An adaptive solve written entirely in traceable tensor operations, for ``torch.export`` and
    for ``torch.compile`` of a model that contains a solve.

    The host loop reads the output times and the initial step on the host, which a tracer cannot
    follow; here the times stay a tensor, the initial step is :func:`initial_step_tensor` and the loop
    is the whole-solve ``while_loop`` of :func:`attempt`, so the traced program holds the complete
    adaptive solve. A failed solve raises when the program runs (``torch._assert_async`` on the final
    status; the traced program cannot say where it failed, so the message says to run it untraced).

    Args:
        func: ``func(t, y)``, a tensor field free of side effects other than counters.
        y0: the initial state (a tensor).
        t: strictly increasing or strictly decreasing 1-D output times.
        solver: an explicit first-same-as-last pair (dopri5, tsit5, bosh3, dopri8; the solver
            object, not its name: a registry lookup inside a trace reads a mapping the tracer refuses).
        controller: the step control, with float tolerances (its first step, limits and norm are
            used as the host loop uses them).
        t_dtype: the dtype of the time handed to ``func`` (None: the state's real dtype, as the
            host loop's).

    Returns:
        The states at ``t``, shape (len(t), *y0.shape).

    Raises:
        ValueError: a method the whole-solve loop cannot run.
        RuntimeError: (when the program runs) the solve failed: maximum steps, step-size underflow
            or a non-finite state.
    """
    if not (isinstance(solver, ExplicitRungeKutta) and solver.supports_whole_solve):
        raise ValueError(f"a traced solve runs dopri5, tsit5, bosh3 or dopri8, not {solver.name!r}.")
    rtol, atol = float(controller.rtol), float(controller.atol)
    norm = controller.norm or rms_norm
    c = core.StepControl.of(controller, int(solver.error_order or 0), y0.dtype)
    dev = y0.device
    y0 = y0.contiguous()  # the loop's carried state must keep its strides (a column slice has others)
    field, ts = solver_time(func, y0, t, t_dtype)
    f0 = field(ts[0], y0)
    if controller.first_step is None:
        dt0 = initial_step_tensor(field, ts[0], y0, f0, int(solver.error_order or 0), rtol, atol, norm)
    else:
        dt0 = torch.tensor(float(controller.first_step), dtype=torch.float64, device=dev)
    dt0 = torch.clamp(dt0, min=c.min_step, max=c.max_step)  # host.first_step's clamp
    dense = solver.tableau.dense
    tables = Tables(
        ts,
        torch.arange(1, ts.shape[0], device=dev),
        None if dense is None else torch.tensor(dense, dtype=torch.float64, device=dev),
        None if dense is None else torch.arange(1, len(dense[0]) + 1, dtype=torch.float64, device=dev),
    )
    state = initial_state(y0, f0, ts[0], dt0, ts.shape[0])

    # (the initial step's norms, outside the loop, are rms_norm's own, as in the host loop)
    step_norm = _rms_of_nonempty if norm is rms_norm and y0.numel() > 0 else norm
    out = _loop(field, solver, c, tables, rtol, atol, step_norm, state)
    # the program cannot branch on the host, but it can refuse to return a failed solve's NaN rows
    torch._assert_async(out.status == core.SUCCESS, _TRACED_FAILURE)
    return torch.cat([y0.unsqueeze(0), out.outs])


#: the message of a traced solve that failed (the traced program cannot say which failure, or where)
_TRACED_FAILURE = (
    "hybrid_node: the traced adaptive solve failed (maximum steps, step-size underflow or a non-finite "
    "state); run the same solve outside torch.compile/torch.export for the time and the reason."
)
