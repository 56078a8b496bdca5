"""Forward-mode derivatives through solves: torch.autograd.forward_ad dual tensors,
torch.autograd.functional.jvp (a double backward) and what is refused with a named fix.

Convention checked here: a forward-mode derivative is that of the accepted steps with the step sizes
held constant, the same discrete map torch.autograd differentiates in reverse mode, so a jvp equals
the reverse-mode Jacobian contracted with the tangent to rounding (1e-10 in float64 below, well above
the ~1e-15 seen). References are that Jacobian and, for y' = A y, the matrix exponential.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import hybrid_node as hn


class _Linear(torch.nn.Module):
    """dy/dt = A y with A a parameter (so the solve also has a tensor that requires grad)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64))

    def forward(self, t, y):
        return y @ self.a.T


class _Ou(torch.nn.Module):
    """An Ornstein-Uhlenbeck SDE dy = a y dt + 0.3 dW with a parameter a."""

    noise_type = "diagonal"

    def __init__(self, sde_type):
        super().__init__()
        self.sde_type = sde_type
        self.a = torch.nn.Parameter(torch.tensor(-0.7, dtype=torch.float64))

    def f(self, t, y):
        return self.a * y

    def g(self, t, y):
        return 0.3 * torch.ones_like(y)


def _tangent(fn, x, v):
    """The forward-mode derivative of fn at x along v by a torch.autograd.forward_ad dual tensor."""
    with fwAD.dual_level():
        return fwAD.unpack_dual(fn(fwAD.make_dual(x, v))).tangent


@pytest.mark.parametrize(
    ("method", "sde_type"), [("euler", "ito"), ("milstein", "ito"), ("reversible_heun", "stratonovich")]
)
def test_sdeint_adjoint_refuses_second_and_forward_mode_derivatives(method, sde_type):
    # torch.autograd.functional.jvp differentiates the backward pass again (create_graph=True); the
    # stochastic adjoint's backward SDE records no graph of the cotangents, so it returned a jvp off
    # by 0.5 (of ~1) without an error; forward_ad failed in torch ("You must implement the jvp function")
    sde = _Ou(sde_type)
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    v = torch.tensor([[0.2, -1.0]], dtype=torch.float64)
    ts = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)

    def solve(fn, y):
        bm = hn.BrownianInterval(0.0, 1.0, size=(1, 2), dtype=torch.float64, entropy=3)
        return fn(sde, y, ts, method=method, dt=0.01, bm=bm)[-1]

    # direct backpropagation supports both, and they agree with the reverse-mode Jacobian
    jac = torch.autograd.functional.jacobian(lambda y: solve(hn.sdeint, y), y0).reshape(2, 2)
    _, jvp = torch.autograd.functional.jvp(lambda y: solve(hn.sdeint, y), y0, v)
    torch.testing.assert_close(jvp.reshape(2), jac @ v.reshape(2), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_tangent(lambda y: solve(hn.sdeint, y), y0, v).reshape(2), jac @ v.reshape(2))
    with pytest.raises(RuntimeError, match="first derivatives only.*hn.sdeint"):
        torch.autograd.functional.jvp(lambda y: solve(hn.sdeint_adjoint, y), y0, v)
    with pytest.raises(ValueError, match="no forward-mode derivative.*hn.sdeint"):
        _tangent(lambda y: solve(hn.sdeint_adjoint, y), y0, v)


T = torch.linspace(0.0, 2.0, 4, dtype=torch.float64)
W = torch.tensor([[0.3, -1.2, 0.5], [0.8, 0.1, -0.6], [-0.4, 0.9, 0.2]], dtype=torch.float64)
Y0 = torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64)
V = torch.tensor([0.3, 0.1, -0.8], dtype=torch.float64)


def _nonlinear(t, y):
    return torch.tanh(y @ W.T) * torch.cos(t) - 0.3 * y


