"""The ESDIRKs' dense output between steps: their continuous extension against cubic Hermite on the same steps.

For each accepted step of ``hn.odeint_dense`` (float64, rtol 1e-6; atol 1e-8, Van der Pol atol 1e-6) the
interpolant at theta = 1/4, 1/2, 3/4 and the step's end are compared with scipy's Radau (rtol 1e-12,
atol 1e-16) started from the step's own start value, so the error carried in from earlier steps, the same
for every interpolant, is left out. Errors are in tolerances, ``|y - ref| / (atol + rtol |ref|)``, the
largest component; the table gives the worst and the median step. Interpolants: the method's dense output
(``ext``: the order-4 extension of kencarp4 and kvaerno5), cubic Hermite on the step's end values and its
first and last stage derivatives (``hermite``, the dense output before), and for kencarp4 Kennedy &
Carpenter's published order-3 extension of ARK4(3)6L[2]SA (``kc-paper``).

    PYTHONPATH=. python benchmarks/esdirk_dense.py [--methods kencarp4,kvaerno5] [--problems robertson,...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.integrate import solve_ivp

import hybrid_node as hn
from hybrid_node.interpolation import HermiteInterpolant, PolynomialInterpolant

try:
    from .stiff_problems import robertson, van_der_pol
except ImportError:  # run as a script (python benchmarks/esdirk_dense.py): its folder is on sys.path
    from stiff_problems import robertson, van_der_pol

# ARK4(3)6L[2]SA's dense output b*_i(theta) = sum_j b*_ij theta^j (Kennedy & Carpenter, Appl. Numer. Math. 44,
# 2003, Table 6): per stage i the coefficients of theta^1, theta^2, theta^3; tests/test_esdirk_dense_output.py
# checks their order conditions
KC4_PUBLISHED = (
    (6943876665148 / 7220017795957, -54480133 / 30881146, 6818779379841 / 7100303317025),
    (0.0, 0.0, 0.0),
    (7640104374378 / 9702883013639, -11436875 / 14766696, 2173542590792 / 12501825683035),
    (-20649996744609 / 7521556579894, 174696575 / 18121608, -31592104683404 / 5083833661969),
    (8854892464581 / 2390941311638, -12120380 / 966161, 61146701046299 / 7138195549469),
    (-11397109935349 / 6675773540249, 3843 / 706, -17219254887155 / 4939391667607),
)


def _robertson_np(t, y):
    return [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]


def _vdp(mu):
    """Van der Pol in torch (benchmarks/stiff_problems.py) and, for the scipy reference, in plain Python."""

    def fnp(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    return van_der_pol(mu), fnp


def _decay(t, y):
    return -y + torch.sin(torch.as_tensor(t, dtype=y.dtype))


def _decay_np(t, y):
    return [-y[0] + np.sin(t)]


# name: field, numpy field, y0, t1, rtol, atol
PROBLEMS = {
    "robertson": (robertson, _robertson_np, [1.0, 0.0, 0.0], 1e5, 1e-6, 1e-8),
    # tests/test_stiff_work_precision.py's setting: to 1e11, atol = 1e-6 rtol
    "robertson-1e11": (robertson, _robertson_np, [1.0, 0.0, 0.0], 1e11, 1e-6, 1e-12),
    "vdp10": (*_vdp(10.0), [2.0, 0.0], 30.0, 1e-6, 1e-6),
    "vdp1000": (*_vdp(1000.0), [2.0, 0.0], 3000.0, 1e-6, 1e-6),
    "decay": (_decay, _decay_np, [1.0], 10.0, 1e-6, 1e-8),
}
THETAS = np.array([0.25, 0.5, 0.75])


def interpolants(method: str, dense, h: float) -> dict:
    """The interpolants compared on one step (``dense``: the method's own)."""
    out = {"ext": dense, "hermite": HermiteInterpolant(dense.y0, dense.y1, dense.ks[0], dense.ks[-1], h)}
    if method == "kencarp4":
        out["kc-paper"] = PolynomialInterpolant(dense.y0, dense.ks, h, KC4_PUBLISHED)
    return out


def measure(problem: str, method: str) -> dict[str, np.ndarray]:
    """Per-step errors in tolerances: each interpolant's worst interior one, and the step end's."""
    f, fnp, y0, t1, rtol, atol = PROBLEMS[problem]
    sol = hn.odeint_dense(f, torch.tensor(y0, dtype=torch.float64), 0.0, t1, rtol=rtol, atol=atol, method=method)
    errors: dict[str, list[float]] = {}
    for seg in sol.segments:
        h = seg.t1 - seg.t0
        dense = seg.interpolant
        ts = np.append(seg.t0 + THETAS * h, seg.t1)
        ref = solve_ivp(fnp, (seg.t0, seg.t1), dense.y0.numpy(), "Radau", ts, rtol=1e-12, atol=1e-16).y.T
        scale = atol + rtol * np.abs(ref)
        for name, interp in interpolants(method, dense, h).items():
            err = np.abs(interp.many(THETAS).numpy() - ref[:3]) / scale[:3]
            errors.setdefault(name, []).append(float(err.max()))
        errors.setdefault("step end", []).append(float((np.abs(dense(1.0).numpy() - ref[3]) / scale[3]).max()))
    return {k: np.array(v) for k, v in errors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="kencarp4,kvaerno5")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| problem | method | steps | interpolant | worst step | median step |")
    print("|---|---|---|---|---|---|")
    for problem in args.problems.split(","):
        for method in args.methods.split(","):
            errors = measure(problem, method)
            for name, e in errors.items():
                print(f"| {problem} | {method} | {len(e)} | {name} | {e.max():.3g} | {np.median(e):.3g} |", flush=True)


if __name__ == "__main__":
    main()
