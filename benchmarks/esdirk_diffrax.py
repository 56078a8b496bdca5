"""ESDIRK methods against diffrax on the stiff problems of ``benchmarks/stiff.py`` (the table of docs/stiff.md).

Van der Pol (mu = 1000, to t = 1000, rtol = atol = 1e-6) and Robertson (to t = 1e4, rtol = 1e-6,
atol = 1e-8), float64: accepted and rejected steps and the largest relative error at the final time
against scipy Radau at rtol 1e-11, for ours (``hn.solve`` with ``PIDController``) and diffrax 0.7
(``diffeqsolve`` with ``PIDController(rtol, atol)``: integral control, as ours; its root finder takes
the controller's tolerances). diffrax's KenCarp4 is IMEX, so its implicit tableau runs on diffrax's
ESDIRK machinery (``Kvaerno5``'s class with that tableau) on the fully implicit problem.

    PYTHONPATH=. python benchmarks/esdirk_diffrax.py [--methods kvaerno5,kencarp4,kvaerno3] [--no-cap]
"""

from __future__ import annotations

import argparse
from typing import ClassVar

import numpy as np
import torch
from scipy.integrate import solve_ivp

import hybrid_node as hn

try:
    from .stiff import PROBLEMS, _jac, _np
except ImportError:  # run as a script (python benchmarks/esdirk_diffrax.py): its folder is on sys.path
    from stiff import PROBLEMS, _jac, _np

OURS = {"kvaerno5": hn.Kvaerno5, "kvaerno3": hn.Kvaerno3, "kencarp4": hn.KenCarp4}
TOLERANCES = {"vanderpol-1000": (1e-6, 1e-6), "robertson": (1e-6, 1e-8)}


def _diffrax_methods():
    import diffrax

    class KenCarp4Implicit(diffrax.Kvaerno5):
        """diffrax's ESDIRK steps with KenCarp4's implicit tableau (ARK4(3)6L[2]SA)."""

        tableau: ClassVar = diffrax.KenCarp4.tableau.tableaus[1]

        def order(self, terms):
            return 4

    return {"kvaerno5": diffrax.Kvaerno5, "kvaerno3": diffrax.Kvaerno3, "kencarp4": KenCarp4Implicit}


def _jax_field(name: str):
    import jax.numpy as jnp

    if name == "robertson":

        def robertson(t, y, args):
            return jnp.stack(
                [
                    -0.04 * y[0] + 1e4 * y[1] * y[2],
                    0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                    3e7 * y[1] ** 2,
                ]
            )

        return robertson

    def van_der_pol(t, y, args):
        return jnp.stack([y[1], 1000.0 * (1 - y[0] ** 2) * y[1] - y[0]])

    return van_der_pol


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="kvaerno5,kencarp4,kvaerno3")
    parser.add_argument("--no-cap", action="store_true", help="ours with cap_after_reject=False")
    args = parser.parse_args(argv)
    import diffrax
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    torch.set_num_threads(1)
    theirs = _diffrax_methods()
    methods = args.methods.split(",")
    columns = ["problem", "method", "ours accepted", "ours rejected", "ours error"]
    columns += ["diffrax accepted", "diffrax rejected", "diffrax error"]
    print("| " + " | ".join(columns) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (rtol, atol) in TOLERANCES.items():
        f, y0, t1, floor = PROBLEMS[name]
        ref = solve_ivp(_np(f), (0, t1), y0, method="Radau", rtol=1e-11, atol=1e-13, jac=_jac(f)).y[:, -1]

        def error(y, ref=ref, floor=floor):
            return float(np.max(np.abs(np.asarray(y) - ref) / np.maximum(np.abs(ref), floor)))

        for m in methods:
            solver = OURS[m](cap_after_reject=not args.no_cap)
            ts = torch.tensor([0.0, t1], dtype=torch.float64)
            sol = hn.solve(
                f,
                torch.tensor(y0, dtype=torch.float64),
                ts,
                solver=solver,
                controller=hn.PIDController(rtol=rtol, atol=atol),
            )
            d = diffrax.diffeqsolve(
                diffrax.ODETerm(_jax_field(name)),
                theirs[m](),
                0.0,
                t1,
                None,
                jnp.asarray(y0),
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                max_steps=100_000,
            )
            s, ds = sol.stats, d.stats
            row = [name, m, s.n_accepted, s.n_rejected, f"{error(sol.ys[-1].numpy()):.1e}"]
            row += [int(ds["num_accepted_steps"]), int(ds["num_rejected_steps"]), f"{error(d.ys[-1]):.1e}"]
            print("| " + " | ".join(str(x) for x in row) + " |", flush=True)


if __name__ == "__main__":
    main()
