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
