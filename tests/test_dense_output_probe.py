"""The dense output contract (``hn.odeint_dense`` / ``DenseSolution``), probed over every method.

What a user of diffrax's ``SaveAt(dense=True)`` / ``sol.evaluate``, scipy's ``dense_output=True`` or
DifferentialEquations.jl's ``sol(t)`` relies on, each against an outside yardstick: ``hn.odeint`` at
the same times, the matrix exponential of a linear problem, scipy's DOP853 at rtol 1e-13 on a
nonlinear one, scipy's own dense output, and central finite differences. The methods are enumerated
from ``hn.METHODS``; nothing here lists them by hand.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch

import hybrid_node as hn
from hybrid_node.solvers.base import ExternalSolver

A = np.array([[-0.1, 1.0], [-1.0, -0.1]])  # a damped rotation: y(t) = expm(A t) y0
Y0 = np.array([1.0, 0.5])


def _torch_methods() -> list[str]:
    """Every method with a torch solver of its own (the ones that can have dense output here)."""
    return [
        name
        for name, spec in hn.METHODS.items()
        if "torch" in spec.backends and not isinstance(spec.solver(), ExternalSolver)
    ]


METHODS = _torch_methods()
ADAPTIVE = [m for m in METHODS if hn.METHODS[m].solver().adaptive]
FIXED = [m for m in METHODS if not hn.METHODS[m].solver().adaptive]


def _separable(method: str) -> bool:
    """Whether the method steps a separable (q, p) pair (the symplectic ones take a tuple state)."""
    return type(hn.METHODS[method].solver()).__module__.endswith("symplectic")


def _problem(method: str):
    """(func, y0, exact) for the method: y' = A y, or as (q, p) the oscillator q' = p, p' = -q."""
    if _separable(method):

        def exact(t: float) -> np.ndarray:
            c, s = math.cos(t), math.sin(t)
            return np.array([Y0[0] * c + Y0[1] * s, -Y0[0] * s + Y0[1] * c])

        return (lambda t, y: (y[1], -y[0])), (torch.tensor(Y0[0]), torch.tensor(Y0[1])), exact
    a = torch.tensor(A)
    return (lambda t, y: y @ a.T), torch.tensor(Y0), (lambda t: scipy.linalg.expm(A * t) @ Y0)


def _flat(y) -> torch.Tensor:
    """A (q, p) tuple read as one tensor with the pair in its last dimension."""
    return torch.stack(y, -1) if isinstance(y, tuple) else y


def _options(method: str) -> dict:
    return {} if method in ADAPTIVE else {"step_size": 0.1}


def _tols(method: str) -> dict:
    """rtol 1e-6, or 1e-4 for the low-order pairs (some hundred steps either way, to keep the probe fast)."""
    rtol = 1e-6 if hn.METHODS[method].solver().order >= 3 else 1e-4
    return {"rtol": rtol, "atol": rtol * 1e-2}


def _dense(method: str, t0: float = 0.0, t1: float = 2.0, **kw):
    func, y0, _ = _problem(method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stiff solvers' "non-stiff problem" advice
        return hn.odeint_dense(func, y0, t0, t1, method=method, options=_options(method), **_tols(method), **kw)


def _step_times(sol, backward: bool) -> torch.Tensor:
    """The solver's own step times (caller's time), from the first step's start to the last one's end."""
    times = [s.t0 for s in sol.segments] + [sol.segments[-1].t1]
    return torch.tensor([-x for x in times] if backward else times, dtype=torch.float64)


# --- 1. reads at the solver's own step times -------------------------------------------------------


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("method", METHODS)
def test_read_at_step_times_is_odeints_state(method, backward):
    """At its own step times the dense read is the state odeint returns there, bit for bit.

    odeint with those output times takes the same steps (outputs do not cut steps) and returns each
    step's state, so equality is exact. kencarp4, kvaerno3/5 missed by ~1e-8 (their Newton test ran at
    default tolerances under odeint_dense), dopri5/tsit5/auto at the end time and adams/bdf/lsoda at
    every step time by an ulp (the interpolant's sum in place of the state).
    """
    func, y0, _ = _problem(method)
    t0, t1 = (2.0, 0.0) if backward else (0.0, 2.0)
    sol = _dense(method, t0, t1)
    times = _step_times(sol, backward)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hn.odeint(func, y0, times, method=method, options=_options(method), **_tols(method))
    assert torch.equal(_flat(sol(times)), _flat(ref))
    # one at a time (the scalar path) as in a batch
    assert torch.equal(_flat(sol(times[-1])), _flat(ref)[-1])
    assert torch.equal(_flat(sol(float(times[len(times) // 2]))), _flat(ref)[len(times) // 2])


# --- 5. gradients through dense reads (direct backprop, the one path odeint_dense offers) -----------


def _central(fn, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Central differences of the scalar ``fn`` at ``x``, one coordinate at a time."""
    x = x.detach()
    cols = [(fn(x + eps * e) - fn(x - eps * e)) / (2 * eps) for e in torch.eye(x.numel(), dtype=x.dtype)]
    return torch.stack(cols).reshape(x.shape)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("method", METHODS)
def test_gradient_in_query_times_is_the_interpolants_slope(method, backward):
    """d read / d t against central differences of the reads (float64).

    The times keep off the step grid, where the interpolant is smooth (a fixed-step linear one has kinks
    at the nodes). The error of a central difference of a polynomial of degree <= 8 with steps of
    ~0.1 is ~eps^2 |y'''| <= 1e-12, and its rounding ~1e-16 / eps = 1e-10, so 1e-8 leaves margin.
    Before the fix the times got no gradient at all (torch: "appears to not have been used in the graph").
    """
    sol = _dense(method, *((2.0, 0.0) if backward else (0.0, 2.0)))
    w = torch.tensor([0.3, -1.2], dtype=torch.float64)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return (_flat(sol(t)) * w).sum()

    t = torch.tensor([0.33, 1.67, 0.94], dtype=torch.float64, requires_grad=True)  # unsorted on purpose
    (g,) = torch.autograd.grad(loss(t), t)
    torch.testing.assert_close(g, _central(loss, t, 1e-6), rtol=0, atol=1e-8)


def test_second_derivative_through_query_times_is_refused():
    """A graph through the gradient in the times would hold the slope as a constant: refused, with the fix."""
    sol = _dense("dopri5")
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order only"):
        torch.autograd.grad(sol(t).sum(), t, create_graph=True)
    # with the times detached, the gradient in y0 can be differentiated again
    y0 = torch.tensor(Y0, requires_grad=True)
    a = torch.tensor(A)
    dense = hn.odeint_dense(lambda t, y: y @ a.T + 0.1 * y**2, y0, 0.0, 1.0)
    (g,) = torch.autograd.grad(dense(t.detach()).sum(), y0, create_graph=True)
    assert g.requires_grad
