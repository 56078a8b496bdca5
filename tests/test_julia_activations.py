"""julia/activations.jl's formulas, differentiated the way Julia differentiates them, against torch.

Julia cannot run here, so each activation is transcribed from the .jl file (the transcribed lines are
pinned: a test fails when the Julia source changes) and evaluated on a forward-mode dual number
with ForwardDiff's rules (DiffRules: ``inv(x)' = -abs2(inv(x))``, ``exp' = exp``,
``log1p(x)' = inv(1 + x)``, ``expm1' = exp``, ``tanh' = 1 - tanh^2``, ``max(x, y)`` takes ``x``'s
derivative only where ``x > y``; comparisons and ``isinf`` look at the value). ForwardDiff builds the
stiff methods' Jacobians, and Zygote broadcasts these scalar functions with the same dual numbers,
so these are the derivatives both the forward solve and the adjoint's VJPs see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

SOURCE = (Path(__file__).resolve().parents[1] / "julia" / "activations.jl").read_text()


class Dual:
    """``value + derivative * eps`` in float64 (IEEE overflow and 0 * Inf = NaN, as in Julia)."""

    def __init__(self, v, d=0.0):
        self.v, self.d = np.float64(v), np.float64(d)

    @staticmethod
    def of(x) -> Dual:
        return x if isinstance(x, Dual) else Dual(x)

    def __add__(self, o):
        o = Dual.of(o)
        return Dual(self.v + o.v, self.d + o.d)

    __radd__ = __add__

    def __neg__(self):
        return Dual(-self.v, -self.d)

    def __sub__(self, o):
        return self + (-Dual.of(o))

    def __mul__(self, o):
        o = Dual.of(o)
        return Dual(self.v * o.v, self.d * o.v + self.v * o.d)

    __rmul__ = __mul__

    def __gt__(self, o):
        return self.v > Dual.of(o).v


def exp(x: Dual) -> Dual:
    e = np.exp(x.v)
    return Dual(e, e * x.d)


def log1p(x: Dual) -> Dual:
    return Dual(np.log1p(x.v), x.d / (1 + x.v))


def expm1(x: Dual) -> Dual:
    return Dual(np.expm1(x.v), np.exp(x.v) * x.d)


def tanh(x: Dual) -> Dual:
    t = np.tanh(x.v)
    return Dual(t, (1 - t * t) * x.d)


def inv(x: Dual) -> Dual:
    i = 1 / x.v
    return Dual(i, -(i * i) * x.d)


def isinf(x: Dual) -> bool:
    return bool(np.isinf(x.v))


def zero(x: Dual) -> Dual:
    return Dual(0.0)


def one(x: Dual) -> Dual:
    return Dual(1.0)


def jmax(x: Dual, y: Dual) -> Dual:
    return x if x.v > y.v else Dual(y.v, 0.0 * x.d + y.d)


def sigmoid_torch(x):
    e = exp(-x)
    return zero(x) if isinf(e) else inv(one(x) + e)


#: torch module -> (lines of julia/activations.jl, their transcription)
FORMULAS = {
    "tanh": (nn.Tanh(), ['name == "tanh" && return tanh'], tanh),
    "relu": (nn.ReLU(), ["relu_torch(x) = max(x, zero(x))"], lambda x: jmax(x, zero(x))),
    "softplus": (
        nn.Softplus(),
        ["softplus_torch(x) = x > 20 ? x : log1p(exp(x))"],
        lambda x: x if x > 20 else log1p(exp(x)),
    ),
    "sigmoid": (
        nn.Sigmoid(),
        ["function sigmoid_torch(x)\n    e = exp(-x)\n    return isinf(e) ? zero(x) : inv(one(x) + e)\nend"],
        sigmoid_torch,
    ),
    "silu": (nn.SiLU(), ["silu_torch(x) = x * sigmoid_torch(x)"], lambda x: x * sigmoid_torch(x)),
    "elu": (nn.ELU(), ["elu_torch(x) = x > 0 ? x : expm1(x)"], lambda x: x if x > 0 else expm1(x)),
}

#: both sides of every branch: exp(-x) overflowing (x < -709.78), near it, softplus's threshold, 0
POINTS = [
    -1e4,
    -800.0,
    -745.5,
    -710.0,
    -709.5,
    -705.0,
    -30.0,
    -1.0,
    -1e-3,
    0.0,
    1e-3,
    1.0,
    19.9,
    20.0,
    20.1,
    30.0,
    800.0,
]


@pytest.mark.parametrize("name", FORMULAS)
def test_transcribed_lines_are_those_of_activations_jl(name):
    for line in FORMULAS[name][1]:
        assert line in SOURCE, f"julia/activations.jl changed; update the transcription of {name}: {line!r}"


@pytest.mark.parametrize("name", FORMULAS)
def test_julia_activation_values_and_derivatives_match_torch(name):
    module, _, formula = FORMULAS[name]
    x = torch.tensor(POINTS, dtype=torch.float64, requires_grad=True)
    y = module(x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    with np.errstate(all="ignore"):  # overflow to Inf is the point of the large arguments
        duals = [formula(Dual(p, 1.0)) for p in POINTS]
    values = np.array([d.v for d in duals])
    derivatives = np.array([d.d for d in duals])
    assert np.isfinite(derivatives).all(), dict(zip(POINTS, derivatives))
    # 4 ulps: numpy's and torch's exp/log1p/tanh round differently.
    np.testing.assert_allclose(values, y.detach().numpy(), rtol=4 * np.finfo(float).eps, atol=1e-300)
    # atol 1e-15: torch's sigmoid derivative s * (1 - s) loses 1 - s to cancellation for large x (an
    # absolute error of about eps / 4), and near x = -709 the dual's inv(a)^2 underflows to 0 where
    # torch's is 7e-309; both are far below 1e-15, while the bug this guards against is a NaN.
    np.testing.assert_allclose(derivatives, dy.numpy(), rtol=1e-12, atol=1e-15)
