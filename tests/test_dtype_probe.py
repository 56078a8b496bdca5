"""dtype and device-promotion probe: every state dtype, time and tolerance dtype, compared with
torchdiffeq 0.2.5 and torchsde 0.2.6 on the same inputs.

Where the reference returns a result, ours returns the same dtype and values to the solve's tolerance;
where it fails or hangs, ours fails with a message naming the argument, or works; nothing returns
silent garbage. Exact solutions: y' = a y (y(t) = y0 exp(a t)) and the harmonic oscillator.
"""

import copy
import math
import warnings

import pytest
import torch
import torchdiffeq

import hybrid_node as hn
from hybrid_node.nn import ODEBlock

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
C64, C128 = torch.complex64, torch.complex128


class Decay(torch.nn.Module):
    """y' = a y with a learnable scalar a of the given dtype."""

    def __init__(self, dtype: torch.dtype, a: float = -1.0):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=dtype))

    def forward(self, t, y):
        return self.a * y


def _decay_gradients(y0: torch.Tensor, a: float, t1: float):
    """Exact gradients of L = sum |y(t1)|^2 for y' = a y: dL/dy0 = 2 y0 e^(2 a t1), dL/da = 2 t1 |y0|^2 e^(2 a t1)."""
    g = math.exp(2 * a * t1)
    y0 = y0.detach().double()
    return 2 * y0 * g, 2 * t1 * float((y0.abs() ** 2).sum()) * g


# ---------------------------------------------------------------------------------------------------
# half-precision adjoint: the backward error norm squared float16 values


def test_float16_adjoint_backward_norm_does_not_overflow():
    """The backward solve's error norm of a float16 state is taken in float32, as the forward one's.

    The parameter channel's first-step estimate ``f / atol`` is 1.35 / 1e-3 here, whose square
    (1.8e6) overflows float16 (max 65504): the norm was inf, the first step 0 and the backward solve
    failed at t=1 with a step-size underflow although the forward solve with the same tolerances works.
    """
    f = Decay(F16)
    y0 = torch.tensor([1.0, 2.0], dtype=F16, requires_grad=True)
    ys = hn.odeint_adjoint(f, y0, torch.tensor([0.0, 1.0]), method="dopri5", rtol=1e-2, atol=1e-3)
    (ys[-1].float() ** 2).sum().backward()
    gy, ga = _decay_gradients(y0, -1.0, 1.0)
    # rtol 1e-2 on a solve of one time unit plus float16's rounding (u = 4.9e-4 per operation):
    # 2 % relative is above both, and a zero or NaN gradient (the failure mode) is far outside
    torch.testing.assert_close(y0.grad.double(), gy, rtol=2e-2, atol=0)
    assert f.a.grad.dtype == F16
    assert abs(float(f.a.grad) - ga) < 2e-2 * ga


def test_backward_norms_of_half_states_are_finite():
    """Both backward norms (the flat one the solve uses, the tuple one a user's norm may call) give the
    RMS 1000 of a float16 vector of 1000s, whose squares (1e6) overflow float16; in float32, exactly."""
    from hybrid_node.sensitivity._backward import DefaultTupleNorm, GroupRMS

    x = torch.full((4,), 1000.0, dtype=F16)
    assert float(GroupRMS([2, 2], x)(x)) == 1000.0
    parts = (torch.zeros((), dtype=F16), x[:2], x[2:])
    assert float(DefaultTupleNorm([2], 2, seminorm=False)(parts)) == 1000.0


# ---------------------------------------------------------------------------------------------------
# a module of another dtype than the state: torch's error gets a note naming both dtypes


