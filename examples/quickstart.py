"""Quick start: odeint (torchdiffeq's call), solve (the composable core) and the backend flag.

Run: python examples/quickstart.py
"""

import argparse

import torch

import hybrid_node as hn

argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, and no other options

# A damped oscillator x'' = -x - 0.1 x', as a 2-D first-order system, for a batch of 3 initial states.
A = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=torch.float64)


def field(t, y):
    return y @ A.T


y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
t = torch.linspace(0.0, 10.0, 6, dtype=torch.float64)

# 1. odeint: the same arguments and output layout as torchdiffeq.odeint -> (len(t), *y0.shape)
ys = hn.odeint(field, y0, t, method="dopri5", rtol=1e-8, atol=1e-10)
exact = torch.stack([y0 @ torch.linalg.matrix_exp(A * ti).T for ti in t])
print("odeint:", tuple(ys.shape), "max error vs expm:", f"{(ys - exact).abs().max():.2e}")

# Fixed steps with torchdiffeq's option names
ys_rk4 = hn.odeint(field, y0, t, method="rk4", options={"step_size": 0.01})
print("rk4, step 0.01: max error", f"{(ys_rk4 - exact).abs().max():.2e}")

# 2. solve: solver and step-size controller as objects; the Solution carries stats and status
sol = hn.solve(field, y0, t, solver=hn.Tsit5(), controller=hn.PIDController(rtol=1e-8, atol=1e-10))
print(
    "solve:", sol.status.name, "nfe", sol.stats.nfe, "accepted", sol.stats.n_accepted, "rejected", sol.stats.n_rejected
)

# Failures are errors that name the time reached, or a status with throw=False
try:
    hn.odeint(lambda t, y: y**2, torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64))
except hn.SolverError as e:
    print("y' = y^2 blows up at t = 1:", f"stopped at t={e.t:.4f}", f"({e.status.name})")

# 3. Backend flag: per call, a process default, a context manager, or HYBRID_NODE_BACKEND=julia
ys_torch = hn.odeint(field, y0, t, backend="torch")
with hn.use_backend("torch"):
    ys_ctx = hn.odeint(field, y0, t)
print("backend:", hn.get_backend())
try:
    hn.odeint(field, y0, t, backend="julia")
    print("the Julia backend is available")
except hn.JuliaNotAvailableError as e:
    print("backend='julia' needs Julia:", str(e).splitlines()[0])
