"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture
def float64_default():
    """Make float64 the default dtype for one test, and restore the previous default after it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: many tiny solves only pay thread-pool overhead for more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
