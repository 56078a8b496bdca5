"""Latent ODE: a variational autoencoder whose latent trajectory solves a learned ODE.

A recognition network reads the observations backwards in time and gives q(z0 | x) = N(mean, diag(var));
z0 is drawn with the reparameterisation trick, the latent ODE dz/dt = f(z) is solved from t0 to every
observation time, and a decoder maps z(t) to the mean of a Gaussian likelihood. Training maximises the
evidence lower bound (ELBO) log p(x | z) - KL(q(z0 | x) || N(0, I)), optionally plus a Poisson process
likelihood of the observation times.

Irregular per-sample grids: the decoder solves once on the sorted union of all observation times of the
batch and gathers each sample's own times (see :mod:`hybrid_node.irregular`); masks remove unobserved
entries from the likelihood. One batched solve is much cheaper than a solve per sample.

References:
    R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural Ordinary Differential Equations",
    NeurIPS 2018, Section 5 (latent ODE, Poisson process likelihood).
    Y. Rubanova, R. T. Q. Chen, D. Duvenaud, "Latent ODEs for Irregularly-Sampled Time Series",
    NeurIPS 2019 (ODE-RNN encoder).
    D. P. Kingma, M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014 (reparameterisation, analytic KL).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..irregular import IrregularBatch, gather_union, union_grid_in, zero_unobserved
from ._checks import model_solve_options, positive_float, positive_int
from ._kept import kept_field
from ._solve import odeint
from .ode_rnn import ODERNN

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------------
# ELBO pieces
def _sum_per_sample(x: Tensor) -> Tensor:
    """(B,) sums of ``x`` (B, ...) over all but the first dimension; a batch of no samples gives (0,)
    (``reshape(0, -1)`` cannot infer the size it would flatten to)."""
    return x.reshape(x.shape[0], -1).sum(-1) if x.numel() else x.new_zeros(x.shape[0])


def gaussian_log_likelihood(x: Tensor, mean: Tensor, std: float | Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample log N(x | mean, std^2) summed over the observed entries.

    Args:
        x, mean: (B, ...) observations and predicted means.
        std: noise standard deviation (scalar or broadcastable tensor), > 0.
        mask: optional 0/1 tensor like ``x``; unobserved entries contribute nothing, whatever ``x``
            holds there (NaN included).

    Returns:
        (B,) log-likelihoods.
    """
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    if bool((std <= 0).any()):
        raise ValueError("the likelihood's std must be positive.")
    if mask is not None:
        x = zero_unobserved(x, mask)  # an unobserved entry may hold NaN, which the product below would keep
    logp = -0.5 * math.log(2 * math.pi) - torch.log(std) - 0.5 * ((x - mean) / std) ** 2
    if mask is not None:
        logp = logp * mask
    return _sum_per_sample(logp)


def normal_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """Analytic KL(N(mean, diag(exp(logvar))) || N(0, I)) per sample.

    KL = 0.5 * sum(exp(logvar) + mean^2 - 1 - logvar) (Kingma and Welling 2014, Appendix B).

    Returns:
        (B,) divergences.
    """
    return _sum_per_sample(0.5 * (logvar.exp() + mean**2 - 1.0 - logvar))


def poisson_process_log_likelihood(log_rates: Tensor, mask: Tensor, integrated_rate: Tensor) -> Tensor:
    """Log-likelihood of event times under an inhomogeneous Poisson process, per sample.

    log p = sum over events of log lambda(t_i) - integral of lambda over the observation window
    (Chen et al. 2018, Eq. 16 with one process per channel).

    Args:
        log_rates: (B, L, D) log intensity at each observation time and channel.
        mask: (B, L, D) 1 where an event (observation) happened.
        integrated_rate: (B, D) integral of the intensity over the window.

    Returns:
        (B,) log-likelihoods.
    """
    return _sum_per_sample(log_rates * mask) - integrated_rate.sum(-1)


