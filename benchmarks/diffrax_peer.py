"""The diffrax (JAX) adapter of the benchmark runner: the mlp, conv and cnf workloads, compiled whole by XLA.

The weights are copied from the workload's torch field (itself built from one numpy seed), so every
framework integrates the same dynamics from the same state at the same tolerances: dopri5 is
``diffrax.Dopri5`` with a ``PIDController`` (integral control, rtol/atol of the workload), outputs at
the workload's times, float32 with strict fp32 matmuls and convolutions
(``jax_default_matmul_precision = "highest"``).
Direct training backpropagates through the solver (diffrax's default ``RecursiveCheckpointAdjoint``);
the adjoint mode uses ``BacksolveAdjoint`` (the continuous adjoint of Chen et al., NeurIPS 2018).

Every unit of work is one ``jax.jit``-compiled function; it is compiled in :func:`prepare` and the
compile time is reported apart from the timed rounds (``run.compile_s``). The number of field
evaluations is counted exactly in an untimed instrumented copy of the same computation (a host
callback in the field), and the solver's own step count (``num_steps``, accepted + rejected) is kept
beside it.

Reference: Kidger, "On Neural Differential Equations", PhD thesis, Oxford 2021 (diffrax).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from .workloads import CNFField, ConvField, MLPField, Workload


def _configure_threads() -> None:
    """Give XLA's CPU backend the same single thread as torch when the runner asks for one thread.

    XLA reads ``XLA_FLAGS`` once, when its CPU client is created, so this only acts before JAX's first use.
    """
    if torch.get_num_threads() == 1 and "intra_op_parallelism_threads" not in os.environ.get("XLA_FLAGS", ""):
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()


def _params(field: torch.nn.Module):
    """The field's parameters as float32 JAX arrays, in ``field.parameters()`` order (weights as (out, in))."""
    import jax.numpy as jnp

    return [jnp.asarray(p.detach().cpu().numpy().astype(np.float32)) for p in field.parameters()]


def _mlp(params, x):
    """tanh MLP on the rows of ``x``; ``params`` alternates weight (out, in) and bias."""
    import jax.numpy as jnp

    n = len(params) // 2
    for i in range(n):
        x = x @ params[2 * i].T + params[2 * i + 1]
        if i < n - 1:
            x = jnp.tanh(x)
    return x


def _group_norm(x, weight, bias, groups: int, eps: float):
    """``torch.nn.GroupNorm`` on an NCHW array: biased variance over each group's channels and pixels, then affine."""
    import jax.numpy as jnp

    g = x.reshape(x.shape[0], groups, -1)
    g = (g - g.mean(axis=2, keepdims=True)) / jnp.sqrt(g.var(axis=2, keepdims=True) + eps)
    return g.reshape(x.shape) * weight[:, None, None] + bias[:, None, None]


def _conv_field(field: ConvField, shifted: bool):
    """The ODE-Net block ``f(t, y, params)`` of the torch ``field`` (``params`` in ``field.parameters()`` order).

    The state is NCHW and the weights OIHW as torch's; each 3x3 convolution runs channels-last, by
    ``lax.conv_general_dilated`` or (``shifted``) as nine shifted matmuls. XLA:CPU runs convolutions inside
    a while loop (the solver's) far slower than outside it, channels-first ones and the weight gradient's
    about 30x (jax-ml/jax#12868); the matmuls' gradients are not affected, so the CPU trains with them.
    """
    import jax
    import jax.numpy as jnp

    idx = {name: i for i, (name, _) in enumerate(field.named_parameters())}
    norms = [(getattr(field, k).num_groups, getattr(field, k).eps) for k in ("norm1", "norm2", "norm3")]

    def norm(k, x, params):
        groups, eps = norms[k - 1]
        return _group_norm(x, params[idx[f"norm{k}.weight"]], params[idx[f"norm{k}.bias"]], groups, eps)

    def conv(k, t, x, params):  # 3x3 over [t, x], a constant time channel first, as _ConcatConv (NCHW, OIHW)
        x = jnp.concatenate([jnp.full_like(x[:, :1], t), x], axis=1)
        weight, bias = params[idx[f"conv{k}.conv.weight"]], params[idx[f"conv{k}.conv.bias"]][:, None, None]
        if shifted:
            h, wd = x.shape[2:]
            xp = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))).transpose(0, 2, 3, 1)
            out = sum(xp[:, i : i + h, j : j + wd] @ weight[:, :, i, j].T for i in range(3) for j in range(3))
        else:
            out = jax.lax.conv_general_dilated(
                x.transpose(0, 2, 3, 1),
                weight.transpose(2, 3, 1, 0),
                (1, 1),
                ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        return out.transpose(0, 3, 1, 2) + bias

    def f(t, y, params):
        out = conv(1, t, jax.nn.relu(norm(1, y, params)), params)
        out = conv(2, t, jax.nn.relu(norm(2, out, params)), params)
        return norm(3, out, params)

    return f


def _vector_field(w: Workload, counter=None):
    """The workload's dynamics ``f(t, y, params)``; ``counter`` (a list) counts evaluations through a host callback."""
    import jax
    import jax.numpy as jnp

    def count():
        if counter is not None:
            jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))

    if isinstance(w.field, MLPField):

        def f(t, y, params):
            count()
            return _mlp(params, y)
    elif isinstance(w.field, CNFField):

        def f(t, y, params):  # FFJORD-style: dz = g(t, z), d delta = -tr(dg/dz), exact trace by two JVPs
            count()
            z = y[:, :2]

            def g(z):
                tt = jnp.full((z.shape[0], 1), t, dtype=z.dtype)
                return _mlp(params, jnp.concatenate([tt, z], axis=1))

            dz = g(z)
            trace = 0.0
            for i in range(2):
                e = jnp.zeros_like(z).at[:, i].set(1.0)
                trace = trace + jax.jvp(g, (z,), (e,))[1][:, i]
            return jnp.concatenate([dz, -trace[:, None]], axis=1)
    elif isinstance(w.field, ConvField):
        conv_f = _conv_field(w.field, shifted=w.y0.device.type == "cpu" and w.mode != "fwd")

        def f(t, y, params):
            count()
            return conv_f(t, y, params)
    else:
        raise NotImplementedError(f"the diffrax adapter has no port of {type(w.field).__name__} (workload {w.name})")
    return f