@pytest.mark.parametrize(
    ("method", "settings"),
    [
        ("dopri5", {}),
        ("tsit5", {}),
        ("bosh3", {}),
        ("rk4", {"options": {"step_size": 0.1}}),
        ("bdf", {}),
        ("kvaerno5", {}),
        ("rodas5p", {}),
    ],
)
def test_dual_tensors_through_odeint_equal_the_reverse_mode_jacobian(method, settings):
    # loose tolerances (rtol 1e-4) so that derivatives that moved the steps would differ from reverse mode
    # by ~1e-4 (central differences, which do move them, differ from it by 1e-5 to 8e-4 here)
    settings = {"rtol": 1e-4, "atol": 1e-6, **settings}

    def solve(y):
        return hn.odeint(_nonlinear, y, T, method=method, **settings)

    expected = torch.autograd.functional.jacobian(solve, Y0) @ V
    # Rosenbrock methods differentiate df/dt by a forward difference, rounded differently in each mode
    tol = 1e-10 if method != "rodas5p" else 1e-9
    torch.testing.assert_close(_tangent(solve, Y0, V), expected, rtol=0, atol=tol)
    torch.testing.assert_close(torch.autograd.functional.jvp(solve, Y0, V)[1], expected, rtol=0, atol=tol)
    if method in ("dopri5", "tsit5", "bosh3", "rk4"):  # torch.func runs the explicit methods (implicit: refused)
        torch.testing.assert_close(torch.func.jvp(solve, (Y0,), (V,))[1], expected, rtol=0, atol=tol)


def test_dual_tensors_through_a_symplectic_method_on_a_tuple_state():
    # harmonic oscillator: (q, p)(t) is a rotation of (q0, p0), so the tangent is the rotated tangent
    def solve(qp):
        q, p = hn.odeint(
            lambda t, s: (s[1], -s[0]), (qp[:1], qp[1:]), T, method="yoshida4", options={"step_size": 0.01}
        )
        return torch.cat([q[-1], p[-1]])

    qp0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    v = torch.tensor([0.2, -1.0], dtype=torch.float64)
    c, s = torch.cos(T[-1]), torch.sin(T[-1])
    rotation = torch.stack([torch.stack([c, s]), torch.stack([-s, c])])
    tangent = _tangent(solve, qp0, v)
    torch.testing.assert_close(tangent, torch.autograd.functional.jacobian(solve, qp0) @ v, rtol=0, atol=1e-12)
    torch.testing.assert_close(tangent, rotation @ v, rtol=0, atol=1e-8)  # 4th order at h = 0.01


def test_a_dual_parameter_gives_the_derivative_of_the_matrix_exponential():
    # d/dA [expm(A t) y0] along D, by central differences of torch.linalg.matrix_exp (error ~eps^2 |A|^3 ~ 1e-11)
    a = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)
    d = torch.tensor([[0.1, 0.0], [0.3, -0.2]], dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.3], dtype=torch.float64)
    with fwAD.dual_level():
        dual = fwAD.make_dual(a, d)
        out = hn.odeint(lambda t, y: y @ dual.T, y0, T, rtol=1e-10, atol=1e-12)[-1]
        tangent = fwAD.unpack_dual(out).tangent
    eps = 1e-6
    fd = (torch.linalg.matrix_exp((a + eps * d) * T[-1]) - torch.linalg.matrix_exp((a - eps * d) * T[-1])) @ y0
    torch.testing.assert_close(tangent, fd / (2 * eps), rtol=0, atol=1e-8)  # the solver's rtol 1e-10 over t = 2


