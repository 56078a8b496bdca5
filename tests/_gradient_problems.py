"""Problems and helpers shared by the gradient tests (float64 throughout)."""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn

METHODS = {
    "direct": hn.DirectBackprop(),
    "backsolve": hn.BacksolveAdjoint(),
    "interpolating": hn.InterpolatingAdjoint(),
    "interpolating-3": hn.InterpolatingAdjoint(checkpoints=3),
}


class Damped(torch.nn.Module):
    """x'' = -w^2 sin x - c x' with learnable w, c: nonlinear (no closed form), so every stage depends on
    the parameters; ``grad_modes`` records whether autograd was on at each evaluation."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.3))
        self.c = torch.nn.Parameter(torch.tensor(0.2))
        self.grad_modes: list[bool] = []

    def forward(self, t, y):
        self.grad_modes.append(torch.is_grad_enabled())
        x, u = y[..., :1], y[..., 1:]
        return torch.cat([u, -(self.w**2) * torch.sin(x) - self.c * u], -1)


class Tanh(torch.nn.Module):
    """y' = tanh(A y): a nonlinear field with one matrix parameter."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=torch.float64))

    def forward(self, t, y):
        return torch.tanh(y @ self.a.T)


class Linear(torch.nn.Module):
    """y' = A y (A a parameter); nn.Module so the adjoint finds A by itself."""

    def __init__(self, a):
        super().__init__()
        self.A = torch.nn.Parameter(torch.as_tensor(a, dtype=torch.float64))

    def forward(self, t, y):
        return y @ self.A.T


class VanDerPol(torch.nn.Module):
    """x'' = mu (1 - x^2) x' - x, written as a 2-vector state."""

    def __init__(self, mu=1.0):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(mu, dtype=torch.float64))

    def forward(self, t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x**2) * v - x], dim=-1)


class MLPField(torch.nn.Module):
    """A small time-dependent MLP field."""

    def __init__(self, width=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = torch.nn.Linear(3, width).double()
        self.l2 = torch.nn.Linear(width, 2).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)

    def forward(self, t, y):
        tt = t.expand(y.shape[:-1] + (1,)).to(y.dtype)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], dim=-1))))


class Oscillator(torch.nn.Module):
    """A damped oscillator on a tuple state (x, v): x' = v, v' = -k x - c v."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, t, state):
        x, v = state
        return v, -self.k * x - self.c * v


def solve(func, y0, t, sensitivity, rtol=1e-10, atol=1e-12, solver=None, controller=None, **kw):
    """hn.solve with tight tolerances by default."""
    if controller is None:
        controller = hn.PIDController(rtol=rtol, atol=atol)
    return hn.solve(func, y0, t, sensitivity=sensitivity, solver=solver, controller=controller, **kw)


def weighted_loss(ys, seed=1):
    """A loss that weights every output time and component differently."""
    if isinstance(ys, tuple):
        return sum(weighted_loss(y, seed + i) for i, y in enumerate(ys))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(ys.shape, generator=g, dtype=ys.dtype)
    return (w * ys).sum() + 0.5 * (ys**2).sum()


def graph_nodes(y: torch.Tensor) -> set:
    """The autograd nodes that ``y``'s graph reaches (empty without a graph)."""
    seen: set = set()
    todo = [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return seen


def central_difference(fn, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """d fn / d x by central differences, one entry at a time."""
    grad = torch.zeros_like(x)
    flat = grad.reshape(-1)
    base = x.detach().clone()
    for i in range(base.numel()):
        plus, minus = base.clone(), base.clone()
        plus.reshape(-1)[i] += eps
        minus.reshape(-1)[i] -= eps
        flat[i] = (fn(plus) - fn(minus)) / (2 * eps)
    return grad


def assert_matches_central_differences(
    loss, inputs, grads, eps: float = 1e-6, rel: float = 1e-6, abs_tol: float = 1e-9
):
    """Each entry of ``grads`` against central differences of ``loss()`` with that entry moved by +-eps.

    Args:
        loss: () -> the scalar the gradients are of, computed from the current values of ``inputs``.
        inputs: the tensors (initial states, parameters) moved in place under no_grad, and put back.
        grads: d loss / d input, one per input.
        eps: the difference step; rel, abs_tol: the tolerances of each entry's comparison.

    Raises:
        AssertionError: an entry differs from its difference quotient by more than the tolerances.
    """
    for x, g in zip(inputs, grads):
        for i in range(x.numel()):
            vals = []
            for sign in (1, -1):
                with torch.no_grad():
                    x.view(-1)[i] += sign * eps
                    vals.append(float(loss()))
                    x.view(-1)[i] -= sign * eps
            assert float(g.reshape(-1)[i]) == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=rel, abs=abs_tol)
