"""Convergence orders, fitted as log-log slopes against exact solutions, for every method in METHODS.

- Every Runge-Kutta method (the adaptive pairs too, run on fixed grids with ConstantStepSize) and every
  Adams variant: global error at the final time against h on a linear system y' = A y (exact solution
  expm(A t) y0), forwards, and on the non-autonomous y' = sin(2t) - y (exact e^-t + (sin 2t - 2 cos 2t)/5),
  backwards in time. The slope must match the method's order.
- Every adaptive method (scipy_solver included): the error must scale with the tolerance (slope near 1
  in log-log), and the work must grow as tol^(-1/(q+1)) for an error estimate of order q, which is
  what an I controller on a local error estimate of order q+1 gives (Hairer, Nørsett, Wanner, Solving
  ODEs I, Section II.4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hybrid_node as hn
from hybrid_node.solvers import METHODS
from hybrid_node.solvers.multistep import Nordsieck

A = torch.tensor([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -1.0]], dtype=torch.float64)
Y0 = torch.tensor([1.0, 0.5, -0.5], dtype=torch.float64)
T = 2.0


def linear(t, y):
    return y @ A.T


def forced(t, y):
    return torch.sin(2 * t) - y


def exact_linear(t: float) -> torch.Tensor:
    return torch.linalg.matrix_exp(A * t) @ Y0


def exact_forced(t: float) -> float:
    """The solution of y' = sin(2t) - y through y(0) = 0.6: a decaying mode plus the forced oscillation."""
    return np.exp(-t) + (np.sin(2 * t) - 2 * np.cos(2 * t)) / 5


# name -> (expected order, step counts over [0, T], solver kwargs). Step counts keep the error in the
# asymptotic range: well above float64 rounding and small enough for the leading term to dominate.
FIXED_GRID = {
    "euler": (1, (32, 64, 128, 256), {}),
    "midpoint": (2, (16, 32, 64, 128), {}),
    "heun2": (2, (16, 32, 64, 128), {}),
    "heun3": (3, (8, 16, 32, 64), {}),
    "rk4": (4, (8, 16, 32, 64), {}),
    "rk4_classic": (4, (8, 16, 32, 64), {}),
    "bosh3": (3, (8, 16, 32, 64), {}),
    "fehlberg2": (2, (16, 32, 64, 128), {}),
    "adaptive_heun": (2, (16, 32, 64, 128), {}),
    "dopri5": (5, (12, 16, 24, 32), {}),
    "tsit5": (5, (16, 24, 32, 48), {}),
    "dopri8": (8, (4, 6, 8, 12), {}),
    "explicit_adams": (4, (32, 64, 128, 256), {}),
    "implicit_adams": (4, (32, 64, 128, 256), {}),
    "fixed_adams": (4, (32, 64, 128, 256), {}),
}
FORCED_STEPS = {
    "dopri5": (8, 16, 32, 64),
    "tsit5": (8, 16, 32, 64),
    "dopri8": (4, 6, 8, 12),
    "heun3": (64, 128, 256, 512),
    "rk4_classic": (64, 128, 256, 512),
    "euler": (64, 128, 256, 512),
    "explicit_adams": (128, 256, 512, 1024),
    "implicit_adams": (128, 256, 512, 1024),
    "fixed_adams": (128, 256, 512, 1024),
}
# Lower Adams orders through the max_order option (the first steps use rk4, so order = max_order).
ADAMS_ORDERS = [(m, k) for m in ("explicit_adams", "implicit_adams") for k in (1, 2, 3)]


def _slope(x, y) -> float:
    return float(np.polyfit(np.log(np.asarray(x)), np.log(np.asarray(y)), 1)[0])


def _fixed_errors(method, ns, kwargs, problem):
    errors = []
    for n in ns:
        solver = METHODS[method][0](**kwargs)
        ctrl = hn.ConstantStepSize(step_size=T / n)
        if problem == "linear":
            t = torch.tensor([0.0, T], dtype=torch.float64)
            sol = hn.solve(linear, Y0, t, solver=solver, controller=ctrl)
            ref = exact_linear(T)
        else:  # backwards in time, from T to 0
            t = torch.tensor([T, 0.0], dtype=torch.float64)
            y0 = torch.tensor([exact_forced(T)], dtype=torch.float64)
            sol = hn.solve(forced, y0, t, solver=solver, controller=ctrl)
            ref = torch.tensor([exact_forced(0.0)], dtype=torch.float64)
        assert sol.stats.n_accepted == n
        errors.append(float((sol.ys[-1] - ref).abs().max()))
    return errors


# Partitioned (q, p) methods need a tuple state: their orders are fitted in tests/test_symplectic.py.
PARTITIONED = {"symplectic_euler", "leapfrog", "yoshida4", "yoshida6"}


def test_every_method_is_covered():
    assert set(FIXED_GRID) | set(ADAPTIVE) | PARTITIONED | {"scipy_solver"} == set(METHODS)


@pytest.mark.parametrize("problem", ["linear", "forced_backwards"])
@pytest.mark.parametrize("method", sorted(FIXED_GRID))
def test_fixed_grid_order(method, problem):
    order, ns, kwargs = FIXED_GRID[method]
    if problem != "linear":  # the scalar problem is easier: keep the error above rounding, and start
        ns = FORCED_STEPS.get(method, (16, 32, 64, 128))  # where the leading error term dominates
    errors = _fixed_errors(method, ns, kwargs, problem)
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:])), errors
    slope = _slope([T / n for n in ns], errors)
    # The fitted slope carries the next error term; 0.3 is tight enough to tell any order from the next.
    assert abs(slope - order) < 0.3, f"{method}: slope {slope:.3f}, expected {order}; errors {errors}"


