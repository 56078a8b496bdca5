"""The interfaces every torch-backend solver implements.

A solver holds settings only (it is a frozen object); everything that changes during a solve (the
derivative at the start of the step, a Jacobian and its factorisation, the Adams history) is the
solver *state*, created by :meth:`AbstractSolver.init` and handed back explicitly on every call, so
one solver object serves any number of solves. The loops in :mod:`hybrid_node.loop` drive a solver
through these methods only, and decide what they may do with it from its declared capabilities,
never by probing for attributes.

References: the split into solver, step-size controller and solution follows Hairer, Nørsett,
Wanner, Solving ODEs I, 2nd ed., Section II.4 (a step with its error estimate, a separate step-size
rule), as DifferentialEquations.jl and diffrax separate algorithm, controller and solution.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

import torch

from ..controllers import PIDController

if TYPE_CHECKING:
    from ..controllers import ErrorPair

#: ``f(t, y)`` in solver time (a host float) on the flat state: what a solver evaluates.
Field = Callable[..., torch.Tensor]


class StepResult(Protocol):
    """What a step attempt returns: the new state and the error estimate (None without one)."""

    @property
    def y1(self) -> torch.Tensor: ...

    @property
    def error(self) -> torch.Tensor | ErrorPair | None: ...


class Interpolant(Protocol):
    """Dense output inside one accepted step: ``y(t0 + theta * dt)`` for theta in [0, 1]."""

    @abc.abstractmethod
    def __call__(self, theta: float) -> torch.Tensor:
        """The state at the fraction ``theta`` of the step."""

    def many(self, thetas: Sequence[float]) -> torch.Tensor:
        """The state at several fractions of the step, shape (len(thetas), *y0.shape).

        Subclasses override this with one batched evaluation where they can.
        """
        return torch.stack([self(theta) for theta in thetas])


class AbstractSolver(abc.ABC):
    """A solver that the loops of :mod:`hybrid_node.loop` drive one step attempt at a time.

    Capabilities are declared, not probed: ``adaptive`` (has an error estimate), ``implicit``,
    ``supports_compile`` (``compiled()`` works), ``supports_device_loop`` and ``supports_per_sample``
    (the loop strategies that can run it), ``transformable`` (runs inside ``torch.func`` transforms),
    ``partitioned`` (needs a tuple state ``(q, p)``), ``controller_reads`` (the ``PIDController``
    fields its solves read; the others are refused where set).
    """

    #: the method name of ``odeint(method=...)``
    name: str
    #: solves a nonlinear system per step (Newton or a linearly implicit method)
    implicit: bool = False
    #: ``compiled()`` returns the same method with step attempts compiled by torch.compile
    supports_compile: bool = False
    #: step attempts run compiled (a family that supports it holds this as a setting)
    compile: bool = False
    #: steps the parts of a two-tensor tuple state ``(q, p)`` separately (a symplectic splitting), so it
    #: needs such a state; it finds the split in the field's ``layout`` (:class:`hybrid_node._term.TupleLayout`)
    partitioned: bool = False
    #: the ``PIDController`` fields its solves read (None: every field); the others are refused where set
    #: away from their defaults (:func:`unread_controller_settings`)
    controller_reads: ClassVar[frozenset[str] | None] = None

    @property
    @abc.abstractmethod
    def order(self) -> int:
        """Order of the propagated solution."""

    def __repr__(self) -> str:
        """``Dopri5()``, ``TRBDF2(jacobian='jacfwd')``: the class and the settings that differ from its defaults.

        A family class without defaults (``ExplicitRungeKutta(tableau, name)``) shows every setting.
        """
        try:
            default = type(self)()
        except TypeError:  # a family class whose constructor needs its tableau: no defaults to omit
            default = None
        shown = []
        for field in dataclasses.fields(cast(Any, self)):  # every concrete solver is a dataclass
            value = getattr(self, field.name)
            if default is not None and _same(value, getattr(default, field.name)):
                continue
            shown.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @property
    def error_order(self) -> int | None:
        """Order q of the error estimate (it behaves like O(h^(q+1))); None for fixed-step methods."""
        return None

    @property
    def adaptive(self) -> bool:
        """Whether the method has an error estimate, so a PIDController can choose its steps."""
        return self.error_order is not None

    @property
    def supports_device_loop(self) -> bool:
        """Whether the device-resident loop can run this method (explicit first-same-as-last pairs)."""
        return False

    @property
    def supports_per_sample(self) -> bool:
        """Whether per-sample step control can run this method (explicit embedded pairs)."""
        return False

    @property
    def supports_whole_solve(self) -> bool:
        """Whether ``compile=True`` can run the whole solve as one graph (:mod:`hybrid_node.loop.whole`)."""
        return False

    #: its fixed steps make no decision on the host, so they run inside ``torch.func`` transforms
    #: (vmap, jacrev, ...); adaptive solves there also need ``supports_masked_attempts``
    #: (:mod:`hybrid_node.loop.transformed`)
    transformable: bool = False

    @property
    def supports_masked_attempts(self) -> bool:
        """Whether the device loop's masked step attempt (:func:`hybrid_node.loop.device.attempt`) can
        run this method eagerly: explicit embedded pairs, first-same-as-last or not."""
        return False

    @abc.abstractmethod
    def init(self, f: Field, t0: float, y0: torch.Tensor) -> Any:
        """The solver state at the start of a solve (or after a restart) at (t0, y0)."""

    @abc.abstractmethod
    def step(self, f: Field, t: float, y: torch.Tensor, state: Any, dt: float) -> StepResult:
        """Attempt one step of size ``dt`` from (t, y); the loop accepts or rejects it."""

    @abc.abstractmethod
    def next_state(self, f: Field, t1: float, step: Any) -> Any:
        """The solver state after ``step`` was accepted, at its end time ``t1``."""

    @abc.abstractmethod
    def interpolant(self, f: Field, t0: float, y0: torch.Tensor, dt: float, step: Any, next_state: Any) -> Interpolant:
        """Dense output over the accepted ``step`` from (t0, y0) of size ``dt``."""

    def derivative(self, state: Any) -> torch.Tensor:
        """f(t, y) at the point the state belongs to (for the initial-step heuristic)."""
        return state

    def reject(self, f: Field, t: float, y: torch.Tensor, state: Any, step: Any) -> Any:
        """The state to retry from after ``step`` was rejected (e.g. with a refreshed Jacobian)."""
        return state

    def propose_step(self, state: Any, dt: float, proposal: float) -> float:
        """The next step after an attempt of size ``dt``, given the controller's ``proposal``.

        The controller's formula assumes one error order; a variable-order method (its order changes
        from step to step) returns its own choice here, from ``state`` (the state after the accepted
        step, or the one :meth:`reject` returned). The default keeps the proposal.
        """
        return proposal

    def with_tolerances(self, rtol: Any, atol: Any) -> AbstractSolver:
        """This method with the solve's tolerances where it uses them itself (a Newton stopping test)."""
        return self

    def fixed_steps(self) -> AbstractSolver:
        """This method for fixed steps (an adaptive method that has a fixed-step variant returns it)."""
        return self

    def compiled(self, fullgraph: bool = False, compiler: str | None = None) -> AbstractSolver:
        """This method with compiled step attempts (``options={"compile": True}``; ``fullgraph``: the
        whole solve as one graph for direct backprop too, ``"compile": "fullgraph"``; ``compiler``:
        where the graphs are compiled, ``"compile": "background"`` or ``"in_process"``).

        Raises:
            ValueError: the method cannot be compiled (``supports_compile`` is False).
        """
        raise ValueError(
            f"options['compile'] is available for the explicit Runge-Kutta methods only, not {self.name!r}; "
            "drop the option for this method."
        )


