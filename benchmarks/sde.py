"""hybrid_node.sdeint vs torchsde.sdeint: forward and gradients of a neural SDE (batch 512, state 8).

Run from the repository root: ``python -m benchmarks.sde`` (options: ``--repeats``, ``--threads``,
``--dt``). hybrid_node creates its own Brownian motion (``bm=None``), as a user would; torchsde is
timed both ways: with its default Brownian motion and with a BrownianInterval given the step as
``dt`` hint (torchsde's advice for fixed steps, much faster). For every method the table shows the
best of ``--repeats`` interleaved wall times of: a no-grad forward solve, a forward solve plus
backprop through it (direct), and sdeint_adjoint's forward plus backward. Both libraries solve the
same SDE with the same method and step, so the ratio is the speed-up at equal work per step.

The "network floor" column is a lower bound for any library: the time of the drift and diffusion
evaluations alone (as many as hybrid_node makes per solve, counted), chained step after step with the
same amount of noise drawn, and (direct, adjoint) one backward pass through them. "max speed-up" is
torchsde's time over that floor: where it is below 2, no implementation of the same scheme can be 2x
faster than torchsde.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

import hybrid_node as hn

from ._cli import positive_float, positive_int

BATCH, STATE, HIDDEN = 512, 8, 32


class NeuralSDE(nn.Module):
    """Drift: a tanh MLP; diffusion: diagonal, sigmoid(a * y + b) per component."""

    noise_type = "diagonal"

    def __init__(self, sde_type: str):
        super().__init__()
        self.sde_type = sde_type
        self.drift = nn.Sequential(nn.Linear(STATE, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, STATE))
        self.a = nn.Parameter(0.1 * torch.randn(STATE))
        self.b = nn.Parameter(torch.zeros(STATE))

    def f(self, t, y):
        return self.drift(y)

    def g(self, t, y):
        return 0.2 * torch.sigmoid(self.a * y + self.b)


class _Counting:
    """Counts the drift and diffusion evaluations of an SDE object."""

    def __init__(self, sde: NeuralSDE):
        self.sde, self.n_f, self.n_g = sde, 0, 0
        self.noise_type, self.sde_type = sde.noise_type, sde.sde_type

    def f(self, t, y):
        self.n_f += 1
        return self.sde.f(t, y)

    def g(self, t, y):
        self.n_g += 1
        return self.sde.g(t, y)


def _floor(sde: NeuralSDE, y0: torch.Tensor, n_f: int, n_g: int, steps: int, grad: bool) -> Callable[[], None]:
    """The network evaluations alone: n_f drift and n_g diffusion calls, as many per step, chained."""
    per_f, per_g = round(n_f / steps), round(n_g / steps)

    def run():
        y, t = y0, torch.tensor(0.0)
        noise = torch.randn(steps, *y0.shape)  # the same amount of noise as a solve draws
        for k in range(steps):
            acc = y
            for _ in range(per_f):
                acc = acc + 0.01 * sde.f(t, y)
            for _ in range(per_g):
                acc = acc + sde.g(t, y) * noise[k]
            y = acc
        if grad:
            y.pow(2).mean().backward()

    def timed():
        if grad:
            run()
        else:
            with torch.no_grad():
                run()

    return timed


def _best_seconds(fns: list[Callable[[], None]], repeats: int) -> list[float]:
    """The fastest of ``repeats`` wall times of each function, the functions run in turn.

    Interleaving makes both libraries share whatever else the machine is doing, and the minimum is the
    estimate least disturbed by it (other processes only ever add time).
    """
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def _cases(sdeint, sdeint_adjoint, method: str, sde: NeuralSDE, y0, ts, dt: float, adjoint_method, make_bm=None):
    """The three timed units; ``make_bm`` (if given) builds a fresh Brownian motion inside each unit."""
    bm = (lambda: None) if make_bm is None else make_bm

    def forward():
        with torch.no_grad():
            sdeint(sde, y0, ts, bm=bm(), method=method, dt=dt)

    def direct():
        sdeint(sde, y0, ts, bm=bm(), method=method, dt=dt).pow(2).mean().backward()

    def adjoint():
        kwargs = {} if adjoint_method is None else {"adjoint_method": adjoint_method}
        sdeint_adjoint(sde, y0, ts, bm=bm(), method=method, dt=dt, **kwargs).pow(2).mean().backward()

    return {"forward": forward, "direct": direct, "adjoint": adjoint}


METHODS = [  # (method, sde_type, torchsde's adjoint method for the same scheme)
    ("euler", "ito", None),
    ("milstein", "ito", None),
    ("srk", "ito", None),
    ("midpoint", "stratonovich", "midpoint"),
    ("reversible_heun", "stratonovich", "adjoint_reversible_heun"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--dt", type=positive_float, default=0.01)
    p.add_argument("--methods", nargs="*", default=[m for m, _, _ in METHODS], choices=[m for m, _, _ in METHODS])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    have_torchsde = importlib.util.find_spec("torchsde") is not None
    if have_torchsde:
        import torchsde
    ts = torch.linspace(0.0, 1.0, 11)
    print(
        f"# batch {BATCH}, state {STATE}, MLP hidden {HIDDEN}, t in [0, 1], 11 outputs, dt {args.dt}, "
        f"float32, {args.threads} thread(s), torch {torch.__version__}, "
        f"torchsde {torchsde.__version__ if have_torchsde else 'not installed'}, "
        f"{platform.processor() or platform.machine()}"
    )
    columns = [
        "method",
        "mode",
        "hybrid_node (ms)",
        "torchsde, default bm (ms)",
        "torchsde, bm with dt hint (ms)",
        "speed-up vs faster torchsde",
        "f, g evaluations",
        "network floor (ms)",
        "max speed-up (torchsde / floor)",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for method, sde_type, their_adjoint in METHODS:
        if method not in args.methods:
            continue
        torch.manual_seed(0)
        sde = NeuralSDE(sde_type)
        y0 = torch.randn(BATCH, STATE)
        ours = _cases(hn.sdeint, hn.sdeint_adjoint, method, sde, y0, ts, args.dt, None)
        counting = _Counting(sde)
        with torch.no_grad():
            hn.sdeint(counting, y0, ts, method=method, dt=args.dt)
        n_f, n_g, steps = counting.n_f, counting.n_g, round(1.0 / args.dt)
        theirs, hinted = {}, {}
        if have_torchsde:
            levy = "space-time" if method == "srk" else "none"

            def make_bm(levy=levy):  # torchsde's advice for fixed steps: pass the step as a grid hint
                return torchsde.BrownianInterval(0.0, 1.0, (BATCH, STATE), dt=args.dt, levy_area_approximation=levy)

            theirs = _cases(torchsde.sdeint, torchsde.sdeint_adjoint, method, sde, y0, ts, args.dt, their_adjoint)
            hinted = _cases(
                torchsde.sdeint, torchsde.sdeint_adjoint, method, sde, y0, ts, args.dt, their_adjoint, make_bm
            )
        for mode, fn in ours.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # The floor of the adjoint rows would need the backward pass's own evaluations: not timed.
                floor = _floor(sde, y0, n_f, n_g, steps, grad=mode != "forward") if mode != "adjoint" else None
                fns = [fn, hinted[mode]] if mode in theirs else [fn]
                times = _best_seconds(fns + ([floor] if floor else []), args.repeats)
                t_floor = times[-1] if floor else float("nan")
                if mode in theirs:
                    t_ours, t_hinted = times[:2]
                    (t_theirs,) = _best_seconds([theirs[mode]], 1)  # seconds per call: one timed run
                else:
                    t_ours, t_theirs, t_hinted = times[0], float("nan"), float("nan")
            best = min(t_theirs, t_hinted)
            evals = f"{n_f}, {n_g}" if mode != "adjoint" else "-"
            print(
                f"| {method} | {mode} | {1e3 * t_ours:.1f} | {1e3 * t_theirs:.0f} | {1e3 * t_hinted:.1f} | "
                f"{best / t_ours:.2f}x | {evals} | {1e3 * t_floor:.1f} | {best / t_floor:.2f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