# The low-order correctors do not settle within max_iters at the coarsest steps (h = T / 32): the
# warning is right there, and the slope over the four step sizes still shows the order.
@pytest.mark.filterwarnings("ignore:Functional iteration did not converge")
@pytest.mark.parametrize("method,max_order", ADAMS_ORDERS)
def test_adams_max_order_option(method, max_order):
    errors = _fixed_errors(method, (32, 64, 128, 256), {"max_order": max_order}, "linear")
    slope = _slope([T / n for n in (32, 64, 128, 256)], errors)
    assert abs(slope - max_order) < 0.3, f"{method} max_order={max_order}: slope {slope:.3f}; {errors}"


def test_fixed_grid_order_through_odeint_options():
    """The same order through the torchdiffeq-style call: odeint(..., options={'step_size': h})."""
    t = torch.tensor([0.0, T], dtype=torch.float64)
    hs = [T / 8, T / 16, T / 32]
    finals = [hn.odeint(linear, Y0, t, method="rk4", options={"step_size": h})[-1] for h in hs]
    errors = [float((y - exact_linear(T)).abs().max()) for y in finals]
    assert abs(_slope(hs, errors) - 4) < 0.3


# name -> tolerances (kept where the solves are cheap and the error is above float64 rounding), and
# the largest allowed error / tolerance ratio. fehlberg2 controls the error of its first-order
# embedded formula, whose error constant is tiny (1/512), so its propagated second-order solution
# overshoots the tolerance by a roughly constant factor of a few hundred; torchdiffeq's fehlberg2
# (the same pair) behaves identically.
ADAPTIVE = {
    "dopri5": ((1e-4, 1e-6, 1e-8, 1e-10), 10.0),
    "tsit5": ((1e-4, 1e-6, 1e-8, 1e-10), 10.0),
    "dopri8": ((1e-4, 1e-5, 1e-6, 1e-7, 1e-8), 10.0),
    "bosh3": ((1e-3, 1e-4, 1e-5, 1e-6, 1e-7), 10.0),
    "fehlberg2": ((1e-5, 1e-6, 1e-7, 1e-8), 1000.0),
    "adaptive_heun": ((1e-3, 1e-4, 1e-5, 1e-6), 10.0),
    "adams": ((1e-4, 1e-6, 1e-8, 1e-10), 10.0),
}


@pytest.mark.parametrize("method", sorted(ADAPTIVE))
def test_adaptive_error_scales_with_tolerance(method):
    tols, max_ratio = ADAPTIVE[method]
    t = torch.tensor([0.0, T], dtype=torch.float64)
    errors, nfes = [], []
    for tol in tols:
        sol = hn.solve(linear, Y0, t, solver=METHODS[method][0](), controller=hn.PIDController(rtol=tol, atol=tol))
        errors.append(float((sol.ys[-1] - exact_linear(T)).abs().max()))
        nfes.append(sol.stats.nfe)
    slope = _slope(tols, errors)
    assert 0.75 < slope < 1.4, f"{method}: error ~ tol^{slope:.2f}; errors {errors}"
    assert all(e < max_ratio * tol for e, tol in zip(errors, tols)), (errors, tols)
    solver = METHODS[method][0]()
    work = -_slope(tols, nfes)
    if isinstance(solver, Nordsieck):
        # variable order (adams: 1-12): the order rises as the tolerance tightens, so the work grows
        # no faster than at a fixed order of 4 and no slower than at the top order
        lo, hi = 1 / (solver.order + 1) - 0.03, 1 / 5
        assert lo < work < hi, f"{method}: nfe ~ tol^-{work:.3f}, expected between tol^-{lo:.3f} and -{hi:.3f}; {nfes}"
        return
    q = solver.error_order
    assert abs(work - 1 / (q + 1)) < 0.08, f"{method}: nfe ~ tol^-{work:.3f}, expected tol^-{1 / (q + 1):.3f}; {nfes}"


@pytest.mark.parametrize("inner", ["RK45", "DOP853", "LSODA"])
def test_scipy_solver_error_scales_with_tolerance(inner):
    tols = (1e-4, 1e-6, 1e-8, 1e-10)
    t = torch.tensor([0.0, T], dtype=torch.float64)
    errors = [
        float(
            (
                hn.odeint(linear, Y0, t, method="scipy_solver", rtol=tol, atol=tol, options={"solver": inner})[-1]
                - exact_linear(T)
            )
            .abs()
            .max()
        )
        for tol in tols
    ]
    slope = _slope(tols, errors)
    assert 0.7 < slope < 1.4, f"scipy {inner}: error ~ tol^{slope:.2f}; {errors}"
    assert errors[-1] < 1e-8


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_adams_high_order_is_limited_by_the_rk4_starter(method):
    """max_order above 4 is accepted (as torchdiffeq allows up to 12); the rk4 start-up steps have
    O(h^5) local errors, so order 5 is observed for max_order 5 and 8 alike."""
    ns = (64, 128, 256, 512)
    for k in (5, 8):
        errors = _fixed_errors(method, ns, {"max_order": k}, "linear")
        slope = _slope([T / n for n in ns[1:]], errors[1:])
        assert abs(slope - 5) < 0.3 if method == "implicit_adams" or k == 5 else slope > 4.7, (k, slope, errors)
