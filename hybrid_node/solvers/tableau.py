"""Butcher tableaus as data that checks its own consistency."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

_TOL = 1e-12


def _as_tuple(x: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in x)


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta tableau, optionally with an embedded error estimate.

    Args:
        c: nodes, length s.
        a: strictly lower-triangular stage coefficients; row i has i entries (row 0 is empty).
        b: weights of the propagated solution, length s.
        order: order of the propagated solution.
        b_error: weights of the error estimate (b minus the embedded weights), length s, or None for a
            fixed-step method.
        error_order: order of the embedded solution (the error estimate is O(h^(error_order+1))).
        dense: optional dense-output polynomial coefficients: ``dense[i][p]`` is the coefficient of
            theta^(p+1) in b_i(theta), so that y(t + theta h) = y + h sum_i b_i(theta) k_i.

    Raises:
        ValueError: if the rows of ``a`` do not sum to ``c``, the weights do not sum to 1, the error
            weights do not sum to 0, or the dense output does not reproduce ``b`` at theta = 1.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_error: tuple[float, ...] | None = None
    error_order: int | None = None
    dense: tuple[tuple[float, ...], ...] | None = None
    _hash: int = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "c", _as_tuple(self.c))
        object.__setattr__(self, "a", tuple(_as_tuple(row) for row in self.a))
        object.__setattr__(self, "b", _as_tuple(self.b))
        if self.b_error is not None:
            object.__setattr__(self, "b_error", _as_tuple(self.b_error))
        if self.dense is not None:
            object.__setattr__(self, "dense", tuple(_as_tuple(row) for row in self.dense))
        self.check()
        # hashed once: a solver's tableau is part of the key of every compiled-graph lookup of a solve
        fields = (self.c, self.a, self.b, self.order, self.b_error, self.error_order, self.dense)
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def fsal(self) -> bool:
        """First same as last: the last stage is evaluated at the propagated solution."""
        s = self.stages
        return s > 1 and self.c[-1] == 1.0 and self.a[-1] == self.b[: s - 1] and self.b[-1] == 0.0

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    def check(self) -> None:
        s = self.stages
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError("a must be strictly lower triangular: row i holds i coefficients.")
        if len(self.b) != s:
            raise ValueError(f"b has {len(self.b)} entries, expected {s}.")
        if self.c[0] != 0.0:
            raise ValueError("c[0] must be 0 for an explicit method.")
        for i, row in enumerate(self.a):
            if i and abs(sum(row) - self.c[i]) > _TOL * max(1.0, abs(self.c[i])) * 10:
                raise ValueError(f"row {i} of a sums to {sum(row)!r}, not c[{i}] = {self.c[i]!r}.")
        if abs(sum(self.b) - 1.0) > 10 * _TOL:
            raise ValueError(f"b sums to {sum(self.b)!r}, not 1.")
        if self.b_error is not None:
            if len(self.b_error) != s:
                raise ValueError(f"b_error has {len(self.b_error)} entries, expected {s}.")
            if abs(sum(self.b_error)) > 10 * _TOL:
                raise ValueError(f"b_error sums to {sum(self.b_error)!r}, not 0.")
            if self.error_order is None:
                raise ValueError("an embedded pair needs error_order.")
        if self.dense is not None:
            if len(self.dense) != s:
                raise ValueError(f"dense has {len(self.dense)} rows, expected {s}.")
            for i, poly in enumerate(self.dense):
                if abs(sum(poly) - self.b[i]) > 1e-10:
                    raise ValueError(f"dense row {i} gives {sum(poly)!r} at theta=1, not b[{i}] = {self.b[i]!r}.")
