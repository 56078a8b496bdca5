"""``torch.export.export(..., strict=True)`` of an ``ODEBlock``: Dynamo traces the block's input checks
and the solve's set-up, which must hold no construct it refuses, while the same checks still raise
eagerly.

Before, strict export stopped at ``is_batched`` (functorch's ``is_functorch_wrapped_tensor``), then at
numpy's ``iscomplexobj`` in the controller's number check and the memo's ``threading.Lock``, all with
"Attempted to call function marked as skipped" or "Unsupported context manager"; output times given
to the block's forward failed strict and non-strict with ``GuardOnDataDependentSymNode`` (their
finiteness and monotonicity read on the host).
"""

import copy

import numpy as np
import pytest
import torch

import hybrid_node as hn
from hybrid_node import _memo
from hybrid_node.controllers import PIDController


def _block(method: str, dtype: torch.dtype, **kwargs) -> hn.nn.ODEBlock:
    """A small MLP block over (0, 1), at tolerances where a different step sequence moves the outputs
    far more than one rounding."""
    torch.manual_seed(0)
    # rk4's fixed steps take no tolerances (SolveSettings refuses them)
    tolerances = {} if method == "rk4" else {"rtol": 1e-6, "atol": 1e-8}
    options = {"step_size": 0.1} if method == "rk4" else None
    settings = hn.nn.SolveSettings(method=method, options=options, **tolerances)
    return hn.nn.ODEBlock(hn.nn.MLPDynamics(2, 16), train_settings=settings, **kwargs).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4"])
def test_a_strictly_exported_block_gives_the_eager_outputs(method, dtype, one_thread):
    """Strict export of an ``ODEBlock`` traces, and the program returns the eager block's outputs for
    the example input and a new one (measured: bit for bit, 7-13 s per export on one core).
    Tolerance: 4 ulps of the dtype at outputs of order 1, room for a reordered sum in the program; an
    error ratio computed otherwise (another step sequence) moves them by about the local tolerance,
    1e-6, far above it in float64 and a few ulps above it in float32."""
    block = _block(method, dtype)
    x = torch.randn(4, 2, dtype=dtype)
    tol = 4 * torch.finfo(dtype).eps
    with torch.no_grad():
        program = torch.export.export(block, (x,), strict=True)
        for inputs in (x, torch.randn(4, 2, dtype=dtype)):
            out = program.module()(inputs)
            assert out.dtype == dtype
            torch.testing.assert_close(out, block(inputs), rtol=0.0, atol=tol)


# each export 4-12 s on one core (under the 20 s of a slow test); the non-strict one is the slow
# suite's (test_export_probe.py covers non-strict export in the default run)
@pytest.mark.parametrize("strict", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_output_times_given_to_an_exported_block_are_checked_when_it_runs(strict, one_thread):
    """Times handed to an exported block's forward are traced without values: their checks run in the
    program (before, the export failed on reading them). Good times, increasing or decreasing, give
    the eager trajectory (tolerance: float32 rounding of states of order 1, measured 1.9e-9); repeated
    times raise when the program runs."""
    block = _block("dopri5", torch.float32, return_trajectory=True)
    x, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 3)
    with torch.no_grad():
        program = torch.export.export(block, (x, t), strict=strict)
        for times in (t, torch.linspace(1.0, 0.0, 3)):
            torch.testing.assert_close(program.module()(x, times), block(x, times), rtol=0.0, atol=2.4e-7)
        with pytest.raises(RuntimeError, match="finite and strictly increasing or strictly decreasing"):
            program.module()(x, torch.tensor([0.0, 0.0, 1.0]))


@pytest.mark.parametrize(
    ("times", "message"),
    [((0.0, float("nan")), "finite times"), ((0.0, 1.0, 1.0), "strictly increasing or strictly decreasing")],
)
def test_bad_output_times_still_raise_eagerly(times, message):
    """The checks that a traced forward hands to the program still raise, with the values, eagerly."""
    block = _block("dopri5", torch.float32)
    with pytest.raises(ValueError, match=message):
        block(torch.randn(4, 2), torch.tensor(times))
    with pytest.raises(ValueError, match=message):
        hn.nn.ODEBlock(hn.nn.MLPDynamics(2, 16), times)


