"""Dormand-Prince 5(4) with Hairer's fourth-order continuous extension.

References: J. R. Dormand, P. J. Prince, "A family of embedded Runge-Kutta formulae", J. Comput. Appl.
Math. 6 (1980) (the stages and the fifth-order solution); L. F. Shampine, "Some practical Runge-Kutta
formulas", Math. Comp. 46 (1986) (the fourth-order solution the error estimate compares with); dense
output from Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.6.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .runge_kutta import ExplicitRungeKutta
from .tableau import ButcherTableau

_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
# The embedded fourth-order solution. The seven stages admit more than one: Dormand and Prince
# published _B_EMBEDDED_DP, Shampine _B_EMBEDDED, whose largest fifth-order defect is 2/3 of theirs
# (5.4e-4 vs 8.1e-4). Its estimate is about 2/3 as large, so the controller takes about 8% longer steps
# at a given tolerance; on the benchmark workloads that removes a closing step (26 instead of 32
# evaluations on mlp-fwd) and the error against a tight reference grows by 1.0-1.4x there (docs/performance.md,
# benchmarks). Dopri5(embedded="dormand-prince") keeps the other estimate.
_B_EMBEDDED = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)
_B_EMBEDDED_DP = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
# Hairer's dense-output weights d_i (DOPRI5's continuous extension).
_D = (
    -12715105075 / 11282082432,
    0.0,
    87487479700 / 32700410799,
    -10690763975 / 1880347072,
    701980252875 / 199316789632,
    -1453857185 / 822651844,
    69997945 / 29380423,
)


def _dense_coefficients():
    """Expand y(theta) = y0 + theta r2 + theta(1-theta) r3 + theta^2(1-theta) r4 + theta^2(1-theta)^2 r5
    (r2 = h b.k, r3 = h k1 - r2, r4 = 2 r2 - h k1 - h k7, r5 = h d.k) into per-stage polynomials."""
    theta = np.polynomial.Polynomial([0.0, 1.0])
    p2, p3 = theta, theta * (1 - theta)
    p4 = theta * p3
    p5 = p4 * (1 - theta)
    rows = []
    for i in range(7):
        e1, e7 = float(i == 0), float(i == 6)
        poly = _B[i] * p2 + (e1 - _B[i]) * p3 + (2 * _B[i] - e1 - e7) * p4 + _D[i] * p5
        coef = np.pad(poly.coef, (0, 5))[:5]
        rows.append(tuple(float(x) for x in coef[1:]))  # the constant term is zero
    return tuple(rows)


DOPRI5_TABLEAU = ButcherTableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _B[:6],
    ),
    b=_B,
    order=5,
    b_error=tuple(b - e for b, e in zip(_B, _B_EMBEDDED)),
    error_order=4,
    dense=_dense_coefficients(),
)


#: the same method with Dormand and Prince's own embedded solution (a larger, more cautious estimate)
DOPRI5_DP_TABLEAU = dataclasses.replace(DOPRI5_TABLEAU, b_error=tuple(b - e for b, e in zip(_B, _B_EMBEDDED_DP)))


class Dopri5(ExplicitRungeKutta):
    """Dormand-Prince 5(4), FSAL, with a fourth-order dense output (``method="dopri5"``).

    Args:
        embedded: the fourth-order solution of the error estimate: "shampine" (default) or
            "dormand-prince" (about 1.5x larger estimates, so about 8% shorter steps and a
            correspondingly smaller error at the same tolerance).
        **fields: settings of :class:`ExplicitRungeKutta` (e.g. ``compile=True``); ``dataclasses.replace``
            passes them all, the tableau included, which then takes precedence over ``embedded``.

    Raises:
        ValueError: for another ``embedded``.
    """

    def __init__(self, embedded: str = "shampine", **fields):
        tableaus = {"shampine": DOPRI5_TABLEAU, "dormand-prince": DOPRI5_DP_TABLEAU}
        if embedded not in tableaus:
            raise ValueError(f"embedded must be 'shampine' or 'dormand-prince', got {embedded!r}.")
        super().__init__(**{"tableau": tableaus[embedded], "name": "dopri5", **fields})
