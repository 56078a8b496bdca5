"""ODE-RNN: a recurrent network whose hidden state follows a learned ODE between observations.

Between two observations the hidden state h solves dh/dt = f(h); at an observation a GRU cell updates
h with the observed values and their mask. Used on its own for one-step-ahead prediction and
extrapolation, and run backwards in time as the encoder of a latent ODE.

Per-sample time gaps: every sample has its own gap t_k - t_{k-1}. One batched solve covers all of them
by a change of variable s in [0, 1], t = t_{k-1} + s * gap_b, so dh/ds = gap_b * f(h): the same solve
(same s grid) advances each sample by its own gap, and a zero gap (padding) leaves h unchanged.

Reference: Y. Rubanova, R. T. Q. Chen, D. Duvenaud, "Latent ODEs for Irregularly-Sampled Time Series",
NeurIPS 2019, Algorithm 1.
"""

from __future__ import annotations

import torch
from torch import nn

from ..irregular import IrregularBatch, check_future_times
from ._checks import check_series_batch, model_solve_options
from ._kept import kept_field
from ._solve import odeint

Tensor = torch.Tensor


class _ScaledField(nn.Module):
    """dh/ds = gap * f(h): advances each sample by its own time gap over s in [0, 1]; one per model,
    ``gap`` set before each solve (:func:`~hybrid_node.nn._kept.kept_field`)."""

    def __init__(self, field: nn.Module):
        super().__init__()
        self.field = field
        self.gap: Tensor | None = None

    def forward(self, s: Tensor, h: Tensor) -> Tensor:
        assert self.gap is not None, "set by ODERNN.evolve before each solve"
        return self.gap * self.field(h)


def _first_observed(batch: IrregularBatch) -> Tensor:
    """(B,) position of each sample's first observation (L for a sample without any)."""
    length = batch.times.shape[1]
    pos = torch.arange(length, device=batch.times.device)
    return torch.where(batch.time_mask > 0, pos, length).min(dim=1).values


def hidden_field(hidden: int, width: int) -> nn.Module:
    """The default hidden-state dynamics f(h): an MLP hidden -> width -> hidden with tanh."""
    return nn.Sequential(nn.Linear(hidden, width), nn.Tanh(), nn.Linear(width, hidden))


#: ODERNN's default tolerances (a tolerance away from them is refused for a fixed-step method)
_DEFAULT_TOLERANCES = {"rtol": 1e-3, "atol": 1e-4}


