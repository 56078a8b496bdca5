"""Gradient (sensitivity) methods as immutable settings objects, shared by both backends.

Which object a backend accepts:

=====================  =====  =====
method                 torch  julia
=====================  =====  =====
DirectBackprop         yes    no (use GaussAdjoint)
BacksolveAdjoint       yes    yes
InterpolatingAdjoint   yes    yes
GaussAdjoint           no     yes
QuadratureAdjoint      no     yes
=====================  =====  =====
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .._errors import BackendError
from .._problem import Problem
from .._registry import check_solve_settings
from .._settings_key import value_semantics
from .._solution import Solution
from ..controllers import _from_numpy, bool_or_complex
from ..loop import integrate, to_solution
from ._backward import refuse_zero_tolerances
from .adjoint import solve_adjoint
from .backsolve import Backsolve
from .base import AbstractSensitivity
from .checkpointed import solve_checkpointed
from .direct import solve_direct, time_tangent
from .interpolating import Interpolating

NORMS = ("default", "seminorm")


@dataclasses.dataclass(frozen=True)
class DirectBackprop(AbstractSensitivity):
    """Differentiate through every operation of the forward solve (exact gradient of the discrete solution).

    Memory grows linearly with the number of steps, unless ``checkpoints`` bounds it.

    Args:
        checkpoints: None: autograd records every step. k >= 1: binomial (revolve) checkpointing, at
            most k states held in the backward pass, the rest recomputed; the same gradient to rounding
            (:mod:`hybrid_node.sensitivity.checkpointed`; Griewank & Walther, ACM TOMS 26, 2000).
            Explicit one-step solvers, ConstantStepSize or PIDController, steps ending at the output
            times, gradients for y0 and ``adjoint_params`` (default ``func.parameters()``; required, as
            with the adjoints, when ``func`` is a plain function), no events.
    """

    checkpoints: int | None = None

    backends = ("torch",)

    def __post_init__(self):
        if self.checkpoints is not None and (
            isinstance(self.checkpoints, bool) or not isinstance(self.checkpoints, int) or self.checkpoints < 1
        ):
            raise ValueError(f"checkpoints must be a positive int or None, got {self.checkpoints!r}.")

    def solve(
        self,
        problem: Problem,
        adjoint_params: Sequence[torch.Tensor] | None,
        event_fn: Callable | None = None,
        throw: bool = True,
    ) -> Solution:
        """Solve with autograd recording every step (``adjoint_params`` only matters with ``checkpoints``).

        Returns:
            The Solution; see :meth:`AbstractSensitivity.solve`.
        """
        if self.checkpoints is not None:
            return solve_checkpointed(problem, self.checkpoints, adjoint_params, event_fn, throw)
        if event_fn is not None or problem.t.requires_grad or time_tangent(problem.t) is not None:
            return solve_direct(problem, event_fn=event_fn, throw=throw)  # derivatives for the event time and t
        integration = integrate(problem, problem.term(), problem.y0, problem.ts, event_fn=event_fn, throw=throw)
        return to_solution(problem, integration, throw)


@value_semantics
@dataclasses.dataclass(frozen=True)
class _AdjointSettings(AbstractSensitivity):
    """The settings the adjoint methods share: the backward solve's tolerances, method, options and norm.

    Raises:
        TypeError: a bool or complex tolerance, a ``method`` that is not a string, or ``options`` that are
            not a mapping.
        ValueError: a tolerance that is negative or not finite, rtol and atol both 0 (for some element),
            an unknown norm, or an unknown method or option name (the message names the closest valid one).
        BackendError: ``method`` exists on the Julia backend only.
    """

    #: backward tolerance; a tensor is read as the forward controller reads one (per component, or per
    #: tensor of a tuple state); None: the forward one
    rtol: float | torch.Tensor | None = None
    atol: float | torch.Tensor | None = None
    #: backward solver; None (or the forward solver's name, without ``options``) reuses the forward solver and
    #: its controller, as torchdiffeq copies ``options`` when ``adjoint_method == method``
    method: str | None = None
    options: Mapping[str, Any] | None = None  #: backward solver options (copied when the settings are built)
    #: "seminorm" leaves the parameter-gradient channels out of the error norm; a callable is
    #: torchdiffeq's ``adjoint_options["norm"]``: called on ``(t, *y, *adj_y, *adj_params)``
    norm: str | Callable = "default"

    def __post_init__(self):
        if not callable(self.norm) and self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS} or a callable, got {self.norm!r}.")
        # a misspelt backward method or option failed only when the first backward pass began
        check_solve_settings(self.method, self.options)
        if self.options is not None:  # frozen and checked: a later change to the caller's dict must not reach it
            object.__setattr__(self, "options", dict(self.options))
        for name, value in (("rtol", self.rtol), ("atol", self.atol)):
            if value is None:
                continue
            value = _from_numpy(value)  # NumPy numbers and arrays, as the forward controller takes them
            object.__setattr__(self, name, value)  # frozen: the one normalisation of a setting
            # a tensor is a per-component tolerance (the backward solve repeats it for each channel); a bool
            # or complex one has no meaning there (True was taken as 1.0; a complex one failed in the comparison)
            if bool_or_complex(value) is not None or not isinstance(value, (int, float, torch.Tensor)):
                what = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(
                    f"{name} must be a non-negative float or a real tensor of them (the adjoint's {name}: "
                    f"adjoint_{name} of odeint_adjoint), got {what}."
                )
            values = torch.as_tensor(value).detach()
            if not bool(((values >= 0) & torch.isfinite(values)).all()):
                # an infinite tolerance accepted every backward step: gradients at the largest steps, silently;
                # 0 is valid alone (pure absolute or pure relative control, as in the forward solve)
                raise ValueError(
                    f"{name} must be non-negative and finite (the adjoint's {name}: adjoint_{name} of "
                    f"odeint_adjoint), got {value!r}."
                )
        if self.rtol is not None and self.atol is not None:
            refuse_zero_tolerances(self.rtol, self.atol)

    def solve(
        self,
        problem: Problem,
        adjoint_params: Sequence[torch.Tensor] | None,
        event_fn: Callable | None = None,
        throw: bool = True,
    ) -> Solution:
        """Solve forwards without a graph; the gradients come from an adjoint solve backwards.

        Returns:
            The Solution; see :meth:`AbstractSensitivity.solve`.

        Raises:
            ValueError: the controller asks for per-sample steps (not available with the adjoints).
        """
        if problem.controller.per_sample:
            # odeint_adjoint's callers have no sensitivity argument: name their fix (hn.odeint) as well
            raise ValueError(
                "per-sample step control is not available with the adjoint methods; differentiate directly "
                "(hn.odeint instead of hn.odeint_adjoint, or sensitivity=hn.DirectBackprop() in hn.solve) "
                "or drop per_sample."
            )
        return solve_adjoint(problem, self, adjoint_params, event_fn=event_fn, throw=throw)

    def backward_pass(self, problem: Problem, plan, params, event_fn: Callable | None, throw: bool):
        """The run object of :mod:`hybrid_node.sensitivity.adjoint` that does this method's backward solve.

        Raises:
            TypeError: this adjoint has no torch implementation.
        """
        raise TypeError(f"solve_adjoint takes BacksolveAdjoint or InterpolatingAdjoint, got {type(self).__name__}.")


def _julia_only(sensitivity: AbstractSensitivity) -> BackendError:
    return BackendError(
        f"{type(sensitivity).__name__} exists only on the Julia backend; on the torch backend use "
        "BacksolveAdjoint, InterpolatingAdjoint or DirectBackprop."
    )


@value_semantics
@dataclasses.dataclass(frozen=True)
class BacksolveAdjoint(_AdjointSettings):
    """The adjoint method of Chen et al. (2018): solve [z, a, dL/dθ] backwards, reconstructing z.

    O(1) memory in the number of steps; the reconstructed z can drift from the forward one on
    contracting or stiff problems (then prefer :class:`InterpolatingAdjoint`).

    Reference: Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations",
    NeurIPS 2018, Algorithm 1.
    """

    backends = ("torch", "julia")

    def backward_pass(self, problem: Problem, plan, params, event_fn: Callable | None, throw: bool) -> Backsolve:
        """Reconstruct the state backwards together with the adjoint."""
        return Backsolve(problem, plan, params, event_fn, throw)


@value_semantics
@dataclasses.dataclass(frozen=True)
class InterpolatingAdjoint(_AdjointSettings):
    """Checkpointed adjoint: the forward state is stored at checkpoints and each segment is re-solved
    forwards during the backward pass, so the adjoint uses the true forward trajectory.

    Args:
        checkpoints: cut the interval into this many equal segments, besides the output times (whose
            states are kept anyway); None: segments between output times only. Memory is
            O(outputs + checkpoints + steps of one segment). Fixed-step solvers checkpoint on grid points.

    Reference: Zhuang et al., "Adaptive Checkpoint Adjoint Method", ICML 2020; SciMLSensitivity's
    InterpolatingAdjoint(checkpointing=true).
    """

    checkpoints: int | None = None

    backends = ("torch", "julia")

    def backward_pass(self, problem: Problem, plan, params, event_fn: Callable | None, throw: bool) -> Interpolating:
        """Re-solve each segment forwards from its checkpoint while the adjoint goes backwards."""
        return Interpolating(problem, plan, params, event_fn, throw, self.checkpoints)

    def __post_init__(self):
        super().__post_init__()
        if self.checkpoints is not None and (
            isinstance(self.checkpoints, bool) or not isinstance(self.checkpoints, int) or self.checkpoints < 1
        ):
            raise ValueError(f"checkpoints must be a positive int or None, got {self.checkpoints!r}.")


@value_semantics
@dataclasses.dataclass(frozen=True)
class GaussAdjoint(_AdjointSettings):
    """SciMLSensitivity's GaussAdjoint (Julia backend only): adjoint with Gauss-Kronrod quadrature of
    the parameter gradient."""

    backends = ("julia",)

    def solve(self, problem, adjoint_params, event_fn=None, throw=True) -> Solution:
        """Raises BackendError: the torch backend has no GaussAdjoint."""
        raise _julia_only(self)


@value_semantics
@dataclasses.dataclass(frozen=True)
class QuadratureAdjoint(_AdjointSettings):
    """SciMLSensitivity's QuadratureAdjoint (Julia backend only)."""

    backends = ("julia",)

    def solve(self, problem, adjoint_params, event_fn=None, throw=True) -> Solution:
        """Raises BackendError: the torch backend has no QuadratureAdjoint."""
        raise _julia_only(self)


Sensitivity = (DirectBackprop, BacksolveAdjoint, InterpolatingAdjoint, GaussAdjoint, QuadratureAdjoint)
