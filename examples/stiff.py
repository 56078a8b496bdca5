"""Stiff solve: van der Pol with mu = 1000, stiff methods against dopri5, and a gradient through it.

y1' = y2, y2' = mu ((1 - y1^2) y2 - y1) from (2, 0): after a short transient y1 creeps along a slow
branch while the Jacobian has an eigenvalue near -3 mu, so an explicit method's step is held by
stability, not accuracy (Hairer & Wanner, Solving ODEs II, IV.1). Prints, for bdf, kvaerno5 and dopri5
at rtol = atol = 1e-6, the accepted and rejected steps, the field evaluations (NFE) and the error at t1
against scipy's Radau at rtol 1e-10; then dy1(t1)/dmu by direct backprop through bdf at 1e-8 against a
central finite difference of scipy Radau solves at rtol 1e-11.

Run: python examples/stiff.py  (about 15 s on one core; --t1 0.5 for a quick look)
"""

import argparse

import numpy as np
import torch
from scipy.integrate import solve_ivp

import hybrid_node as hn

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--t1", type=float, default=1.0, help="end time (default 1; dopri5's steps grow with it)")
args = p.parse_args()
if not 0 < args.t1 <= 20:
    p.error(f"--t1 must be in (0, 20], got {args.t1}")
MU, Y0 = 1000.0, [2.0, 0.0]
y0, t = torch.tensor(Y0, dtype=torch.float64), torch.tensor([0.0, args.t1], dtype=torch.float64)


def vdp(mu):
    return lambda t, y: torch.stack([y[..., 1], mu * ((1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0])], -1)


def radau(mu: float, rtol: float) -> np.ndarray:
    """scipy's Radau IIA (order 5) solution at t1: an independent reference."""

    def field(_, y):
        return [y[1], mu * ((1 - y[0] ** 2) * y[1] - y[0])]

    sol = solve_ivp(field, (0.0, args.t1), Y0, method="Radau", rtol=rtol, atol=rtol * 1e-2)
    assert sol.success, sol.message
    return sol.y[:, -1]


reference = radau(MU, 1e-10)
print(f"van der Pol mu={MU:g} on [0, {args.t1:g}], rtol = atol = 1e-6; reference: scipy Radau at 1e-10")
for name, solver in [("bdf", hn.BDF()), ("kvaerno5", hn.Kvaerno5()), ("dopri5", hn.Dopri5())]:
    sol = hn.solve(vdp(MU), y0, t, solver=solver, controller=hn.PIDController(rtol=1e-6, atol=1e-6))
    error = np.abs(sol.ys[-1].numpy() - reference).max()
    s = sol.stats
    print(f"{name:9s} accepted {s.n_accepted:5d}  rejected {s.n_rejected:4d}  NFE {s.nfe:6d}  error {error:.2e}")

# Direct backprop differentiates bdf's accepted steps with their sizes held fixed (docs/gradients.md);
# at rtol 1e-8 it is a few 1e-4 (relative) from the exact solution's derivative here.
mu = torch.tensor(MU, dtype=torch.float64, requires_grad=True)
sol = hn.solve(vdp(mu), y0, t, solver=hn.BDF(), controller=hn.PIDController(rtol=1e-8, atol=1e-8))
(grad,) = torch.autograd.grad(sol.ys[-1, 0], mu)
h = 1e-4 * MU  # central difference; a tenfold larger h moves it by ~2e-6 relative (measured)
fd = (radau(MU + h, 1e-11)[0] - radau(MU - h, 1e-11)[0]) / (2 * h)
print(f"dy1(t1)/dmu: bdf backprop {grad.item():.6e}  Radau finite difference {fd:.6e}")
print(f"relative difference {abs(grad.item() - fd) / abs(fd):.1e}")
