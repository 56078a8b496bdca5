"""When does per-sample step-size control pay? Shared steps vs per-sample steps, interleaved.

Usage::

    python -m benchmarks.per_sample [--repeats 5] [--batch 64] [--out DIR]

Workloads (dopri5, float64, rtol 1e-6, atol 1e-8, 20 output times):
- ``pulses``: y' = -y + exp(-((t - t_b) / w)^2) / w, a sharp pulse at a different time t_b in [0, 10]
  for every element (w = 0.1). A shared step must be small wherever any element has its pulse; a
  per-sample step only near the element's own pulse. Exact solution known, so the error is reported.
- ``pulses+mlp``: the same plus 0.1 * tanh-MLP(y) (width 256): a field as costly as a neural one, so that
  the evaluations saved outweigh the per-sample bookkeeping; error against a shared solve at rtol 1e-10.
- ``uniform``: the mlp-fwd field (every element alike): the per-sample bookkeeping is pure cost.

``vmap (per-problem)`` solves each element as its own problem under ``torch.func.vmap``
(docs/transforms.md): per-problem steps like ``per_sample``, every attempt masked until the slowest
problem ends.

Prints a table (median ms, batched field evaluations, max error) and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from scipy.special import erf

import hybrid_node as hn

from ._cli import non_negative_int, positive_int
from .workloads import mlp_problem

WIDTH = 0.1


class Pulses(torch.nn.Module):
    """dy/dt = -y + g_b(t) [+ 0.1 tanh-MLP(y)], g_b a Gaussian pulse of unit mass centred at t_b (one
    per element). The optional MLP (width ``hidden``) makes the field cost like a neural one."""

    def __init__(self, centres: torch.Tensor, hidden: int = 0):
        super().__init__()
        self.centres = centres
        self.nfe = 0
        self.net = None
        if hidden:
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(1, hidden),
                torch.nn.Tanh(),
                torch.nn.Linear(hidden, hidden),
                torch.nn.Tanh(),
                torch.nn.Linear(hidden, 1),
            ).double()

    def forward(self, t, y):
        self.nfe += 1
        tt = t.reshape(-1, 1) if t.dim() else t
        out = -y + torch.exp(-(((tt - self.centres[:, None]) / WIDTH) ** 2)) / (WIDTH * math.sqrt(math.pi))
        return out if self.net is None else out + 0.1 * self.net(y)


def pulses_exact(centres: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """y(t) = e^{-t} (1 + int_0^t e^s g(s) ds), with the integral in closed form (erf)."""
    out = np.empty((len(ts), len(centres)))
    for i, t in enumerate(ts):
        # int_0^t e^s exp(-((s-c)/w)^2)/(w sqrt(pi)) ds = 0.5 e^{c + w^2/4} [erf((t-c)/w - w/2) - erf(-c/w - w/2)]
        a = (
            0.5
            * np.exp(centres + WIDTH**2 / 4)
            * (erf((t - centres) / WIDTH - WIDTH / 2) - erf(-centres / WIDTH - WIDTH / 2))
        )
        out[i] = np.exp(-t) * (1.0 + a)
    return out


def torchode_controller(to, term, rtol: float, atol: float, dtype: torch.dtype):
    """torchode's I controller with the tolerances in the state's ``dtype``.

    ``IntegralController`` stores its tolerances with ``torch.tensor(tol)``, float32 for a Python float
    (``atol=1e-8`` became 9.99999994e-09), so a float64 comparison with hybrid_node would solve a
    slightly different problem; float64 tensors are kept as they are.

    Args:
        to: the ``torchode`` module.
        term: the ``to.ODETerm``.
        rtol, atol: the tolerances.
        dtype: the state's dtype.

    Returns:
        The ``to.IntegralController``.
    """
    with warnings.catch_warnings():
        # torchode copies the tensors with torch.tensor(tol), which warns about copy construction
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        return to.IntegralController(
            atol=torch.tensor(atol, dtype=dtype), rtol=torch.tensor(rtol, dtype=dtype), term=term
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument(
        "--hidden", type=non_negative_int, default=256, help="MLP width of the pulses+mlp field (0: no MLP)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres = np.sort(rng.uniform(0.5, 9.5, args.batch))
    pulse = Pulses(torch.from_numpy(centres))
    y0 = torch.ones(args.batch, 1, dtype=torch.float64)
    t = torch.linspace(0, 10, 20, dtype=torch.float64)
    exact = torch.from_numpy(pulses_exact(centres, t.numpy())).unsqueeze(-1)
    mlp, my0, mt, _ = mlp_problem(batch=args.batch * 8)
    neural = Pulses(torch.from_numpy(centres), hidden=args.hidden)
    with torch.no_grad():  # reference of the MLP variant: shared steps at tight tolerance
        neural_ref = hn.odeint(neural, y0, t, rtol=1e-10, atol=1e-12)
    cases = {
        ("pulses", "shared"): lambda: hn.odeint(pulse, y0, t, rtol=1e-6, atol=1e-8),
        ("pulses", "per-sample"): lambda: hn.odeint(pulse, y0, t, rtol=1e-6, atol=1e-8, options={"per_sample": True}),
        ("pulses+mlp", "shared"): lambda: hn.odeint(neural, y0, t, rtol=1e-6, atol=1e-8),
        ("pulses+mlp", "per-sample"): lambda: hn.odeint(
            neural, y0, t, rtol=1e-6, atol=1e-8, options={"per_sample": True}
        ),
        ("uniform", "shared"): lambda: hn.odeint(mlp, my0, mt, rtol=1e-5, atol=1e-6),
        ("uniform", "per-sample"): lambda: hn.odeint(mlp, my0, mt, rtol=1e-5, atol=1e-6, options={"per_sample": True}),
    }
    calls = [0]  # field calls of the vmap rows (one call evaluates every member)

    def vmapped(net):
        def one(centre, y):
            def field(tt, yy):
                calls[0] += 1
                out = -yy + torch.exp(-(((tt - centre) / WIDTH) ** 2)) / (WIDTH * math.sqrt(math.pi))
                return out if net is None else out + 0.1 * net(yy)

            return hn.odeint(field, y, t, rtol=1e-6, atol=1e-8)

        return lambda: torch.func.vmap(one, out_dims=1)(pulse.centres, y0)

    cases[("pulses", "vmap (per-problem)")] = vmapped(None)
    cases[("pulses+mlp", "vmap (per-problem)")] = vmapped(neural.net)
    try:
        import torchode as to

        def torchode_pulses():
            term = to.ODETerm(pulse)
            step = to.Dopri5(term=term)
            solver = to.AutoDiffAdjoint(step, torchode_controller(to, term, 1e-6, 1e-8, y0.dtype))
            sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t.unsqueeze(0).expand(args.batch, -1)))
            return sol.ys.transpose(0, 1)

        cases[("pulses", "torchode (per-sample)")] = torchode_pulses
    except ImportError:
        pass
    try:
        import torchdiffeq

        cases[("pulses", "torchdiffeq (shared)")] = lambda: torchdiffeq.odeint(pulse, y0, t, rtol=1e-6, atol=1e-8)
    except ImportError:
        pass
    info = {}
    with torch.no_grad():
        for key, fn in cases.items():
            field = {"pulses": pulse, "pulses+mlp": neural, "uniform": mlp}[key[0]]
            field.nfe = calls[0] = 0
            ys = fn()
            field.nfe += calls[0]
            ref = {"pulses": exact, "pulses+mlp": neural_ref}.get(key[0])
            err = float((ys - ref).abs().max()) if ref is not None else None
            info[key] = {"nfe": field.nfe, "max_err": err}
        times = {k: [] for k in cases}
        order = list(cases)
        for _ in range(args.repeats):
            random.shuffle(order)
            for k in order:
                start = time.perf_counter()
                cases[k]()
                times[k].append(time.perf_counter() - start)
    rows = []
    print("| workload | stepping | median ms | min ms | batched NFE | max error |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k in cases:
        row = {
            "workload": k[0],
            "stepping": k[1],
            "median_ms": 1e3 * statistics.median(times[k]),
            "min_ms": 1e3 * min(times[k]),
            **info[k],
        }
        rows.append(row)
        err = "-" if row["max_err"] is None else f"{row['max_err']:.1e}"
        print(f"| {k[0]} | {k[1]} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {row['nfe']} | {err} |")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "per_sample.json"), "w") as fh:
            json.dump({"batch": args.batch, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
