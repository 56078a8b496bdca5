"""scale: how time and memory per step grow with the number of steps and of output times, per loop kind.

Workload: y' = -theta * y on 4 states (theta = 1, y0 = 1), t in [0, 1]. ``n`` is the number of steps,
forced with ``max_step = 1 / n`` (adaptive methods) or ``step_size = 1 / n`` (fixed steps); for the
``*-out`` workloads ``n`` is the number of output times (dopri5 at its default tolerances, so the
steps are few and the outputs dominate); for ``event-bounces`` it is the number of bounces of a
bouncing ball (``hn.Event`` with a jump). Each cell runs in a fresh process (``_rss``):

* ``us/step``: wall time of the solve (and backward pass, for the ``grad-*`` workloads) over n;
* ``peak MiB``: growth of the peak resident set over the resident set after a warm-up run with 10
  steps (children run with ``MALLOC_MMAP_THRESHOLD_=65536``, so freed large buffers go back);
* ``B/step``: that growth over n;
* ``kept``: torch tensors alive after the call while its result is held, over those alive before
  (Python objects kept per step show here: dense-output segments, stats lists, autograd graphs).

Anything whose ``us/step`` or ``B/step`` grows with n is super-linear (or leaks per step).

Usage::

    python benchmarks/scale.py                              # every workload at n = 1e3, 1e4, 1e5
    python benchmarks/scale.py --workloads dopri5 rk4 --sizes 1000 10000
    python benchmarks/scale.py --one dopri5 10000          # one cell, as JSON (what the table runs)
    python benchmarks/scale.py --calls --sizes 3000 30000  # Python calls per step (load-independent)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

STATES = 4
SIZES = (1000, 10_000, 100_000)


def _hn():
    import hybrid_node as hn

    return hn


def _torch() -> None:
    """One thread: the per-step cost, not the thread pool's scheduling."""
    torch.set_num_threads(1)


def _y0(requires_grad: bool = False):
    _torch()
    return torch.ones(STATES, dtype=torch.float64, requires_grad=requires_grad)


def _decay(t, y):
    return -y


class _OU(torch.nn.Module):
    """dy = -y dt + 0.1 dW (Ornstein-Uhlenbeck, diagonal Ito noise), for hybrid_node and torchsde alike."""

    noise_type = "diagonal"
    sde_type = "ito"

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


def _t01():
    _torch()
    return torch.tensor([0.0, 1.0], dtype=torch.float64)


def _host(method: str, extra: dict[str, Any] | None = None, fixed: bool = False) -> Callable[[int], Any]:
    """A no-grad solve of y' = -y in n steps with ``hn.odeint``."""

    def run(n: int) -> Any:
        _torch()
        hn = _hn()
        opts: dict[str, Any] = {"step_size": 1.0 / n} if fixed else {"max_step": 1.0 / n, "max_num_steps": 10 * n}
        opts.update(extra or {})
        kw: dict[str, Any] = {} if fixed else {"rtol": 1e-3, "atol": 1e-6}
        with torch.no_grad():
            return hn.odeint(_decay, _y0(), _t01(), method=method, options=opts, **kw)

    return run


def _outputs(n: int) -> Any:
    """dopri5 at its default tolerances with n output times (the steps are few, the outputs many)."""
    _torch()
    hn = _hn()
    with torch.no_grad():
        return hn.odeint(_decay, _y0(), torch.linspace(0, 1, n, dtype=torch.float64), method="dopri5")


def _outputs_rk4(n: int) -> Any:
    """rk4 with 100 steps and n output times (linear interpolation inside the steps)."""
    _torch()
    hn = _hn()
    with torch.no_grad():
        t = torch.linspace(0, 1, n, dtype=torch.float64)
        return hn.odeint(_decay, _y0(), t, method="rk4", options={"step_size": 0.01})


def _outputs_grad(n: int) -> Any:
    """dopri5 with n output times, backward through the direct graph."""
    _torch()
    hn = _hn()
    y0 = _y0(requires_grad=True)
    ys = hn.odeint(_decay, y0, torch.linspace(0, 1, n, dtype=torch.float64), method="dopri5")
    ys.sum().backward()
    return y0.grad


