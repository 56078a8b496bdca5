"""Explicit symplectic integrators for partitioned systems on a tuple state ``(q, p)``.

The field returns ``(dq/dt, dp/dt)``. For a separable Hamiltonian ``H(q, p) = T(p) + V(q)`` the two
parts of the flow are exactly solvable sub-flows: a *drift* moves q with p frozen, a *kick* moves p
with q frozen. A composition of drifts and kicks is then a symplectic map, and a symmetric
composition is also time-reversible: its energy error stays bounded (no secular drift) over
exponentially long times (Hairer, Lubich, Wanner, Geometric Numerical Integration, 2nd ed.,
Sections II.5, VI.3 and Chapter IX, backward error analysis).

The methods here are only symplectic when dq/dt depends on p alone and dp/dt on q alone (any
separable H, e.g. the ideal mass-spring or pendulum). For a non-separable Hamiltonian use the
implicit symplectic methods the registry already has: ``implicit_midpoint``, ``gl4`` and ``gl6``
(Gauss-Legendre collocation, symplectic for every Hamiltonian; Hairer, Lubich, Wanner, Section VI.4,
Theorem 4.2). A drift is the exact flow of its part only when dq/dt does not depend on q (and a kick
only when dp/dt does not depend on p): on other fields these methods lose their order as well as
their symplecticity.

Time dependence: time moves with the drifts (a position-like coordinate). A kick evaluates the field
at the time reached by the drifts so far, a drift at the midpoint of its own time interval (the
symmetric rule for its sub-flow when dq/dt depends on t: a drift at its start time is first order and
drags every method down to order 1). Each Verlet step stays symmetric, so the compositions keep their
order for non-autonomous fields that are separable at every fixed time.

References:
    Hairer, Lubich, Wanner, Geometric Numerical Integration, 2nd ed., Springer 2006, Sections I.1.2
    (symplectic Euler), I.3.1 (Störmer-Verlet), II.4-II.5 (composition methods, triple jump).
    Yoshida, "Construction of higher order symplectic integrators", Phys. Lett. A 150 (1990) 262-268
    (the fourth-order triple jump and the sixth-order solution A).
    Forest & Ruth, "Fourth-order symplectic integration", Physica D 43 (1990) 105-117.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..interpolation import LinearInterpolant
from .base import AbstractSolver, Field


@dataclasses.dataclass(frozen=True)
class SymplecticStep:
    """What one composition step produced (no error estimate: these are fixed-step methods)."""

    y1: torch.Tensor
    error: torch.Tensor | None = None


def _split_point(f: Any, y: torch.Tensor, name: str) -> int:
    """Where q ends in the flat state: the number of elements of the tuple state's first tensor.

    Raises:
        ValueError: the state is not a tuple of two tensors (q, p).
    """
    layout = getattr(f, "layout", None)
    if layout is None or len(layout.sizes) != 2:
        n = "a tensor" if layout is None else f"a tuple of {len(layout.sizes)} tensors"
        raise ValueError(
            f"method {name!r} is a partitioned (symplectic) method and needs a tuple state y0 = (q, p) whose "
            f"func returns (dq/dt, dp/dt); got {n}. Pass y0 as (q, p), or use a non-partitioned method such as "
            "'rk4' (or 'implicit_midpoint' / 'gl4', symplectic for any Hamiltonian)."
        )
    return layout.sizes[0]


def _triple_jump(order: int) -> tuple[float, float, float]:
    """Weights (w1, w0, w1) that raise a symmetric method of order ``order`` to order + 2.

    Reference: Yoshida 1990, eq. (4.14)-(4.16); Hairer, Lubich, Wanner, Section II.4, eq. (4.4).
    """
    root = 2.0 ** (1.0 / (order + 1))
    w1 = 1.0 / (2.0 - root)
    return w1, -root * w1, w1


def _compose(weights: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The kick and drift coefficients of the composition of Störmer-Verlet steps with ``weights``.

    Each Verlet step of size w h is kick(w h / 2), drift(w h), kick(w h / 2); adjacent half kicks of
    consecutive Verlet steps merge into one (so s Verlet steps need s + 1 kicks, not 2 s).

    Returns:
        ``(kicks, drifts)`` with ``len(kicks) == len(drifts) + 1``: kick, drift, kick, ..., drift, kick.
    """
    kicks = [0.5 * weights[0]]
    for w, w_next in zip(weights, weights[1:]):
        kicks.append(0.5 * (w + w_next))
    kicks.append(0.5 * weights[-1])
    return tuple(kicks), tuple(weights)


