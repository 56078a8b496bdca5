"""Gradient error and time of the reversible adjoint vs backsolve and interpolating adjoints, contracting field.

Workload: dy/dt = -4 y + tanh(W2 tanh(W1 y)) (an MLP 2->32->2 added to a strong contraction), batch 256,
float32, fixed-step rk4 (h = 0.01) over t in [0, 5], loss = sum of y(5)^2 + sum sin(y(5)). The
reference gradient is direct backprop through dopri5 at rtol = atol = 1e-10 in float64 (the
continuous gradient to ~1e-9). Backsolve integrates the state backwards in time, where the
contraction becomes an expansion by e^(4 * 5) = 5e8: float32 rounding in y(5) is amplified into the
gradient. The interpolating adjoint stores the forward solution; the reversible adjoint rebuilds it
exactly from the reversible method's closed-form inverse (McCallum & Foster 2024).

Usage::

    python benchmarks/reversible_gradients.py
"""

from __future__ import annotations

import time

import torch

import hybrid_node as hn


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))

    def forward(self, t, y):
        return -4.0 * y + torch.tanh(self.net(y))


def gradient(field, y0, solver, controller, sensitivity):
    start = time.perf_counter()
    ys = hn.solve(
        field,
        y0,
        torch.tensor([0.0, 5.0], dtype=y0.dtype),
        solver=solver,
        controller=controller,
        sensitivity=sensitivity,
    ).ys
    loss = (ys[-1] ** 2).sum() + ys[-1].sin().sum()
    grads = torch.autograd.grad(loss, tuple(field.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]).double(), time.perf_counter() - start


def main() -> int:
    torch.set_num_threads(1)
    y0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    ref_field = Field().double()
    reference, _ = gradient(
        ref_field, y0.double(), hn.Dopri5(), hn.PIDController(rtol=1e-10, atol=1e-10), hn.DirectBackprop()
    )
    fixed = hn.ConstantStepSize(step_size=0.01)
    rows = [
        ("direct (rk4)", hn.RK4(), hn.DirectBackprop()),
        ("backsolve (rk4)", hn.RK4(), hn.BacksolveAdjoint()),
        ("interpolating (rk4)", hn.RK4(), hn.InterpolatingAdjoint()),
        ("direct (reversible rk4)", hn.Reversible(hn.RK4()), hn.DirectBackprop()),
        ("reversible adjoint (reversible rk4)", hn.Reversible(hn.RK4()), hn.ReversibleAdjoint()),
    ]
    print("| gradient | relative error vs reference | seconds (forward + backward) |")
    print("| --- | --- | --- |")
    for label, solver, sensitivity in rows:
        field = Field()
        g, seconds = gradient(field, y0, solver, fixed, sensitivity)
        error = float((g - reference).norm() / reference.norm())
        print(f"| {label} | {error:.2e} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
