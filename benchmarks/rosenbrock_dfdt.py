"""Wall time per Rosenbrock step on a non-autonomous MLP field, this checkout against other checkouts.

A step needs f, the Jacobian df/dy and df/dt at its start. This script times fixed-step
``rosenbrock23`` and ``rodas5p`` solves (float64, CPU, one thread) of a tanh MLP field that reads t,
with each given checkout's ``hybrid_node`` imported under its own name in one process and run in
shuffled interleaved rounds, so the load of a shared machine hits them alike::

    python -m benchmarks.rosenbrock_dfdt --checkout before=/tmp/old --checkout today=/tmp/head --rounds 9

``after-fd`` is this checkout with ``time_derivative="fd"``. Both a no-grad solve and a solve in
grad mode (the graph direct backpropagation would use, without the backward pass) are timed.
Prints the median milliseconds per step and each median's ratio to this checkout's. ``--forms`` times
instead the ways df/dt of the batched field could be taken (see :func:`forms`).
"""

from __future__ import annotations

import argparse
import importlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import hybrid_node

from .run import interleaved


class TimeMLP(torch.nn.Module):
    """dy/dt = MLP([y, t]): two tanh layers of ``width``."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, width),
            torch.nn.Tanh(),
            torch.nn.Linear(width, width),
            torch.nn.Tanh(),
            torch.nn.Linear(width, dim),
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([y, t.expand(y.shape[:-1] + (1,))], dim=-1))


def load(label: str, checkout: str):
    """The ``hybrid_node`` package of ``checkout`` imported as ``hn_<label>`` (its imports are relative)."""
    root = Path(tempfile.mkdtemp(prefix=f"hn_{label}_"))
    shutil.copytree(
        Path(checkout) / "hybrid_node",
        root / f"hn_{label}",
        ignore=shutil.ignore_patterns("__pycache__"),
        symlinks=True,
    )
    sys.path.insert(0, str(root))
    return importlib.import_module(f"hn_{label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", default=[], help="label=path of another checkout")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--forms", action="store_true", help="time the formulations of a batched df/dt only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.forms:
        forms(args.batch, args.dim, args.width, args.rounds)
        return
    packages = {"after": hybrid_node}
    for item in args.checkout:
        label, _, path = item.partition("=")
        packages[label] = load(label, path)
    field = TimeMLP(args.dim, args.width).double()
    y0 = torch.randn(args.batch, args.dim, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    h = 1.0 / args.steps

    def unit(pkg, method: str, grad: bool, **options):
        methods = importlib.import_module(f"{pkg.__name__}.solvers.implicit").IMPLICIT_METHODS
        solver = methods[method][0](adaptive=False, **options)
        controller = pkg.ConstantStepSize(step_size=h)

        def run():
            with torch.set_grad_enabled(grad):
                pkg.solve(field, y0, t, solver=solver, controller=controller)

        return run

    runs = {
        (label, method, grad): unit(pkg, method, grad)
        for label, pkg in packages.items()
        for method in ("rosenbrock23", "rodas5p")
        for grad in (False, True)
    }
    for method in ("rosenbrock23", "rodas5p"):  # this checkout's forward difference by the option
        for grad in (False, True):
            runs[("after-fd", method, grad)] = unit(hybrid_node, method, grad, time_derivative="fd")
    for run in runs.values():  # warm-up: first calls, lazy imports
        run()
    times = interleaved(runs, args.rounds)
    print(
        f"ms per step, median of {args.rounds} rounds ({args.steps} steps, "
        f"batch {args.batch}, dim {args.dim}, width {args.width})"
    )
    for method in ("rosenbrock23", "rodas5p"):
        for grad in (False, True):
            ref = statistics.median(times[("after", method, grad)])
            cells = []
            for label in list(packages) + ["after-fd"]:
                med = statistics.median(times[(label, method, grad)])
                cells.append(f"{label} {1e3 * med / args.steps:.2f} ({med / ref:.2f}x)")
            print(f"{method:13s} {'grad' if grad else 'no-grad':8s} " + "  ".join(cells))
    passes(field, args.batch, args.dim, args.rounds)


def passes(field: torch.nn.Module, batch: int, dim: int, rounds: int) -> None:
    """Milliseconds per call, in this checkout, of the Jacobian alone, the Jacobian and the separate exact
    df/dt (the route of every step before the combined pass), and the combined pass."""
    from hybrid_node._term import Term
    from hybrid_node.solvers import linalg

    cases = {
        "jacrev, batch": ("jacrev", (batch, dim)),
        "jacfwd, batch": ("jacfwd", (batch, dim)),
        "jacrev, one system": ("jacrev", (dim,)),
    }
    runs = {}
    for case, (mode, shape) in cases.items():
        y = torch.randn(shape, dtype=torch.float64)
        term = Term(field, y, torch.float64)
        settings = linalg.JacobianSettings(mode)
        route = linalg.jacobian_and_time_derivative(term, 0.3, y, settings)[3]  # the first, separate df/dt
        assert route.follows

        def jacobian(term=term, y=y, settings=settings):
            return linalg.block_jacobian(term, 0.3, y, settings)

        def separate(term=term, y=y, settings=settings):
            f0, _ = linalg.block_jacobian(term, 0.3, y, settings)
            return linalg._exact_time_derivative(term, term, 0.3, y)

        def combined(term=term, y=y, settings=settings, route=route):
            return linalg.jacobian_and_time_derivative(term, 0.3, y, settings, route=route)

        def plain(term=term, y=y):
            return term(0.3, y)

        for name, fn in (("f", plain), ("J", jacobian), ("J + separate df/dt", separate), ("combined", combined)):
            runs[(case, name)] = lambda fn=fn: [fn() for _ in range(10)]
    times = interleaved(runs, rounds)
    print("ms per call (median of 10-call units), this checkout")
    for case in cases:
        cells = [f"{name} {1e2 * statistics.median(times[(c, name)]):.2f}" for c, name in times if c == case]
        print(f"{case:18s} " + "  ".join(cells))


class CoupledTimeMLP(TimeMLP):
    """:class:`TimeMLP` minus sin(t) times its batch mean: the samples interact (as through batch statistics)."""

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = super().forward(t, y)
        return out - torch.sin(t) * out.mean(0, keepdim=True)


def _time_derivative_forms(field: torch.nn.Module, t0: torch.Tensor, y: torch.Tensor) -> dict:
    """d/dt field(t0, y) of a (batch, dim) state, each way a callable; all exact but the last two rows."""
    from torch.autograd import forward_ad as fw_ad
    from torch.func import jvp, vjp, vmap

    zero, one = torch.zeros_like(t0), torch.ones_like(t0)

    def g(s):
        return field(t0 + s, y)

    def func_double_reverse():  # the library's route: the pullback's own pullback
        return vjp(lambda u: vjp(g, zero)[1](u)[0], torch.zeros_like(y))[1](one)[0]

    def autograd_double_backward():  # the same by torch.autograd: walks every graph behind the state
        with torch.enable_grad():
            s = zero.clone().requires_grad_(True)
            out = g(s)
            u = torch.zeros_like(out, requires_grad=True)
            (inner,) = torch.autograd.grad(out, s, u, create_graph=True)
            return torch.autograd.grad(inner, u, one)[0]

    def func_jvp():
        return jvp(g, (zero,), (one,))[1]

    def forward_ad():
        with fw_ad.dual_level():
            return fw_ad.unpack_dual(field(fw_ad.make_dual(t0, one), y)).tangent

    def per_sample_vmap():  # a time per sample: wrong for a field whose samples interact
        return vmap(lambda yb: jvp(lambda s: field(t0 + s, yb[None])[0], (zero,), (one,))[1])(y)

    def difference():  # two evaluations here; one in a step, which has f(t, y) already
        h = 1.5e-8
        return (field(t0 + h, y) - field(t0, y)) / h

    return {
        "func double reverse": func_double_reverse,
        "autograd double backward": autograd_double_backward,
        "func jvp": func_jvp,
        "forward_ad": forward_ad,
        "per-sample vmap": per_sample_vmap,
        "difference": difference,
        "f alone": lambda: g(zero),
    }


def forms(batch: int, dim: int, width: int, rounds: int) -> None:
    """Milliseconds per df/dt of the batched MLP field by each formulation (no grad, shuffled rounds of
    10 calls), and each one's largest relative difference to the double reverse pass on this field and
    on one whose samples interact (:class:`CoupledTimeMLP`)."""
    y = torch.randn(batch, dim, dtype=torch.float64)
    t0 = torch.tensor(0.3, dtype=torch.float64)
    for field in (TimeMLP(dim, width).double(), CoupledTimeMLP(dim, width).double()):
        ways = _time_derivative_forms(field, t0, y)
        with torch.no_grad():
            ref = ways["func double reverse"]()
            diffs = {k: float((fn() - ref).abs().max() / ref.abs().max()) for k, fn in ways.items() if k != "f alone"}
        print(f"{type(field).__name__}: max relative difference to the double reverse pass")
        print("  " + "  ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    ways = _time_derivative_forms(TimeMLP(dim, width).double(), t0, y)
    times: dict[str, list[float]] = {k: [] for k in ways}
    with torch.no_grad():
        for fn in ways.values():  # warm-up
            fn()
        for _ in range(rounds):
            order = list(ways)
            random.shuffle(order)
            for k in order:
                start = time.perf_counter()
                for _ in range(10):
                    ways[k]()
                times[k].append((time.perf_counter() - start) / 10)
    print(f"ms per call, median of {rounds} rounds (batch {batch}, dim {dim}, width {width}, no grad)")
    print("  " + "  ".join(f"{k} {1e3 * statistics.median(v):.2f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
