"""Cross-backend consistency: the same problems on the torch and Julia backends agree.

Solutions and every gradient (initial state, parameters, output times) are compared at tight
tolerances on: a linear system with an exact solution, Van der Pol, an MLP Neural ODE (native and
callback paths, every Julia sensitivity), a batched state, and Robertson's stiff problem. Users can
run this module too: ``pytest -m julia tests/test_cross_backend.py``. Without a working Julia
everything here is skipped with a one-line reason.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hybrid_node as hn
from hybrid_node.julia import runtime as julia_runtime
from hybrid_node.julia.translate import MLPVectorField

pytestmark = pytest.mark.julia

TOL = dict(rtol=1e-10, atol=1e-12)
CLOSE = dict(rtol=1e-6, atol=1e-8)


@pytest.fixture(scope="module", autouse=True)
def julia():
    status = julia_runtime.probe()
    if not status.ok:
        pytest.skip(f"Julia backend not available: {status.reason}")
    try:
        julia_runtime.load_module()
    except hn.JuliaNotAvailableError as e:
        pytest.skip(f"Julia backend not available: {str(e).splitlines()[0]}")


def _grads(func, y0, t, backend, method, sensitivity=None, params=()):
    y0 = y0.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    for p in params:
        p.grad = None
    if backend == "torch":
        ys = hn.odeint(func, y0, t, method=method, backend="torch", **TOL)
    else:
        ys = hn.solve(
            func,
            y0,
            t,
            solver=_solver(method),
            controller=hn.PIDController(**TOL),
            sensitivity=sensitivity,
            backend="julia",
        ).ys
    weights = torch.linspace(0.5, 1.5, ys.numel(), dtype=ys.dtype).reshape(ys.shape)
    (ys * weights).sum().backward()
    return ys.detach(), y0.grad, t.grad, [p.grad.clone() for p in params]


def _torch_stiff_methods() -> dict:
    try:
        from hybrid_node.solvers import implicit
    except ImportError:
        return {}
    return dict(getattr(implicit, "IMPLICIT_METHODS", {}))


def _solver(method):
    if method in hn.METHODS:
        return hn.METHODS[method][0]()
    return _torch_stiff_methods()[method][0]()


def _compare(func, y0, t, method, params=(), sensitivity=None, close=CLOSE):
    ref = _grads(func, y0, t, "torch", method, params=params)
    got = _grads(func, y0, t, "julia", method, sensitivity=sensitivity, params=params)
    torch.testing.assert_close(got[0], ref[0], **close)  # solution
    torch.testing.assert_close(got[1], ref[1], **close)  # dL/dy0
    torch.testing.assert_close(got[2], ref[2], **close)  # dL/dt
    for g, r in zip(got[3], ref[3]):
        torch.testing.assert_close(g, r, **close)  # dL/dparams


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=torch.float64))

    def forward(self, t, y):
        return y @ self.A.T


def test_linear_system_matches_exact_solution_and_torch():
    func = Linear()
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    ys = hn.odeint(func, y0, t, method="tsit5", backend="julia", **TOL)
    exact = torch.stack([torch.linalg.matrix_exp(func.A.detach() * ti) @ y0 for ti in t])
    torch.testing.assert_close(ys.detach(), exact, rtol=1e-8, atol=1e-10)
    _compare(func, y0, t, "tsit5", params=(func.A,))


class VanDerPol(nn.Module):
    def __init__(self, mu=1.0):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(mu, dtype=torch.float64))

    def forward(self, t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x**2) * v - x], -1)


def test_van_der_pol():
    func = VanDerPol()
    _compare(
        func,
        torch.tensor([2.0, 0.0], dtype=torch.float64),
        torch.linspace(0, 3, 4, dtype=torch.float64),
        "dopri5",
        params=(func.mu,),
    )


def _mlp(time_input=True):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(2 + time_input, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 2)
    ).double()
    return MLPVectorField(net, time_input=time_input)


@pytest.mark.parametrize(
    "sensitivity",
    [
        hn.GaussAdjoint(),
        hn.InterpolatingAdjoint(),
        hn.InterpolatingAdjoint(checkpoints=4),
        hn.QuadratureAdjoint(),
        hn.BacksolveAdjoint(),
    ],
    ids=lambda s: repr(s),
)
def test_mlp_neural_ode_native_path_every_sensitivity(sensitivity):
    func = _mlp()
    y0 = torch.tensor([0.5, -0.3], dtype=torch.float64)
    _compare(
        func,
        y0,
        torch.linspace(0, 1, 3, dtype=torch.float64),
        "tsit5",
        params=tuple(func.parameters()),
        sensitivity=sensitivity,
    )


class Callback(nn.Module):
    """The same MLP without mlp_spec(): Julia calls back into torch."""

    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, t, y):
        return self.field(t, y)


def test_mlp_neural_ode_callback_path_batched_state():
    func = _mlp()
    wrapped = Callback(func)
    y0 = torch.randn(5, 2, dtype=torch.float64)
    _compare(wrapped, y0, torch.linspace(0, 1, 3, dtype=torch.float64), "dopri5", params=tuple(wrapped.parameters()))


def test_batched_state_native_path():
    func = _mlp(time_input=False)
    y0 = torch.randn(3, 4, 2, dtype=torch.float64)
    _compare(func, y0, torch.linspace(0, 0.8, 3, dtype=torch.float64), "dopri5", params=tuple(func.parameters()))


class Robertson(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor([0.04, 1e4, 3e7], dtype=torch.float64))

    def forward(self, t, y):
        y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
        k1, k2, k3 = self.k
        return torch.stack([-k1 * y1 + k2 * y2 * y3, k1 * y1 - k2 * y2 * y3 - k3 * y2**2, k3 * y2**2], -1)


@pytest.mark.slow  # the torch reference takes ~15 s at these tolerances
def test_robertson_stiff():
    names = [m for m in ("rodas5p", "kencarp4", "rosenbrock23") if m in _torch_stiff_methods()]
    if not names:
        pytest.skip("the torch backend has no adaptive stiff method yet")
    func = Robertson()
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 0.4, 4.0, 40.0], dtype=torch.float64)
    _compare(func, y0, t, names[0], params=(func.k,), close=dict(rtol=1e-4, atol=1e-9))