def _loss_fn(w: Workload):
    """The workload's loss on a JAX solution of shape (len(t), *y0.shape), or None for forward-only workloads."""
    import jax.numpy as jnp

    if w.mode == "fwd":
        return None
    if isinstance(w.field, (MLPField, ConvField)):  # MSE against fixed targets from the torch loss's closure
        cells = [c.cell_contents for c in (w.loss.__closure__ or ()) if isinstance(c.cell_contents, torch.Tensor)]
        if len(cells) != 1:
            raise NotImplementedError(f"cannot find the {w.name} workload's targets")
        target = jnp.asarray(cells[0].cpu().numpy().astype(np.float32))
        if isinstance(w.field, ConvField):  # conv: at t = 1 only
            return lambda ys: jnp.mean((ys[-1] - target) ** 2)
        return lambda ys: jnp.mean((ys - target) ** 2)

    def nll(ys):  # as the cnf workload: NLL under N(0, I) at t = 1
        z1, delta = ys[-1][:, :2], ys[-1][:, 2]
        logp_z = -0.5 * jnp.sum(z1**2, axis=1) - np.log(2 * np.pi)
        return -jnp.mean(logp_z - delta)

    return nll


def _build(w: Workload, counter=None, forward_only: bool = False):
    """The unit of work as a function of the parameters: (solution, steps) for forward-only workloads (or
    ``forward_only``), else ((loss, (solution, steps)), grads)."""
    import diffrax
    import jax
    import jax.numpy as jnp

    if w.method != "dopri5":
        raise NotImplementedError("the diffrax adapter only runs dopri5")
    f = _vector_field(w, counter)
    ts = jnp.asarray(w.t.cpu().numpy().astype(np.float32))
    y0 = jnp.asarray(w.y0.cpu().numpy().astype(np.float32))
    adjoint = diffrax.BacksolveAdjoint() if w.mode == "adjoint" else diffrax.RecursiveCheckpointAdjoint()

    def solve(params):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(f),
            diffrax.Dopri5(),
            ts[0],
            ts[-1],
            None,
            y0,
            args=params,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=w.rtol, atol=w.atol),
            adjoint=adjoint,
            max_steps=16384,
        )
        return sol.ys, sol.stats["num_steps"]

    loss = _loss_fn(w)
    if loss is None or forward_only:
        return jax.jit(solve)

    def value(params):
        ys, steps = solve(params)
        return loss(ys), (ys, steps)

    return jax.jit(jax.value_and_grad(value, has_aux=True))


def prepare_diffrax(w: Workload):
    """Compile the workload for diffrax and return its timed unit ``run()``.

    Returns:
        ``run()`` (one forward, or forward + gradient, blocked until done) with the attributes
        ``compile_s`` (seconds to trace and compile), ``nfe()`` (field evaluations, counted in an
        untimed instrumented run: the forward solve for forward-only and direct workloads, forward +
        backward solve for the adjoint), ``num_steps`` (the solver's steps, forward solve) and
        ``grads()`` (the last gradient as one float64 torch vector in ``field.parameters()`` order, or None).

    Raises:
        NotImplementedError: for workloads without a JAX port or a device JAX does not have.
    """
    _configure_threads()
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    dev_type = w.y0.device.type
    platform = "gpu" if dev_type == "cuda" else dev_type
    try:
        device = jax.devices(platform)[0]
    except RuntimeError as e:
        raise NotImplementedError(f"JAX has no {platform} device here") from e
    params = jax.device_put(_params(w.field), device)
    fn = _build(w)
    start = time.perf_counter()
    compiled = fn.lower(params).compile()
    compile_s = time.perf_counter() - start
    state = {"grads": None}

    def run():
        out = jax.block_until_ready(compiled(params))
        if w.mode != "fwd":
            state["grads"] = out[1]
        return out

    def nfe():
        # direct: the forward solve's evaluations (as the torch rows count them; the checkpointed backward
        # re-evaluates the field, which a host callback cannot tell apart); adjoint: forward + backward solve
        counter = [0]
        jax.block_until_ready(_build(w, counter, forward_only=w.mode == "direct")(params))
        jax.effects_barrier()
        return counter[0]

    def grads():
        if state["grads"] is None:
            return None
        return torch.cat([torch.from_numpy(np.asarray(g, dtype=np.float64)).reshape(-1) for g in state["grads"]])

    out = compiled(params)
    run.num_steps = int(out[1] if w.mode == "fwd" else out[0][1][1])
    run.compile_s, run.nfe, run.grads = compile_s, nfe, grads
    return run