@pytest.mark.parametrize(("state", "module"), [(F32, F64), (F64, F32)])
def test_module_of_another_dtype_names_both(state, module):
    """torchdiffeq and ours raise torch's "mat1 and mat2 must have the same dtype" here; ours adds
    which argument has which dtype and the conversion that fixes it."""
    lin = torch.nn.Linear(2, 2).to(module)

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, t, y):
            return self.lin(y)

    y0 = torch.ones(2, dtype=state)
    with pytest.raises(RuntimeError, match="same dtype") as info:
        torchdiffeq.odeint(Field(), y0, torch.tensor([0.0, 1.0]))
    with pytest.raises(RuntimeError, match="same dtype") as info:
        hn.odeint(Field(), y0, torch.tensor([0.0, 1.0]))
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert f"parameters are {module}" in notes and f"state is {state}" in notes and "func.to(y0.dtype)" in notes
    with pytest.raises(RuntimeError, match="same dtype") as info:
        ODEBlock(Field())(torch.ones(3, 2, dtype=state))
    assert f"parameters are {module}" in " ".join(getattr(info.value, "__notes__", []))


# ---------------------------------------------------------------------------------------------------
# the state dtype matrix against torchdiffeq

T3 = [0.0, 0.5, 1.0]
ALL = [F16, BF16, F32, F64, C64, C128]


def _neg(t, y):
    return -y


@pytest.mark.parametrize("dtype", ALL)
def test_fixed_step_every_dtype_matches_torchdiffeq(dtype):
    """rk4 with step 0.1 takes the same steps in both: same dtype, values within a few of the dtype's
    ulps (the stage sums may round in another order), and within rk4's error (1e-6) plus rounding of
    the exact exp(-t)."""
    y0 = torch.tensor([1.0, 2.0], dtype=dtype)
    kw = dict(method="rk4", options={"step_size": 0.1})
    ours = hn.odeint(_neg, y0, torch.tensor(T3), **kw)
    ref = torchdiffeq.odeint(_neg, y0, torch.tensor(T3), **kw)
    assert ours.dtype == ref.dtype == dtype
    eps = torch.finfo(ours.real.dtype).eps
    torch.testing.assert_close(ours, ref, rtol=8 * eps, atol=0)
    wide = C128 if dtype.is_complex else F64
    exact = y0.to(wide) * torch.exp(-torch.tensor(T3, dtype=F64))[:, None]
    torch.testing.assert_close(ours.to(wide), exact, rtol=20 * eps + 1e-6, atol=0)


@pytest.mark.parametrize("dtype", [F32, F64, C64, C128])
@pytest.mark.parametrize("times", ["float32", "float64", "list"])
def test_adaptive_matches_torchdiffeq_and_exact(dtype, times):
    """dopri5 at the default tolerances: ours keeps the state's dtype whatever the times' dtype (a list
    too, which torchdiffeq refuses), and is within 10 rtol of exp(-t) where the dtype resolves it."""
    y0 = torch.tensor([1.0, 2.0], dtype=dtype)
    t = T3 if times == "list" else torch.tensor(T3, dtype=getattr(torch, times))
    ours = hn.odeint(_neg, y0, t)
    assert ours.dtype == dtype
    if times != "list":
        assert torchdiffeq.odeint(_neg, y0, t).dtype == dtype
    wide = C128 if dtype.is_complex else F64
    exact = y0.to(wide) * torch.exp(-torch.tensor(T3, dtype=F64))[:, None]
    tol = max(1e-6, 10 * torch.finfo(ours.real.dtype).eps)
    torch.testing.assert_close(ours.to(wide), exact, rtol=tol, atol=0)


def test_integer_times_refused_by_name():
    """torchdiffeq: "`t` must be a floating point Tensor"; ours names t and how to build it."""
    with pytest.raises(TypeError, match="t must have a floating dtype.*linspace"):
        hn.odeint(_neg, torch.ones(2), torch.tensor([0, 1, 2]))


