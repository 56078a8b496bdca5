"""`hybrid-node spirals` runs on one torch thread unless --threads asks for more.

The spirals networks are 20-25 units wide: an op on a minibatch of 100 series is far too small to split
between threads, and torch's default of one thread per core only adds synchronisation. On a 2-core
machine shared with other jobs two threads made a training step 15-20 times slower in wall time and
burned more CPU time (docs/reproductions/spirals.md, "Where the time goes").
"""

import pytest
import torch

from hybrid_node.cli import main

TINY = [
    "spirals",
    "--n",
    "10",
    "--models",
    "rnn",
    "--iters",
    "0",
    "--rnn-iters",
    "1",
    "--nspiral",
    "4",
    "--ntest",
    "4",
    "--nval",
    "4",
    "--restarts",
    "1",
    "--refine-steps",
    "0",
    "--no-plots",
]


@pytest.fixture
def restore_threads():
    """Put torch's thread count back after a test that lets the command set it."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_default_is_one_thread(tmp_path, restore_threads):
    # Start from two threads, as torch's default on a 2-core machine: the command must bring it to one.
    torch.set_num_threads(2)
    assert main([*TINY, "--out", str(tmp_path / "run")]) == 0
    assert torch.get_num_threads() == 1


def test_threads_option_is_honoured(tmp_path, restore_threads):
    torch.set_num_threads(1)
    assert main([*TINY, "--threads", "2", "--out", str(tmp_path / "run")]) == 0
    assert torch.get_num_threads() == 2
