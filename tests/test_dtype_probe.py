"""dtype and device-promotion probe: every state dtype, time and tolerance dtype, compared with
torchdiffeq 0.2.5 and torchsde 0.2.6 on the same inputs.

Where the reference returns a result, ours returns the same dtype and values to the solve's tolerance;
where it fails or hangs, ours fails with a message naming the argument, or works; nothing returns
silent garbage. Exact solutions: y' = a y (y(t) = y0 exp(a t)) and the harmonic oscillator.
"""

import math

import torch

import hybrid_node as hn

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
C64, C128 = torch.complex64, torch.complex128


class Decay(torch.nn.Module):
    """y' = a y with a learnable scalar a of the given dtype."""

    def __init__(self, dtype: torch.dtype, a: float = -1.0):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=dtype))

    def forward(self, t, y):
        return self.a * y


def _decay_gradients(y0: torch.Tensor, a: float, t1: float):
    """Exact gradients of L = sum |y(t1)|^2 for y' = a y: dL/dy0 = 2 y0 e^(2 a t1), dL/da = 2 t1 |y0|^2 e^(2 a t1)."""
    g = math.exp(2 * a * t1)
    y0 = y0.detach().double()
    return 2 * y0 * g, 2 * t1 * float((y0.abs() ** 2).sum()) * g


# ---------------------------------------------------------------------------------------------------
# half-precision adjoint: the backward error norm squared float16 values


def test_float16_adjoint_backward_norm_does_not_overflow():
    """The backward solve's error norm of a float16 state is taken in float32, as the forward one's.

    The parameter channel's first-step estimate ``f / atol`` is 1.35 / 1e-3 here, whose square
    (1.8e6) overflows float16 (max 65504): the norm was inf, the first step 0 and the backward solve
    failed at t=1 with a step-size underflow although the forward solve with the same tolerances works.
    """
    f = Decay(F16)
    y0 = torch.tensor([1.0, 2.0], dtype=F16, requires_grad=True)
    ys = hn.odeint_adjoint(f, y0, torch.tensor([0.0, 1.0]), method="dopri5", rtol=1e-2, atol=1e-3)
    (ys[-1].float() ** 2).sum().backward()
    gy, ga = _decay_gradients(y0, -1.0, 1.0)
    # rtol 1e-2 on a solve of one time unit plus float16's rounding (u = 4.9e-4 per operation):
    # 2 % relative is above both, and a zero or NaN gradient (the failure mode) is far outside
    torch.testing.assert_close(y0.grad.double(), gy, rtol=2e-2, atol=0)
    assert f.a.grad.dtype == F16
    assert abs(float(f.a.grad) - ga) < 2e-2 * ga


def test_backward_norms_of_half_states_are_finite():
    """Both backward norms (the flat one the solve uses, the tuple one a user's norm may call) give the
    RMS 1000 of a float16 vector of 1000s, whose squares (1e6) overflow float16; in float32, exactly."""
    from hybrid_node.sensitivity._backward import DefaultTupleNorm, GroupRMS

    x = torch.full((4,), 1000.0, dtype=F16)
    assert float(GroupRMS([2, 2], x)(x)) == 1000.0
    parts = (torch.zeros((), dtype=F16), x[:2], x[2:])
    assert float(DefaultTupleNorm([2], 2, seminorm=False)(parts)) == 1000.0
