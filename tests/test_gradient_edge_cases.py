"""Edge cases of the gradient methods, each against an independent reference (direct backpropagation
through the same solve, or central finite differences)."""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

F64 = torch.float64


class Tanh(torch.nn.Module):
    """y' = tanh(A y): a nonlinear field with one matrix parameter."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=F64))

    def forward(self, t, y):
        return torch.tanh(y @ self.a.T)


#: the sensitivities that replay the forward steps (their own parameter handling), with their solver
REPLAYING = {
    "checkpointed": (hn.DirectBackprop(checkpoints=2), hn.Tsit5()),
    "reversible": (hn.ReversibleAdjoint(), hn.Reversible(hn.Tsit5())),
}


def _param_grad(sensitivity, solver, adjoint_params):
    """dL/dA with A given to the sensitivity as ``adjoint_params(module)``, the field a plain function."""
    field = Tanh()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)  # on the step grid: direct backprop takes the same steps
    sol = hn.solve(
        lambda tt, y: field(tt, y),
        y0,
        t,
        solver=solver,
        controller=hn.ConstantStepSize(step_size=0.05),
        sensitivity=sensitivity,
        adjoint_params=adjoint_params(field),
    )
    sol.ys.sum().backward()
    return field.a.grad


@pytest.mark.parametrize("name", list(REPLAYING))
def test_replaying_sensitivities_check_adjoint_params_as_the_adjoints_do(name):
    sensitivity, solver = REPLAYING[name]
    reference = _param_grad(sensitivity, solver, lambda m: (m.a,))
    # direct backpropagation through the same discrete solve: the replay equals it to rounding
    direct = _param_grad(hn.DirectBackprop(), solver, lambda m: (m.a,))
    torch.testing.assert_close(reference, direct, rtol=1e-12, atol=1e-12)  # same steps, rounding only
    # a list or a generator is a sequence of tensors like the tuple
    torch.testing.assert_close(_param_grad(sensitivity, solver, lambda m: [m.a]), reference, rtol=0, atol=0)
    torch.testing.assert_close(_param_grad(sensitivity, solver, lambda m: m.parameters()), reference, rtol=0, atol=0)
    # listed twice, A gets its gradient once (it was doubled)
    torch.testing.assert_close(_param_grad(sensitivity, solver, lambda m: (m.a, m.a)), reference, rtol=0, atol=0)
    # a bare tensor is refused (its rows were differentiated instead, and A silently got zero)
    with pytest.raises(TypeError, match="single tensor"):
        _param_grad(sensitivity, solver, lambda m: m.a)
    with pytest.raises(TypeError, match=r"adjoint_params\[1\] is a int"):
        _param_grad(sensitivity, solver, lambda m: (m.a, 3))
