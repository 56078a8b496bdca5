"""Step settings as inputs of the whole-solve graph (``options={"compile": True}``, hybrid_node.loop.whole).

A user varies ``first_step``, ``min_step``, ``max_step`` or ``max_num_steps`` between solves; each new
value must reuse the compiled graph, and each solve must take the eager solver's steps. The compiling
tests are marked slow (a while_loop graph compiles in tens of seconds on a small shared CPU).
"""

import math
import warnings

import pytest
import torch
from conftest import CountingMLP

import hybrid_node as hn
from hybrid_node.loop import core, graph_inputs


@pytest.fixture
def field(float64_default, one_thread):
    torch.manual_seed(0)
    return CountingMLP()


def _solve(func, y0, t, compiled: bool, **ctrl):
    solver = hn.Dopri5().compiled() if compiled else hn.Dopri5()
    return hn.solve(func, y0, t, solver=solver, controller=hn.PIDController(**ctrl), throw=False)


def _control(**ctrl) -> core.StepControl:
    return core.StepControl.of(hn.PIDController(**ctrl), 4, torch.float64)


def test_the_graph_key_leaves_out_the_settings_it_takes_as_inputs():
    """Controls that differ only in max_step, max_num_steps or a positive min_step key one graph; a
    positive min_step against none is a branch of the step decision, hence another graph."""
    base = graph_inputs.graph_control(_control(min_step=0.01))
    for other in (dict(min_step=0.2), dict(min_step=0.01, max_step=0.3), dict(min_step=0.01, max_num_steps=7)):
        assert graph_inputs.graph_control(_control(**other)) == base
    assert graph_inputs.graph_control(_control()) != base
    assert graph_inputs.graph_control(_control(min_step=0.01, safety=0.8)) != base  # not an input: a constant


def test_settings_vector_holds_the_clamped_first_step_and_the_limits():
    """One float64 (1-d: a 0-d input restarts Dynamo's analysis, see ``whole.pack``) vector; the given
    first step clamped to [min_step, max_step] as the host loop clamps it; 0 where the graph computes it."""
    like = torch.zeros(3)
    v = graph_inputs.settings_vector(
        hn.PIDController(first_step=0.5, min_step=0.01, max_step=0.2, max_num_steps=9), like
    )
    assert v.dtype == torch.float64 and v.shape == (4,)
    assert v.tolist() == [0.2, 0.01, 0.2, 9.0]
    v = graph_inputs.settings_vector(hn.PIDController(), like)
    assert v.tolist() == [0.0, 0.0, math.inf, float(hn.PIDController().max_num_steps)]


def _check_against_eager(field, y0, t, **ctrl):
    """The compiled solve with ``ctrl`` takes the eager solve's steps (same counts and status) and its
    outputs agree to 1e-12 relative: the compiled kernels may round the field's sums differently
    (docs/compiled_solve.md), about 1e-16 per step over a few hundred steps."""
    with torch.no_grad():
        eager = _solve(field, y0, t, False, **ctrl)
        comp = _solve(field, y0, t, True, **ctrl)
    assert comp.status == eager.status
    assert (comp.stats.nfe, comp.stats.n_accepted, comp.stats.n_rejected) == (
        eager.stats.nfe,
        eager.stats.n_accepted,
        eager.stats.n_rejected,
    )
    finite = torch.isfinite(eager.ys)
    assert torch.equal(finite, torch.isfinite(comp.ys))  # a failed solve's unreached rows are NaN in both
    scale = float(eager.ys[finite].abs().max())
    assert float((comp.ys[finite] - eager.ys[finite]).abs().max()) <= 1e-12 * scale
    return eager


@pytest.mark.slow
@pytest.mark.parametrize(
    "variants",
    [
        # Hairer's initial step, no floor: the step cap and the step budget vary
        [dict(), dict(max_step=0.05), dict(max_step=0.03), dict(max_num_steps=8), dict(max_step=0.1, max_num_steps=15)],
        # a given first step and a floor: all four vary (min_step 0.25 floors the steps rtol asks for)
        [
            dict(first_step=0.1, min_step=1e-4),
            dict(first_step=0.01, min_step=1e-4),
            dict(first_step=0.5, min_step=0.25),
            dict(first_step=0.05, min_step=1e-3, max_step=0.1, max_num_steps=10),
        ],
    ],
    ids=["heuristic", "given-first-step-and-floor"],
)
def test_new_step_settings_reuse_the_graph_and_take_the_eager_steps(field, variants):
    """Each new first_step, min_step, max_step or max_num_steps compiles nothing (before, each new
    value was a graph of its own: a new key, and a constant of the loop body), and every solve is
    the eager one with the same settings."""
    y0, t = torch.randn(8, 2), torch.linspace(0.0, 2.0, 5)
    counters = torch._dynamo.utils.counters
    outcomes = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to per-step graphs
        for i, ctrl in enumerate(variants):
            eager = _check_against_eager(field, y0, t, rtol=1e-10, atol=1e-12, **ctrl)
            outcomes.append((eager.status, eager.stats.n_accepted, eager.stats.n_rejected))
            if i == 0:  # the one compilation
                graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs
    # the settings did change the solves: each its own steps, and a step budget that ran out
    assert len(set(outcomes)) == len(variants)
    assert {status for status, _, _ in outcomes} == {hn.Status.SUCCESS, hn.Status.MAX_STEPS}


