"""Host values as inputs of the compiled graphs.

A Python float read by a traced function is a constant of its graph, guarded on: every new value
compiles the graph again. What changes between solves (tolerances, times) enters as a tensor.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from .._memo import memoized
from ..controllers import PIDController
from . import core

#: how many cached tolerance tensors are kept
_TOLERANCES_MAX = 32


def tolerance_tensor(tol, like: torch.Tensor, slot: int = 0) -> torch.Tensor:
    """A tolerance as a tensor in the dtype of the state's error test and on its device (a float
    would be a graph constant, so every new value would compile a new graph); a scalar one as shape
    (1,), which broadcasts as the scalar does, because a 0-d float64 input restarts Dynamo's analysis
    (see :func:`~hybrid_node.loop.whole.pack`).

    The dtype is the state's, float32 for a half-precision state: the error test runs in float32
    there (:func:`~hybrid_node.controllers.error_precision`), and float16 rounds ``atol = 1e-9`` to 0.

    ``slot`` numbers the graph's tolerance inputs (rtol 0, atol 1, ...): a float is cached per slot,
    so equal rtol and atol are two tensors, not one tensor passed twice, which the compiler guards
    as aliased inputs and compiles again for when the two values later differ."""
    dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    if isinstance(tol, float):  # the usual case: one cached (1,) tensor per slot, value, dtype, device
        key = (slot, tol, dtype, like.device)
        return memoized(
            _TOLERANCES, key, lambda: torch.full((1,), tol, dtype=dtype, device=like.device), _TOLERANCES_MAX
        )
    tol = torch.as_tensor(tol, dtype=dtype, device=like.device)
    return tol.reshape(1) if tol.dim() == 0 else tol


#: (slot, tolerance, dtype, device) -> the (1,) tensor :func:`tolerance_tensor` gives a float tolerance
_TOLERANCES: dict = {}


@dataclasses.dataclass(frozen=True)
class InputControl(core.StepControl):
    """Step-control constants whose ``min_step``, ``max_step`` and ``max_num_steps`` are 0-d tensors,
    elements of a graph input (:func:`with_settings`), so that a new value of them compiles nothing.

    The step decision's other numbers stay constants of the graph. Whether ``min_step`` is positive
    changes the decision's operations (:func:`~hybrid_node.loop.core.accepts`), which a graph cannot
    branch on: it is ``floor``, static, and part of the graph's key (:func:`graph_control`).

    Attributes:
        floor: whether ``min_step`` is positive.
    """

    floor: bool = False

    @property
    def has_min_step(self) -> bool:
        return self.floor


#: the fields of a step control (read once: the compiler does not trace ``dataclasses.fields``)
_CONTROL_FIELDS = tuple(f.name for f in dataclasses.fields(core.StepControl))

#: where :func:`settings_vector` puts each setting
_SETTINGS = ("first_step", "min_step", "max_step", "max_num_steps")


@functools.lru_cache(maxsize=64)
def graph_control(c: core.StepControl) -> core.StepControl:
    """``c`` with the settings a forward graph takes as inputs (:func:`settings_vector`) set to
    placeholders: the graph's closure and key, equal for controls that differ only in those settings.

    ``min_step`` keeps whether it is positive (1.0 or 0.0), a static branch of the step decision: a
    solve with a floor and one without are two graphs; floors of other sizes share one.
    """
    return dataclasses.replace(c, min_step=float(c.has_min_step), max_step=math.inf, max_num_steps=0)


def with_settings(c: core.StepControl, settings: torch.Tensor) -> core.StepControl:
    """Inside the graph: the :func:`graph_control` ``c`` with the values of the :func:`settings_vector`
    ``settings`` (an :class:`InputControl`). The decisions are the eager ones: a comparison or clamp
    against a float64 0-d tensor rounds as against the same Python float, and ``max_num_steps`` is
    exact in float64 (at most 2**53)."""
    values = {name: getattr(c, name) for name in _CONTROL_FIELDS}
    # copies: the loop lifts each value it reads as an input of its own, and refuses views of one tensor
    for name in ("min_step", "max_step", "max_num_steps"):
        values[name] = settings[_SETTINGS.index(name)].clone()
    return InputControl(**values, floor=c.has_min_step)


#: (settings, device) -> the float64 vector :func:`settings_vector` gives (one per combination in use)
_SETTINGS_TENSORS: dict = {}
_SETTINGS_MAX = 32


def settings_vector(controller: PIDController, like: torch.Tensor) -> torch.Tensor:
    """The step settings of ``controller`` as one float64 input of a forward graph, on ``like``'s device:
    (first step, min_step, max_step, max_num_steps).

    As Python floats they were constants of the graph, each new value a compilation of the whole
    solve (5 s for a small MLP, 17 s at 2000 steps); a vector, not 0-d tensors, which would restart
    Dynamo's analysis (see :func:`~hybrid_node.loop.whole.pack`). The given first step is clamped to
    [min_step, max_step] as :func:`~hybrid_node.loop.host.first_step` clamps it; 0 where the graph
    computes Hairer's. Cached
    per value and device, as :func:`tolerance_tensor` caches tolerances.

    Args:
        controller: the PID settings (``max_num_steps`` at most 2**53, exact in float64).
        like: a tensor on the solve's device.

    Returns:
        The (4,) float64 vector, ordered as ``_SETTINGS``.
    """
    lo, hi = float(controller.min_step), float(controller.max_step)
    first = 0.0 if controller.first_step is None else min(max(float(controller.first_step), lo), hi)
    values = (first, lo, hi, float(controller.max_num_steps))
    key = (values, like.device)
    return memoized(
        _SETTINGS_TENSORS,
        key,
        lambda: torch.tensor(values, dtype=torch.float64, device=like.device),
        _SETTINGS_MAX,
    )
