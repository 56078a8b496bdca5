"""Continuous-depth models: ODE blocks, time-dependent layers, augmented, second-order and Hamiltonian Neural ODEs."""

from .augmented import AugmentedNeuralODE as AugmentedNeuralODE
from .augmented import augment as augment
from .cnf import CNF as CNF
from .cnf import CNFSolver as CNFSolver
from .cnf import ExactTrace as ExactTrace
from .cnf import HutchinsonTrace as HutchinsonTrace
from .cnf import RNODERegularization as RNODERegularization
from .empirical_prior import EmpiricalPrior as EmpiricalPrior  # irregular time series (issue 7)
from .hamiltonian import BaselineODE as BaselineODE
from .hamiltonian import HamiltonianNN as HamiltonianNN
from .latent_ode import ElboTerms as ElboTerms
from .latent_ode import LatentODE as LatentODE
from .layers import ConvDynamics as ConvDynamics
from .layers import MLPDynamics as MLPDynamics
from .layers import TimeConv2d as TimeConv2d
from .layers import TimeLinear as TimeLinear
from .neural_sde import DiagonalDiffusion as DiagonalDiffusion
from .neural_sde import LatentSDE as LatentSDE
from .neural_sde import LatentSDELoss as LatentSDELoss
from .neural_sde import NeuralSDE as NeuralSDE
from .ode_block import NeuralODE as NeuralODE
from .ode_block import ODEBlock as ODEBlock
from .ode_block import SolveSettings as SolveSettings
from .second_order import SecondOrderDynamics as SecondOrderDynamics
from .second_order import SecondOrderNeuralODE as SecondOrderNeuralODE
