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
