"""Adapters: one ``prepare(workload) -> run()`` per framework, so the runner treats them alike.

``run()`` performs one timed unit of work (forward, or forward+backward of the workload's loss) and
returns the solution tensor of shape (len(t), *y0.shape) (diffrax: its JAX outputs). A framework that
is not installed is reported as unavailable, never as an error of the suite. A framework whose
evaluations or gradients do not pass through the torch field (diffrax) gives its ``run`` the
attributes ``nfe()`` and ``grads()`` (and ``compile_s``), which the runner reads instead.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from .workloads import Workload


def available() -> dict[str, bool]:
    """Which frameworks can run in this process."""
    return {
        "hybrid_node": True,
        "hybrid_node+compile": True,
        "hybrid_node+device": True,
        "hybrid_node+device+compile": True,
        "torchdiffeq": importlib.util.find_spec("torchdiffeq") is not None,
        "torchode": importlib.util.find_spec("torchode") is not None,
        "diffrax": importlib.util.find_spec("diffrax") is not None and importlib.util.find_spec("jax") is not None,
    }


def _unit(w: Workload, solve: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """Wrap a solve into the workload's unit of work (no_grad forward, or loss + backward)."""
    if w.mode == "fwd":

        def run():
            with torch.no_grad():
                return solve()
    else:

        def run():
            for p in w.field.parameters():
                p.grad = None
            ys = solve()
            w.loss(ys).backward()
            return ys

    return run


def _options(w: Workload):
    return {"step_size": w.step_size} if w.step_size is not None else None


def prepare_hybrid_node(w: Workload, extra_options=None, hn=None):
    """hybrid_node's unit of work for ``w``; ``hn``: the package to solve with (default: ``hybrid_node``;
    ``benchmarks.ab`` passes another checkout's)."""
    if hn is None:
        import hybrid_node as hn

    options = dict(_options(w) or {}, **(extra_options or {})) or None
    if w.mode == "adjoint":
        params = tuple(w.field.parameters())
        return _unit(
            w,
            lambda: hn.odeint_adjoint(
                w.field, w.y0, w.t, rtol=w.rtol, atol=w.atol, method=w.method, options=options, adjoint_params=params
            ),
        )
    return _unit(w, lambda: hn.odeint(w.field, w.y0, w.t, rtol=w.rtol, atol=w.atol, method=w.method, options=options))


def _timed_first_run(w: Workload, options: dict):
    """hybrid_node with compiling ``options``; the first (compiling) run is timed apart as ``compile_s``,
    and ``nfe()`` reads the solution's counters (the field's own counter does not advance inside a
    compiled loop)."""
    import time

    run = prepare_hybrid_node(w, options)
    start = time.perf_counter()
    run()
    run.compile_s = time.perf_counter() - start
    run.nfe = lambda: _solution_nfe(w, dict(_options(w) or {}, **options))
    return run


def _solution_nfe(w: Workload, options: dict) -> int:
    """Evaluations of one unit of work as the solution counts them: the forward solve's, plus the
    backward solve's for the adjoint (as the eager field's counter and diffrax's count)."""
    import hybrid_node as hn
    from hybrid_node._registry import build_solver

    solver, controller, _ = build_solver(w.method, options, w.rtol, w.atol)
    sensitivity = hn.BacksolveAdjoint() if w.mode == "adjoint" else None
    with torch.set_grad_enabled(w.mode != "fwd"):
        sol = hn.solve(w.field, w.y0, w.t, solver=solver, controller=controller, sensitivity=sensitivity)
        if w.mode != "fwd":  # autograd.grad: the parameters' .grad, which the runner reads, stay as they are
            torch.autograd.grad(w.loss(sol.ys), [p for p in w.field.parameters() if p.requires_grad])
    return sol.stats.nfe + sol.stats.nfe_backward


def prepare_hybrid_node_compiled(w: Workload):
    """hybrid_node with compiled step attempts."""
    return _timed_first_run(w, {"compile": True})


def prepare_hybrid_node_device(w: Workload):
    """hybrid_node with the device-resident loop (``options={"device_loop": True}``), run eagerly."""
    return prepare_hybrid_node(w, {"device_loop": True})


def prepare_hybrid_node_device_compiled(w: Workload):
    """The device-resident loop with each run of attempts compiled."""
    return _timed_first_run(w, {"device_loop": True, "compile": True})


def prepare_torchdiffeq(w: Workload):
    import torchdiffeq

    if w.mode == "adjoint":
        params = tuple(w.field.parameters())
        return _unit(
            w,
            lambda: torchdiffeq.odeint_adjoint(
                w.field,
                w.y0,
                w.t,
                rtol=w.rtol,
                atol=w.atol,
                method=w.method,
                options=_options(w),
                adjoint_params=params,
            ),
        )
    return _unit(
        w,
        lambda: torchdiffeq.odeint(w.field, w.y0, w.t, rtol=w.rtol, atol=w.atol, method=w.method, options=_options(w)),
    )


def prepare_torchode(w: Workload):
    """torchode with per-sample control where the workload's samples are independent, else one (1, N) sample."""
    import torchode as to

    if w.method != "dopri5":
        raise NotImplementedError("the torchode adapter only runs dopri5")
    y0 = w.y0 if w.per_sample_ok else w.y0.reshape(1, -1)
    batch = y0.shape[0]
    term = to.ODETerm(w.field)
    step = to.Dopri5(term=term)
    ctrl = to.IntegralController(atol=w.atol, rtol=w.rtol, term=term)
    solver = to.JointBacksolveAdjoint(term, step, ctrl) if w.mode == "adjoint" else to.AutoDiffAdjoint(step, ctrl)
    t_eval = w.t.unsqueeze(0).expand(batch, -1)

    def solve():
        sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))
        ys = sol.ys.transpose(0, 1)  # (T, batch, features)
        return ys.reshape((len(w.t),) + tuple(w.y0.shape))

    return _unit(w, solve)


def prepare_diffrax(w: Workload):
    """diffrax/JAX, compiled by XLA (see benchmarks/diffrax_peer.py); imported only when it runs."""
    from .diffrax_peer import prepare_diffrax as prepare

    return prepare(w)


PREPARE = {
    "hybrid_node": prepare_hybrid_node,
    "hybrid_node+compile": prepare_hybrid_node_compiled,
    "hybrid_node+device": prepare_hybrid_node_device,
    "hybrid_node+device+compile": prepare_hybrid_node_device_compiled,
    "torchdiffeq": prepare_torchdiffeq,
    "torchode": prepare_torchode,
    "diffrax": prepare_diffrax,
}