@dataclasses.dataclass(frozen=True)
class ElboTerms:
    """The pieces of the ELBO of one batch (all (B,) tensors).

    Attributes:
        log_likelihood: Gaussian log p(x | z) over the observed entries.
        kl: KL(q(z0 | x) || N(0, I)).
        poisson: Poisson process log-likelihood of the observation times, or None.
    """

    log_likelihood: Tensor
    kl: Tensor
    poisson: Tensor | None = None

    @property
    def elbo(self) -> Tensor:
        out = self.log_likelihood - self.kl
        return out if self.poisson is None else out + self.poisson

    @property
    def loss(self) -> Tensor:
        """Negative ELBO averaged over the batch (what to minimise)."""
        return -self.elbo.mean()


def descend_z0(z0: Tensor, loss: Callable[[Tensor], Tensor], steps: int, lr: float) -> Iterator[Tensor]:
    """Adam on z0 alone: minimises the scalar ``loss(z0)`` by its gradient with respect to z0, so no
    network weight gets a gradient or changes.

    Returns:
        An iterator over z0 (detached copies) before the first step and after each of ``steps`` steps.
    """
    z0 = z0.detach().clone()
    yield z0.clone()
    z0.requires_grad_(True)
    opt = torch.optim.Adam([z0], lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            (z0.grad,) = torch.autograd.grad(loss(z0), z0)
        opt.step()
        yield z0.detach().clone()


#: the default learning rate of the refinement of z0 (:meth:`LatentODE.predict`, ``EmpiricalPrior.from_series``)
DEFAULT_REFINE_LR = 0.05


def refuse_lr_without_refinement(refine_steps: int, refine_lr: float) -> None:
    """Refuse a refinement learning rate given without refinement steps.

    Args:
        refine_steps: the Adam steps on z0 asked for.
        refine_lr: their learning rate.

    Raises:
        ValueError: ``refine_lr`` is away from its default while ``refine_steps`` is 0, where no step
            is taken: the encoder's mean was decoded whatever the rate.
    """
    if refine_steps == 0 and refine_lr != DEFAULT_REFINE_LR:
        raise ValueError(
            f"refine_lr={refine_lr!r} has no effect with refine_steps=0 (no refinement step is taken); pass "
            "refine_steps > 0 to refine z0 at that rate, or drop refine_lr."
        )


def _start_time(t0: float | Tensor, times: Tensor) -> Tensor:
    """``t0`` as a 0-d tensor of the dtype and device of ``times``.

    Raises:
        ValueError: ``t0`` is not one number (a (B,) tensor would be compared with the time axis).
    """
    out = torch.as_tensor(t0, dtype=times.dtype, device=times.device)
    if out.numel() != 1:
        raise ValueError(f"t0 must be one time shared by the whole batch; got shape {tuple(out.shape)}.")
    # A NaN t0 used to surface from the solver as "y0 contains NaN", naming no argument of the caller's.
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"t0 must be a finite time (the latent initial time), got {float(out)}.")
    return out.reshape(())


