"""Edge cases of options={"compile": True} (the whole-solve graph) against the eager solve of the same problem."""

import shutil
import warnings

import pytest
import torch
from conftest import TimeMLP

import hybrid_node as hn
from hybrid_node.loop import compiled_step

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None,
    reason="torch.compile needs a C++ compiler for CPU tensors",
)


class CallbackMLP(TimeMLP):
    """:class:`TimeMLP` recording torchdiffeq's step callbacks, forward and adjoint, as (name, t0, dt)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, float, float]] = []

    def _record(self, name, t0, dt):
        self.calls.append((name, float(t0), float(dt)))

    def callback_step(self, t0, y0, dt):
        self._record("step", t0, dt)

    def callback_accept_step(self, t0, y0, dt):
        self._record("accept", t0, dt)

    def callback_reject_step(self, t0, y0, dt):
        self._record("reject", t0, dt)

    def callback_step_adjoint(self, t0, y0, dt):
        self._record("step_adjoint", t0, dt)


def test_step_callbacks_are_called_with_compile_as_eagerly(float64_default, one_thread):
    """The whole-solve graph has no host between attempts: a field with step callbacks had them
    silently skipped (0 calls against eager's 3 per attempt, forward, and 0 adjoint callbacks in the
    backsolve adjoint's backward pass against eager's one per attempt). Such a solve now runs the
    host loop with per-step graphs, which calls them."""
    torch.manual_seed(0)
    field = CallbackMLP()
    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 4)

    def calls(compile: bool) -> list:
        field.calls.clear()
        with torch.no_grad():
            hn.odeint(field, y0, t, rtol=1e-6, atol=1e-8, options={"compile": compile})
        x = y0.clone().requires_grad_(True)
        hn.odeint_adjoint(field, x, t, rtol=1e-6, atol=1e-8, options={"compile": compile}).sum().backward()
        return list(field.calls)

    eager, fast = calls(False), calls(True)
    assert any(name == "step_adjoint" for name, _, _ in eager) and any(name == "accept" for name, _, _ in eager)
    assert [name for name, _, _ in fast] == [name for name, _, _ in eager]
    # the same step decisions; each step comes from the error estimate, a difference of close numbers
    # (of the adjoint's small parameter cotangents too), so the compiled kernels' float64 rounding
    # reaches the steps amplified and carried on (1.1e-9 relative seen); the names above are exact
    torch.testing.assert_close([c[1:] for c in fast], [c[1:] for c in eager], rtol=1e-6, atol=1e-12)


class BatchNormField(torch.nn.Module):
    """A field whose ``BatchNorm`` writes its running statistics in training mode only."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.bn = torch.nn.BatchNorm1d(2)

    def forward(self, t, y):
        return torch.tanh(self.bn(self.lin(y)))


def test_a_field_switched_to_training_mode_after_a_compiled_solve_keeps_its_buffer_writes(float64_default, one_thread):
    """Whether an evaluation writes the field's buffers was probed once per graph: a solve in eval
    mode found no writes, and after ``.train()`` the whole-solve loop ran and dropped them (2 of
    98 running-statistics updates kept). The probe is now made again for each combination of
    training modes, so the training-mode solve takes the per-step graphs, which keep every write."""
    y0, t = torch.randn(16, 2), torch.linspace(0.0, 1.0, 3)

    def after_eval_then_train(compile: bool):
        torch.manual_seed(1)
        field = BatchNormField()
        for mode in (False, True):
            field.train(mode)
            with torch.no_grad():
                sol = hn.solve(field, y0, t, solver=hn.Dopri5().compiled() if compile else hn.Dopri5())
        return field.bn, sol

    (bn, sol), (bn_eager, sol_eager) = after_eval_then_train(True), after_eval_then_train(False)
    assert bn.num_batches_tracked == bn_eager.num_batches_tracked == sol_eager.stats.nfe
    torch.testing.assert_close(sol.ys, sol_eager.ys, rtol=1e-9, atol=1e-12)  # float64, rounding only
    # averages of the batch statistics of every stage's state, which the compiled stages round
    # differently (1e-8 relative seen, as in test_whole_solve.py; the dropped updates were ~0.3 off)
    torch.testing.assert_close(bn.running_mean, bn_eager.running_mean, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(bn.running_var, bn_eager.running_var, rtol=1e-7, atol=1e-9)


class Forcing(torch.nn.Module):
    """A time-only forcing, ``b cos(t)`` for every row: a broadcast view of the state's shape (strides 0)."""

    def __init__(self):
        super().__init__()
        self.b = torch.nn.Parameter(torch.randn(2))

    def forward(self, t, y):
        return (self.b * torch.cos(t)).expand_as(y)


def test_a_field_returning_a_broadcast_view_runs_in_the_whole_solve_graph(float64_default, one_thread):
    """The loop carries the derivative, and the first one had the view's strides (0, 1) where the
    loop's own has (2, 1): ``while_loop`` refused the graph ("Expected body_fn_output and
    carried_inputs to have same metadata") and the solve fell back with a warning that the field
    cannot be compiled. The field's results now enter the loop contiguous."""
    torch.manual_seed(0)
    field, y0, t = Forcing(), torch.randn(4, 2), torch.linspace(0.0, 1.0, 4)
    with torch.no_grad():
        eager = hn.solve(field, y0, t)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no fallback
            fast = hn.solve(field, y0, t, solver=hn.Dopri5().compiled())
    assert any(key[0] == "whole_solve" and callable(graph) for key, graph in compiled_step._CACHE[field].items())
    # y0 + b sin(t) exactly up to the method's error; the compiled kernels round differently (float64)
    torch.testing.assert_close(fast.ys, eager.ys, rtol=1e-12, atol=1e-14)
    assert (fast.stats.nfe, fast.stats.n_accepted) == (eager.stats.nfe, eager.stats.n_accepted)


class Dynamics(torch.nn.Module):
    """A model whose field is a method, passed as ``model.dynamics``."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def dynamics(self, t, y):
        return torch.tanh(self.lin(y)) * torch.cos(t)


@pytest.mark.parametrize("kind", ["bound method", "closure"])
def test_a_field_holding_parameters_outside_a_module_keeps_the_whole_solve_graph(kind, float64_default, one_thread):
    """A bound method of a module (or a closure over one) in grad mode ran the whole-solve graph
    under autograd: the parameters were not found (only a module field was looked into), Inductor
    refused the graph, the solve warned that the field cannot be compiled, and the field's later
    ``torch.no_grad`` solves lost the whole-solve graph too. Such a solve now takes the per-step
    graphs, as a module field's does, with the eager gradients."""
    torch.manual_seed(0)
    model = Dynamics()
    field = model.dynamics if kind == "bound method" else (lambda t, y: model.dynamics(t, y))
    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 4)

    def gradients(compile: bool) -> list:
        model.zero_grad()
        (hn.odeint(field, y0, t, options={"compile": compile}) ** 2).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        fast = gradients(True)
        with torch.no_grad():
            ys = hn.odeint(field, y0, t, options={"compile": True})
    # float64; the compiled step kernels round differently
    torch.testing.assert_close(fast, gradients(False), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(ys, hn.odeint(field, y0, t), rtol=1e-12, atol=1e-14)
    graphs = compiled_step._CACHE[field]
    assert any(key[0] == "whole_solve" and callable(graph) for key, graph in graphs.items())