class ODERNN(nn.Module):
    """ODE-RNN over an :class:`~hybrid_node.irregular.IrregularBatch`.

    Args:
        obs_dim: channels D of the observations.
        hidden: size of the hidden state.
        ode_hidden: width of the hidden-state dynamics MLP.
        out_dim: size of the read-out (default ``obs_dim``: predictions of the next observation).
        method, rtol, atol, options: settings of the ODE solves between observations (``options`` is
            copied: set ``model.options`` to change it later).

    Raises:
        ValueError: a size is not positive, an unknown method or option name (the message names the
            closest valid one), or ``rtol`` or ``atol`` set away from its default for a method that takes
            fixed steps (they would change nothing).
    """

    def __init__(
        self,
        obs_dim: int,
        hidden: int = 25,
        ode_hidden: int = 50,
        out_dim: int | None = None,
        method: str = "dopri5",
        rtol: float = _DEFAULT_TOLERANCES["rtol"],
        atol: float = _DEFAULT_TOLERANCES["atol"],
        options: dict | None = None,
    ):
        super().__init__()
        if obs_dim < 1 or hidden < 1 or ode_hidden < 1:
            raise ValueError("obs_dim, hidden and ode_hidden must be positive integers.")
        self.obs_dim = obs_dim
        self.hidden = hidden
        self.field = hidden_field(hidden, ode_hidden)
        # The cell sees the masked values and the mask itself, so missing channels are distinguishable.
        self.cell = nn.GRUCell(2 * obs_dim, hidden)
        self.readout = nn.Linear(hidden, obs_dim if out_dim is None else out_dim)
        self.method, self.rtol, self.atol = method, rtol, atol
        self.options = model_solve_options("ODERNN", method, options, rtol, atol, _DEFAULT_TOLERANCES)

    def evolve(self, h: Tensor, gap: Tensor) -> Tensor:
        """Advance each sample's hidden state by its own time ``gap`` (B,) (negative: backwards in time)."""
        if bool((gap == 0).all()):
            return h
        s = torch.tensor([0.0, 1.0], dtype=h.dtype, device=h.device)
        field = kept_field(self, ("scaled", self.field), lambda: _ScaledField(self.field))
        field.gap = gap.to(h.dtype).unsqueeze(-1)
        return odeint(field, h, s, rtol=self.rtol, atol=self.atol, method=self.method, options=self.options)[-1]

    def run(
        self, batch: IrregularBatch, t_start: Tensor | None = None, backwards: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Run over the observations.

        Forwards: h starts at 0 at ``t_start`` (default: each sample's first observation), is evolved to
        each observation, read out (a prediction made before seeing it) and updated. Backwards: h starts
        at 0 at each sample's last observation, goes from the last observation to the first, and is
        finally evolved back to ``t_start`` (default: the first observation).

        A time at which no channel is observed is no observation: h is evolved through it but does not
        start there, so such times after the last observation (backwards) or before the first (forwards
        without ``t_start``) change nothing, whether they are a series' own or those of other series of
        a batch put on one shared grid. A series without any observation keeps h = 0.

        Args:
            batch: the observations.
            t_start: scalar or (B,) start (forwards) or end (backwards) time.
            backwards: run from the last observation to the first.

        Returns:
            ``(h_final, priors)``: the (B, hidden) final state and the (B, L, hidden) states just before
            each observation's update (in time order).

        Raises:
            ValueError: the batch has no time points, or ``t_start`` is after some time of the batch
                (the run would silently integrate backwards in time; ``LatentODE.encode`` refuses the
                same for its ``t0``).
        """
        check_series_batch(self, batch, self.obs_dim)
        bsz, length = batch.times.shape
        if length == 0:
            raise ValueError("ODERNN needs series with at least one time point; the batch has none (L = 0).")
        h = batch.values.new_zeros(bsz, self.hidden)
        observed = batch.time_mask
        if t_start is None:
            first = _first_observed(batch).clamp(max=length - 1)
            t0 = batch.times.gather(1, first.unsqueeze(1)).squeeze(1)
        else:
            t0 = torch.as_tensor(t_start, dtype=batch.times.dtype, device=batch.times.device).expand(bsz)
            if bool((batch.times < t0.unsqueeze(1)).any()):
                raise ValueError(
                    "t_start must not be after any time of the batch (it is where the run starts forwards, or "
                    "ends backwards); pass a t_start at or before every sample's first time, or None."
                )
        inputs = torch.cat([batch.observed_values, batch.mask], dim=-1)
        priors: list[Tensor] = []  # in the order visited; put in time order below
        order = range(length - 1, -1, -1) if backwards else range(length)
        # Where h lives: t_start forwards; otherwise nowhere until the first observation read (h = 0 is
        # not evolved before it, since a zero state drifts under f).
        started = torch.full((bsz,), not backwards and t_start is not None, device=h.device)
        t_prev = t0
        for k in order:
            t_k = batch.times[:, k]
            # Padded positions repeat the last time, so their gap is zero and h is left alone.
            h = self.evolve(h, torch.where(started, t_k - t_prev, torch.zeros_like(t_k)))
            priors.append(h)
            m = observed[:, k].unsqueeze(-1)
            h = m * self.cell(inputs[:, k], h) + (1 - m) * h
            started = started | (observed[:, k] > 0)
            t_prev = t_k
        if backwards:
            h = self.evolve(h, torch.where(started, t0 - t_prev, torch.zeros_like(t0)))
            priors.reverse()
        return h, torch.stack(priors, dim=1)

    def forward(self, batch: IrregularBatch, t_start: Tensor | None = None) -> Tensor:
        """(B, L, out_dim) one-step-ahead predictions: the read-out just before each observation."""
        _, priors = self.run(batch, t_start)
        return self.readout(priors)

    def loss(self, batch: IrregularBatch, t_start: Tensor | None = None) -> Tensor:
        """Masked mean squared error of the one-step-ahead predictions (each sample's first observation
        is skipped when ``t_start`` is not given, since nothing precedes it).

        Raises:
            ValueError: as :meth:`run` (no time points, or ``t_start`` after a time of the batch), or the
                model reads out ``out_dim`` values that are not predictions of the ``obs_dim`` channels.
        """
        if self.readout.out_features != self.obs_dim:
            # the squared error of (B, L, out_dim) against (B, L, obs_dim) failed in a broadcast naming neither
            raise ValueError(
                f"ODERNN.loss compares the read-out with the observations, but out_dim={self.readout.out_features} "
                f"differs from obs_dim={self.obs_dim}; build the model with out_dim=None (predictions of the "
                "observations), or compute your own loss from model(batch)."
            )
        pred = self(batch, t_start)
        mask = batch.mask.clone()
        if t_start is None:
            first = _first_observed(batch)
            has = first < mask.shape[1]  # a series without observations has nothing to skip
            mask[has.nonzero().squeeze(1), first[has]] = 0
        return ((pred - batch.observed_values) ** 2 * mask).sum() / mask.sum().clamp(min=1)

    def extrapolate(self, batch: IrregularBatch, times: Tensor, t_start: Tensor | None = None) -> Tensor:
        """Predict at future ``times`` (T,) after every sample's observations.

        Returns:
            (B, T, out_dim) read-outs of the hidden state evolved (without updates) to ``times``.

        Raises:
            ValueError: ``times`` is not 1-D or not sorted, or precedes the last observation of a sample,
                or ``t_start`` follows the first (as :meth:`run`).
        """
        check_future_times(batch, times)
        h, _ = self.run(batch, t_start)
        t_prev = batch.times[:, -1]  # padding repeats the last observed time
        outs = [h.new_zeros(h.shape[0], 0, self.readout.out_features)]  # no times: (B, 0, out_dim)
        for t in times:
            h = self.evolve(h, t - t_prev)
            t_prev = t.expand_as(t_prev)
            outs.append(self.readout(h).unsqueeze(1))
        return torch.cat(outs, dim=1)
