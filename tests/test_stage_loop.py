"""The explicit Runge-Kutta step with its stages in a ``while_loop`` (:mod:`hybrid_node.loop.stage_loop`)
and the backsolve adjoint's backward graph that uses it on the CPU."""

import warnings

import pytest
import torch
from conftest import CountingMLP

import hybrid_node as hn
from hybrid_node.loop import compiled_step, whole, whole_impulses
from hybrid_node.loop.stage_loop import looped_step, stage_table
from hybrid_node.solvers.registry import METHOD_SPECS

WHOLE_SOLVE_METHODS = ("dopri5", "tsit5", "bosh3", "dopri8")


def _field(t, y):
    return torch.stack([y[..., 1], -torch.sin(y[..., 0]) * (1 + 0.1 * t)], -1)


@pytest.mark.parametrize("method", WHOLE_SOLVE_METHODS)
def test_looped_step_is_the_unrolled_step(method, float64_default):
    """Solution, error estimate and every stage derivative of one step equal the unrolled step's up to
    rounding (the same sums in another order), run eagerly (``while_loop`` outside a trace)."""
    solver = METHOD_SPECS[method].solver()
    y = torch.tensor([[0.3, -0.2], [1.1, 0.4]])
    t, dt = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64)
    f0 = _field(t, y)
    unrolled = solver.step(_field, t, y, f0, dt)
    looped = looped_step(solver, stage_table(solver, y), _field, t, y, f0, dt, torch.tensor(False))
    torch.testing.assert_close(looped.y1, unrolled.y1, rtol=0, atol=1e-15)
    torch.testing.assert_close(looped.error, unrolled.error, rtol=0, atol=1e-15)
    assert len(looped.ks) == len(unrolled.ks) == solver.tableau.stages
    for a, b in zip(looped.ks, unrolled.ks):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_a_stale_derivative_is_evaluated_as_stage_zero(float64_default):
    """With ``fresh_f0`` the stage loop starts at stage 0: the wrong ``f0`` handed in is replaced by the
    derivative at (t, y) and the step is the step from the right one."""
    solver = METHOD_SPECS["dopri5"].solver()
    y = torch.tensor([0.7, 0.1])
    t, dt = torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
    right = solver.step(_field, t, y, _field(t, y), dt)
    stale = looped_step(solver, stage_table(solver, y), _field, t, y, torch.full((2,), 9.0), dt, torch.tensor(True))
    torch.testing.assert_close(stale.ks[0], _field(t, y), rtol=0, atol=0)
    torch.testing.assert_close(stale.y1, right.y1, rtol=0, atol=1e-15)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "looped"), [("tsit5", True), ("dopri8", True), ("tsit5", False)])
def test_backsolve_backward_graph_gives_the_eager_gradients(method, looped, monkeypatch, float64_default, one_thread):
    """The backward solve's whole-solve graph, with the stage loop (a small state on the CPU: the
    derivative after each cotangent jump evaluated by the next attempt's stage loop) or with unrolled
    stages (a state whose stage buffer exceeds the limit: the derivative after a jump under
    ``torch.cond``), takes the eager backward solve's steps and gives its gradients; it counts its
    evaluations as it makes them: the stages of every attempt (no dense output: its steps end at the
    output times) and one after each of the inner jumps (DOP853's three dense-output stages per
    attempt were evaluated and counted before, unused)."""
    tables = []  # the backward solves' tables: with the stage coefficients when the stages loop
    make = whole_impulses.make_tables
    monkeypatch.setattr(whole_impulses, "make_tables", lambda *a, **k: tables.append(make(*a, **k)) or tables[-1])
    if not looped:
        monkeypatch.setattr(whole, "STAGE_BUFFER_BYTES", 0)
    torch.manual_seed(1)
    field = CountingMLP()
    y0 = torch.randn(6, 2, requires_grad=True)
    t = torch.linspace(0.0, 1.5, 6)
    target = torch.randn(6, 6, 2)

    def gradients(solver):
        field.zero_grad()
        y0.grad = None
        ctrl = hn.PIDController(rtol=1e-8, atol=1e-10)
        sol = hn.solve(field, y0, t, solver=solver, controller=ctrl, sensitivity=hn.BacksolveAdjoint())
        ((sol.ys - target) ** 2).sum().backward()
        return sol.stats, [y0.grad.clone()] + [p.grad.clone() for p in field.parameters()]

    solver = METHOD_SPECS[method].solver()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to per-step graphs
        fast_stats, fast = gradients(solver.compiled())
    assert any(k[0] == "whole_solve" and "impulses" in k for k in compiled_step._CACHE[field])
    assert tables and all((t.stages is not None) == looped for t in tables)
    eager_stats, eager = gradients(solver)
    assert fast_stats.n_steps_backward == eager_stats.n_steps_backward > 0
    for a, b in zip(fast, eager):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # the host's derivative and initial step at the start (2), the jumps, the stages of each attempt
    tab = solver.tableau
    attempts, rest = divmod(fast_stats.nfe_backward - 2 - (len(t) - 2), tab.stages - tab.fsal)
    assert rest == 0 and fast_stats.n_steps_backward <= attempts <= fast_stats.n_steps_backward + 3
