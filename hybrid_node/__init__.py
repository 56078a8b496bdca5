"""hybrid_node: Neural ODEs in PyTorch with torch and Julia backends."""

# The public names load on first use (PEP 562), so `import hybrid_node` and `hybrid-node --help` do not
# import torch. Type checkers and documentation tools read the explicit imports under TYPE_CHECKING;
# tests/test_lazy_import.py checks that both lists name the same objects.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import nn as nn
    from ._api import odeint as odeint
    from ._api import odeint_adjoint as odeint_adjoint
    from ._api import solve as solve
    from ._backend import get_backend as get_backend
    from ._backend import set_backend as set_backend
    from ._backend import use_backend as use_backend
    from ._dense import DenseSolution as DenseSolution
    from ._dense import odeint_dense as odeint_dense
    from ._errors import BackendError as BackendError
    from ._errors import HybridNodeError as HybridNodeError
    from ._errors import JuliaNotAvailableError as JuliaNotAvailableError
    from ._errors import SolverError as SolverError
    from ._errors import Status as Status
    from ._errors import StiffGradientWarning as StiffGradientWarning
    from ._event import Event as Event
    from ._odeint_event import odeint_event as odeint_event
    from ._registry import METHOD_SPECS as METHODS
    from ._registry import MethodSpec as MethodSpec
    from ._registry import methods_table as methods_table
    from ._solution import Solution as Solution
    from ._solution import Stats as Stats
    from .controllers import AbstractController as AbstractController
    from .controllers import ConstantStepSize as ConstantStepSize
    from .controllers import PIDController as PIDController
    from .sde import BaseSDE as BaseSDE
    from .sde import BrownianInterval as BrownianInterval
    from .sde import BrownianPath as BrownianPath
    from .sde import BrownianTree as BrownianTree
    from .sde import SDEIto as SDEIto
    from .sde import SDEStratonovich as SDEStratonovich
    from .sde import sdeint as sdeint
    from .sde import sdeint_adjoint as sdeint_adjoint
    from .sensitivity import AbstractSensitivity as AbstractSensitivity
    from .sensitivity import BacksolveAdjoint as BacksolveAdjoint
    from .sensitivity import DirectBackprop as DirectBackprop
    from .sensitivity import GaussAdjoint as GaussAdjoint
    from .sensitivity import InterpolatingAdjoint as InterpolatingAdjoint
    from .sensitivity import QuadratureAdjoint as QuadratureAdjoint
    from .sensitivity import ReversibleAdjoint as ReversibleAdjoint
    from .solvers import RK4 as RK4
    from .solvers import AdamsBashforth as AdamsBashforth
    from .solvers import AdamsBashforthMoulton as AdamsBashforthMoulton
    from .solvers import AdaptiveHeun as AdaptiveHeun
    from .solvers import Bosh3 as Bosh3
    from .solvers import ButcherTableau as ButcherTableau
    from .solvers import Dopri5 as Dopri5
    from .solvers import Dopri8 as Dopri8
    from .solvers import Euler as Euler
    from .solvers import ExplicitRungeKutta as ExplicitRungeKutta
    from .solvers import Fehlberg2 as Fehlberg2
    from .solvers import Heun2 as Heun2
    from .solvers import Heun3 as Heun3
    from .solvers import Midpoint as Midpoint
    from .solvers import RK4Classic as RK4Classic
    from .solvers import ScipySolver as ScipySolver
    from .solvers import Tsit5 as Tsit5
    from .solvers.auto_switch import AutoSwitch as AutoSwitch
    from .solvers.base import AbstractSolver as AbstractSolver
    from .solvers.base import ExternalSolver as ExternalSolver
    from .solvers.implicit import ROS3P as ROS3P
    from .solvers.implicit import SDIRK2 as SDIRK2
    from .solvers.implicit import TRBDF2 as TRBDF2
    from .solvers.implicit import Dirk as Dirk
    from .solvers.implicit import GaussLegendre4 as GaussLegendre4
    from .solvers.implicit import GaussLegendre6 as GaussLegendre6
    from .solvers.implicit import ImplicitEuler as ImplicitEuler
    from .solvers.implicit import ImplicitMidpoint as ImplicitMidpoint
    from .solvers.implicit import ImplicitRungeKutta as ImplicitRungeKutta
    from .solvers.implicit import KenCarp4 as KenCarp4
    from .solvers.implicit import Kvaerno3 as Kvaerno3
    from .solvers.implicit import Kvaerno5 as Kvaerno5
    from .solvers.implicit import RadauIIA3 as RadauIIA3
    from .solvers.implicit import RadauIIA5 as RadauIIA5
    from .solvers.implicit import Rodas4 as Rodas4
    from .solvers.implicit import Rodas5P as Rodas5P
    from .solvers.implicit import Rosenbrock as Rosenbrock
    from .solvers.implicit import Rosenbrock23 as Rosenbrock23
    from .solvers.implicit import Trapezoid as Trapezoid
    from .solvers.multistep import BDF as BDF
    from .solvers.multistep import LSODA as LSODA
    from .solvers.multistep import Nordsieck as Nordsieck
    from .solvers.multistep import VariableAdams as VariableAdams
    from .solvers.reversible import Reversible as Reversible
    from .solvers.symplectic import Leapfrog as Leapfrog
    from .solvers.symplectic import PartitionedComposition as PartitionedComposition
    from .solvers.symplectic import SymplecticEuler as SymplecticEuler
    from .solvers.symplectic import Yoshida4 as Yoshida4
    from .solvers.symplectic import Yoshida6 as Yoshida6

