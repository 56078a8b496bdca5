"""Continuous-depth models: ODE blocks, time-dependent layers, augmented and second-order Neural ODEs."""
from .augmented import AugmentedNeuralODE as AugmentedNeuralODE, augment as augment
from .layers import (
    ConvDynamics as ConvDynamics,
    MLPDynamics as MLPDynamics,
    TimeConv2d as TimeConv2d,
    TimeLinear as TimeLinear,
)
from .ode_block import NeuralODE as NeuralODE, ODEBlock as ODEBlock, SolveSettings as SolveSettings
from .second_order import SecondOrderDynamics as SecondOrderDynamics, SecondOrderNeuralODE as SecondOrderNeuralODE
