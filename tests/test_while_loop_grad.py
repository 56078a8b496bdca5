"""Gradients through ``while_loop`` (hybrid_node.loop.while_grad; docs/compiled/fixes.md, "Gradients
through while_loop").

torch 2.13's autograd rule for ``while_loop`` drops the gradient that flows across iterations through
a carried value whose initial value does not require grad. The first test is that bug on its own, kept
as a strict xfail so that it starts failing (and says so) once torch fixes it; the others check the
library's workaround, against the same loops run as plain Python loops (``while_loop``'s documented
meaning: same operations, so the gradients agree to rounding) and, for the loop of sums, its exact
derivative.
"""

import pytest
import torch
from conftest import TimeMLP
from torch._higher_order_ops.while_loop import while_loop

import hybrid_node as hn
from hybrid_node.loop import traced_fixed, whole
from hybrid_node.loop.while_grad import attached, differentiable_carries


def python_while_loop(cond_fn, body_fn, carried):
    """``while_loop`` as its docstring defines it, in Python: the reference autograd differentiates step by step."""
    while cond_fn(*carried):
        carried = tuple(body_fn(*carried))
    return carried


def _sum_loop(x0: torch.Tensor, w: torch.Tensor, loop=while_loop) -> torch.Tensor:
    """x = x0 + 3 w, as three iterations of ``x + w``: dx/dw = 3 exactly."""
    _, x = loop(lambda i, x: i < 3, lambda i, x: (i + 1, x + w), (torch.tensor(0), x0))
    return x


@pytest.mark.xfail(
    strict=True,
    reason="torch 2.13: while_loop's backward marks an iteration's inputs as requiring grad only where the "
    "initial carry did, so a carry that starts constant passes no gradient to earlier iterations (dx/dw = 1, not 3)",
)
def test_torch_while_loop_gradient_through_a_carry_that_starts_constant():
    w = torch.tensor(1.0, requires_grad=True)
    x = _sum_loop(torch.zeros(()), w)
    assert x.item() == 3.0
    (grad,) = torch.autograd.grad(x, w)
    assert grad.item() == 3.0  # exact: three additions of w


def test_an_attached_carry_gives_the_exact_gradient_of_the_sum_loop():
    w = torch.tensor(1.0, requires_grad=True)
    # the carry starts attached to w, as the solver's carries are attached to the state or its derivative
    x0 = attached(torch.zeros(()), w)
    x = _sum_loop(x0, w)
    (grad,) = torch.autograd.grad(x, w)
    assert x.item() == 3.0 and grad.item() == 3.0


def test_attached_keeps_values_and_sends_no_gradient_to_the_anchor():
    anchor = torch.tensor([2.0, -1.0], requires_grad=True)
    buffer = torch.tensor([float("nan"), float("inf"), 1.5])
    out = attached(buffer, anchor)
    assert out.requires_grad
    torch.testing.assert_close(out, buffer, equal_nan=True, rtol=0, atol=0)
    (grad,) = torch.autograd.grad((out * torch.tensor([0.0, 0.0, 1.0])).sum(), anchor)
    assert torch.equal(grad, torch.zeros(2))  # exactly zero: no NaN from the buffer's values
    assert attached(buffer, anchor.detach()) is buffer  # nothing to attach to: unchanged
    already = torch.ones(3, requires_grad=True)
    assert attached(already, anchor) is already


def test_differentiable_carries_only_under_grad_mode_and_only_where_something_requires_grad():
    y = torch.ones(2, requires_grad=True)
    outs = torch.full((3, 2), float("nan"))
    count = torch.tensor(0)
    carries = (count, y, outs)
    marked = differentiable_carries(carries, which=[1, 2])
    assert marked[0] is count and marked[1] is y and marked[2].requires_grad
    with torch.no_grad():
        assert differentiable_carries(carries, which=[1, 2])[2] is outs
    plain = (count, y.detach(), outs)
    assert differentiable_carries(plain, which=[1, 2])[2] is outs
    with pytest.raises(ValueError, match="carry 0 is not a floating-point tensor"):
        differentiable_carries(carries, which=[0, 1])


