"""The rate of the path KL term of ``logqp``, and the stage states a method integrates it at."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .._autocast import full_precision
from ._sde import SDEView


def rate_from(sde: SDEView, t: float, y: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """1/2 |u|^2 with g u = f - h, from a drift f and diffusion g already evaluated at (t, y).

    Args:
        sde: the SDE with a prior drift h (evaluated here); t: time; y: state (batch, d);
        f, g: the drift and diffusion matrix at (t, y).

    Returns:
        (batch,).

    Reference:
        X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud, "Scalable Gradients for Stochastic Differential
        Equations", AISTATS 2020, section 5 (latent SDE, eq. 10).
    """
    diff = f - sde.h(t, y)
    if sde.noise_type == "diagonal":
        u = diff / g
    else:
        # The least-squares u of least norm, g^+ (f - h), as torchsde's g.pinverse(). torch.linalg.lstsq's
        # CPU driver (gelsy) returned u = 0 for most rows of a batch whose g had a zero column (a noise
        # channel the state does not use): the KL integrals were 99.6-100 % too small. CUDA's driver (gels)
        # assumes full rank.
        with full_precision(g.device.type):  # the library's product: not in autocast's lower dtype
            u = (torch.linalg.pinv(g) @ diff.unsqueeze(-1)).squeeze(-1)
    return 0.5 * (u * u).sum(-1)


def logqp_rate(sde: SDEView, t: float, y: torch.Tensor) -> torch.Tensor:
    """1/2 |u|^2 with g u = f - h: the rate of KL(posterior path || prior path) (Girsanov).

    Args:
        sde: the SDE with a prior drift h; t: time; y: state (batch, d).

    Returns:
        (batch,).

    Reference:
        X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud, "Scalable Gradients for Stochastic Differential
        Equations", AISTATS 2020, section 5 (latent SDE, eq. 10).
    """
    f, g = sde.f_and_g(t, y)
    return rate_from(sde, t, y, f, g)


@contextlib.contextmanager
def stage(sde: SDEView, t: float, y: torch.Tensor, kl: bool) -> Iterator[None]:
    """Within the block f and g at (t, y) are evaluated once for the step and the KL rate (when ``kl``).

    A method integrates the KL state dk = rate(t, y) dt, which has no diffusion, with the stages it
    integrates the drift with; the rate at a stage then needs only the prior drift h on top of the stage's
    own f and g (:meth:`~hybrid_node.sde._sde.SDEView.reusing`).

    Args:
        sde: the SDE; t: the stage's time (a float); y: the stage's state; kl: whether the rate is wanted.
    """
    if not kl:
        yield
        return
    with sde.reusing(t, y):
        yield
