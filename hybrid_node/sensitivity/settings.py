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
from collections.abc import Mapping
from typing import Any

NORMS = ("default", "seminorm")


@dataclasses.dataclass(frozen=True)
class DirectBackprop:
    """Differentiate through every operation of the forward solve (exact gradient of the discrete solution).

    Memory grows linearly with the number of steps.
    """


@dataclasses.dataclass(frozen=True)
class _AdjointSettings:
    rtol: float | None = None  #: backward tolerance; None reuses the forward one
    atol: float | None = None
    method: str | None = None  #: backward solver; None reuses the forward one
    options: Mapping[str, Any] | None = None  #: backward solver options
    norm: str = "default"  #: "seminorm" leaves the parameter-gradient channels out of the error norm

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}.")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class BacksolveAdjoint(_AdjointSettings):
    """The adjoint method of Chen et al. (2018): solve [z, a, dL/dθ] backwards, reconstructing z.

    O(1) memory in the number of steps; the reconstructed z can drift from the forward one on
    contracting or stiff problems (then prefer :class:`InterpolatingAdjoint`).

    Reference: Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations",
    NeurIPS 2018, Algorithm 1.
    """


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

    def __post_init__(self):
        super().__post_init__()
        if self.checkpoints is not None and (not isinstance(self.checkpoints, int) or self.checkpoints < 1):
            raise ValueError(f"checkpoints must be a positive int or None, got {self.checkpoints!r}.")


@dataclasses.dataclass(frozen=True)
class GaussAdjoint(_AdjointSettings):
    """SciMLSensitivity's GaussAdjoint (Julia backend only): adjoint with Gauss-Kronrod quadrature of
    the parameter gradient."""


@dataclasses.dataclass(frozen=True)
class QuadratureAdjoint(_AdjointSettings):
    """SciMLSensitivity's QuadratureAdjoint (Julia backend only)."""


Sensitivity = (DirectBackprop, BacksolveAdjoint, InterpolatingAdjoint, GaussAdjoint, QuadratureAdjoint)
