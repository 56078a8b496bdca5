"""An empirical prior on a latent ODE's z0: the aggregate posterior of a set of series.

The generative model of :class:`~hybrid_node.nn.latent_ode.LatentODE` puts N(0, I) on z0, which knows
nothing about which initial states the data use. Replacing it by the aggregate posterior of the
training series, here the equal-weight mixture of point masses at their z0s (empirical Bayes),
turns inference into an exact, finite sum: the posterior weight of anchor i given a series x is
proportional to p(x | z_i), and the posterior mean of any decoded trajectory is the weighted mean of
the anchors' trajectories, which minimises the expected squared error under that prior. It reads only
the observed points of x, like the encoder.

References:
    M. D. Hoffman, M. J. Johnson, "ELBO surgery: yet another way to carve up the variational evidence
    lower bound", NIPS 2016 Workshop on Advances in Approximate Bayesian Inference (the aggregate
    posterior is the prior that maximises the ELBO).
    J. M. Tomczak, M. Welling, "VAE with a VampPrior", AISTATS 2018 (mixtures of posteriors as prior).
"""

from __future__ import annotations

import dataclasses

import torch

from ..irregular import IrregularBatch, union_grid_in
from ._checks import positive_int
from .latent_ode import DEFAULT_REFINE_LR, LatentODE, refuse_lr_without_refinement

Tensor = torch.Tensor


@dataclasses.dataclass(frozen=True)
class EmpiricalPrior:
    """Equal point masses at ``anchors`` as the prior on z0 of a latent ODE.

    Attributes:
        anchors: (N, latent_dim) finite z0s, typically the encoder's posterior means of training series.

    Raises:
        ValueError: for an empty, non-2-D or non-finite ``anchors``.
    """

    anchors: Tensor

    def __post_init__(self) -> None:
        a = self.anchors
        if not isinstance(a, Tensor) or a.ndim != 2 or a.shape[0] == 0:
            raise ValueError("EmpiricalPrior needs anchors of shape (N, latent_dim) with N >= 1.")
        if not bool(torch.isfinite(a).all()):
            raise ValueError("EmpiricalPrior anchors must be finite (NaN or inf found).")

    @classmethod
    def from_series(
        cls,
        model: LatentODE,
        batch: IrregularBatch,
        t0: float | Tensor = 0.0,
        refine_steps: int = 0,
        refine_lr: float = DEFAULT_REFINE_LR,
    ) -> EmpiricalPrior:
        """Anchors at the z0s a trained model infers for ``batch`` (its posterior means, or with
        ``refine_steps`` > 0 the z0s :meth:`LatentODE.refine_z0` reaches).

        Args:
            model: the trained latent ODE.
            batch: the series whose aggregate posterior becomes the prior (the training set).
            t0: time of z0.
            refine_steps, refine_lr: optional refinement of each anchor towards its posterior mode.

        Returns:
            The prior, one anchor per series of ``batch``.

        Raises:
            ValueError: a ``refine_lr`` away from its default without refinement steps (it would change
                nothing), or as :meth:`LatentODE.refine_z0`.
        """
        refuse_lr_without_refinement(refine_steps, refine_lr)
        *_, z0 = model.refine_z0(batch, refine_steps, refine_lr, t0)
        return cls(z0)

    def _check(self, model: LatentODE) -> None:
        if self.anchors.shape[1] != model.latent_dim:
            raise ValueError(
                f"anchors have {self.anchors.shape[1]} latent dimensions but the model has {model.latent_dim}."
            )

    @torch.no_grad()
    def log_likelihoods(
        self, model: LatentODE, batch: IrregularBatch, t0: float | Tensor = 0.0, chunk: int = 64
    ) -> Tensor:
        """log p(x_b | z_i) of every series b of ``batch`` under every anchor i (no gradients).

        One batched solve of the anchors on the union of the batch's observation times; each series
        then reads its own times (Gaussian term, plus the Poisson process term for models with one).

        Args:
            model: the latent ODE whose generative model scores the series.
            batch: observed series.
            t0: time of z0.
            chunk: series scored at once (bounds memory at chunk x N x L x state).

        Returns:
            (B, N) log-likelihoods.

        Raises:
            TypeError, ValueError: ``chunk`` is not a positive int.
            ValueError: when the anchors' latent size differs from the model's.
        """
        self._check(model)
        positive_int("chunk", chunk)  # range() would reject 0 with a message that names no argument
        anchors = self.anchors.to(batch.values)  # dtype and device
        union, index = union_grid_in(batch, anchors.dtype)  # the solve runs in the anchors' dtype
        states = model.latent_trajectory(anchors, union, t0)  # (U, N, S)
        n = self.anchors.shape[0]
        rows = []
        for lo in range(0, batch.batch_size, chunk):
            idx = index[lo : lo + chunk]  # (b, L)
            s = states[idx].permute(2, 0, 1, 3)  # (N, b, L, S)
            flat = s.reshape(-1, *s.shape[2:])  # (N b, L, S)

            def tile(x: Tensor) -> Tensor:
                return x.expand(n, *x.shape).reshape(-1, *x.shape[1:])

            loglik, poisson = model.log_likelihood_of_states(
                flat, tile(batch.values[lo : lo + chunk]), tile(batch.mask[lo : lo + chunk])
            )
            rows.append((loglik if poisson is None else loglik + poisson).reshape(n, -1).T)
        return torch.cat(rows)

    def posterior(self, model: LatentODE, batch: IrregularBatch, t0: float | Tensor = 0.0) -> Tensor:
        """(B, N) posterior probabilities of the anchors given each series (rows sum to one)."""
        return torch.softmax(self.log_likelihoods(model, batch, t0), dim=-1)

    @torch.no_grad()
    def predict(self, model: LatentODE, batch: IrregularBatch, times: Tensor, t0: float | Tensor = 0.0) -> Tensor:
        """Posterior mean of the decoded trajectory at shared ``times`` (T,) for every series.

        Args:
            model: the trained latent ODE.
            batch: observed series (only their observed points are read).
            times: output times, sorted, none before ``t0``.
            t0: time of z0.

        Returns:
            (B, T, obs_dim) predictions.
        """
        weights = self.posterior(model, batch, t0)
        return torch.einsum("bn,ntd->btd", weights, model.decode(self.anchors.to(batch.values), times, t0))
