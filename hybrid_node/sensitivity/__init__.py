"""Gradient methods: settings objects here, implementations per backend."""

from .base import AbstractSensitivity as AbstractSensitivity
from .reversible import ReversibleAdjoint as ReversibleAdjoint
from .settings import (
    BacksolveAdjoint as BacksolveAdjoint,
)
from .settings import (
    DirectBackprop as DirectBackprop,
)
from .settings import (
    GaussAdjoint as GaussAdjoint,
)
from .settings import (
    InterpolatingAdjoint as InterpolatingAdjoint,
)
from .settings import (
    QuadratureAdjoint as QuadratureAdjoint,
)