@pytest.fixture
def field(float64_default, one_thread):
    torch.manual_seed(0)
    return TimeMLP()


def _gradients(solve, field, y0_requires_grad: bool):
    """The gradients of a loss on ``solve(y0)`` (all output rows) with respect to y0 (when it requires
    grad) and the field's parameters."""
    torch.manual_seed(1)
    y0 = torch.randn(8, 2).requires_grad_(y0_requires_grad)
    target = torch.randn(5, 8, 2)
    ys = solve(y0)
    inputs = ([y0] if y0_requires_grad else []) + list(field.parameters())
    return [ys.detach(), *torch.autograd.grad(((ys - target) ** 2).sum(), inputs)]


@pytest.mark.slow
@pytest.mark.parametrize("y0_requires_grad", [True, False])
def test_traced_adaptive_solve_differentiates_through_while_loop(field, monkeypatch, y0_requires_grad):
    """The traced adaptive solve (``odeint_graph``, what ``torch.export`` records) differentiated through
    torch's ``while_loop`` equals the same solve with a Python loop. Before the workaround: up to 39
    off for gradients up to 68 (the output buffer starts as NaN, so each output row's gradient stopped
    at the attempt that wrote it, and with only the parameters requiring grad the state's did too)."""
    t = torch.linspace(0.0, 2.0, 5)
    controller = hn.PIDController(rtol=1e-7, atol=1e-9)

    def solve(y0):
        return whole.odeint_graph(field, y0, t, hn.Dopri5(), controller)

    loop = _gradients(solve, field, y0_requires_grad)
    monkeypatch.setattr(whole, "while_loop", python_while_loop)
    reference = _gradients(solve, field, y0_requires_grad)
    # the same operations in the same order, differentiated by the same autograd: rounding only
    for a, b in zip(loop, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("y0_requires_grad", [True, False])
def test_traced_fixed_step_solve_differentiates_through_while_loop(field, y0_requires_grad):
    """The traced fixed-step solve (rk4 on a 0.1 grid, linear interpolation at the output times)
    differentiated through ``while_loop`` equals eager direct backpropagation through the host loop's
    same steps, up to rounding (before: the output buffer, started as zeros, kept only the gradient
    of the rows its last iteration wrote)."""
    t = torch.linspace(0.0, 2.0, 5)
    controller = hn.ConstantStepSize(0.1)

    def traced(y0):
        return traced_fixed.odeint_graph_fixed(field, y0, t, hn.RK4(), controller)

    def eager(y0):
        return hn.odeint(field, y0, t, method="rk4", options={"step_size": 0.1})

    # the same 20 steps; the grid points and interpolation weights may round differently (1e-16
    # relative), which 20 steps of a contracting field keep at the 1e-12 level
    for a, b in zip(_gradients(traced, field, y0_requires_grad), _gradients(eager, field, y0_requires_grad)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


class _Solve(torch.nn.Module):
    """A model holding an adaptive solve of a field over fixed output times."""

    def __init__(self, field):
        super().__init__()
        self.field = field
        self.register_buffer("t", torch.linspace(0.0, 2.0, 5))

    def forward(self, y0):
        return hn.odeint(self.field, y0, self.t, rtol=1e-7, atol=1e-9)


@pytest.mark.slow
def test_an_exported_solve_trains_with_the_eager_gradients(field):
    """A ``torch.export``-ed model holding a solve, run with autograd (the parameters require grad, the
    input does not), gives eager direct backprop's gradients. Before the workaround the exported loop
    passed the output rows' and the state's gradients back from their last attempt only: the first
    parameter's gradient 13 off here (61 for gradients up to 68 with a field without the cos(t) factor)."""
    model = _Solve(field)
    torch.manual_seed(1)
    y0, target = torch.randn(8, 2), torch.randn(5, 8, 2)
    exported = torch.export.export(model, (y0,), strict=False).module()

    def gradients(m):
        ys = m(y0)
        return [ys.detach(), *torch.autograd.grad(((ys - target) ** 2).sum(), list(m.parameters()))]

    # the exported loop takes the eager solve's steps; its kernels round alike (measured: 1.4e-14)
    for a, b in zip(gradients(exported), gradients(model)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
