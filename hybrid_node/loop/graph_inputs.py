"""Host values as inputs of the compiled graphs.

A Python float read by a traced function is a constant of its graph, guarded on: every new value
compiles the graph again. What changes between solves (tolerances, times) enters as a tensor.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

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
    """Step-control constants whose numbers are 0-d tensors, elements of a graph input
    (:func:`with_settings`), so that a new value of them compiles nothing: ``min_step``, ``max_step``,
    ``max_num_steps``, the PID formula's exponents ``e1``-``e3`` (from ``pcoeff``, ``icoeff``,
    ``dcoeff``), ``safety``, ``ifactor`` and ``dfactor``.

    What stays static changes the decision's operations, which a graph cannot branch on: whether
    ``min_step`` is positive (:func:`~hybrid_node.loop.core.accepts`) is ``floor``, and the two
    rules ``keep_after_accept`` and ``hold_after_reject`` (:func:`~hybrid_node.loop.core.propose`)
    stay bools; all three are part of the graph's key (:func:`graph_control`). The ratio bounds of
    large gains are inputs as well (:attr:`ratio_bounds`).

    Attributes:
        floor: whether ``min_step`` is positive.
        ratio_low, ratio_high: :attr:`~hybrid_node.loop.core.StepControl.ratio_bounds` of the
            solve's controller, or 0 and inf where it has none (a clamp that changes no ratio).
    """

    floor: bool = False
    ratio_low: Any = 0.0
    ratio_high: Any = math.inf

    @property
    def has_min_step(self) -> bool:
        return self.floor

    @property
    def ratio_bounds(self) -> tuple[Any, Any]:
        return self.ratio_low, self.ratio_high


#: the fields of a step control (read once: the compiler does not trace ``dataclasses.fields``)
_CONTROL_FIELDS = tuple(f.name for f in dataclasses.fields(core.StepControl))

#: the controller's numbers that a graph takes as inputs, named as in :class:`InputControl`
_NUMBERS = ("min_step", "max_step", "max_num_steps", "e1", "e2", "e3", "safety", "ifactor", "dfactor")

#: where :func:`settings_vector` puts each setting
_SETTINGS = ("first_step", *_NUMBERS, "ratio_low", "ratio_high")

#: what :func:`graph_control` puts in place of each number that is an input (never read by a graph)
_PLACEHOLDERS: dict[str, Any] = dict.fromkeys(_NUMBERS, 0.0) | {"max_step": math.inf, "max_num_steps": 0}


@functools.lru_cache(maxsize=64)
def graph_control(c: core.StepControl) -> core.StepControl:
    """``c`` with the numbers a graph takes as inputs (:func:`settings_vector`) set to placeholders:
    the graph's closure and key, equal for controls that differ only in those numbers.

    ``min_step`` keeps whether it is positive (1.0 or 0.0), a static branch of the step decision: a
    solve with a floor and one without are two graphs; floors of other sizes share one. So do
    ``keep_after_accept`` and ``hold_after_reject`` (``shrink_after_accept`` and
    ``grow_after_reject``), which choose the proposal's operations.
    """
    return dataclasses.replace(c, **(_PLACEHOLDERS | {"min_step": float(c.has_min_step)}))


def with_settings(c: core.StepControl, settings: torch.Tensor) -> core.StepControl:
    """Inside the graph: the :func:`graph_control` ``c`` with the values of the :func:`settings_vector`
    ``settings`` (an :class:`InputControl`). The decisions are the eager ones: a comparison, clamp,
    product or power against a float64 0-d tensor rounds as against the same Python float (the host
    loop's float64 arithmetic, :func:`~hybrid_node.loop.core.propose`'s order of operations), and
    ``max_num_steps`` is exact in float64 (at most 2**53)."""
    values = {name: getattr(c, name) for name in _CONTROL_FIELDS}
    # copies: the loop lifts each value it reads as an input of its own, and refuses views of one tensor
    for name in _NUMBERS:
        values[name] = settings[_SETTINGS.index(name)].clone()
    low, high = (settings[_SETTINGS.index(name)].clone() for name in ("ratio_low", "ratio_high"))
    return InputControl(**values, floor=c.has_min_step, ratio_low=low, ratio_high=high)


#: (settings, device) -> the float64 vector :func:`settings_vector` gives (one per combination in use)
_SETTINGS_TENSORS: dict = {}
_SETTINGS_MAX = 32


def settings_vector(controller: PIDController, c: core.StepControl, like: torch.Tensor) -> torch.Tensor:
    """The step settings and the controller's numbers as one float64 input of a graph, on ``like``'s
    device, ordered as ``_SETTINGS``: (first step, min_step, max_step, max_num_steps, e1, e2, e3,
    safety, ifactor, dfactor, ratio_low, ratio_high).

    As Python floats they were constants of the graph, each new value a compilation of the whole
    solve (5 s for a small MLP, 17 s at 2000 steps); a vector, not 0-d tensors, which would restart
    Dynamo's analysis (see :func:`~hybrid_node.loop.whole.pack`). The given first step is clamped to
    [min_step, max_step] as :func:`~hybrid_node.loop.host.first_step` clamps it; 0 where the graph
    computes Hairer's. The exponents are ``c``'s, computed on the host as the eager solver computes
    them (:meth:`~hybrid_node.controllers.PIDController.exponents`), so the graph's powers are the
    eager ones; the ratio bounds are ``c.ratio_bounds``, or (0, inf). Cached per value and device, as
    :func:`tolerance_tensor` caches tolerances.

    Args:
        controller: the PID settings (``max_num_steps`` at most 2**53, exact in float64).
        c: its step-control constants (:meth:`~hybrid_node.loop.core.StepControl.of`, before
            :func:`graph_control`).
        like: a tensor on the solve's device.

    Returns:
        The (12,) float64 vector.
    """
    lo, hi = float(controller.min_step), float(controller.max_step)
    first = 0.0 if controller.first_step is None else min(max(float(controller.first_step), lo), hi)
    bounds = c.ratio_bounds or (0.0, math.inf)
    values = (first, *(float(getattr(c, name)) for name in _NUMBERS), *bounds)
    key = (values, like.device)
    return memoized(
        _SETTINGS_TENSORS,
        key,
        lambda: torch.tensor(values, dtype=torch.float64, device=like.device),
        _SETTINGS_MAX,
    )
