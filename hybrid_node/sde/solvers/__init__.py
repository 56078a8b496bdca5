"""The SDE method registry: method name -> solver factory, and the default method per SDE.

The one place where SDE method names live; sdeint, its error messages and the docs read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..._registry import did_you_mean, refuse_unknown_options
from .._sde import NOISE_TYPES, SDE_TYPES
from .base import SDESolver as SDESolver
from .euler import EulerMaruyama as EulerMaruyama
from .heun import EulerHeun as EulerHeun
from .heun import Heun as Heun
from .heun import Midpoint as Midpoint
from .log_ode import LogODEMidpoint as LogODEMidpoint
from .milstein import Milstein as Milstein
from .reversible_heun import ReversibleHeun as ReversibleHeun
from .srk import SRK as SRK

#: method name -> (factory(sde_type, options) -> solver, option names it takes)
METHODS: Mapping[str, tuple[Callable[..., SDESolver], tuple[str, ...]]] = {
    "euler": (lambda sde_type, **o: EulerMaruyama(), ()),
    "milstein": (
        lambda sde_type, grad_free=False: Milstein(sde_type=sde_type, grad_free=bool(grad_free)),
        ("grad_free",),
    ),
    "srk": (lambda sde_type, **o: SRK(), ()),
    "euler_heun": (lambda sde_type, **o: EulerHeun(), ()),
    "heun": (lambda sde_type, **o: Heun(), ()),
    "midpoint": (lambda sde_type, **o: Midpoint(), ()),
    "reversible_heun": (lambda sde_type, **o: ReversibleHeun(), ()),
    "log_ode": (lambda sde_type, **o: LogODEMidpoint(), ()),
}

#: the method used when none is given (torchsde's defaults)
DEFAULT_METHOD = {
    ("ito", "diagonal"): "srk",
    ("ito", "additive"): "srk",
    ("ito", "scalar"): "srk",
    ("ito", "general"): "euler",
    ("stratonovich", "diagonal"): "midpoint",
    ("stratonovich", "additive"): "midpoint",
    ("stratonovich", "scalar"): "midpoint",
    ("stratonovich", "general"): "midpoint",
}


def build_solver(method: str, sde_type: str, noise_type: str, options: Mapping[str, Any]) -> SDESolver:
    """The solver for ``method``, checked against the SDE it will solve.

    Args:
        method: a method name (a key of METHODS).
        sde_type, noise_type: of the SDE.
        options: method options (e.g. ``{"grad_free": True}`` for milstein).

    Returns:
        The solver object.

    Raises:
        ValueError: an unknown method or option, or a method that does not converge for this SDE type or
            noise type (the message names the methods that do).
    """
    if method not in METHODS:
        raise ValueError(
            f"unknown SDE method {method!r}; choose one of {sorted(METHODS)}." + did_you_mean([method], METHODS)
        )
    factory, option_names = METHODS[method]
    refuse_unknown_options(options, option_names, method)
    solver = factory(sde_type, **options)
    fits = [
        m
        for m, (f, _) in METHODS.items()
        if sde_type in f(sde_type).sde_types and noise_type in f(sde_type).noise_types
    ]
    if sde_type not in solver.sde_types:
        raise ValueError(
            f"method {method!r} solves {'/'.join(solver.sde_types)} SDEs but sde_type is {sde_type!r}; "
            f"use one of {fits}, or convert the SDE (Ito drift = Stratonovich drift + 1/2 (dg/dy) g)."
        )
    if noise_type not in solver.noise_types:
        raise ValueError(
            f"method {method!r} supports noise types {solver.noise_types} but noise_type is {noise_type!r}; "
            f"for {sde_type} SDEs with {noise_type} noise use one of {fits}."
        )
    return solver


def check_sde_settings(
    method: str | None, sde_type: str, noise_type: str, options: Mapping[str, Any] | None = None
) -> None:
    """Check an SDE model's solver settings where they are stored, before the first solve.

    Args:
        method: a method name, or None for the default of the SDE type and noise type.
        sde_type, noise_type: of the SDE the model will solve.
        options: method options.

    Raises:
        ValueError: an unknown SDE type, noise type, method or option (the message names the closest
            valid one), or a method that does not converge for this SDE (as :func:`build_solver`).
    """
    for name, value, valid in (("sde_type", sde_type, SDE_TYPES), ("noise_type", noise_type, NOISE_TYPES)):
        if value not in valid:
            raise ValueError(f"{name} must be one of {list(valid)}, got {value!r}." + did_you_mean([value], valid))
    build_solver(
        DEFAULT_METHOD[(sde_type, noise_type)] if method is None else method, sde_type, noise_type, options or {}
    )
