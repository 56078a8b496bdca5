"""benchmarks/torchdiffeq_suite.py: torchdiffeq's own tests run against hybrid_node through a shim.

The full run needs a local copy of torchdiffeq's ``tests/`` folder (nothing is fetched): point
``TORCHDIFFEQ_TESTS`` at it and run ``pytest -m slow tests/test_torchdiffeq_suite.py -s``. The fast test
checks the harness itself on a two-function stand-in written here (not torchdiffeq's code).
"""

import os
import textwrap

import pytest

from benchmarks import torchdiffeq_suite

_STANDIN = """
import unittest

import torch
import torchdiffeq


class TestStandIn(unittest.TestCase):
    def test_exponential(self):
        for method in ("dopri5", "rk4", "no_such_method"):
            with self.subTest(method=method):
                t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
                y = torchdiffeq.odeint(lambda t, y: -y, torch.ones(1, dtype=torch.float64), t, method=method,
                                       options={"step_size": 0.01} if method == "rk4" else None)
                self.assertLess(float((y[-1] - torch.exp(torch.tensor(-1.0))).abs()), 1e-4)

    def test_is_the_shim(self):
        self.assertTrue(torchdiffeq.HYBRID_NODE_SHIM)
        import hybrid_node

        self.assertIs(torchdiffeq.odeint, hybrid_node.odeint)
        self.assertIs(torchdiffeq.odeint_adjoint, hybrid_node.odeint_adjoint)
"""


def test_harness_counts_functions_and_subtests_through_the_shim(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "standin_tests.py").write_text(textwrap.dedent(_STANDIN))
    (tests / "helpers.py").write_text("X = 1\n")  # not a *_tests.py file: not collected
    result, info = torchdiffeq_suite.run_suite(tests, timeout=60, workdir=tmp_path / "work", log=tmp_path / "log")
    assert torchdiffeq_suite.check(result, info) == []
    counts = result["counts"]
    assert dict(counts["functions"]) == {"passed": 1, "failed": 1}
    assert dict(counts["subtests"]) == {"passed": 2, "failed": 1}
    (failure,) = result["failures"]
    assert failure["kind"] == "subtest" and failure["params"] == {"method": "'no_such_method'"}
    assert info["torchdiffeq_names_used"] == {
        "HYBRID_NODE_SHIM": ["standin_tests.py"],
        "odeint": ["standin_tests.py"],
        "odeint_adjoint": ["standin_tests.py"],
    }
    assert "HYBRID_NODE_SHIM" in info["not_applicable"]
    report = torchdiffeq_suite.format_failures(result, "t")
    assert "1 failures in 1 groups" in report and "method='no_such_method'" in report
    table = torchdiffeq_suite.format_table(result, "t")
    assert "standin_tests.py::TestStandIn::test_exponential" in table


@pytest.mark.slow
def test_torchdiffeq_suite(tmp_path):
    tests = os.environ.get("TORCHDIFFEQ_TESTS")
    if not tests:
        pytest.skip("set TORCHDIFFEQ_TESTS to a local copy of torchdiffeq's tests/ folder to run its suite")
    result, info = torchdiffeq_suite.run_suite(tests, workdir=tmp_path / "work", log=tmp_path / "pytest.log")
    print()
    print(torchdiffeq_suite.format_table(result, torchdiffeq_suite.title_of(result, info)))
    (tmp_path / "failures.md").write_text(torchdiffeq_suite.format_failures(result, "torchdiffeq suite"))
    print(f"failures: {tmp_path / 'failures.md'}")
    assert torchdiffeq_suite.check(result, info) == []
    # the harness ran the suite; whether every torchdiffeq test passes is tracked in docs/torchdiffeq_suite.md
    assert sum(result["counts"]["functions"].values()) > 0
    if os.environ.get("TORCHDIFFEQ_SUITE_STRICT"):
        assert result["counts"]["functions"]["failed"] == 0 and result["counts"]["subtests"]["failed"] == 0


def test_import_scan_stops_at_the_end_of_the_import(tmp_path):
    # the list pattern took any run of whitespace, so it read on past the line into the next ones:
    # "import", "torch", "def", "test_a" and "as" were reported as torchdiffeq names
    source = textwrap.dedent(
        """
        from torchdiffeq import odeint
        import torch
        from torchdiffeq import odeint_adjoint as adjoint, odeint_event
        def test_a():
            pass
        from torchdiffeq._impl.misc import (  # helpers
            _rms_norm,
            _mixed_norm as mixed,
        )
        from torchdiffeq import \\
            odeint_dense
        x = 1
        """
    )
    path = tmp_path / "scan_tests.py"
    path.write_text(source)
    names = torchdiffeq_suite.scan_torchdiffeq_names([path])
    assert sorted(names) == [
        "_impl.misc",  # the submodule, read from "torchdiffeq._impl.misc"
        "_impl.misc._mixed_norm",
        "_impl.misc._rms_norm",
        "odeint",
        "odeint_adjoint",
        "odeint_dense",
        "odeint_event",
    ]
    assert torchdiffeq_suite.scan_from_imports(
        "from torchsde import sdeint as s, BrownianInterval\nimport torch\n", "torchsde"
    ) == [
        "sdeint",
        "BrownianInterval",
    ]
