"""torchdiffeq's ``perturb``: with ``options={"perturb": True}`` a fixed-step solve never evaluates
``func`` exactly at a grid point (the next float after a step's start, the one before its end),
in explicit and implicit solvers, forwards and in the adjoint's backward pass.

Explicit methods are compared with the installed torchdiffeq (the very same evaluation times);
implicit ones (not in torchdiffeq 0.2.5) against the analytic solution.
"""

import math

import pytest
import torch
import torchdiffeq

import hybrid_node as hn

GRID = [0.0, 0.25, 0.5, 0.75, 1.0]


def _run(mod, method, dtype, adjoint):
    forward, backward = [], []
    log = [forward]

    def f(t, x):
        log[0].append(t.item())
        return -x

    x0 = torch.tensor([1.0, 2.0], dtype=dtype, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=dtype)
    opts = {"step_size": 0.25, "perturb": True}
    if adjoint:
        xs = mod.odeint_adjoint(f, x0, t, method=method, options=opts, adjoint_params=())
    else:
        xs = mod.odeint(f, x0, t, method=method, options=opts)
    log[0] = backward
    xs.sum().backward()
    return forward, backward, xs.detach(), x0.grad


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "heun3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("adjoint", [False, True])
def test_explicit_matches_torchdiffeq(method, dtype, adjoint):
    ours = _run(hn, method, dtype, adjoint)
    theirs = _run(torchdiffeq, method, dtype, adjoint)
    # the same times; inner stages may differ in the last bit (float32 times: torchdiffeq computes
    # t0 + dt/3 in t's dtype, hybrid_node in float64 and rounds once), the perturbed ends are exact
    assert sorted(ours[0]) == pytest.approx(sorted(theirs[0]), rel=1e-6, abs=0)
    assert sorted(ours[1]) == pytest.approx(sorted(theirs[1]), rel=1e-6, abs=0)
    near = [x for x in theirs[0] + theirs[1] if min(abs(x - g) for g in GRID) < 1e-5]
    assert set(near) <= set(ours[0] + ours[1])
    assert not set(ours[0]) & set(GRID) and not set(ours[1]) & set(GRID)
    torch.testing.assert_close(ours[2], theirs[2])
    torch.testing.assert_close(ours[3], theirs[3])


IMPLICIT = [
    "implicit_euler",
    "implicit_midpoint",
    "trapezoid",
    "sdirk2",
    "trbdf2",
    "gl4",
    "gl6",
    "radauIIA3",
    "radauIIA5",
]


@pytest.mark.parametrize("method", IMPLICIT)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("adjoint", [False, True])
def test_implicit_never_at_a_grid_point(method, dtype, adjoint):
    forward, backward, xs, grad = _run(hn, method, dtype, adjoint)
    assert forward and not set(forward) & set(GRID)
    assert bool(backward) == adjoint and not set(backward) & set(GRID)  # direct backprop: no evaluations
    # the analytic solution x0 e^-t and dL/dx0 = 1 + e^-1 (L = sum of both outputs)
    tol = 0.15 if method == "implicit_euler" else 1e-2  # first order at h = 0.25: (1 + h)^-4 vs e^-1
    torch.testing.assert_close(xs[-1].double(), torch.tensor([1.0, 2.0]).double() * math.exp(-1), rtol=tol, atol=0)
    torch.testing.assert_close(grad.double(), torch.full((2,), 1 + math.exp(-1)).double(), rtol=tol, atol=0)


def test_a_jump_at_a_grid_point_is_resolved():
    # dx/dt = 1 for t < 0.5 and -1 from 0.5 on: a grid point at the jump and perturb integrate each
    # piece exactly with the implicit midpoint rule; without perturb the step after 0.5 sees the old side
    def f(t, x):
        return torch.where(t < 0.5, 1.0, -1.0).to(x.dtype) * torch.ones_like(x)

    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    x0 = torch.zeros(1, dtype=torch.float64)
    ys = hn.odeint(f, x0, t, method="implicit_euler", options={"step_size": 0.5, "perturb": True})
    assert float(ys[-1]) == pytest.approx(0.0, abs=1e-12)
