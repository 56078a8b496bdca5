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
from .rosenbrock import ROS3P, Rodas4, Rodas5P, Rosenbrock, Rosenbrock23

ROSENBROCK_OPTIONS = ("jacobian", "batch_dims", "autonomous")
NEWTON_OPTIONS = ("jacobian", "batch_dims", "max_newton_iters", "newton_kappa", "newton_rtol", "newton_atol")

#: method name -> (factory, names of the method options the factory takes)
IMPLICIT_METHODS = {
    "rodas5p": (Rodas5P, ROSENBROCK_OPTIONS),
    "rodas4": (Rodas4, ROSENBROCK_OPTIONS),
    "ros3p": (ROS3P, ROSENBROCK_OPTIONS),
    "rosenbrock23": (Rosenbrock23, ROSENBROCK_OPTIONS),
    "kencarp4": (KenCarp4, NEWTON_OPTIONS),
    "kvaerno3": (Kvaerno3, NEWTON_OPTIONS),
    "kvaerno5": (Kvaerno5, NEWTON_OPTIONS),
    "trbdf2": (TRBDF2, NEWTON_OPTIONS),
    "implicit_euler": (ImplicitEuler, NEWTON_OPTIONS),
    "sdirk2": (SDIRK2, NEWTON_OPTIONS),
    "trapezoid": (Trapezoid, NEWTON_OPTIONS),
    "implicit_midpoint": (ImplicitMidpoint, NEWTON_OPTIONS),
    "gl4": (GaussLegendre4, NEWTON_OPTIONS),
    "gl6": (GaussLegendre6, NEWTON_OPTIONS),
    "radauIIA3": (RadauIIA3, NEWTON_OPTIONS),
    "radauIIA5": (RadauIIA5, NEWTON_OPTIONS),
}

__all__ = [
    "IMPLICIT_METHODS",
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
