"""Gradient methods: settings objects here, implementations per backend."""
from .settings import (
    BacksolveAdjoint as BacksolveAdjoint,
    DirectBackprop as DirectBackprop,
    GaussAdjoint as GaussAdjoint,
    InterpolatingAdjoint as InterpolatingAdjoint,
    QuadratureAdjoint as QuadratureAdjoint,
)
