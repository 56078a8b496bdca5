"""Recurrent baselines for irregular series: an RNN, and an RNN that also sees the time gaps.

Both are one-step-ahead predictors trained by teacher forcing: after reading observation k the network
predicts observation k+1. The plain RNN does not know when the next point comes; the time-gap variant
gets t_{k+1} - t_k as an extra input. Extrapolation feeds the network its own predictions; when the
points after a training window are known, ``forecast_loss`` also trains on that free-running forecast.

Reference: R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural Ordinary Differential
Equations", NeurIPS 2018, Section 5.1 (the RNN baselines of Table 2); J. L. Elman, "Finding structure in
time", Cognitive Science 14 (1990) (the tanh recurrent cell); K. Cho et al., "Learning Phrase
Representations using RNN Encoder-Decoder for Statistical Machine Translation", EMNLP 2014 (the GRU cell).
"""

from __future__ import annotations

import torch
from torch import nn

from ..irregular import IrregularBatch, check_future_times, zero_unobserved
from ._checks import check_series_batch

Tensor = torch.Tensor


def _scored_mask(batch: IrregularBatch) -> Tensor:
    """(B, L-1, D) mask of the targets 1..L-1 that a one-step-ahead prediction can be scored on.

    The prediction for position k is made after reading positions before k; one made before any
    observation was read comes from the zero state and predicts nothing, so a sample's first
    observation is never scored, also when times without observations (another series' times on a
    shared grid) precede it.
    """
    seen = batch.time_mask.cummax(dim=1).values  # 1 from each sample's first observation on
    return batch.mask[:, 1:] * seen[:, :-1].unsqueeze(-1)


def _last_observed(batch: IrregularBatch) -> Tensor:
    """(B,) position of each sample's last observation (0 for a sample without any)."""
    pos = torch.arange(batch.times.shape[1], device=batch.times.device)
    return torch.where(batch.time_mask > 0, pos, 0).max(dim=1).values


