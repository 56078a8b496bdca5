"""Solvers of the torch backend; the method names are in :mod:`hybrid_node.solvers.registry`."""

from .adams import Adams, AdamsBashforth, AdamsBashforthMoulton
from .dopri5 import Dopri5
from .dopri8 import Dopri8
from .fixed_rk import RK4, Euler, Heun2, Heun3, Midpoint, RK4Classic
from .low_order_pairs import AdaptiveHeun, Bosh3, Fehlberg2
from .registry import solver_table
from .runge_kutta import ExplicitRungeKutta
from .scipy_solver import ScipySolver
from .tableau import ButcherTableau
from .tsit5 import Tsit5

__all__ = [
    "METHODS",
    "Adams",
    "AdamsBashforth",
    "AdamsBashforthMoulton",
    "AdaptiveHeun",
    "Bosh3",
    "ButcherTableau",
    "Dopri5",
    "Dopri8",
    "Euler",
    "ExplicitRungeKutta",
    "Fehlberg2",
    "Heun2",
    "Heun3",
    "Midpoint",
    "RK4",
    "RK4Classic",
    "ScipySolver",
    "Tsit5",
]

#: method name -> (factory, names of the method options the factory takes): the torch methods that
#: are not implicit (the stiff ones are ``implicit.IMPLICIT_METHODS``), read from the registry
METHODS = solver_table(implicit=False)

#: torchdiffeq's fixed-step implicit method names, provided by the stiff solvers.
IMPLICIT_FIXED_NAMES = (
    "implicit_euler",
    "implicit_midpoint",
    "trapezoid",
    "radauIIA3",
    "radauIIA5",
    "gl4",
    "gl6",
    "sdirk2",
    "trbdf2",
)