def test_half_precision_default_tolerances():
    """rtol 1e-7 is far below float16's and bfloat16's unit roundoff (4.9e-4, 3.9e-3): both warn, and
    both stay within a few of their ulps of exp(-1) (torchdiffeq 0.2.5 returns y0 unchanged for bfloat16
    and an AssertionError 'underflow in dt' for float16). float16 failed with a step size underflow
    while its error ratio was computed in float16 (atol 1e-9 rounded to 0, the ratios overflowed)."""
    y0 = torch.tensor([1.0, 2.0])
    with pytest.warns(UserWarning, match="below the unit roundoff of torch.float16"):
        ys = hn.odeint(_neg, y0.half(), torch.tensor(T3))
    assert ys.dtype == F16
    # 84 steps, each rounding the state by up to u = 2**-11: measured 0.28 % (2.8 eps); 4 eps bounds it
    torch.testing.assert_close(ys[-1].double(), y0.double() * math.exp(-1), rtol=4 * 2**-10, atol=0)
    with pytest.warns(UserWarning, match="below the unit roundoff of torch.bfloat16"):
        ys = hn.odeint(_neg, y0.bfloat16(), torch.tensor(T3))
    assert ys.dtype == BF16
    # the unreachable tolerance forces small steps, each rounding the state by up to u = 2**-8: measured
    # 1.25 % (1.6 eps); 4 eps = 3.1 % bounds it, far from y0 unchanged (170 %) or a NaN
    torch.testing.assert_close(ys[-1].double(), y0.double() * math.exp(-1), rtol=4 * 2**-7, atol=0)