#: Yoshida's (1990) sixth-order solution A: the Verlet weights w3, w2, w1, w0, w1, w2, w3 (Table 1);
#: seven Verlet steps instead of the nine of a triple jump of the fourth-order method, and a smaller
#: error constant.
_YOSHIDA6_W = (0.784513610477560, 0.235573213359357, -1.17767998417887)
_YOSHIDA6_WEIGHTS = (
    *_YOSHIDA6_W,
    1.0 - 2.0 * sum(_YOSHIDA6_W),
    *reversed(_YOSHIDA6_W),
)


@dataclasses.dataclass(frozen=True, repr=False)
class PartitionedComposition(AbstractSolver):
    """An explicit kick-drift composition on a tuple state (q, p): a fixed-step symplectic method.

    A step of size h runs ``kick(a_0 h), drift(b_0 h), kick(a_1 h), ..., drift(b_{s-1} h), kick(a_s h)``
    where ``kick(c)`` is ``p += c * dp/dt(t, q, p)`` and ``drift(c)`` is ``q += c * dq/dt(t, q, p)``
    (zero coefficients are skipped, so symplectic Euler is one kick and one drift). Each sub-step
    evaluates the whole field and uses one half: a field that returns both parts from one evaluation
    (a Hamiltonian network's ``J grad H``) has nothing cheaper to offer.

    Args:
        kicks: the kick coefficients a_0..a_s (sum 1).
        drifts: the drift coefficients b_0..b_{s-1} (sum 1).
        name: the method name of ``odeint(method=...)``.
        method_order: the order of the method.

    Raises:
        ValueError: the coefficients are inconsistent (wrong lengths or sums that are not 1).
    """

    kicks: tuple[float, ...]
    drifts: tuple[float, ...]
    name: str
    method_order: int

    #: steps the two parts of a tuple state (q, p) separately, so it needs such a state
    partitioned = True
    transformable = True

    def __post_init__(self):
        if len(self.kicks) != len(self.drifts) + 1:
            raise ValueError("a kick-drift composition needs one kick more than drifts: kick, drift, ..., kick.")
        for label, coeffs in (("kick", self.kicks), ("drift", self.drifts)):
            if abs(sum(coeffs) - 1.0) > 1e-12:
                raise ValueError(f"the {label} coefficients must sum to 1 (consistency), got {sum(coeffs)!r}.")

    @property
    def order(self) -> int:
        return self.method_order

    def init(self, f: Field, t0: float, y0: torch.Tensor) -> None:
        """No state is carried between steps (every sub-step evaluates the field afresh).

        Raises:
            ValueError: the state is not a tuple (q, p).
        """
        _split_point(f, y0, self.name)
        return None

    def step(self, f: Field, t: float, y: torch.Tensor, state: Any, dt: float) -> SymplecticStep:
        """Advance one step of size ``dt`` (negative steps run the method backwards in time).

        Args:
            f: the field on the flat state (its ``layout`` says where q ends).
            t: the time at the start of the step.
            y: the flat state (q then p).
            state: unused (None).
            dt: the step size.

        Returns:
            The state after the step; no error estimate.

        Raises:
            ValueError: the state is not a tuple (q, p).
        """
        n_q = _split_point(f, y, self.name)
        q, p = y[..., :n_q], y[..., n_q:]
        time = t
        for i, a in enumerate(self.kicks):
            if a != 0.0:
                p = p + (a * dt) * f(time, torch.cat((q, p), dim=-1))[..., n_q:]
            if i < len(self.drifts) and self.drifts[i] != 0.0:
                b = self.drifts[i]
                # the drift's field at its own midpoint time: the time moves with the drift, so this is
                # the symmetric (midpoint) rule for its sub-flow when dq/dt depends on t (order 1 else)
                q = q + (b * dt) * f(time + 0.5 * b * dt, torch.cat((q, p), dim=-1))[..., :n_q]
                time = time + b * dt
        return SymplecticStep(torch.cat((q, p), dim=-1))

    def next_state(self, f: Field, t1: float, step: Any) -> None:
        return None

    def interpolant(self, f: Field, t0: float, y0: torch.Tensor, dt: float, step: Any, next_state: Any):
        """Linear interpolation between the step's ends (the fixed-step loop's default for outputs)."""
        return LinearInterpolant(y0, step.y1)

    def derivative(self, state: Any) -> torch.Tensor:
        raise ValueError(f"{self.name!r} is a fixed-step method; it has no derivative state to choose a first step.")