class ExternalSolver(abc.ABC):
    """A solver that runs its own integration loop over all output times (e.g. scipy's solvers)."""

    name: str
    #: it chooses its own steps from the solve's tolerances (so the default controller is a PIDController)
    adaptive: bool = True
    #: never a partitioned (q, p) method (see :attr:`AbstractSolver.partitioned`)
    partitioned: bool = False
    #: its loop is its own: no step attempt of it is compiled by torch (read by the adjoints)
    compile: bool = False
    #: the ``PIDController`` fields it reads (None: every field), as :attr:`AbstractSolver.controller_reads`
    controller_reads: ClassVar[frozenset[str] | None] = None

    @abc.abstractmethod
    def integrate(
        self, term: Field, y0: torch.Tensor, ts: Sequence[float], rtol: Any, atol: Any, grad_inputs: Sequence = ()
    ) -> torch.Tensor:
        """The states at every time of ``ts`` (stacked), integrating ``term`` from (ts[0], y0)."""


def unread_controller_settings(solver: AbstractSolver | ExternalSolver, controller: Any) -> list[str]:
    """The fields of a ``PIDController`` that are set away from their defaults and that ``solver`` does not read.

    A method that chooses its own steps (a variable-order Nordsieck method, Hindmarsh 1983; scipy's
    solvers, Hairer, Norsett, Wanner, Solving ODEs I, II.4) reads only some of the controller's fields
    (:attr:`AbstractSolver.controller_reads`); a field it does not read and that was set would be
    accepted and change nothing, so its callers refuse these, each with its own message.

    Args:
        solver: the solve's solver.
        controller: the solve's controller; a controller other than a ``PIDController`` has none.

    Returns:
        The names, in the order of the controller's fields.
    """
    reads = solver.controller_reads
    if reads is None or not isinstance(controller, PIDController):
        return []
    return [
        f.name
        for f in dataclasses.fields(controller)
        if f.name not in reads and getattr(controller, f.name) != f.default
    ]


def unread_controller_fields(solver: AbstractSolver | ExternalSolver) -> frozenset[str]:
    """The ``PIDController`` field names that ``solver`` does not read (empty where it reads them all).

    Args:
        solver: a solver (its :attr:`AbstractSolver.controller_reads`).

    Returns:
        The names.
    """
    reads = solver.controller_reads
    if reads is None:
        return frozenset()
    return frozenset(f.name for f in dataclasses.fields(PIDController) if f.name not in reads)


def _same(a: Any, b: Any) -> bool:
    """Whether two settings are equal (identity first: tensors and callables compare by identity)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False
