"""Stiff solvers of the torch backend against scipy (Radau, BDF, LSODA) and dopri5.

Prints one table per problem: accepted steps, NFE, Jacobian evaluations, wall time and the maximum
relative error against a scipy Radau reference at rtol=1e-11. dopri5 runs with a step cap (it needs
a step per ~1/|lambda_max| on stiff problems). With ``--batch B`` the Van der Pol problem is also solved
for B independent initial states in one batched solve (the implicit solvers use per-sample Jacobian
blocks); on a GPU pass ``--device cuda``.

    python benchmarks/stiff.py [--quick] [--batch 1024] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

import hybrid_node as hn
from hybrid_node.solvers.implicit import IMPLICIT_METHODS


def robertson(t, y):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2], -1)


def van_der_pol(t, y, mu=1000.0):
    return torch.stack([y[..., 1], mu * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)


def hires(t, y):
    y1, y2, y3, y4, y5, y6, y7, y8 = y.unbind(-1)
    return torch.stack(
        [
            -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
            1.71 * y1 - 8.75 * y2,
            -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
            8.32 * y2 + 1.71 * y3 - 1.12 * y4,
            -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
            -280.0 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
            280.0 * y6 * y8 - 1.81 * y7,
            -280.0 * y6 * y8 + 1.81 * y7,
        ],
        -1,
    )


PROBLEMS = {
    "robertson": (robertson, [1.0, 0.0, 0.0], 1e4, 1e-10),
    "vanderpol-1000": (van_der_pol, [2.0, 0.0], 1000.0, 1e-3),
    "hires": (hires, [1.0, 0, 0, 0, 0, 0, 0, 0.0057], 321.8122, 1e-7),
}


def _np(f):
    def fn(t, y):
        with torch.no_grad():
            return f(torch.tensor(t, dtype=torch.float64), torch.from_numpy(np.ascontiguousarray(y))).numpy()

    return fn


def _jac(f):
    def jac(t, y):
        return torch.autograd.functional.jacobian(
            lambda z: f(torch.tensor(t, dtype=torch.float64), z), torch.from_numpy(np.ascontiguousarray(y))
        ).numpy()

    return jac


def run_problem(name, methods, rtol, atol, dopri_cap):
    f, y0, t1, floor = PROBLEMS[name]
    t = torch.linspace(0, t1, 5, dtype=torch.float64)
    ref = solve_ivp(_np(f), (0, t1), y0, method="Radau", rtol=1e-11, atol=1e-13, t_eval=t.numpy(), jac=_jac(f)).y.T
    rows = []
    y0t = torch.tensor(y0, dtype=torch.float64)
    for m in methods + ["dopri5"]:
        solver = hn.Dopri5() if m == "dopri5" else IMPLICIT_METHODS[m][0]()
        ctrl = hn.PIDController(rtol=rtol, atol=atol, max_num_steps=dopri_cap if m == "dopri5" else 10**6)
        start = time.perf_counter()
        sol = hn.solve(f, y0t, t, solver=solver, controller=ctrl, throw=False)
        el = time.perf_counter() - start
        ok = sol.status == hn.Status.SUCCESS
        err = float(np.max(np.abs(sol.ys.numpy() - ref) / (floor + np.abs(ref)))) if ok else float("nan")
        rows.append(
            (
                m,
                sol.stats.n_accepted,
                sol.stats.nfe,
                sol.stats.n_jacobian,
                el,
                err if ok else f"stopped at {dopri_cap} steps",
            )
        )
    for m in ("Radau", "BDF", "LSODA"):
        start = time.perf_counter()
        r = solve_ivp(_np(f), (0, t1), y0, method=m, rtol=rtol, atol=atol, t_eval=t.numpy(), jac=_jac(f))
        el = time.perf_counter() - start
        err = float(np.max(np.abs(r.y.T - ref) / (floor + np.abs(ref))))
        rows.append((f"scipy {m}", "-", r.nfev, r.njev, el, err))
    return rows


def run_batched(batch, device, methods, rtol, atol):
    gen = torch.Generator().manual_seed(0)
    y0 = torch.stack([2.0 + 0.1 * torch.rand(batch, generator=gen), torch.zeros(batch)], -1).double().to(device)
    t = torch.tensor([0.0, 100.0], dtype=torch.float64, device=device)
    rows = []
    for m in methods:
        hn.odeint(van_der_pol, y0, t / 1000, method=m)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        sol = hn.solve(
            van_der_pol, y0, t, solver=IMPLICIT_METHODS[m][0](), controller=hn.PIDController(rtol=rtol, atol=atol)
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        el = time.perf_counter() - start
        rows.append((m, sol.stats.n_accepted, sol.stats.nfe, sol.stats.n_jacobian, el, "-"))
    return rows


def print_table(title, rows):
    print(f"\n### {title}\n")
    print("| solver | steps | NFE | Jacobians | time (s) | max rel. error |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m, steps, nfe, njac, el, err in rows:
        e = f"{err:.1e}" if isinstance(err, float) else err
        print(f"| {m} | {steps} | {nfe} | {njac} | {el:.2f} | {e} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two methods, looser tolerances")
    parser.add_argument("--batch", type=int, default=0, help="also solve Van der Pol for this many states at once")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    methods = (
        ["rodas5p", "kencarp4"]
        if args.quick
        else ["rodas5p", "rodas4", "rosenbrock23", "kencarp4", "kvaerno5", "trbdf2"]
    )
    rtol, atol = (1e-5, 1e-8) if args.quick else (1e-6, 1e-10)
    for name in args.problems.split(","):
        a = atol if name != "vanderpol-1000" else rtol
        print_table(f"{name}, rtol={rtol}, atol={a}", run_problem(name, methods, rtol, a, dopri_cap=20000))
    if args.batch:
        print_table(
            f"vanderpol-1000 batched x{args.batch} on {args.device}, t in [0, 100], rtol=atol={rtol}",
            run_batched(args.batch, args.device, methods, rtol, rtol),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
