"""``odeint`` takes torchdiffeq's steps: an accepted step never shrinks the next one there.

torchdiffeq's ``_optimal_step_size`` clamps the factor at 1 while the error ratio is below 1 (diffrax's
``PIDController`` does the same); Hairer's codes and ``hn.PIDController()`` let it fall to ``safety``.
``odeint`` builds its controller with ``shrink_after_accept=False``, so the same problem costs the
same evaluations as in torchdiffeq (it cost 2366 against torchdiffeq's 2450 on the case below, and
the solutions were 3.7e-7 apart at rtol 1e-7).
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn
from hybrid_node.loop import core

torchdiffeq = pytest.importorskip("torchdiffeq", reason="torchdiffeq (the peer) is not installed")

F64 = torch.float64
A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)


class Cubic(torch.nn.Module):
    """torchdiffeq's ode_demo field, counting its evaluations."""

    def __init__(self):
        super().__init__()
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return (y**3) @ A


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
@pytest.mark.parametrize("rtol", [1e-5, 1e-7])
def test_odeint_costs_what_torchdiffeq_costs(method, rtol):
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    t = torch.linspace(0.0, 25.0, 10, dtype=F64)
    peer, ours = Cubic(), Cubic()
    expected = torchdiffeq.odeint(peer, y0, t, method=method, rtol=rtol, atol=rtol * 1e-2)
    got = hn.odeint(ours, y0, t, method=method, rtol=rtol, atol=rtol * 1e-2)
    assert ours.nfe == peer.nfe
    # the same steps; the outputs between them come from each library's own dense output, whose
    # errors are of the order of the tolerance (torchdiffeq also steps past t[-1] and interpolates
    # back); bosh3's is a cubic Hermite here and a quartic through a midpoint estimate in torchdiffeq
    # (1.3e-5 apart at rtol 1e-7)
    torch.testing.assert_close(got, expected, rtol=0, atol=(100 if method == "dopri5" else 1000) * rtol)


def test_the_rule_in_the_step_proposal():
    solver = hn.Dopri5()
    hairer = core.StepControl.of(hn.PIDController(), solver.error_order, F64)
    peers = core.StepControl.of(hn.PIDController(shrink_after_accept=False), solver.error_order, F64)
    # an accepted step of ratio 0.9: 0.9 * 0.9^(-1/5) = 0.919 shrinks it under Hairer's rule only
    dt_hairer = core.propose(core.FLOAT, hairer, 1.0, 0.9, True, 1.0, 1.0)[0]
    dt_peers = core.propose(core.FLOAT, peers, 1.0, 0.9, True, 1.0, 1.0)[0]
    assert dt_hairer == pytest.approx(0.9 * 0.9 ** (-0.2)) and dt_peers == 1.0
    # a rejected step shrinks either way, and the tensor namespace (per-sample, device loops) agrees
    assert core.propose(core.FLOAT, peers, 1.0, 2.0, False, 1.0, 1.0)[0] < 1.0
    ratios = torch.tensor([0.9, 0.01, 2.0], dtype=F64)
    accepted = ratios <= 1.0
    dts = core.propose(core.TENSOR, peers, torch.ones(3, dtype=F64), ratios, accepted, torch.ones(3, dtype=F64), 1.0)[0]
    expected = [core.propose(core.FLOAT, peers, 1.0, float(r), bool(r <= 1.0), 1.0, 1.0)[0] for r in ratios]
    torch.testing.assert_close(dts, torch.tensor(expected, dtype=F64))
    assert dts.dtype == F64


def test_solve_keeps_hairers_rule_by_default_and_refuses_a_non_bool():
    assert hn.PIDController().shrink_after_accept is True
    with pytest.raises(ValueError, match="shrink_after_accept must be True or False"):
        hn.PIDController(shrink_after_accept="no")