#: public name -> (module relative to this package, attribute in it; "" for a submodule)
_LAZY: dict[str, tuple[str, str]] = {
    "nn": (".nn", ""),
    "DenseSolution": ("._dense", "DenseSolution"),
    "odeint": ("._api", "odeint"),
    "odeint_adjoint": ("._api", "odeint_adjoint"),
    "odeint_dense": ("._dense", "odeint_dense"),
    "odeint_event": ("._odeint_event", "odeint_event"),
    "solve": ("._api", "solve"),
    "get_backend": ("._backend", "get_backend"),
    "set_backend": ("._backend", "set_backend"),
    "use_backend": ("._backend", "use_backend"),
    "BackendError": ("._errors", "BackendError"),
    "HybridNodeError": ("._errors", "HybridNodeError"),
    "JuliaNotAvailableError": ("._errors", "JuliaNotAvailableError"),
    "SolverError": ("._errors", "SolverError"),
    "StiffGradientWarning": ("._errors", "StiffGradientWarning"),
    "Status": ("._errors", "Status"),
    "Event": ("._event", "Event"),
    "METHODS": ("._registry", "METHOD_SPECS"),
    "MethodSpec": ("._registry", "MethodSpec"),
    "methods_table": ("._registry", "methods_table"),
    "Solution": ("._solution", "Solution"),
    "Stats": ("._solution", "Stats"),
    "AbstractController": (".controllers", "AbstractController"),
    "ConstantStepSize": (".controllers", "ConstantStepSize"),
    "PIDController": (".controllers", "PIDController"),
    "BaseSDE": (".sde", "BaseSDE"),
    "BrownianInterval": (".sde", "BrownianInterval"),
    "BrownianPath": (".sde", "BrownianPath"),
    "BrownianTree": (".sde", "BrownianTree"),
    "SDEIto": (".sde", "SDEIto"),
    "SDEStratonovich": (".sde", "SDEStratonovich"),
    "sdeint": (".sde", "sdeint"),
    "sdeint_adjoint": (".sde", "sdeint_adjoint"),
    "AbstractSensitivity": (".sensitivity", "AbstractSensitivity"),
    "BacksolveAdjoint": (".sensitivity", "BacksolveAdjoint"),
    "DirectBackprop": (".sensitivity", "DirectBackprop"),
    "GaussAdjoint": (".sensitivity", "GaussAdjoint"),
    "InterpolatingAdjoint": (".sensitivity", "InterpolatingAdjoint"),
    "QuadratureAdjoint": (".sensitivity", "QuadratureAdjoint"),
    "ReversibleAdjoint": (".sensitivity", "ReversibleAdjoint"),
    "RK4": (".solvers", "RK4"),
    "AdamsBashforth": (".solvers", "AdamsBashforth"),
    "AdamsBashforthMoulton": (".solvers", "AdamsBashforthMoulton"),
    "AdaptiveHeun": (".solvers", "AdaptiveHeun"),
    "Bosh3": (".solvers", "Bosh3"),
    "ButcherTableau": (".solvers", "ButcherTableau"),
    "Dopri5": (".solvers", "Dopri5"),
    "Dopri8": (".solvers", "Dopri8"),
    "Euler": (".solvers", "Euler"),
    "ExplicitRungeKutta": (".solvers", "ExplicitRungeKutta"),
    "Fehlberg2": (".solvers", "Fehlberg2"),
    "Heun2": (".solvers", "Heun2"),
    "Heun3": (".solvers", "Heun3"),
    "Midpoint": (".solvers", "Midpoint"),
    "RK4Classic": (".solvers", "RK4Classic"),
    "ScipySolver": (".solvers", "ScipySolver"),
    "Tsit5": (".solvers", "Tsit5"),
    "AutoSwitch": (".solvers.auto_switch", "AutoSwitch"),
    "AbstractSolver": (".solvers.base", "AbstractSolver"),
    "ExternalSolver": (".solvers.base", "ExternalSolver"),
    "ROS3P": (".solvers.implicit", "ROS3P"),
    "SDIRK2": (".solvers.implicit", "SDIRK2"),
    "TRBDF2": (".solvers.implicit", "TRBDF2"),
    "Dirk": (".solvers.implicit", "Dirk"),
    "GaussLegendre4": (".solvers.implicit", "GaussLegendre4"),
    "GaussLegendre6": (".solvers.implicit", "GaussLegendre6"),
    "ImplicitEuler": (".solvers.implicit", "ImplicitEuler"),
    "ImplicitMidpoint": (".solvers.implicit", "ImplicitMidpoint"),
    "ImplicitRungeKutta": (".solvers.implicit", "ImplicitRungeKutta"),
    "KenCarp4": (".solvers.implicit", "KenCarp4"),
    "Kvaerno3": (".solvers.implicit", "Kvaerno3"),
    "Kvaerno5": (".solvers.implicit", "Kvaerno5"),
    "RadauIIA3": (".solvers.implicit", "RadauIIA3"),
    "RadauIIA5": (".solvers.implicit", "RadauIIA5"),
    "Rodas4": (".solvers.implicit", "Rodas4"),
    "Rodas5P": (".solvers.implicit", "Rodas5P"),
    "Rosenbrock": (".solvers.implicit", "Rosenbrock"),
    "Rosenbrock23": (".solvers.implicit", "Rosenbrock23"),
    "Trapezoid": (".solvers.implicit", "Trapezoid"),
    "BDF": (".solvers.multistep", "BDF"),
    "LSODA": (".solvers.multistep", "LSODA"),
    "Nordsieck": (".solvers.multistep", "Nordsieck"),
    "VariableAdams": (".solvers.multistep", "VariableAdams"),
    "Reversible": (".solvers.reversible", "Reversible"),
    "Leapfrog": (".solvers.symplectic", "Leapfrog"),
    "PartitionedComposition": (".solvers.symplectic", "PartitionedComposition"),
    "SymplecticEuler": (".solvers.symplectic", "SymplecticEuler"),
    "Yoshida4": (".solvers.symplectic", "Yoshida4"),
    "Yoshida6": (".solvers.symplectic", "Yoshida6"),
}
__all__ = sorted(_LAZY)

__version__ = "0.1.0"


def _load() -> None:
    """Import every public name at once, as an eager ``__init__`` would (submodules such as
    ``hybrid_node.solvers.implicit`` then exist as attributes, as before)."""
    for public, (module_path, attr) in _LAZY.items():
        module = importlib.import_module(module_path, __name__)
        globals()[public] = module if not attr else getattr(module, attr)


def __getattr__(name: str) -> Any:
    """Load the public API on the first access to any name of it (PEP 562)."""
    if name.startswith("__") or "_loaded" in globals():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()["_loaded"] = True
    try:
        _load()
    except BaseException:
        del globals()["_loaded"]  # the next access retries and shows the import error again
        raise
    if name in globals():
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
