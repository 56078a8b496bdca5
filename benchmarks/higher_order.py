"""Probe of higher-order derivatives through every gradient path of ``hybrid_node`` (and torchdiffeq).

Problem: the linear system dy/dt = A y on [0, 1], A a 2x2 parameter and y0 = y(0), whose solution
y(1) = expm(A) y0 is known in closed form. The loss L(A, y0) = sum(y(1)^3) / 3 + y(1)[0] y(1)[1] is
nonlinear in y(1), so its Hessian in theta = (vec A, y0) (6 x 6) has a part from the loss and a part
from the solve; the exact one is ``torch.func.hessian`` of the loss on ``torch.linalg.matrix_exp``.

Every row is one (gradient method, solver) and every column one way of taking a derivative:

- ``rev-rev``: ``torch.autograd.grad(L, create_graph=True)``, then six more backward passes (the Hessian);
- ``fwd-rev``: the same gradient under ``torch.autograd.forward_ad`` dual inputs (its tangent is H v);
- ``hessian``: ``torch.func.hessian`` (jacfwd of jacrev); ``jacrev2``: ``jacrev(jacrev)``;
- ``jvp``, ``dual``: first derivatives by forward mode (``torch.func.jvp``, ``forward_ad``), against g v.

Each cell reads ``ok`` (relative error below the row's tolerance), ``WRONG`` (a silent answer beyond
it), ``err:`` with the exception's type and its first words (``clear`` where it names what to use).
The tolerance: the adaptive solves run at rtol = 1e-10, atol = 1e-12 and rk4 at h = 0.01 (global error
~h^4 = 1e-8), so their first and second derivatives are within ~1e-7 relative of the exact ones; the
cells pass below 1e-5 (a dropped part of the Hessian is O(1) off).

Usage::

    python benchmarks/higher_order.py            # the table of docs/gradients.md
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable

import torch
from torch.autograd import forward_ad

import hybrid_node as hn

F64 = torch.float64
T_END = 1.0
TOL = 1e-5


def loss_of(y: torch.Tensor) -> torch.Tensor:
    """The scalar loss of y(1): cubic, with a cross term, so that its Hessian in y(1) is not constant."""
    return (y**3).sum() / 3 + y[..., 0].sum() * y[..., 1].sum()


def exact(theta: torch.Tensor) -> torch.Tensor:
    """The loss on the closed-form solution expm(A T) y0."""
    a, y0 = theta[:4].reshape(2, 2), theta[4:]
    return loss_of(torch.linalg.matrix_exp(a * T_END) @ y0)


def _linear(a: torch.Tensor) -> Callable:
    return lambda t, y: y @ a.T


#: the output times, made outside the transforms: a tensor made inside ``torch.func.hessian`` is wrapped by its
#: forward-mode level, and the solve refuses it (it cannot tell whether that level differentiates it)
_TIMES = torch.tensor([0.0, T_END], dtype=F64)


def _t() -> torch.Tensor:
    return _TIMES


def _adaptive(method: str) -> Callable:
    return lambda a, y0: hn.odeint(_linear(a), y0, _t(), rtol=1e-10, atol=1e-12, method=method)[-1]


def _rk4(a: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    return hn.odeint(_linear(a), y0, _t(), method="rk4", options={"step_size": 0.01})[-1]


def _solve(sensitivity, solver=None, controller=None) -> Callable:
    controller = controller or hn.PIDController(rtol=1e-10, atol=1e-12)

    def run(a, y0):
        sol = hn.solve(
            _linear(a), y0, _t(), solver=solver or hn.Tsit5(), controller=controller,
            sensitivity=sensitivity, adjoint_params=(a,),
        )  # fmt: skip
        return sol.ys[-1]

    return run


def _backsolve(a, y0):
    return hn.odeint_adjoint(_linear(a), y0, _t(), rtol=1e-10, atol=1e-12, adjoint_params=(a,))[-1]


def _compiled(a, y0):
    return hn.odeint(_linear(a), y0, _t(), rtol=1e-10, atol=1e-12, method="dopri5", options={"compile": True})[-1]


def _compiled_dense(a, y0):
    # y(1) read from the interpolant inside a longer solve (an interior point of a step)
    options = {"compile": True}
    sol = hn.odeint_dense(_linear(a), y0, 0.0, 1.5 * T_END, rtol=1e-10, atol=1e-12, method="dopri5", options=options)
    return sol(T_END)


def _per_sample(a, y0):
    controller = hn.PIDController(rtol=1e-10, atol=1e-12, per_sample=True)
    return hn.solve(_linear(a), y0[None], _t(), solver=hn.Dopri5(), controller=controller).ys[-1, 0]


def _torchdiffeq(adjoint: bool) -> Callable:
    def run(a, y0):
        import torchdiffeq

        if adjoint:
            return torchdiffeq.odeint_adjoint(
                _Linear(a), y0, _t(), rtol=1e-10, atol=1e-12, adjoint_params=(a,)
            )[-1]  # fmt: skip
        return torchdiffeq.odeint(_linear(a), y0, _t(), rtol=1e-10, atol=1e-12)[-1]

    return run


class _Linear(torch.nn.Module):
    """torchdiffeq's adjoint wants a Module (or adjoint_params): the field y A^T of a given A."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, t, y):
        return y @ self.a.T


