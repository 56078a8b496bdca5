"""``CNF.log_prob`` uses the flow's own trace estimator unless ``trace=`` is given (docs/models.md said
it was exact by default): with ``trace=ExactTrace()`` it is the closed-form density of a linear flow,
without it a Hutchinson flow gives a stochastic estimate."""

from __future__ import annotations

import math

import torch
from torch import nn

from hybrid_node.nn import CNF, CNFSolver, ExactTrace, HutchinsonTrace

A = torch.tensor([[-0.3, 0.8], [-0.5, 0.2]], dtype=torch.float64)
END = 1.0


class _Linear(nn.Module):
    """dz/dt = A z, whose flow map and divergence (tr A) are known in closed form."""

    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, z):
        return z @ self.A.T


def _flow(trace) -> CNF:
    return CNF(
        [_Linear()], dim=2, end_time=END, learn_end_time=False, trace=trace, solver=CNFSolver(rtol=1e-10, atol=1e-10)
    ).double()


def _closed_form(x: torch.Tensor) -> torch.Tensor:
    """log N(z0; 0, I) - tr(A) T with z0 = exp(-A T) x (data at t = T, base at t = 0)."""
    z0 = x @ torch.linalg.matrix_exp(-A * END).T
    return -0.5 * z0.square().sum(-1) - math.log(2 * math.pi) - torch.trace(A) * END


def test_log_prob_takes_the_flows_estimator_unless_told():
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    flow = _flow(HutchinsonTrace())
    with torch.no_grad():
        exact = flow.log_prob(x, trace=ExactTrace())
        # rtol 1e-10 on a smooth linear flow: the solve's error is far below 1e-7
        torch.testing.assert_close(exact, _closed_form(x), rtol=0, atol=1e-7)
        torch.testing.assert_close(_flow(ExactTrace()).log_prob(x), exact, rtol=0, atol=1e-12)
        # Hutchinson's estimate of tr A with one probe per row: its variance (the off-diagonal
        # 0.8 + (-0.5) = 0.3 squared, times T^2) makes rows differ from the exact value
        first, second = flow.log_prob(x), flow.log_prob(x)
    assert (first - exact).abs().max() > 1e-3
    assert (first - second).abs().max() > 1e-3
