"""Tolerances that are not finite non-negative real numbers are refused by name, in every entry point.

Before: a bool tolerance (``rtol=True``, a bool tensor or array) was taken as 1.0; a NumPy complex array
lost its imaginary part; ``sdeint`` and the ODE adjoints accepted an infinite tolerance (every step
passes: the solve ran at its largest steps without a word); ``sdeint`` failed on a tensor of several
tolerances with torch's "Boolean value of Tensor with more than one value is ambiguous" and on a
string, None or a complex number with Python's "'>=' not supported"; a complex adjoint tolerance
failed with torch's ``"gt_cpu" not implemented for 'ComplexFloat'``; a NumPy float32 adjoint tolerance
was refused where the forward solve takes it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _sde_problems import Decay

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("one_thread")

T = torch.tensor([0.0, 0.5], dtype=torch.float64)


def decay(t, y):
    return -y


NOT_REAL = {
    "bool": True,
    "numpy-bool": np.bool_(True),
    "bool-tensor": torch.tensor([True, True]),
    "bool-array": np.array([True, False]),
    "0-d-bool-array": np.array(True),
    "complex": 1e-6j,
    "numpy-complex64": np.complex64(1e-6),
    "complex-tensor": torch.tensor([1e-6j, 1e-6]),
    "complex-array": np.array([1e-6 + 1e-3j, 1e-6]),  # its imaginary part was dropped without a word
    "tuple-with-bool": (1e-6, True),
}


@pytest.mark.parametrize("which", ["rtol", "atol"])
@pytest.mark.parametrize("value", list(NOT_REAL.values()), ids=list(NOT_REAL))
@pytest.mark.parametrize("method", ["dopri5", "adams", "kvaerno5", "scipy_solver", "implicit_adams"])
def test_odeint_refuses_bool_and_complex_tolerances(method, value, which):
    y0 = torch.ones(2, dtype=torch.float64)
    options = {"step_size": 0.1} if method == "implicit_adams" else None  # its corrector reads the tolerances
    kwargs = {"rtol": 1e-6, "atol": 1e-8, which: value}
    if isinstance(value, tuple):  # one entry per tensor of a tuple state
        y0, func = (y0, y0), lambda t, y: (-y[0], -y[1])
    else:
        func = decay
    with pytest.raises(ValueError, match=f"{which} must be real"):
        hn.odeint(func, y0, T, method=method, options=options, **kwargs)


@pytest.mark.parametrize("value", [True, 1e-6j, torch.tensor([True, False])], ids=["bool", "complex", "bool-tensor"])
def test_pid_controller_refuses_bool_and_complex_tolerances(value):
    with pytest.raises(ValueError, match="rtol must be real"):
        hn.PIDController(rtol=value)


def test_real_numpy_tolerances_are_still_taken_as_numbers():
    # the integer and float kinds are converted as before: same result as the Python values
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    want = hn.odeint(decay, y0, T, rtol=float(np.float32(1e-6)), atol=torch.tensor([1e-8, 1e-9], dtype=torch.float64))
    got = hn.odeint(decay, y0, T, rtol=np.float32(1e-6), atol=np.array([1e-8, 1e-9]))
    assert torch.equal(got, want)
    assert torch.equal(hn.odeint(decay, y0, T, rtol=np.int64(0), atol=1e-9), hn.odeint(decay, y0, T, rtol=0, atol=1e-9))


SDE_BAD = {
    "inf": (math.inf, "must be non-negative and finite"),
    "nan": (math.nan, "must be non-negative and finite"),
    "negative": (-1e-3, "must be non-negative and finite"),
    "several": (torch.full((3,), 1e-3), "must be one real number, got a torch.float32 tensor of shape \\(3,\\)"),
    "bool": (True, "must be one real number, got True"),
    "complex": (1e-3j, "must be one real number"),
    "complex-tensor": (torch.tensor(1e-3j), "must be one real number"),
    "string": ("1e-3", "must be one real number"),
    "none": (None, "must be one real number"),
}


@pytest.mark.parametrize("which", ["rtol", "atol"])
@pytest.mark.parametrize(("value", "message"), list(SDE_BAD.values()), ids=list(SDE_BAD))
def test_sdeint_refuses_tolerances_that_are_not_one_finite_real_number(value, message, which):
    with pytest.raises(ValueError, match=f"{which} {message}"):
        hn.sdeint(Decay(), torch.ones(2, 3), [0.0, 0.1], method="milstein", adaptive=True, dt=0.05, **{which: value})


def test_sdeint_adjoint_refuses_an_infinite_backward_tolerance():
    with pytest.raises(ValueError, match="adjoint_rtol must be non-negative and finite, got inf"):
        hn.sdeint_adjoint(
            Decay(), torch.ones(2, 3), [0.0, 0.1], method="milstein", dt=0.05, adjoint_params=(),
            adjoint_adaptive=True, adjoint_rtol=math.inf,
        )  # fmt: skip


def test_sdeint_takes_a_one_element_tensor_and_numpy_numbers_as_numbers():
    # torchsde's Scalar: a float or a tensor; the same steps and states as the float
    bm = hn.sde.BrownianInterval(0.0, 0.1, size=(2, 3), entropy=0)

    def run(rtol, atol):
        return hn.sdeint(Decay(), torch.ones(2, 3), [0.0, 0.1], bm=bm, method="milstein", adaptive=True,
                         dt=0.05, rtol=rtol, atol=atol)  # fmt: skip

    want = run(1e-3, 1e-4)
    assert torch.equal(run(torch.tensor(1e-3, dtype=torch.float64), np.float64(1e-4)), want)
    assert torch.equal(run(np.float32(1e-3).item(), np.float32(1e-4).item()), run(np.float32(1e-3), np.float32(1e-4)))


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([[-1.0, 0.5], [-0.5, -1.0]], dtype=torch.float64))

    def forward(self, t, y):
        return y @ self.a.T


def adjoint_grad(**kwargs) -> torch.Tensor:
    field = Linear()
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    ys = hn.odeint_adjoint(field, y0, T, rtol=1e-8, atol=1e-10, **kwargs)
    (grad,) = torch.autograd.grad(ys.sum(), [field.a])
    return grad


ADJOINT_BAD = {
    "inf": (math.inf, ValueError, "must be non-negative and finite"),
    "inf-element": (torch.tensor([1e-6, math.inf]), ValueError, "must be non-negative and finite"),
    "negative": (-1e-6, ValueError, "must be non-negative and finite"),
    "complex-tensor": (torch.tensor([1e-6j, 1e-6]), TypeError, "must be a non-negative float or a real tensor of them"),
    "bool-tensor": (torch.tensor([True, True]), TypeError, "must be a non-negative float or a real tensor of them"),
    "bool-array": (np.array([True, True]), TypeError, "must be a non-negative float or a real tensor of them"),
}


@pytest.mark.parametrize("which", ["rtol", "atol"])
@pytest.mark.parametrize(("value", "error", "message"), list(ADJOINT_BAD.values()), ids=list(ADJOINT_BAD))
def test_adjoint_tolerances_that_are_not_non_negative_finite_reals_are_refused(value, error, message, which):
    # an infinite backward tolerance accepted every backward step (on a random 3x3 linear field the gradients
    # came out 4.5e-6 off those of a solve at 1e-10)
    with pytest.raises(
        error, match=f"{which} {message} \\(the adjoint's {which}: adjoint_{which} of odeint_adjoint\\)"
    ):
        adjoint_grad(**{f"adjoint_{which}": value})
    with pytest.raises(error, match=f"{which} {message}"):
        hn.BacksolveAdjoint(**{which: value})


def test_numpy_adjoint_tolerances_are_taken_as_the_forward_takes_them():
    # np.float32 was refused ("must be a positive float or a tensor of them, got float32")
    want = adjoint_grad(
        adjoint_rtol=float(np.float32(1e-7)), adjoint_atol=torch.tensor([1e-9, 1e-10], dtype=torch.float64)
    )
    got = adjoint_grad(adjoint_rtol=np.float32(1e-7), adjoint_atol=np.array([1e-9, 1e-10]))
    assert torch.equal(got, want)
