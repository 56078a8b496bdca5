"""The stiff (implicit) solvers' entries in the ``odeint`` method table.

Names match the Julia backend where both have the method (rodas5p, rosenbrock23, kencarp4, trbdf2), so
cross-backend tests can pair them; torchdiffeq's fixed-step implicit names keep their meaning.
``trbdf2`` is adaptive (as on the Julia backend) unless ``options`` give ``step_size`` or
``grid_constructor``, then it takes torchdiffeq's fixed steps with the same formula.
"""

from __future__ import annotations

from .esdirk import (
    SDIRK2,
    TRBDF2,
    Dirk,
    ImplicitEuler,
    KenCarp4,
    Kvaerno3,
    Kvaerno5,
    Trapezoid,
)
from .implicit_fixed import (
    GaussLegendre4,
    GaussLegendre6,
    ImplicitMidpoint,
    ImplicitRungeKutta,
    RadauIIA3,
    RadauIIA5,
)
from .registry import NEWTON_OPTIONS, ROSENBROCK_OPTIONS, solver_table
from .rosenbrock import ROS3P, Rodas4, Rodas5P, Rosenbrock, Rosenbrock23

#: method name -> (factory, names of the method options the factory takes), read from the registry
IMPLICIT_METHODS = solver_table(implicit=True)

__all__ = [
    "IMPLICIT_METHODS",
    "NEWTON_OPTIONS",
    "ROSENBROCK_OPTIONS",
    "ROS3P",
    "SDIRK2",
    "TRBDF2",
    "Dirk",
    "GaussLegendre4",
    "GaussLegendre6",
    "ImplicitEuler",
    "ImplicitMidpoint",
    "ImplicitRungeKutta",
    "KenCarp4",
    "Kvaerno3",
    "Kvaerno5",
    "RadauIIA3",
    "RadauIIA5",
    "Rodas4",
    "Rodas5P",
    "Rosenbrock",
    "Rosenbrock23",
    "Trapezoid",
]
