"""The error test of half-precision states (float16, bfloat16) runs in float32.

In float16, ``atol = 1e-9`` rounds to 0 (the smallest subnormal is 6e-8), ``error / scale`` overflows
beyond 65504 and so does the RMS norm's sum of squares: a solve whose tolerances were only too tight
for the dtype failed as if the state had become NaN. The references here are the error-norm formula
of Hairer, Nørsett & Wanner (Solving ODEs I, 2nd ed., II.4) evaluated in float64 by the test itself,
exact solutions of linear problems, and the float32/float64 paths, which must stay bit for bit as
they were.
"""

import math
import warnings

import pytest
import torch

import hybrid_node as hn
from hybrid_node.controllers import ErrorPair, error_precision, error_ratio_tensor, initial_step, rms_norm
from hybrid_node.loop.graph_inputs import tolerance_tensor
from hybrid_node.loop.whole import initial_step_tensor

F16, BF16 = torch.float16, torch.bfloat16


def _formula(error, y0, y1, rtol, atol, dtype=torch.float64):
    """``rms(error / (atol + rtol max(|y0|, |y1|)))`` in ``dtype``, a component with zero error counting 0."""
    e, a, b = (x.to(dtype) for x in (error, y0, y1))
    scale = atol + rtol * torch.maximum(a.abs(), b.abs())
    r = torch.where(e == 0, torch.zeros_like(e), e / scale)
    return torch.linalg.vector_norm(r) / math.sqrt(r.numel())


