"""Map torchdiffeq-style method names and options to solver and controller objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .controllers import ConstantStepSize, PIDController
from .solvers import METHODS
from .solvers.implicit import IMPLICIT_METHODS

ADAPTIVE_OPTIONS = (
    "first_step",
    "safety",
    "ifactor",
    "dfactor",
    "max_num_steps",
    "step_t",
    "jump_t",
    "norm",
    "dtype",
    "min_step",
    "max_step",
    "pcoeff",
    "icoeff",
    "dcoeff",
    "per_sample",
    "compile",
    "device_loop",
    "sync_every",
)
FIXED_OPTIONS = ("step_size", "grid_constructor", "perturb", "interp", "dtype", "compile")


def build_solver(method: str | None, options: Mapping[str, Any] | None, rtol, atol):
    """Map torchdiffeq-style ``method`` and ``options`` to (solver, controller, extras).

    Returns:
        solver, controller, and a dict with ``jump_t``, ``step_t``, ``t_dtype``.

    Raises:
        ValueError: for an unknown method or option (the message lists the valid ones).
    """
    method = "dopri5" if method is None else method
    options = dict(options or {})
    table = {**METHODS, **IMPLICIT_METHODS}
    if method not in table:
        raise ValueError(f"Unknown method {method!r}. Valid methods: {', '.join(sorted(table))}.")
    factory, solver_keys = table[method]
    solver_kwargs = {k: options.pop(k) for k in solver_keys if k in options}
    if method == "scipy_solver":
        solver = factory(**solver_kwargs)
        valid = solver_keys + ("dtype",)
        unknown = set(options) - set(valid)
        if unknown:
            raise ValueError(
                f"Unknown options {sorted(unknown)} for method 'scipy_solver'. Valid options: {list(valid)}."
            )
        return solver, PIDController(rtol=rtol, atol=atol), {"t_dtype": options.get("dtype")}
    if method in ("implicit_adams", "fixed_adams"):
        solver_kwargs.setdefault("rtol", rtol if isinstance(rtol, float) else 1e-7)
        solver_kwargs.setdefault("atol", atol if isinstance(atol, float) else 1e-9)
    solver = factory(**solver_kwargs)
    if solver.adaptive and hasattr(solver, "fixed_steps") and ({"step_size", "grid_constructor"} & set(options)):
        solver = solver.fixed_steps()  # e.g. trbdf2: torchdiffeq's fixed-step meaning when a step is given
    extras = {"t_dtype": options.pop("dtype", None), "jump_t": (), "step_t": ()}
    if options.pop("compile", False):
        if not hasattr(solver, "compiled"):
            raise ValueError(
                f"options['compile'] is available for the explicit Runge-Kutta methods only, not "
                f"{method!r}; drop the option for this method."
            )
        solver = solver.compiled()
    if solver.adaptive:
        valid = ADAPTIVE_OPTIONS + solver_keys
        unknown = set(options) - set(valid)
        if unknown:
            raise ValueError(
                f"Unknown options {sorted(unknown)} for method {method!r}. Valid options: {sorted(valid)}."
            )
        for key in ("jump_t", "step_t"):
            if key in options:
                extras[key] = tuple(
                    float(x) for x in torch.as_tensor(options.pop(key), dtype=torch.float64).reshape(-1)
                )
        controller = PIDController(rtol=rtol, atol=atol, **options)
    else:
        valid = FIXED_OPTIONS + solver_keys
        unknown = set(options) - set(valid)
        if unknown:
            raise ValueError(
                f"Unknown options {sorted(unknown)} for method {method!r}. Valid options: {sorted(valid)}."
            )
        if "step_size" in options and options["step_size"] is not None:
            options["step_size"] = float(options["step_size"])
        controller = ConstantStepSize(**options)
    return solver, controller, extras
