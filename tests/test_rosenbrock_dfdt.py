"""df/dt of the Rosenbrock methods: exact by automatic differentiation, with the forward difference as fallback.

The reference values are analytic: df/dt of closed-form fields, and the solution of
y' = -y + sin(t), y(t) = (y0 + 1/2) e^-t + (sin t - cos t) / 2.
"""

import math

import numpy as np
import pytest
import torch
from torch.autograd import forward_ad as fwAD

import hybrid_node as hn
from hybrid_node._term import OpenInterval, Term
from hybrid_node.solvers import linalg
from hybrid_node.solvers.implicit import IMPLICIT_METHODS

torch.set_num_threads(1)
F64 = torch.float64
W = 1.3
EPS = torch.finfo(F64).eps


def _field(t, y):
    return -y + torch.sin(W * t) * torch.exp(0.5 * t) * y**2


def _field_dt(t, y):
    t = torch.as_tensor(t, dtype=F64)
    return (W * torch.cos(W * t) + 0.5 * torch.sin(W * t)) * torch.exp(0.5 * t) * y**2


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("t", [0.0, 0.37, 5.0, 123.4])
def test_time_derivative_is_exact(t):
    y = torch.tensor([[0.4, -0.7], [1.1, 0.2]], dtype=F64)
    term = Term(_field, y, F64)
    f0 = term(t, y)
    exact, _ = linalg.time_derivative(term, t, y, f0)
    # one evaluation in float64: the analytic formula's own rounding, a few eps
    assert _rel(exact, _field_dt(t, y)) < 10 * EPS
    # the forward difference it replaces: sqrt(eps) truncation and rounding (1.7e-9 to 6.7e-7 here)
    assert _rel(linalg._difference_time_derivative(term, t, y, f0), _field_dt(t, y)) > 1e-10


def test_time_derivative_keeps_its_graph_in_the_parameters():
    # direct backpropagation through a Rosenbrock step differentiates df/dt: d/dw of w cos(w t) y
    w = torch.tensor(1.3, dtype=F64, requires_grad=True)
    y = torch.tensor([1.0, 2.0], dtype=F64)
    term = Term(lambda t, z: torch.sin(w * t) * z, y, F64)
    t = 0.5
    with torch.no_grad():  # inference: exact too, and no graph
        plain, _ = linalg.time_derivative(term, t, y, term(t, y))
    assert not plain.requires_grad
    got, _ = linalg.time_derivative(term, t, y, term(t, y))
    torch.testing.assert_close(plain, got.detach(), rtol=0, atol=0)
    (dw,) = torch.autograd.grad(got.sum(), w)
    expected = (math.cos(1.3 * t) - t * 1.3 * math.sin(1.3 * t)) * 3.0
    assert abs(float(dw) - expected) < 10 * EPS * abs(expected)


def test_time_derivative_backwards_in_time():
    # solver time s = -t and field -f(-s, y): d/ds of it is f_t(-s, y)
    y = torch.tensor([0.4, -0.7], dtype=F64)
    term = Term(_field, y, F64, reverse=True)
    got, _ = linalg.time_derivative(term, -0.37, y, term(-0.37, y))
    assert _rel(got, _field_dt(0.37, y)) < 10 * EPS


def test_time_derivative_keeps_one_sided_limits():
    # the field jumps at t = 1: at exactly 1 it takes the left branch, an open step from 1 the right one
    def jumpy(t, y):
        return torch.where(t <= 1.0, torch.sin(t), 3.0 * torch.cos(t)) * y

    y = torch.tensor([2.0], dtype=F64)
    term = Term(jumpy, y, F64)
    left, _ = linalg.time_derivative(term, 1.0, y, term(1.0, y))
    assert _rel(left, math.cos(1.0) * y) < 10 * EPS
    step = OpenInterval(term, 1.0, 2.0)
    right, _ = linalg.time_derivative(step, 1.0, y, step(1.0, y))
    assert _rel(right, -3.0 * math.sin(1.0) * y) < 10 * EPS


