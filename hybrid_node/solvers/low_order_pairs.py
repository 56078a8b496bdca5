"""Low-order embedded pairs: Bogacki-Shampine 3(2), Fehlberg 2(1) and adaptive Heun 2(1).

References: P. Bogacki, L. F. Shampine, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2
(1989); E. Fehlberg, "Low-order classical Runge-Kutta formulas with stepsize control", NASA TR R-315
(1969) (the RKF1(2) pair, propagating the second-order solution); Hairer, Nørsett, Wanner, Solving
ODEs I, Section II.4 (Heun-Euler pair).
"""

from __future__ import annotations

from .runge_kutta import ExplicitRungeKutta
from .tableau import ButcherTableau

_BS3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
BOSH3_TABLEAU = ButcherTableau(
    c=(0.0, 0.5, 0.75, 1.0),
    a=((), (0.5,), (0.0, 0.75), _BS3_B[:3]),
    b=_BS3_B,
    order=3,
    b_error=tuple(b - e for b, e in zip(_BS3_B, (7 / 24, 1 / 4, 1 / 3, 1 / 8))),
    error_order=2,
)

FEHLBERG2_TABLEAU = ButcherTableau(
    c=(0.0, 0.5, 1.0),
    a=((), (0.5,), (1 / 256, 255 / 256)),
    b=(1 / 512, 255 / 256, 1 / 512),
    order=2,
    b_error=(1 / 512 - 1 / 256, 0.0, 1 / 512),
    error_order=1,
)

ADAPTIVE_HEUN_TABLEAU = ButcherTableau(
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=(0.5, 0.5),
    order=2,
    b_error=(-0.5, 0.5),
    error_order=1,
)


class Bosh3(ExplicitRungeKutta):
    """Bogacki-Shampine 3(2), FSAL (``method="bosh3"``).

    Args:
        **fields: settings of :class:`ExplicitRungeKutta` (e.g. ``compile=True``); ``dataclasses.replace``
            passes them all.
    """

    def __init__(self, **fields):
        super().__init__(**{"tableau": BOSH3_TABLEAU, "name": "bosh3", **fields})


class Fehlberg2(ExplicitRungeKutta):
    """Runge-Kutta-Fehlberg 2(1) (``method="fehlberg2"``).

    Args:
        **fields: settings of :class:`ExplicitRungeKutta` (e.g. ``compile=True``); ``dataclasses.replace``
            passes them all.
    """

    def __init__(self, **fields):
        super().__init__(**{"tableau": FEHLBERG2_TABLEAU, "name": "fehlberg2", **fields})


class AdaptiveHeun(ExplicitRungeKutta):
    """Heun's method with an embedded Euler error estimate, 2(1) (``method="adaptive_heun"``).

    Args:
        **fields: settings of :class:`ExplicitRungeKutta` (e.g. ``compile=True``); ``dataclasses.replace``
            passes them all.
    """

    def __init__(self, **fields):
        super().__init__(**{"tableau": ADAPTIVE_HEUN_TABLEAU, "name": "adaptive_heun", **fields})
