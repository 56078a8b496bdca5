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
