"""The benchmark adapters' evaluation counts (benchmarks/frameworks.py)."""

import pytest

from benchmarks import frameworks, workloads


@pytest.mark.parametrize("name", ["mlp-fwd", "mlp-train-direct", "mlp-train-adjoint"])
def test_solution_count_equals_the_fields_own_counter(one_thread, name):
    """The count that the compiled adapter reports (the solution's forward + backward evaluations)
    is the one the field's own counter gives for an eager run of the same unit of work."""
    w = workloads.make(name)
    run = frameworks.prepare_hybrid_node(w)
    w.field.nfe = 0
    run()
    counted = w.field.nfe
    assert counted > 0
    assert frameworks._solution_nfe(w, {}) == counted


@pytest.mark.parametrize("name", ["mlp-fwd", "mlp-train-adjoint"])
def test_ab_units_run_the_workload_on_their_own_copy_of_the_field(one_thread, name):
    """benchmarks/ab.py: each unit solves the workload as the benchmark adapter does, on a copy of
    the field (so two packages never share gradients or counters)."""
    import torch

    import hybrid_node
    from benchmarks import ab

    w = workloads.make(name)
    ys = ab.unit(w, hybrid_node, None)()
    assert all(p.grad is None for p in w.field.parameters())  # the backward pass went to the copy
    reference = frameworks.prepare_hybrid_node(w)()
    torch.testing.assert_close(ys.detach(), reference.detach(), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("field", ["own", "linear"])
def test_first_call_measures_a_new_process_with_an_empty_cache(monkeypatch, field):
    """benchmarks/first_call.py: the workload (or the same with a linear field) compiles in a process
    of its own whose Inductor cache starts empty (so the first call compiles and the second does
    not), and the cache is removed."""
    import tempfile
    from pathlib import Path

    from benchmarks import first_call

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the measuring process imports benchmarks
    before = set(Path(tempfile.gettempdir()).glob("hn_first_call_*"))
    r = first_call.first_call("mlp-fwd", field, "in_process")
    assert r["first_s"] > 1.0 and 0 < r["second_ms"] < 1e3 * r["first_s"] / 10
    assert set(Path(tempfile.gettempdir()).glob("hn_first_call_*")) == before
