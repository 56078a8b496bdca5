"""The checkpointed (interpolating) adjoint's backward pass as segment graphs (hybrid_node.loop.whole_segments).

The segment function is plain tensor code with ``while_loop`` and ``torch.cond``, which also run
eagerly; the default suite runs it uncompiled (``compile_for`` replaced by the identity), which
checks the loop logic, the carried state, the cotangents and the table's growth in seconds. The
compiled graph is checked by the slow test.
"""

import math
import warnings

import pytest
import torch
from test_whole_solve import CountingMLP

import hybrid_node as hn
from hybrid_node.interpolation import PolynomialInterpolant
from hybrid_node.loop import compiled_step, whole, whole_segments
from hybrid_node.loop.device import Tables


@pytest.fixture
def field(float64_default, one_thread):
    torch.manual_seed(0)
    return CountingMLP()


def _gradients(field, solver, checkpoints=None, reverse=False, rtol=1e-8, atol=1e-10):
    torch.manual_seed(1)
    y0 = torch.randn(8, 2, requires_grad=True)
    t = torch.linspace(2.0, 0.0, 4) if reverse else torch.linspace(0.0, 2.0, 4)
    target = torch.randn(4, 8, 2)
    field.zero_grad()
    sol = hn.solve(
        field,
        y0,
        t,
        solver=solver,
        controller=hn.PIDController(rtol=rtol, atol=atol),
        sensitivity=hn.InterpolatingAdjoint(checkpoints=checkpoints),
    )
    ((sol.ys - target) ** 2).sum().backward()
    return sol.stats, [y0.grad.clone()] + [p.grad.clone() for p in field.parameters()]


@pytest.mark.parametrize(("checkpoints", "reverse"), [(None, False), (5, False), (None, True)])
def test_segments_run_uncompiled_take_the_eager_passes_steps_and_gradients(field, monkeypatch, checkpoints, reverse):
    """Run eagerly, the segment function's backward pass has the eager pass's steps, evaluations and
    gradients (the same arithmetic up to the order of the dense output's sums), at output-only
    checkpoints, with checkpoints between outputs (no cotangent there) and for decreasing output
    times; a table of two rows overflows and is doubled until a segment's re-solve fits."""
    monkeypatch.setattr(whole, "compile_for", lambda fn, cpu, **kw: fn)
    monkeypatch.setattr(whole_segments, "table_rows", lambda steps: 2)
    capacities = []
    graph = whole_segments._graph

    def recording(*args):
        capacities.append(args[-1])
        return graph(*args)

    monkeypatch.setattr(whole_segments, "_graph", recording)
    eager_stats, eager = _gradients(field, hn.Dopri5(), checkpoints, reverse)
    eager_calls, field.nfe = field.nfe, 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the eager pass
        stats, grads = _gradients(field, hn.Dopri5().compiled(), checkpoints, reverse)
    assert capacities[0] == 2 and max(capacities) >= 4  # the first re-solve needed a larger table
    assert stats.n_steps_backward == eager_stats.n_steps_backward > 3
    assert stats.nfe_backward == eager_stats.nfe_backward
    assert field.nfe == eager_calls  # the field's own counter too (the overflowed re-solves not counted)
    for a, b in zip(grads, eager):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_keep_appends_accepted_steps_and_counts_past_the_capacity(float64_default):
    rec = whole_segments._empty_record(2, 3, torch.zeros(4))
    ks = [torch.full((4,), float(i)) for i in range(3)]
    yes, no = torch.tensor(True), torch.tensor(False)
    t, h = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.25, dtype=torch.float64)
    rec = whole_segments._keep(rec, no, t, h, torch.ones(4), ks)  # a rejected attempt leaves no row
    assert int(rec.steps) == 0 and math.isinf(float(rec.t0[0]))
    for i in range(3):
        rec = whole_segments._keep(rec, yes, t + i, h, torch.full((4,), float(i)), ks)
    assert int(rec.steps) == 3  # one more than the table holds: reported, not written
    assert rec.t0.tolist() == [0.5, 1.5]
    assert rec.y0[:, 0].tolist() == [0.0, 1.0]
    assert rec.ks[1, 2].tolist() == [2.0] * 4


def test_state_at_is_the_checkpoint_at_the_ends_and_the_continuous_extension_inside(float64_default):
    """state_at picks the recorded step holding s (the last one beyond it) and evaluates the tableau's
    polynomial as the eager interpolant does; at c0 and c1 it returns the checkpoint states."""
    solver = hn.Dopri5()
    dense = solver.tableau.dense
    stages = solver.tableau.stages
    torch.manual_seed(0)
    rec = whole_segments._empty_record(4, stages, torch.zeros(3))
    starts, sizes = [0.0, 0.3, 0.7], [0.3, 0.4, 0.3]
    pieces = []
    for t0, h in zip(starts, sizes):
        y, ks = torch.randn(3), [torch.randn(3) for _ in range(stages)]
        pieces.append(PolynomialInterpolant(y, tuple(ks), h, dense))
        rec = whole_segments._keep(rec, torch.tensor(True), torch.tensor(t0), torch.tensor(h), y, ks)
    d = torch.tensor(dense, dtype=torch.float64)
    tables = Tables(torch.zeros(0), torch.ones(1), d, torch.arange(1, d.shape[1] + 1, dtype=torch.float64))
    z0, z1 = torch.randn(3), torch.randn(3)
    c0, c1 = torch.tensor(0.0), torch.tensor(1.0)

    def at(s):
        return whole_segments.state_at(rec, tables, torch.tensor(s), z0, z1, c0, c1)

    torch.testing.assert_close(at(0.0), z0, rtol=0, atol=0)
    torch.testing.assert_close(at(1.0), z1, rtol=0, atol=0)
    for s, i in ((0.1, 0), (0.3, 1), (0.65, 1), (0.9, 2), (0.9999, 2)):
        theta = (s - starts[i]) / sizes[i]
        torch.testing.assert_close(at(s), pieces[i](theta), rtol=1e-13, atol=1e-13)