def test_forward_mode_that_a_solve_would_drop_is_refused_with_the_fix():
    field = _Linear()
    y0 = torch.tensor([1.0, 0.3], dtype=torch.float64)
    v = torch.tensor([0.2, -0.7], dtype=torch.float64)
    # a tangent on t came back as no tangent at all (dy/dt silently zero); direct backpropagation carries
    # it now (tests/test_forward_mode_times.py), an adjoint cannot
    with pytest.raises(ValueError, match="t is a forward-mode dual tensor.*reverse mode"):
        _tangent(lambda t: hn.odeint_adjoint(field, y0, t), T, torch.ones_like(T))
    # the adjoints: a tangent on y0 failed inside torch ("You must implement the jvp function"), one on a
    # parameter or on a tensor the field closes over was dropped
    with pytest.raises(ValueError, match="BacksolveAdjoint.*hn.odeint"):
        _tangent(lambda y: hn.odeint_adjoint(field, y, T), y0, v)
    with pytest.raises(ValueError, match="InterpolatingAdjoint"):
        _tangent(lambda y: hn.solve(field, y, T, sensitivity=hn.InterpolatingAdjoint()).ys, y0, v)
    with pytest.raises(ValueError, match="ReversibleAdjoint"):
        _tangent(lambda y: hn.odeint_adjoint(field, y, T, adjoint_options={"reversible": True}), y0, v)
    with pytest.raises(ValueError, match="checkpoints"):
        _tangent(lambda y: hn.solve(field, y, T, sensitivity=hn.DirectBackprop(checkpoints=2)).ys, y0, v)
    a = field.a.detach()
    with pytest.raises(ValueError, match="BacksolveAdjoint"):
        _tangent(lambda m: hn.odeint_adjoint(lambda t, y: y @ m.T, y0, T, adjoint_params=(m,)), a, a)
    with pytest.raises(ValueError, match="BacksolveAdjoint"):  # closed over, not in adjoint_params
        _tangent(lambda m: hn.odeint_adjoint(lambda t, y: y @ m.T, y0, T, adjoint_params=()), a, a)
    with pytest.raises(ValueError, match="scipy"):  # scipy returned no tangent
        _tangent(lambda y: hn.odeint(field, y, T, method="scipy_solver", options={"solver": "RK45"}), y0, v)
    # no tangent reaches the adjoint: it runs as usual inside an open dual level
    with fwAD.dual_level():
        torch.testing.assert_close(hn.odeint_adjoint(field, y0, T), hn.odeint(field, y0, T), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", ["rodas5p", "rosenbrock23"])
def test_dual_state_through_rosenbrock_steps_with_a_parameter_that_requires_grad(method):
    # with a parameter that requires grad, the stage solves keep the Jacobian's graph through a custom
    # linear solve, which had no forward-mode rule: torch's "You must implement the jvp function"
    field = _Linear()
    y0 = torch.tensor([1.0, 0.3], dtype=torch.float64)
    v = torch.tensor([0.2, -0.7], dtype=torch.float64)

    def solve(y):
        return hn.odeint(lambda t, z: torch.tanh(field(t, z)) - 0.1 * z**3, y, T, method=method, rtol=1e-5, atol=1e-7)

    expected = torch.autograd.functional.jacobian(solve, y0) @ v
    # 1e-10: the forward difference of df/dt is rounded differently in the two modes (1e-11 seen)
    torch.testing.assert_close(_tangent(solve, y0, v), expected, rtol=0, atol=1e-10)


def test_sdeint_inside_torch_func_transforms():
    sde = _Ou("ito")
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    ts = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)

    def solve(y, fn=hn.sdeint):
        bm = hn.BrownianInterval(0.0, 1.0, size=(1, 2), dtype=torch.float64, entropy=3)
        return fn(sde, y, ts, method="euler", dt=0.05, bm=bm)[-1]

    expected = torch.autograd.functional.jacobian(solve, y0)
    torch.testing.assert_close(torch.func.jacrev(solve)(y0), expected, rtol=1e-12, atol=1e-14)
    # jacfwd maps its tangents with vmap: the Brownian sample is shared by all of them with randomness="same"
    torch.testing.assert_close(torch.func.jacfwd(solve, randomness="same")(y0), expected, rtol=1e-12, atol=1e-14)
    # these failed inside torch ("must override the setup_context staticmethod", "data-dependent control flow")
    with pytest.raises(ValueError, match="sdeint_adjoint cannot run inside torch.func.*hn.sdeint"):
        torch.func.jacrev(lambda y: solve(y, hn.sdeint_adjoint))(y0)
    with pytest.raises(ValueError, match="vmap over y0.*first dimension"):
        torch.func.vmap(solve, randomness="same")(y0.unsqueeze(0))


