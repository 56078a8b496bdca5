"""The explicit and multistep methods on non-stiff problems against scipy: work at equal error and order.

Problems and measure of ``benchmarks/nonstiff.py`` (the work-precision table of docs/solvers.md): the error
at the final time in units of ``1 + |ref|`` (the tolerance's weight at rtol = atol) against the exact
solution, and the number of field evaluations (NFE, counted by a wrapper around the field). Both are
deterministic (no timing), so the bounds below hold run to run; each states the measured value it bounds.

Peers: scipy's RK45 (the same Dormand-Prince tableau as our dopri5, its own step control), DOP853 (the
coefficients of our dopri8) and LSODA (non-stiff: variable-order Adams-Moulton, as our adams). Each is
compared at equal error, its NFE interpolated in log-log between its runs at the tolerances below.
"""

import math

import numpy as np
import pytest
import torch

from benchmarks import nonstiff as ns

torch.set_num_threads(1)

# the asymptotic range: at 1e-3 and 1e-4 the eccentric Kepler orbit is off by more than its size for
# every method (scipy's too), where NFE says nothing about a method's order
TOLS = tuple(10.0**-k for k in range(5, 11))


@pytest.fixture(scope="module")
def problems():
    return {name: ns.PROBLEMS[name]() for name in ("linear", "kepler")}


_CACHE: dict = {}


def _runs(problems, name: str, method: str, tols=TOLS) -> list[ns.Run]:
    """The runs of one method on one problem over ``tols`` (cached: several tests compare the same runs)."""
    key = (name, method, tols)
    if key not in _CACHE:
        p = problems[name]
        _CACHE[key] = [ns.run(p, method, t, p.exact) for t in tols]
    return _CACHE[key]


def _work_ratios(ours: list[ns.Run], peer: list[ns.Run]) -> list[float]:
    """Our NFE over the peer's at our error, for each of our runs inside the peer's error range."""
    ratios = [r.nfe / ns.nfe_at_error(peer, r.err) for r in ours]
    return [x for x in ratios if math.isfinite(x)]


@pytest.mark.parametrize(
    "ours, peer, bound",
    [
        # same tableau, different control (ours: torchdiffeq's I controller without the hold after a
        # rejection): measured 0.99-1.00 (linear) and 1.00-1.17 (Kepler e = 0.9); 1.5x is the brief's margin
        ("dopri5", "RK45", 1.5),
        # tsit5 against the same peer: measured 0.68-0.86 (linear), 0.99-1.16 (Kepler)
        ("tsit5", "RK45", 1.5),
        # the DOP853 coefficients and error estimate: measured 1.000-1.002 (linear), 0.99-1.10 (Kepler)
        ("dopri8", "DOP853", 1.25),
        # variable-order Adams against LSODA's Adams mode: measured 0.81-0.96 (linear), 0.74-1.23 (Kepler)
        ("adams", "LSODA", 1.5),
        ("lsoda", "LSODA", 1.5),
    ],
)
@pytest.mark.parametrize("name", ["linear", "kepler"])
def test_work_at_equal_error_within_the_peers(problems, name, ours, peer, bound):
    """NFE at equal error: no method of ours is much more expensive than its scipy peer."""
    ratios = _work_ratios(_runs(problems, name, ours), _runs(problems, name, peer))
    assert len(ratios) >= 3, ratios  # the error ranges overlap (else the comparison proves nothing)
    assert max(ratios) < bound, ratios


@pytest.mark.parametrize(
    "method, order, low, high",
    [
        # NFE ~ err^(-1/p) along the work-precision line: measured 3.02 (bosh3), 5.09 (dopri5), 5.67
        # (tsit5), 8.38 (dopri8, as DOP853's 8.38) on the linear problem; a method of a lower order than
        # claimed (a wrong coefficient makes a 5(4) pair of order 4 or less) falls below ``low``
        ("bosh3", 3, 2.7, 3.5),
        ("dopri5", 5, 4.6, 5.8),
        ("tsit5", 5, 4.6, 6.2),
        ("dopri8", 8, 7.2, 9.5),
    ],
)
def test_observed_order_from_the_work_precision_line(problems, method, order, low, high):
    """The slope of log NFE against log error is -1/p for a method of order p."""
    runs = _runs(problems, "linear", method)
    fit = np.polyfit(np.log10([r.err for r in runs]), np.log10([r.nfe for r in runs]), 1)[0]
    assert low < -1.0 / fit < high, (order, -1.0 / fit)


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "tsit5", "dopri8", "adams", "lsoda"])
def test_tolerance_proportionality(problems, method):
    """The error falls with the tolerance at slope about 1 in log-log, and stays within a few tolerances.

    Measured slopes on the linear problem: 0.98 (dopri8, lsoda) to 1.12 (tsit5); error over tolerance
    at most 6.7 (dopri5 at 1e-10; adams 15 at 1e-10). A plateau (an estimate that stops resolving the
    error) or a runaway bends the slope far from 1.
    """
    runs = _runs(problems, "linear", method)
    errs = [r.err for r in runs]
    assert 0.85 < ns.slope(TOLS, errs) < 1.2
    assert max(e / t for e, t in zip(errs, TOLS)) < 50.0


@pytest.mark.parametrize("name", ["linear", "kepler"])
def test_auto_stays_with_tsit5_on_non_stiff_problems(problems, name):
    """``auto`` takes tsit5's steps where nothing is stiff: the same errors and NFE at every tolerance.

    Measured: identical on all five problems of the benchmark, with no switch; a stiffness test that
    fires on these (the Kepler orbit's pericentre pass has |J| ~ 2/r^3 = 2000 at r = 0.1) would switch to rodas5p
    and change both.
    """
    auto, tsit5 = _runs(problems, name, "auto"), _runs(problems, name, "tsit5")
    assert [(r.err, r.nfe) for r in auto] == [(r.err, r.nfe) for r in tsit5]
