"""Neural SDEs on the torch backend: torchsde's API (sdeint, sdeint_adjoint, Brownian motions, SDE classes)."""

from . import settings as settings
from . import types as types
from .base_sde import BaseSDE as BaseSDE
from .base_sde import SDEIto as SDEIto
from .base_sde import SDEStratonovich as SDEStratonovich
from .brownian import BrownianInterval as BrownianInterval
from .brownian import BrownianPath as BrownianPath
from .brownian import BrownianTree as BrownianTree
from .brownian import ReverseBrownian as ReverseBrownian
from .sdeint import sdeint as sdeint
from .sdeint import sdeint_adjoint as sdeint_adjoint
from .solvers import METHODS as METHODS
