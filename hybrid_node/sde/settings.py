"""torchsde's ``settings``: the names of noise types, SDE types, methods and Levy area approximations.

Each is a class of string constants (``NOISE_TYPES.diagonal == "diagonal"``) that also answers ``in`` and
``all()``, as torchsde's do, so that code written against ``torchsde.settings`` runs unchanged. The values
are the ones hybrid_node's registries accept (``tests/test_sde_torchsde_api.py`` keeps them in step).
"""

from __future__ import annotations


class ContainerMeta(type):
    """A class of string constants that answers ``item in cls``, ``cls.all()`` and ``str(cls)``."""

    def all(cls) -> list[str]:
        """The constants' values, sorted."""
        return sorted(getattr(cls, x) for x in dir(cls) if not x.startswith("__"))

    def __str__(cls) -> str:
        return str(cls.all())

    def __contains__(cls, item: object) -> bool:
        return item in cls.all()


class METHODS(metaclass=ContainerMeta):
    """The ``method`` names of sdeint (and ``adjoint_reversible_heun``, an ``adjoint_method``)."""

    euler = "euler"
    milstein = "milstein"
    srk = "srk"
    midpoint = "midpoint"
    reversible_heun = "reversible_heun"
    adjoint_reversible_heun = "adjoint_reversible_heun"
    heun = "heun"
    log_ode_midpoint = "log_ode"
    euler_heun = "euler_heun"


class NOISE_TYPES(metaclass=ContainerMeta):  # noqa: N801 (torchsde's name)
    """The ``noise_type`` values of an SDE."""

    general = "general"
    diagonal = "diagonal"
    scalar = "scalar"
    additive = "additive"


class SDE_TYPES(metaclass=ContainerMeta):  # noqa: N801 (torchsde's name)
    """The ``sde_type`` values of an SDE."""

    ito = "ito"
    stratonovich = "stratonovich"


class LEVY_AREA_APPROXIMATIONS(metaclass=ContainerMeta):  # noqa: N801 (torchsde's name)
    """The ``levy_area_approximation`` values of a Brownian motion."""

    none = "none"  # W only
    space_time = "space-time"  # also the space-time Levy area (U), for srk
    davie = "davie"  # also Davie's approximate Levy area, for log_ode
    foster = "foster"  # also Foster's approximate Levy area, for log_ode


class METHOD_OPTIONS(metaclass=ContainerMeta):  # noqa: N801 (torchsde's name)
    """The keys of sdeint's ``options``."""

    grad_free = "grad_free"
