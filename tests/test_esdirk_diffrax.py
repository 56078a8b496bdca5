"""ESDIRK tableaux and single steps against diffrax (Kvaerno3, Kvaerno5, and KenCarp4's implicit tableau).

diffrax is an independent implementation of the same methods (its coefficients come from Kværnø 2004 and
Kennedy & Carpenter 2003, Kvaerno3's as formulas in gamma). One step on a linear stiff system, where
simplified Newton with the exact Jacobian converges in one iteration, must give the same y1 and the same
(signed, unfiltered) error estimate.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from hybrid_node.solvers.esdirk import (
    KENCARP4_TABLEAU,
    KVAERNO3_TABLEAU,
    KVAERNO5_TABLEAU,
    KenCarp4,
    Kvaerno3,
    Kvaerno5,
)

jax = pytest.importorskip("jax")
diffrax = pytest.importorskip("diffrax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy


class _KenCarp4Implicit(diffrax.Kvaerno5):
    """diffrax's ESDIRK machinery with KenCarp4's implicit tableau (diffrax's KenCarp4 itself is IMEX)."""

    tableau: ClassVar = diffrax.KenCarp4.tableau.tableaus[1]


CASES = {
    "kvaerno3": (KVAERNO3_TABLEAU, Kvaerno3, diffrax.Kvaerno3),
    "kvaerno5": (KVAERNO5_TABLEAU, Kvaerno5, diffrax.Kvaerno5),
    "kencarp4": (KENCARP4_TABLEAU, KenCarp4, _KenCarp4Implicit),
}


def _diffrax_tableau(cls):
    t = cls.tableau
    s = len(t.b_sol)
    a = np.zeros((s, s))
    for i, row in enumerate(t.a_lower):
        a[i + 1, : i + 1] = row
    a += np.diag(t.a_diagonal)
    return a, np.concatenate([[0.0], t.c]), np.asarray(t.b_sol), np.asarray(t.b_error)


def _our_tableau(tab):
    s = tab.stages
    a = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        a[i, : i + 1] = row
    return a, np.array(tab.c), np.array(tab.b), np.array(tab.b_error)


@pytest.mark.parametrize("name", list(CASES))
def test_tableau_matches_diffrax(name):
    ours, theirs = _our_tableau(CASES[name][0]), _diffrax_tableau(CASES[name][2])
    for what, x, y in zip(("a", "c", "b", "b_error"), ours, theirs):
        # rounding: Kvaerno3's coefficients are printed to 15 digits here, formulas in gamma in diffrax
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-14, err_msg=f"{name}: {what}")


def _stiff_linear(seed: int = 0):
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    a = q @ np.diag([-1.0, -30.0, -1e3, -1e5]) @ q.T + 0.5 * np.triu(rng.standard_normal((4, 4)), 1)
    return a, rng.standard_normal(4)


@pytest.mark.parametrize("name", list(CASES))
def test_one_step_matches_diffrax(name):
    _, ours_cls, theirs_cls = CASES[name]
    a, y0 = _stiff_linear()
    dt = 0.05  # h * lambda from -0.05 to -5000
    at = torch.tensor(a)

    def f(t, y):
        return y @ at.T

    solver = ours_cls(smooth_error=False, newton_rtol=1e-12, newton_atol=1e-14)
    y = torch.tensor(y0)
    out = solver.step(f, 0.0, y, solver.init(f, 0.0, y), dt)

    term = diffrax.ODETerm(lambda t, y, args: jnp.asarray(a) @ y)
    peer = theirs_cls(root_finder=diffrax.VeryChord(rtol=1e-12, atol=1e-14))
    t0, t1 = jnp.asarray(0.0), jnp.asarray(dt)
    state = peer.init(term, t0, t1, jnp.asarray(y0), None)
    y1, err, _, _, result = peer.step(term, t0, t1, jnp.asarray(y0), None, state, False)
    assert result == diffrax.RESULTS.successful
    y1, err = np.asarray(y1), np.asarray(err)
    # both solve the stage systems to ~1e-14 of the state; the conditioning of I - h gamma A and up to 7
    # stages leave ~1e-13 relative in y1 (measured 4e-14 to 1e-13), and the error estimate, a sum that
    # cancels to ~1e-1 of the stage terms, ~1e-12 (measured 1e-13 to 8e-13)
    assert np.abs(out.y1.numpy() - y1).max() <= 1e-12 * np.abs(y1).max()
    assert np.abs(out.error.numpy() - err).max() <= 1e-11 * np.abs(err).max()