ROWS: dict[str, Callable] = {
    "odeint dopri5": _adaptive("dopri5"),
    "odeint tsit5": _adaptive("tsit5"),
    "odeint rk4 (h=0.01)": _rk4,
    "odeint rosenbrock23": _adaptive("rosenbrock23"),
    "odeint rodas5p": _adaptive("rodas5p"),
    "odeint kvaerno5": _adaptive("kvaerno5"),
    "odeint bdf": _adaptive("bdf"),
    "odeint compile=True": _compiled,
    "odeint_dense compile=True": _compiled_dense,
    "per_sample dopri5": _per_sample,
    "DirectBackprop(checkpoints=2)": _solve(hn.DirectBackprop(checkpoints=2)),
    "odeint_adjoint (backsolve)": _backsolve,
    "InterpolatingAdjoint": _solve(hn.InterpolatingAdjoint(checkpoints=2)),
    "ReversibleAdjoint": _solve(hn.ReversibleAdjoint(), hn.Reversible(hn.Tsit5()), hn.ConstantStepSize(step_size=0.01)),
    "torchdiffeq odeint": _torchdiffeq(False),
    "torchdiffeq odeint_adjoint": _torchdiffeq(True),
}


def _scalar(row: Callable) -> Callable:
    def f(theta):
        return loss_of(row(theta[:4].reshape(2, 2), theta[4:]))

    return f


def rev_rev(f, theta, v):
    x = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    return torch.stack([torch.autograd.grad(g[i], x, retain_graph=True)[0] for i in range(x.numel())])


def fwd_rev(f, theta, v):
    with forward_ad.dual_level():
        x = forward_ad.make_dual(theta.clone(), v).requires_grad_(True)
        (g,) = torch.autograd.grad(f(x), x, create_graph=True)
        return forward_ad.unpack_dual(g).tangent  # H v


def func_hessian(f, theta, v):
    return torch.func.hessian(f)(theta)


def jacrev2(f, theta, v):
    return torch.func.jacrev(torch.func.jacrev(f))(theta)


def func_jvp(f, theta, v):
    return torch.func.jvp(f, (theta,), (v,))[1]


def dual(f, theta, v):
    with forward_ad.dual_level():
        return forward_ad.unpack_dual(f(forward_ad.make_dual(theta, v))).tangent


MODES: dict[str, tuple[Callable, str]] = {
    "rev-rev": (rev_rev, "H"),
    "fwd-rev": (fwd_rev, "Hv"),
    "hessian": (func_hessian, "H"),
    "jacrev2": (jacrev2, "H"),
    "jvp": (func_jvp, "gv"),
    "dual": (dual, "gv"),
}


def cell(f: Callable, mode: str, theta, v, reference) -> str:
    """One entry of the table for the scalar function ``f`` of theta: ok / WRONG (relative error) / the error."""
    fn, kind = MODES[mode]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = fn(f, theta, v)
    except Exception as exc:  # noqa: BLE001 - the probe reports every failure
        words = " ".join(str(exc).split())[:90]
        return f"err {type(exc).__name__}: {words}"
    got = got.detach()
    if got is None:
        return "WRONG (no tangent)"
    want = reference[kind]
    rel = float((got - want).norm() / want.norm())
    return f"ok ({rel:.0e})" if rel < TOL and math.isfinite(rel) else f"WRONG (rel {rel:.1e})"


C = 2.0  # the event y = C of dy/dt = a y from y0 < C: t_e = log(C / y0) / a


def _terminal(theta):
    a = theta[0]
    t_e, _ = hn.odeint_event(
        lambda t, y: a * y, theta[1:], _TIMES[0], event_fn=lambda t, y: y[0] - C, rtol=1e-10, atol=1e-12
    )
    return t_e**2


def _per_sample_event(theta):
    a = theta[0]
    t_e, _ = hn.odeint_event(
        lambda t, y: a * y, theta[1:][None], _TIMES[0], event_fn=lambda t, y: y[:, 0] - C,
        per_sample=True, rtol=1e-10, atol=1e-12,
    )  # fmt: skip
    return (t_e**2).sum()


def _recorded_event(theta):
    a = theta[0]
    event = hn.Event(lambda t, y: y - C, on_event=lambda t, y: 0.5 * y)
    t = torch.tensor([0.0, 2.5], dtype=F64)  # one crossing (t_e = 1.98)
    sol = hn.solve(lambda t, y: a * y, theta[1:], t, event=event, controller=hn.PIDController(rtol=1e-10, atol=1e-12))
    return sol.events[0].t ** 2


def _exact_event(theta):
    return (torch.log(C / theta[1]) / theta[0]) ** 2


#: event solves: the loss t_e^2 of theta = (a, y0), whole functions of theta
EVENT_ROWS: dict[str, Callable] = {
    "odeint_event (event_fn)": _terminal,
    "odeint_event per_sample": _per_sample_event,
    "hn.Event (recorded)": _recorded_event,
}


def _references(f: Callable, theta: torch.Tensor, v: torch.Tensor) -> dict:
    h = torch.func.hessian(f)(theta)
    return {"H": h, "Hv": h @ v, "gv": torch.func.grad(f)(theta) @ v}


def main(rows: list[str] | None = None) -> None:
    torch.manual_seed(0)
    theta = torch.tensor([-0.3, 0.8, -0.6, -0.2, 1.0, 0.5], dtype=F64)
    v = torch.randn(6, dtype=F64)
    h = torch.func.hessian(exact)(theta)
    g = torch.func.grad(exact)(theta)
    reference = {"H": h, "Hv": h @ v, "gv": g @ v}
    for name, row in ROWS.items():
        if rows and not any(r in name for r in rows):
            continue
        for mode in MODES:
            print(f"{name} | {mode} | {cell(_scalar(row), mode, theta, v, reference)}", flush=True)
    theta, v = torch.tensor([0.7, 0.5], dtype=F64), torch.tensor([0.6, -0.8], dtype=F64)
    reference = _references(_exact_event, theta, v)
    for name, row in EVENT_ROWS.items():
        if rows and not any(r in name for r in rows):
            continue
        for mode in MODES:
            print(f"{name} | {mode} | {cell(row, mode, theta, v, reference)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