@pytest.mark.parametrize(
    "sensitivity",
    [hn.DirectBackprop(), hn.BacksolveAdjoint(), hn.InterpolatingAdjoint()],
    ids=lambda s: type(s).__name__,
)
@pytest.mark.parametrize("method", ["dopri5", "rk4", "rodas5p"])
def test_time_gradients_are_the_field_and_the_transported_start_field(sensitivity, method):
    # y' = A y from t0: dy(t1)/dt1 = A y(t1) = f(t1, y(t1)), dy(t1)/dt0 = -expm(A (t1 - t0)) A y0 = -Phi f(t0, y0)
    field = _Linear()
    a = field.a.detach()
    y0 = torch.tensor([1.0, 0.3], dtype=torch.float64)
    w = torch.tensor([1.0, 2.0], dtype=torch.float64)
    t = torch.tensor([0.2, 1.0], dtype=torch.float64, requires_grad=True)
    solver = {"dopri5": hn.Dopri5(), "rk4": hn.RK4(), "rodas5p": hn.Rodas5P()}[method]
    controller = hn.ConstantStepSize(step_size=0.01) if method == "rk4" else hn.PIDController(rtol=1e-9, atol=1e-11)
    ys = hn.solve(field, y0, t, solver=solver, controller=controller, sensitivity=sensitivity).ys
    (grad_t,) = torch.autograd.grad(ys[-1] @ w, t)
    y1 = torch.linalg.matrix_exp(a * 0.8) @ y0
    expected = torch.stack([-(a @ y1) @ w, (a @ y1) @ w])  # Phi A y0 = A Phi y0 for a linear field
    # rk4 at h = 0.01 has a global error ~1e-9; the adaptive ones their tolerance ~1e-9
    torch.testing.assert_close(grad_t, expected, rtol=0, atol=1e-7)


class _SineNoise(torch.nn.Module):
    """dy = a y dt + 0.3 sin(y) dW: a diffusion that depends on the state, so Milstein's correction is not zero."""

    sde_type = "ito"

    def __init__(self, noise_type):
        super().__init__()
        self.noise_type = noise_type
        self.a = torch.nn.Parameter(torch.tensor(-0.7, dtype=torch.float64))

    def f(self, t, y):
        return self.a * y

    def g(self, t, y):
        b = 0.3 * torch.sin(y)
        return b if self.noise_type == "diagonal" else b.unsqueeze(-1)


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar"])
def test_milstein_under_torch_func_jvp_and_jacfwd(noise_type):
    # Milstein's (db/dy) b was taken with requires_grad_, which torch.func forbids: torch.func.jvp and
    # jacfwd failed inside torch; the reference is the eager Jacobian (same steps, same Brownian sample)
    sde = _SineNoise(noise_type)
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    v = torch.tensor([[0.2, -1.0]], dtype=torch.float64)
    ts = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)

    def solve(y):
        size = (1, 2) if noise_type == "diagonal" else (1, 1)
        bm = hn.BrownianInterval(0.0, 1.0, size=size, dtype=torch.float64, entropy=3)
        return hn.sdeint(sde, y, ts, method="milstein", dt=0.05, bm=bm)[-1]

    jac = torch.autograd.functional.jacobian(solve, y0)
    expected = (jac.reshape(2, 2) @ v.reshape(2)).reshape(1, 2)
    torch.testing.assert_close(torch.func.jvp(solve, (y0,), (v,))[1], expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.func.jacfwd(solve, randomness="same")(y0), jac, rtol=1e-12, atol=1e-14)


def test_forward_mode_through_event_solves_and_time_gradients_is_refused():
    field = _Linear()
    y0 = torch.tensor([1.0, 0.3], dtype=torch.float64)
    v = torch.tensor([0.2, -0.7], dtype=torch.float64)
    # the event time came back without a tangent (dt_e/dy0 silently 0): its rule is reverse-mode only
    with pytest.raises(ValueError, match="event solve"):
        _tangent(
            lambda y: hn.odeint_event(
                field, y, torch.tensor(0.0, dtype=torch.float64), event_fn=lambda t, z: z[0] - 0.1
            )[0],
            y0,
            v,
        )
    # a t that requires grad goes through a custom Function with no forward rule (torch's "implement the jvp")
    t = T.clone().requires_grad_()
    with pytest.raises(ValueError, match="t requires grad.*t.detach"):
        _tangent(lambda y: hn.odeint(field, y, t), y0, v)
