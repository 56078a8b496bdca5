"""Bad sizes, scales and settings of the model constructors fail where they are given, naming the argument.

Each case used to pass silently (a bool taken as size 1, an infinite tolerance or scale, a string taken
as True) or fail later inside torch with a message that names no argument.
"""

from __future__ import annotations

import math

import pytest
import torch

import hybrid_node as hn
from hybrid_node import nn as hnn


def _field(t, y):
    return -y


CASES = [
    # (constructor call, exception type, words the message must contain)
    (lambda: hnn.TimeLinear(True, 2), TypeError, "in_features"),
    (lambda: hnn.TimeLinear(2.5, 2), TypeError, "in_features"),
    (lambda: hnn.TimeConv2d(True, 2), TypeError, "in_channels"),
    (lambda: hnn.MLPDynamics(True), TypeError, "dim"),
    (lambda: hnn.MLPDynamics(2.0), TypeError, "dim"),
    (lambda: hnn.MLPDynamics(0), ValueError, "dim"),
    (lambda: hnn.MLPDynamics(2, hidden=0), ValueError, "hidden"),
    (lambda: hnn.MLPDynamics(2, activation="tanh"), TypeError, "activation"),
    (lambda: hnn.ConvDynamics(0), ValueError, "channels"),
    (lambda: hnn.ConvDynamics(-4), ValueError, "channels"),
    (lambda: hnn.ConvDynamics(4, groups=0), ValueError, "groups"),
    (lambda: hnn.HamiltonianNN(True), TypeError, "dim"),
    (lambda: hnn.BaselineODE(0), ValueError, "dim"),
    (lambda: hnn.BaselineODE(2, hidden=0), ValueError, "hidden"),
    (lambda: hnn.BaselineODE(2, layers=-1), ValueError, "layers"),
    (lambda: hnn.AugmentedNeuralODE(_field, augment_dim=True), TypeError, "augment_dim"),
    (lambda: hnn.augment(torch.zeros(2, 3), True), TypeError, "augment_dim"),
    (lambda: hnn.SecondOrderDynamics(lambda t, x, v: x, dim=True), TypeError, "dim"),
    (lambda: hnn.ODEBlock(_field, t=(0.0, math.inf)), ValueError, "finite"),
    (lambda: hnn.ODEBlock(_field, t="ab"), TypeError, "t must be"),
    (lambda: hnn.SolveSettings(rtol=math.inf), ValueError, "rtol"),
    (lambda: hnn.SolveSettings(atol=True), ValueError, "atol"),
    (lambda: hnn.CNFSolver(rtol=math.inf), ValueError, "rtol"),
    (lambda: hnn.CNFSolver(adjoint="no"), TypeError, "adjoint"),
    (lambda: hnn.CNF(torch.nn.Linear(2, 2), 2, base_std=math.inf), ValueError, "base_std"),
    (lambda: hnn.LatentODE(obs_dim=0), ValueError, "obs_dim"),
    (lambda: hnn.LatentODE(latent_dim=0), ValueError, "latent_dim"),
    (lambda: hnn.LatentODE(obs_dim=True), TypeError, "obs_dim"),
    (lambda: hnn.LatentODE(obs_std=math.nan), ValueError, "obs_std"),
    (lambda: hnn.LatentODE(obs_std=math.inf), ValueError, "obs_std"),
    (lambda: hnn.DiagonalDiffusion(0), ValueError, "dim"),
    (lambda: hnn.DiagonalDiffusion(2, hidden=0), ValueError, "hidden"),
    (lambda: hnn.DiagonalDiffusion(2, scale=math.nan), ValueError, "scale"),
    (lambda: hnn.DiagonalDiffusion(2, scale=-1.0), ValueError, "scale"),
    (lambda: hnn.NeuralSDE(_field, _field, adjoint="no"), TypeError, "adjoint"),
    (lambda: hnn.NeuralSDE(_field, _field, dt=0.0), ValueError, "dt"),
    (lambda: hnn.NeuralSDE(_field, _field, dt=math.nan), ValueError, "dt"),
    (lambda: hnn.NeuralSDE(_field, 0.1), TypeError, "diffusion"),
    (lambda: hnn.LatentSDE(data_dim=0), ValueError, "data_dim"),
    (lambda: hnn.LatentSDE(latent_dim=True), TypeError, "latent_dim"),
    (lambda: hnn.LatentSDE(context_dim=0), ValueError, "context_dim"),
    (lambda: hnn.LatentSDE(obs_std=0.0), ValueError, "obs_std"),
    (lambda: hnn.LatentSDE(obs_std=math.nan), ValueError, "obs_std"),
    (lambda: hnn.LatentSDE(dt=-0.1), ValueError, "dt"),
    (lambda: hn.Event(_field, direction=True), ValueError, "direction"),
    (lambda: hn.Event(_field, samples=True), ValueError, "samples"),
]


@pytest.mark.parametrize(("make", "error", "words"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_constructor_argument_is_refused_by_name(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_valid_arguments_still_build():
    # the checks refuse only what is wrong: the documented defaults and ordinary values still build
    hnn.MLPDynamics(2, hidden=8, layers=2, activation=torch.nn.Tanh())
    hnn.ConvDynamics(8, groups=4)
    hnn.HamiltonianNN(1, hidden=4, layers=0)
    hnn.BaselineODE(1, hidden=4, layers=0)
    hnn.AugmentedNeuralODE(_field, augment_dim=0)
    hnn.LatentODE(obs_dim=1, latent_dim=1, obs_std=0.1)
    hnn.DiagonalDiffusion(3, hidden=2, scale=1)
    hnn.NeuralSDE(_field, _field, dt=1)
    hnn.LatentSDE(data_dim=1, latent_dim=1, context_dim=1, hidden=1, obs_std=1, dt=1)
    hnn.SolveSettings(rtol=1, atol=1e-9)
    hn.Event(_field, direction=-1, samples=0)
