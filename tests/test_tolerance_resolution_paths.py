"""The below-resolution tolerance warning on every loop that takes a half-precision state.

A float16 or bfloat16 state with a tolerance below the dtype's unit roundoff (u = eps / 2: 4.9e-4 and
3.9e-3) cannot meet it: the eager dopri5 solve of y' = -y at rtol = 1e-5 stops with a step size
underflow. The warning comes from one place, the problem's validation, before the loop is picked, so the
per-sample, device-loop and compiled loops (whole-solve graph and per-step graph) and the adjoint's
backward tolerances give it too, once per solve, naming the fix (a larger rtol or atol, or float64).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("one_thread")

HALF = [torch.float16, torch.bfloat16]
TIMES = torch.tensor([0.0, 1e-3])  # a short span: the warning is what is tested, not the solve


def decay(t, y):
    return -y


class Decay(torch.nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.0, dtype=dtype))

    def forward(self, t, y):
        return -self.k * y


def resolution_warnings(call) -> list[str]:
    """The below-resolution warnings ``call`` gives; a solve that then fails is fine (the point of the
    warning is that it says why before the failure)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call()
        except hn.SolverError:
            pass
    return [str(w.message) for w in caught if "unit roundoff" in str(w.message)]


def assert_one_warning_naming_the_fix(messages: list[str], dtype: torch.dtype, prefix: str = "") -> None:
    assert len(messages) == 1, messages
    assert f"{prefix}rtol=1e-05 is below the unit roundoff of {dtype}" in messages[0]
    assert "or a float64 state" in messages[0] and f"Use {prefix}rtol >=" in messages[0]


PATHS = {
    "eager": lambda y0: hn.odeint(decay, y0, TIMES, rtol=1e-5, atol=1e-7),
    "per_sample": lambda y0: hn.odeint(
        decay, y0.repeat(3, 1), TIMES, rtol=1e-5, atol=1e-7, options={"per_sample": True}
    ),
    "device_loop": lambda y0: hn.odeint(decay, y0, TIMES, rtol=1e-5, atol=1e-7, options={"device_loop": True}),
}


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
def test_half_precision_below_the_roundoff_warns_once_on_each_loop(path, dtype):
    y0 = torch.tensor([1.0, 2.0], dtype=dtype)
    assert_one_warning_naming_the_fix(resolution_warnings(lambda: path(y0)), dtype)


@pytest.mark.slow  # each compiles a graph (15 to 45 s on two CPU cores)
@pytest.mark.parametrize(
    "options", [{"compile": True}, {"compile": True, "jump_t": [5e-4]}], ids=["whole-solve", "per-step"]
)
def test_half_precision_below_the_roundoff_warns_once_when_compiled(options):
    # jump_t rules the whole-solve graph out (hybrid_node.loop.whole.applies): the per-step graph runs
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float16)
    messages = resolution_warnings(lambda: hn.odeint(decay, y0, TIMES, rtol=1e-5, atol=1e-7, options=options))
    assert_one_warning_naming_the_fix(messages, torch.float16)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("method", [None, "bosh3"], ids=["forward-method", "own-method"])
def test_half_precision_adjoint_tolerances_below_the_roundoff_warn_once(dtype, method):
    # the forward tolerances (1e-2) are fine; the backward ones are not, with or without an own method
    y0 = torch.tensor([1.0, 2.0], dtype=dtype)

    def call():
        field = Decay(dtype)
        ys = hn.odeint_adjoint(
            field, y0, TIMES, rtol=1e-2, atol=1e-2, adjoint_rtol=1e-5, adjoint_atol=1e-7, adjoint_method=method
        )
        ys[-1].sum().backward()

    assert_one_warning_naming_the_fix(resolution_warnings(call), dtype, "adjoint_")


class HalfGBM(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return 0.1 * y


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_adaptive_sde_tolerances_below_the_roundoff_warn_once(dtype):
    y0 = torch.tensor([[1.0, 2.0]], dtype=dtype)
    forward = resolution_warnings(
        lambda: hn.sdeint(HalfGBM(), y0, [0.0, 0.1], method="milstein", adaptive=True, dt=0.05, rtol=1e-5, atol=1e-7)
    )
    assert_one_warning_naming_the_fix(forward, dtype)

    def adjoint():
        ys = hn.sdeint_adjoint(
            HalfGBM(), y0.clone().requires_grad_(), [0.0, 0.1], method="milstein", dt=0.05,
            adjoint_adaptive=True, adjoint_rtol=1e-5, adjoint_atol=1e-7,
        )  # fmt: skip
        ys[-1].sum().backward()

    assert_one_warning_naming_the_fix(resolution_warnings(adjoint), dtype, "adjoint_")


QUIET = {
    "eager": (False, None),
    "per_sample": (True, {"per_sample": True}),
    "device_loop": (False, {"device_loop": True}),
}


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize(("batched", "options"), list(QUIET.values()), ids=list(QUIET))
def test_half_precision_tolerances_it_resolves_are_quiet(dtype, batched, options):
    # rtol = 1e-2 is above both dtypes' unit roundoff: no warning on any loop
    y0 = torch.tensor([1.0, 2.0], dtype=dtype)
    state = y0.repeat(3, 1) if batched else y0
    assert resolution_warnings(lambda: hn.odeint(decay, state, TIMES, rtol=1e-2, atol=1e-3, options=options)) == []
