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

import dataclasses
import weakref
from typing import Callable, Hashable, Optional, Tuple

import torch

from .._term import Term, apply_field
from ..controllers import error_ratio_tensor
from ..solvers.runge_kutta import ExplicitRungeKutta, RKStep

# owner (the user's field) -> {key -> compiled attempt}; weak, so a dropped model frees its graphs
_CACHE: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class PureField:
    """A field the compiler can trace, with what identifies it across solves.

    Attributes:
        owner: the object the compiled graphs are cached on (the user's field).
        key: everything besides ``owner`` that ``field`` depends on; two solves with equal owner and
            key may share one compiled graph.
        field: ``field(t, y) -> dy/dt`` in solver time, free of side effects and of autograd calls.
    """

    owner: Callable
    key: Hashable
    field: Callable[[float, torch.Tensor], torch.Tensor]


def solver_time_field(func: Callable, layout, reverse: bool, t_dtype: torch.dtype, device) -> Callable:
    """``func`` as a solver-time field on the flat state: time tensor, tuple packing, direction."""

    def field(t, y):
        tt = (-t if reverse else t).to(t_dtype)  # t: a 0-d float64 tensor on the state's device
        out = apply_field(func, layout, tt, y)
        return -out if reverse else out

    return field


def term_field(term: Term) -> PureField:
    """The traceable part of a :class:`Term`."""
    field = solver_time_field(term.func, term.layout, term.reverse, term.t_dtype, term.device)
    shapes = None if term.layout is None else tuple(term.layout.shapes)
    return PureField(term.func, ("term", shapes, term.reverse, term.t_dtype, term.device), field)


def _build(field: Callable, solver: ExplicitRungeKutta, adaptive: bool):
    def attempt(t, dt, y, f0, rtol, atol, norm):
        step = solver.step(field, t, y, f0, dt)
        ratio = error_ratio_tensor(step.error, y, step.y1, rtol, atol, norm) if adaptive else None
        return step.y1, step.error, step.ks, ratio

    return torch.compile(attempt)


class CompiledAttempt:
    """Step attempts of ``solver`` on a pure field, through a compiled graph cached per field.

    Args:
        term: the loop's term (its ``nfe`` counts the attempts' evaluations).
        pure: the traceable field.
        solver: an explicit Runge-Kutta solver.
        rtol, atol, norm: the error test (ignored for fixed-step tableaus).

    Raises:
        ValueError: ``solver`` is not an explicit Runge-Kutta method.
    """

    def __init__(self, term, pure: PureField, solver, rtol=None, atol=None, norm=None):
        if not isinstance(solver, ExplicitRungeKutta):
            raise ValueError(f"compile=True is available for the explicit Runge-Kutta methods only, not "
                             f"{getattr(solver, 'name', type(solver).__name__)!r}; drop the option for this method.")
        self.term = term
        self.rtol, self.atol, self.norm = rtol, atol, norm
        self.n_evals = solver.tableau.stages - 1
        adaptive = solver.tableau.b_error is not None
        key = (pure.key, solver, adaptive)
        try:
            graphs = _CACHE.setdefault(pure.owner, {})
        except TypeError:  # an owner that cannot be weakly referenced: compiled per solve
            graphs = {}
        if key not in graphs:
            graphs[key] = _build(pure.field, solver, adaptive)
        self._attempt = graphs[key]

    def __call__(self, t: float, y: torch.Tensor, f0: torch.Tensor, dt: float) -> Tuple[RKStep, Optional[float]]:
        """One attempt from (t, y) with f0 = f(t, y) and step ``dt``.

        Returns:
            The step (as :meth:`ExplicitRungeKutta.step` returns it) and the error ratio as a host
            float (None for fixed-step tableaus).
        """
        # times travel as 0-d tensors: Python floats would be specialised into the graph (one
        # recompilation per value) or handled symbolically, which the compiler gets wrong for some ops
        tt = torch.full((), t, dtype=torch.float64, device=y.device)
        hh = torch.full((), dt, dtype=torch.float64, device=y.device)
        y1, error, ks, ratio = self._attempt(tt, hh, y, f0, self.rtol, self.atol, self.norm)
        self.term.nfe += self.n_evals
        return RKStep(y1, error, tuple(ks)), (None if ratio is None else float(ratio))


def compiled_attempt(term, solver, rtol=None, atol=None, norm=None) -> Optional[CompiledAttempt]:
    """A :class:`CompiledAttempt` when ``solver`` asks for compilation and the field can be traced, else None."""
    if not getattr(solver, "compile", False):
        return None
    pure = term_field(term) if isinstance(term, Term) else getattr(term, "pure_field", None)
    return None if pure is None else CompiledAttempt(term, pure, solver, rtol, atol, norm)
