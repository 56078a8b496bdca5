"""``options={"compile": "fullgraph"}``: direct backprop through the whole-solve graph's ``while_loop``.

With ``compile=True`` a solve that needs an autograd graph runs per-step graphs (they compile about
4x faster); ``"fullgraph"`` runs it as the one whole-solve graph, differentiated by autograd through
``while_loop`` (docs/compiled/fixes.md, "Gradients through while_loop"). The references are eager
direct backpropagation over the same steps: the compiled kernels only round differently.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import CountingMLP

import hybrid_node as hn
from hybrid_node._registry import build_solver
from hybrid_node.loop import compiled_step

# float64: the graph and the eager solver take the same steps and differ by rounding only (measured
# 4e-14 on gradients of size 68); 1e-9 relative leaves room for a few thousand ulps of accumulation
F64 = {"rtol": 1e-9, "atol": 1e-11}
# float32: the same, at float32's epsilon 1.2e-7 accumulated over a few dozen attempts and a backward
# pass through them
F32 = {"rtol": 1e-4, "atol": 1e-5}


@pytest.mark.parametrize("value", ["loop", "yes", "Fullgraph", 2, None])
def test_unknown_compile_values_are_refused_with_the_valid_ones(value):
    with pytest.raises(
        TypeError, match=r"options\['compile'\] must be True or False, 'fullgraph' .* 'background' .* 'in_process'"
    ):
        hn.odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), options={"compile": value})


def test_fullgraph_marks_the_solver_and_shares_its_caches():
    solver, _, _ = build_solver("dopri5", {"compile": "fullgraph"}, 1e-6, 1e-8)
    plain, _, _ = build_solver("dopri5", {"compile": True}, 1e-6, 1e-8)
    assert solver.compile and solver.fullgraph and not plain.fullgraph
    # the flag only routes solves: the graphs cached per method (forward graph, per-step graphs) are shared
    assert solver == plain and hash(solver) == hash(plain)
    fixed, _, _ = build_solver("rk4", {"compile": "fullgraph", "step_size": 0.1}, 1e-6, 1e-8)
    assert fixed.compile  # a fixed-step method behaves as with compile=True
    with pytest.raises(ValueError, match=r"fullgraph=True .* needs compile=True"):
        hn.Dopri5(fullgraph=True)  # it would change nothing


def test_a_field_the_compiler_rejects_falls_back_with_one_warning_and_eager_gradients(float64_default, one_thread):
    calls = []
    w = torch.tensor(0.7, requires_grad=True)

    def func(t, y):
        calls.append(1)  # a side effect on a Python list: no graph can hold it
        return -w * y

    y0, t = torch.ones(3, requires_grad=True), torch.linspace(0.0, 1.0, 3)

    def gradients(options):
        ys = hn.odeint(func, y0, t, options=options)
        return [ys.detach(), *torch.autograd.grad(ys.sum(), [y0, w])]

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = gradients({"compile": "fullgraph"})
    ours = [x for x in seen if issubclass(x.category, RuntimeWarning) and "compile" in str(x.message)]
    assert len(ours) == 1, [str(x.message) for x in ours]
    for a, b in zip(got, gradients(None)):
        torch.testing.assert_close(a, b, **F64)
    # y(1) = exp(-w): the gradients themselves, against the analytic ones (the eager solve's error at
    # torchdiffeq's default rtol 1e-7 bounds the difference)
    torch.testing.assert_close(got[2], -(t * torch.exp(-0.7 * t)).sum() * 3, rtol=1e-5, atol=1e-6)


def _train_step(field, y0, t, target, options, method="dopri5"):
    """One direct-backprop step: outputs, gradients (y0 when it requires grad, then the parameters),
    the field's own count and the solution's statistics."""
    field.nfe = 0
    solver, controller, _ = build_solver(method, dict(options or {}), 1e-7, 1e-9)
    sol = hn.solve(field, y0, t, solver=solver, controller=controller)
    inputs = ([y0] if y0.requires_grad else []) + list(field.parameters())
    grads = torch.autograd.grad(((sol.ys - target) ** 2).sum(), inputs)
    return sol.ys.detach(), list(grads), field.nfe, sol.stats


def _whole_graph_ran(field) -> bool:
    """Whether a whole-solve graph differentiated by autograd was built (and not given up) for ``field``."""
    graphs = compiled_step.graphs_of(field)
    return any(
        isinstance(k, tuple) and k[0] == "whole_solve" and k[-1] is True and v is not None for k, v in graphs.items()
    )


def _check_against_eager(field, y0, t, target, tol, method="dopri5"):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would not test the loop's gradients
        got = _train_step(field, y0, t, target, {"compile": "fullgraph"}, method)
    assert _whole_graph_ran(field)
    want = _train_step(field, y0, t, target, None, method)
    torch.testing.assert_close(got[0], want[0], **tol)
    assert len(got[1]) == len(want[1])
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, **tol)
    # the same steps, and the evaluations counted as the eager solve counts them (on the field too);
    # dopri8's graph builds its dense output (3 evaluations) on every attempt, and counts them, as
    # its no-grad whole-solve graph does (docs/compiled_solve.md)
    assert (got[3].n_accepted, got[3].n_rejected) == (want[3].n_accepted, want[3].n_rejected)
    extra = 3 * (got[3].n_accepted + got[3].n_rejected) if method == "dopri8" else 0
    assert got[2] == got[3].nfe
    if method != "dopri8":
        assert got[3].nfe == want[3].nfe == want[2]
    else:
        assert want[3].nfe <= got[3].nfe <= want[3].nfe + extra
    return got


@pytest.mark.slow
def test_gradients_through_the_loop_equal_eager_and_a_second_step_compiles_nothing(float64_default, one_thread):
    """float64, y0 and the parameters requiring grad, five increasing output times."""
    torch.manual_seed(0)
    field = CountingMLP()
    y0 = torch.randn(8, 2, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 5)
    target = torch.randn(5, 8, 2)
    first = _check_against_eager(field, y0, t, target, F64)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.no_grad():  # a training step changes the parameters in place: still no new graph
        for p in field.parameters():
            p.sub_(1e-3 * p)
    second = _train_step(field, y0, t, target, {"compile": "fullgraph"})
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert not torch.equal(first[0], second[0])  # the new parameters were read
    # the loop's backward is torch.compile's, first-order: a gradient recorded for a second pass is
    # refused in the first pass with the remedy, as through the per-step graphs
    solver, controller, _ = build_solver("dopri5", {"compile": "fullgraph"}, 1e-7, 1e-9)
    ys = hn.solve(field, y0, t, solver=solver, controller=controller).ys
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(ys.square().sum(), y0, create_graph=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tsit5", "bosh3", "dopri8"])
def test_the_other_whole_solve_methods_equal_eager(method, float64_default, one_thread):
    torch.manual_seed(3)
    field = CountingMLP()
    y0 = torch.randn(4, 2, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3)
    target = torch.randn(3, 4, 2)
    _check_against_eager(field, y0, t, target, F64, method)


@pytest.mark.slow
def test_float32_parameters_only_decreasing_times_equal_eager(one_thread):
    """float32, only the parameters requiring grad (the usual training case, where torch 2.13's
    ``while_loop`` backward dropped the state's gradient before the workaround), decreasing times."""
    torch.manual_seed(1)
    field = CountingMLP().float()
    y0 = torch.randn(8, 2)
    t = torch.linspace(1.5, 0.0, 4)
    target = torch.randn(4, 8, 2)
    _check_against_eager(field, y0, t, target, F32)


@pytest.mark.slow
def test_a_backward_graph_inductor_refuses_falls_back_in_the_solve_not_in_backward(
    float64_default, one_thread, monkeypatch
):
    """Inductor made to refuse the loop's backward graph (and only that graph): it is compiled with
    the forward graph, so the solve falls back to per-step graphs with one warning and the gradients
    are eager direct backprop's. Compiled lazily (AOTAutograd's default), the failure came out of
    ``torch.autograd.grad``, past any fallback."""
    import torch._inductor.compile_fx as compile_fx

    real = compile_fx.compile_fx_inner

    def refusing(gm, *args, **kwargs):
        loop = any("while_loop" in str(node.target) for node in gm.graph.nodes)
        if kwargs.get("is_backward") and loop:
            raise RuntimeError("refused for the test: the loop's backward graph")
        return real(gm, *args, **kwargs)

    monkeypatch.setattr(compile_fx, "compile_fx_inner", refusing)
    torch.manual_seed(2)
    field = CountingMLP()
    y0 = torch.randn(4, 2, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3)
    target = torch.randn(3, 4, 2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = _train_step(field, y0, t, target, {"compile": "fullgraph"})
    ours = [str(x.message) for x in seen if issubclass(x.category, RuntimeWarning) and "compile" in str(x.message)]
    assert len(ours) == 1 and "compiled steps instead" in ours[0], ours
    assert not _whole_graph_ran(field)
    want = _train_step(field, y0, t, target, None)
    torch.testing.assert_close(got[0], want[0], **F64)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("argv", [[], ["--modes", "true", "--baseline", "."], ["--modes", "loop"]])
def test_the_ab_benchmark_takes_modes_or_a_baseline(argv, capsys):
    from benchmarks import ab

    with pytest.raises(SystemExit) as stop:
        ab.main(["--workload", "mlp-train-direct", *argv])
    assert stop.value.code == 2  # argparse's usage error, before anything compiles
    assert "usage" in capsys.readouterr().err
