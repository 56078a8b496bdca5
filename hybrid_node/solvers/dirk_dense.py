"""Continuous extensions (dense output) of stiffly accurate ESDIRK methods from their own stages.

A continuous extension gives ``y(t + theta h) ~ y + h sum_i b_i(theta) k_i`` with polynomials ``b_i`` in
``theta`` and the step's stage derivatives ``k_i``. It has order ``p`` when the order conditions hold for every
``theta``: ``sum_i b_i(theta) Phi_i(t) = theta^|t| / gamma(t)`` for each rooted tree ``t`` with at most ``p``
nodes (Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.6, Theorem 6.1; the elementary weights
``Phi`` and densities ``gamma`` of Section II.2, Table 2.2).

Order conditions alone ignore stiffness: on a stiff component the implicit stages sit on the slow manifold,
``Y_i ~ phi(t + c_i h)``, and the recovered derivatives are ``h k = A^{-1} (Y - base)``, so the interpolant
becomes a fixed linear combination of the stage values. It follows a manifold that is a polynomial of degree
``m`` exactly only when the weights reproduce ``theta^m`` from stage values ``c_i^m``
(:func:`stiff_weights`); the stage order (2 for Kværnø's and Kennedy & Carpenter's methods) gives that up to
``m = 2`` only. Cubic Hermite on the end values and slopes is exact up to the same degree, and interpolants
built from the order conditions alone can be worse (Hairer & Wanner, Solving ODEs II, Section IV.15 on the
order reduction of stage-based formulas; Kennedy & Carpenter 2003, Section 2.1.5 on dense output). The
extensions built here also impose exactness for cubics in that limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: the largest residual of the linear system that still counts as solved (the coefficients are O(1-10))
_SOLVED = 1e-12


def _lower(a: Sequence[Sequence[float]]) -> np.ndarray:
    """The full s x s coefficient matrix of lower-triangular rows (row i has i + 1 entries)."""
    s = len(a)
    m = np.zeros((s, s))
    for i, row in enumerate(a):
        m[i, : len(row)] = row
    return m


def elementary_weights(a: np.ndarray, c: np.ndarray, order: int) -> list[tuple[int, np.ndarray, int]]:
    """The rooted trees with at most ``order`` nodes (up to 5) as ``(nodes, Phi, gamma)``.

    ``Phi`` is the vector of stage weights whose ``b``-weighted sum is the tree's elementary weight,
    ``gamma`` its density (Hairer, Nørsett, Wanner, Solving ODEs I, Section II.2, Table 2.2).

    Args:
        a: the s x s coefficient matrix; c: the nodes; order: the largest number of nodes (1 to 5).

    Returns:
        One entry per tree, ordered by the number of nodes.

    Raises:
        ValueError: for an order outside 1 to 5.
    """
    if not 1 <= order <= 5:
        raise ValueError(f"elementary_weights: order must be 1 to 5, not {order}.")
    ac = a @ c
    trees = [
        (1, np.ones_like(c), 1),
        (2, c, 2),
        (3, c**2, 3),
        (3, ac, 6),
        (4, c**3, 4),
        (4, c * ac, 8),
        (4, a @ c**2, 12),
        (4, a @ ac, 24),
        (5, c**4, 5),
        (5, c**2 * ac, 10),
        (5, c * (a @ c**2), 15),
        (5, c * (a @ ac), 30),
        (5, ac**2, 20),
        (5, a @ c**3, 20),
        (5, a @ (c * ac), 40),
        (5, a @ (a @ c**2), 60),
        (5, a @ (a @ ac), 120),
    ]
    return [t for t in trees if t[0] <= order]


def stiff_weights(a: np.ndarray, c: np.ndarray, degree: int) -> list[tuple[int, np.ndarray]]:
    """What the stage derivatives of an ESDIRK step are when its stages lie on a polynomial manifold.

    With an explicit first stage (``k_1`` the slope at the step's start) and implicit stages exactly on
    ``phi(t) = t^m`` (the stiff limit on a manifold of that shape, h = 1, t = 0 at the step's start), the
    stage equations ``Y = y0 + A k`` give ``k`` = the returned vector; an interpolant with weights
    ``b(theta)`` reproduces ``theta^m`` there when ``b(theta) . k = theta^m``.

    Args:
        a: the s x s coefficient matrix (first row zero, implicit diagonal); c: the nodes; degree: the
            largest ``m``.

    Returns:
        ``(m, k)`` for ``m = 1 .. degree``.

    Raises:
        ValueError: for a method without an explicit first stage.
    """
    if a[0, 0] != 0.0:
        raise ValueError("stiff_weights: the method needs an explicit first stage (an ESDIRK).")
    inv = np.linalg.inv(a[1:, 1:])
    out = []
    for m in range(1, degree + 1):
        k = np.zeros_like(c)
        k[0] = 1.0 if m == 1 else 0.0  # the slope of t^m at t = 0
        k[1:] = inv @ (c[1:] ** m - a[1:, 0] * k[0])
        out.append((m, k))
    return out


def continuous_extension(
    a: Sequence[Sequence[float]],
    c: Sequence[float],
    b: Sequence[float],
    order: int,
    degree: int,
    stiff_degree: int = 0,
) -> tuple[tuple[float, ...], ...]:
    """The least-norm continuous extension of given order of an ESDIRK method.

    Solves the linear system for the coefficients ``beta_iq`` of ``b_i(theta) = sum_q beta_iq theta^q``
    (q = 1 .. degree): the order conditions of every tree with at most ``order`` nodes, power by power in
    theta; exactness for ``theta^m``, m <= ``stiff_degree``, in the stiff limit (:func:`stiff_weights`);
    and ``b(1) = b``, so that the interpolant ends at the step's solution. Where the conditions leave
    freedom the least-norm solution is taken (numpy's ``lstsq``).

    Args:
        a: the lower-triangular rows (row i has i + 1 entries); c: the nodes; b: the weights.
        order: the order of the extension (its local error is O(h^(order+1))).
        degree: the degree of the polynomials in theta (at least ``order``).
        stiff_degree: the largest manifold degree reproduced in the stiff limit (0: none).

    Returns:
        ``rows[i][q - 1]``: the coefficient of theta^q in b_i(theta).

    Raises:
        ValueError: if the system has no solution (the method's stages cannot carry such an extension).
    """
    am, cv, bv = _lower(a), np.asarray(c, dtype=np.float64), np.asarray(b, dtype=np.float64)
    s = len(cv)
    conditions = [(n, phi, 1.0 / g) for n, phi, g in elementary_weights(am, cv, order)]
    conditions += [(m, k, 1.0) for m, k in (stiff_weights(am, cv, stiff_degree) if stiff_degree else [])]
    rows, rhs = [], []
    for power, phi, value in conditions:
        for q in range(1, degree + 1):
            rows.append(np.kron(phi, np.eye(degree)[q - 1]))
            rhs.append(value if q == power else 0.0)
    for i in range(s):  # b(1) = b
        rows.append(np.kron(np.eye(s)[i], np.ones(degree)))
        rhs.append(bv[i])
    m, r = np.array(rows), np.array(rhs)
    x = np.linalg.lstsq(m, r, rcond=None)[0]
    # one step of iterative refinement: the system is ill-conditioned where stages share a node (kvaerno5's
    # last two at c = 1), which left b(1) 2e-13 off b; the correction brings it to rounding
    x = x + np.linalg.lstsq(m, r - m @ x, rcond=None)[0]
    residual = float(np.abs(m @ x - r).max())
    if residual > _SOLVED:
        raise ValueError(
            f"continuous_extension: no extension of order {order}, degree {degree} and stiff degree "
            f"{stiff_degree} exists for this tableau (residual {residual:.1e}); lower one of them."
        )
    return tuple(tuple(float(v) for v in row) for row in x.reshape(s, degree))
