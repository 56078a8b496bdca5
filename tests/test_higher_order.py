"""Second derivatives through every gradient path: correct where supported, a clear error elsewhere.

The problem is dy/dt = A y on [0, 1] with y(1) = expm(A) y0 in closed form, and the loss
sum(y(1)^3) / 3 + y(1)[0] y(1)[1], whose Hessian in theta = (vec A, y0) has a part from the loss and a
part from the solve. The exact Hessian is ``torch.func.hessian`` of the loss on
``torch.linalg.matrix_exp``. The table these tests pin is in docs/gradients.md ("Higher-order
derivatives"), made by benchmarks/higher_order.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import forward_ad

import hybrid_node as hn

F64 = torch.float64
THETA = torch.tensor([-0.3, 0.8, -0.6, -0.2, 1.0, 0.5], dtype=F64)
#: made outside the transforms: a tensor made inside torch.func.hessian is wrapped by its forward level
TIMES = torch.tensor([0.0, 1.0], dtype=F64)
#: the solves below run at rtol = 1e-8 (rk4 at h = 0.02: global error ~h^4 = 2e-7), so y(1) and its
#: derivatives of the discrete solution are within ~1e-7 relative of the exact ones (measured 1e-8 and
#: below); 1e-5 leaves a margin of 100 while a dropped part of the Hessian is O(1) off
RTOL = 1e-5


def _loss_of(y: torch.Tensor) -> torch.Tensor:
    return (y**3).sum() / 3 + y[..., 0].sum() * y[..., 1].sum()


def _exact(theta: torch.Tensor) -> torch.Tensor:
    return _loss_of(torch.linalg.matrix_exp(theta[:4].reshape(2, 2)) @ theta[4:])


def _odeint(method: str):
    options = {"step_size": 0.02} if method == "rk4" else None

    def loss(theta):
        a = theta[:4].reshape(2, 2)
        ys = hn.odeint(lambda t, y: y @ a.T, theta[4:], TIMES, rtol=1e-8, atol=1e-10, method=method, options=options)
        return _loss_of(ys[-1])

    return loss


def _solve(sensitivity, solver=None, controller=None):
    def loss(theta):
        a = theta[:4].reshape(2, 2)
        sol = hn.solve(
            lambda t, y: y @ a.T,
            theta[4:],
            TIMES,
            solver=solver or hn.Tsit5(),
            controller=controller or hn.PIDController(rtol=1e-8, atol=1e-10),
            sensitivity=sensitivity,
            adjoint_params=(a,),
        )
        return _loss_of(sol.ys[-1])

    return loss


def _reverse_over_reverse(loss, theta: torch.Tensor) -> torch.Tensor:
    """The Hessian by a gradient with create_graph=True and one more backward pass per row."""
    x = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(x), x, create_graph=True)
    return torch.stack([torch.autograd.grad(g[i], x, retain_graph=True)[0] for i in range(len(x))])


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    rel = float((got.detach() - want).norm() / want.norm())
    assert rel < RTOL, rel


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4", "rosenbrock23"])
def test_double_backward_through_odeint_is_the_hessian_of_the_matrix_exponential(method):
    _close(_reverse_over_reverse(_odeint(method), THETA), torch.func.hessian(_exact)(THETA))


def test_forward_over_reverse_through_odeint_is_the_hessian_vector_product():
    v = torch.linspace(-1.0, 1.0, 6, dtype=F64)
    with forward_ad.dual_level():
        x = forward_ad.make_dual(THETA.clone(), v).requires_grad_(True)
        (g,) = torch.autograd.grad(_odeint("dopri5")(x), x, create_graph=True)
        hv = forward_ad.unpack_dual(g).tangent
    _close(hv, torch.func.hessian(_exact)(THETA) @ v)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_torch_func_hessian_and_jacrev_of_jacrev_through_odeint(method):
    want = torch.func.hessian(_exact)(THETA)
    _close(torch.func.hessian(_odeint(method))(THETA), want)
    _close(torch.func.jacrev(torch.func.jacrev(_odeint(method)))(THETA), want)


def test_a_time_tensor_made_inside_torch_func_hessian_is_refused_with_the_fix():
    def loss(theta):
        a, t = theta[:4].reshape(2, 2), torch.tensor([0.0, 1.0], dtype=F64)
        return _loss_of(hn.odeint(lambda t, y: y @ a.T, theta[4:], t)[-1])

    with pytest.raises(ValueError, match="pass t from outside the transforms"):
        torch.func.hessian(loss)(THETA)


def test_an_implicit_method_inside_torch_func_is_refused_and_differentiates_twice_outside():
    with pytest.raises(ValueError, match="inside torch.func transforms"):
        torch.func.hessian(_odeint("rosenbrock23"))(THETA)


#: the gradient methods whose backward pass runs without a graph, with a solver each takes
FIRST_ORDER = {
    "DirectBackprop(checkpoints=k)": (hn.DirectBackprop(checkpoints=2), None, None),
    "BacksolveAdjoint": (hn.BacksolveAdjoint(), None, None),
    "InterpolatingAdjoint": (hn.InterpolatingAdjoint(checkpoints=2), None, None),
    "ReversibleAdjoint": (hn.ReversibleAdjoint(), hn.Reversible(hn.Tsit5()), hn.ConstantStepSize(step_size=0.05)),
}


@pytest.mark.parametrize("name", list(FIRST_ORDER))
def test_first_order_methods_refuse_every_second_derivative_and_forward_mode(name):
    loss = _solve(*FIRST_ORDER[name])
    # the first derivative is right: the refusals below are about differentiating it again
    x = THETA.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(x), x)
    _close(g, torch.func.grad(_exact)(THETA))
    with pytest.raises(RuntimeError, match=rf"{name.split('(')[0]}.*first derivatives only.*hn.DirectBackprop"):
        _reverse_over_reverse(loss, THETA)
    with pytest.raises(ValueError, match="gradients come from direct backpropagation"):
        torch.func.hessian(loss)(THETA)
    with pytest.raises(ValueError, match="cannot pass through"), forward_ad.dual_level():
        loss(forward_ad.make_dual(THETA, torch.ones_like(THETA)))


# --- event times: t_e = log(c / y0) / a for dy/dt = a y from y0 < c, the event y = c ---------------

C = 2.0
EVENT_THETA = torch.tensor([0.7, 0.5], dtype=F64)  # (a, y0)


def _exact_event_time(theta: torch.Tensor) -> torch.Tensor:
    return torch.log(C / theta[1]) / theta[0]


def _terminal(theta: torch.Tensor) -> torch.Tensor:
    a = theta[0]
    t_e, _ = hn.odeint_event(
        lambda t, y: a * y, theta[1:], TIMES[0], event_fn=lambda t, y: y[0] - C, rtol=1e-10, atol=1e-12
    )
    return t_e


def _per_sample(theta: torch.Tensor) -> torch.Tensor:
    a = theta[0]
    t_e, _ = hn.odeint_event(
        lambda t, y: a * y,
        theta[1:][None],
        TIMES[0],
        event_fn=lambda t, y: y[:, 0] - C,
        per_sample=True,
        rtol=1e-10,
        atol=1e-12,
    )
    return t_e.sum()


def _recorded(theta: torch.Tensor) -> torch.Tensor:
    a = theta[0]
    event = hn.Event(lambda t, y: y - C, on_event=lambda t, y: 0.5 * y)
    t = torch.tensor([0.0, 2.5], dtype=F64)  # one crossing (t_e = 1.98), none after the halving
    sol = hn.solve(lambda t, y: a * y, theta[1:], t, event=event, controller=hn.PIDController(rtol=1e-10, atol=1e-12))
    return sol.events[0].t


@pytest.mark.parametrize("event_time", [_terminal, _per_sample, _recorded])
def test_event_times_have_their_first_derivative_and_refuse_a_second(event_time):
    # the event time's rule held its slope constant: the Hessian of t_e^2 came out (-6.2, -6.2; -6.2, 16.3)
    # against the exact (48.0, 32.3; 32.3, 39.0), silently
    x = EVENT_THETA.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(event_time(x) ** 2, x, create_graph=True)
    # root finding to ~1e-12 at rtol = 1e-10: the first derivative to ~1e-9 relative
    _close(g, torch.func.grad(lambda th: _exact_event_time(th) ** 2)(EVENT_THETA))
    with pytest.raises(RuntimeError, match="event time's derivative .* is first-order only"):
        torch.autograd.grad(g.sum(), x)


def test_forward_mode_through_compile_true_carries_the_tangents():
    # the whole-solve graph (and the per-step graphs) dropped dual tensors' tangents: jvp read 0
    # (the per-step graphs raised torch's NotImplementedError under forward-over-reverse)
    def loss(theta):
        a = theta[:4].reshape(2, 2)
        ys = hn.odeint(
            lambda t, y: y @ a.T, theta[4:], TIMES, rtol=1e-8, atol=1e-10, method="dopri5", options={"compile": True}
        )
        return _loss_of(ys[-1])

    v = torch.linspace(-1.0, 1.0, 6, dtype=F64)
    with forward_ad.dual_level():
        jvp = forward_ad.unpack_dual(loss(forward_ad.make_dual(THETA, v))).tangent
        x = forward_ad.make_dual(THETA.clone(), v).requires_grad_(True)
        (g,) = torch.autograd.grad(loss(x), x, create_graph=True)
        hv = forward_ad.unpack_dual(g).tangent
    assert jvp is not None and hv is not None
    _close(jvp, torch.func.grad(_exact)(THETA) @ v)
    _close(hv, torch.func.hessian(_exact)(THETA) @ v)


def test_the_scipy_adjoint_refuses_a_second_derivative_and_names_a_torch_method():
    # hn.odeint with scipy_solver computes no gradient at all: the fix must name a torch method
    def loss(theta):
        a = theta[:4].reshape(2, 2)
        ys = hn.odeint_adjoint(
            lambda t, y: y @ a.T, theta[4:], TIMES, method="scipy_solver", rtol=1e-8, atol=1e-10, adjoint_params=(a,)
        )
        return _loss_of(ys[-1])

    with pytest.raises(RuntimeError, match="first derivatives only.*torch method such as dopri5"):
        _reverse_over_reverse(loss, THETA)


class _SineSDE(torch.nn.Module):
    """dy = a sin(y) dt + 0.3 cos(y) dW (Ito, diagonal): a nonlinear drift with the parameter a."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, a):
        super().__init__()
        self.a = a

    def f(self, t, y):
        return self.a * torch.sin(y)

    def g(self, t, y):
        return 0.3 * torch.cos(y)