def test_time_derivative_under_an_open_forward_ad_level():
    # a dual state: the two-reverse-pass route gives df/dt and its tangent d(df/dt)/dy . v exactly
    y = torch.tensor([0.4, -0.7], dtype=F64)
    v = torch.tensor([1.0, -2.0], dtype=F64)
    term = Term(_field, y, F64)
    t = 0.8
    with fwAD.dual_level():
        yd = fwAD.make_dual(y, v)
        f_t, route = linalg.time_derivative(term, t, yd, term(t, yd))
        primal, tangent = fwAD.unpack_dual(f_t)
    assert route == linalg.TimeRoute(follows=True)
    assert _rel(primal, _field_dt(t, y)) < 10 * EPS
    assert _rel(tangent, _field_dt(t, torch.ones_like(y)) * 2 * y * v) < 10 * EPS


def _host_time_fields():
    def numpy_time(t, y):  # torch.func cannot run it: "Cannot access data pointer"
        return -y + torch.as_tensor(np.sin(W * t.detach().numpy())) * y**2

    def item_time(t, y):  # runs under the transform, but no derivative reaches the output
        return -y + math.sin(W * t.item()) * y**2

    return {"numpy": numpy_time, "item": item_time}


@pytest.mark.parametrize("kind", ["numpy", "item"])
def test_fields_the_transforms_cannot_follow_fall_back_to_the_difference(kind):
    field = _host_time_fields()[kind]
    y = torch.tensor([0.4, -0.7], dtype=F64)
    term = Term(field, y, F64)
    t = 0.6
    expected = W * math.cos(W * t) * y**2
    got, route = linalg.time_derivative(term, t, y, term(t, y))
    # the difference's accuracy (sqrt(eps) truncation and rounding), not the silent zero of the jvp
    assert _rel(got, expected) < 1e-6
    assert route == linalg.TimeRoute(unreachable=True)  # handed on: the next steps do not try again
    before = term.nfe
    linalg.time_derivative(term, t, y, term(t, y), route)
    assert term.nfe == before + 2  # f0 and the difference's one evaluation


def test_a_field_that_ignores_time_gets_an_exact_zero():
    y = torch.tensor([0.4, -0.7], dtype=F64)
    term = Term(lambda t, z: -(z**3), y, F64)
    assert torch.equal(linalg.time_derivative(term, 0.3, y, term(0.3, y))[0], torch.zeros_like(y))


# ---------------------------------------------------------------- Rosenbrock solutions


def _forced(t, y):
    return -y + torch.sin(t)


def _forced_solution(t, y0):
    t = torch.as_tensor(t, dtype=F64)
    return (y0 + 0.5) * torch.exp(-t) + 0.5 * (torch.sin(t) - torch.cos(t))


# method -> (order, step counts on [0, 2])
ORDERS = {
    "rodas5p": (5, (4, 8, 16)),
    "rodas4": (4, (4, 8, 16)),
    "ros3p": (3, (8, 16, 32)),
    "rosenbrock23": (2, (8, 16, 32)),
}


def _fixed(name):
    return IMPLICIT_METHODS[name][0](adaptive=False)


@pytest.mark.parametrize("name", sorted(ORDERS))
@pytest.mark.parametrize("backwards", [False, True])
def test_rosenbrock_order_on_a_forced_linear_problem(name, backwards):
    """Fixed steps on y' = -y + sin(t) against the analytic solution: the log-log slope is the order.
    Backwards in time a wrong sign of df/dt would leave an O(h^2) local error, slope <= 1."""
    order, counts = ORDERS[name]
    y0 = torch.tensor([[1.0], [-0.4]], dtype=F64)
    t0, t1 = (2.0, 0.0) if backwards else (0.0, 2.0)
    t = torch.tensor([t0, t1], dtype=F64)
    # backwards, y' = -y + sin(t) from y(2): y(t) = c e^-t + (sin t - cos t) / 2 with c fitted to y(2)
    c = (y0 - 0.5 * (math.sin(t0) - math.cos(t0))) * math.exp(t0)
    exact = _forced_solution(t1, c - 0.5)
    errs = []
    for n in counts:
        ys = hn.solve(_forced, y0, t, solver=_fixed(name), controller=hn.ConstantStepSize(step_size=2.0 / n)).ys
        errs.append(float((ys[-1] - exact).abs().max()))
    slope = np.polyfit(np.log(2.0 / np.array(counts)), np.log(errs), 1)[0]
    assert slope > order - 0.35, (errs, slope)


