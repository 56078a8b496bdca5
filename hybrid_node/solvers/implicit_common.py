"""What the diagonally and the fully implicit Runge-Kutta solvers share: their named methods' presets, the
stage solve with Jacobian refreshes on fixed steps, and the error when it still fails.

References: Hairer & Wanner, Solving ODEs II, 2nd ed., Section IV.8 (simplified Newton; a fresh Jacobian
after a failure with an old one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from .._errors import SolverError, Status
from .newton import NewtonResult, NewtonSettings, contracted, fixed_step_failure_hint, newton_solve


class NamedMethod:
    """A named method of a tableau family: constructed with ``preset`` (its tableau, name, ...), which the
    caller's options override. Listed before the family class: ``class Kvaerno3(NamedMethod, Dirk)``.
    """

    #: the family class's constructor arguments that make this method
    preset: ClassVar[dict[str, Any]]

    def __init__(self, **options: Any) -> None:
        """The method with the family's settings in ``options`` (``jacobian``, ``batch_dims``, ...).

        Args:
            **options: constructor arguments of the family class (:class:`~.esdirk.Dirk`,
                :class:`~.implicit_fixed.ImplicitRungeKutta`); they override the preset.
        """
        super().__init__(**{**self.preset, **options})  # the family class (a dataclass) is next in the MRO


def solve_with_refreshes(
    residual: Callable[[torch.Tensor], torch.Tensor],
    solve: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    scale: torch.Tensor,
    settings: NewtonSettings,
    refresh: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]],
    refreshes: int,
) -> NewtonResult:
    """Simplified Newton from ``z0``; where it fails, a fresh Jacobian at the latest iterate and again.

    A fixed step has no smaller step to retry with. The Jacobian was taken at the step's start (or an
    earlier step), not where the iteration runs; as Hairer & Wanner do after a failure with an old
    Jacobian (IV.8), it is taken afresh there, at the latest iterate of an attempt that contracted (else
    where the failed attempt started), up to ``refreshes`` times while the attempts still contract.

    Args:
        residual: ``G(z)``; solve: the frozen inverse of the first attempt; z0: the predictor.
        scale, settings: the Newton test's error scale and limits (:func:`~.newton.newton_solve`).
        refresh: ``refresh(z)`` takes the Jacobian at iterate ``z``, refactors, and returns the new solve
            (the caller keeps the new Jacobian and factors for the rest of its step).
        refreshes: how many refreshes at most (0 for an adaptive step, which is rejected instead).

    Returns:
        The last attempt's result (``converged`` False where every attempt failed).
    """
    res = newton_solve(residual, solve, z0, scale, settings)
    start = z0
    for attempt in range(refreshes):
        if res.converged or (attempt and not contracted(res)):
            break
        start = res.z if contracted(res) else start
        res = newton_solve(residual, refresh(start), start, scale, settings)
    return res


def fixed_step_newton_error(
    f: Any, t: float, y: torch.Tensor, batch_dims: int | None, iterate: torch.Tensor
) -> SolverError:
    """The error of a fixed step whose Newton iteration did not converge, at the user's time ``t``.

    Args:
        f: the field (``f.reverse`` set for a solve backward in time, whose internal time is ``-t``).
        t: the step's start in solver time; y: its state; batch_dims: the solver's setting.
        iterate: the iteration's last iterate.

    Returns:
        A ``SolverError``: NONFINITE where the last iterate is not finite (the field, or its Jacobian, gave
        NaN/inf during the step, or the iteration blew up), so the message points at the field rather than
        at the step size alone; else NEWTON_FAILED, whose detail suggests a smaller ``step_size``, and
        ``batch_dims=0`` where the state has batch dimensions.
    """
    user_t = -t if getattr(f, "reverse", False) else t
    if not bool(torch.isfinite(iterate).all()):
        return SolverError(
            Status.NONFINITE,
            user_t,
            "the Newton iterate of the implicit step became NaN or infinite: check where the field or its "
            "Jacobian is not finite over this step; if the iteration overflows, use a smaller step_size",
        )
    return SolverError(Status.NEWTON_FAILED, user_t, fixed_step_failure_hint(y, batch_dims))
