"""Butcher tableaus: every shipped tableau satisfies the order conditions it claims, and the
tableau's own checks reject broken data.

The order conditions are generated from rooted trees (Butcher's theory, see Hairer, Nørsett, Wanner,
Solving ODEs I, 2nd ed., Section II.2): a method has order p when b . g(t) = 1 / gamma(t) for every
rooted tree t with at most p nodes, where g(leaf) = 1 and g([t1, ..., tm]) = prod_k A g(t_k).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from fractions import Fraction
from functools import cache

import numpy as np
import pytest
import torch

import hybrid_node.solvers as solvers_pkg
from hybrid_node.solvers import METHODS, ButcherTableau, ExplicitRungeKutta

# ----------------------------------------------------------------------------------------------------
# Rooted trees and the order conditions
# ----------------------------------------------------------------------------------------------------
# A tree is the sorted tuple of its subtrees; the leaf is ().


def _canonical(tree):
    return tuple(sorted(_canonical(c) for c in tree))


def _grow(tree):
    """Every tree obtained by adding one leaf to one node of ``tree``."""
    yield tree + ((),)  # a new leaf at the root
    for i, child in enumerate(tree):
        for grown in _grow(child):
            yield tree[:i] + (grown,) + tree[i + 1 :]


@cache
def trees_of_order(n: int):
    if n == 1:
        return ((),)
    found = {_canonical(g) for t in trees_of_order(n - 1) for g in _grow(t)}
    return tuple(sorted(found))


def _gamma(tree) -> int:
    out = _size(tree)
    for c in tree:
        out *= _gamma(c)
    return out


def _size(tree) -> int:
    return 1 + sum(_size(c) for c in tree)


def _g(tree, a: np.ndarray) -> np.ndarray:
    out = np.ones(a.shape[0])
    for c in tree:
        out = out * (a @ _g(c, a))
    return out


def _matrix(tab: ButcherTableau) -> np.ndarray:
    s = tab.stages
    a = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        a[i, :i] = row
    return a


def order_defects(weights, tab: ButcherTableau, order: int, theta: float = 1.0):
    """Largest |weights . g(t) - theta^|t| / gamma(t)| over trees of each order 1..order."""
    a = _matrix(tab)
    w = np.asarray(weights, dtype=float)
    return {n: max(abs(w @ _g(t, a) - theta**n / _gamma(t)) for t in trees_of_order(n)) for n in range(1, order + 1)}


def test_tree_counts_match_the_known_sequence():
    # number of rooted trees with n nodes: OEIS A000081
    assert [len(trees_of_order(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]
    assert _gamma(((), ())) == 3 and _gamma((((),),)) == 6


# ----------------------------------------------------------------------------------------------------
# Every tableau shipped by the package
# ----------------------------------------------------------------------------------------------------


def _all_tableaus():
    """Every ButcherTableau bound at module level anywhere under hybrid_node.solvers (found, not listed,
    so a new tableau is tested without touching this file), plus those of the METHODS factories."""
    found = {}
    for info in pkgutil.iter_modules(solvers_pkg.__path__):
        try:
            module = importlib.import_module(f"{solvers_pkg.__name__}.{info.name}")
        except ImportError:
            continue
        for name, value in vars(module).items():
            if isinstance(value, ButcherTableau):
                found.setdefault(id(value), (f"{info.name}.{name}", value))
    for name, (factory, _) in METHODS.items():
        if name == "scipy_solver":
            continue
        solver = factory()
        if isinstance(solver, ExplicitRungeKutta):
            found.setdefault(id(solver.tableau), (f"METHODS[{name}]", solver.tableau))
    return sorted(found.values(), key=lambda x: x[0])


TABLEAUS = _all_tableaus()
IDS = [name for name, _ in TABLEAUS]


def test_every_rk_method_is_covered():
    names = {n for n, _ in TABLEAUS}
    assert len(TABLEAUS) >= 12, names
    for method in (
        "euler",
        "midpoint",
        "heun2",
        "heun3",
        "rk4",
        "rk4_classic",
        "bosh3",
        "fehlberg2",
        "adaptive_heun",
        "dopri5",
        "tsit5",
        "dopri8",
    ):
        assert any(METHODS[method][0]().tableau is tab for _, tab in TABLEAUS), method


@pytest.mark.parametrize("name,tab", TABLEAUS, ids=IDS)
def test_tableau_satisfies_its_order_conditions(name, tab):
    defects = order_defects(tab.b, tab, tab.order)
    # Coefficients are stored as doubles (some, like Tsit5's, only to 16 digits), so exact rational
    # conditions hold to rounding: 1e-12 is ~1e4 ulp, far below the O(1e-3) defect of a wrong coefficient.
    assert max(defects.values()) < 1e-12, defects
    # ... and not one order more (the claimed order is the real one, so convergence tests mean something)
    higher = order_defects(tab.b, tab, tab.order + 1)[tab.order + 1]
    assert higher > 1e-6, f"{name} also satisfies the order-{tab.order + 1} conditions; its order is understated"


@pytest.mark.parametrize("name,tab", [x for x in TABLEAUS if x[1].adaptive], ids=[n for n, t in TABLEAUS if t.adaptive])
def test_embedded_solution_has_its_error_order(name, tab):
    embedded = np.asarray(tab.b) - np.asarray(tab.b_error)
    defects = order_defects(embedded, tab, tab.error_order)
    assert max(defects.values()) < 1e-12, defects
    assert abs(sum(tab.b_error)) < 1e-12
    assert tab.error_order < tab.order
    # the error weights are not zero at the first violated order: the estimate really estimates something
    assert order_defects(embedded, tab, tab.error_order + 1)[tab.error_order + 1] > 1e-8


@pytest.mark.parametrize(
    "name,tab", [x for x in TABLEAUS if x[1].dense is not None], ids=[n for n, t in TABLEAUS if t.dense is not None]
)
@pytest.mark.parametrize("theta", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_dense_output_is_fourth_order_at_every_theta(name, tab, theta):
    # b_i(theta) = sum_p dense[i][p] theta^(p+1); a continuous extension of order q satisfies
    # b(theta) . g(t) = theta^|t| / gamma(t) for |t| <= q (Hairer et al., Section II.6).
    w = [sum(c * theta ** (p + 1) for p, c in enumerate(row)) for row in tab.dense]
    defects = order_defects(w, tab, 4, theta=theta)
    assert max(defects.values()) < 1e-12, defects


@pytest.mark.parametrize("name,tab", TABLEAUS, ids=IDS)
def test_structure(name, tab):
    s = tab.stages
    assert tab.c[0] == 0.0 and len(tab.b) == s and len(tab.a) == s
    for i, row in enumerate(tab.a):
        assert len(row) == i
        if i:
            assert sum(row) == pytest.approx(tab.c[i], abs=1e-13)
    assert sum(tab.b) == pytest.approx(1.0, abs=1e-13)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tab.order = 99  # settings are immutable


@pytest.mark.parametrize(
    "method,fsal",
    [
        ("dopri5", True),
        ("tsit5", True),
        ("bosh3", True),
        ("dopri8", True),
        ("rk4", False),
        ("euler", False),
        ("fehlberg2", False),
        ("adaptive_heun", False),
    ],
)
def test_fsal_is_derived(method, fsal):
    assert METHODS[method][0]().tableau.fsal is fsal


# ----------------------------------------------------------------------------------------------------
# The generic RK step consumes the tableau exactly (a recording field, no numerics of its own)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,tab", TABLEAUS, ids=IDS)
def test_step_evaluates_the_stages_of_the_tableau(name, tab):
    calls = []

    def f(t, y):
        calls.append((t, y.clone()))
        return torch.sin(3 * y) + t  # any nonlinear field; the stages must follow the tableau exactly

    solver = ExplicitRungeKutta(tab, name)
    t0, dt = 0.3, 0.1
    y0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    f0 = solver.init(f, t0, y0)
    calls.clear()
    step = solver.step(f, t0, y0, f0, dt)
    assert len(calls) == tab.stages - 1  # stage 0 is f0, passed in
    ks = [f0]
    for i, (t, y) in enumerate(calls, start=1):
        assert t == pytest.approx(t0 + tab.c[i] * dt, abs=1e-15)
        expected = y0 + dt * sum((a * k for a, k in zip(tab.a[i], ks)), torch.zeros_like(y0))
        torch.testing.assert_close(y, expected, rtol=1e-14, atol=1e-14)
        ks.append(torch.sin(3 * y) + t)
    y1 = y0 + dt * sum((b * k for b, k in zip(tab.b, ks)), torch.zeros_like(y0))
    torch.testing.assert_close(step.y1, y1, rtol=1e-14, atol=1e-14)
    if tab.adaptive:
        err = dt * sum((e * k for e, k in zip(tab.b_error, ks)), torch.zeros_like(y0))
        torch.testing.assert_close(step.error, err, rtol=1e-12, atol=1e-15)
    else:
        assert step.error is None
    # FSAL: the next step's f0 is the last stage, with no new evaluation
    calls.clear()
    f1 = solver.next_state(f, t0 + dt, step)
    assert len(calls) == (0 if tab.fsal else 1)
    torch.testing.assert_close(f1, torch.sin(3 * step.y1) + (t0 + dt), rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------------------------------
# The checks reject broken tableaus
# ----------------------------------------------------------------------------------------------------

GOOD = dict(
    c=(0.0, 0.5, 1.0),
    a=((), (0.5,), (-1.0, 2.0)),
    b=(1 / 6, 2 / 3, 1 / 6),
    order=3,
    b_error=(1 / 6 - 0.0, 2 / 3 - 1.0, 1 / 6 - 0.0),  # embedded midpoint rule (0, 1, 0)
    error_order=2,
)


def test_good_tableau_is_accepted_and_is_kuttas_third_order():
    tab = ButcherTableau(**GOOD)
    assert max(order_defects(tab.b, tab, 3).values()) < 1e-15
    assert tab.adaptive and not tab.fsal


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(a=((), (0.4,), (-1.0, 2.0))), "row 1 of a"),  # row sum != c
        (dict(a=((), (0.5,), (-1.0, 2.1))), "row 2 of a"),
        (dict(b=(1 / 6, 2 / 3, 1 / 5)), "b sums"),
        (dict(b_error=(0.1, -0.3, 0.1)), "b_error sums"),
        (dict(c=(0.1, 0.5, 1.0), a=((), (0.4,), (-1.0, 2.1))), "c\\[0\\]"),
        (dict(a=((), (0.5,), (1.0,))), "lower triangular"),
        (dict(a=((0.0,), (0.5,), (-1.0, 2.0))), "lower triangular"),
        (dict(b=(0.5, 0.5)), "b has 2 entries"),
        (dict(b_error=(0.0, 0.0)), "b_error has 2"),
        (dict(error_order=None), "error_order"),
        (dict(dense=((1.0,), (0.0,), (0.0,))), "dense row 0"),
        (dict(dense=((1 / 6,), (2 / 3,))), "dense has 2 rows"),
    ],
)
def test_broken_tableau_is_rejected(change, match):
    with pytest.raises(ValueError, match=match):
        ButcherTableau(**{**GOOD, **change})


MULTI_STAGE = [x for x in TABLEAUS if x[1].stages > 1]


@pytest.mark.parametrize("name,tab", MULTI_STAGE, ids=[n for n, _ in MULTI_STAGE])
def test_perturbing_any_shipped_tableau_is_caught(name, tab):
    """One wrong coefficient in a real tableau is caught by its own checks (row sums / weights)."""
    i = tab.stages - 1
    row = list(tab.a[i])
    row[0] += 1e-6
    with pytest.raises(ValueError):
        dataclasses.replace(tab, a=tab.a[:i] + (tuple(row),))
    b = list(tab.b)
    b[-1] += 1e-6
    with pytest.raises(ValueError):
        dataclasses.replace(tab, b=tuple(b), dense=None)
    if tab.adaptive:
        e = list(tab.b_error)
        e[0] += 1e-6
        with pytest.raises(ValueError):
            dataclasses.replace(tab, b_error=tuple(e))


def test_order_conditions_catch_an_error_the_sum_checks_miss():
    """Swapping two weights keeps every sum check happy, but breaks the order conditions the tests check."""
    tab = ButcherTableau(**GOOD)
    b = (tab.b[1], tab.b[0], tab.b[2])
    swapped = dataclasses.replace(tab, b=b)  # sums still fine: accepted by the class ...
    assert order_defects(swapped.b, swapped, 3)[2] > 1e-3  # ... but not a third-order method


def test_rational_kutta_conditions_exactly():
    """Sanity check of the condition generator with exact arithmetic on Kutta's third-order method."""
    a = [[Fraction(0)] * 3, [Fraction(1, 2), 0, 0], [Fraction(-1), Fraction(2), 0]]
    b = [Fraction(1, 6), Fraction(2, 3), Fraction(1, 6)]
    c = [sum(r) for r in a]
    assert sum(b) == 1
    assert sum(bi * ci for bi, ci in zip(b, c)) == Fraction(1, 2)
    assert sum(bi * ci * ci for bi, ci in zip(b, c)) == Fraction(1, 3)
    assert sum(b[i] * a[i][j] * c[j] for i in range(3) for j in range(3)) == Fraction(1, 6)


def test_dopri8_reads_scipys_dop853_table_without_importing_scipys_integrators():
    """The DOP853 coefficients come from scipy's data module, executed from its file: the same
    arrays as the module imported by name, and a first solve's import no longer pays for
    scipy.integrate's package initialisation (0.4-0.6 s)."""
    import subprocess
    import sys

    from scipy.integrate._ivp import dop853_coefficients as by_name

    from hybrid_node.solvers import dopri8

    table = dopri8._load_coefficients()
    assert table is not by_name and table.N_STAGES == by_name.N_STAGES
    for name in ("A", "B", "C", "E3", "E5", "D"):
        np.testing.assert_array_equal(getattr(table, name), getattr(by_name, name))
    code = "import sys, hybrid_node as hn; hn.odeint; print('scipy.integrate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
