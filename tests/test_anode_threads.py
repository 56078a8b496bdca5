"""`hybrid-node anode` runs on one torch thread, like the other small-network experiments.

Its MLPs are 32 units wide: on a 2-core machine torch's default of two threads made a 30-step
``anode --quick --iters 30`` take 21.6 s instead of 10.1 s (wall and CPU alike).
"""

import pytest
import torch

from hybrid_node.cli import main


@pytest.fixture
def restore_threads():
    """Put torch's thread count back after a test that lets the command set it."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_anode_runs_on_one_thread(tmp_path, restore_threads):
    torch.set_num_threads(2)  # torch's default on a 2-core machine
    args = ["anode", "--tasks", "g1d", "--iters", "1", "--hidden", "4", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert torch.get_num_threads() == 1
