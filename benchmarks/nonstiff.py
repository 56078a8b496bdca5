"""Work-precision of the explicit and multistep methods on non-stiff problems against scipy.

Problems of Hairer, Norsett and Wanner, *Solving Ordinary Differential Equations I* (2nd ed., 1993),
Sections II.10 and III.7: the Arenstorf orbit over one period, the pleiades (7 bodies, t in [0, 3]), Lorenz
(t in [0, 5]), a Kepler orbit of eccentricity 0.9 over one period (exact solution through Kepler's equation)
and a linear system with its exact solution. For each method and rtol = atol in 1e-3 ... 1e-10 the script
prints the error at the final time and the number of field evaluations (NFE), all in float64.

The error is ``max_i |y_i - ref_i| / (1 + |ref_i|)``: the error in the units the tolerance weights
(atol + rtol |y| with rtol = atol). References: exact where known, else scipy DOP853 at rtol 1e-13,
atol 1e-15. Our NFE is counted by a wrapper around the field (every call, the initial-step heuristic's
included); scipy's is its ``nfev``.

    python benchmarks/nonstiff.py [--problems arenstorf,kepler] [--methods dopri5,RK45] [--tols 1e-3,1e-6]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.linalg
import torch
from scipy.integrate import solve_ivp

import hybrid_node as hn
from hybrid_node._registry import build_solver

F64 = torch.float64
OURS = ("dopri5", "tsit5", "bosh3", "dopri8", "adams", "lsoda", "auto", "fehlberg2", "adaptive_heun")
SCIPY = ("RK45", "DOP853", "LSODA")
TOLS = tuple(10.0**-k for k in range(3, 11))
#: the second-order pairs take ~tol^-1/2 steps: below this they run into hundreds of thousands
LOW_ORDER = ("fehlberg2", "adaptive_heun")
LOW_ORDER_MIN_TOL = 1e-7


class Problem(NamedTuple):
    """A test problem: the field in torch and numpy, the initial state, the end time, the exact end state."""

    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    fn: Callable[[float, np.ndarray], np.ndarray]
    y0: np.ndarray
    t_end: float
    exact: np.ndarray | None = None


def arenstorf() -> Problem:
    """The Arenstorf orbit (HNW I, II.0 (0.1)), one period: a satellite between earth and moon."""
    mu = 0.012277471
    nu = 1.0 - mu

    def rhs(y1, y2, y3, y4, sqrt):
        d1 = ((y1 + mu) ** 2 + y2**2) ** 1.5
        d2 = ((y1 - nu) ** 2 + y2**2) ** 1.5
        return (
            y3,
            y4,
            y1 + 2 * y4 - nu * (y1 + mu) / d1 - mu * (y1 - nu) / d2,
            y2 - 2 * y3 - nu * y2 / d1 - mu * y2 / d2,
        )

    def f(t, y):
        return torch.stack(rhs(*y.unbind(-1), torch.sqrt), -1)

    def fn(t, y):
        return np.array(rhs(*y, np.sqrt))

    y0 = np.array([0.994, 0.0, 0.0, -2.00158510637908252240537862224])
    return Problem(f, fn, y0, 17.0652165601579625588917206249)


_PLEIADES_Q0 = np.array([[3, 3], [3, -3], [-1, 2], [-3, 0], [2, 0], [-2, -4], [2, 4]], float)
_PLEIADES_P0 = np.array([[0, 0], [0, 0], [0, 0], [0, -1.25], [0, 1], [1.75, 0], [-1.5, 0]], float)


def pleiades() -> Problem:
    """Seven bodies in the plane with masses 1 ... 7, G = 1, t in [0, 3] (HNW I, II.10, (10.3))."""
    m_np = np.arange(1.0, 8.0)
    m_t = torch.tensor(m_np, dtype=F64)

    def f(t, y):
        q, v = y[..., :14].unflatten(-1, (7, 2)), y[..., 14:]
        d = q.unsqueeze(-2) - q.unsqueeze(-3)  # d[i, j] = q_i - q_j
        r3 = (d**2).sum(-1) ** 1.5
        r3 = r3 + torch.eye(7, dtype=y.dtype)  # the diagonal's d is zero: any non-zero r3 there
        acc = -(m_t[:, None] * d / r3.unsqueeze(-1)).sum(-2)  # sum_j m_j (q_j - q_i) / r_ij^3
        return torch.cat([v, acc.flatten(-2)], -1)

    def fn(t, y):
        q, v = y[:14].reshape(7, 2), y[14:]
        d = q[:, None, :] - q[None, :, :]
        r3 = (d**2).sum(-1) ** 1.5 + np.eye(7)
        acc = -(m_np[None, :, None] * d / r3[..., None]).sum(1)
        return np.concatenate([v, acc.ravel()])

    return Problem(f, fn, np.concatenate([_PLEIADES_Q0.ravel(), _PLEIADES_P0.ravel()]), 3.0)


def lorenz(t_end: float = 5.0) -> Problem:
    """Lorenz's convection model (HNW I, I.16 and II.10), sigma 10, r 28, b 8/3 from (-8, 8, 27).

    Chaotic: errors grow by about exp(0.9 t), so only short horizons compare methods.
    """
    s, r, b = 10.0, 28.0, 8.0 / 3.0

    def f(t, y):
        x, u, z = y.unbind(-1)
        return torch.stack([s * (u - x), r * x - u - x * z, x * u - b * z], -1)

    def fn(t, y):
        x, u, z = y
        return np.array([s * (u - x), r * x - u - x * z, x * u - b * z])

    return Problem(f, fn, np.array([-8.0, 8.0, 27.0]), t_end)


def kepler_exact(t: float, e: float) -> np.ndarray:
    """The Kepler orbit from the pericentre (1 - e, 0) with period 2 pi at time t, through Kepler's equation.

    Args:
        t: the time (the mean anomaly).
        e: the eccentricity, in [0, 1).

    Returns:
        (q1, q2, p1, p2) at t.
    """
    big_e = t if e < 0.8 else math.pi  # Newton on E - e sin E = t converges from pi for any e < 1
    for _ in range(50):
        step = (big_e - e * math.sin(big_e) - t) / (1.0 - e * math.cos(big_e))
        big_e -= step
        if abs(step) < 1e-16:
            break
    c, s, w = math.cos(big_e), math.sin(big_e), math.sqrt(1.0 - e * e)
    den = 1.0 - e * c
    return np.array([c - e, w * s, -s / den, w * c / den])


def kepler(e: float = 0.9, t_end: float = 2 * math.pi) -> Problem:
    """The two-body problem q'' = -q / |q|^3 of eccentricity e (HNW I, II.10 (10.1)); exact solution."""

    def f(t, y):
        q, p = y[..., :2], y[..., 2:]
        r3 = (q**2).sum(-1, keepdim=True) ** 1.5
        return torch.cat([p, -q / r3], -1)

    def fn(t, y):
        q, p = y[:2], y[2:]
        return np.concatenate([p, -q / (q @ q) ** 1.5])

    return Problem(f, fn, kepler_exact(0.0, e), t_end, kepler_exact(t_end, e))


_LINEAR_A = np.array([[-0.1, -2.0, 0.0], [2.0, -0.1, 0.0], [0.0, 0.5, -0.5]])


def linear() -> Problem:
    """y' = A y: a slowly decaying rotation (eigenvalues -0.1 +- 2i) driving a decay (-0.5), t in [0, 10]."""
    a_t = torch.tensor(_LINEAR_A, dtype=F64)
    y0 = np.array([1.0, 0.0, 1.0])
    t_end = 10.0
    return Problem(
        lambda t, y: y @ a_t.T, lambda t, y: _LINEAR_A @ y, y0, t_end, scipy.linalg.expm(t_end * _LINEAR_A) @ y0
    )


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "arenstorf": arenstorf,
    "pleiades": pleiades,
    "lorenz": lorenz,
    "kepler": kepler,
    "linear": linear,
}


