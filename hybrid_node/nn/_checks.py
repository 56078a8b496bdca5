"""Argument checks shared by the model constructors, so a bad size or scale fails where it is given
(naming the argument) rather than later inside ``torch.empty`` or a forward pass."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._registry import METHOD_SPECS, build_solver, check_solve_settings
from ..controllers import ConstantStepSize


def positive_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int, checked to be at least ``minimum``.

    Args:
        name: how the message names the argument, e.g. "dim".
        value: the argument given.
        minimum: the smallest allowed value (1 for sizes, 0 for counts that may be zero).

    Returns:
        ``value`` unchanged (an int).

    Raises:
        TypeError: ``value`` is not an int (a bool or a float is refused: ``True`` would build a size-1
            layer and ``2.0`` fails deep inside torch).
        ValueError: ``value`` is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    if value < minimum:
        kind = "positive" if minimum == 1 else ">= 0 (non-negative)" if minimum == 0 else f">= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value}.")
    return value


def positive_float(name: str, value: object) -> float:
    """``value`` as a float, checked to be finite and positive.

    Args:
        name: how the message names the argument, e.g. "obs_std".
        value: the argument given.

    Returns:
        ``float(value)``.

    Raises:
        TypeError: ``value`` is not a real number (a bool is refused).
        ValueError: ``value`` is NaN, infinite, zero or negative.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}.")
    return float(value)