def test_adaptive_rodas_tracks_the_analytic_solution():
    y0 = torch.tensor([[1.0], [-0.4]], dtype=F64)
    t = torch.linspace(0.0, 10.0, 6, dtype=F64)
    ys = hn.odeint(_forced, y0, t, method="rodas5p", rtol=1e-9, atol=1e-11)
    expected = torch.stack([_forced_solution(s, y0) for s in t])
    # rtol 1e-9 per step over ~10 time units of a contracting problem: 1e-8 leaves room for the global error
    torch.testing.assert_close(ys, expected, rtol=0, atol=1e-8)


def _end_state(a, name, jacobian="jacrev", shape=(2,)):
    def f(t, y):
        return -a * y + torch.sin(3 * t) * torch.tanh(y) + torch.cos(t)

    y0 = torch.linspace(0.5, -1.0, math.prod(shape), dtype=F64).reshape(shape)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    solver = IMPLICIT_METHODS[name][0](adaptive=False, jacobian=jacobian)
    return hn.solve(f, y0, t, solver=solver, controller=hn.ConstantStepSize(step_size=0.1)).ys[-1].sum()


@pytest.mark.parametrize(
    ("name", "jacobian", "shape"),
    [
        ("rodas5p", "jacrev", (2,)),
        ("rodas4", "jacrev", (2,)),
        ("rosenbrock23", "jacrev", (2,)),
        # the combined pass's other two routes: the double reverse pass of a batch, one more tangent
        ("rodas5p", "jacrev", (2, 1)),
        ("rodas5p", "jacfwd", (2,)),
    ],
)
def test_solution_is_smooth_in_a_parameter(name, jacobian, shape):
    """A central difference with step 1e-6 agrees with the autograd gradient to 1e-8.

    The fixed-step solution is a smooth function of ``a``: the difference's truncation error is
    h^2 |y'''| / 6 ~ 1e-13 and its rounding ~ 20 steps * eps * |y| / h ~ 1e-9. The forward
    difference of df/dt left rounding noise of ~1e-11..1e-13 in y that does not vary smoothly with
    ``a``; divided by h it gave disagreements of 5e-8 (rodas5p) to 5e-7 (rodas4) here.
    """
    a = torch.tensor(1.7, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(_end_state(a, name, jacobian, shape), a)
    h = 1e-6
    with torch.no_grad():
        central = (_end_state(a + h, name, jacobian, shape) - _end_state(a - h, name, jacobian, shape)) / (2 * h)
    assert abs(float(central - grad)) < 1e-8


def test_solution_dual_tangent_equals_reverse_mode_on_a_time_dependent_field():
    # df/dt's tangent under forward_ad comes from the same exact derivative as reverse mode's
    def solve(y):
        return hn.odeint(_field, y, torch.tensor([0.0, 1.5], dtype=F64), method="rodas5p", rtol=1e-6, atol=1e-8)[-1]

    y0 = torch.tensor([0.4, -0.7], dtype=F64)
    v = torch.tensor([0.3, 1.0], dtype=F64)
    expected = torch.autograd.functional.jacobian(solve, y0) @ v
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(solve(fwAD.make_dual(y0, v))).tangent
    # the same discrete map differentiated two ways: rounding only
    torch.testing.assert_close(tangent, expected, rtol=0, atol=1e-12)


# method -> field evaluations per fixed step besides f0's: the stages that evaluate f
STAGE_EVALS = {"rodas5p": 7, "rosenbrock23": 2}


def _forced_nfe(name, **options):
    y0 = torch.tensor([[1.0], [-0.4]], dtype=F64)
    solver = IMPLICIT_METHODS[name][0](adaptive=False, **options)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    return hn.solve(_forced, y0, t, solver=solver, controller=hn.ConstantStepSize(step_size=0.25)).stats.nfe


@pytest.mark.parametrize("name", ["rodas5p", "rosenbrock23"])
@pytest.mark.parametrize(
    ("jacobian", "batch_dims", "jac_evals"), [("jacrev", None, 1), ("jacrev", 0, 1), ("jacfwd", None, 2)]
)
def test_exact_derivative_rides_on_the_jacobian_pass(name, jacobian, batch_dims, jac_evals):
    # 8 states (the fixed-step loop builds none after the last step); each takes f0 with the Jacobian
    # (jacfwd evaluates once more, under its vmapped jvp) and, in the same pass, df/dt. Only the first
    # state takes df/dt apart (one more evaluation), to check that a derivative in t reaches the output.
    # The separate df/dt took one evaluation at every state: 8 more.
    nfe = _forced_nfe(name, jacobian=jacobian, batch_dims=batch_dims)
    assert nfe == 8 * (jac_evals + STAGE_EVALS[name]) + 1


@pytest.mark.parametrize("name", ["rodas5p", "rosenbrock23"])
def test_time_derivative_option_fd_takes_the_difference(name):
    # the difference's one evaluation at every state, never the passes
    assert _forced_nfe(name, time_derivative="fd") == 8 * (1 + STAGE_EVALS[name] + 1)
    y0 = torch.tensor([[1.0], [-0.4]], dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    ys = hn.odeint(_forced, y0, t, method=name, options={"time_derivative": "fd"}, rtol=1e-7, atol=1e-9)
    # the difference's sqrt(eps) error enters below the method's local error: the tolerance's accuracy
    torch.testing.assert_close(ys[-1], _forced_solution(2.0, y0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["rodas5p", "rosenbrock23"])
def test_time_derivative_option_refuses_a_typo(name):
    with pytest.raises(ValueError, match="time_derivative must be one of"):
        IMPLICIT_METHODS[name][0](time_derivative="forward")
    y0 = torch.tensor([1.0], dtype=F64)
    with pytest.raises(ValueError, match="time_derivative must be one of"):
        hn.odeint(_forced, y0, torch.tensor([0.0, 1.0], dtype=F64), method=name, options={"time_derivative": "ad"})


@pytest.mark.parametrize(
    ("shape", "jacobian", "batch_dims"),
    [
        ((2,), "jacrev", None),
        ((1, 2), "jacrev", None),
        ((3, 2), "jacrev", None),
        ((3, 2), "jacrev", 0),
        ((3, 2), "jacfwd", None),
        ((2, 2, 2), "jacfwd", 0),
    ],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_combined_pass_is_exact(shape, jacobian, batch_dims, reverse):
    y = torch.linspace(-0.7, 1.1, math.prod(shape), dtype=F64).reshape(shape)
    term = Term(_field, y, F64, reverse=reverse)
    settings = linalg.JacobianSettings(jacobian, batch_dims)
    s = -0.37 if reverse else 0.37  # solver time; the user time is 0.37 either way
    first = linalg.jacobian_and_time_derivative(term, s, y, settings)
    assert first[3] == linalg.TimeRoute(follows=True)
    before = term.nfe
    f0, jac, f_t, _ = linalg.jacobian_and_time_derivative(term, s, y, settings, route=first[3])
    assert term.nfe - before == (2 if jacobian == "jacfwd" else 1)  # no separate df/dt evaluation
    # the field is elementwise: its blocks are diagonal, -1 + 2 sin(1.3 t) e^(t/2) y
    sign = -1.0 if reverse else 1.0
    diag = sign * (-1.0 + 2.0 * math.sin(W * 0.37) * math.exp(0.185) * y.reshape(-1))
    expected_jac = jac.new_zeros(jac.shape)
    flat_jac = expected_jac.reshape(-1, jac.shape[-2], jac.shape[-1])
    for b, block in enumerate(diag.reshape(flat_jac.shape[0], -1)):
        flat_jac[b] = torch.diag(block)
    # one evaluation and its derivatives in float64: a few eps of the analytic formulas' rounding
    torch.testing.assert_close(jac, expected_jac, rtol=0, atol=10 * EPS)
    assert _rel(f_t, _field_dt(0.37, y)) < 10 * EPS  # d/ds f(-s) reversed is f_t: the sign cancels
    torch.testing.assert_close(f0, first[0], rtol=0, atol=0)
    torch.testing.assert_close(f_t, first[2], rtol=0, atol=4 * EPS)
