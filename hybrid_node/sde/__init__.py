"""Neural SDEs on the torch backend: torchsde's API (sdeint, sdeint_adjoint, Brownian motions)."""

from .brownian import BrownianInterval as BrownianInterval
from .brownian import BrownianPath as BrownianPath
from .brownian import BrownianTree as BrownianTree
from .sdeint import sdeint as sdeint
from .sdeint import sdeint_adjoint as sdeint_adjoint
from .solvers import METHODS as METHODS
