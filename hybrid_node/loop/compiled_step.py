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
parameters (its vector-Jacobian products are then written with ``torch.func.vjp``, or, for a
field ``torch.func`` refuses, with a traced ``torch.autograd.grad``). Other fields run eagerly. A
field that calls ``torch.autograd.grad`` itself (an exact CNF trace) is traced with it; an attempt
the compiler would split into several graphs (a graph break) runs eagerly instead, after one
warning.

Compilation happens on the first step of a solve with a new field, shape or grad mode (seconds to
tens of seconds); later solves reuse the compiled graph, so it pays for repeated solves of one
model, as in training.

Reference: Ansel et al., "PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode
Transformation and Graph Compilation", ASPLOS 2024 (TorchDynamo and TorchInductor).
"""

from __future__ import annotations

import os
import threading
import traceback
import types
import warnings
import weakref
from collections.abc import Callable

import torch

from .._term import PureField as PureField
from .._term import solver_time_field as solver_time_field
from .._term import term_field as term_field
from .._transforms import forward_mode_active
from ..controllers import error_ratio, error_ratio_tensor
from ..solvers.runge_kutta import ExplicitRungeKutta, RKStep
from .counters import frozen_counters, probe
from .graph_inputs import tolerance_tensor
from .inductor import compile_for, inductor_options, own_code

# owner (the user's field) -> {key -> compiled attempt}; weak (no graph refers to its owner), so a
# dropped model frees its graphs
_CACHE: weakref.WeakKeyDictionary[Callable, dict] = weakref.WeakKeyDictionary()


#: fields whose compilation failure was reported (one warning per field, however many graphs fall back)
_WARNED: weakref.WeakSet = weakref.WeakSet()


#: code object of a function field -> how many function objects of it compiled: a function made anew
#: for every solve (a lambda in the training step) is another owner, compiled anew every time
_FUNCTIONS: dict = {}

#: how many function objects of one code may compile before :func:`graphs_of` warns
FUNCTION_OBJECTS_WARNED = 3

#: guards the first entry of a field: two threads compiling one field at once each made a dict of
#: its own, and the graphs of one of them were lost and compiled again
_LOCK = threading.Lock()


def graphs_of(owner) -> dict:
    """The compiled graphs cached for the field ``owner`` (empty for a field not compiled before; a
    new dict every time for one that cannot be weakly referenced, which is then compiled per solve).

    The graphs are cached per field object. The third function object of one code that compiles
    (a ``lambda`` or closure defined inside the training step, made anew for every solve) gets a
    warning saying so: each such solve compiles its graphs again, which no error would reveal.
    """
    try:
        graphs = _CACHE.get(owner)
    except TypeError:  # an owner that cannot be weakly referenced: compiled per solve
        return {}
    if graphs is None:  # a field object not seen before (a live one stays in the cache)
        with _LOCK:
            graphs = _CACHE.get(owner)
            if graphs is not None:  # another thread entered it meanwhile
                return graphs
            graphs = _CACHE[owner] = {}
        if isinstance(owner, types.FunctionType):
            count = _FUNCTIONS[owner.__code__] = _FUNCTIONS.get(owner.__code__, 0) + 1
            if count == FUNCTION_OBJECTS_WARNED:
                warnings.warn(
                    f"compile=True compiled graphs for {count} function objects of {owner.__qualname__} "
                    f"({owner.__code__.co_filename}:{owner.__code__.co_firstlineno}): the graphs are cached "
                    "per field object, so a function made anew for every solve (a lambda in the training "
                    "step) compiles anew every time. Define the field once and pass the same object.",
                    RuntimeWarning,
                    stacklevel=4,
                )
    return graphs


def compiler_failed(error: Exception) -> bool:
    """Whether ``error``, raised by a call of a compiled graph, is the compiler's failure (the field
    then runs by other means) rather than the computation's.

    torch's compiler errors (all of ``torch._dynamo.exc`` and ``torch._inductor.exc``, some of which,
    such as ``FailOnRecompileLimitHit`` after eight graphs of one function, derive from ``Exception``
    only), and any error raised while Dynamo traced: torch 2.13 raises plain ``AssertionError``s from
    some tracing paths (``torch.autograd.grad(..., is_grads_batched=True)`` inside a traced backsolve
    field: "Expected FakeTensor or subclass"). An error of the user's field raised while tracing is
    raised again by the eager evaluation that runs instead.
    """
    if type(error).__module__ in ("torch._dynamo.exc", "torch._inductor.exc"):
        return True
    frames = traceback.extract_tb(error.__traceback__)
    return any(f.filename.endswith(os.path.join("torch", "_dynamo", "symbolic_convert.py")) for f in frames)


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


def _compile(fn: Callable, mode: str | None = None, compiler: str = "in_process") -> Callable:
    """``torch.compile(fn)``, per device type of its tensor arguments (the options differ: see
    :func:`inductor_options`), run with integer module attributes as inputs; ``mode``
    "reduce-overhead" replays it as a CUDA graph; ``compiler``: where CPU graphs are compiled
    (:func:`~hybrid_node.loop.inductor.compile_for`).

    Without autograd (the compiler specialises on the mode) ``fn``'s outputs leave the graph
    detached: a field that takes its own gradient (``requires_grad_`` and ``torch.autograd.grad``
    inside, an exact CNF trace) returns values with a graph history, which the compiler refuses to
    return, and which a solve without autograd does not use.
    """
    compiled: dict[str, Callable] = {}

    def values(*args):
        out = fn(*args)
        if torch.is_grad_enabled():
            return out
        return torch.utils._pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, out)

    def run(*args):
        leaf = next((x for x in torch.utils._pytree.tree_leaves(args) if isinstance(x, torch.Tensor)), None)
        kind = "cpu" if leaf is None else leaf.device.type
        graph = compiled.get(kind)
        if graph is None:
            options = inductor_options(mode == "reduce-overhead", cpu=kind == "cpu")
            # one graph or none: a field the compiler splits (a graph break, e.g. at
            # ``torch.autograd.grad`` in an exact CNF trace) would return to Python inside every
            # stage and ran slower than eagerly (docs/compiled/fixes.md, "Fields that take their own
            # gradient, and graph breaks"), so it raises and runs eagerly
            graph = compiled[kind] = compile_for(
                own_code(values), kind == "cpu", compiler=compiler, fullgraph=True, options=options
            )
        # an integer attribute the field updates (a module counting its own calls, ``self.nfe += 1``,
        # is common) must be a graph input, not a constant guarded on: else every call recompiles
        with torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True, trace_autograd_ops=True):
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

    return _compile(attempt, compiler=solver.compiled_in)


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
        self.term, self.owner, self.solver, self.pure = term, pure.owner, solver, pure
        self.rtol, self.atol, self.norm = rtol, atol, norm
        self.n_evals = solver.tableau.stages - 1
        self.adaptive = solver.tableau.b_error is not None
        self._step_key = (pure.key, solver, self.adaptive)
        self._field_key = (pure.key, "field")
        self._counters_key = (pure.key, "counters")
        self._graphs = graphs_of(pure.owner)
        if self._step_key not in self._graphs:
            self._graphs[self._step_key] = _build_attempt(pure.field, solver, self.adaptive)
            self._graphs[self._field_key] = _compile(pure.field, compiler=solver.compiled_in)

    def _run(self, key, t: float, y: torch.Tensor, *args):
        """The graph ``key`` on (t, y, *args), or None when it has failed (now or in an earlier solve).

        The field's call counters are frozen around the call (:mod:`.counters`; found by two eager
        evaluations the first time), and ``y`` enters as :meth:`_tracked`: so one graph serves every
        attempt of a solve and of the next ones.
        """
        graph = self._graphs[key]
        if graph is None:
            return None
        counters = self._graphs.get(self._counters_key)
        if counters is None:
            counters = self._graphs[self._counters_key] = probe(self.owner, self.term, t, y).counters
        try:
            with frozen_counters(counters):
                return graph(self.owner, self._time(t, y), self._tracked(y), *args)
        except Exception as e:
            if not compiler_failed(e):
                raise
            if self._take_alternative():
                return self._run(key, t, y, *args)
            warn_fallback(self.owner, e, "it runs eagerly", stacklevel=3)
            self._graphs[self._step_key] = self._graphs[self._field_key] = None
            return None

    def _take_alternative(self) -> bool:
        """Replace the graphs by ones of the field's :attr:`~PureField.alternative`, once per field
        (here and in later solves); False if there is none or it was taken before."""
        taken = (self._step_key, "alternative")
        if self.pure.alternative is None or self._graphs.get(taken):
            return False
        self._graphs[taken] = True
        self._graphs[self._step_key] = _build_attempt(self.pure.alternative, self.solver, self.adaptive)
        self._graphs[self._field_key] = _compile(self.pure.alternative, compiler=self.solver.compiled_in)
        return True

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

    def _tolerances(self, like: torch.Tensor) -> tuple:
        """rtol and atol as the graph's inputs: tensors (:func:`~.graph_inputs.tolerance_tensor`), so
        that a solve with new tolerances runs the same graph; None where the method has no error test."""
        if not self.adaptive or self.rtol is None:
            return self.rtol, self.atol
        return tolerance_tensor(self.rtol, like), tolerance_tensor(self.atol, like, 1)

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
        out = self._run(self._step_key, t, y, self._time(dt, y), f0, *self._tolerances(y), self.norm)
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
    if forward_mode_active():
        # a compiled graph drops forward-mode tangents (its autograd Function has no jvp rule): dual
        # inputs came out with a zero tangent, or raised torch's NotImplementedError; eager steps carry them
        return None
    pure = term.pure_field
    return None if pure is None else CompiledAttempt(term, pure, solver, rtol, atol, norm)