class SymplecticEuler(PartitionedComposition):
    """Symplectic Euler, order 1 (``method="symplectic_euler"``): kick p with q, then drift q with the new p.

    Reference: Hairer, Lubich, Wanner, Geometric Numerical Integration, Section I.1.2, eq. (1.9).

    Args:
        **fields: the composition's settings (``dataclasses.replace`` passes them all).
    """

    def __init__(self, **fields):
        super().__init__(
            **{"kicks": (1.0, 0.0), "drifts": (1.0,), "name": "symplectic_euler", "method_order": 1, **fields}
        )


class Leapfrog(PartitionedComposition):
    """Störmer-Verlet / velocity Verlet, order 2, symmetric (``method="leapfrog"``).

    Half kick, full drift, half kick: symplectic and exactly time-reversible (up to rounding).

    Reference: Hairer, Lubich, Wanner, Geometric Numerical Integration, Section I.3.1, eq. (3.4);
    Hairer, Lubich, Wanner, "Geometric numerical integration illustrated by the Störmer-Verlet
    method", Acta Numerica 12 (2003).

    Args:
        **fields: the composition's settings (``dataclasses.replace`` passes them all).
    """

    def __init__(self, **fields):
        super().__init__(**{"kicks": (0.5, 0.5), "drifts": (1.0,), "name": "leapfrog", "method_order": 2, **fields})


class Yoshida4(PartitionedComposition):
    """Yoshida's / Forest-Ruth's fourth-order method (``method="yoshida4"``): a triple jump of Verlet.

    Three Verlet steps with weights w1, w0, w1, w1 = 1/(2 - 2^(1/3)), w0 = -2^(1/3) w1 (four kicks,
    three drifts); symmetric and symplectic.

    References: Yoshida 1990, Section 4; Forest & Ruth 1990; Hairer, Lubich, Wanner, Section II.4.

    Args:
        **fields: the composition's settings (``dataclasses.replace`` passes them all).
    """

    def __init__(self, **fields):
        kicks, drifts = _compose(_triple_jump(2))
        super().__init__(**{"kicks": kicks, "drifts": drifts, "name": "yoshida4", "method_order": 4, **fields})


class Yoshida6(PartitionedComposition):
    """Yoshida's sixth-order composition, solution A (``method="yoshida6"``): seven Verlet steps.

    Reference: Yoshida 1990, Section 5, Table 1 (solution A); Hairer, Lubich, Wanner, Section V.3.2.

    Args:
        **fields: the composition's settings (``dataclasses.replace`` passes them all).
    """

    def __init__(self, **fields):
        kicks, drifts = _compose(_YOSHIDA6_WEIGHTS)
        super().__init__(**{"kicks": kicks, "drifts": drifts, "name": "yoshida6", "method_order": 6, **fields})
