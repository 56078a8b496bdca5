"""LSODA's switch from Adams to BDF: only at Adams orders up to 5, as Petzold's LSODA (DSTODA tests for the
switch only while NQ <= 5), with the order lowered under the stability bound so that a stiff problem
still reaches those orders."""

import math

import pytest
import torch
from conftest import scipy_lsoda_steps
from scipy.integrate import solve_ivp
from test_multistep import _arenstorf, _dop853
from test_stiff import HIRES_NP, HIRES_Y0, hires

import hybrid_node as hn
from hybrid_node.solvers.multistep import LSODA as LSODASolver

torch.set_num_threads(1)
F64 = torch.float64


def _oscillator(t, y):
    return torch.stack([y[..., 1], -y[..., 0]], -1)


_ARENSTORF_Y0 = [0.994, 0.0, 0.0, -2.00158510637908252240537862224]
_ARENSTORF_PERIOD = 17.0652165601579625588917206249


@pytest.mark.parametrize(
    "problem",
    [
        ("oscillator", _oscillator, [1.0, 0.0], 20.0, 1e-10),
        ("arenstorf", _arenstorf, _ARENSTORF_Y0, _ARENSTORF_PERIOD, 1e-11),
    ],
    ids=lambda p: p[0],
)
def test_lsoda_stays_with_adams_on_non_stiff_problems_at_tight_tolerances(problem):
    """At these tolerances Adams runs at orders 8-9, where the stability bound (0.15-0.1 / rho) limits the
    step of a non-stiff problem too; the switch test there took BDF (6 switches on the oscillator, 2 on
    the Arenstorf orbit, no Jacobian needed) and the oscillator's error grew to 130x the tolerance."""
    _, f, y0, t1, tol = problem
    y0 = torch.tensor(y0, dtype=F64)
    t = torch.linspace(0.0, t1, 21, dtype=F64)
    sol = hn.solve(f, y0, t, solver=LSODASolver(), controller=hn.PIDController(rtol=tol, atol=tol))
    assert sol.stats.n_switches == 0 and sol.stats.n_jacobian == 0
    # scipy's LSODA at the same tolerance: errors of the same size (a global error of tens of
    # local tolerances on the oscillator, ~1e4 on the sensitive orbit), so 1e6 tol only catches garbage
    ref = _dop853(f, y0, t)
    assert float((sol.ys - ref).abs().max()) < 1e6 * tol


def test_lsoda_reaches_bdf_on_hires_within_scipy_lsoda_steps():
    """HIRES turns stiff at an Adams order of 6: held at its stability bound, the order has to come down
    to 5 or below for the switch test, or the solve crawls at the bound (7301 Adams steps before)."""
    fun, jac = HIRES_NP
    rtol, atol, t1 = 1e-6, 1e-8, 321.8122
    budget = scipy_lsoda_steps(fun, jac, HIRES_Y0, t1, rtol, atol)
    y0 = torch.tensor(HIRES_Y0, dtype=F64)
    t = torch.tensor([0.0, t1], dtype=F64)
    sol = hn.solve(hires, y0, t, solver=LSODASolver(), controller=hn.PIDController(rtol=rtol, atol=atol))
    assert sol.stats.n_switches >= 1
    assert sol.stats.n_accepted + sol.stats.n_rejected <= budget
    ref = solve_ivp(fun, (0.0, t1), HIRES_Y0, method="Radau", rtol=1e-11, atol=1e-13, jac=jac).y[:, -1]
    # the global error of a 1e-6 solve: scipy's LSODA's own here is ~2e-4 relative (docs/stiff.md)
    rel = max(abs(a - b) / (abs(b) + 1e-7) for a, b in zip(sol.ys[-1].tolist(), ref))
    assert rel < 1e-3 and math.isfinite(rel)
