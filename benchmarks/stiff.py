"""Stiff solvers of the torch backend against scipy (Radau, BDF, LSODA) and dopri5.

Prints one table per problem: accepted steps, NFE, Jacobian evaluations, wall time and the maximum
relative error against a scipy Radau reference at rtol=1e-11. dopri5 runs with a step cap (it needs
a step per ~1/|lambda_max| on stiff problems). With ``--batch B`` the Van der Pol problem is also solved
for B independent initial states in one batched solve (the implicit solvers use per-sample Jacobian
blocks); on a GPU pass ``--device cuda``.

    python benchmarks/stiff.py [--quick] [--batch 1024] [--device cuda]
    python benchmarks/stiff.py --multistep [--batches 1,256]   # the table of docs/stiff.md

``--multistep`` compares the variable-order methods (bdf, lsoda, auto with either stiff method) with
rodas5p, kencarp4 and scipy's BDF, LSODA and Radau: accepted steps, attempted steps, NFE, Jacobians, LU
factorisations, wall time and error, for a batch of B copies of each problem (initial states perturbed
by up to 1%), float64. scipy solves the stacked B*D system with its block-diagonal Jacobian as a sparse
matrix (BDF, Radau: sparse LU) or a band (LSODA). The error is the largest relative error at the final
time over up to 8 samples spread over the batch, against scipy Radau at rtol=1e-11 per sample.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import scipy.sparse
import torch
from scipy.integrate import solve_ivp

import hybrid_node as hn
from hybrid_node.solvers import esdirk, multistep, rosenbrock
from hybrid_node.solvers.implicit import IMPLICIT_METHODS
from hybrid_node.solvers.registry import METHOD_SPECS

try:
    from ._cli import check_device, non_negative_int, positive_int
    from .stiff_problems import HIRES_Y0, hires, robertson, van_der_pol
except ImportError:  # run as a script (python benchmarks/stiff.py): its folder is on sys.path
    from _cli import check_device, non_negative_int, positive_int
    from stiff_problems import HIRES_Y0, hires, robertson, van_der_pol

_LU_COUNT = [0]


def _counting(factorize):
    """The solvers' ``factorize`` with a counter (benchmark instrumentation: Stats has no LU count)."""

    def wrapped(*args, **kwargs):
        _LU_COUNT[0] += 1
        return factorize(*args, **kwargs)

    return wrapped


for _module in (esdirk, multistep, rosenbrock):
    _module.factorize = _counting(_module.factorize)


