"""One generic explicit Runge-Kutta step that consumes any :class:`ButcherTableau`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import torch

from ..controllers import ErrorPair
from ..interpolation import HermiteInterpolant, PolynomialInterpolant, linear_combination
from .base import AbstractSolver
from .tableau import ButcherTableau

Field = Callable[[float, torch.Tensor], torch.Tensor]

#: where ``compile=True`` compiles a CPU graph (:mod:`hybrid_node.loop.background`): "worker" (a worker
#: process; the graph's first solve runs it uncompiled, a later solve waits for it), "background" (a
#: worker; solves never wait, and run it uncompiled until it is ready) or "in_process" (in the call,
#: as ``torch.compile`` does)
COMPILERS = ("worker", "background", "in_process")
#: the environment variable that sets the default of :data:`COMPILERS` ("worker" when unset)
COMPILER_VARIABLE = "HYBRID_NODE_COMPILER"


def default_compiler() -> str:
    """The compiler of a solver that names none: ``$HYBRID_NODE_COMPILER``, else "worker".

    Raises:
        ValueError: the variable names another compiler.
    """
    name = os.environ.get(COMPILER_VARIABLE, "worker")
    if name not in COMPILERS:
        raise ValueError(
            f"{COMPILER_VARIABLE}={name!r}: expected one of {', '.join(COMPILERS)}, or unset for 'worker'."
        )
    return name


@dataclasses.dataclass(frozen=True)
class RKStep:
    """What one explicit RK step produced (kept until the step is accepted or rejected)."""

    y1: torch.Tensor
    #: the estimate (an ErrorPair for DOP853's, which the error ratio combines after scaling)
    error: torch.Tensor | ErrorPair | None
    ks: tuple[torch.Tensor, ...]


@dataclasses.dataclass(frozen=True, repr=False)
class ExplicitRungeKutta(AbstractSolver):
    """An explicit Runge-Kutta method defined by its tableau.

    The solver holds no per-solve state: the derivative at the start of a step (``f0``) is passed in
    and returned explicitly, so the same object can serve any number of solves.

    Args:
        tableau: the checked Butcher tableau.
        name: the method name used by ``odeint(method=...)``.
        dense_output: optional ``factory(f, t0, y0, dt, step)`` of a method-specific interpolant that
            needs extra evaluations (otherwise the tableau's polynomial, else cubic Hermite).
        error_estimate: optional ``estimate(dt, ks) -> error`` replacing ``dt * sum(b_error * ks)``: a
            tensor of the state's shape, or an :class:`~hybrid_node.controllers.ErrorPair` of two that
            every loop scales and norms separately and then combines (DOP853's).
        error_estimate_order: the order q the step-size controller assumes for that estimate (it
            behaves like O(h^(q+1))); default the tableau's ``error_order``.
        compile: run each step attempt (stages, field and error norm) as one torch.compile graph
            (see :mod:`hybrid_node.loop.compiled_step`); ``solver.compiled()`` sets it.
        fullgraph: with ``compile``, a direct-backprop solve that the whole-solve graph can run
            (:func:`hybrid_node.loop.whole.applies`) runs as that one graph with autograd through its
            ``while_loop`` (``options={"compile": "fullgraph"}``); else such a solve runs per-step
            graphs. It only routes solves (the graphs' caches do not tell it apart).
        compiler: with ``compile``, where CPU graphs not yet in Inductor's on-disk cache are compiled, one
            of :data:`COMPILERS` (``options={"compile": "background"}`` or ``"in_process"``; None:
            :func:`default_compiler`, a worker process). Like ``fullgraph``, not part of the graphs' keys.
    """

    tableau: ButcherTableau
    name: str
    dense_output: Callable | None = None
    error_estimate: Callable | None = None
    error_estimate_order: int | None = None
    compile: bool = False
    fullgraph: bool = dataclasses.field(default=False, compare=False)
    compiler: str | None = dataclasses.field(default=None, compare=False)

    supports_compile = True
    transformable = True
    #: field evaluations the method's own dense output adds to a step (DOP853: 3), for the loops that
    #: build it on every attempt (the whole-solve graph)
    dense_output_evaluations = 0

    def __post_init__(self) -> None:
        """Refuse ``fullgraph`` or ``compiler`` without ``compile``, which would change nothing, and an
        unknown compiler.

        Raises:
            ValueError: ``fullgraph=True`` or a ``compiler`` with ``compile=False``; a compiler not in
                :data:`COMPILERS`.
        """
        if self.compiler is not None and self.compiler not in COMPILERS:
            raise ValueError(f"{self.name}: compiler={self.compiler!r}; expected one of {', '.join(COMPILERS)}.")
        for name, value in (("fullgraph", self.fullgraph), ("compiler", self.compiler)):
            if value and not self.compile:
                raise ValueError(
                    f"{self.name}: {name}={value!r} changes how the compiled graphs are made and needs compile=True; "
                    f"write solver.compiled({name}={value!r}) or the matching options={{'compile': ...}}."
                )

    def compiled(self, fullgraph: bool = False, compiler: str | None = None) -> ExplicitRungeKutta:
        """This method with compiled step attempts (the ``options={"compile": True}`` of odeint);
        ``fullgraph``: direct backprop through the whole-solve graph too (``"compile": "fullgraph"``);
        ``compiler``: where the CPU graphs are compiled, one of :data:`COMPILERS` (None: the default)."""
        return dataclasses.replace(self, compile=True, fullgraph=fullgraph, compiler=compiler)

    @property
    def compiled_in(self) -> str:
        """Where this solver's CPU graphs are compiled: its ``compiler``, else :func:`default_compiler`."""
        return self.compiler or default_compiler()

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def error_order(self) -> int | None:
        return self.error_estimate_order if self.error_estimate_order is not None else self.tableau.error_order

    @property
    def adaptive(self) -> bool:
        return self.tableau.adaptive

    @property
    def supports_device_loop(self) -> bool:
        return self.adaptive and self.tableau.fsal and self.dense_output is None and self.error_estimate is None

    @property
    def supports_per_sample(self) -> bool:
        return self.adaptive

    @property
    def supports_whole_solve(self) -> bool:
        # the whole-solve graph loops over the device loop's attempt: the same methods
        return self.supports_device_loop

    @property
    def supports_masked_attempts(self) -> bool:
        # a pair without first-same-as-last evaluates f(t1, y1) in every attempt (Hermite dense output)
        return self.supports_whole_solve or (
            self.adaptive and self.dense_output is None and self.error_estimate is None
        )

    def init(self, f: Field, t0: float, y0: torch.Tensor) -> torch.Tensor:
        """Return the solver state at the start: the derivative f(t0, y0)."""
        return f(t0, y0)

    def step(
        self, f: Field, t: float | torch.Tensor, y: torch.Tensor, f0: torch.Tensor, dt: float | torch.Tensor
    ) -> RKStep:
        """Advance one step of size ``dt`` from (t, y) with f0 = f(t, y) (times may be 0-d tensors: the device loop).

        Returns:
            The new state, the error estimate (None for fixed-step tableaus) and the stage derivatives.
        """
        tab = self.tableau
        ks = [f0]
        y1 = None
        last = tab.stages - 1
        for i in range(1, tab.stages):
            yi = linear_combination(y, dt, tab.a[i], ks)
            if i == last and tab.fsal:
                y1 = yi  # the last stage is evaluated at the solution itself
            ks.append(f(t + tab.c[i] * dt, yi))  # type: ignore[arg-type]  # float * Tensor is Tensor.__rmul__
        if y1 is None:
            y1 = linear_combination(y, dt, tab.b, ks)
        return RKStep(y1, self.error_of(dt, ks), tuple(ks))

    def error_of(self, dt: float | torch.Tensor, ks: Sequence[torch.Tensor]) -> torch.Tensor | ErrorPair | None:
        """The error estimate of a step of size ``dt`` with stage derivatives ``ks`` (None for a
        fixed-step tableau)."""
        if self.tableau.b_error is None:
            return None
        with torch.no_grad():  # the estimate only decides the step: no autograd graph for it
            if self.error_estimate is not None:
                return self.error_estimate(dt, ks)
            return linear_combination(None, dt, self.tableau.b_error, ks)

    def next_state(self, f: Field, t1: float, step: RKStep) -> torch.Tensor:
        """The state for the next step after ``step`` is accepted: f(t1, y1), free for FSAL tableaus."""
        return step.ks[-1] if self.tableau.fsal else f(t1, step.y1)

    def interpolant(self, f: Field, t0: float, y0: torch.Tensor, dt: float, step: RKStep, f1: torch.Tensor):
        """Dense output over the accepted step: the method's own, the tableau's polynomial, else Hermite."""
        if self.dense_output is not None:
            return self.dense_output(f, t0, y0, dt, step)
        if self.tableau.dense is not None:
            return PolynomialInterpolant(y0, step.ks, dt, self.tableau.dense)
        return HermiteInterpolant(y0, step.y1, step.ks[0], f1, dt)