def _event_terminal(n: int) -> Any:
    """``odeint_event``: a terminal event near t = 1, n steps before it."""
    _torch()
    hn = _hn()
    with torch.no_grad():
        return hn.odeint_event(
            _decay,
            _y0(),
            torch.tensor(0.0, dtype=torch.float64),
            event_fn=lambda t, y: t - 0.999,
            method="dopri5",
            options={"max_step": 1.0 / n, "max_num_steps": 10 * n},
            rtol=1e-3,
            atol=1e-6,
        )


def _event_per_sample(n: int) -> Any:
    """per-sample terminal events (8 samples), n steps before the last fires."""
    _torch()
    hn = _hn()
    y0 = torch.ones(8, STATES, dtype=torch.float64)
    stop = torch.linspace(0.9, 0.999, 8, dtype=torch.float64)
    with torch.no_grad():
        return hn.odeint_event(
            _decay,
            y0,
            torch.tensor(0.0, dtype=torch.float64),
            event_fn=lambda t, y: t - stop,
            method="dopri5",
            options={"max_step": 1.0 / n, "max_num_steps": 10 * n},
            rtol=1e-3,
            atol=1e-6,
            per_sample=True,
        )


def _event_watch(n: int) -> Any:
    """A non-terminal ``hn.Event`` that never fires, watched over n steps."""
    _torch()
    hn = _hn()
    event = hn.Event(lambda t, y: y[:1] + 1.0)
    with torch.no_grad():
        return hn.solve(
            _decay,
            _y0(),
            _t01(),
            controller=hn.PIDController(rtol=1e-3, atol=1e-6, max_step=1.0 / n, max_num_steps=10 * n),
            event=event,
        )


def _bounces(n: int) -> Any:
    """A bouncing ball (g = 10, restitution 1) with n bounces, each an ``hn.Event`` jump."""
    _torch()
    hn = _hn()

    def ball(t, y):
        return torch.stack([y[1], torch.full_like(y[1], -10.0)])

    def bounce(t, y):
        return torch.stack([y[0].abs(), -y[1]])

    event = hn.Event(lambda t, y: y[:1], direction=-1, on_event=bounce, max_events=n + 10)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    period = 2 * (2 * 1.0 / 10.0) ** 0.5  # time between two bounces of a ball dropped from height 1
    t = torch.tensor([0.0, period * (n - 0.5) + period / 2], dtype=torch.float64)
    with torch.no_grad():
        return hn.solve(ball, y0, t, controller=hn.PIDController(rtol=1e-6, atol=1e-9), event=event)


def _dense(n: int) -> Any:
    """``odeint_dense`` over n steps (keeps every step's segment by nature)."""
    _torch()
    hn = _hn()
    with torch.no_grad():
        return hn.odeint_dense(
            _decay, _y0(), 0.0, 1.0, rtol=1e-3, atol=1e-6, options={"max_step": 1.0 / n, "max_num_steps": 10 * n}
        )


def _sde(kind: str) -> Callable[[int], Any]:
    """``sdeint`` (euler, diagonal noise) with n fixed steps and a Brownian path object of ``kind``."""

    def run(n: int) -> Any:
        _torch()
        hn = _hn()

        y0 = torch.ones(2, STATES, dtype=torch.float64)
        ts = _t01()
        kw: dict[str, Any] = {}
        if kind != "default":
            if kind == "interval":
                kw["bm"] = hn.BrownianInterval(t0=0.0, t1=1.0, size=(2, STATES), dtype=torch.float64, entropy=0)
            else:
                w0 = torch.zeros(2, STATES, dtype=torch.float64)
                kw["bm"] = hn.BrownianTree(t0=0.0, w0=w0, t1=1.0, entropy=0, tol=1e-5)
        with torch.no_grad():
            return hn.sdeint(_OU(), y0, ts, method="euler", dt=1.0 / n, **kw)

    return run


