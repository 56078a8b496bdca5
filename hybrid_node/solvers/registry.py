"""The one table of method names: for every name ``odeint`` accepts, its torch solver, its method options,
its Julia algorithm, and what the torch loops can do with it.

It lives in the solvers package (not beside ``build_solver`` in :mod:`hybrid_node._registry`, which
re-exports it) because ``hybrid_node.solvers.METHODS`` and ``hybrid_node.solvers.implicit.IMPLICIT_METHODS``
are derived from it, and the solvers layer must not import the layers above it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from .adams import AdamsBashforth, AdamsBashforthMoulton
from .auto_switch import AutoSwitch
from .base import AbstractSolver, ExternalSolver
from .dopri5 import Dopri5
from .dopri8 import Dopri8
from .esdirk import SDIRK2, TRBDF2, ImplicitEuler, KenCarp4, Kvaerno3, Kvaerno5, Trapezoid
from .fixed_rk import RK4, Euler, Heun2, Heun3, Midpoint, RK4Classic
from .implicit_fixed import GaussLegendre4, GaussLegendre6, ImplicitMidpoint, RadauIIA3, RadauIIA5
from .low_order_pairs import AdaptiveHeun, Bosh3, Fehlberg2
from .multistep import BDF, LSODA, VariableAdams
from .rosenbrock import ROS3P, Rodas4, Rodas5P, Rosenbrock23
from .scipy_solver import ScipySolver
from .symplectic import Leapfrog, SymplecticEuler, Yoshida4, Yoshida6
from .tsit5 import Tsit5

ROSENBROCK_OPTIONS = ("jacobian", "batch_dims", "autonomous", "time_derivative")
MULTISTEP_OPTIONS = ("max_order", "max_iters", "jacobian", "batch_dims")
NEWTON_OPTIONS = ("jacobian", "batch_dims", "max_newton_iters", "newton_kappa", "newton_rtol", "newton_atol")
#: the adaptive ESDIRK pairs' options: also the hold on the step after a rejected attempt
ESDIRK_OPTIONS = NEWTON_OPTIONS + ("cap_after_reject",)
BACKENDS = ("torch", "julia")
#: the torch loop strategies, in the order the method table lists them
LOOPS = ("host", "per_sample", "device_loop", "compile", "whole_solve")


def _trbdf2_by_name(adaptive: bool = False, **options) -> AbstractSolver:
    """``method="trbdf2"``: torchdiffeq's meaning, fixed steps (``step_size``, ``grid_constructor`` or
    the output times); ``adaptive=True`` gives the embedded pair's step control (as ``hn.TRBDF2()``
    and DifferentialEquations.jl's ``TRBDF2``).

    Raises:
        TypeError: ``adaptive`` is not a bool.
    """
    if not isinstance(adaptive, bool):
        raise TypeError(f"options['adaptive'] must be True or False, got {adaptive!r}.")
    solver = TRBDF2(**options)
    return solver if adaptive else solver.fixed_steps()


class MethodSpec(NamedTuple):
    """What one method name means on each backend.

    A NamedTuple, so ``spec[0]`` is the solver factory and ``spec[1]`` its options, as in the
    ``(factory, options)`` pairs ``METHODS`` held before it existed.

    Attributes:
        solver: the torch solver class (or factory) called with the method options; None where the
            torch backend does not have the method.
        options: the method options (``odeint(options=...)`` keys) the factory takes.
        julia: the OrdinaryDiffEq algorithm of the Julia backend; None where it does not have the method.
        uses_tolerances: the factory also takes the solve's float rtol/atol (the Adams corrector's test).
        notes: the method table's notes column.
    """

    solver: Callable[..., AbstractSolver | ExternalSolver] | None
    options: tuple[str, ...] = ()
    julia: str | None = None
    uses_tolerances: bool = False
    notes: str = ""

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends that have this method: ("torch",), ("julia",) or both."""
        return tuple(b for b, have in zip(BACKENDS, (self.solver is not None, self.julia is not None)) if have)

    @property
    def loops(self) -> tuple[str, ...]:
        """The torch loop strategies that can run the method, from its solver's declared capabilities.

        Empty for a method without a torch solver and for an external solver (it runs its own loop).
        """
        if self.solver is None:
            return ()
        solver = self.solver()
        if isinstance(solver, ExternalSolver):
            return ()
        able = (
            True,
            solver.supports_per_sample,
            solver.supports_device_loop,
            solver.supports_compile,
            solver.supports_whole_solve,
        )
        return tuple(loop for loop, ok in zip(LOOPS, able) if ok)