def _half_inputs(dtype):
    """A step of 1000 elements with errors ~1e-3 on a state ~1, some elements exactly 0 (y and error)."""
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(1000, generator=g)
    y0[:100] = 0
    y1 = y0 * 0.99
    error = 1e-3 * torch.randn(1000, generator=g)
    error[:100] = 0
    return error.to(dtype), y0.to(dtype), y1.to(dtype)


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_half_error_ratio_is_the_float64_formula(dtype):
    """rtol 1e-7, atol 1e-9: each ratio is ~1e4 (its square overflows float16) and the zero elements'
    scale is atol alone, 0 in float16 (0 / 0 was NaN). In float32 the inputs, exactly representable
    halves, give the float64 formula's value to float32 rounding: 1e-5 relative bounds a sum of 1000
    squares (n u_32 = 6e-5 worst case; pairwise summation and random signs keep it far below)."""
    error, y0, y1 = _half_inputs(dtype)
    ratio = error_ratio_tensor(error, y0, y1, 1e-7, 1e-9, rms_norm)
    assert ratio.dtype == torch.float32
    expected = _formula(error, y0, y1, 1e-7, 1e-9)
    assert float(expected) > 1e3  # the ratio float16 cannot hold
    torch.testing.assert_close(ratio.double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_half_error_pair_and_tensor_tolerances(dtype):
    """DOP853's pair and graph-input tolerances (tensors) of a half state: finite, the formula's values."""
    error, y0, y1 = _half_inputs(dtype)
    rtol, atol = tolerance_tensor(1e-7, y0), tolerance_tensor(1e-9, y0, 1)
    assert rtol.dtype == atol.dtype == torch.float32  # 1e-9 as float16 was 0
    assert float(atol) == pytest.approx(1e-9, rel=1e-6)
    high = error_ratio_tensor(error, y0, y1, rtol, atol, rms_norm)
    torch.testing.assert_close(high.double(), _formula(error, y0, y1, 1e-7, 1e-9), rtol=1e-5, atol=0)
    pair = error_ratio_tensor(ErrorPair(error, 2 * error), y0, y1, rtol, atol, rms_norm)
    h, lo = _formula(error, y0, y1, 1e-7, 1e-9), _formula(2 * error.double(), y0, y1, 1e-7, 1e-9)
    torch.testing.assert_close(pair.double(), h * h / (h * h + 0.01 * lo * lo).sqrt(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tolerances", ["floats", "tensors"])
def test_single_and_double_error_ratio_unchanged_bit_for_bit(dtype, tolerances):
    """float32 and float64 states keep their dtype and their operations: the ratio equals, bit for bit,
    the formula evaluated in the state's dtype in the same order (max, times rtol, plus atol, divide,
    norm), and the state passes through the half-precision upcast uncopied."""
    error, y0, y1 = (x.to(dtype) for x in _half_inputs(torch.float64))
    error[:100] = 1e-4  # no zero errors: the formula's masking plays no part
    rtol, atol = (1e-7, 1e-9) if tolerances == "floats" else (tolerance_tensor(1e-7, y0), tolerance_tensor(1e-9, y0, 1))
    assert error_precision(y0) is y0
    ratio = error_ratio_tensor(error, y0, y1, rtol, atol, rms_norm)
    scale = torch.maximum(y0.abs(), y1.abs()) * rtol + atol
    expected = torch.linalg.vector_norm(error / scale) / math.sqrt(error.numel())
    assert ratio.dtype == dtype
    assert torch.equal(ratio, expected)


def _host_initial_step(field, y0, rtol, atol):
    return initial_step(field, 0.0, y0, field(0.0, y0), 4, rtol, atol, rms_norm)


def _tensor_initial_step(field, y0, rtol, atol):
    t0 = torch.tensor(0.0, dtype=torch.float64)
    return float(initial_step_tensor(field, t0, y0, field(t0, y0), 4, rtol, atol, rms_norm))


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("first_step", [_host_initial_step, _tensor_initial_step], ids=["host", "tensor"])
def test_half_initial_step_is_hairers(dtype, first_step):
    """Hairer's first step for y' = -y has a closed form: d0 = d1 (f0 = -y0), so h0 = 0.01, and
    f(h0) - f0 = 0.01 y0 gives d2 = d0; the step is (0.01 / d0)^(1/5) (< 100 h0). The half state's f1
    rounds 0.99 y0 to u = 2^-11 (float16) or 2^-8 (bfloat16) relative, so d2 is within u / 0.01
    (5 %, 39 %) of d0 and the step within a fifth of that (1 %, 8 %): 2 % and 10 % bound it. In float16
    the scale 1e-7 |y0| and atol 1e-9 rounded to subnormals or 0 and the step fell back to 1e-9. The
    host loop's heuristic and the traced loops' tensor form (vmap, export) give the same step."""
    y0 = torch.tensor([1.0, -0.5, 2.0, 0.0, 0.25])
    rtol, atol = 1e-7, 1e-9
    d0 = float(_formula(y0, y0, y0, rtol, atol))
    expected = (0.01 / d0) ** 0.2
    h = first_step(lambda t, y: -y, y0.to(dtype), rtol, atol)
    assert h == pytest.approx(expected, rel=0.02 if dtype == F16 else 0.1)


def _network():
    """A tanh layer y' = tanh(y W) on a (8, 16) state with four columns exactly 0."""
    torch.manual_seed(0)
    w = torch.randn(16, 16) * 0.3

    def field(t, y):
        return torch.tanh(y @ w.to(y.dtype))

    y0 = torch.randn(8, 16)
    y0[:, :4] = 0
    return field, y0


LOOPS = {"host": {}, "per_sample": {"per_sample": True}, "device_loop": {"device_loop": True}}


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("loop", list(LOOPS))
def test_half_tight_tolerances_fail_as_too_tight(dtype, loop):
    """rtol 1e-7 / atol 1e-9 (the LatentODE defaults) on a half state: the steps shrink to the time's
    resolution and the solve fails with a step size underflow whose advice names tolerances too tight
    for the dtype, not with "the state became NaN" (float16's 0 / 0 in the error ratio)."""
    field, y0 = _network()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the tolerance-below-roundoff warning, tested elsewhere
        with pytest.raises(hn.SolverError) as info:
            hn.odeint(field, y0.to(dtype), torch.linspace(0, 1, 5), rtol=1e-7, atol=1e-9, options=LOOPS[loop])
    message = str(info.value)
    assert "step size fell below the minimum" in message
    assert "tolerances too tight for the dtype" in message
    assert "NaN" not in message


def _linear():
    """y' = A y (A: a rotation with decay) and its exact solution y0 exp(A^T t) row by row, in float64."""
    torch.manual_seed(1)
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=torch.float64)
    y0 = torch.randn(6, 2, dtype=torch.float64)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(a.T * s) for s in t])

    def field(s, y):
        return y @ a.T.to(y.dtype)

    return field, y0, t, exact


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("loop", list(LOOPS))
def test_half_sensible_tolerances_match_exact(dtype, loop):
    """rtol = atol = 1e-3 is above float16's unit roundoff (4.9e-4). The tolerance alone costs 2.2e-3
    (a float32 solve at the same tolerances, measured), and rounding the state (|y| <= 1.53) costs
    about one ulp there, 9.8e-4 in float16: 5e-3 bounds the sum with room (measured 1.0e-3 to 3.4e-3
    over the loops). bfloat16's ulp at 1.5 is 7.8e-3 and its u (3.9e-3) is above the tolerance, so
    its steps round by up to that: 2.5e-2, about three ulps, bounds it (measured 7.7e-3 to 1.2e-2)."""
    field, y0, t, exact = _linear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # bfloat16's rtol is below its unit roundoff
        ys = hn.odeint(field, y0.to(dtype), t.float(), rtol=1e-3, atol=1e-3, options=LOOPS[loop])
    assert ys.dtype == dtype
    bound = 5e-3 if dtype == F16 else 2.5e-2
    assert float((ys.double() - exact).abs().max()) < bound


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_half_tensor_tolerances_keep_their_values(dtype):
    """Per-component tolerance tensors of a half state are held in float32, as the error test takes
    them (float16 rounded atol 1e-9 to 0 and rtol 1e-7 to a subnormal 20 % off), so a solve with them
    takes the same steps to the same result, bit for bit, as with the equal float tolerances."""
    from hybrid_node._problem import _tolerance

    y0 = torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=dtype)
    atol = _tolerance(torch.full((4,), 1e-9), None, y0, "atol")
    assert atol.dtype == torch.float32
    assert torch.equal(atol, torch.full((4,), 1e-9))

    def field(t, y):
        return -y

    t = torch.linspace(0, 1, 3)
    warnings.simplefilter("ignore", UserWarning)  # bfloat16's u (3.9e-3) is above rtol (pytest restores filters)
    floats = hn.solve(field, y0, t, controller=hn.PIDController(rtol=1e-3, atol=1e-5), throw=False)
    tensors = hn.solve(
        field, y0, t, controller=hn.PIDController(rtol=torch.full((4,), 1e-3), atol=torch.full((4,), 1e-5)), throw=False
    )
    assert floats.status == tensors.status == hn.Status.SUCCESS
    assert torch.equal(floats.ys, tensors.ys)
    assert floats.stats.n_accepted == tensors.stats.n_accepted