def reference(p: Problem) -> np.ndarray:
    """The exact end state, else scipy DOP853's at rtol 1e-13, atol 1e-15."""
    if p.exact is not None:
        return p.exact
    r = solve_ivp(p.fn, (0.0, p.t_end), p.y0, method="DOP853", rtol=1e-13, atol=1e-15)
    assert r.success, r.message
    return r.y[:, -1]


def error(y: np.ndarray, ref: np.ndarray) -> float:
    """The largest error over the components in units of 1 + |ref| (the tolerance's weight at rtol = atol)."""
    return float(np.max(np.abs(y - ref) / (1.0 + np.abs(ref))))


class Run(NamedTuple):
    """One solve: error at the final time, field evaluations, accepted and rejected steps (-1: unknown)."""

    err: float
    nfe: int
    accepted: int
    rejected: int


def run_ours(p: Problem, method: str, tol: float, ref: np.ndarray, max_num_steps: int = 200_000) -> Run:
    """Solve with one of our methods at rtol = atol = tol through ``odeint``'s method table."""
    count = [0]

    def field(t, y):
        count[0] += 1
        return p.f(t, y)

    solver, controller, _ = build_solver(method, {"max_num_steps": max_num_steps}, tol, tol)
    sol = hn.solve(
        field,
        torch.tensor(p.y0, dtype=F64),
        torch.tensor([0.0, p.t_end], dtype=F64),
        solver=solver,
        controller=controller,
    )
    return Run(error(sol.ys[-1].numpy(), ref), count[0], int(sol.stats.n_accepted), int(sol.stats.n_rejected))


