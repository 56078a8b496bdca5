"""Forward-mode tangents on the output times (torch.autograd.forward_ad dual ``t``) with direct backpropagation.

dy(t_i)/dt_i = f(t_i, y_i) for i > 0 and dy(t_i)/dt_0 = -Phi(t_i, t_0) f(t_0, y_0), with the output
y(t_0) = y0 left alone. References: the matrix exponential of a linear system, reverse mode on the
same solve (the Jacobian with respect to t contracted with the tangent), and central differences.
"""

import pytest
import torch
from torch.autograd import forward_ad as fwAD

import hybrid_node as hn

torch.set_num_threads(1)
F64 = torch.float64
A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=F64)
Y0 = torch.tensor([1.0, 0.3], dtype=F64)


def _linear(t, y):
    return y @ A.T


def _forced(t, y):
    return y @ A.T + torch.sin(2.0 * t) * torch.tensor([1.0, -0.5], dtype=F64)


def _tangent(fn, t, v):
    with fwAD.dual_level():
        out = fn(fwAD.make_dual(t, v))
        return fwAD.unpack_dual(out).tangent


SETTINGS = {
    "dopri5": {"method": "dopri5", "rtol": 1e-10, "atol": 1e-12},
    "tsit5": {"method": "tsit5", "rtol": 1e-10, "atol": 1e-12},
    "rk4": {"method": "rk4", "options": {"step_size": 0.005}},
    "rodas5p": {"method": "rodas5p", "rtol": 1e-10, "atol": 1e-12},
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("backwards", [False, True])
def test_time_tangent_of_a_linear_system_is_the_matrix_exponentials(name, backwards):
    t = torch.tensor([0.3, 0.9, 2.0], dtype=F64)
    if backwards:
        t = t.flip(0)
    v = torch.tensor([0.7, -1.0, 0.4], dtype=F64)
    got = _tangent(lambda s: hn.odeint(_linear, Y0, s, **SETTINGS[name]), t, v)
    # y(t_i) = expm(A (t_i - t_0)) y0: d/dt_i = A y(t_i), d/dt_0 = -expm(A (t_i - t_0)) A y0; y(t_0) = y0
    phi = torch.linalg.matrix_exp(A * (t - t[0])[:, None, None])
    ys = phi @ Y0
    expected = (ys @ A.T) * v[:, None] - (phi @ (A @ Y0)) * v[0]
    expected[0] = 0.0
    # the solver's error (rtol 1e-10; rk4 with h = 0.005: ~1e-9, its global error h^4 |A|^4 t) over t <= 2
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["dopri5", "rk4", "rodas5p"])
def test_time_tangent_equals_reverse_mode_and_central_differences(name):
    t = torch.tensor([0.2, 0.7, 1.5], dtype=F64)
    v = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    y0 = torch.tensor([[1.0, 0.5], [-0.2, 0.8]], dtype=F64)  # a batch: one tangent per sample

    def solve(s):
        return hn.odeint(_forced, y0, s, **SETTINGS[name])

    got = _tangent(solve, t, v)
    # reverse mode's time gradients (the same two rules): the Jacobian in t contracted with v, to rounding
    jac = torch.autograd.functional.jacobian(solve, t)
    torch.testing.assert_close(got, torch.einsum("i...k,k->i...", jac, v), rtol=0, atol=1e-12)
    if name == "rk4":
        return  # fixed steps: moving the times moves the last step of each interval, an O(h^4) change
    h = 1e-5
    with torch.no_grad():
        central = (solve(t + h * v) - solve(t - h * v)) / (2 * h)
    # central differences: truncation h^2 |y'''| ~ 1e-10, the solver's error (rtol 1e-10) over 2h ~ 1e-5 relative
    torch.testing.assert_close(got, central, rtol=0, atol=1e-5)


def test_time_tangent_together_with_a_state_tangent():
    # tangents on t and y0 at once add up: Phi dy0 + the time terms
    t = torch.tensor([0.0, 1.0], dtype=F64)
    v = torch.tensor([0.5, -0.25], dtype=F64)
    dy0 = torch.tensor([1.0, -2.0], dtype=F64)
    with fwAD.dual_level():
        out = hn.odeint(_linear, fwAD.make_dual(Y0, dy0), fwAD.make_dual(t, v), rtol=1e-10, atol=1e-12)
        got = fwAD.unpack_dual(out).tangent
    phi = torch.linalg.matrix_exp(A * 1.0)
    y1 = phi @ Y0
    expected_end = phi @ dy0 + (A @ y1) * v[1] - (phi @ (A @ Y0)) * v[0]
    torch.testing.assert_close(got[0], dy0, rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected_end, rtol=0, atol=1e-8)


def test_time_tangents_the_solve_cannot_carry_are_refused_with_the_fix():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    v = torch.ones_like(t)
    field = lambda s, y: y @ A.T  # noqa: E731 - a plain function: the adjoint takes adjoint_params
    with pytest.raises(ValueError, match="t is a forward-mode dual tensor.*BacksolveAdjoint.*DirectBackprop"):
        _tangent(lambda s: hn.odeint_adjoint(field, Y0, s, adjoint_params=()), t, v)
    with pytest.raises(ValueError, match="t is a forward-mode dual tensor.*event solve"):
        _tangent(lambda s: hn.odeint(field, Y0, s, event_fn=lambda tt, y: y[0] - 10.0), t, v)
    with pytest.raises(ValueError, match="t is a forward-mode dual tensor.*checkpoints"):
        _tangent(lambda s: hn.solve(field, Y0, s, sensitivity=hn.DirectBackprop(checkpoints=2)).ys, t, v)


