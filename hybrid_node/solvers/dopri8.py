"""Dormand-Prince 8(5,3) (DOP853), the 8th-order pair of Hairer's DOP853 code.

The coefficients are read from scipy, which ships them as data (:func:`_load_coefficients`). The
error estimate combines the embedded fifth- and third-order differences as DOP853 does, after
dividing each by the tolerance scale, so it behaves like an O(h^8) estimate.

Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.10; P. J. Prince and J. R.
Dormand, "High order embedded Runge-Kutta formulae", J. Comput. Appl. Math. 7 (1981).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

from ..controllers import ErrorPair
from ..interpolation import linear_combination
from .base import Interpolant
from .runge_kutta import ExplicitRungeKutta
from .tableau import ButcherTableau


def _load_coefficients() -> ModuleType:
    """scipy's table of the DOP853 coefficients (``scipy/integrate/_ivp/dop853_coefficients.py``, a
    module of numpy arrays), executed from its file.

    Importing it by name first runs ``scipy.integrate``'s package initialisation, which imports the
    whole of scipy's integrators: 0.4-0.6 s of every process's first solve (this module is imported
    with the solver registry), for a table that loads in a millisecond. Where the file is not found
    (another scipy layout), the table is imported by name.

    Returns:
        The module (``N_STAGES``, ``A``, ``B``, ``C``, ``E3``, ``E5``, ``D``).
    """
    spec = importlib.util.find_spec("scipy")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations)), "integrate", "_ivp", "dop853_coefficients.py")
        file_spec = importlib.util.spec_from_file_location("hybrid_node.solvers._dop853_coefficients", path)
        if path.is_file() and file_spec is not None and file_spec.loader is not None:
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
            return module
    from scipy.integrate._ivp import dop853_coefficients

    return dop853_coefficients


_dop = _load_coefficients()

_S = _dop.N_STAGES  # 12 stages, plus the FSAL evaluation at the new point
_B = tuple(float(x) for x in _dop.B) + (0.0,)
_E5 = tuple(float(x) for x in _dop.E5)

DOPRI8_TABLEAU = ButcherTableau(
    c=tuple(float(x) for x in _dop.C[:_S]) + (1.0,),
    a=tuple(tuple(float(x) for x in _dop.A[i, :i]) for i in range(_S)) + (_B[:_S],),
    b=_B,
    order=8,
    b_error=_E5,
    error_order=5,
)
_E3 = tuple(float(x) for x in _dop.E3)
# the continuous extension's stages 14-16 and its coefficient rows, as Python floats: numpy arrays
# read inside a compiled graph would be traced as tensors (data-dependent coefficients)
_EXTRA = tuple((float(_dop.C[s]), tuple(float(x) for x in _dop.A[s, :s])) for s in range(13, 16))
_D = tuple(tuple(float(x) for x in row) for row in _dop.D)


def _combined_error(dt: float | torch.Tensor, ks) -> ErrorPair:
    """DOP853's error estimate: its fifth- and third-order differences, which the error ratio divides by
    the tolerance scale and then combines as ``|err5|^2 / sqrt(|err5|^2 + 0.01 |err3|^2)``
    (:func:`~hybrid_node.controllers.combined_ratio`).

    The weight of the two is taken from the *scaled* norms, as in Hairer's DOP853 and scipy: with norms of
    the unscaled differences, a component of small tolerance scale (or large magnitude) moved the weight,
    and the steps differed from DOP853's by up to 80% (Arenstorf's orbit).

    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.10.

    Args:
        dt: the step; ks: the 13 stage derivatives.

    Returns:
        The two differences, each of the state's shape.
    """
    return ErrorPair(linear_combination(None, dt, _E5, ks), linear_combination(None, dt, _E3, ks))


class Dopri8Interpolant(Interpolant):
    """DOP853's seventh-order continuous extension; its three extra stages are evaluated on first use.

    The stages belong to the step, so they are built with autograd as it was when the step was taken
    (``torch.is_grad_enabled()`` at construction), whatever mode the first evaluation runs under: a
    loop may then read the dense output under ``torch.no_grad()`` (an event's sign checks) and still
    differentiate a later evaluation of it (the event state), and a step taken under ``no_grad``
    never records a graph for them.

    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.10 (dense output of DOP853).

    Args:
        f: the field the step was taken with; t0, y0, dt: the step's start, state and size;
        step: the accepted step (its ``ks`` and ``y1``).
    """

    def __init__(self, f, t0: float, y0, dt: float, step):
        self.f, self.t0, self.y0, self.dt, self.step = f, t0, y0, dt, step
        self._coeffs: list[torch.Tensor] | None = None
        self._grad = torch.is_grad_enabled()  # the step's mode, which its extra stages take

    def _prepare(self) -> list[torch.Tensor]:
        """Build (once) the extra stages and the continuous extension's coefficients.

        Returns:
            The coefficients of the nested form that :meth:`__call__` evaluates (DOP853's ``rcont``).
        """
        if torch.is_grad_enabled() == self._grad:
            coeffs = self._coefficients()
        else:  # switched only where it differs (no context manager in a traced graph that needs none)
            with torch.set_grad_enabled(self._grad):
                coeffs = self._coefficients()
        self._coeffs = coeffs
        return coeffs

    def _coefficients(self) -> list[torch.Tensor]:
        """The three extra stages and the coefficients, in the autograd mode in force."""
        ks = list(self.step.ks)  # 13 stages: 12 + the FSAL derivative at the new point
        for c, a in _EXTRA:
            yi = linear_combination(self.y0, self.dt, a, ks)
            ks.append(self.f(self.t0 + c * self.dt, yi))
        dy = self.step.y1 - self.y0
        h = self.dt
        coeffs = [dy, ks[0] * h - dy, 2 * dy - (ks[0] + ks[12]) * h]
        for row in _D:
            coeffs.append(linear_combination(None, h, row, ks))
        return coeffs

    def __call__(self, theta: float | torch.Tensor):
        """The dense output at ``theta`` in [0, 1]: a float, or a float64 tensor shaped to broadcast
        against the state (one row per theta, as the whole-solve graph asks for all its output times)."""
        coeffs = self._coeffs if self._coeffs is not None else self._prepare()
        factors: tuple[float | torch.Tensor, float | torch.Tensor]
        if isinstance(theta, torch.Tensor):
            # 1 - theta in float64 and then rounded, as a float theta is: same factors as the host's
            factors = (theta.to(self.y0.dtype), (1 - theta).to(self.y0.dtype))
        else:
            factors = (theta, 1 - theta)
        acc = None
        for i, c in enumerate(reversed(coeffs)):
            acc = c if acc is None else acc + c
            acc = acc * factors[i % 2]
        return self.y0 + acc

    def sample_rows(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`~hybrid_node.interpolation.SampleRows.sample_rows`: the nested form of :meth:`__call__` on
        the rows, one theta per row."""
        coeffs = self._coeffs if self._coeffs is not None else self._prepare()
        rows = [c.reshape(n, -1)[idx] for c in coeffs]
        theta, one_minus = self._row_factors(thetas, rows[0])
        acc = None
        for i, c in enumerate(reversed(rows)):
            acc = c if acc is None else acc + c
            acc = acc * (theta if i % 2 == 0 else one_minus)
        assert acc is not None  # seven coefficients
        return self.y0.reshape(n, -1)[idx] + acc

    def sample_slopes(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`~hybrid_node.interpolation.SampleRows.sample_slopes`: the derivative of the nested form
        ``theta (c0 + (1 - theta) (c1 + theta (c2 + ...)))`` by the product rule, level by level from
        the innermost (the continuous extension of Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed.,
        Section II.10)."""
        coeffs = self._coeffs if self._coeffs is not None else self._prepare()
        rows = [c.reshape(n, -1)[idx] for c in coeffs]
        theta, one_minus = self._row_factors(thetas, rows[0])
        acc = slope = None
        for i, c in enumerate(reversed(rows)):
            inner = c if acc is None else acc + c
            factor, sign = (theta, 1.0) if i % 2 == 0 else (one_minus, -1.0)
            # (inner * factor)' = inner' * factor + inner * factor', with factor' = +1 (theta) or -1 (1 - theta)
            slope = inner * sign if slope is None else slope * factor + inner * sign
            acc = inner * factor
        assert slope is not None  # seven coefficients
        return slope

    @staticmethod
    def _row_factors(thetas: Sequence[float], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``theta`` and ``1 - theta`` as (k, 1) columns in ``like``'s dtype, ``1 - theta`` taken in float64
        and then rounded, as :meth:`__call__` takes it from a float theta."""
        th = torch.tensor(list(thetas), dtype=torch.float64).reshape(-1, 1)
        return th.to(like.dtype).to(like.device), (1 - th).to(like.dtype).to(like.device)


class Dopri8(ExplicitRungeKutta):
    """Dormand-Prince 8th order (DOP853 coefficients), FSAL, seventh-order dense output (``method="dopri8"``).

    Args:
        **fields: settings of :class:`ExplicitRungeKutta` (e.g. ``compile=True``); ``dataclasses.replace``
            passes them all.
    """

    dense_output_evaluations = 3  # the continuous extension's stages 14-16

    def __init__(self, **fields):
        defaults = {
            "tableau": DOPRI8_TABLEAU,
            "name": "dopri8",
            "dense_output": Dopri8Interpolant,
            "error_estimate": _combined_error,
            "error_estimate_order": 7,
        }
        super().__init__(**{**defaults, **fields})

    @property
    def supports_whole_solve(self) -> bool:
        # the whole-solve graph builds the dense output's three extra stages on every attempt (masked);
        # the device loop, which reads the host after a few attempts, does not run this method
        return True