def run_scipy(p: Problem, method: str, tol: float, ref: np.ndarray) -> Run:
    """Solve with scipy's ``solve_ivp`` at rtol = atol = tol."""
    r = solve_ivp(p.fn, (0.0, p.t_end), p.y0, method=method, rtol=tol, atol=tol)
    assert r.success, r.message
    return Run(error(r.y[:, -1], ref), int(r.nfev), len(r.t) - 1, -1)


def run(p: Problem, method: str, tol: float, ref: np.ndarray) -> Run:
    """One solve by method name: scipy's names are upper case."""
    return run_scipy(p, method, tol, ref) if method in SCIPY else run_ours(p, method, tol, ref)


def slope(tols, errs) -> float:
    """Least-squares slope of log(err) against log(tol): 1 is tolerance proportionality."""
    return float(np.polyfit(np.log10(tols), np.log10(errs), 1)[0])


def nfe_at_error(runs: list[Run], err: float) -> float:
    """A method's NFE at a given error, interpolated in log-log between its runs (nan outside their range)."""
    pts = sorted((r.err, r.nfe) for r in runs if r.err > 0)
    le = np.log10([e for e, _ in pts])
    ln = np.log10([n for _, n in pts])
    if not le.min() <= math.log10(err) <= le.max():
        return float("nan")
    order = np.argsort(le)
    return float(10 ** np.interp(math.log10(err), le[order], ln[order]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--methods", default=",".join(OURS + SCIPY))
    parser.add_argument("--tols", default=",".join(f"{t:g}" for t in TOLS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tols = [float(t) for t in args.tols.split(",")]
    methods = args.methods.split(",")
    for name in args.problems.split(","):
        p = PROBLEMS[name]()
        ref = reference(p)
        print(f"\n### {name}\n")
        print("| method | " + " | ".join(f"{t:.0e}" for t in tols) + " | slope |")
        print("| --- |" + " --- |" * (len(tols) + 1))
        for m in methods:
            ts = [t for t in tols if m not in LOW_ORDER or t >= LOW_ORDER_MIN_TOL * 0.999]
            runs = [run(p, m, t, ref) for t in ts]
            cells = [f"{r.err:.1e} / {r.nfe}" + (f" ({r.rejected})" if r.rejected > 0 else "") for r in runs]
            cells += ["-"] * (len(tols) - len(ts))
            s = slope(ts, [max(r.err, 1e-17) for r in runs])
            print(f"| {m} | " + " | ".join(cells) + f" | {s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
