"""benchmarks/torchsde_suite.py: torchsde's own tests run against hybrid_node through a shim.

The full run needs a local copy of torchsde's ``tests/`` folder (nothing is fetched): point
``TORCHSDE_TESTS`` at it and run ``pytest -m slow tests/test_torchsde_suite.py -s``. The fast test checks
the harness itself on a stand-in folder written here (not torchsde's code).
"""

import os
import textwrap

import pytest

from benchmarks import torchsde_suite
from benchmarks.torchdiffeq_suite import format_failures

_STANDIN = """
import sys

sys.path = sys.path[1:]  # as torchsde's test files do

import pytest
import torch
import torchsde
from torchsde.settings import NOISE_TYPES

from . import helpers


@pytest.mark.parametrize("method", ["euler", "no_such_method"])
def test_runs(method):
    sde = helpers.Decay()
    ys = torchsde.sdeint(sde, torch.ones(2, 1), [0.0, 0.5], method=method, dt=0.1)
    assert ys.shape == (2, 2, 1)


def test_is_the_shim():
    import hybrid_node

    assert torchsde.HYBRID_NODE_SHIM and NOISE_TYPES.diagonal == "diagonal"
    assert torchsde.sdeint is hybrid_node.sdeint
"""

_HELPERS = """
import torch
from torchsde import SDEIto


class Decay(SDEIto):
    def __init__(self):
        super().__init__(noise_type="diagonal")

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)
"""

_PRIVATE = """
from torchsde._brownian import brownian_interval


def test_private():
    assert brownian_interval
"""


def test_harness_counts_tests_through_the_shim(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "__init__.py").write_text("")
    (tests / "helpers.py").write_text(textwrap.dedent(_HELPERS))  # not a test_*.py file: not collected
    (tests / "test_standin.py").write_text(textwrap.dedent(_STANDIN))
    (tests / "test_private.py").write_text(textwrap.dedent(_PRIVATE))
    result, info = torchsde_suite.run_suite(tests, timeout=60, workdir=tmp_path / "work", log=tmp_path / "log")
    assert torchsde_suite.check(result, info) == []
    assert dict(result["counts"]["functions"]) == {"passed": 2, "failed": 1}
    (failure,) = result["failures"]
    assert failure["nodeid"] == "tests/test_standin.py::test_runs[no_such_method]"
    assert "unknown SDE method" in failure["message"]
    # the shim serves SDEIto from hybrid_node (which exports it), ReverseBrownian and settings from
    # hybrid_node.sde; the file reaching into _brownian is not run
    assert info["shim_names"]["SDEIto"] == "hybrid_node" and info["shim_names"]["ReverseBrownian"] == "hybrid_node.sde"
    assert "settings" in info["shim_modules"]
    assert info["excluded_files"] == ["test_private.py"]
    assert info["not_public_api"] == {
        "_brownian": ["test_private.py"],
        "_brownian.brownian_interval": ["test_private.py"],
    }
    assert info["torchsde_names_used"]["settings.NOISE_TYPES"] == ["test_standin.py"]
    report = format_failures(result, "t")
    assert "1 failures in 1 groups" in report and "no_such_method" in report
    assert "not run (reaches into torchsde's private modules): test_private.py" in torchsde_suite.format_names(info)


@pytest.mark.slow
def test_torchsde_suite(tmp_path):
    tests = os.environ.get("TORCHSDE_TESTS")
    if not tests:
        pytest.skip("set TORCHSDE_TESTS to a local copy of torchsde's tests/ folder to run its suite")
    result, info = torchsde_suite.run_suite(tests, workdir=tmp_path / "work", log=tmp_path / "pytest.log")
    print()
    print(torchsde_suite.format_table(result, torchsde_suite.title_of(result, info)))
    print(torchsde_suite.format_names(info))
    (tmp_path / "failures.md").write_text(format_failures(result, "torchsde suite"))  # the harnesses share it
    print(f"failures: {tmp_path / 'failures.md'}")
    assert torchsde_suite.check(result, info) == []
    # the harness ran the suite; whether every torchsde test passes is tracked in docs/torchsde_suite.md
    assert sum(result["counts"]["functions"].values()) > 0
    if os.environ.get("TORCHSDE_SUITE_STRICT"):
        assert result["counts"]["functions"]["failed"] == 0
