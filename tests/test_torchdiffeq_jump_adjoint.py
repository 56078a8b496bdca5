"""``jump_t`` in the backward solve of ``odeint_adjoint``: the backward solve restarts at the jumps too
(torchdiffeq flips ``jump_t`` into its adjoint solve), instead of stepping across the discontinuity and
having its error estimate reject steps until they are tiny.

Compared with the installed torchdiffeq and with the analytic gradient.
"""

import math

import pytest
import torch
import torchdiffeq

import hybrid_node as hn

F64 = torch.float64


class _Jump:
    """-x/2 before t = 0.5, x^2 after (the field of torchdiffeq's jump test), counting evaluations."""

    def __init__(self, at=0.5):
        self.nfe = 0
        self.at = at

    def __call__(self, t, x):
        self.nfe += 1
        return -0.5 * x if t < self.at else x**2


def _exact_grad(x0):
    # x(0.5) = x0 e^{-1/4}; then x' = x^2 gives x(1) = h / (1 - h/2): d x(1) / d x0 = e^{-1/4} / (1 - h/2)^2
    h = x0 * math.exp(-0.25)
    return [1 + math.exp(-0.25) / (1 - v / 2) ** 2 for v in h.tolist()]  # + 1: the output x(0) = x0


def _backward_nfe(mod, dtype, **kwargs):
    f = _Jump()
    x0 = torch.tensor([1.0, 2.0], dtype=dtype, requires_grad=True)
    xs = mod.odeint_adjoint(f, x0, torch.tensor([0.0, 1.0]), atol=1e-6, method="dopri5", adjoint_params=(), **kwargs)
    f.nfe = 0
    (grad,) = torch.autograd.grad(xs.sum(), x0)
    return f.nfe, grad


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_backward_solve_restarts_at_jumps(dtype):
    jump = dict(rtol=1e-6, options=dict(jump_t=torch.tensor([0.5])))
    n_free, _ = _backward_nfe(hn, dtype)
    n_jump, grad = _backward_nfe(hn, dtype, **jump)
    n_ref, _ = _backward_nfe(torchdiffeq, dtype, **jump)
    assert n_jump < n_free / 2  # was 326 vs 314 before the backward solve knew the jumps
    assert n_jump <= 1.2 * n_ref  # torchdiffeq: 99
    tol = 1e-4 if dtype == F64 else 1e-3
    torch.testing.assert_close(grad, torch.tensor(_exact_grad(torch.tensor([1.0, 2.0])), dtype=dtype), rtol=tol, atol=0)


def test_adjoint_options_name_their_own_jumps():
    # adjoint_options with jump_t: the backward solve uses those (here none inside the interval, so it
    # steps across the jump like a solve without jump_t); without jump_t there it uses the forward's
    jump = dict(rtol=1e-6, options=dict(jump_t=torch.tensor([0.5])))
    n_own, _ = _backward_nfe(hn, F64, adjoint_options=dict(jump_t=torch.tensor([2.0])), **jump)
    n_fwd, _ = _backward_nfe(hn, F64, adjoint_options=dict(max_num_steps=10**6), **jump)
    n_jump, _ = _backward_nfe(hn, F64, **jump)
    assert n_fwd == n_jump < n_own / 2


def test_backwards_in_time_jumps_restart_too():
    # t decreasing: the forward solve runs in mirrored time and the backward solve mirrors it back
    f = _Jump(at=0.5)
    x0 = torch.tensor([0.5], dtype=F64, requires_grad=True)
    t = torch.tensor([1.0, 0.0], dtype=F64)
    counts = []
    for options in ({}, {"jump_t": torch.tensor([0.5], dtype=F64)}):
        xs = hn.odeint_adjoint(f, x0, t, rtol=1e-6, atol=1e-6, options=options, adjoint_params=())
        f.nfe = 0
        (g,) = torch.autograd.grad(xs[-1].sum(), x0)
        counts.append(f.nfe)
    # backwards from 1 to 0.5 under x' = x^2: h = 1 / (1/x0 + 1/2); then x(0) = h e^{1/4}. Only with the
    # jump is it this accurate (across it both solves, and torchdiffeq's, are off by ~6e-4)
    assert float(g) == pytest.approx(math.exp(0.25) / (1 + 0.5 * 0.5) ** 2, rel=1e-5)
    assert counts[1] < counts[0] / 2  # 39 vs 218 (torchdiffeq 0.2.5 takes 254 either way here)


@pytest.mark.parametrize("method", ["adaptive_heun", "bosh3", "dopri5"])
def test_float32_backward_solve_crosses_a_jump_without_jump_t(method):
    # Without jump_t the backward solve creeps across t = 0.5 with steps of ~1e-7: the field sees a
    # float32 time, so the jump sits inside one float32 ulp and the step floor must let a step end
    # there (torchdiffeq's float32 time crosses the same way). The gradient is the analytic one to
    # the accuracy the creep allows.
    x0 = torch.tensor([1.0, 2.0], requires_grad=True)
    xs = hn.odeint_adjoint(_Jump(), x0, torch.tensor([0.0, 1.0]), atol=1e-6, method=method, adjoint_params=())
    (grad,) = torch.autograd.grad(xs.sum(), x0)
    torch.testing.assert_close(grad, torch.tensor(_exact_grad(torch.tensor([1.0, 2.0]))), rtol=2e-3, atol=0)