def positive_tolerance(name: str, value: object) -> None:
    """Refuse a solver tolerance that is not a finite positive real number.

    A bool is an int to Python (True would be a tolerance of 1), and an infinite tolerance disables the
    error control; both are refused, as is anything that is not a number, with one ValueError.

    Args:
        name: how the message names the tolerance, e.g. "rtol" or "CNFSolver.atol".
        value: the tolerance given.

    Raises:
        ValueError: ``value`` is not an int or float, is a bool, or is NaN, infinite, zero or negative.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}.")


def nonfinite_rows(x: torch.Tensor) -> str | None:
    """The rows of a ``(batch, D)`` tensor that hold a NaN or an infinity, as a message names them.

    Args:
        x: the points.

    Returns:
        "rows 0, 3, ..." (the first five, "..." when there are more), or None where every row is finite.
    """
    bad = ~torch.isfinite(x).all(dim=1)
    if not bad.any():
        return None
    rows = bad.nonzero().flatten().tolist()
    return "rows " + ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")


def check_dtype(module: torch.nn.Module, x: torch.Tensor, name: str) -> None:
    """Refuse a floating-point ``x`` whose dtype is not that of ``module``'s parameters.

    Without this the first layer fails with torch's "mat1 and mat2 must have the same dtype" (or, for
    an integer tensor, advises converting the model to an integer dtype).

    Raises:
        TypeError: ``x`` is not floating-point, or its dtype differs from the parameters'.
    """
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; use {name}.float().")
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    if param is not None and param.dtype != x.dtype:
        raise TypeError(
            f"{type(module).__name__}'s parameters are {param.dtype} but {name} is {x.dtype}; convert one to "
            f"the other, e.g. {name}.to({param.dtype}) or model.to({x.dtype})."
        )


def check_series_batch(module: torch.nn.Module, batch, obs_dim: int) -> None:
    """Refuse an :class:`~hybrid_node.irregular.IrregularBatch` that ``module`` (built for ``obs_dim``
    channels) cannot read: another number of channels, or values of another dtype than its parameters.

    Without this a recurrent cell failed with "input has inconsistent input_size: got 4 expected 6"
    (twice the channels: values and mask), or a matrix product with a dtype clash.

    Raises:
        ValueError: the batch has another number of channels than ``obs_dim``.
        TypeError: its values are not of the parameters' dtype.
    """
    name = type(module).__name__
    if batch.obs_dim != obs_dim:
        raise ValueError(
            f"{name} was built for obs_dim={obs_dim} channels, but the batch has {batch.obs_dim} (values of shape "
            f"{tuple(batch.values.shape)}; expected (batch, time, {obs_dim})). Build it with obs_dim={batch.obs_dim}, "
            f"or pass series with {obs_dim} channels."
        )
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    if param is not None and param.dtype != batch.values.dtype:
        raise TypeError(
            f"{name}'s parameters are {param.dtype} but the batch holds {batch.values.dtype} values; convert one "
            f"to the other, e.g. batch.to({param.dtype}) or model.to({batch.values.dtype})."
        )


def no_single_forward(model: torch.nn.Module, methods: tuple[str, ...]) -> NotImplementedError:
    """The error of calling a model that has several entry points and no ``forward``.

    torch's own message ("missing the required forward function") names none of them, and a user's
    ``torch.compile(model)`` leads straight to that call.

    Args:
        model: the model called.
        methods: its entry points, the first being the one to suggest compiling.

    Returns:
        The error to raise, naming the methods and how to compile one.
    """
    name = type(model).__name__
    listed = ", ".join(f"{name}.{m}(...)" for m in methods)
    return NotImplementedError(
        f"{name} has no single forward pass: call one of {listed}. To compile one, compile the bound method, "
        f"e.g. torch.compile(model.{methods[0]}), or a function of yours that calls it."
    )


def refuse_inert_tolerances(
    owner: str, method: str, options: Any, given: dict[str, float], defaults: dict[str, float]
) -> None:
    """Refuse tolerances set away from their defaults for a method that takes fixed steps.

    A fixed-step solve measures no local error, so its tolerances change nothing (unless the method
    iterates a corrector to them, as the implicit Adams methods do: their solver is then built
    differently, and the tolerances are kept). ``odeint`` accepts them for torchdiffeq's callers, who
    pass them unconditionally; a model's constructor is not such a drop-in, and a tolerance given
    there looks like it tightens the solve.

    Args:
        owner: how the message names the model, e.g. "ODERNN".
        method, options: the model's solve settings (already checked by ``check_solve_settings``); a
            method only the Julia backend has is not checked here (its names are Julia's).
        given: the tolerances given, by name ("rtol", "atol").
        defaults: the model's defaults for them, by name; a value equal to its default is not refused.

    Raises:
        ValueError: a tolerance is away from its default and the method takes fixed steps.
    """
    changed = sorted(name for name, value in given.items() if value != defaults[name])
    spec = METHOD_SPECS.get(method)
    if not changed or spec is None or spec.solver is None:
        return
    solver, controller, _ = build_solver(method, options, float(given["rtol"]), float(given["atol"]))
    at_default = build_solver(method, options, float(defaults["rtol"]), float(defaults["atol"]))[0]
    if isinstance(controller, ConstantStepSize) and solver == at_default:
        settings = ", ".join(f"{name}={given[name]!r}" for name in changed)
        raise ValueError(
            f"{owner}: {settings} have no effect, because method {method!r} takes fixed steps and measures no "
            f"error; drop {' and '.join(changed)}, or choose an adaptive method such as 'dopri5'."
        )


def model_solve_options(
    owner: str, method: str, options: Any, rtol: float, atol: float, defaults: dict[str, float]
) -> dict[str, Any] | None:
    """Check a model's solve settings when it is built, and the options it keeps.

    Args:
        owner: how messages name the model, e.g. "ODERNN".
        method, options, rtol, atol: the settings given to the model's constructor.
        defaults: the model's default tolerances, by name ("rtol", "atol").

    Returns:
        A copy of ``options`` (None for None): the caller's dict, changed later, would change the solves
        unchecked (assigning ``model.options`` is the way to change them).

    Raises:
        ValueError, TypeError: an unknown method or option (as ``check_solve_settings`` says), or a
            tolerance away from its default for a method that takes fixed steps
            (:func:`refuse_inert_tolerances`).
    """
    check_solve_settings(method, options)  # a misspelt name failed only at the first forward pass
    # rk4 with a tighter rtol ran the same fixed steps as with the default: a tolerance that looked used
    refuse_inert_tolerances(owner, method, options, {"rtol": rtol, "atol": atol}, defaults)
    return None if options is None else dict(options)