class RNNBaseline(nn.Module):
    """Recurrent one-step-ahead predictor with optional time-gap input.

    Args:
        obs_dim: channels D.
        hidden: RNN units.
        use_time_gaps: feed the gap to the point being predicted as an extra input.
        cell: ``"rnn"`` (Elman tanh cell) or ``"gru"``.

    Raises:
        ValueError: for non-positive sizes or an unknown ``cell``.
    """

    def __init__(self, obs_dim: int = 2, hidden: int = 25, use_time_gaps: bool = False, cell: str = "rnn"):
        super().__init__()
        if obs_dim < 1 or hidden < 1:
            raise ValueError("obs_dim and hidden must be positive integers.")
        if cell not in ("rnn", "gru"):
            raise ValueError(f"cell must be 'rnn' or 'gru'; got {cell!r}.")
        self.obs_dim, self.hidden, self.use_time_gaps = obs_dim, hidden, use_time_gaps
        n_in = 2 * obs_dim + int(use_time_gaps)
        self.cell = nn.GRUCell(n_in, hidden) if cell == "gru" else nn.RNNCell(n_in, hidden, nonlinearity="tanh")
        self.readout = nn.Linear(hidden, obs_dim)

    def _step(self, x: Tensor, m: Tensor, gap: Tensor, h: Tensor) -> Tensor:
        parts = [zero_unobserved(x, m), m] + ([gap.unsqueeze(-1)] if self.use_time_gaps else [])
        return self.cell(torch.cat(parts, dim=-1), h)

    def _read(self, batch: IrregularBatch, next_after_last: Tensor) -> tuple:
        """Read all observations; returns (predictions after each step (B, L, D), final hidden state).

        The gap fed with an observation runs to the next observation (a later position where some
        channel is observed, not merely the next position: a time at which nothing was observed is no
        observation), and from the last one to ``next_after_last`` (B,).
        """
        check_series_batch(self, batch, self.obs_dim)
        bsz, length = batch.times.shape
        observed = batch.time_mask
        pos = torch.arange(length, device=batch.times.device).expand(bsz, length)
        # index of the first observed position at or after each position (length: none)
        first_from = torch.where(observed > 0, pos, length).flip(1).cummin(dim=1).values.flip(1)
        after = torch.cat([first_from[:, 1:], first_from.new_full((bsz, 1), length)], dim=1)
        nxt = torch.where(
            after < length,
            batch.times.gather(1, after.clamp(max=length - 1)),
            next_after_last.reshape(-1, 1).to(batch.times.dtype).expand(bsz, length),
        )
        gaps = (nxt - batch.times).to(batch.values.dtype)
        h = batch.values.new_zeros(bsz, self.hidden)
        preds = []
        for k in range(length):
            m = observed[:, k].unsqueeze(-1)
            h = m * self._step(batch.values[:, k], batch.mask[:, k], gaps[:, k], h) + (1 - m) * h
            preds.append(self.readout(h))
        return torch.stack(preds, dim=1), h

    def forward(self, batch: IrregularBatch) -> Tensor:
        """(B, L-1, D) predictions of observations 1..L-1 from the ones before."""
        preds, _ = self._read(batch, batch.times[:, -1])
        return preds[:, :-1]

    def loss(self, batch: IrregularBatch) -> Tensor:
        """Masked mean squared error of the one-step-ahead predictions (each sample's first observation,
        which nothing precedes, is not scored)."""
        pred = self(batch)
        mask = _scored_mask(batch)
        return ((pred - batch.observed_values[:, 1:]) ** 2 * mask).sum() / mask.sum().clamp(min=1)

    def rollout(self, batch: IrregularBatch, times: Tensor) -> tuple[Tensor, Tensor]:
        """Read the observations, then predict future ``times`` (T,) from the network's own outputs.

        Differentiable (used by :meth:`forecast_loss`); :meth:`extrapolate` is the no-grad version.

        Returns:
            ``(window, future)``: (B, L, D) predictions made after each observation (the one after
            observation k is for observation k+1; after the last one, for ``times[0]``) and (B, T, D)
            predictions at ``times``.

        Raises:
            ValueError: if ``times`` is not 1-D or not sorted (the network would be fed negative time
                gaps), or precedes the last observation of a sample.
        """
        check_future_times(batch, times)
        if times.numel() == 0:
            preds, _ = self._read(batch, batch.times[:, -1])
            return preds, preds[:, :0]
        preds, h = self._read(batch, times[0].expand(batch.batch_size))
        # The prediction for times[0] is the one made after the last observation: its position, not
        # ``lengths - 1`` (the count of observed times, which an unobserved interior time shifts).
        out = [preds[torch.arange(batch.batch_size), _last_observed(batch)]]
        ones = torch.ones_like(out[0])
        for j in range(1, times.numel()):
            gap = (times[j] - times[j - 1]).expand(batch.batch_size).to(out[0].dtype)
            h = self._step(out[-1], ones, gap, h)
            out.append(self.readout(h))
        return preds, torch.stack(out, dim=1)

    def forecast_loss(self, batch: IrregularBatch, times: Tensor, future: Tensor) -> Tensor:
        """Mean squared error over the window's one-step-ahead predictions and a free-running forecast.

        The forecasting counterpart of :meth:`loss`: besides predicting each observation from the
        ones before (teacher forcing), the network is scored on ``future`` (B, T, D) at ``times`` (T,)
        after the window, predicted from its own outputs exactly as :meth:`extrapolate` does at test
        time. Every scored point has the same weight.

        Raises:
            ValueError: if ``future`` does not have shape (B, T, D).
        """
        expected = (batch.batch_size, times.numel(), batch.obs_dim)
        if tuple(future.shape) != expected:
            raise ValueError(
                f"future must have shape {expected} (batch, len(times), channels); got {tuple(future.shape)}."
            )
        window, ahead = self.rollout(batch, times)
        mask = _scored_mask(batch)
        sq = ((window[:, :-1] - batch.observed_values[:, 1:]) ** 2 * mask).sum() + ((ahead - future) ** 2).sum()
        return sq / (mask.sum() + future.numel())

    @torch.no_grad()
    def extrapolate(self, batch: IrregularBatch, times: Tensor) -> Tensor:
        """Autoregressive predictions at future ``times`` (T,) after each sample's observations.

        Returns:
            (B, T, D) predictions.
        """
        return self.rollout(batch, times)[1]