def test_global_default_float64_keeps_a_float32_state():
    """torch.set_default_dtype(float64) does not promote a float32 solve (list times are built in the
    state's dtype, not the default one); the default is restored whatever happens."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        y0 = torch.tensor([1.0, 2.0], dtype=F32)
        ours = hn.odeint(_neg, y0, T3)
        ref = torchdiffeq.odeint(_neg, y0, torch.tensor(T3, dtype=F32))
    finally:
        torch.set_default_dtype(old)
    assert ours.dtype == ref.dtype == F32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)  # both at rtol 1e-7, float32 rounding


def test_tolerance_tensors_of_another_dtype():
    """float64 tolerance tensors on a float32 state: a float32 result, as torchdiffeq's, within rtol."""
    y0 = torch.tensor([1.0, 2.0])
    tol = dict(rtol=torch.tensor([1e-6, 1e-6], dtype=F64), atol=torch.tensor(1e-8, dtype=F64))
    ours = hn.odeint(_neg, y0, torch.tensor(T3), **tol)
    assert ours.dtype == torchdiffeq.odeint(_neg, y0, torch.tensor(T3), **tol).dtype == F32
    torch.testing.assert_close(ours[-1].double(), y0.double() * math.exp(-1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("tdtype", [F32, F64])
def test_output_times_requiring_grad(tdtype):
    """dL/dt1 of L = sum y(t1) is sum f(y(t1)) = -3 exp(-1), in the times' dtype, as torchdiffeq's."""
    grads = []
    for lib in (hn, torchdiffeq):
        t = torch.tensor(T3, dtype=tdtype, requires_grad=True)
        lib.odeint(_neg, torch.tensor([1.0, 2.0]), t)[-1].sum().backward()
        grads.append(t.grad)
    assert grads[0].dtype == grads[1].dtype == tdtype
    assert abs(float(grads[0][-1]) + 3 * math.exp(-1)) < 1e-5  # float32 state at rtol 1e-7
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("state", "event"), [(F32, F64), (F64, F32), (F32, F16)])
def test_event_function_of_another_dtype(state, event):
    """y'' = -1 from y = 1, y' = 0 reaches y = 0 at sqrt(2); an event function in another dtype changes
    neither the event time (to the coarser of the two dtypes) nor the state's dtype."""

    def field(t, y):
        return torch.stack([y[1], -torch.ones_like(y[0])])

    y0 = torch.tensor([1.0, 0.0], dtype=state)
    t_ev, ys = hn.odeint_event(field, y0, torch.tensor(0.0, dtype=state), event_fn=lambda t, y: y[0].to(event))
    assert ys.dtype == state
    eps = max(torch.finfo(state).eps, torch.finfo(event).eps)
    assert abs(float(t_ev) - math.sqrt(2)) < 8 * eps * math.sqrt(2)


def test_field_of_another_dtype_refused():
    """torchdiffeq casts a float64 derivative of a float32 state back silently (torchsde keeps the
    float64); ours refuses it at the first call, naming both dtypes and the fix."""
    with pytest.raises(TypeError, match=r"func returned dtype torch.float64 but the state is torch.float32.*\.to\("):
        hn.odeint(lambda t, y: -y.double(), torch.ones(2), torch.tensor(T3))


def test_noncontiguous_and_expanded_tensors():
    """A transposed field output and an expanded y0 give torchdiffeq's result (to float32 rounding)."""
    y0 = torch.ones(1, 4).expand(3, 4)
    t = torch.tensor(T3)
    for f in (lambda t, y: (-y.t()).t(), lambda t, y: torch.ones(1, 4).expand(3, 4) - y):
        torch.testing.assert_close(hn.odeint(f, y0, t), torchdiffeq.odeint(f, y0, t), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# sdeint against torchsde on the same Brownian path


class _OU(torch.nn.Module):
    """dY = a Y dt + 0.1 dW (diagonal Ito), a learnable, derivatives returned in ``out`` if given."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, dtype, out=None):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-1.0, dtype=dtype))
        self.out = out

    def f(self, t, y):
        r = self.a * y
        return r if self.out is None else r.to(self.out)

    def g(self, t, y):
        r = 0.1 * torch.ones_like(y)
        return r if self.out is None else r.to(self.out)


def _sde_solve(lib, dtype, ts, out=None):
    import torchsde

    bm = torchsde.BrownianInterval(0.0, 1.0, size=(3, 2), dtype=dtype, entropy=1, levy_area_approximation="none")
    sde = _OU(dtype, out)
    ys = lib.sdeint(sde, torch.ones(3, 2, dtype=dtype), ts, bm=bm, method="euler", dt=0.01)
    ys.sum().backward()
    return ys.detach(), sde.a.grad


@pytest.mark.parametrize("dtype", [F16, BF16, F32, F64])
def test_sdeint_every_real_dtype_matches_torchsde(dtype):
    """The same 100 Euler steps on the same Brownian path: same dtype of states and gradient, values
    within a few ulps (each step may round in another order; measured at most 1 ulp of float16/bfloat16).

    float64 times: torchsde steps on times of ``ts``'s dtype, so float32 times put a float64 solve's
    steps (and Brownian queries) on float32-rounded points, 4e-7 away from ours, which keeps float64
    times; with float64 times the two agree to 3e-16.
    """
    import torchsde

    ts = torch.tensor(T3, dtype=F64)
    ys, ga = _sde_solve(hn, dtype, ts)
    ref, ref_ga = _sde_solve(torchsde, dtype, ts)
    assert ys.dtype == ref.dtype == ga.dtype == ref_ga.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(ys, ref, rtol=16 * eps, atol=16 * eps)
    torch.testing.assert_close(ga, ref_ga, rtol=64 * eps, atol=0)  # a sum over 100 steps' cotangents


def test_sdeint_times_dtype_does_not_change_the_state_dtype():
    """float64 or list times with a float32 state: the float32 solve's result, bit for bit."""
    ys32, _ = _sde_solve(hn, F32, torch.tensor(T3))
    for ts in (torch.tensor(T3, dtype=F64), T3):
        ys, _ = _sde_solve(hn, F32, ts)
        assert ys.dtype == F32
        assert torch.equal(ys, ys32)


def test_sdeint_complex_state_refused_by_name():
    """torchsde integrates a complex state; ours refuses it up front, naming y0 (no silent real cast)."""
    sde = _OU(F32)
    with pytest.raises(ValueError, match="y0 must be a floating-point tensor, got torch.complex64"):
        hn.sdeint(sde, torch.ones(3, 2, dtype=C64), T3, dt=0.01)


def test_sdeint_drift_of_another_dtype_refused():
    """torchsde lets a float64 drift promote a float32 solve to float64 mid-way; ours names the drift."""
    with pytest.raises(ValueError, match="the drift returned dtype torch.float64 but y0 is torch.float32"):
        _sde_solve(hn, F32, torch.tensor(T3), out=F64)


# ---------------------------------------------------------------------------------------------------
# ODEBlock, CNF and the adjoint across dtypes


class _Tanh(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, t, y):
        return torch.tanh(self.lin(y))


@pytest.mark.parametrize(("dtype", "tol"), [(F16, 4e-3), (BF16, 3e-2), (F32, 1e-5), (C64, 1e-5)])
def test_ode_block_every_dtype_against_float64(dtype, tol):
    """A block converted with .to(dtype) keeps the input's dtype and agrees with the float64 block:
    to a few ulps of the dtype at its default tolerances (measured 2e-4 for float16, 8e-3 bfloat16,
    2e-7 float32); bfloat16 warns that its rtol is below its unit roundoff. torchdiffeq fails float16
    with 'underflow in dt' and is 0.1 off for bfloat16 at the same tolerances."""
    torch.manual_seed(0)
    block = ODEBlock(_Tanh())
    x = torch.randn(4, 2)
    ref = ODEBlock(block.func).double()(x.double())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # bfloat16's tolerance warning, complex modules'
        out = copy.deepcopy(block).to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    wide = C128 if dtype.is_complex else F64
    torch.testing.assert_close(out.detach().to(wide), ref.detach().to(wide), rtol=tol, atol=tol)


def test_cnf_float16_default_tolerances_match_float64():
    """A CNF's default rtol 1e-5 is below float16's unit roundoff: a warning, then log-densities within a
    few float16 ulps of the float64 model's (measured 6e-4 relative at most, 0.6 eps; 4 eps bounds it),
    not rounding noise. While the error ratio was computed in float16 the solve failed instead."""
    from hybrid_node.nn import CNF
    from hybrid_node.nn.cnf_fields import TimeMLPField

    torch.manual_seed(0)
    model = CNF(TimeMLPField(2, (16,)), 2)
    x = torch.randn(5, 2)
    ref = copy.deepcopy(model).double().log_prob(x.double())
    with pytest.warns(UserWarning, match="unit roundoff of torch.float16"):
        out = model.half().log_prob(x.half())
    assert out.dtype == F16
    torch.testing.assert_close(out.double(), ref.detach(), rtol=4 * 2**-10, atol=0)


@pytest.mark.parametrize("dtype", [F16, BF16, C64, C128])
def test_adjoint_fixed_step_gradients_match_torchdiffeq(dtype):
    """rk4 adjoint gradients of sum |y(1)|^2 for y' = a y, same dtype as torchdiffeq's and within a few
    ulps of them (its backward sums in another order; dL/da sums 40 stages' products: measured one ulp
    of bfloat16 and 21 of complex128's for dL/da)."""
    grads = []
    for lib in (hn, torchdiffeq):
        f = Decay(dtype)
        y0 = torch.tensor([1.0, 2.0], dtype=dtype, requires_grad=True)
        ys = lib.odeint_adjoint(f, y0, torch.tensor([0.0, 1.0]), method="rk4", options={"step_size": 0.1})
        (ys[-1].abs() ** 2).sum().backward()
        grads.append((y0.grad, f.a.grad))
    eps = torch.finfo(grads[0][0].real.dtype).eps
    for ours, ref in zip(grads[0], grads[1]):
        assert ours.dtype == ref.dtype == dtype
        torch.testing.assert_close(ours, ref, rtol=64 * eps, atol=0)