# torch.func transforms: jvp and jacfwd in t take the forward_ad path above (the same rules, one copy)
def _reverse_jacobian_in_t(solve, t):
    """dy/dt by reverse mode outside the transforms (torch.func.jacrev in t is refused)."""
    return torch.autograd.functional.jacobian(solve, t)


@pytest.mark.parametrize("name", ["dopri5", "rk4"])
@pytest.mark.parametrize("backwards", [False, True])
def test_func_jvp_in_t_equals_reverse_mode_and_central_differences(name, backwards):
    t = torch.tensor([0.2, 0.7, 1.5], dtype=F64)
    v = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    if backwards:
        t, v = t.flip(0), v.flip(0)
    y0 = torch.tensor([[1.0, 0.5], [-0.2, 0.8]], dtype=F64)

    def solve(s):
        return hn.odeint(_forced, y0, s, **SETTINGS[name])

    values, got = torch.func.jvp(solve, (t,), (v,))
    # the transformed loop takes the host loop's steps with its own order of operations: rounding apart
    torch.testing.assert_close(values, solve(t), rtol=0, atol=1e-12)
    # the same discrete map differentiated in reverse mode: equal to rounding
    expected = torch.einsum("i...k,k->i...", _reverse_jacobian_in_t(solve, t), v)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # central differences of the flow, solved by dopri5 at rtol 1e-10 for both methods: rk4's outputs
    # between its grid points are interpolated, so differences of rk4 solves would measure the
    # interpolant's slope; rk4's tangent (f at its own states, h = 0.005) is the flow's to its global
    # error O(h^4) ~ 1e-9
    h = 1e-4
    with torch.no_grad():
        flow = lambda s: hn.odeint(_forced, y0, s, **SETTINGS["dopri5"])  # noqa: E731
        central = (flow(t + h * v) - flow(t - h * v)) / (2 * h)
    # truncation h^2 |v|^3 |y'''| / 6 ~ 1e-8 (|A| ~ 2, |v| <= 2); dopri5's steps move with t, so its
    # error (rtol 1e-10, ~1e-10 absolute here) enters divided by 2h: ~1e-6
    torch.testing.assert_close(got, central, rtol=0, atol=2e-6)


@pytest.mark.parametrize("name", ["dopri5", "rk4"])
def test_func_jacfwd_in_t_equals_reverse_mode_and_vmap_over_tangents(name):
    t = torch.tensor([1.5, 0.9, 0.1], dtype=F64)  # backwards in time

    def solve(s):
        return hn.odeint(_forced, Y0, s, **SETTINGS[name])

    expected = _reverse_jacobian_in_t(solve, t)
    torch.testing.assert_close(torch.func.jacfwd(solve)(t), expected, rtol=0, atol=1e-12)
    # vmap over the tangents: one jvp per row of a tangent matrix
    tangents = torch.tensor([[1.0, 0.0, 0.0], [0.5, -2.0, 0.25]], dtype=F64)
    got = torch.func.vmap(lambda u: torch.func.jvp(solve, (t,), (u,))[1])(tangents)
    torch.testing.assert_close(got, torch.einsum("i...k,bk->bi...", expected, tangents), rtol=0, atol=1e-12)


def test_func_jacrev_in_y0_of_a_jvp_in_t_is_the_matrix_exponentials():
    # the jvp's tangent A Phi y0 v_i - Phi A y0 v_0 (i > 0) is linear in y0: its Jacobian is A Phi v_i - Phi A v_0
    t = torch.tensor([0.3, 0.9, 2.0], dtype=F64)
    v = torch.tensor([0.7, -1.0, 0.4], dtype=F64)

    def tangent(y0):
        return torch.func.jvp(lambda s: hn.odeint(_linear, y0, s, **SETTINGS["dopri5"]), (t,), (v,))[1]

    phi = torch.linalg.matrix_exp(A * (t - t[0])[:, None, None])
    expected = A @ phi * v[:, None, None] - phi @ A * v[0]
    expected[0] = 0.0
    # the solver's error (rtol 1e-10) over t <= 2, as for the tangent itself
    torch.testing.assert_close(torch.func.jacrev(tangent)(Y0), expected, rtol=0, atol=1e-8)


def test_func_derivatives_in_t_that_are_not_carried_are_refused_with_the_fix():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    v = torch.ones_like(t)

    def solve(s):
        return hn.odeint(_linear, Y0, s)

    # reverse mode inside a transform: the message names what works
    with pytest.raises(ValueError, match="reverse-mode torch.func transform.*torch.func.jvp.*torch.autograd.grad"):
        torch.func.jacrev(solve)(t)
    # second derivatives in t: the outer level's tangent cannot be read inside the inner one
    with pytest.raises(ValueError, match="cannot be told.*one forward-mode level"):
        torch.func.jvp(lambda s: torch.func.jvp(solve, (s,), (v,))[1], (t,), (v,))
    # an adjoint's custom backward, and an implicit method, are refused inside transforms as before
    with pytest.raises(ValueError, match="direct backpropagation.*BacksolveAdjoint"):
        torch.func.jvp(lambda s: hn.odeint_adjoint(_linear, Y0, s, adjoint_params=()), (t,), (v,))
    with pytest.raises(ValueError, match="explicit embedded pair"):
        torch.func.jvp(lambda s: hn.odeint(_linear, Y0, s, method="rodas5p"), (t,), (v,))