def _adjoint_gradients(field, compiled: bool, sensitivity, max_step: float):
    """One training step's gradients (y0 and the parameters) through ``sensitivity`` with ``max_step``,
    and the solve's counters."""
    torch.manual_seed(1)
    y0 = torch.randn(8, 2, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 4)
    target = torch.randn(4, 8, 2)
    field.zero_grad()
    solver = hn.Dopri5().compiled() if compiled else hn.Dopri5()
    ctrl = hn.PIDController(rtol=1e-8, atol=1e-10, max_step=max_step)
    sol = hn.solve(field, y0, t, solver=solver, controller=ctrl, sensitivity=sensitivity)
    ((sol.ys - target) ** 2).sum().backward()
    return sol.stats, [y0.grad.clone()] + [p.grad.clone() for p in field.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "sensitivity",
    [hn.BacksolveAdjoint(), hn.InterpolatingAdjoint(checkpoints=5)],
    ids=["backsolve-impulses-graph", "interpolating-segment-graph"],
)
def test_a_new_max_step_reuses_the_adjoint_backward_graph(field, sensitivity):
    """An adjoint training step with another max_step compiles nothing: the backward graph (the
    backsolve's "impulses" graph, the checkpointed adjoint's segment graph) takes the step settings
    as inputs, as the forward graph does (before, each new value was a backward graph of its own).
    Each step takes the eager backward pass's steps and gives its gradients to rtol 1e-9, atol 1e-11,
    the tolerance of the compiled-vs-eager adjoint tests (test_whole_solve.py, test_whole_segments.py):
    the compiled kernels round the vector-Jacobian products' sums differently, about 1e-16 per step."""
    counters = torch._dynamo.utils.counters
    outcomes = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to per-step graphs
        # caps that bind (12 forward steps without one: 15 and 22 with them) within 8 to 23 steps:
        # the segment graph's table of re-solved steps is sized from that count (whole_segments.table_rows,
        # 32 rows here), and another size is another graph whatever the settings
        for i, max_step in enumerate((0.15, 0.1)):
            stats, grads = _adjoint_gradients(field, True, sensitivity, max_step)
            if i == 0:  # the forward graph and the backward graph
                graphs = counters["stats"]["unique_graphs"]
            eager_stats, eager = _adjoint_gradients(field, False, sensitivity, max_step)
            assert stats.n_steps_backward == eager_stats.n_steps_backward
            for a, b in zip(grads, eager):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
            outcomes.append(eager_stats.n_steps_backward)
    assert counters["stats"]["unique_graphs"] == graphs
    assert outcomes[0] < outcomes[1]  # the smaller cap did bind: the backward steps changed


@pytest.mark.slow  # about 45 s of compilation on a 2-core CPU (test_device_loop.py)
def test_a_new_max_step_reuses_the_device_loop_run(field):
    """The device loop's compiled run takes the step settings as inputs too: another max_step or
    max_num_steps compiles nothing (before, each was a run graph of its own), and each solve takes
    the eager device loop's steps with its outputs to 1e-11 relative, the tolerance of
    test_device_loop.py's compiled-vs-eager test."""
    y0, t = torch.randn(8, 2), torch.linspace(0.0, 3.0, 7)
    counters = torch._dynamo.utils.counters
    outcomes = []
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager runs
        for i, ctrl in enumerate((dict(max_step=0.2), dict(max_step=0.05), dict(max_num_steps=6))):
            options = dict(rtol=1e-7, atol=1e-9, device_loop=True, sync_every=4, **ctrl)
            eager = hn.solve(field, y0, t, controller=hn.PIDController(**options), throw=False)
            fast = hn.solve(
                field, y0, t, solver=hn.Dopri5().compiled(), controller=hn.PIDController(**options), throw=False
            )
            if i == 0:
                graphs = counters["stats"]["unique_graphs"]
            assert fast.status == eager.status
            assert (fast.stats.n_accepted, fast.stats.n_rejected) == (eager.stats.n_accepted, eager.stats.n_rejected)
            finite = torch.isfinite(eager.ys)
            assert torch.equal(finite, torch.isfinite(fast.ys))
            torch.testing.assert_close(fast.ys[finite], eager.ys[finite], rtol=1e-11, atol=1e-12)
            outcomes.append((eager.status, eager.stats.n_accepted))
    assert counters["stats"]["unique_graphs"] == graphs
    assert len(set(outcomes)) == 3 and outcomes[2][0] == hn.Status.MAX_STEPS  # the settings took effect
