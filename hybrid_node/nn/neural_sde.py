"""Neural SDE layers: a learned SDE as a module, and the latent SDE of Li et al. 2020 with its ELBO.

References:
    X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud, "Scalable Gradients for Stochastic Differential
    Equations", AISTATS 2020 (the latent SDE, section 5; the KL between path measures, eq. 10).
    B. Tzen, M. Raginsky, "Neural Stochastic Differential Equations", 2019 (the posterior/prior SDE pair).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from ..sde import sdeint, sdeint_adjoint
from ..sde.solvers import check_sde_settings
from ._checks import check_dtype, positive_float, positive_int

Tensor = torch.Tensor


def _sample_count(n: int) -> int:
    """``n`` paths to draw, checked: a negative or fractional count failed inside ``torch.randn``.

    Raises:
        ValueError: ``n`` is not a positive int.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n (the number of sample paths) must be a positive int, got {n!r}.")
    return n


class DiagonalDiffusion(nn.Module):
    """A diagonal diffusion g_i(z_i): one small MLP 1 -> hidden -> 1 per component, all evaluated at once.

    Diagonal noise needs g_i to depend on z_i only (the Milstein and SRK corrections, and the adjoint's
    Ito-Stratonovich conversion, rely on it); a softplus keeps it positive.

    Args:
        dim: state size; hidden: width of each component's MLP; scale: initial size of g.

    Raises:
        TypeError, ValueError: ``dim`` or ``hidden`` is not a positive int, or ``scale`` is not a finite
            positive number.
    """

    def __init__(self, dim: int, hidden: int = 16, scale: float = 0.1):
        super().__init__()
        positive_int("dim", dim)
        positive_int("hidden", hidden)
        scale = positive_float("scale", scale)
        self.w1 = nn.Parameter(torch.randn(dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(dim, hidden))
        self.w2 = nn.Parameter(torch.randn(dim, hidden) / math.sqrt(hidden))
        # softplus^-1(scale) = log(expm1(scale)), written so that expm1 cannot overflow (scale > ~709)
        self.b2 = nn.Parameter(torch.full((dim,), scale + math.log(-math.expm1(-scale))))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = torch.tanh(z.unsqueeze(-1) * self.w1 + self.b1)
        return nn.functional.softplus((h * self.w2).sum(-1) + self.b2)


class _FieldSDE:
    """The torchsde-style object sdeint reads: f, g (and optionally h) plus the noise and SDE types."""

    def __init__(self, f, g, noise_type: str, sde_type: str, h=None):
        self.f, self.g, self.noise_type, self.sde_type = f, g, noise_type, sde_type
        if h is not None:
            self.h = h


class NeuralSDE(nn.Module):
    """dy = drift(t, y) dt + diffusion(t, y) dW as a layer: ``layer(y0, ts) -> ys`` of shape (len(ts), batch, d).

    Args:
        drift: module ``drift(t, y) -> (batch, d)``.
        diffusion: module ``diffusion(t, y)``: (batch, d) for diagonal noise, (batch, d, m) otherwise.
        noise_type, sde_type: as for :func:`hybrid_node.sdeint`.
        method, dt: solver and step (default: torchsde's default method for the SDE, dt 1e-2).
        adjoint: gradients by :func:`hybrid_node.sdeint_adjoint` (O(len(ts)) memory).

    Raises:
        TypeError: ``drift`` or ``diffusion`` is not callable, or ``adjoint`` is not a bool.
        ValueError: ``dt`` is not a finite positive number; an unknown noise type, SDE type or method
            (the message names the closest valid one), or a method that does not solve this SDE; or
            ``adjoint`` is set and ``drift`` or ``diffusion`` is a plain callable (not an ``nn.Module``),
            whose tensors the adjoint would leave without gradients.
    """

    def __init__(
        self,
        drift: nn.Module,
        diffusion: nn.Module,
        noise_type: str = "diagonal",
        sde_type: str = "ito",
        method: str | None = None,
        dt: float = 1e-2,
        adjoint: bool = False,
    ):
        super().__init__()
        for name, value in (("drift", drift), ("diffusion", diffusion)):
            if not callable(value):
                raise TypeError(f"{name} must be callable as {name}(t, y), got {type(value).__name__}.")
        if not isinstance(adjoint, bool):  # a string such as "no" would be truthy and pick the adjoint
            raise TypeError(f"adjoint must be True or False, got {adjoint!r}.")
        dt = positive_float("dt", dt)
        check_sde_settings(method, sde_type, noise_type)  # a misspelt name failed only at the first forward pass
        self.drift, self.diffusion = drift, diffusion
        self.noise_type, self.sde_type, self.method, self.dt, self.adjoint = noise_type, sde_type, method, dt, adjoint
        self._refuse_hidden_parameters()

    def _refuse_hidden_parameters(self) -> None:
        """Refuse a plain-callable drift or diffusion under the adjoint.

        sdeint_adjoint differentiates this module's parameters, i.e. those of the drift and diffusion
        modules; the tensors a plain callable closes over are unknown to its backward solve, whose
        gradients would stay None without a word (sdeint's direct backpropagation records them).

        Raises:
            ValueError: ``adjoint`` is set and ``drift`` or ``diffusion`` is not an ``nn.Module``.
        """
        if not self.adjoint:
            return
        for name in ("drift", "diffusion"):
            value = getattr(self, name)
            if not isinstance(value, nn.Module):
                raise ValueError(
                    f"NeuralSDE's {name} is a plain callable ({type(value).__name__}), so adjoint=True cannot know "
                    "the tensors it uses and would leave their gradients None. Wrap it in an nn.Module whose "
                    "forward uses those tensors as its nn.Parameter attributes, or use adjoint=False."
                )

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return self.drift(t, y)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        return self.diffusion(t, y)

    def forward(self, y0: Tensor, ts: Tensor | Sequence[float], bm=None) -> Tensor:
        """Sample paths from ``y0`` at ``ts``.

        Args:
            y0: initial states, shape (batch, d).
            ts: output times, 1-D.
            bm: Brownian motion over [ts[0], ts[-1]], as for :func:`hybrid_node.sdeint` (None: a new one).

        Returns:
            The paths, shape (len(ts), batch, d).

        Raises:
            ValueError: as for :func:`hybrid_node.sdeint`, and for a plain-callable drift or diffusion
                under the adjoint (checked again here: the attributes may have been replaced).
            TypeError: ``y0`` is not floating-point or not of the parameters' dtype.
        """
        self._refuse_hidden_parameters()
        if torch.is_tensor(y0):
            check_dtype(self, y0, "y0")
        solve = sdeint_adjoint if self.adjoint else sdeint
        return solve(self, y0, ts, bm=bm, method=self.method, dt=self.dt)


@dataclasses.dataclass(frozen=True)
class LatentSDELoss:
    """The terms of the latent SDE's negative ELBO (means over the batch)."""

    loss: Tensor  #: -log p(x | z) + kl_weight * (kl_z0 + kl_path), per observed value
    log_likelihood: Tensor
    kl_z0: Tensor
    kl_path: Tensor


class LatentSDE(nn.Module):
    """A latent SDE VAE: a GRU encoder, posterior and prior SDEs in latent space, a linear decoder.

    The encoder reads the observations backwards in time; its output at observation i summarises the
    observations from i on and is the context of the posterior drift f(t, z, context_i) for t in
    [t_i, t_{i+1}) (as in Li et al.), its output at the first observation gives q(z0 | x). The posterior
    drift and the prior drift h(t, z) share the diagonal diffusion g(z), so the KL between the two path
    measures is E int 1/2 |(f - h) / g|^2 dt (sdeint's ``logqp``).

    Args:
        data_dim, latent_dim, context_dim, hidden: sizes.
        obs_std: standard deviation of the Gaussian observation noise.
        method, dt: the SDE solver (Ito; default euler) and its step.
        adjoint: gradients of the ELBO by :func:`hybrid_node.sdeint_adjoint` (the stochastic adjoint of
            Li et al.: memory independent of the number of steps, gradients exact as dt -> 0).

    Raises:
        TypeError, ValueError: a size is not a positive int, ``obs_std`` or ``dt`` is not a finite
            positive number, ``adjoint`` is not a bool, or ``method`` is unknown or does not solve Ito
            SDEs with diagonal noise.
    """

    def __init__(
        self,
        data_dim: int = 1,
        latent_dim: int = 4,
        context_dim: int = 8,
        hidden: int = 32,
        obs_std: float = 0.05,
        method: str = "euler",
        dt: float = 2e-2,
        adjoint: bool = False,
    ):
        super().__init__()
        # checked here so that the message names the argument: otherwise a bad size fails inside nn.GRU or
        # torch.empty, and a non-positive obs_std only at the first forward pass, inside torch.distributions
        for name, value in (
            ("data_dim", data_dim),
            ("latent_dim", latent_dim),
            ("context_dim", context_dim),
            ("hidden", hidden),
        ):
            positive_int(name, value)
        obs_std, dt = positive_float("obs_std", obs_std), positive_float("dt", dt)
        check_sde_settings(method, "ito", "diagonal")  # the posterior and prior SDEs (_FieldSDE below)
        if not isinstance(adjoint, bool):  # a string such as "no" would be truthy and pick the adjoint
            raise TypeError(f"adjoint must be True or False, got {adjoint!r}.")
        self.encoder = nn.GRU(data_dim, hidden, batch_first=False)
        self.to_context = nn.Linear(hidden, context_dim)
        self.to_q0 = nn.Linear(hidden, 2 * latent_dim)
        self.posterior_drift = nn.Sequential(
            nn.Linear(latent_dim + context_dim + 1, hidden), nn.Softplus(), nn.Linear(hidden, latent_dim)
        )
        self.prior_drift = nn.Sequential(
            nn.Linear(latent_dim + 1, hidden), nn.Softplus(), nn.Linear(hidden, latent_dim)
        )
        self.diffusion = DiagonalDiffusion(latent_dim)
        self.decoder = nn.Linear(latent_dim, data_dim)
        self.p0_mean = nn.Parameter(torch.zeros(latent_dim))
        self.p0_logstd = nn.Parameter(torch.zeros(latent_dim))
        self.obs_std, self.method, self.dt, self.adjoint = obs_std, method, dt, adjoint

    def _check_series(self, xs: Tensor, ts: Tensor | Sequence[float]) -> Tensor:
        """``ts`` as a tensor on ``xs``'s device, after checking ``xs`` and that the shapes of ``xs`` and ``ts`` agree.

        Raises:
            ValueError: ``xs`` is not (T, batch, data_dim) with T and batch at least 1, has NaN or infinite
                entries, or ``ts`` is not a 1-D sequence of T times.
            TypeError: ``xs`` is not floating-point or not of the parameters' dtype.
        """
        data_dim = self.decoder.out_features
        if not torch.is_tensor(xs) or xs.dim() != 3 or xs.shape[2] != data_dim:
            shape = tuple(xs.shape) if torch.is_tensor(xs) else type(xs).__name__
            raise ValueError(f"xs must be a tensor of shape (T, batch, {data_dim}) (time first), got {shape}.")
        check_dtype(self, xs, "xs")
        if xs.shape[0] == 0 or xs.shape[1] == 0:  # an empty batch made every term a mean of nothing: NaN
            raise ValueError(f"xs must hold at least one time and one series, got shape {tuple(xs.shape)}.")
        # A NaN reached the solver as a NaN z0 (a message about "y0" and "the initial state"), an infinite
        # value an infinite loss without a word: the encoder and the likelihood read every entry.
        bad = ~torch.isfinite(xs)
        if bool(bad.any()):
            i, b, _ = bad.nonzero()[0].tolist()
            raise ValueError(
                f"xs has {int(bad.sum())} NaN or infinite entries (the first at time index {i}, series {b}); "
                "the encoder and the likelihood read every value: drop or fill missing observations first."
            )
        ts = torch.as_tensor(ts, dtype=xs.dtype if not torch.is_tensor(ts) else None, device=xs.device)
        if ts.dim() != 1 or ts.shape[0] != xs.shape[0]:
            raise ValueError(
                f"ts must hold one time per observation of xs, shape ({xs.shape[0]},), got {tuple(ts.shape)}."
            )
        return ts

    def _h(self, t: Tensor, z: Tensor) -> Tensor:
        return self.prior_drift(torch.cat([z, t.expand(z.shape[0], 1)], -1))

    def _sde(self, context: Tensor | None, ts: Tensor | None = None) -> _FieldSDE:
        """The prior SDE (context None) or the posterior SDE given the contexts (T, batch, c) at ts."""
        if context is None or ts is None:
            return _FieldSDE(self._h, self.diffusion, "diagonal", "ito")
        ctx, times = context, ts.detach()

        def f(t: Tensor, z: Tensor) -> Tensor:
            i = torch.searchsorted(times, t.detach().reshape(1), right=True).clamp(1, len(times)) - 1
            return self.posterior_drift(torch.cat([z, ctx[i[0]], t.expand(z.shape[0], 1)], -1))

        return _FieldSDE(f, self.diffusion, "diagonal", "ito", h=self._h)

    @staticmethod
    def _check_q0(z0: Tensor) -> Tensor:
        """``z0``, checked to be finite.

        Raises:
            FloatingPointError: ``z0`` has NaN or infinite entries: the observations are finite (checked
                before), so the encoder's weights have overflowed q(z0 | x)'s mean or standard deviation
                (``exp`` of its log), typically after a too large learning rate. Without this check the
                solver refused a NaN "y0" and asked to check the initial state, which a user does not pass.
        """
        if not bool(torch.isfinite(z0).all()):
            raise FloatingPointError(
                "q(z0 | x) is not finite: the encoder's weights give an infinite or NaN mean or standard deviation "
                "(the weights have diverged; lower the learning rate, or clip the gradients)."
            )
        return z0

    def encode(self, xs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q(z0 | x) and the contexts from observations xs (T, batch, data_dim): (mean, std, (T, batch, c))."""
        out, _ = self.encoder(torch.flip(xs, (0,)))
        out = torch.flip(out, (0,))  # out[i] has read observations T-1 down to i
        mean, logstd = self.to_q0(out[0]).chunk(2, -1)
        return mean, logstd.exp(), self.to_context(out)

    def forward(self, xs: Tensor, ts: Tensor | Sequence[float], kl_weight: float = 1.0, bm=None) -> LatentSDELoss:
        """The negative ELBO of the observations.

        Args:
            xs: observations, shape (T, batch, data_dim), time first.
            ts: their times, shape (T,).
            kl_weight: weight of the KL terms (1: the ELBO itself).
            bm: Brownian motion of shape (batch, latent_dim) over [ts[0], ts[-1]] for the posterior SDE,
                as for :func:`hybrid_node.sdeint` (None: a new one).

        Returns:
            :class:`LatentSDELoss`; ``loss`` is normalised per observed value.

        Raises:
            TypeError: ``kl_weight`` is not a number, or ``xs`` is not floating-point or not of the
                parameters' dtype.
            ValueError: ``xs`` is not (T, batch, data_dim) or has NaN or infinite entries, ``ts`` does not
                hold T times, or ``kl_weight`` is negative or not finite.
            FloatingPointError: q(z0 | x) is not finite (the weights have diverged).
        """
        if isinstance(kl_weight, (str, bytes)) or not hasattr(kl_weight, "__float__"):
            raise TypeError(f"kl_weight must be a number, got {type(kl_weight).__name__} {kl_weight!r}.")
        if not (math.isfinite(float(kl_weight)) and float(kl_weight) >= 0):  # NaN: a NaN loss; < 0: a KL reward
            raise ValueError(f"kl_weight must be a finite number >= 0, got {kl_weight!r}.")
        ts = self._check_series(xs, ts)
        mean, std, context = self.encode(xs)
        z0 = self._check_q0(mean + std * torch.randn_like(std))
        sde = self._sde(context, ts)
        if self.adjoint:
            # The posterior drift reads the contexts through a closure, unseen by the adjoint's backward
            # solve: they are handed to it with the SDE's parameters (as torchsde's example does), so the
            # encoder gets its gradient through them.
            params = (context, *self.posterior_drift.parameters(), *self.diffusion.parameters())
            params += tuple(self.prior_drift.parameters())
            zs, log_ratio = sdeint_adjoint(
                sde,
                z0,
                ts,
                bm=bm,
                method=self.method,
                dt=self.dt,
                logqp=True,
                adjoint_params=params,
            )
        else:
            zs, log_ratio = sdeint(sde, z0, ts, bm=bm, method=self.method, dt=self.dt, logqp=True)
        xs_hat = self.decoder(zs)
        dist = torch.distributions.Normal(xs_hat, self.obs_std)
        log_lik = dist.log_prob(xs).sum((0, 2)).mean()
        q0 = torch.distributions.Normal(mean, std)
        p0 = torch.distributions.Normal(self.p0_mean, self.p0_logstd.exp())
        kl_z0 = torch.distributions.kl_divergence(q0, p0).sum(-1).mean()
        kl_path = log_ratio.sum(0).mean()
        n_values = xs.shape[0] * xs.shape[2]
        loss = (-log_lik + float(kl_weight) * (kl_z0 + kl_path)) / n_values
        return LatentSDELoss(loss, log_lik, kl_z0, kl_path)

    @torch.no_grad()
    def sample_posterior(self, xs: Tensor, ts: Tensor | Sequence[float], n: int = 1, bm=None) -> Tensor:
        """Decoded posterior sample paths given the observations.

        Args:
            xs: observations, shape (T, batch, data_dim), time first.
            ts: their times, shape (T,).
            n: sample paths per series.
            bm: Brownian motion of shape (n * batch, latent_dim) over [ts[0], ts[-1]] (None: a new one).

        Returns:
            The paths, shape (T, n * batch, data_dim).

        Raises:
            ValueError: ``xs`` is not (T, batch, data_dim) or has NaN or infinite entries, ``ts`` does
                not hold T times, or ``n`` is not a positive int.
            TypeError: ``xs`` is not floating-point or not of the parameters' dtype.
            FloatingPointError: q(z0 | x) is not finite (the weights have diverged).
        """
        _sample_count(n)
        ts = self._check_series(xs, ts)
        mean, std, context = self.encode(xs)
        mean, std, context = mean.repeat(n, 1), std.repeat(n, 1), context.repeat(1, n, 1)
        z0 = self._check_q0(mean + std * torch.randn_like(std))
        return self.decoder(sdeint(self._sde(context, ts), z0, ts, bm=bm, method=self.method, dt=self.dt))

    @torch.no_grad()
    def sample_prior(self, ts: Tensor | Sequence[float], n: int, bm=None) -> Tensor:
        """Decoded sample paths of the prior SDE.

        Args:
            ts: output times, shape (T,).
            n: number of paths.
            bm: Brownian motion of shape (n, latent_dim) over [ts[0], ts[-1]] (None: a new one).

        Returns:
            The paths, shape (T, n, data_dim).

        Raises:
            ValueError: ``n`` is not a positive int.
        """
        _sample_count(n)
        # drawn where the model lives (a plain randn is a CPU tensor: a CUDA model failed to add it)
        eps = torch.randn(n, self.p0_mean.shape[0], dtype=self.p0_mean.dtype, device=self.p0_mean.device)
        z0 = self.p0_mean + self.p0_logstd.exp() * eps
        return self.decoder(sdeint(self._sde(None), z0, ts, bm=bm, method=self.method, dt=self.dt))
