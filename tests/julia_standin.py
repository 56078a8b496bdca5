"""A stand-in for the Julia engine, for tests only (never selectable as a backend).

It honours the engine contract of hybrid_node.julia.backend (Julia layouts: state
(D, B), saved states (D, B, T), flat vectors in column-major order) with an independent solver:
scipy's solve_ivp forward (DOP853, or Radau with the callback Jacobian for stiff methods) and a
continuous adjoint solved backwards against the dense forward solution (Chen et al. 2018,
Algorithm 1, with the forward trajectory interpolated instead of recomputed).

The MLP of the native path is evaluated with the Julia module's formula,
W = transpose(reshape(theta[r], in, out)), in numpy, and differentiated by hand.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.integrate import solve_ivp

from hybrid_node._solution import Stats
from hybrid_node.julia.backend import ForwardOutput
from hybrid_node.julia.translate import MLPSpec


def _act(name, z):
    """Activation value and derivative, as julia/activations.jl defines them."""
    if name == "identity":
        return z, np.ones_like(z)
    if name == "tanh":
        a = np.tanh(z)
        return a, 1 - a * a
    if name == "relu":
        return np.maximum(z, 0), (z > 0).astype(float)
    if name == "softplus":
        big = z > 20
        zs = np.where(big, 0.0, z)
        s = 1 / (1 + np.exp(-zs))
        return np.where(big, z, np.log1p(np.exp(zs))), np.where(big, 1.0, s)
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-z))
        return s, s * (1 - s)
    if name == "silu":
        s = 1 / (1 + np.exp(-z))
        return z * s, s + z * s * (1 - s)
    if name == "elu":
        neg = np.minimum(z, 0)
        return np.where(z > 0, z, np.expm1(neg)), np.where(z > 0, 1.0, np.exp(neg))
    raise ValueError(name)


def julia_weight(spec: MLPSpec, theta: np.ndarray, k: int):
    """Layer k's (W, b) read from theta exactly as julia/mlp.jl does."""
    w, b = list(spec.ranges())[k]
    W = theta[w].reshape((spec.n_in[k], spec.n_out[k]), order="F").T
    return W, (theta[b] if b is not None else None)


def mlp_forward(spec: MLPSpec, theta, u, t):
    """The MLP on a (D, B) state; returns the output and the per-layer cache."""
    x = np.vstack([u, np.full((1, u.shape[1]), t)]) if spec.time_input else u
    cache = []
    for k in range(len(spec.n_in)):
        W, b = julia_weight(spec, theta, k)
        z = W @ x + (b[:, None] if b is not None else 0.0)
        a, da = _act(spec.activations[k], z)
        cache.append((x, da, W))
        x = a
    return x, cache


def mlp_vjp(spec: MLPSpec, theta, u, t, lam):
    """(lam^T df/du, lam^T df/dtheta) for the (D, B) state u and cotangent lam."""
    _, cache = mlp_forward(spec, theta, u, t)
    g_theta = np.zeros_like(theta)
    g = lam
    for k in reversed(range(len(spec.n_in))):
        x, da, W = cache[k]
        gz = g * da
        w, b = list(spec.ranges())[k]
        # theta[w] read column-major as (in, out) is W^T, i.e. W read row-major.
        g_theta[w] = (gz @ x.T).reshape(-1)
        if b is not None:
            g_theta[b] = gz.sum(axis=1)
        g = W.T @ gz
    return g[: u.shape[0]], g_theta


@dataclasses.dataclass
class _Handle:
    problem: object
    theta: np.ndarray
    ts: np.ndarray
    dense: object
    shape: tuple
    config: object


class StandinEngine:
    """Engine with the Julia engine's contract, computed with scipy. Records every call."""

    def __init__(self):
        self.forward_calls = []
        self.backward_calls = []

    # vector field and its vjp on flat column-major vectors
    def _f(self, problem, theta, shape, x, t):
        if isinstance(problem, MLPSpec):
            u = x.reshape(shape, order="F")
            return mlp_forward(problem, theta, u, t)[0].reshape(-1, order="F")
        return np.asarray(problem.f(x.copy(), t), dtype=float)

    def _vjp(self, problem, theta, shape, lam, x, t):
        if isinstance(problem, MLPSpec):
            gu, gp = mlp_vjp(problem, theta, x.reshape(shape, order="F"), t, lam.reshape(shape, order="F"))
            return gu.reshape(-1, order="F"), gp
        out = np.asarray(problem.vjp(lam.copy(), x.copy(), t), dtype=float)
        return out[: problem.n_state], out[problem.n_state :]

    def forward(self, problem, u0, theta, ts, config):
        assert u0.ndim == 2, "the engine receives the Julia (D, B) layout"
        self.forward_calls.append(
            dict(problem=problem, u0=np.array(u0), theta=np.array(theta), ts=np.array(ts), config=config)
        )
        shape = u0.shape
        x0 = np.asarray(u0, dtype=float).reshape(-1, order="F")
        kw = dict(rtol=config.rtol, atol=config.atol, dense_output=True, t_eval=ts)
        if config.stiff and not isinstance(problem, MLPSpec):
            n = problem.n_state
            kw["jac"] = lambda t, x: np.asarray(problem.jac(x.copy(), t)).reshape((n, n), order="F")
            method = "Radau"
        else:
            method = "DOP853"
        sol = solve_ivp(lambda t, x: self._f(problem, theta, shape, x, t), (ts[0], ts[-1]), x0, method=method, **kw)
        ys = sol.y.reshape(shape + (len(ts),), order="F") if sol.success else np.zeros(shape + (0,))
        stats = Stats(nfe=int(sol.nfev), n_accepted=max(0, len(sol.t) - 1), n_jacobian=int(sol.njev))
        handle = _Handle(problem, np.array(theta, dtype=float), np.array(ts, dtype=float), sol.sol, shape, config)
        return ForwardOutput(
            ys=ys,
            handle=handle,
            success=bool(sol.success),
            retcode="Success" if sol.success else "MaxIters",
            t_final=self._reached(sol, ts),
            stats=stats,
        )

    @staticmethod
    def _reached(sol, ts):
        dense = sol.sol
        if dense is not None and len(dense.ts):
            return float(dense.ts[-1])
        return float(sol.t[-1]) if len(sol.t) else float(ts[0])

    def backward(self, handle: _Handle, ybar):
        ybar = np.asarray(ybar, dtype=float)
        assert ybar.shape == handle.shape + (len(handle.ts),), "cotangent must be (D, B, T)"
        self.backward_calls.append(dict(ybar=ybar.copy()))
        n = int(np.prod(handle.shape))
        p = len(handle.theta)
        ts, cfg = handle.ts, handle.config

        def rhs(t, z):
            a = z[:n]
            x = handle.dense(t)
            gu, gp = self._vjp(handle.problem, handle.theta, handle.shape, a, x, t)
            return np.concatenate([-gu, -gp])

        z = np.zeros(n + p)
        for i in range(len(ts) - 1, 0, -1):
            z[:n] += ybar[..., i].reshape(-1, order="F")
            sol = solve_ivp(rhs, (ts[i], ts[i - 1]), z, method="DOP853", rtol=cfg.rtol, atol=cfg.atol)
            z = sol.y[:, -1].copy()
        z[:n] += ybar[..., 0].reshape(-1, order="F")
        return z[:n].reshape(handle.shape, order="F"), z[n:]
