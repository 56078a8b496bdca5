"""A second derivative through ``odeint_dense``'s interpolant of a ``compile=True`` solve is refused by
the first backward pass, naming the option and the fix, as for ``odeint`` (tests/test_higher_order.py).

Before, the gradient with ``create_graph=True`` went through, and the second pass failed in torch's
engine with "torch.compile with aot_autograd does not currently support double backward". The problem
is dy/dt = A y, whose solution expm(A t) y0 gives the exact first and second derivatives.
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

F64 = torch.float64
A = torch.tensor([[-0.3, 0.8], [-0.6, -0.2]], dtype=F64)
Y0 = torch.tensor([1.0, 0.5], dtype=F64)
T_READ = 0.7  # inside a step of the solve on [0, 1]: the interpolant, not a step's end
#: the solves run at rtol 1e-10; dopri5's dense output (order 4) is within ~1e-9 relative of the exact
#: solution there (measured below 1e-9), so 1e-6 leaves a margin of 1000 against an error that would
#: be O(1) (a missing term of the gradient)
RTOL = 1e-6


class _Linear(torch.nn.Module):
    """dy/dt = A y with A a parameter."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = torch.nn.Parameter(a.clone())

    def forward(self, t, y):
        return y @ self.a.T


#: one field object for the compiled solves, so that its step graphs compile once
_FIELD = _Linear(A)


def _loss_of(y: torch.Tensor) -> torch.Tensor:
    return (y**3).sum() / 3 + y[0] * y[1]


def _exact(a: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    return _loss_of(torch.linalg.matrix_exp(a * T_READ) @ y0)


def _dense_loss(field, y0: torch.Tensor, compile: bool) -> torch.Tensor:
    options = {"compile": True} if compile else None
    sol = hn.odeint_dense(field, y0, 0.0, 1.0, rtol=1e-10, atol=1e-12, method="dopri5", options=options)
    return _loss_of(sol(T_READ))


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    rel = float((got.detach() - want).norm() / want.norm())
    assert rel < RTOL, rel


@pytest.mark.parametrize("path", ["y0", "parameters"])
def test_create_graph_through_a_compiled_dense_output_is_refused_with_the_fix(path):
    y0 = Y0.clone().requires_grad_(True)
    wrt = y0 if path == "y0" else _FIELD.a
    with pytest.raises(RuntimeError, match=r"options=\{'compile': True\} gives first-order gradients only.*Drop"):
        torch.autograd.grad(_dense_loss(_FIELD, y0, compile=True), wrt, create_graph=True)


def test_first_order_gradients_of_a_compiled_dense_output_are_the_exact_ones():
    y0 = Y0.clone().requires_grad_(True)
    g_y0, g_a = torch.autograd.grad(_dense_loss(_FIELD, y0, compile=True), (y0, _FIELD.a))
    want_a, want_y0 = torch.func.grad(_exact, argnums=(0, 1))(A, Y0)
    _close(g_y0, want_y0)
    _close(g_a, want_a)


def test_an_eager_dense_output_keeps_its_second_derivative():
    # the check applies to compiled solves only: the Hessian in y0 through an eager interpolant is exact
    y0 = Y0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_dense_loss(_Linear(A), y0, compile=False), y0, create_graph=True)
    hessian = torch.stack([torch.autograd.grad(g[i], y0, retain_graph=True)[0] for i in range(2)])
    _close(hessian, torch.func.hessian(_exact, argnums=1)(A, Y0))


@pytest.mark.parametrize("transform", ["hessian", "jacrev2"])
def test_a_dense_output_inside_torch_func_is_refused_saying_so(transform):
    # under torch.func.hessian the time tensor odeint_dense makes from t0 and t1 was refused first, told to
    # "pass t from outside the transforms", which a caller of odeint_dense cannot do
    def loss(y0):
        return _dense_loss(_Linear(A), y0, compile=False)

    second = torch.func.hessian(loss) if transform == "hessian" else torch.func.jacrev(torch.func.jacrev(loss))
    with pytest.raises(ValueError, match="odeint_dense has no dense output inside torch.func transforms"):
        second(Y0)