@pytest.mark.parametrize("method", ["adams"])  # bdf: torch has no float16 LU on the CPU
def test_half_multistep_tight_tolerances_fail_as_too_tight(method):
    """The Nordsieck methods weigh their corrector test and error estimates by atol + rtol |y|, which in
    float16 rounded to 0 at atol 1e-9 (NaN norms): adams failed as a Newton failure at t=0."""
    field, y0 = _network()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(hn.SolverError) as info:
            hn.odeint(field, y0.half(), torch.linspace(0, 1, 5), rtol=1e-7, atol=1e-9, method=method)
    assert "step size fell below the minimum" in str(info.value)


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_half_stiffness_estimate_is_the_eigenvalue(dtype):
    """The automatic switch's stiffness estimate |k7 - k6| / |y1 - y6| in the error test's weights: for
    y' = -50 y both differences are exactly -50 times each other in exact arithmetic, so the estimate is
    50; the half state's stages round by u (2^-11, 2^-8) relative to their differences of a few tens of
    ulps, so 20 % bounds it (measured 50.0 and 50.3). The float16 weights atol + rtol |y| were 0 or
    subnormal (a NaN estimate: the votes for a switch never counted)."""
    from types import SimpleNamespace

    from hybrid_node.solvers.auto_switch import AutoStep

    def field(t, y):
        return -50.0 * y

    y0 = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=dtype)
    dt = 0.01
    step = hn.Tsit5().step(field, 0.0, y0, field(0.0, y0), dt)
    solver = hn.AutoSwitch().with_tolerances(1e-7, 1e-9)
    auto = AutoStep(step.y1, step.error, SimpleNamespace(ks=step.ks), False, y0, dt, 0)
    assert solver._tsit5_rho(auto) == pytest.approx(50.0, rel=0.2)


def test_compiled_half_solve_keeps_the_eager_roundings():
    """``compile=True`` on a float16 state: Inductor fused the stages' float16 operations into float32
    arithmetic, so at rtol 1e-7 (below float16's resolution) the compiled solve ended "successfully"
    0.2 off the float64 solution where the eager one fails with a step size underflow. With the eager
    roundings kept (``loop.inductor.eager_rounding``) it fails the same way, and at rtol 1e-3 the two
    solves agree to within two float16 ulps of the largest value (different summation order inside
    fused kernels; measured one ulp). One graph serves both calls: tolerances are graph inputs."""
    field, y0 = _network()
    y0, t = y0.half(), torch.linspace(0, 1, 5)
    eager = hn.odeint(field, y0, t, rtol=1e-3, atol=1e-5)
    compiled = hn.odeint(field, y0, t, rtol=1e-3, atol=1e-5, options={"compile": True})
    ulp = torch.finfo(torch.float16).eps * float(eager.abs().max())
    assert float((compiled.double() - eager.double()).abs().max()) <= 2 * ulp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the tolerance-below-roundoff warning, tested elsewhere
        with pytest.raises(hn.SolverError, match="step size fell below the minimum"):
            hn.odeint(field, y0, t, rtol=1e-7, atol=1e-9, options={"compile": True})
