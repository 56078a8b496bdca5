"""scipy_solver with BDF or Radau and a tensor rtol: those two solve_ivp methods take one rtol only."""

import numpy as np
import pytest
import torch

import hybrid_node as hn

scipy_integrate = pytest.importorskip("scipy.integrate")

F64 = torch.float64
_A = np.array([[-0.5, 2.0], [-2.0, -0.5]])
_Y0 = np.array([1.0, 0.5])
_T = np.linspace(0.0, 3.0, 4)


def _field(t, y):
    return y @ torch.tensor(_A.T, dtype=y.dtype)


def _solve_ivp(solver: str, rtol: float) -> np.ndarray:
    r = scipy_integrate.solve_ivp(
        lambda t, y: _A @ y, (_T[0], _T[-1]), _Y0, method=solver, t_eval=_T, rtol=rtol, atol=1e-12
    )
    assert r.success
    return r.y.T


@pytest.mark.parametrize("solver", ["BDF", "Radau"])
@pytest.mark.parametrize(
    "rtol, scalar",
    [
        pytest.param(torch.tensor(1e-7, dtype=F64), 1e-7, id="0-d tensor"),
        pytest.param(torch.tensor([1e-5, 1e-8], dtype=F64), 1e-8, id="per component"),
    ],
)
def test_bdf_and_radau_take_a_tensor_rtol_as_its_smallest_value(solver, rtol, scalar):
    # both raised scipy's "The truth value of an array with more than one element is ambiguous": their
    # Newton tolerance is computed from rtol as one number, and the tensor reached them as an array
    ys = hn.odeint(
        _field, torch.tensor(_Y0), torch.tensor(_T), method="scipy_solver", rtol=rtol, atol=1e-12,
        options={"solver": solver},
    )  # fmt: skip
    # the same solve_ivp call on the same numbers: equal up to the rounding of the field's evaluation
    np.testing.assert_allclose(ys.numpy(), _solve_ivp(solver, scalar), rtol=0, atol=1e-12)
