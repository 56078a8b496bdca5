"""``options={"min_step": ...}`` on adaptive methods means what it means in torchdiffeq: the step is clamped
up to ``min_step`` and a step of that size is accepted whatever its error (instead of the solve failing
with a step size underflow). The decision lives in ``hybrid_node.loop.core`` (``accepts``, ``settle``),
so the host, device-resident and per-sample loops all follow it.

Compared with the installed torchdiffeq.
"""

import pytest
import torch
import torchdiffeq

import hybrid_node as hn

F64 = torch.float64
A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)
T = torch.linspace(1, 8, 10, dtype=F64)


def _counted(mod, **kwargs):
    n = [0]

    def f(t, y):
        n[0] += 1
        return y @ A.T

    ys = mod.odeint(f, torch.tensor([1.0, 0.0], dtype=F64), T, **kwargs)
    return ys, n[0]


@pytest.mark.parametrize("min_step", [0.5, 2.0])
def test_min_step_takes_torchdiffeq_s_evaluations(min_step):
    # a rotation at default tolerances takes ~370 evaluations; with min_step the steps cannot shrink below it
    options = {"min_step": min_step}
    ys, n = _counted(hn, method="dopri5", options=options)
    ys_ref, n_ref = _counted(torchdiffeq, method="dopri5", options=options)
    _, n_free = _counted(hn, method="dopri5")
    assert n == n_ref and n < n_free / 4
    # large steps: both are inaccurate alike (neither is the exact rotation), not bitwise equal (hybrid_node
    # lands steps on output times, torchdiffeq interpolates)
    exact = torch.stack([torch.cos(T - 1), -torch.sin(T - 1)], dim=-1)
    err, err_ref = (ys - exact).abs().max(), (ys_ref - exact).abs().max()
    assert err_ref / 3 < err < 3 * err_ref


def test_every_loop_clamps_at_min_step():
    y0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    settings = dict(rtol=1e-9, atol=1e-9, min_step=0.7)

    def f(t, y):
        return y @ A.T

    host = hn.solve(f, y0, T, controller=hn.PIDController(**settings))
    dev = hn.solve(f, y0, T, controller=hn.PIDController(device_loop=True, **settings))
    per = hn.solve(f, y0, T, controller=hn.PIDController(per_sample=True, **settings))
    assert host.stats.n_rejected == dev.stats.n_rejected == 0  # every step is at min_step (or lands on a time)
    assert host.stats.n_accepted == dev.stats.n_accepted <= 9 + 7 / 0.7
    torch.testing.assert_close(dev.ys, host.ys, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(per.ys, host.ys, rtol=1e-6, atol=1e-6)


def test_min_step_below_what_the_tolerance_needs_changes_nothing():
    # a min_step the controller never reaches leaves the solve bit-identical
    ys, n = _counted(hn, method="dopri5", options={"min_step": 1e-6})
    ys_free, n_free = _counted(hn, method="dopri5")
    assert n == n_free and torch.equal(ys, ys_free)