def _grad(sensitivity: str) -> Callable[[int], Any]:
    """Forward and backward of ys[-1].sum() over n rk4 steps (n adaptive steps for the adjoints)."""

    def run(n: int) -> Any:
        _torch()
        hn = _hn()
        theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)

        class Field(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.theta = torch.nn.Parameter(theta)

            def forward(self, t, y):
                return -self.theta * y

        f = Field()
        sens = {
            "direct": lambda: hn.DirectBackprop(),
            "checkpointed": lambda: hn.DirectBackprop(checkpoints=8),
            "backsolve": lambda: hn.BacksolveAdjoint(),
            "interpolating": lambda: hn.InterpolatingAdjoint(),
            "interpolating-32": lambda: hn.InterpolatingAdjoint(checkpoints=32),
            "reversible": lambda: hn.ReversibleAdjoint(),
        }[sensitivity]()
        solver = hn.Reversible(hn.RK4Classic()) if sensitivity == "reversible" else hn.RK4Classic()
        sol = hn.solve(
            f,
            _y0(requires_grad=True),
            _t01(),
            solver=solver,
            controller=hn.ConstantStepSize(step_size=1.0 / n),
            sensitivity=sens,
        )
        sol.ys[-1].sum().backward()
        return f.theta.grad

    return run


def _torchdiffeq(kind: str) -> Callable[[int], Any]:
    """torchdiffeq 0.2.x on the same problems (peer)."""

    def run(n: int) -> Any:
        _torch()
        import torchdiffeq

        if kind == "dopri5":
            with torch.no_grad():
                return torchdiffeq.odeint(
                    _decay, _y0(), _t01(), rtol=1e-3, atol=1e-6, method="dopri5", options={"max_step": 1.0 / n}
                )
        if kind == "rk4":
            with torch.no_grad():
                return torchdiffeq.odeint(_decay, _y0(), _t01(), method="rk4", options={"step_size": 1.0 / n})
        if kind == "out":
            with torch.no_grad():
                return torchdiffeq.odeint(_decay, _y0(), torch.linspace(0, 1, n, dtype=torch.float64))
        y0 = _y0(requires_grad=True)
        ys = torchdiffeq.odeint(_decay, y0, _t01(), method="rk4", options={"step_size": 1.0 / n})
        ys[-1].sum().backward()
        return y0.grad

    return run


def _torchsde(n: int) -> Any:
    """torchsde 0.2.x sdeint, euler, BrownianInterval (peer of ``sde-interval``)."""
    _torch()
    import torchsde

    y0 = torch.ones(2, STATES, dtype=torch.float64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(2, STATES), dtype=torch.float64, entropy=0)
    with torch.no_grad():
        return torchsde.sdeint(_OU(), y0, _t01(), method="euler", dt=1.0 / n, bm=bm)


def _compiled(n: int) -> Any:
    """``compile=True`` without gradients: the whole-solve graph (dopri5)."""
    return _host("dopri5", {"compile": True})(n)


WORKLOADS: dict[str, Callable[[int], Any]] = {
    "dopri5": _host("dopri5"),
    "tsit5": _host("tsit5"),
    "bdf": _host("bdf"),
    "adams": _host("adams"),
    "rosenbrock23": _host("rosenbrock23"),
    "kvaerno5": _host("kvaerno5"),
    "rk4": _host("rk4", fixed=True),
    "per_sample": _host("dopri5", {"per_sample": True}),
    "device_loop": _host("dopri5", {"device_loop": True}),
    "compile": _compiled,
    "dopri5-out": _outputs,
    "rk4-out": _outputs_rk4,
    "grad-direct-out": _outputs_grad,
    "odeint_event": _event_terminal,
    "event-per-sample": _event_per_sample,
    "event-watch": _event_watch,
    "event-bounces": _bounces,
    "dense": _dense,
    "sde-default": _sde("default"),
    "sde-interval": _sde("interval"),
    "sde-tree": _sde("tree"),
    "grad-direct": _grad("direct"),
    "grad-checkpointed": _grad("checkpointed"),
    "grad-backsolve": _grad("backsolve"),
    "grad-interpolating": _grad("interpolating"),
    "grad-interpolating-32": _grad("interpolating-32"),
    "grad-reversible": _grad("reversible"),
    "torchdiffeq-dopri5": _torchdiffeq("dopri5"),
    "torchdiffeq-rk4": _torchdiffeq("rk4"),
    "torchdiffeq-out": _torchdiffeq("out"),
    "torchdiffeq-grad-direct": _torchdiffeq("grad"),
    "torchsde-interval": _torchsde,
}


def _live_tensors() -> int:
    """The number of torch tensors the garbage collector tracks (tensors are gc-tracked objects)."""
    _torch()
    gc.collect()
    with warnings.catch_warnings():  # isinstance touches deprecated torch module attributes
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def _kib() -> tuple[int, int]:
    """Peak (VmHWM) and current (VmRSS) resident set of this process, KiB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("VmHWM", "VmRSS")))
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


def measure(name: str, n: int) -> dict[str, Any]:
    """One cell in this process: time per step, peak resident-set growth and tensors kept.

    Args:
        name: a key of ``WORKLOADS``.
        n: steps (output times for ``*-out``, bounces for ``event-bounces``).

    Returns:
        ``{"workload", "n", "us_per_step", "peak_mib", "bytes_per_step", "kept"}``.
    """
    run = WORKLOADS[name]
    run(10)  # imports, allocator, thread pools, compiled graphs
    before = _live_tensors()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak to the current resident set
        base = _kib()[1]
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = run(n)
    seconds = time.perf_counter() - start
    peak = _kib()[0]
    kept = _live_tensors() - before
    del result
    growth = (peak - base) * 1024
    return {
        "workload": name,
        "n": n,
        "us_per_step": 1e6 * seconds / n,
        "peak_mib": growth / 2**20,
        "bytes_per_step": growth / n,
        "kept": kept,
    }


def calls_per_step(name: str, n: int) -> float:
    """Python function calls per step of one run under cProfile: a count the machine's load does not move.

    A loop whose time per step grows with n while this count stays flat spends it in the load (or in
    one C call over a growing object, which the per-function times of the profile then show).
    """
    import cProfile
    import pstats

    run = WORKLOADS[name]
    run(10)
    profile = cProfile.Profile()
    profile.enable()
    run(n)
    profile.disable()
    return pstats.Stats(profile).total_calls / n  # type: ignore[attr-defined]


def _in_child(name: str, n: int, timeout: float) -> dict[str, Any]:
    """``measure`` in a fresh process (no allocator state carried over from another cell)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--one", name, str(n)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"workload": name, "n": n, "error": f"over {timeout:.0f} s"}
    except subprocess.CalledProcessError as e:
        last = (e.stderr.strip().splitlines() or ["?"])[-1]
        return {"workload": name, "n": n, "error": last[:80]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(cell: dict[str, Any]) -> str:
    if "error" in cell:
        return f"| {cell['workload']} | {cell['n']} | failed: {cell['error']} | | | |"
    return (
        f"| {cell['workload']} | {cell['n']} | {cell['us_per_step']:.1f} | {cell['peak_mib']:.2f} | "
        f"{cell['bytes_per_step']:.0f} | {cell['kept']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per cell before it is skipped")
    parser.add_argument("--calls", action="store_true", help="print Python calls per step instead of the table")
    parser.add_argument("--one", nargs=2, metavar=("WORKLOAD", "N"), help="measure one cell, print JSON")
    args = parser.parse_args()
    if args.one:
        name, n = args.one[0], int(args.one[1])
        if name not in WORKLOADS or n < 1:
            parser.error(f"--one: workload one of {sorted(WORKLOADS)} and N >= 1, got {name!r} {n}")
        print(json.dumps(measure(name, n)))
        return
    if any(n < 1 for n in args.sizes):
        parser.error("--sizes must be positive integers")
    if args.calls:
        for name in args.workloads:
            counts = " / ".join(f"{calls_per_step(name, n):.1f}" for n in args.sizes)
            print(f"{name}: {counts} calls per step at n = {args.sizes}", flush=True)
        return
    print("| workload | n | us/step | peak MiB | B/step | kept tensors |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.workloads:
        for n in args.sizes:
            print(_row(_in_child(name, n, args.timeout)), flush=True)


if __name__ == "__main__":
    main()
