"""Issue 21: a Neural ODE whose learned field turns stiff during training.

The data come from a slow-fast system whose fast component relaxes to ``cos(u)`` at rate 2000 and is
observed during the transient (t = 0.5 ms ... 5 ms), so fitting it drives the learned rate ``k``
up by orders of magnitude. An explicit method's step is then bounded by stability (about 3.3 / k for
dopri5), so its step count grows with ``k`` until the step budget runs out and training stalls; ``auto``
(Tsit5 switching to Rodas5P, DifferentialEquations.jl's AutoTsit5(Rodas5P())) detects the stiffness,
switches, and keeps a roughly constant step count (Hairer & Wanner II, Section IV.2: stiffness as the
step limited by stability rather than accuracy).
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

F64 = torch.float64
T = 4.0
BUDGET = 300
TIMES = torch.tensor([0.0, 0.0005, 0.001, 0.002, 0.005, 0.5, 1.0, 2.0, 3.0, T], dtype=F64)
Y0 = torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]], dtype=F64)


def _true_field(t, y):
    u, v = y[..., 0], y[..., 1]
    return torch.stack([-0.5 * u + 0.3 * torch.sin(v), -2000.0 * (v - torch.cos(u))], -1)


class _Field(torch.nn.Module):
    """A small MLP for the slow component and a learned relaxation rate ``k = exp(log_k)``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 16, dtype=F64), torch.nn.Tanh(), torch.nn.Linear(16, 1, dtype=F64)
        )
        self.log_k = torch.nn.Parameter(torch.tensor(3.0, dtype=F64))

    def forward(self, t, y):
        u, v = y[..., 0], y[..., 1]
        return torch.stack([self.net(y)[..., 0], -torch.exp(self.log_k) * (v - torch.cos(u))], -1)


def _train(method: str, iters: int):
    """Adam on the mean squared error; stops at the first solve that does not finish."""
    with torch.no_grad():
        data = hn.solve(
            _true_field, Y0, TIMES, solver=hn.Rodas5P(), controller=hn.PIDController(rtol=1e-8, atol=1e-8)
        ).ys
    model = _Field()
    opt = torch.optim.Adam([{"params": model.net.parameters(), "lr": 0.05}, {"params": [model.log_k], "lr": 0.5}])
    history = []
    for _ in range(iters):
        sol = hn.solve(
            model,
            Y0,
            TIMES,
            solver=hn.METHODS[method].solver(),
            controller=hn.PIDController(rtol=1e-5, atol=1e-6, max_num_steps=BUDGET),
            throw=False,
        )
        if sol.status != hn.Status.SUCCESS:
            return history, sol
        loss = ((sol.ys - data) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(
            (float(loss.detach()), float(model.log_k.detach().exp()), sol.stats.n_accepted + sol.stats.n_rejected)
        )
    return history, sol


@pytest.mark.slow
def test_auto_keeps_training_where_dopri5_stalls_as_the_field_turns_stiff():
    explicit, last = _train("dopri5", 8)
    assert last.status == hn.Status.MAX_STEPS, explicit  # dopri5 ran out of its step budget ...
    assert len(explicit) < 8
    k_stall = explicit[-1][1]

    history, last = _train("auto", 8)
    assert last.status == hn.Status.SUCCESS and len(history) == 8  # ... auto trained on
    losses, ks, steps = zip(*history)
    assert losses[-1] < 0.2 * losses[0], losses
    assert ks[-1] > 3 * k_stall, ks  # well past the stiffness where dopri5 stalled
    assert last.stats.n_switches >= 1
    assert max(steps) < BUDGET / 2, steps  # the step count does not grow with k
