"""The compiled solve paths on CUDA (skipped without it): the whole-solve graph replayed as a CUDA graph,
the adjoints' compiled backward solves, torch.func transforms, torch.export and torch.compile of a model
holding a solve.

References are the eager solver on the same device (the compiled loop takes its steps: equal step counts,
outputs equal up to rounding) and torch.autograd on the eager solve. Float64, where one rounding of a
fused kernel against an unfused one is ~1e-16 relative and a solve of ~100 steps keeps it below 1e-10.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import CountingMLP
from torch.func import jacrev, vmap

import hybrid_node as hn
from hybrid_node.loop import compiled_step
from hybrid_node.solvers.registry import METHOD_SPECS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TOL = {"rtol": 1e-7, "atol": 1e-9}


@pytest.fixture
def field(float64_default):
    torch.manual_seed(0)
    return CountingMLP().cuda()


def _solve(field, y0, t, method="dopri5", compiled=False, **kw):
    solver = METHOD_SPECS[method].solver()
    solver = solver.compiled() if compiled else solver
    return hn.solve(field, y0, t, solver=solver, controller=hn.PIDController(**TOL), **kw)


def _whole_graphs(field) -> list[tuple]:
    return [key for key in compiled_step._CACHE[field] if key[0] == "whole_solve" and key[5] == "cuda"]


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
def test_the_whole_graph_on_cuda_takes_the_eager_steps(field, method):
    y0 = torch.randn(64, 2, device="cuda")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to per-step graphs
        for t in (torch.linspace(0.0, 3.0, 7, device="cuda"), torch.linspace(3.0, -1.0, 6, device="cuda")):
            eager = _solve(field, y0, t, method)
            comp = _solve(field, y0, t, method, compiled=True)
            assert comp.ys.device.type == "cuda"
            assert (comp.stats.n_accepted, comp.stats.n_rejected) == (eager.stats.n_accepted, eager.stats.n_rejected)
            assert comp.status == eager.status
            torch.testing.assert_close(comp.ys, eager.ys, rtol=1e-10, atol=1e-12)
    assert _whole_graphs(field)


def test_a_cuda_graphs_outputs_survive_the_next_replay(field):
    """A CUDA graph writes its outputs into its own memory pool on every replay: a solve's result must
    not change when the next solve replays the graph."""
    t = torch.linspace(0.0, 2.0, 5, device="cuda")
    a, b = torch.randn(64, 2, device="cuda"), torch.randn(64, 2, device="cuda")
    with torch.no_grad():
        first = hn.odeint(field, a, t, **TOL, options={"compile": True})
        kept = first.clone()
        for _ in range(3):
            hn.odeint(field, b, t, **TOL, options={"compile": True})
        torch.testing.assert_close(first, kept, rtol=0, atol=0)
        torch.testing.assert_close(first, hn.odeint(field, a, t, **TOL), rtol=1e-10, atol=1e-12)


def test_new_tolerances_reuse_the_cuda_graph(field):
    y0, t = torch.randn(64, 2, device="cuda"), torch.linspace(0.0, 2.0, 5, device="cuda")
    counters = torch._dynamo.utils.counters
    with torch.no_grad():
        _solve(field, y0, t, compiled=True)
        graphs = counters["stats"]["unique_graphs"]
        for rtol in (1e-5, 1e-8):
            opts = {"rtol": rtol, "atol": rtol * 1e-2}
            comp = hn.solve(field, y0, t, solver=hn.Dopri5().compiled(), controller=hn.PIDController(**opts))
            eager = hn.solve(field, y0, t, controller=hn.PIDController(**opts))
            torch.testing.assert_close(comp.ys, eager.ys, rtol=1e-10, atol=1e-12)
            assert comp.stats.nfe == eager.stats.nfe
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize(
    "sensitivity", [hn.BacksolveAdjoint(), hn.InterpolatingAdjoint()], ids=["backsolve", "interpolating"]
)
def test_adjoint_backward_solves_on_cuda_give_the_eager_gradients(field, sensitivity):
    y0 = torch.randn(32, 2, device="cuda", requires_grad=True)
    t = torch.linspace(0.0, 2.0, 5, device="cuda")
    target = torch.randn(5, 32, 2, device="cuda")

    def gradients(compiled):
        field.zero_grad()
        y0.grad = None
        sol = _solve(field, y0, t, compiled=compiled, sensitivity=sensitivity)
        ((sol.ys - target) ** 2).sum().backward()
        return sol.stats, [y0.grad.clone()] + [p.grad.clone() for p in field.parameters()]

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fast_stats, fast = gradients(True)
    eager_stats, eager = gradients(False)
    assert fast_stats.n_steps_backward == eager_stats.n_steps_backward > 0
    assert _whole_graphs(field)
    for a, b in zip(fast, eager):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_direct_backprop_with_compile_on_cuda_gives_the_eager_gradients(field):
    y0 = torch.randn(16, 2, device="cuda", requires_grad=True)
    t = torch.linspace(0.0, 2.0, 5, device="cuda")

    def gradients(options):
        field.zero_grad()
        y0.grad = None
        hn.odeint(field, y0, t, **TOL, options=options).pow(2).sum().backward()
        return [y0.grad.clone()] + [p.grad.clone() for p in field.parameters()]

    for a, b in zip(gradients({"compile": True}), gradients({})):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_vmap_and_jacrev_through_odeint_on_cuda(field):
    t = torch.linspace(0.0, 2.0, 7, device="cuda")
    y0 = torch.randn(4, 2, device="cuda")
    batched = vmap(lambda y: hn.odeint(field, y, t, **TOL))(y0)
    alone = torch.stack([hn.odeint(field, y, t, **TOL) for y in y0])
    torch.testing.assert_close(batched, alone, rtol=1e-10, atol=1e-12)

    def final(y):
        return hn.odeint(field, y, t, **TOL)[-1]

    expected = torch.autograd.functional.jacobian(final, y0[0])
    torch.testing.assert_close(jacrev(final)(y0[0]), expected, rtol=1e-10, atol=1e-12)


def test_export_of_an_ode_block_on_cuda_gives_the_same_outputs():
    from hybrid_node.nn.ode_block import ODEBlock, SolveSettings

    torch.manual_seed(0)
    settings = SolveSettings(rtol=1e-6, atol=1e-8)
    block = ODEBlock(CountingMLP(), (0.0, 1.5), train_settings=settings)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), block).cuda().eval()
    x = torch.randn(8, 3, device="cuda")
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        assert "while_loop" in program.graph_module.code
        for inputs in (x, torch.randn(8, 3, device="cuda")):
            torch.testing.assert_close(program.module()(inputs), model(inputs), rtol=1e-5, atol=1e-6)


def test_torch_compile_reduce_overhead_of_a_model_holding_a_solve():
    from hybrid_node.nn.ode_block import ODEBlock

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), ODEBlock(CountingMLP(), (0.0, 1.5))).cuda().eval()
    compiled = torch.compile(model, mode="reduce-overhead")
    with torch.no_grad():
        for _ in range(3):  # the first calls record, later ones replay
            x = torch.randn(8, 3, device="cuda")
            torch.testing.assert_close(compiled(x).clone(), model(x), rtol=1e-5, atol=1e-6)
