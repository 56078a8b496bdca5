"""Solvers of the torch backend and the table that maps ``odeint`` method names to them."""

from .adams import Adams, AdamsBashforth, AdamsBashforthMoulton
from .dopri5 import Dopri5
from .dopri8 import Dopri8
from .fixed_rk import RK4, Euler, Heun2, Heun3, Midpoint, RK4Classic
from .low_order_pairs import AdaptiveHeun, Bosh3, Fehlberg2
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

#: method name -> (factory, names of the method options the factory takes)
METHODS = {
    "dopri5": (Dopri5, ()),
    "tsit5": (Tsit5, ()),
    "bosh3": (Bosh3, ()),
    "fehlberg2": (Fehlberg2, ()),
    "adaptive_heun": (AdaptiveHeun, ()),
    "dopri8": (Dopri8, ()),
    "euler": (Euler, ()),
    "midpoint": (Midpoint, ()),
    "heun2": (Heun2, ()),
    "heun3": (Heun3, ()),
    "rk4": (RK4, ()),
    "rk4_classic": (RK4Classic, ()),
    "explicit_adams": (AdamsBashforth, ("max_order",)),
    "implicit_adams": (AdamsBashforthMoulton, ("max_order", "max_iters")),
    "fixed_adams": (lambda **kw: AdamsBashforthMoulton(name="fixed_adams", **kw), ("max_order", "max_iters")),
    "scipy_solver": (ScipySolver, ("solver",)),
}

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
