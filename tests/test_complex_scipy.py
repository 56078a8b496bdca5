"""``method="scipy_solver"`` on complex states: solve_ivp's complex domain (RK45, RK23, DOP853, BDF).

References: scipy's solve_ivp called directly on the same problem, and the analytic solution of
y' = lam y.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hybrid_node as hn

scipy_integrate = pytest.importorskip("scipy.integrate")

LAM = -0.3 + 2.0j
Y0 = [1.0 + 0.5j, -0.2 + 0.3j]
COMPLEX_METHODS = ["RK45", "RK23", "DOP853", "BDF"]


def field(t, y):
    return LAM * y


@pytest.mark.parametrize("solver", COMPLEX_METHODS)
@pytest.mark.parametrize("reverse", [False, True])
def test_scipy_solver_integrates_a_complex_state_as_solve_ivp_does(solver, reverse):
    # the real part alone ran (.double() dropped the imaginary part) until make_problem refused it
    y0 = torch.tensor(Y0, dtype=torch.complex128)
    t = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    t = t.flip(0) if reverse else t
    ours = hn.odeint(field, y0, t, method="scipy_solver", options={"solver": solver}, rtol=1e-9, atol=1e-11)
    assert ours.dtype == torch.complex128
    sign = -1.0 if reverse else 1.0  # solver time: increasing, the field negated backwards in time
    ref = scipy_integrate.solve_ivp(
        lambda s, y: sign * LAM * y,
        (sign * float(t[0]), sign * float(t[-1])),
        np.array(Y0, dtype=np.complex128),
        method=solver,
        t_eval=(sign * t).numpy(),
        rtol=1e-9,
        atol=1e-11,
    )
    # the same algorithm on the same numbers: equal up to the rounding of the field's evaluation
    np.testing.assert_allclose(ours.numpy(), ref.y.T, rtol=1e-12, atol=1e-14)
    exact = y0 * torch.exp(LAM * (t - t[0])[:, None])
    # the solve's own error at rtol 1e-9 (BDF, order <= 5, is the least accurate: ~1e-7 here)
    torch.testing.assert_close(ours, exact, rtol=1e-6, atol=1e-6)


def test_scipy_solver_keeps_complex64():
    y0 = torch.tensor(Y0, dtype=torch.complex64)
    t = torch.tensor([0.0, 1.0])
    ours = hn.odeint(field, y0, t, method="scipy_solver", options={"solver": "RK45"}, rtol=1e-6, atol=1e-8)
    assert ours.dtype == torch.complex64
    # rtol 1e-6 on |y| ~ 1
    torch.testing.assert_close(ours[-1], y0 * torch.exp(torch.tensor(LAM, dtype=torch.complex64)), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("error::UserWarning")
def test_scipy_solver_takes_a_tolerance_tensor_for_a_complex_state():
    # a tensor tolerance is kept in the state's dtype: complex; it reaches solve_ivp as real values,
    # without torch's warning that a cast to float64 discards an imaginary part
    y0 = torch.tensor(Y0, dtype=torch.complex128)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    options = {"solver": "RK45"}
    per_element = hn.odeint(field, y0, t, method="scipy_solver", options=options, rtol=torch.full((2,), 1e-8))
    scalar = hn.odeint(field, y0, t, method="scipy_solver", options=options, rtol=1e-8)
    # the same steps: scipy's arithmetic on an array tolerance rounds differently by an ulp or so
    torch.testing.assert_close(per_element, scalar, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("solver", ["Radau", "LSODA"])
def test_scipy_solver_refuses_a_complex_state_for_radau_and_lsoda(solver):
    y0 = torch.tensor(Y0, dtype=torch.complex128)
    with pytest.raises(
        TypeError, match=f"solver='{solver}' does not integrate complex states.*RK45, RK23, DOP853, BDF"
    ):
        hn.odeint(field, y0, torch.tensor([0.0, 1.0]), method="scipy_solver", options={"solver": solver})


@pytest.mark.parametrize("solver", ["RK45", "DOP853"])
def test_odeint_adjoint_with_scipy_solver_on_a_complex_state(solver):
    # the black-box adjoint: scipy solves the complex augmented system backwards too
    lam = torch.tensor(LAM, dtype=torch.complex128, requires_grad=True)
    y0 = torch.tensor(Y0, dtype=torch.complex128, requires_grad=True)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
    ys = hn.odeint_adjoint(
        lambda t, y: lam * y,
        y0,
        t,
        method="scipy_solver",
        options={"solver": solver},
        rtol=1e-10,
        atol=1e-12,
        adjoint_params=(lam,),
    )

    def loss(ys):
        return (ys.abs() ** 2).sum() + (0.4j * ys).real.sum()

    ours = torch.autograd.grad(loss(ys), (y0, lam))
    exact = torch.autograd.grad(loss(y0 * torch.exp(lam * t[:, None])), (y0, lam))
    for mine, ref in zip(ours, exact):
        # scipy's forward and backward solves at rtol 1e-10
        torch.testing.assert_close(mine, ref, rtol=1e-7, atol=1e-7)


def test_scipy_solver_returns_a_complex_y0_at_a_single_time_with_any_method():
    # torchdiffeq's TestNoIntegration: one output time is y0, scipy is never called, and torchdiffeq
    # returns it with the default LSODA too; the refusal of LSODA's complex states came first here
    y0 = torch.tensor(Y0, dtype=torch.complex64)
    for solver in ("LSODA", "Radau", "RK45"):
        ys = hn.odeint(field, y0, torch.tensor([0.5]), method="scipy_solver", options={"solver": solver})
        assert ys.dtype == torch.complex64 and torch.equal(ys[0], y0)
