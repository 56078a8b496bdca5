"""DirectBackprop(checkpoints=k): binomial (revolve) checkpointing of direct backprop (Griewank & Walther 2000)."""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn
from hybrid_node.sensitivity import checkpointed
from hybrid_node.sensitivity.checkpointed import binomial, optimal_advances, repetitions, reverse_steps

F64 = torch.float64


class MLPField(torch.nn.Module):
    def __init__(self, dim: int = 3, hidden: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, dim))
        self.to(F64)

    def forward(self, t, y):
        return self.net(y) * (1 + 0.1 * t)


def _gradient(field, y0, t, controller, sensitivity, step_t=(), solver=None):
    sol = hn.solve(
        field, y0, t, solver=solver or hn.Tsit5(), controller=controller, sensitivity=sensitivity, step_t=step_t
    )
    ys = sol.ys if isinstance(sol.ys, torch.Tensor) else torch.cat([y.flatten(1) for y in sol.ys], 1)
    loss = (ys**2).sum() + ys[-1].sin().sum()
    inputs = (y0,) if isinstance(y0, torch.Tensor) else tuple(y0)
    grads = torch.autograd.grad(loss, (*inputs, *field.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]), sol


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("adaptive", [False, True])
def test_gradient_equals_direct_backprop_for_any_number_of_checkpoints(adaptive):
    field = MLPField()
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=F64)  # several outputs, on the fixed grid
    ctrl = hn.PIDController(rtol=1e-11, atol=1e-12) if adaptive else hn.ConstantStepSize(step_size=0.05)
    step_t = t if adaptive else ()  # the adaptive direct solve then lands on the outputs, as the replay does
    direct, sol_d = _gradient(field, y0, t, ctrl, hn.DirectBackprop(), step_t)
    n = sol_d.stats.n_accepted
    assert n >= 10
    for k in (1, 2, 5, n, n + 10):
        grad, sol = _gradient(field, y0, t, ctrl, hn.DirectBackprop(checkpoints=k))
        assert sol.stats.n_accepted == n
        torch.testing.assert_close(sol.ys, sol_d.ys, rtol=1e-13, atol=1e-13)
        assert _rel(grad, direct) < 1e-10, k
        # the recomputation is revolve's minimal schedule plus one graph-recording pass per step
        assert sol.stats.n_steps_backward == optimal_advances(n, k) + n


@pytest.mark.parametrize("solver", [hn.RK4(), hn.Leapfrog()], ids=["rk4", "leapfrog"])
def test_tuple_state(solver):
    field = MLPField(dim=4)

    def func(t, y):
        out = field(t, torch.cat(y, -1))
        return out[..., :2], out[..., 2:]

    func_module = torch.nn.Module()
    func_module.field = field
    func_module.forward = func  # type: ignore[method-assign]
    q0 = torch.randn(5, 2, dtype=F64, requires_grad=True)
    p0 = torch.randn(5, 2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ctrl = hn.ConstantStepSize(step_size=0.1)
    direct, _ = _gradient(func_module, (q0, p0), t, ctrl, hn.DirectBackprop(), solver=solver)
    grad, sol = _gradient(func_module, (q0, p0), t, ctrl, hn.DirectBackprop(checkpoints=3), solver=solver)
    assert isinstance(sol.ys, tuple) and sol.ys[0].shape == (3, 5, 2)
    assert _rel(grad, direct) < 1e-10


def calls_append(calls):
    return lambda i, x: calls.append((i, x))


def test_schedule_reverses_every_step_in_order_within_the_snapshot_budget():
    for n in range(1, 60):
        for snaps in range(1, 7):
            calls: list[tuple[int, int]] = []
            counters = reverse_steps(n, snaps, 0, lambda i, x: x + 1, calls_append(calls))
            assert calls == [(i, i) for i in range(n - 1, -1, -1)]  # step i from its exact start x_i
            assert counters["peak_snapshots"] <= snaps
            assert counters["advances"] == optimal_advances(n, snaps)
    # the binomial reach: beta(s, r) steps need r repetitions, one more step needs r + 1
    assert repetitions(binomial(4, 3), 4) == 3 and repetitions(binomial(4, 3) + 1, 4) == 4
    assert optimal_advances(1000, 1000) == 999  # every state stored: one sweep
    assert optimal_advances(10, 1) == 45  # y0 only: 0 + 1 + ... + 9


def test_stored_states_and_graph_are_bounded(monkeypatch):
    """At most k states are held in the backward pass, and the forward pass records no graph."""
    peaks: list[int] = []

    def spy(n, snaps, x0, advance, backprop):
        counters = reverse_steps(n, snaps, x0, advance, backprop)
        peaks.append(counters["peak_snapshots"])
        return counters

    monkeypatch.setattr(checkpointed, "reverse_steps", spy)
    field = MLPField()
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    saved_bytes: dict[str, int] = {}
    for label, sens in (("direct", hn.DirectBackprop()), ("checkpointed", hn.DirectBackprop(checkpoints=4))):
        total = 0

        def pack(x):
            nonlocal total
            total += x.numel() * x.element_size()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            ctrl = hn.ConstantStepSize(step_size=0.02)
            sol = hn.solve(field, y0, t, solver=hn.RK4(), controller=ctrl, sensitivity=sens)
        saved_bytes[label] = total
        sol.ys[-1].sum().backward()
    assert peaks == [4]
    assert saved_bytes["direct"] > 100 * 4 * 3 * 8  # every stage of 100 steps
    assert saved_bytes["checkpointed"] == 0


def test_errors_name_the_fix():
    field = MLPField()
    y0 = torch.randn(2, 3, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match="positive int"):
        hn.DirectBackprop(checkpoints=0)
    with pytest.raises(ValueError, match="explicit one-step"):
        sens = hn.DirectBackprop(checkpoints=2)
        hn.solve(field, y0, t, solver=hn.Kvaerno5(), controller=hn.PIDController(), sensitivity=sens)
    with pytest.raises(ValueError, match="events"):
        hn.solve(
            field,
            y0,
            t,
            solver=hn.Tsit5(),
            controller=hn.PIDController(),
            sensitivity=hn.DirectBackprop(checkpoints=2),
            event_fn=lambda t, y: y.sum() - 10,
        )