PROBLEMS = {
    "robertson": (robertson, [1.0, 0.0, 0.0], 1e4, 1e-10),
    "vanderpol-1000": (van_der_pol(1000.0), [2.0, 0.0], 1000.0, 1e-3),
    "hires": (hires, HIRES_Y0, 321.8122, 1e-7),
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


def _adaptive_solver(name: str):
    """The adaptive solver of a stiff method name (``trbdf2`` alone means fixed steps by name)."""
    return hn.TRBDF2() if name == "trbdf2" else IMPLICIT_METHODS[name][0]()


def run_problem(name, methods, rtol, atol, dopri_cap):
    f, y0, t1, floor = PROBLEMS[name]
    t = torch.linspace(0, t1, 5, dtype=torch.float64)
    ref = solve_ivp(_np(f), (0, t1), y0, method="Radau", rtol=1e-11, atol=1e-13, t_eval=t.numpy(), jac=_jac(f)).y.T
    rows = []
    y0t = torch.tensor(y0, dtype=torch.float64)
    for m in methods + ["dopri5"]:
        solver = hn.Dopri5() if m == "dopri5" else _adaptive_solver(m)
        ctrl = hn.PIDController(rtol=rtol, atol=atol, max_num_steps=dopri_cap if m == "dopri5" else 10**6)
        # warm-up, as in run_multistep: the first Jacobian through torch.func traces the field, and the
        # process's first solve pays one-time costs that would land on whichever method runs first
        hn.solve(f, y0t, t * 1e-3, solver=solver, controller=ctrl, throw=False)
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
    f = van_der_pol(1000.0)
    for m in methods:
        hn.odeint(f, y0, t / 1000, method=m)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        sol = hn.solve(f, y0, t, solver=_adaptive_solver(m), controller=hn.PIDController(rtol=rtol, atol=atol))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        el = time.perf_counter() - start
        rows.append((m, sol.stats.n_accepted, sol.stats.nfe, sol.stats.n_jacobian, el, "-"))
    return rows


def _batched_problem(name, batch):
    """B perturbed copies of a problem: the torch state (B, D), scipy's stacked (B*D,) system, and its
    Jacobian as a sparse block-diagonal matrix (BDF, Radau) and in LSODA's packed band format.

    The stacked system is sample-major, so its Jacobian is block diagonal with D x D blocks: sparse LU
    for scipy's BDF and Radau, a band of half-width D-1 for LSODA. Without this scipy factorises the
    dense (B*D)^2 matrix, which is no fair comparison of a batched solve.
    """
    f, y0, t1, floor = PROBLEMS[name]
    gen = torch.Generator().manual_seed(0)
    base = torch.tensor(y0, dtype=torch.float64)
    d = base.numel()
    y0b = base * (1 + 0.01 * torch.rand(batch, d, generator=gen, dtype=torch.float64)) if batch > 1 else base

    def fun(t, y):
        with torch.no_grad():
            z = torch.from_numpy(np.ascontiguousarray(y)).reshape(batch, -1)
            return f(torch.tensor(t, dtype=torch.float64), z).reshape(-1).numpy()

    def blocks(t, y):
        z = torch.from_numpy(np.ascontiguousarray(y)).reshape(batch, -1)
        return torch.func.vmap(torch.func.jacrev(lambda v: f(torch.tensor(t, dtype=torch.float64), v)))(z).numpy()

    def jac_sparse(t, y):
        return scipy.sparse.block_diag(list(blocks(t, y)), format="csc")

    rows = np.arange(d)[:, None]
    cols = np.arange(d)[None, :]
    band_row = np.broadcast_to(d - 1 + rows - cols, (d, d))  # packed row of J[i, j]: uband + i - j

    def jac_banded(t, y):
        packed = np.zeros((2 * d - 1, batch * d))
        b = blocks(t, y)  # (B, D, D)
        for a in range(d):
            for c in range(d):
                packed[band_row[a, c], c::d] = b[:, a, c]
        return packed

    return f, y0b, t1, floor, fun, jac_sparse, jac_banded


def _reference(name, y0b, samples):
    """scipy Radau at rtol=1e-11, atol=1e-13 (dense Jacobian) for the given samples, one at a time."""
    f, _, t1, _ = PROBLEMS[name]
    y0s = y0b.reshape(-1, y0b.shape[-1]).numpy()
    return np.stack(
        [
            solve_ivp(_np(f), (0, t1), y0s[i], method="Radau", rtol=1e-11, atol=1e-13, jac=_jac(f)).y[:, -1]
            for i in samples
        ]
    )


class _Attempts:
    """Counts scipy BDF's and Radau's step attempts: one Newton solve each (a retry after a Jacobian
    refresh counts again), by wrapping their module-level Newton functions (benchmark instrumentation)."""

    def __init__(self):
        import scipy.integrate._ivp.bdf as bdf
        import scipy.integrate._ivp.radau as radau

        self.n = 0
        for module, fname in ((bdf, "solve_bdf_system"), (radau, "solve_collocation_system")):
            inner = getattr(module, fname)
            setattr(module, fname, self._counting(inner))

    def _counting(self, inner):
        def wrapped(*args, **kwargs):
            self.n += 1
            return inner(*args, **kwargs)

        return wrapped


_ATTEMPTS = None


def run_multistep(name, batch, rtol, atol, n_ref=8):
    """One problem, batch B: our bdf/lsoda/auto/rodas5p/kencarp4 against scipy BDF/LSODA/Radau.

    The error is the largest relative error at the final time over ``n_ref`` samples spread over the
    batch (all of them when B <= n_ref), against scipy Radau at rtol=1e-11 per sample.
    """
    global _ATTEMPTS
    if _ATTEMPTS is None:
        _ATTEMPTS = _Attempts()
    f, y0b, t1, floor, fun, jac_sparse, jac_banded = _batched_problem(name, batch)
    d = len(PROBLEMS[name][1])
    samples = np.unique(np.linspace(0, batch - 1, min(batch, n_ref)).round().astype(int))
    ref = _reference(name, y0b, samples)

    def error(y_final):
        y = np.asarray(y_final).reshape(batch, d)[samples]
        return float(np.max(np.abs(y - ref) / (floor + np.abs(ref))))

    t = torch.tensor([0.0, t1], dtype=torch.float64)
    y0flat = y0b.reshape(-1).numpy()
    rows = []
    for m, solver in (
        ("bdf", METHOD_SPECS["bdf"].solver()),
        ("lsoda", METHOD_SPECS["lsoda"].solver()),
        ("auto", METHOD_SPECS["auto"].solver()),
        ("auto (stiff_method=bdf)", METHOD_SPECS["auto"].solver(stiff_method="bdf")),
        ("rodas5p", METHOD_SPECS["rodas5p"].solver()),
        ("kencarp4", METHOD_SPECS["kencarp4"].solver()),
    ):
        # warm-up: the first Jacobian through torch.func traces the field (not part of the solve's cost)
        hn.solve(f, y0b, t * 1e-3, solver=solver, controller=hn.PIDController(rtol=rtol, atol=atol))
        _LU_COUNT[0] = 0
        start = time.perf_counter()
        sol = hn.solve(f, y0b, t, solver=solver, controller=hn.PIDController(rtol=rtol, atol=atol))
        el = time.perf_counter() - start
        st = sol.stats
        attempts = st.n_accepted + st.n_rejected
        rows.append((m, st.n_accepted, attempts, st.nfe, st.n_jacobian, _LU_COUNT[0], el, error(sol.ys[-1])))
    for m in ("BDF", "LSODA", "Radau"):
        kw = {"jac": jac_banded, "lband": d - 1, "uband": d - 1} if m == "LSODA" else {"jac": jac_sparse}
        _ATTEMPTS.n = 0
        start = time.perf_counter()
        r = solve_ivp(fun, (0, t1), y0flat, method=m, rtol=rtol, atol=atol, **kw)
        el = time.perf_counter() - start
        attempts = _ATTEMPTS.n if m != "LSODA" else "-"
        rows.append((f"scipy {m}", len(r.t) - 1, attempts, r.nfev, r.njev, r.nlu, el, error(r.y[:, -1])))
    return rows


def print_multistep_table(title, rows):
    print(f"\n### {title}\n")
    print("| solver | accepted steps | attempts | NFE | Jacobians | LUs | time (s) | max rel. error |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, steps, attempts, nfe, njac, nlu, el, err in rows:
        print(f"| {m} | {steps} | {attempts} | {nfe} | {njac} | {nlu} | {el:.2f} | {err:.1e} |")


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
    parser.add_argument(
        "--batch", type=non_negative_int, default=0, help="also solve Van der Pol for this many states at once"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma-separated, of {', '.join(PROBLEMS)}")
    parser.add_argument("--multistep", action="store_true", help="the bdf/lsoda/auto table (docs/stiff.md)")
    parser.add_argument("--batches", default="1,256", help="batch sizes of --multistep, comma-separated")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    problems = args.problems.split(",")
    unknown = [p for p in problems if p not in PROBLEMS]
    if unknown:
        parser.error(f"argument --problems: unknown {unknown}; known: {', '.join(PROBLEMS)}")
    try:
        batches = [positive_int(b) for b in args.batches.split(",")]
    except argparse.ArgumentTypeError as e:
        parser.error(f"argument --batches: {e}")
    torch.set_num_threads(1)
    if args.multistep:
        rtol, atol = 1e-6, 1e-8
        for batch in batches:
            for name in problems:
                a = atol if name != "vanderpol-1000" else rtol
                title = f"{name}, batch x{batch}, float64, rtol={rtol}, atol={a}"
                print_multistep_table(title, run_multistep(name, batch, rtol, a))
                sys.stdout.flush()
        return 0
    methods = (
        ["rodas5p", "kencarp4"]
        if args.quick
        else ["rodas5p", "rodas4", "rosenbrock23", "kencarp4", "kvaerno5", "trbdf2"]
    )
    rtol, atol = (1e-5, 1e-8) if args.quick else (1e-6, 1e-10)
    for name in problems:
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
