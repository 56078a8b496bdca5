"""A failed solve under ``options={"compile": True}`` names its cause as the eager loops do.

The whole-solve graphs (the forward solve, the backsolve adjoint's backward solve, the checkpointed
adjoint's segments) hand back the state where their loop stopped, and the cause is named from it
by :func:`hybrid_node.loop.diagnose.failure_cause` (``stiffness_cause`` on MAX_STEPS), as the eager
loops name it. The backward graphs gave the generic overflow/stiffness/tolerance advice before.

The graphs' code is plain tensor code with ``while_loop`` and ``torch.cond``; the default tests run
it with those operators as Python control flow and without the compiler (:func:`plain_graphs`),
which takes the same path through the library in a second instead of minutes of compilation on a
loaded CPU; the slow test compiles.
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn
from hybrid_node._errors import SolverError, Status
from hybrid_node.loop import stage_loop, whole, whole_segments

T_KINK = 0.3  # below this time the field's vector-Jacobian product is infinite


def _python_while(cond_fn, body_fn, carried):
    """``while_loop`` as a Python loop (the operator itself traces its body even when run eagerly)."""
    while bool(cond_fn(*carried)):
        carried = tuple(body_fn(*carried))
    return carried


def _python_cond(pred, true_fn, false_fn, operands):
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


@pytest.fixture
def plain_graphs(monkeypatch):
    """The whole-solve graphs run as plain Python: no compiler, loops and branches on the host."""
    monkeypatch.setattr(whole, "compile_for", lambda fn, cpu, **kw: fn)
    for module in (whole, whole_segments, stage_loop):
        monkeypatch.setattr(module, "while_loop", _python_while)
    monkeypatch.setattr(torch, "cond", _python_cond)


class KinkedLinear(torch.nn.Module):
    """``y' = -W y + sqrt(g + (y - y)) - sqrt(g)``, ``g = max(t - T_KINK, 0)``: the value is the linear
    field's, its derivative in ``y`` is 1 / (2 sqrt(g)), infinite for ``t <= T_KINK``. The forward
    solve is fine; a backward solve from t = 1 meets the infinite vector-Jacobian product at T_KINK."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2, dtype=torch.float64)

    def forward(self, t, y):
        gap = (torch.as_tensor(t, dtype=y.dtype) - T_KINK).clamp(min=0)
        return -self.lin(y) + torch.sqrt(gap + (y - y.detach())) - torch.sqrt(gap)


def _backward_failure(sensitivity, compiled: bool) -> SolverError:
    torch.manual_seed(0)
    field = KinkedLinear()
    y0 = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    solver = hn.Dopri5().compiled() if compiled else hn.Dopri5()
    sol = hn.solve(
        field, y0, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), solver=solver, sensitivity=sensitivity
    )
    with pytest.raises(SolverError) as err:
        sol.ys.sum().backward()
    return err.value


@pytest.mark.parametrize("sensitivity", [hn.BacksolveAdjoint(), hn.InterpolatingAdjoint()], ids=["backsolve", "interp"])
def test_a_compiled_backward_solve_names_an_infinite_vjp_as_the_eager_one_does(plain_graphs, sensitivity):
    # the compiled backward graphs said "Either the vector field returned NaN or inf ... or the solution
    # overflowed ... lower the tolerances"; they now give the eager pass's diagnosis: the VJP is not
    # finite at t = 0.3 on a finite state, and the fix (keep the field differentiable there)
    compiled = _backward_failure(sensitivity, compiled=True)
    eager = _backward_failure(sensitivity, compiled=False)
    assert compiled.status is eager.status is Status.NONFINITE
    # both stop within the controller's last rejected steps of the kink (dt ~ 1e-17 there)
    assert abs(compiled.t - T_KINK) < 1e-9 and abs(eager.t - T_KINK) < 1e-9, (compiled.t, eager.t)
    assert compiled.cause and compiled.cause == eager.cause.replace(f"{eager.t:.10g}", f"{compiled.t:.10g}")
    msg = str(compiled)
    assert "vector-Jacobian products are not finite" in msg and "lower the tolerances" not in msg, msg
    assert "in the backward (adjoint) solve of the gradient" in msg, msg


def _nan_past(t_bad: float, calls: list):
    """``y' = -y`` up to ``t_bad``, NaN after it; ``calls`` counts its evaluations."""

    def field(t, y):
        calls.append(1)
        return torch.where(torch.as_tensor(t) > t_bad, torch.full_like(y, float("nan")), -y)

    return field


def test_a_compiled_forward_failure_is_named_without_solving_again(plain_graphs, monkeypatch):
    # the forward graph returns the state where it stopped, so the diagnosis is a few evaluations of
    # the field there; it used to solve the failing output interval again on the host loop
    from hybrid_node.loop import host

    resolved = []
    eager_loop = host.integrate_adaptive
    monkeypatch.setattr(host, "integrate_adaptive", lambda *a, **k: resolved.append(1) or eager_loop(*a, **k))
    calls: list = []
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    with pytest.raises(SolverError) as err:
        hn.odeint(_nan_past(0.7, calls), torch.ones(2, 2, dtype=torch.float64), t, options={"compile": True})
    assert err.value.status is Status.NONFINITE and abs(err.value.t - 0.7) < 1e-7, err.value.t
    assert "returned NaN" in str(err.value) and "on a finite state" in str(err.value), str(err.value)
    assert not resolved


def _stiff_linear(t, y):
    """y' = A y with eigenvalues -1 and -1e4: an explicit method's steps are held at dt ~ 3.3e-4."""
    return torch.stack([-y[0], -1e4 * (y[1] - y[0])])


def test_a_compiled_explicit_solve_out_of_steps_on_a_stiff_problem_is_told_so(plain_graphs):
    # as the eager loop (tests/test_failure_messages.py): MAX_STEPS names the stiffness and an implicit
    # method; the compiled forward solve gave only "increasing max_num_steps" (its graph returned no
    # state to estimate the Jacobian's spectral radius at)
    with pytest.raises(SolverError) as err:
        hn.odeint(
            _stiff_linear,
            torch.tensor([1.0, 0.0], dtype=torch.float64),
            torch.tensor([0.0, 10.0], dtype=torch.float64),
            rtol=1e-6,
            atol=1e-9,
            options={"compile": True, "max_num_steps": 500},
        )
    msg = str(err.value)
    assert err.value.status is Status.MAX_STEPS
    assert "stiff" in msg and "spectral radius of about 1e+04" in msg and "'rodas4'" in msg, msg


@pytest.mark.slow
def test_the_compiled_backsolve_graph_names_the_cause(float64_default):
    # the same as the plain-graph test, through the compiler (about a minute and a half on one core)
    compiled = _backward_failure(hn.BacksolveAdjoint(), compiled=True)
    assert compiled.status is Status.NONFINITE and abs(compiled.t - T_KINK) < 1e-9, compiled.t
    assert "vector-Jacobian products are not finite" in str(compiled), str(compiled)