@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_sdeint_differentiates_twice_by_direct_backprop(method):
    y0 = torch.tensor([[0.4]], dtype=F64)

    def loss(a):
        bm = hn.BrownianInterval(0.0, 1.0, size=(1, 1), dtype=F64, entropy=3)  # the same path every call
        ys = hn.sdeint(_SineSDE(a), y0, torch.tensor([0.0, 1.0], dtype=F64), bm=bm, method=method, dt=0.05)
        return (ys[-1] ** 3).sum()

    def first(a: float) -> torch.Tensor:
        x = torch.tensor(a, dtype=F64, requires_grad=True)
        return torch.autograd.grad(loss(x), x)[0]

    x = torch.tensor(0.7, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(x), x, create_graph=True)
    (second,) = torch.autograd.grad(g, x)
    # central differences of the exact gradient of the same discrete solve: O(eps^2) = 1e-10 off, plus
    # rounding ~1e-16 / eps = 1e-11
    eps = 1e-5
    fd = (first(0.7 + eps) - first(0.7 - eps)) / (2 * eps)
    torch.testing.assert_close(second, fd, rtol=1e-7, atol=0.0)


class _Linear(torch.nn.Module):
    """dy/dt = A y with A a parameter (the parameter path of a second derivative)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = torch.nn.Parameter(a.clone())

    def forward(self, t, y):
        return y @ self.a.T


#: one model for the compiled solves below, so that its step graphs compile once
_COMPILED_FIELD = _Linear(THETA[:4].reshape(2, 2))


def _compiled_loss(y0: torch.Tensor) -> torch.Tensor:
    ys = hn.odeint(_COMPILED_FIELD, y0, TIMES, rtol=1e-8, atol=1e-10, method="dopri5", options={"compile": True})
    return _loss_of(ys[-1])


@pytest.mark.parametrize("path", ["y0", "parameters"])
def test_compile_true_refuses_create_graph_with_the_fix(path):
    # torch's "torch.compile with aot_autograd does not currently support double backward" came from its
    # engine in the second pass, naming neither compile=True nor what to do; now the first pass refuses
    y0 = THETA[4:].clone().requires_grad_(True)
    wrt = y0 if path == "y0" else _COMPILED_FIELD.a
    with pytest.raises(RuntimeError, match=r"options=\{'compile': True\} gives first-order gradients only.*Drop"):
        torch.autograd.grad(_compiled_loss(y0), wrt, create_graph=True)


def test_compile_true_first_order_gradients_are_unchanged():
    # without create_graph the gradients pass the check untouched: they equal the exact ones (rtol = 1e-8
    # solves: 1e-5 relative, as above)
    y0 = THETA[4:].clone().requires_grad_(True)
    g_y0, g_a = torch.autograd.grad(_compiled_loss(y0), (y0, _COMPILED_FIELD.a))
    exact = torch.func.grad(_exact)(THETA)
    _close(g_a.reshape(-1), exact[:4])
    _close(g_y0, exact[4:])


def test_the_check_finds_compiled_nodes_only():
    # an eager graph (e.g. a compiled attempt that fell back to eager steps) keeps its double backward
    from hybrid_node._double_backward import reaches_compiled

    x = torch.ones(3, requires_grad=True)
    eager = (x.sin() * 2).sum()
    compiled = torch.compile(lambda v: (v.sin() * 2).sum(), backend="aot_eager")(x)
    assert not reaches_compiled([eager.grad_fn])
    assert reaches_compiled([(compiled + eager).grad_fn])
