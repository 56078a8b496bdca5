"""Gradient error and time of the reversible adjoint vs backsolve and interpolating adjoints, contracting field.

Workload: dy/dt = -4 y + tanh(W2 tanh(W1 y)) (an MLP 2->32->2 added to a strong contraction), batch 256,
float32, fixed-step rk4 (h = 0.01) over t in [0, 5], loss = sum of y(5)^2 + sum sin(y(5)). The
reference gradient is direct backprop through dopri5 at rtol = atol = 1e-10 in float64 (the
continuous gradient to ~1e-9). Backsolve integrates the state backwards in time, where the
contraction becomes an expansion by e^(4 * 5) = 5e8: float32 rounding in y(5) is amplified into the
gradient. The interpolating adjoint stores the forward solution; the reversible adjoint rebuilds it
exactly from the reversible method's closed-form inverse (McCallum & Foster 2024).

Problem "attractor" (``--problem attractor``): dy/dt = -K (y - c) + tanh(W2 tanh(W1 y)) with c = (2, -1),
which contracts onto a nonzero point. Backsolve's backward reconstruction of y then carries rounding
of size eps |c| amplified by up to e^(K T), which the state near c cannot absorb. The reversible rows
use two couplings: lambda = 0.999 (the paper's default) and lambda = e^(-K h) rounded to 4 digits, which
keeps the coupled z-mode of the reversible method near the unit circle in both directions (see
docs/reversible.md for the stability analysis).

Usage::

    python benchmarks/reversible_gradients.py                      # contracting onto 0 (K = 4)
    python benchmarks/reversible_gradients.py --problem attractor  # contracting onto c != 0 (K = 3)
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import hybrid_node as hn

try:
    from ._cli import positive_float
except ImportError:  # run as a script (python benchmarks/reversible_gradients.py): its folder is on sys.path
    from _cli import positive_float


class Field(torch.nn.Module):
    def __init__(self, rate: float = 4.0, centre: tuple[float, float] = (0.0, 0.0)):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
        self.rate = rate
        self.register_buffer("centre", torch.tensor(centre))

    def forward(self, t, y):
        return -self.rate * (y - self.centre) + torch.tanh(self.net(y))


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=("origin", "attractor"), default="origin")
    parser.add_argument("--step", type=positive_float, default=0.01, help="rk4 step h (default 0.01)")
    parser.add_argument("--rate", type=positive_float, default=None, help="K (default 4 for origin, 3 for attractor)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rate, centre = (4.0, (0.0, 0.0)) if args.problem == "origin" else (3.0, (2.0, -1.0))
    rate = args.rate if args.rate is not None else rate
    y0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    ref_field = Field(rate, centre).double()
    reference, _ = gradient(
        ref_field, y0.double(), hn.Dopri5(), hn.PIDController(rtol=1e-10, atol=1e-10), hn.DirectBackprop()
    )
    h = args.step
    fixed = hn.ConstantStepSize(step_size=h)
    matched = round(math.exp(-rate * h), 4)  # the coupling that keeps the z-mode of y' = -rate y neutral
    rows = [
        ("direct (rk4)", hn.RK4(), hn.DirectBackprop()),
        ("checkpointed direct, k = 8 (rk4)", hn.RK4(), hn.DirectBackprop(checkpoints=8)),
        ("backsolve (rk4)", hn.RK4(), hn.BacksolveAdjoint()),
        ("interpolating (rk4)", hn.RK4(), hn.InterpolatingAdjoint()),
        ("direct (reversible rk4, λ = 0.999)", hn.Reversible(hn.RK4()), hn.DirectBackprop()),
        ("reversible adjoint (reversible rk4, λ = 0.999)", hn.Reversible(hn.RK4()), hn.ReversibleAdjoint()),
    ]
    if args.problem == "attractor":
        rows += [
            (f"direct (reversible rk4, λ = {matched})", hn.Reversible(hn.RK4(), matched), hn.DirectBackprop()),
            (
                f"reversible adjoint (reversible rk4, λ = {matched})",
                hn.Reversible(hn.RK4(), matched),
                hn.ReversibleAdjoint(),
            ),
        ]
    print(f"problem {args.problem}: rate {rate}, centre {centre}, h = {h}, float32, batch 256, t in [0, 5]")
    print("| gradient | relative error vs reference | seconds (forward + backward) |")
    print("| --- | --- | --- |")
    for label, solver, sensitivity in rows:
        field = Field(rate, centre)
        g, seconds = gradient(field, y0, solver, fixed, sensitivity)
        error = float((g - reference).norm() / reference.norm())
        print(f"| {label} | {error:.2e} | {seconds:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