@pytest.mark.parametrize("value", [np.complex128(1e-3), np.array([1e-3 + 0j]), 1e-3 + 0j])
def test_complex_controller_settings_are_still_refused(value):
    """The controller's number check (here of ``safety``) asks numpy only about numpy values now; complex ones
    of every kind are refused as before."""
    with pytest.raises(ValueError, match="must be one real number"):
        PIDController(rtol=1e-6, atol=1e-6, safety=value)


def test_the_memo_still_keeps_what_it_built_eagerly():
    """Outside a trace a miss builds once and the next call gets the kept object (inside Dynamo's
    trace it builds without keeping)."""
    cache: dict = {}
    built = []
    first = _memo.memoized(cache, "k", lambda: built.append(1) or object(), 4)
    assert _memo.memoized(cache, "k", lambda: built.append(1) or object(), 4) is first
    assert built == [1]


def test_batched_block_times_are_still_refused_under_vmap_and_its_torch_compile():
    """The check of the block's buffer ``t`` against ``vmap`` is skipped only inside Dynamo's own trace
    (which hands the code no functorch wrappers); ``vmap`` eagerly and ``torch.compile`` of a ``vmap``
    (whose body torch runs outside Dynamo) still refuse stacked times with the fix named."""
    torch.manual_seed(0)
    blocks = [hn.nn.ODEBlock(hn.nn.MLPDynamics(2, 8)) for _ in range(2)]
    params, buffers = torch.func.stack_module_state(blocks)
    base = copy.deepcopy(blocks[0]).to("meta")

    def one(p, b, x):
        return torch.func.functional_call(base, (p, b), (x,))

    batched = torch.func.vmap(one, in_dims=(0, 0, None))
    with torch.no_grad():
        for run in (batched, torch.compile(batched)):
            with pytest.raises(ValueError, match="batched by vmap"):
                run(params, buffers, torch.randn(4, 2))


class _CastsAnAutocastResult(torch.nn.Module):
    """No solve: a linear layer under bfloat16 autocast, its output cast back to float32."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.linear(x)
        return y.to(torch.float32) * 2


def test_torch_strict_export_still_builds_casts_of_autocast_results_wrong():
    """Why the library refuses strict export under autocast: torch 2.13's strict export of this module,
    without any solve, fails when its program runs (non-strict gives the eager output). Should this test
    fail, torch has fixed it and the refusal in ``_autocast.traced_field_autocast`` can go."""
    model, x = _CastsAnAutocastResult(), torch.randn(3, 2)
    with torch.no_grad():
        assert torch.equal(torch.export.export(model, (x,)).module()(x), model(x))
        program = torch.export.export(model, (x,), strict=True)
        with pytest.raises(RuntimeError, match="Tensor dtype mismatch"):
            program.module()(x)


def test_a_strict_export_of_a_solve_under_autocast_is_refused_with_the_fix():
    """A model solving under ``torch.autocast`` exported strictly: refused while it traces, with the
    library's message naming the fix (Dynamo wraps it in its "Observed exception", a RuntimeError);
    before, the export succeeded and the program failed when run with torch's "Tensor dtype mismatch"."""
    torch.manual_seed(0)
    block = _block("rk4", torch.float32)

    class Autocast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = block

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.block(x)

    with torch.no_grad(), pytest.raises(RuntimeError, match=r"under torch.autocast is not supported.*strict=False"):
        torch.export.export(Autocast(), (torch.randn(4, 2),), strict=True)


def test_a_failed_solve_in_a_strictly_exported_program_raises(one_thread):
    """The traced loop's final status check survives strict export: a solve that runs out of steps
    raises when the program runs instead of returning unfinished states."""
    torch.manual_seed(0)
    settings = hn.nn.SolveSettings(method="dopri5", rtol=1e-10, atol=1e-12, options={"max_num_steps": 3})
    block = hn.nn.ODEBlock(hn.nn.MLPDynamics(2, 8), train_settings=settings)
    x = torch.randn(4, 2)
    with torch.no_grad():
        program = torch.export.export(block, (x,), strict=True)
        with pytest.raises(RuntimeError, match="the traced adaptive solve failed"):
            program.module()(x)