# ----------------------------------------------------------------------------------------------------
# Networks
class RecognitionRNN(nn.Module):
    """Recurrent network read backwards over (values, mask, time gap) that outputs q(z0 | x).

    The gap fed with observation k is t_k - t_{k-1} (t_{-1} = t0): the stretch of time the network
    crosses next when it reads backwards. Unobserved positions leave the hidden state unchanged.

    Args:
        obs_dim: channels D.
        hidden: RNN units.
        latent_dim: size of z0.
        use_time_gaps: feed the time gaps (otherwise the network sees only the values and mask).
        cell: ``"rnn"`` (Elman tanh cell, as Chen et al. 2018) or ``"gru"`` (gated recurrent unit,
            Cho et al. 2014, as in the recognition networks of Rubanova et al. 2019).

    Raises:
        ValueError: for an unknown ``cell``.
    """

    CELLS = ("rnn", "gru")

    def __init__(
        self, obs_dim: int, hidden: int = 25, latent_dim: int = 4, use_time_gaps: bool = True, cell: str = "rnn"
    ):
        super().__init__()
        if cell not in self.CELLS:
            raise ValueError(f"cell must be one of {self.CELLS}; got {cell!r}.")
        self.use_time_gaps = use_time_gaps
        self.hidden = hidden
        n_in = 2 * obs_dim + int(use_time_gaps)
        if cell == "gru":
            self.gru = nn.GRUCell(n_in, hidden)
        else:
            self.i2h = nn.Linear(n_in + hidden, hidden)
        self.h2o = nn.Linear(hidden, 2 * latent_dim)

    def _update(self, x: Tensor, h: Tensor) -> Tensor:
        if hasattr(self, "gru"):
            return self.gru(x, h)
        return torch.tanh(self.i2h(torch.cat([x, h], dim=-1)))

    def forward(self, batch: IrregularBatch, t0: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (mean, logvar) of q(z0 | x), each (B, latent_dim)."""
        parts = [batch.observed_values, batch.mask]
        if self.use_time_gaps:
            parts.append(batch.gaps(t0).unsqueeze(-1).to(batch.values.dtype))
        inputs = torch.cat(parts, dim=-1)
        observed = batch.time_mask
        h = batch.values.new_zeros(batch.batch_size, self.hidden)
        for k in range(batch.times.shape[1] - 1, -1, -1):
            m = observed[:, k].unsqueeze(-1)
            h = m * self._update(inputs[:, k], h) + (1 - m) * h
        mean, logvar = self.h2o(h).chunk(2, dim=-1)
        return mean, logvar


def _check_away_from(times: Tensor, t0: Tensor) -> None:
    """Refuse output ``times`` that do not run from ``t0`` in one direction.

    Args:
        times: (T,) output times, T >= 1; t0: (1,) start time of the solve.

    Raises:
        ValueError: ``times`` lie on both sides of ``t0``, or are not strictly increasing (all after
            ``t0``) or strictly decreasing (all before it). The solve runs from ``t0`` through
            ``times`` in their order, so they must be one monotone path from it.
    """
    gaps = times[1:] - times[:-1]
    forward = bool((times >= t0).all()) and bool((gaps > 0).all())
    backward = bool((times <= t0).all()) and bool((gaps < 0).all())
    if not (forward or backward):
        raise ValueError(
            f"times must run from t0={float(t0):g} in one direction: strictly increasing from t0 on (a forecast) "
            f"or strictly decreasing from t0 back (a backcast), got {times.tolist()}; sort them (torch.unique "
            "sorts and drops repeats), and decode times on each side of t0 in separate calls."
        )


class ODERNNEncoder(nn.Module):
    """ODE-RNN run backwards in time to t0, then a linear map to (mean, logvar) of q(z0 | x)."""

    def __init__(self, obs_dim: int, hidden: int = 25, latent_dim: int = 4, **ode_rnn_kwargs):
        super().__init__()
        self.ode_rnn = ODERNN(obs_dim, hidden=hidden, out_dim=2 * latent_dim, **ode_rnn_kwargs)

    def forward(self, batch: IrregularBatch, t0: Tensor) -> tuple[Tensor, Tensor]:
        h, _ = self.ode_rnn.run(batch, t_start=t0, backwards=True)
        mean, logvar = self.ode_rnn.readout(h).chunk(2, dim=-1)
        return mean, logvar


class LatentDynamics(nn.Module):
    """dz/dt = f(z): MLP latent -> hidden -> hidden -> latent with ELU (autonomous)."""

    def __init__(self, latent_dim: int = 4, hidden: int = 20):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, latent_dim)
        )

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.net(z)


class _WithIntensity(nn.Module):
    """Augments the latent ODE with Lambda(t), the integrated Poisson intensity: d Lambda/dt = lambda(z)."""

    def __init__(self, dynamics: nn.Module, log_intensity: nn.Module, latent_dim: int):
        super().__init__()
        self.dynamics, self.log_intensity, self.latent_dim = dynamics, log_intensity, latent_dim

    def forward(self, t: Tensor, state: Tensor) -> Tensor:
        z = state[..., : self.latent_dim]
        return torch.cat([self.dynamics(t, z), self.log_intensity(z).exp()], dim=-1)


# ----------------------------------------------------------------------------------------------------
# The model

#: LatentODE's default tolerances (a tolerance away from them is refused for a fixed-step method)
_DEFAULT_TOLERANCES = {"rtol": 1e-7, "atol": 1e-9}


class LatentODE(nn.Module):
    """Latent ODE for irregularly sampled series.

    Defaults follow the spirals model of Chen et al. (2018): 4-d latent, recognition RNN with 25 units,
    dynamics 4-20-20-4 (ELU), decoder 4-20 (ReLU)-2, Gaussian likelihood with std 0.3.

    Args:
        obs_dim: channels D of the observations.
        latent_dim: size of z.
        rec_hidden: units of the recognition network.
        dyn_hidden: width of the dynamics MLP.
        dec_hidden: width of the decoder.
        encoder: ``"rnn"`` (backwards Elman RNN over values and time gaps), ``"gru"`` (the same with a
            GRU cell) or ``"ode-rnn"``.
        obs_std: standard deviation of the Gaussian likelihood.
        poisson: add a Poisson process likelihood of the observation times (one intensity per channel).
        method, rtol, atol, options: settings of the latent solve (``options`` is copied: set
            ``model.options`` to change it later).
        ode_rnn_kwargs: keyword arguments of the ODE-RNN encoder (``ode_hidden``, ``method``, ``rtol``, ...;
            not ``hidden``, ``obs_dim`` or ``out_dim``, which follow ``rec_hidden``, ``obs_dim`` and
            ``latent_dim``).

    Raises:
        ValueError: for an unknown encoder, a size below 1, an ``obs_std`` that is not finite and positive,
            ``ode_rnn_kwargs`` that set a size the model sets or come without ``encoder='ode-rnn'``, an
            unknown method or option name (the message names the closest valid one), or ``rtol`` or
            ``atol`` set away from its default for a method that takes fixed steps (they would change
            nothing).
        TypeError: a size that is not an int (a bool or float).
    """

    def __init__(
        self,
        obs_dim: int = 2,
        latent_dim: int = 4,
        rec_hidden: int = 25,
        dyn_hidden: int = 20,
        dec_hidden: int = 20,
        encoder: str = "rnn",
        obs_std: float = 0.3,
        poisson: bool = False,
        method: str = "dopri5",
        rtol: float = _DEFAULT_TOLERANCES["rtol"],
        atol: float = _DEFAULT_TOLERANCES["atol"],
        options: dict | None = None,
        ode_rnn_kwargs: dict | None = None,
    ):
        super().__init__()
        for name, size in (
            ("obs_dim", obs_dim),
            ("latent_dim", latent_dim),
            ("rec_hidden", rec_hidden),
            ("dyn_hidden", dyn_hidden),
            ("dec_hidden", dec_hidden),
        ):
            positive_int(name, size)
        positive_float("obs_std", obs_std)  # a NaN or infinite std turns every likelihood into NaN
        self.encoder: RecognitionRNN | ODERNNEncoder
        if encoder in RecognitionRNN.CELLS:
            if ode_rnn_kwargs:
                # only the ODE-RNN encoder reads them: an 'rnn' or 'gru' encoder accepted them and ran without
                raise ValueError(
                    f"ode_rnn_kwargs {sorted(ode_rnn_kwargs)} configure the ODE-RNN encoder, but encoder="
                    f"{encoder!r}; pass encoder='ode-rnn', or drop ode_rnn_kwargs."
                )
            self.encoder = RecognitionRNN(obs_dim, rec_hidden, latent_dim, cell=encoder)
        elif encoder == "ode-rnn":
            fixed = {"obs_dim": "obs_dim", "hidden": "rec_hidden", "out_dim": "latent_dim (out_dim = 2 * latent_dim)"}
            clash = sorted(set(ode_rnn_kwargs or {}) & set(fixed))
            if clash:
                # the encoder sets these from the model's own sizes; Python would only say "multiple values"
                raise ValueError(
                    f"ode_rnn_kwargs must not set {clash}: LatentODE sets them; pass "
                    + ", ".join(fixed[k] for k in clash)
                    + " to LatentODE instead."
                )
            self.encoder = ODERNNEncoder(obs_dim, rec_hidden, latent_dim, **(ode_rnn_kwargs or {}))
        else:
            raise ValueError(f"encoder must be 'rnn', 'gru' or 'ode-rnn'; got {encoder!r}.")
        self.obs_dim = obs_dim
        self.latent_dim = latent_dim
        self.dynamics = LatentDynamics(latent_dim, dyn_hidden)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, dec_hidden), nn.ReLU(), nn.Linear(dec_hidden, obs_dim))
        self.log_intensity = nn.Linear(latent_dim, obs_dim) if poisson else None
        self.obs_std = obs_std
        self.method, self.rtol, self.atol = method, rtol, atol
        self.options = model_solve_options("LatentODE", method, options, rtol, atol, _DEFAULT_TOLERANCES)

    def _check_channels(self, batch: IrregularBatch, name: str) -> None:
        dtype = next(self.parameters()).dtype
        if batch.values.dtype != dtype:
            # Without this, torch's "mat1 and mat2 must have the same dtype" from deep inside the encoder.
            raise TypeError(
                f"LatentODE's parameters are {dtype} but {name} holds {batch.values.dtype} values; convert one "
                f"to the other, e.g. batch.to({dtype}) or model.to({batch.values.dtype})."
            )
        if batch.obs_dim != self.obs_dim:
            raise ValueError(
                f"LatentODE was built for obs_dim={self.obs_dim} channels, but {name} has {batch.obs_dim} "
                f"(values of shape {tuple(batch.values.shape)}; expected (batch, time, {self.obs_dim})). "
                f"Build the model with obs_dim={batch.obs_dim}, or pass series with {self.obs_dim} channels."
            )

    def encode(self, batch: IrregularBatch, t0: float | Tensor = 0.0) -> tuple[Tensor, Tensor]:
        """(mean, logvar) of q(z0 | x), each (B, latent_dim); z0 lives at time ``t0``.

        Raises:
            ValueError: ``batch`` has another number of channels than ``obs_dim`` or a time before ``t0``,
                or ``t0`` is not one finite number.
            TypeError: ``batch`` holds values of another dtype than the model's parameters.
        """
        self._check_channels(batch, "batch")
        t0 = _start_time(t0, batch.times)
        if bool((batch.times < t0).any()):
            raise ValueError("every observation time must be >= t0 (the latent initial time).")
        return self.encoder(batch, t0)

    @staticmethod
    def sample_z0(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draw z0 = mean + exp(logvar / 2) * eps, eps ~ N(0, I)."""
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * logvar) * eps

    def latent_trajectory(self, z0: Tensor, times: Tensor, t0: float | Tensor = 0.0) -> Tensor:
        """Solve the latent ODE from ``t0`` to ``times`` (T,); returns (T, B, state).

        ``times`` run away from ``t0`` in one direction: strictly increasing from ``t0`` on, or strictly
        decreasing from ``t0`` back (a backcast, solved backwards in time). No ``times`` (T = 0, e.g. the
        union grid of a batch of no series) give an empty (0, B, state). The solve runs in the dtype of
        ``z0``: ``times`` and ``t0`` are cast to it first.

        Raises:
            ValueError: ``times`` is not 1-D, ``t0`` is not one number, or ``times`` lie on both sides of
                ``t0`` or are not strictly monotone (in the direction away from ``t0``).
        """
        if times.ndim != 1:
            raise ValueError(
                f"times must be 1-D (T,), shared by every sample; got shape {tuple(times.shape)}. For "
                "per-sample times pass an IrregularBatch to log_likelihood (one solve on the union grid)."
            )
        # cast before comparing: times distinct in float64 may round to one float32 time of the solve
        times = times.to(z0.dtype)
        t0 = _start_time(t0, times).reshape(1)
        field: nn.Module = self.dynamics
        state = z0
        if self.log_intensity is not None:
            dynamics, intensity, dim = self.dynamics, self.log_intensity, self.latent_dim
            field = kept_field(
                self, ("intensity", dynamics, intensity, dim), lambda: _WithIntensity(dynamics, intensity, dim)
            )
            state = torch.cat([z0, z0.new_zeros(z0.shape[0], self.log_intensity.out_features)], dim=-1)
        if times.numel() == 0:
            return state.new_zeros((0, *state.shape))
        _check_away_from(times, t0)
        grid = torch.cat([t0, times]) if bool(times[0] != t0) else times
        ys = odeint(field, state, grid, rtol=self.rtol, atol=self.atol, method=self.method, options=self.options)
        return ys[1:] if grid.numel() > times.numel() else ys

    def decode(self, z0: Tensor, times: Tensor, t0: float | Tensor = 0.0) -> Tensor:
        """Decoded means at shared ``times`` (T,) for every sample; returns (B, T, obs_dim)."""
        zs = self.latent_trajectory(z0, times, t0)[..., : self.latent_dim]
        return self.decoder(zs).transpose(0, 1)

    def elbo(
        self,
        batch: IrregularBatch,
        t0: float | Tensor = 0.0,
        generator: torch.Generator | None = None,
        targets: IrregularBatch | None = None,
    ) -> ElboTerms:
        """ELBO terms of a batch with one reparameterised sample of z0 per series.

        With ``targets`` the encoder still reads only ``batch`` but the likelihood scores ``targets``:
        a forecasting objective when ``targets`` holds the observations plus later points of the same
        series (as Rubanova et al. 2019 train latent ODEs for extrapolation). Otherwise the likelihood
        scores ``batch`` itself (the plain ELBO of Chen et al. 2018).

        Args:
            batch: observations on per-sample grids (what the encoder sees).
            t0: time of z0 (at or before every observation and target).
            generator: optional generator for the noise of the reparameterisation.
            targets: optional series scored by the likelihood (same batch size and channels as
                ``batch``); default ``batch``.

        Returns:
            :class:`ElboTerms`; ``.loss`` is the negative mean ELBO.

        Raises:
            ValueError: if ``batch`` holds no series (the mean over the batch is undefined) or no time
                points, if ``targets`` does not match ``batch`` in batch size or channels, or has a time
                before ``t0``, or if ``t0`` is not one number.
        """
        if batch.batch_size == 0:
            # the loss is a mean over the series: NaN for none, which would poison a training step
            raise ValueError(
                "the batch holds no series (batch size 0), so its mean ELBO is undefined; skip empty batches."
            )
        if batch.times.shape[1] == 0:
            raise ValueError("the batch has no time points (L = 0): there is nothing to score; skip it.")
        scored = batch if targets is None else targets
        if scored.batch_size != batch.batch_size or scored.obs_dim != batch.obs_dim:
            raise ValueError(
                f"targets must have the batch size and channels of batch ({batch.batch_size}, {batch.obs_dim}); "
                f"got ({scored.batch_size}, {scored.obs_dim})."
            )
        if bool((scored.times < _start_time(t0, scored.times)).any()):
            raise ValueError("every target time must be >= t0 (the latent initial time).")
        mean, logvar = self.encode(batch, t0)
        loglik, poisson = self.log_likelihood(self.sample_z0(mean, logvar, generator), scored, t0)
        return ElboTerms(log_likelihood=loglik, kl=normal_kl(mean, logvar), poisson=poisson)

    def log_likelihood(
        self, z0: Tensor, scored: IrregularBatch, t0: float | Tensor = 0.0
    ) -> tuple[Tensor, Tensor | None]:
        """log p(x | z0) of the observed entries of ``scored``: the Gaussian term and the Poisson process
        term of the observation times (None without ``poisson``), each (B,)."""
        self._check_channels(scored, "the scored series")
        union, index = union_grid_in(scored, z0.dtype)
        states = gather_union(self.latent_trajectory(z0, union, t0), index)  # (B, L, state)
        return self.log_likelihood_of_states(states, scored.values, scored.mask)

    def log_likelihood_of_states(self, states: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """The terms of :meth:`log_likelihood` from solved states (B, L, state) at each sample's own
        times, padding included (it repeats the last time); ``values`` and ``mask`` are (B, L, D).

        The Poisson window runs from t0 to each sample's last observation: a time at which no channel
        was observed is no observation, so times after it (another series' times on a shared grid)
        do not lengthen the window, and a sample without observations has an empty window.
        """
        z = states[..., : self.latent_dim]
        loglik = gaussian_log_likelihood(values, self.decoder(z), self.obs_std, mask)
        if self.log_intensity is None:
            return loglik, None
        cumulative = states[..., self.latent_dim :]  # (B, L, D): the intensity integrated from t0
        integrated = cumulative.new_zeros(cumulative.shape[0], cumulative.shape[-1])  # empty windows
        observed = mask.sum(-1) > 0  # (B, L)
        if observed.shape[1]:
            pos = torch.arange(observed.shape[1], device=observed.device)
            last = torch.where(observed, pos, -1).amax(dim=1)  # each sample's last observation (-1: none)
            at_last = cumulative[torch.arange(len(last), device=last.device), last.clamp(min=0)]
            integrated = torch.where((last >= 0).unsqueeze(-1), at_last, integrated)
        return loglik, poisson_process_log_likelihood(self.log_intensity(z), mask, integrated)

    def refine_z0(
        self, batch: IrregularBatch, steps: int, lr: float = 0.05, t0: float | Tensor = 0.0
    ) -> Iterator[Tensor]:
        """Move z0 from the encoder's posterior mean towards the posterior mode of the generative model.

        Semi-amortised inference: Adam steps on -log p(x | z0) - log N(z0; 0, I), one z0 per series, with
        the network weights fixed. The encoder's guess is only as good as its amortisation; the mode uses
        the decoder and dynamics themselves to fit the observed points. Like the encoder, it reads only
        ``batch``.

        Args:
            batch: observations of the series.
            steps: Adam steps (>= 0).
            lr: Adam learning rate.
            t0: time of z0.

        Returns:
            An iterator over the (B, latent_dim) z0 after 0, 1, ..., ``steps`` steps (detached); the first
            is the encoder's mean.

        Raises:
            ValueError: for negative ``steps`` or a non-positive ``lr``.

        Reference: Y. Kim, S. Wiseman, A. C. Miller, D. Sontag, A. M. Rush, "Semi-Amortized Variational
        Autoencoders", ICML 2018.
        """
        if steps < 0 or not lr > 0:
            raise ValueError(f"refine_z0 needs steps >= 0 and lr > 0; got steps={steps}, lr={lr}.")
        return self._refine_path(batch, steps, lr, t0)

    def _refine_path(self, batch: IrregularBatch, steps: int, lr: float, t0: float | Tensor) -> Iterator[Tensor]:
        def neg_log_posterior(z0: Tensor) -> Tensor:
            loglik, poisson = self.log_likelihood(z0, batch, t0)
            return -(loglik - 0.5 * (z0**2).sum(-1) + (0 if poisson is None else poisson)).sum()

        with torch.no_grad():
            start = self.encode(batch, t0)[0]
        return descend_z0(start, neg_log_posterior, steps, lr)

    def forward(self, batch: IrregularBatch, t0: float | Tensor = 0.0, targets: IrregularBatch | None = None) -> Tensor:
        """The training loss (negative mean ELBO) of a batch; ``targets`` as in :meth:`elbo`."""
        return self.elbo(batch, t0, targets=targets).loss

    @torch.no_grad()
    def predict(
        self,
        batch: IrregularBatch,
        times: Tensor,
        t0: float | Tensor = 0.0,
        sample: bool = False,
        refine_steps: int = 0,
        refine_lr: float = DEFAULT_REFINE_LR,
    ) -> Tensor:
        """Reconstruct or extrapolate at shared ``times`` (T,) from the posterior mean of z0 (or a draw).

        Args:
            batch, times, t0: observations, output times, time of z0.
            sample: decode a draw from q(z0 | x) instead of its mean.
            refine_steps, refine_lr: with ``refine_steps`` > 0, decode the z0 that :meth:`refine_z0`
                reaches after that many steps instead of the encoder's mean.

        Returns:
            (B, T, obs_dim) decoded means.

        Raises:
            ValueError: for ``sample`` together with ``refine_steps`` > 0, or a ``refine_lr`` away from its
                default without refinement steps.
        """
        refuse_lr_without_refinement(refine_steps, refine_lr)
        if refine_steps > 0:
            if sample:
                raise ValueError("predict: choose sample=True or refine_steps > 0, not both.")
            *_, z0 = self.refine_z0(batch, refine_steps, refine_lr, t0)
            return self.decode(z0, times, t0)
        mean, logvar = self.encode(batch, t0)
        z0 = self.sample_z0(mean, logvar) if sample else mean
        return self.decode(z0, times, t0)