def test_applies_to_compiled_pairs_with_a_polynomial_extension_only():
    ctrl = hn.PIDController()
    assert whole_segments.applies(hn.Dopri5().compiled(), ctrl)
    assert whole_segments.applies(hn.Tsit5().compiled(), ctrl)
    assert not whole_segments.applies(hn.Dopri5(), ctrl)  # not compiled
    assert not whole_segments.applies(hn.Bosh3().compiled(), ctrl)  # Hermite output
    assert not whole_segments.applies(hn.Dopri8().compiled(), ctrl)  # its own dense output
    assert not whole_segments.applies(hn.Dopri5().compiled(), hn.PIDController(per_sample=True))


def test_a_method_without_segment_graphs_keeps_the_eager_pass(field, monkeypatch):
    """compile=True with bosh3 (Hermite output): the backward pass is the eager one with per-step
    graphs (here run uncompiled), whose field is the eager augmented one, and gives its gradients."""
    from hybrid_node.loop import compiled_step

    monkeypatch.setattr(compiled_step, "compile_for", lambda fn, cpu, **kw: fn)
    monkeypatch.setattr(whole, "compile_for", lambda fn, cpu, **kw: fn)
    eager_stats, eager = _gradients(field, hn.Bosh3())
    stats, grads = _gradients(field, hn.Bosh3().compiled())
    assert stats.n_steps_backward == eager_stats.n_steps_backward
    for a, b in zip(grads, eager):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class _NaNPastOne(torch.nn.Module):
    """y' = -a y, but NaN for 0 < side * (t - 1) < width: just past t = 1 in the direction of the
    solve. The forward solve's steps pass over the window (no stage of theirs lies in it at these
    tolerances), while the re-solve from the checkpoint t = 1 samples the field there first."""

    width = 0.05

    def __init__(self, side: float):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.5))
        # a buffer, not a float attribute: the loops put a module's number attributes back after each
        # call, which an uncompiled while_loop refused as a side effect once the body was traced again
        self.register_buffer("side", torch.tensor(side))

    def forward(self, t, y):
        past = self.side * (torch.as_tensor(t, dtype=y.dtype) - 1.0)
        return torch.where((past > 0) & (past < self.width), torch.full_like(y, math.nan), -self.a * y)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_failed_re_solve_in_a_segment_graph_names_the_cause_as_the_eager_pass(float64_default, monkeypatch, reverse):
    """The segment graph's re-solve fails where the forward solve did not (the NaN window that the
    forward steps passed over); its error names the field and the time from the state where the
    re-solve stopped, as the eager pass's re-solve does, instead of the status's generic advice."""
    monkeypatch.setattr(whole, "compile_for", lambda fn, cpu, **kw: fn)
    used = []
    graph = whole_segments._graph
    monkeypatch.setattr(whole_segments, "_graph", lambda *args: used.append(args) or graph(*args))
    t = torch.tensor([2.0, 1.0, 0.0]) if reverse else torch.tensor([0.0, 1.0, 2.0])

    def backward(solver):
        field = _NaNPastOne(-1.0 if reverse else 1.0)
        sol = hn.solve(
            field,
            torch.ones(8, 2, requires_grad=True),  # the other tests' shape: no dynamic-shape retrace of torch.cond
            t,
            solver=solver,
            controller=hn.PIDController(rtol=1e-6, atol=1e-8),
            sensitivity=hn.InterpolatingAdjoint(),
        )
        assert sol.status is hn.Status.SUCCESS  # the forward solve stepped over the window
        with pytest.raises(hn.SolverError) as err:
            sol.ys.sum().backward()
        return err.value

    eager = backward(hn.Dopri5())
    assert not used
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the eager pass
        compiled = backward(hn.Dopri5().compiled())
    assert used  # the backward pass ran as segment graphs
    assert compiled.status is eager.status is hn.Status.NONFINITE
    # the window's edge, the checkpoint t = 1 (the re-solve's steps shrank to its resolution there)
    assert compiled.t == eager.t == pytest.approx(1.0, abs=1e-9)
    assert compiled.cause == eager.cause and "The vector field returned NaN at t=1 on a finite state" in compiled.cause


@pytest.mark.slow
def test_compiled_segment_graph_gives_the_eager_gradients_and_is_reused(field):
    """Compiled: the eager pass's backward steps and gradients up to rounding, with checkpoints
    between the outputs; the first pass compiles two graphs (the forward solve and one segment graph
    for all segments: the first, those after an output and those after a checkpoint between
    outputs) and a second backward pass compiles nothing new."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        stats, grads = _gradients(field, hn.Dopri5().compiled(), checkpoints=5)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert graphs - before == 2
        again = _gradients(field, hn.Dopri5().compiled(), checkpoints=5)[1]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    keys = [key for key in compiled_step._CACHE[field] if key[0] == "whole_solve"]
    assert any(key[1][0] == "interpolating" for key in keys)
    eager_stats, eager = _gradients(field, hn.Dopri5(), checkpoints=5)
    assert stats.n_steps_backward == eager_stats.n_steps_backward
    for a, b, c in zip(grads, eager, again):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(c, a, rtol=0, atol=0)
