"""Edge cases of options={"compile": True} (the whole-solve graph) against the eager solve of the same problem."""

import shutil

import pytest
import torch
from conftest import TimeMLP

import hybrid_node as hn

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None,
    reason="torch.compile needs a C++ compiler for CPU tensors",
)


class CallbackMLP(TimeMLP):
    """:class:`TimeMLP` recording torchdiffeq's step callbacks, forward and adjoint, as (name, t0, dt)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, float, float]] = []

    def _record(self, name, t0, dt):
        self.calls.append((name, float(t0), float(dt)))

    def callback_step(self, t0, y0, dt):
        self._record("step", t0, dt)

    def callback_accept_step(self, t0, y0, dt):
        self._record("accept", t0, dt)

    def callback_reject_step(self, t0, y0, dt):
        self._record("reject", t0, dt)

    def callback_step_adjoint(self, t0, y0, dt):
        self._record("step_adjoint", t0, dt)


def test_step_callbacks_are_called_with_compile_as_eagerly(float64_default, one_thread):
    """The whole-solve graph has no host between attempts: a field with step callbacks had them
    silently skipped (0 calls against eager's 3 per attempt, forward, and 0 adjoint callbacks in the
    backsolve adjoint's backward pass against eager's one per attempt). Such a solve now runs the
    host loop with per-step graphs, which calls them."""
    torch.manual_seed(0)
    field = CallbackMLP()
    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 4)

    def calls(compile: bool) -> list:
        field.calls.clear()
        with torch.no_grad():
            hn.odeint(field, y0, t, rtol=1e-6, atol=1e-8, options={"compile": compile})
        x = y0.clone().requires_grad_(True)
        hn.odeint_adjoint(field, x, t, rtol=1e-6, atol=1e-8, options={"compile": compile}).sum().backward()
        return list(field.calls)

    eager, fast = calls(False), calls(True)
    assert any(name == "step_adjoint" for name, _, _ in eager) and any(name == "accept" for name, _, _ in eager)
    assert [name for name, _, _ in fast] == [name for name, _, _ in eager]
    # the same step decisions; each step comes from the error estimate, a difference of close numbers
    # (of the adjoint's small parameter cotangents too), so the compiled kernels' float64 rounding
    # reaches the steps amplified and carried on (1.1e-9 relative seen); the names above are exact
    torch.testing.assert_close([c[1:] for c in fast], [c[1:] for c in eager], rtol=1e-6, atol=1e-12)
