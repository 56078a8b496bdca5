"""Fixed-step Adams-Bashforth and Adams-Bashforth-Moulton (predictor-corrector) methods.

The history of derivatives is the explicit solver state. Until enough equally spaced history exists
(at the start, and after any change of step size), a step of Kutta's 3/8 rule is taken, so the global
order is min(5, max_order) (the starter's local errors are O(h^5)).

Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section III.1.
"""

from __future__ import annotations

import dataclasses
import operator
import warnings

import numpy as np
import torch

from ..interpolation import HermiteInterpolant, linear_combination
from .base import AbstractSolver
from .fixed_rk import RK4_38_TABLEAU
from .newton import error_scale
from .runge_kutta import ExplicitRungeKutta

MAX_ORDER = 12


def integer_setting(solver, name: str) -> int | None:
    """The setting ``name`` of the frozen ``solver`` as a Python int, or None where it is not an integer.

    An integer of another type (a NumPy integer from a sweep, a 0-d integer tensor) is stored as an int, as
    torchdiffeq's ``int(max_order)`` takes it; a bool, which Python counts as an int, is refused (True would
    run order 1).

    Args:
        solver: a frozen dataclass instance, in its ``__post_init__``.
        name: the field's name.

    Returns:
        The value as an int, or None.
    """
    value = getattr(solver, name)
    if isinstance(value, bool):
        return None
    try:
        number = operator.index(value)
    except TypeError:
        return None
    object.__setattr__(solver, name, number)  # frozen: the validated int replaces the given value
    return number


def check_max_iters(solver) -> None:
    """Refuse a ``max_iters`` (Newton or corrector iterations per step) that is not a positive int.

    Args:
        solver: a frozen dataclass instance with a ``max_iters`` field, in its ``__post_init__`` (an integer
            of another type is stored as an int, see :func:`integer_setting`).

    Raises:
        ValueError: ``max_iters`` is not an integer (a bool included) or is below 1.
    """
    max_iters = integer_setting(solver, "max_iters")
    if max_iters is None or max_iters < 1:
        raise ValueError(f"max_iters must be a positive int, got {solver.max_iters!r}.")


def _integrated_lagrange(nodes) -> tuple[float, ...]:
    """Weights w_j = integral over s in [0, 1] of the Lagrange basis polynomial of node j."""
    weights = []
    for j, sj in enumerate(nodes):
        basis = np.polynomial.Polynomial([1.0])
        for i, si in enumerate(nodes):
            if i != j:
                basis = basis * np.polynomial.Polynomial([-si, 1.0]) / (sj - si)
        antiderivative = basis.integ()
        weights.append(float(antiderivative(1.0) - antiderivative(0.0)))
    return tuple(weights)


# Uniform-step coefficients, index k-1 for order k: Bashforth on f_n, f_(n-1), ... (nodes 0, -1, ...);
# Moulton on f_(n+1), f_n, ... (nodes 1, 0, -1, ...), in units of the step.
BASHFORTH = tuple(_integrated_lagrange([-i for i in range(k)]) for k in range(1, MAX_ORDER + 1))
MOULTON = tuple(_integrated_lagrange([1 - i for i in range(k)]) for k in range(1, MAX_ORDER + 1))
_STARTER = ExplicitRungeKutta(RK4_38_TABLEAU, "rk4")


@dataclasses.dataclass(frozen=True)
class AdamsState:
    """Derivatives at the last grid points (newest first) and the step that separates them."""

    fs: tuple[torch.Tensor, ...]
    dt: float | None


@dataclasses.dataclass(frozen=True)
class AdamsStep:
    y1: torch.Tensor
    error: None
    f1: torch.Tensor | None
    state: AdamsState
    dt: float


