"""torchsde's SDE base classes: ``nn.Module``s that carry a checked ``noise_type`` and ``sde_type``.

sdeint accepts any object with ``f``/``g`` (or their variants) and the two attributes; these classes are
for code written against ``torchsde.BaseSDE``, ``torchsde.SDEIto`` and ``torchsde.SDEStratonovich``.
"""

from __future__ import annotations

import abc

from torch import nn

from ._sde import NOISE_TYPES, SDE_TYPES


class BaseSDE(abc.ABC, nn.Module):
    """Base class of an SDE: checks and stores ``noise_type`` and ``sde_type`` (torchsde's signature).

    Subclasses define the drift ``f(t, y)`` and the diffusion ``g(t, y)`` (or ``f_and_g``, ``g_prod``, ...).

    Args:
        noise_type: one of "diagonal", "additive", "scalar", "general".
        sde_type: "ito" or "stratonovich".

    Raises:
        ValueError: an unknown noise_type or sde_type.
    """

    def __init__(self, noise_type: str, sde_type: str):
        super().__init__()
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"Expected noise type in {list(NOISE_TYPES)}, but found {noise_type!r}.")
        if sde_type not in SDE_TYPES:
            raise ValueError(f"Expected sde type in {list(SDE_TYPES)}, but found {sde_type!r}.")
        # plain attributes, not properties: sdeint reads them with getattr, and torchsde's are attributes too
        self.noise_type = noise_type
        self.sde_type = sde_type


class SDEIto(BaseSDE):
    """An Ito SDE (``sde_type="ito"``).

    Args:
        noise_type: one of "diagonal", "additive", "scalar", "general".
    """

    def __init__(self, noise_type: str):
        super().__init__(noise_type=noise_type, sde_type="ito")


class SDEStratonovich(BaseSDE):
    """A Stratonovich SDE (``sde_type="stratonovich"``).

    Args:
        noise_type: one of "diagonal", "additive", "scalar", "general".
    """

    def __init__(self, noise_type: str):
        super().__init__(noise_type=noise_type, sde_type="stratonovich")
