"""Classical fixed-step explicit Runge-Kutta methods.

References: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.1 (Euler, midpoint, Heun's
second- and third-order methods, the classic fourth-order method and Kutta's 3/8 rule).
"""

from __future__ import annotations

from .runge_kutta import ExplicitRungeKutta
from .tableau import ButcherTableau

EULER_TABLEAU = ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1)
MIDPOINT_TABLEAU = ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2)
HEUN2_TABLEAU = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2)
HEUN3_TABLEAU = ButcherTableau(c=(0.0, 1 / 3, 2 / 3), a=((), (1 / 3,), (0.0, 2 / 3)), b=(1 / 4, 0.0, 3 / 4), order=3)
RK4_CLASSIC_TABLEAU = ButcherTableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    order=4,
)
RK4_38_TABLEAU = ButcherTableau(
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    order=4,
)


class Euler(ExplicitRungeKutta):
    """Forward Euler, order 1 (``method="euler"``).

    Args:
        **fields: settings of :class:`ExplicitRungeKutta` (e.g. ``compile=True``); ``dataclasses.replace``
            passes them all.
    """

    def __init__(self, **fields):
        super().__init__(**{"tableau": EULER_TABLEAU, "name": "euler", **fields})


class Midpoint(ExplicitRungeKutta):
    """Explicit midpoint rule, order 2 (``method="midpoint"``).

    Args:
        **fields: settings of :class:`ExplicitRungeKutta` (e.g. ``compile=True``); ``dataclasses.replace``
            passes them all.
    """

    def __init__(self, **fields):
        super().__init__(**{"tableau": MIDPOINT_TABLEAU, "name": "midpoint", **fields})


class Heun2(ExplicitRungeKutta):
    """Heun's method (explicit trapezoid), order 2 (``method="heun2"``).

    Args:
        **fields: settings of :class:`ExplicitRungeKutta` (e.g. ``compile=True``); ``dataclasses.replace``
            passes them all.
    """

    def __init__(self, **fields):
        super().__init__(**{"tableau": HEUN2_TABLEAU, "name": "heun2", **fields})


class Heun3(ExplicitRungeKutta):
    """Heun's third-order method (``method="heun3"``).

    Args:
        **fields: settings of :class:`ExplicitRungeKutta` (e.g. ``compile=True``); ``dataclasses.replace``
            passes them all.
    """

    def __init__(self, **fields):
        super().__init__(**{"tableau": HEUN3_TABLEAU, "name": "heun3", **fields})


class RK4(ExplicitRungeKutta):
    """Kutta's 3/8 rule, order 4 (``method="rk4"``, the same formula as torchdiffeq's rk4).

    Args:
        **fields: settings of :class:`ExplicitRungeKutta` (e.g. ``compile=True``); ``dataclasses.replace``
            passes them all.
    """

    def __init__(self, **fields):
        super().__init__(**{"tableau": RK4_38_TABLEAU, "name": "rk4", **fields})


class RK4Classic(ExplicitRungeKutta):
    """The classic fourth-order Runge-Kutta method (``method="rk4_classic"``).

    Args:
        **fields: settings of :class:`ExplicitRungeKutta` (e.g. ``compile=True``); ``dataclasses.replace``
            passes them all.
    """

    def __init__(self, **fields):
        super().__init__(**{"tableau": RK4_CLASSIC_TABLEAU, "name": "rk4_classic", **fields})
