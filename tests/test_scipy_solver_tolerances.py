"""scipy_solver takes every tolerance the torch solvers take: a 0-d tensor, and a per-component tensor that
broadcasts to the state, each handed to solve_ivp as one value per element of the flattened state."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import hybrid_node as hn

torch.set_num_threads(1)
F64 = torch.float64
_A = np.array([[-0.5, 2.0], [-2.0, -0.5]])
_Y0 = np.array([[1.0, 0.5], [0.2, -0.3]])
_T = np.linspace(0.0, 3.0, 7)


def _field(t, y):
    return y @ torch.tensor(_A.T, dtype=y.dtype)


def _scipy(solver: str, rtol, atol) -> np.ndarray:
    """solve_ivp on the flattened batch, with the tolerances spelled out per element."""

    def fun(t, y):
        return (y.reshape(_Y0.shape) @ _A.T).reshape(-1)

    r = solve_ivp(fun, (_T[0], _T[-1]), _Y0.reshape(-1), method=solver, t_eval=_T, rtol=rtol, atol=atol)
    assert r.success
    return r.y.T.reshape(len(_T), *_Y0.shape)


@pytest.mark.parametrize("solver", ["RK45", "LSODA"])
@pytest.mark.parametrize(
    "atol",
    [
        pytest.param(torch.tensor(1e-10, dtype=F64), id="0-d tensor"),
        pytest.param(torch.tensor([1e-10, 1e-5], dtype=F64), id="per column"),
        pytest.param(np.array([[1e-10], [1e-5]]), id="per row, numpy"),
    ],
)
def test_tensor_tolerances_reach_solve_ivp_per_element(solver, atol):
    """These raised scipy's "`atol` has wrong shape" (only a tensor of the state's full shape passed);
    the result is solve_ivp's with the tolerance broadcast over the state, element for element."""
    expected = _scipy(solver, 1e-6, np.broadcast_to(np.asarray(atol), _Y0.shape).reshape(-1))
    ys = hn.odeint(
        _field,
        torch.tensor(_Y0),
        torch.tensor(_T),
        method="scipy_solver",
        rtol=torch.tensor(1e-6, dtype=F64),
        atol=atol,
        options={"solver": solver},
    )
    # the same solve_ivp call on the same numbers: equal up to the rounding of the field's evaluation
    np.testing.assert_allclose(ys.numpy(), expected, rtol=0, atol=1e-12)


def test_per_component_tolerance_with_the_black_box_adjoint():
    """odeint_adjoint's forward solve takes the same tolerance (it raised there too); the gradient against
    central differences of the forward solve."""
    atol = torch.tensor([1e-12, 1e-11], dtype=F64)
    y0 = torch.tensor(_Y0, requires_grad=True)
    t = torch.tensor(_T)
    opts = {"solver": "DOP853"}
    ys = hn.odeint_adjoint(_field, y0, t, method="scipy_solver", rtol=1e-11, atol=atol, options=opts, adjoint_params=())
    (grad,) = torch.autograd.grad(ys[-1].sum(), y0)
    fd = torch.zeros_like(grad)
    h = 1e-5
    for i in np.ndindex(*_Y0.shape):
        e = torch.zeros_like(y0)
        e[i] = h
        plus = hn.odeint(_field, y0.detach() + e, t, method="scipy_solver", rtol=1e-11, atol=atol, options=opts)
        minus = hn.odeint(_field, y0.detach() - e, t, method="scipy_solver", rtol=1e-11, atol=atol, options=opts)
        fd[i] = (plus[-1].sum() - minus[-1].sum()) / (2 * h)
    # the loss is linear in y0, so the differences are exact up to the solves' 1e-11 tolerances / h
    torch.testing.assert_close(grad, fd, rtol=0, atol=1e-5)
