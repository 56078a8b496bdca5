"""Backend switch: one Neural ODE solved with backend="torch" and backend="julia", and the check between them.

The torch half solves an MLP vector field with tsit5 and takes gradients of a loss with respect to y0
and the weights twice, by direct backprop and by the interpolating adjoint, which must agree. The
Julia half (DifferentialEquations.jl through juliacall, see docs/julia.md) solves the same problem
with its default GaussAdjoint gradients and compares outputs and gradients with the torch ones. Without
Julia it prints the library's one-line reason and exits 0; with Julia, exit status 1 if the backends
disagree.

Run: python examples/backend_switch.py  (a few seconds without Julia)
"""

import argparse
import importlib.util
import sys

if importlib.util.find_spec("juliacall") is not None:
    import juliacall  # noqa: F401  (before torch: docs/julia.md, a known crash otherwise)

import torch

import hybrid_node as hn
from hybrid_node.julia.translate import MLPVectorField

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--batch", type=int, default=16, help="initial states (default 16)")
args = p.parse_args()
if args.batch < 1:
    p.error(f"--batch must be >= 1, got {args.batch}")
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()
func = MLPVectorField(net)  # Julia rebuilds this MLP natively: no Python call per evaluation
y0 = torch.randn(args.batch, 2, dtype=torch.float64)
t = torch.linspace(0.0, 1.0, 10, dtype=torch.float64)
TOL = dict(rtol=1e-9, atol=1e-11)  # each solve's global error: a few 1e-9


def run(backend: str, sensitivity=None):
    """The solution and the gradients of a weighted sum of it, w.r.t. y0 and the weights."""
    x0 = y0.clone().requires_grad_(True)
    kw = {} if sensitivity is None else {"sensitivity": sensitivity}
    ys = hn.solve(func, x0, t, solver=hn.Tsit5(), controller=hn.PIDController(**TOL), backend=backend, **kw).ys
    loss = (ys * torch.linspace(0.5, 1.5, ys.numel(), dtype=ys.dtype).reshape(ys.shape)).sum()
    grads = torch.autograd.grad(loss, [x0, *net.parameters()])
    return ys.detach(), torch.cat([g.flatten() for g in grads])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


ys, grads = run("torch")
_, grads_adj = run("torch", hn.InterpolatingAdjoint())
print(f"torch: ys {tuple(ys.shape)}, {grads.numel()} gradient entries")
print(f"torch: adjoint vs backprop gradients, max rel. difference {rel(grads_adj, grads):.1e}")

try:
    ys_jl, grads_jl = run("julia")
except hn.JuliaNotAvailableError as e:
    print("julia: not available:", str(e).splitlines()[0])
    sys.exit(0)
# Both solves are within ~1e-8 of the exact flow; 1e-6 relative leaves a 100x margin.
d_ys, d_grads = rel(ys_jl, ys), rel(grads_jl, grads)
print(f"julia vs torch: ys max rel. difference {d_ys:.1e}, gradients {d_grads:.1e}")
ok = d_ys < 1e-6 and d_grads < 1e-6
print("backends agree" if ok else "BACKENDS DISAGREE")
sys.exit(0 if ok else 1)
