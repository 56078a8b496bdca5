"""Fixtures shared by several test modules."""

import contextlib
import os
import signal

import pytest
import torch


def pytest_configure(config):
    """Under pytest-xdist, one torch thread per worker: the workers already fill the cores, and torch's
    own pool on top of them would oversubscribe (spinning threads make every worker slower).

    ``compile=True`` compiles in the test process unless a test names another compiler: the tests of
    compiled graphs compare what the compiled kernels compute, which the default compiler would run
    only from a graph's second solve on (tests/test_compile_background.py tests the worker).
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    os.environ.setdefault("HYBRID_NODE_COMPILER", "in_process")


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


@pytest.fixture
def tiny_mnist(tmp_path):
    """A folder of MNIST-format IDX files: 48 training and 16 test images (``test_mnist_loader.make_folder``)."""
    from test_mnist_loader import make_folder  # a test module: imported only where the fixture is used

    return make_folder(tmp_path, 48, 16)


class TimeMLP(torch.nn.Module):
    """A small time-dependent MLP field, f(t, y) = MLP(y) cos(t)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


class CountingMLP(TimeMLP):
    """:class:`TimeMLP`, counting its calls as many user fields do (``self.nfe += 1``)."""

    def __init__(self):
        super().__init__()
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return super().forward(t, y)


@pytest.fixture
def time_mlp(float64_default, one_thread):
    """A seeded :class:`TimeMLP` in float64 on one thread."""
    torch.manual_seed(0)
    return TimeMLP()


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail with TimeoutError when the block runs longer than ``seconds``: a solve that hangs or creeps
    fails its test instead of stalling the suite (SIGALRM, main thread only)."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the solve hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def scipy_lsoda_steps(fun, jac, y0, t1, rtol, atol) -> int:
    """The steps scipy's LSODA takes from t = 0 to ``t1`` (its internal steps, one per ``step()`` call)."""
    import numpy as np
    from scipy.integrate import LSODA

    solver = LSODA(fun, 0.0, np.asarray(y0, dtype=float), t1, rtol=rtol, atol=atol, jac=jac)
    n = 0
    while solver.status == "running":
        solver.step()
        n += 1
    assert solver.status == "finished"
    return n