@dataclasses.dataclass(frozen=True, repr=False)
class Adams(AbstractSolver):
    """Adams-Bashforth (``corrector=False``) or Adams-Bashforth-Moulton in PECE form iterated up to
    ``max_iters`` times (``corrector=True``).

    Args:
        max_order: the order used once enough history exists (1 to 12; default 4, the most stable).
        corrector: apply the Moulton corrector.
        max_iters: corrector iterations per step.
        rtol, atol: the corrector stops early when successive iterates agree to these tolerances.
        name: the method name.
    """

    max_order: int = 4
    corrector: bool = False
    max_iters: int = 4
    rtol: float = 1e-7
    atol: float = 1e-9
    name: str = "explicit_adams"

    #: the state is the history of earlier derivatives, which a fixed grid with ``perturb`` keeps
    #: (:func:`~hybrid_node.loop.host.integrate_fixed`): :meth:`next_state` evaluates the newest one
    #: afresh through the field it is given (the right limit at a grid point), never from a stage
    keeps_history = True

    def __post_init__(self):
        max_order = integer_setting(self, "max_order")
        if max_order is None or not 1 <= max_order <= MAX_ORDER:
            raise ValueError(f"max_order must be an int between 1 and {MAX_ORDER}, got {self.max_order!r}.")
        check_max_iters(self)
        defaults = {f.name: f.default for f in dataclasses.fields(Adams)}
        inert = [name for name in ("max_iters", "rtol", "atol") if getattr(self, name) != defaults[name]]
        if inert and not self.corrector:
            # they set the Moulton corrector's iteration, which Adams-Bashforth alone never runs
            raise ValueError(
                f"{inert} of {self.name!r} set the Adams-Moulton corrector's iteration, which corrector=False "
                "does not run: drop them, or use corrector=True ('implicit_adams')."
            )

    @property
    def order(self) -> int:
        return self.max_order

    def init(self, f, t0: float, y0: torch.Tensor) -> AdamsState:
        return AdamsState((f(t0, y0),), None)

    def step(self, f, t: float, y: torch.Tensor, state: AdamsState, dt: float) -> AdamsStep:
        same_dt = state.dt is not None and abs(dt - state.dt) <= 1e-12 * abs(dt)
        fs = state.fs if same_dt else state.fs[:1]
        if len(fs) < self.max_order:
            if self.max_order == 1:
                y1 = y + dt * fs[0]
            else:
                y1 = _STARTER.step(f, t, y, fs[0], dt).y1
            return AdamsStep(y1, None, None, AdamsState(fs, dt), dt)
        y1 = linear_combination(y, dt, BASHFORTH[self.max_order - 1], fs)
        f1 = None
        if self.corrector:
            coeffs = MOULTON[self.max_order - 1]
            converged = False
            for _ in range(self.max_iters):
                f1 = f(t + dt, y1)
                y_new = linear_combination(y, dt, coeffs, (f1,) + fs[: self.max_order - 1])
                # rtol at least a few ulps (error_scale): in float32 the default 1e-7 is below the rounding
                # of the iterates themselves, and the test then failed (and warned) on converged steps
                converged = bool(torch.all(torch.abs(y_new - y1) <= error_scale(y_new, self.rtol, self.atol)))
                y1 = y_new
                if converged:
                    break
            if not converged:
                # torchdiffeq warns here too (same first sentence, so its warning filters apply): the
                # iteration only contracts while |dt * L * MOULTON[0]| < 1, and past that the result is
                # an unconverged iterate (at dt*L = 3, ~1e14 after 2 time units with no other sign)
                warnings.warn(
                    "Functional iteration did not converge. Solution may be incorrect. "
                    f"({self.name}: the Adams-Moulton corrector did not settle within max_iters={self.max_iters} "
                    "iterations; use a smaller step_size, a larger max_iters, or a stiff method such as 'bdf')",
                    stacklevel=2,
                )
            f1 = None  # the derivative at the corrected point is evaluated afresh
        return AdamsStep(y1, None, f1, AdamsState(fs, dt), dt)

    def next_state(self, f, t1: float, step: AdamsStep) -> AdamsState:
        f1 = step.f1 if step.f1 is not None else f(t1, step.y1)
        fs = (f1,) + step.state.fs[: self.max_order - 1]
        return AdamsState(fs, step.dt)

    def derivative(self, state: AdamsState) -> torch.Tensor:
        return state.fs[0]

    def interpolant(self, f, t0: float, y0: torch.Tensor, dt: float, step: AdamsStep, next_state: AdamsState):
        """Cubic Hermite from the derivatives at both ends (Hairer, Nørsett, Wanner, Section II.6)."""
        return HermiteInterpolant(y0, step.y1, step.state.fs[0], next_state.fs[0], dt)


class AdamsBashforth(Adams):
    """Explicit Adams-Bashforth, fixed step (``method="explicit_adams"``).

    Args:
        max_order: the order used once enough history exists (1 to 12).
        **fields: further settings of :class:`Adams`; ``dataclasses.replace`` passes them all.
    """

    transformable = True  # no corrector iterations: nothing decided on the host

    def __init__(self, max_order: int = 4, **fields):
        super().__init__(**{"max_order": max_order, "corrector": False, "name": "explicit_adams", **fields})


class AdamsBashforthMoulton(Adams):
    """Adams-Bashforth predictor with Adams-Moulton corrector, fixed step (``"implicit_adams"``,
    ``"fixed_adams"``).

    Args:
        max_order, max_iters, rtol, atol, name: as :class:`Adams`.
        **fields: further settings of :class:`Adams`; ``dataclasses.replace`` passes them all.

    Warns:
        UserWarning: a step's corrector iteration did not converge within ``max_iters`` (torchdiffeq's
            warning, with the same first sentence); the step keeps the last iterate, as torchdiffeq's does.
    """

    def __init__(
        self,
        max_order: int = 4,
        max_iters: int = 4,
        rtol: float = 1e-7,
        atol: float = 1e-9,
        name: str = "implicit_adams",
        **fields,
    ):
        super().__init__(
            **{
                "max_order": max_order,
                "corrector": True,
                "max_iters": max_iters,
                "rtol": rtol,
                "atol": atol,
                "name": name,
                **fields,
            }
        )
