"""hybrid_node: Neural ODEs in PyTorch with torch and Julia backends."""
from ._api import DenseSolution as DenseSolution
from ._api import odeint as odeint
from ._api import odeint_adjoint as odeint_adjoint
from ._api import odeint_dense as odeint_dense
from ._api import odeint_event as odeint_event
from ._api import solve as solve
from ._backend import get_backend as get_backend
from ._backend import set_backend as set_backend
from ._backend import use_backend as use_backend
from ._errors import BackendError as BackendError
from ._errors import HybridNodeError as HybridNodeError
from ._errors import JuliaNotAvailableError as JuliaNotAvailableError
from ._errors import SolverError as SolverError
from ._errors import Status as Status
from ._solution import Solution as Solution
from ._solution import Stats as Stats
from .controllers import ConstantStepSize as ConstantStepSize
from .controllers import PIDController as PIDController
from .sensitivity import BacksolveAdjoint as BacksolveAdjoint
from .sensitivity import DirectBackprop as DirectBackprop
from .sensitivity import GaussAdjoint as GaussAdjoint
from .sensitivity import InterpolatingAdjoint as InterpolatingAdjoint
from .sensitivity import QuadratureAdjoint as QuadratureAdjoint
from .solvers import (RK4, AdamsBashforth, AdamsBashforthMoulton, AdaptiveHeun, Bosh3, ButcherTableau, Dopri5,
                      Dopri8, Euler, ExplicitRungeKutta, Fehlberg2, Heun2, Heun3, Midpoint, RK4Classic, ScipySolver,
                      Tsit5)
from .solvers import METHODS as METHODS
from .solvers.implicit import (ROS3P, SDIRK2, TRBDF2, Dirk, GaussLegendre4, GaussLegendre6, ImplicitEuler,
                               ImplicitMidpoint, ImplicitRungeKutta, KenCarp4, Kvaerno3, Kvaerno5, RadauIIA3,
                               RadauIIA5, Rodas4, Rodas5P, Rosenbrock, Rosenbrock23, Trapezoid)

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