_ADAMS_ORDER = (
    "Adams-Bashforth, rk4 start-up; order `max_order` (default 4, up to 12; ≤ 5 observed with the rk4 start-up)"
)

_SYMPLECTIC = "symplectic for separable H; tuple state `(q, p)`, func returns `(dq/dt, dp/dt)`"

#: method name -> MethodSpec; the order is the order of the method table (docs/solvers.md, ``methods_table``)
METHOD_SPECS: Mapping[str, MethodSpec] = MappingProxyType(
    {
        "dopri5": MethodSpec(Dopri5, julia="DP5", notes="default; Dormand-Prince, 4th-order dense output"),
        "tsit5": MethodSpec(Tsit5, julia="Tsit5", notes="Tsitouras, own 4th-order dense output"),
        "dopri8": MethodSpec(Dopri8, notes="DOP853 coefficients (8(5,3) pair), 7th-order dense output"),
        "bosh3": MethodSpec(Bosh3, julia="BS3", notes="Bogacki-Shampine"),
        "fehlberg2": MethodSpec(
            Fehlberg2, notes="Runge-Kutta-Fehlberg; its error estimate is loose, expect errors of ~10³ × tol"
        ),
        "adaptive_heun": MethodSpec(AdaptiveHeun, notes="Heun with Euler error estimate"),
        "euler": MethodSpec(Euler, julia="Euler"),
        "midpoint": MethodSpec(Midpoint),
        "heun2": MethodSpec(Heun2),
        "heun3": MethodSpec(Heun3),
        "rk4": MethodSpec(RK4, julia="RK4", notes="Kutta's 3/8 rule (torchdiffeq's `rk4`); Julia: classic RK4"),
        "rk4_classic": MethodSpec(RK4Classic, julia="RK4", notes="the classic RK4"),
        "symplectic_euler": MethodSpec(SymplecticEuler, notes=_SYMPLECTIC),
        "leapfrog": MethodSpec(Leapfrog, notes="Störmer-Verlet (velocity Verlet); " + _SYMPLECTIC),
        "yoshida4": MethodSpec(Yoshida4, notes="Yoshida / Forest-Ruth triple jump; " + _SYMPLECTIC),
        "yoshida6": MethodSpec(Yoshida6, notes="Yoshida 1990 solution A; " + _SYMPLECTIC),
        "explicit_adams": MethodSpec(AdamsBashforth, ("max_order",), notes=_ADAMS_ORDER),
        "implicit_adams": MethodSpec(
            AdamsBashforthMoulton,
            ("max_order", "max_iters"),
            uses_tolerances=True,
            notes="Adams-Bashforth-Moulton predictor-corrector (`max_iters`); order as `explicit_adams`",
        ),
        "fixed_adams": MethodSpec(
            functools.partial(AdamsBashforthMoulton, name="fixed_adams"),
            ("max_order", "max_iters"),
            uses_tolerances=True,
            notes="as `implicit_adams`",
        ),
        "adams": MethodSpec(
            VariableAdams,
            ("max_order", "max_iters"),
            julia="VCABM",
            uses_tolerances=True,
            notes="variable-step, variable-order Adams-Bashforth-Moulton (orders 1-12, Nordsieck form as LSODE)",
        ),
        "scipy_solver": MethodSpec(
            ScipySolver,
            ("solver", "min_step", "max_step", "first_step", "max_num_steps"),
            notes='`options={"solver": "RK45" \\| "DOP853" \\| "LSODA" \\| ...}`; gradients by the adjoint only',
        ),
        "rodas5p": MethodSpec(Rodas5P, ROSENBROCK_OPTIONS, julia="Rodas5P", notes="Rosenbrock, stiff"),
        "rodas4": MethodSpec(Rodas4, ROSENBROCK_OPTIONS, notes="Rosenbrock, stiff"),
        "ros3p": MethodSpec(
            ROS3P,
            ROSENBROCK_OPTIONS,
            notes="Rosenbrock, for parabolic problems; fixed steps only (its embedded estimate is zero on "
            "linear problems); not L-stable (R(∞) = 1 - √3): on stiff transients prefer `rodas4`",
        ),
        "rosenbrock23": MethodSpec(Rosenbrock23, ROSENBROCK_OPTIONS, julia="Rosenbrock23", notes="Rosenbrock, stiff"),
        "kencarp4": MethodSpec(KenCarp4, ESDIRK_OPTIONS, julia="KenCarp4", notes="ESDIRK, stiff"),
        "kvaerno3": MethodSpec(Kvaerno3, ESDIRK_OPTIONS, notes="ESDIRK, stiff"),
        "kvaerno5": MethodSpec(Kvaerno5, ESDIRK_OPTIONS, notes="ESDIRK, stiff"),
        "trbdf2": MethodSpec(
            _trbdf2_by_name,
            ESDIRK_OPTIONS + ("adaptive",),
            julia="TRBDF2",
            notes="ESDIRK, stiff; fixed steps (torchdiffeq's meaning), adaptive with `options={'adaptive': True}`",
        ),
        "implicit_euler": MethodSpec(ImplicitEuler, NEWTON_OPTIONS, notes="DIRK, stiff"),
        "sdirk2": MethodSpec(SDIRK2, NEWTON_OPTIONS, notes="DIRK, stiff"),
        "trapezoid": MethodSpec(Trapezoid, NEWTON_OPTIONS, notes="DIRK, stiff"),
        "implicit_midpoint": MethodSpec(
            ImplicitMidpoint, NEWTON_OPTIONS, notes="fully implicit RK, stiff; symplectic for any Hamiltonian"
        ),
        "gl4": MethodSpec(
            GaussLegendre4, NEWTON_OPTIONS, notes="fully implicit RK (Gauss-Legendre); symplectic for any Hamiltonian"
        ),
        "gl6": MethodSpec(
            GaussLegendre6, NEWTON_OPTIONS, notes="fully implicit RK (Gauss-Legendre); symplectic for any Hamiltonian"
        ),
        "radauIIA3": MethodSpec(RadauIIA3, NEWTON_OPTIONS, notes="fully implicit RK, stiff"),
        "radauIIA5": MethodSpec(RadauIIA5, NEWTON_OPTIONS, notes="fully implicit RK, stiff"),
        "bdf": MethodSpec(
            BDF,
            MULTISTEP_OPTIONS,
            julia="FBDF",
            uses_tolerances=True,
            notes="variable-step, variable-order BDF (orders 1-5), quasi-Newton reusing Jacobian and LU; stiff",
        ),
        "auto": MethodSpec(
            AutoSwitch,
            ("jacobian", "batch_dims", "autonomous", "time_derivative", "stiff_method"),
            julia="AutoTsit5Rodas5P",
            uses_tolerances=True,
            notes="tsit5, switching to rodas5p while stiff (stiffness estimate) and back; `stats.n_switches`",
        ),
        "lsoda": MethodSpec(
            LSODA,
            MULTISTEP_OPTIONS,
            uses_tolerances=True,
            notes="Adams/BDF switching by stiffness detection (Petzold 1983); switches in `stats.n_switches`",
        ),
        "dp5": MethodSpec(None, julia="DP5", notes="Julia's name of `dopri5`"),
        "bs3": MethodSpec(None, julia="BS3", notes="Julia's name of `bosh3`"),
        "vern7": MethodSpec(None, julia="Vern7", notes="Verner 7(6)"),
        "vern9": MethodSpec(None, julia="Vern9", notes="Verner 9(8)"),
        "fbdf": MethodSpec(None, julia="FBDF", notes="variable-order BDF, stiff"),
        "qndf": MethodSpec(None, julia="QNDF", notes="variable-order NDF, stiff"),
    }
)


def solver_table(implicit: bool) -> Mapping[str, tuple[Callable[..., Any], tuple[str, ...]]]:
    """``name -> (factory, options)`` of the torch methods whose solver is (or is not) implicit.

    Args:
        implicit: True for the stiff solvers (``IMPLICIT_METHODS``), False for the others (``METHODS``).

    Returns:
        A read-only mapping in the registry's order.
    """
    return MappingProxyType(
        {
            name: (spec.solver, spec.options)
            for name, spec in METHOD_SPECS.items()
            if spec.solver is not None and _implicit(spec.solver()) is implicit
        }
    )


def _implicit(solver: AbstractSolver | ExternalSolver) -> bool:
    # an external solver (scipy) is listed with the explicit methods, where it always was
    return isinstance(solver, AbstractSolver) and solver.implicit
