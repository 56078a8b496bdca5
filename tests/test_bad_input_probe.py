"""Misuse of the public API fails with an error that names the argument and the fix, never with an
internal error deep inside, a hang, or NaN states returned as a success."""

from __future__ import annotations

import contextlib
import math
import signal

import pytest
import torch

import hybrid_node as hn
from hybrid_node import irregular

D = torch.float64
SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: a solve that loops forever raises TimeoutError after ``seconds``."""

    def expire(*_):
        raise TimeoutError(f"the call did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _nan_field(t, y):
    return y * float("nan")


def _nan_after_half(t, y):
    return y * (float("nan") if t > 0.5 else -1.0)


@pytest.mark.parametrize("solver", SCIPY_METHODS)
def test_scipy_field_nan_at_y0_fails_at_t0(solver):
    # RK45, RK23 and DOP853 looped forever (a NaN first step), BDF and Radau raised numpy's ValueError,
    # LSODA returned NaN states
    y0, t = torch.ones(3, dtype=D), torch.linspace(0, 1, 3, dtype=D)
    with deadline(20), pytest.raises(hn.SolverError, match="NaN or inf at the initial state") as info:
        hn.odeint(_nan_field, y0, t, method="scipy_solver", options={"solver": solver})
    assert info.value.status == hn.Status.INITIAL_FAILURE and info.value.t == 0.0


@pytest.mark.parametrize("solver", SCIPY_METHODS)
def test_scipy_field_nan_later_fails_where_it_turned(solver):
    # BDF raised numpy's "array must not contain infs or NaNs", LSODA returned NaN states as a success
    y0, t = torch.ones(3, dtype=D), torch.linspace(0, 1, 3, dtype=D)
    with deadline(20), pytest.raises(hn.SolverError) as info:
        hn.odeint(_nan_after_half, y0, t, method="scipy_solver", options={"solver": solver})
    # the field is NaN after t = 0.5: the solve stops between there and the step that crossed it
    assert 0.5 <= info.value.t < 0.6


def test_scipy_nan_with_throw_false_reports_the_status():
    y0, t = torch.ones(3, dtype=D), torch.linspace(0, 1, 3, dtype=D)
    sol = hn.solve(_nan_after_half, y0, t, solver=hn.ScipySolver(solver="LSODA"), throw=False)
    assert sol.status == hn.Status.NONFINITE
    assert torch.allclose(sol.ys[0], y0) and torch.isnan(sol.ys[-1]).all()


def _decay(t, y):
    return -y


@pytest.mark.parametrize("which", ["t", "y0", "y0[0]"])
def test_meta_tensors_are_refused_by_name(which):
    # they failed deep inside with "Cannot copy out of meta tensor" or "Tensor.item() cannot be called"
    y0, t = torch.ones(3, dtype=D), torch.linspace(0, 1, 3, dtype=D)
    if which == "t":
        t = t.to("meta")
    elif which == "y0":
        y0 = y0.to("meta")
    else:
        y0 = (torch.ones(2, dtype=D, device="meta"), torch.ones(2, dtype=D, device="meta"))
    func = (lambda t, y: tuple(-x for x in y)) if isinstance(y0, tuple) else _decay
    with pytest.raises(ValueError, match=rf"^{which.replace('[', '.').replace(']', '.')} is on the meta device"):
        hn.odeint(func, y0, t)


def test_meta_start_time_of_an_event_search_is_refused():
    with pytest.raises(ValueError, match="t is on the meta device"):
        hn.odeint_event(_decay, torch.ones(2, dtype=D), torch.tensor(0.0, dtype=D, device="meta"), event_fn=_decay)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_complex32_state_is_refused_with_the_dtype_to_use():
    # it failed inside the error norm with '"sum_cpu" not implemented for 'ComplexHalf''
    with pytest.raises(TypeError, match=r"complex32.*y0.to\(torch.complex64\)"):
        hn.odeint(_decay, torch.ones(3, dtype=torch.complex32), torch.linspace(0, 1, 3))


@pytest.mark.parametrize("step_size", [torch.tensor([0.1, 0.2]), "0.1", True])
def test_fixed_step_size_that_is_not_one_number_is_refused(step_size):
    # two values failed with torch's "only one element tensors can be converted to Python scalars";
    # "0.1" and True (a step of 1.0) were taken by float()
    with pytest.raises(ValueError, match="step_size must be one real number"):
        hn.odeint(
            _decay,
            torch.ones(2, dtype=D),
            torch.linspace(0, 1, 3, dtype=D),
            method="rk4",
            options={"step_size": step_size},
        )


@pytest.mark.parametrize("times", ["a", [None], torch.tensor([True])])
def test_jump_times_that_are_not_numbers_are_refused(times):
    # "a" failed with torch's "new(): invalid data type 'str'"; a bool tensor was read as the time 1.0
    with pytest.raises(TypeError, match=r"options\['jump_t'\] must be a tensor or a sequence of times"):
        hn.odeint(_decay, torch.ones(2, dtype=D), torch.linspace(0, 1, 3, dtype=D), options={"jump_t": times})


def _event_half(t, y):
    return y[0] - 0.5


@pytest.mark.parametrize("t0", ["0", None])
def test_event_start_time_that_is_no_number_is_refused(t0):
    # it failed with torch's "new(): invalid data type 'str'"
    with pytest.raises(TypeError, match="t0 must be one start time"):
        hn.odeint_event(_decay, torch.ones(2, dtype=D), t0, event_fn=_event_half)


def test_event_fn_that_is_not_callable_is_refused():
    # it failed at the first event check with "'int' object is not callable"
    with pytest.raises(TypeError, match=r"event_fn must be callable as event_fn\(t, y\), got int"):
        hn.odeint_event(_decay, torch.ones(2, dtype=D), 0.0, event_fn=3)


def test_integer_start_time_gives_the_event_time_in_float64():
    # t0 = torch.tensor(0) made a float32 grid (t0 + 1.0), so the event time of y' = -y, y(0) = 1 at
    # y = 0.5 came back rounded to float32 (error ~1e-8) for a float64 state; now it matches log(2)
    # as closely as the float tolerance asks (rtol 1e-10: the located root is within ~1e-9)
    t_event, _ = hn.odeint_event(
        _decay, torch.ones(2, dtype=D), torch.tensor(0), event_fn=_event_half, rtol=1e-10, atol=1e-12
    )
    assert t_event.dtype == torch.float64
    assert abs(float(t_event) - math.log(2.0)) < 1e-9


class _DecaySDE(torch.nn.Module):
    """dy = -theta y dt + 0.1 dW (diagonal Ito noise)."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(0.5, dtype=D))

    def f(self, t, y):
        return -self.theta * y

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


def _sde_inputs():
    return torch.ones(4, 2, dtype=D), torch.linspace(0, 1, 3, dtype=D)


@pytest.mark.parametrize(
    ("names", "error", "message"),
    [
        # dict() failed with "dictionary update sequence element #0 has length 5"
        (["drift"], TypeError, "names must be a dict"),
        # getattr failed with "attribute name must be string, not 'int'"
        ({"drift": 3}, TypeError, r"names\['drift'\] must be the name of a method"),
        # the missing method was reported as "the sde object must define a drift"
        ({"drift": "ff"}, ValueError, r"names\['drift'\] = 'ff', but the sde object has no method 'ff'"),
    ],
)
def test_sde_names_that_do_not_name_a_method_are_refused(names, error, message):
    y0, ts = _sde_inputs()
    with pytest.raises(error, match=message):
        hn.sdeint(_DecaySDE(), y0, ts, dt=0.1, names=names)


def test_sde_names_renaming_a_method_still_works():
    sde = _DecaySDE()
    sde.drift_other = sde.f
    y0, ts = _sde_inputs()
    bm = hn.BrownianInterval(0.0, 1.0, (4, 2), dtype=D, entropy=0, levy_area_approximation="space-time")
    ys = hn.sdeint(sde, y0, ts, bm=bm, dt=0.1, names={"drift": "drift_other"})
    assert torch.equal(ys, hn.sdeint(sde, y0, ts, bm=bm, dt=0.1))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("single", "got a single tensor"),  # was "iteration over a 0-d tensor"
        ("int", r"adjoint_params\[1\] is a int"),  # was "'int' object has no attribute 'requires_grad'"
        ("none", r"adjoint_params\[1\] is a NoneType"),
        ("dict", "got a dict; pass tuple"),  # was "'str' object has no attribute 'requires_grad'"
    ],
)
def test_sdeint_adjoint_params_that_are_no_tuple_of_tensors_are_refused(params, message):
    sde = _DecaySDE()
    given = {
        "single": sde.theta,
        "int": (sde.theta, 3),
        "none": (sde.theta, None),
        "dict": {"theta": sde.theta},
    }[params]
    y0, ts = _sde_inputs()
    with pytest.raises(TypeError, match=message):
        hn.sdeint_adjoint(sde, y0, ts, dt=0.1, adjoint_params=given)


def test_sdeint_adjoint_counts_a_parameter_listed_twice_once():
    # listed twice, theta's gradient was summed twice (the ODE adjoints keep each tensor once)
    sde = _DecaySDE()
    y0, ts = _sde_inputs()

    def gradient(adjoint: bool, params=None) -> torch.Tensor:
        bm = hn.BrownianInterval(0.0, 1.0, (4, 2), dtype=D, entropy=3)
        kw = {"bm": bm, "dt": 0.01, "method": "euler"}
        ys = hn.sdeint_adjoint(sde, y0, ts, adjoint_params=params, **kw) if adjoint else hn.sdeint(sde, y0, ts, **kw)
        return torch.autograd.grad(ys[-1].sum(), sde.theta)[0]

    once = gradient(True, (sde.theta,))
    assert torch.equal(gradient(True, (sde.theta, sde.theta)), once)
    # against backpropagation through the same Euler steps: the adjoint's backward Euler solve differs by
    # O(dt) = 1e-2 relative (measured 5e-3); a doubled gradient would be 100% off
    torch.testing.assert_close(once, gradient(False), rtol=2e-2, atol=0)


class _BadDriftSDE(_DecaySDE):
    """_DecaySDE whose drift returns ``bad`` (None, or the drift in float32)."""

    def __init__(self, bad: str):
        super().__init__()
        self.bad = bad

    def f(self, t, y):
        return None if self.bad == "none" else (-self.theta * y).float()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        # without the check: "unsupported operand type(s)" inside srk; the message says what to return
        ("none", "the drift must return a torch.Tensor, got NoneType; return a tensor of y0's shape and dtype"),
        # was computed in float32 and promoted without a word
        ("float32", r"the drift returned dtype torch.float32 but y0 is torch.float64"),
    ],
)
def test_sde_drift_of_the_wrong_type_is_refused(bad, message):
    y0, ts = _sde_inputs()
    with pytest.raises(ValueError, match=message):
        hn.sdeint(_BadDriftSDE(bad), y0, ts, dt=0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dt": "0.1"}, "dt must be a positive number, got str '0.1'"),  # was "'>' not supported ..."
        ({"dt": None}, "dt must be a positive number, got NoneType None"),
        ({"options": ["grad_free"]}, "options must be a dict of method options"),  # was dict()'s error
        ({"bm": torch.ones(4, 2, dtype=D), "method": "euler"}, "bm must be a Brownian motion callable"),
    ],
)
def test_sdeint_settings_of_the_wrong_type_are_refused(kwargs, message):
    y0, ts = _sde_inputs()
    kwargs.setdefault("dt", 0.1)
    with pytest.raises(ValueError, match=message):
        hn.sdeint(_DecaySDE(), y0, ts, **kwargs)


@pytest.mark.parametrize("ts", [torch.tensor([False, True]), torch.tensor([0.0, 1.0], dtype=torch.complex128)])
def test_sdeint_times_that_are_not_real_are_refused(ts):
    # a bool ts was read as the times 0 and 1; a complex one failed in float()
    with pytest.raises(ValueError, match="ts must hold real times"):
        hn.sdeint(_DecaySDE(), _sde_inputs()[0], ts, dt=0.1)


@pytest.mark.parametrize("which", ["y0", "ts"])
def test_sdeint_meta_tensors_are_refused(which):
    y0, ts = _sde_inputs()
    y0, ts = (y0.to("meta"), ts) if which == "y0" else (y0, ts.to("meta"))
    with pytest.raises(ValueError, match=f"{which} is on the meta device"):
        hn.sdeint(_DecaySDE(), y0, ts, dt=0.1)


def test_norm_that_is_not_callable_is_refused_where_it_is_given():
    # it was accepted and failed at the first step with "'int' object is not callable"
    with pytest.raises(TypeError, match="norm must be callable"):
        hn.PIDController(norm=3)
    with pytest.raises(TypeError, match="norm must be callable"):
        hn.odeint(_decay, torch.ones(3, dtype=D), torch.linspace(0, 1, 3, dtype=D), options={"norm": 3})


@pytest.mark.parametrize("state", ["tensor", "tuple"])
def test_norm_of_several_values_is_refused(state):
    # it failed at the first step with torch's "only one element tensors can be converted to Python scalars"
    y = torch.ones(3, dtype=D)
    if state == "tensor":
        func, y0, norm = _decay, y, torch.abs
    else:
        func, y0 = (lambda t, y: tuple(-x for x in y)), (y, y)

        def norm(parts):
            return torch.stack([p.abs().max() for p in parts])

    with pytest.raises(ValueError, match=r"norm must return one number \(a 0-d tensor\), got shape"):
        hn.odeint(func, y0, torch.linspace(0, 1, 3, dtype=D), options={"norm": norm})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"t1": math.inf}, ValueError, "needs finite t0 and t1"),  # was accepted
        ({"size": (-2,)}, ValueError, "size must hold non-negative sizes"),  # torch's "Dimension size must be ..."
        ({"size": 2}, TypeError, "size must be a tuple of ints"),  # "'int' object is not iterable"
        ({"dtype": torch.int64}, TypeError, "dtype must be a floating torch dtype"),  # "normal_kernel_cpu" ...
        ({"device": "meta"}, ValueError, "device is the meta device"),  # "META device type not an accelerator"
        ({"entropy": "x"}, TypeError, "entropy must be an int seed"),  # "invalid literal for int()"
        ({"size": None, "W": torch.tensor([math.nan])}, ValueError, "W contains NaN"),  # a NaN path
    ],
)
def test_brownian_interval_arguments_are_checked(kwargs, error, message):
    args = {"t0": 0.0, "t1": 1.0, "size": (2,), **kwargs}
    with pytest.raises(error, match=message):
        hn.BrownianInterval(**args)(0.0, 0.5)


@pytest.mark.parametrize("kind", [hn.BrownianPath, hn.BrownianTree])
def test_brownian_start_value_is_checked(kind):
    with pytest.raises(TypeError, match="w0 must be a tensor"):  # "'list' object has no attribute 'shape'"
        kind(0.0, [0.0, 0.0])
    with pytest.raises(ValueError, match="w0 contains NaN"):  # every value of the path was NaN
        kind(0.0, torch.tensor([math.nan]))


def test_brownian_point_query_before_t0_names_the_interval():
    # it said "need ta <= tb, got ta=0.0, tb=-1.0" for the single time -1
    with pytest.raises(ValueError, match=r"defined on \[0.0, 1.0\], but time -1.0 was asked for"):
        hn.BrownianPath(0.0, torch.zeros(2))(-1.0)


@pytest.mark.parametrize("model", [hn.nn.HamiltonianNN, hn.nn.BaselineODE])
@pytest.mark.parametrize("activation", ["tanh", torch.nn.Tanh()])
def test_hamiltonian_activation_that_makes_no_module_is_refused(model, activation):
    # "tanh" failed with "'str' object is not callable", nn.Tanh() with "forward() missing 1 required argument"
    with pytest.raises(TypeError, match="activation must make an nn.Module when called with no arguments"):
        model(2, activation=activation)


def test_hamiltonian_activation_class_still_builds():
    h = hn.nn.HamiltonianNN(2, hidden=8, activation=torch.nn.Softplus)
    assert isinstance(h.net[1], torch.nn.Softplus)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 0}, "kernel_size must be positive"),  # failed at the first forward
        ({"kernel_size": -1}, "kernel_size must be positive"),  # "Trying to create tensor with negative dimension"
        ({"stride": 0}, "stride must be positive"),  # accepted
        ({"padding": -1}, "padding must be >= 0"),  # accepted
        ({"groups": 2}, r"groups=2 must divide out_channels \(2\) and in_channels \+ 1 \(3"),  # torch named neither
    ],
)
def test_time_conv_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hn.nn.TimeConv2d(2, 2, **kwargs)


def test_union_grid_refuses_non_finite_extra_times():
    # a NaN was sorted into the union grid the solve runs on
    batch = irregular.from_sequences([torch.tensor([0.0, 0.5, 1.0])], [torch.ones(3, 2)])
    with pytest.raises(ValueError, match=r"extra_times must be finite, got \[nan\]; drop the NaN"):
        # the message names the bad entries, not the first ones given
        irregular.union_grid(batch, torch.tensor([0.2, 0.3, 0.4, 0.6, 0.7, 0.8, math.nan]))


def test_zero_unobserved_refuses_a_mask_of_another_shape():
    # torch's "The size of tensor a (2) must match the size of tensor b (3)" named neither
    with pytest.raises(ValueError, match=r"mask of shape \(2, 2\) must broadcast to values of shape \(2, 3\)"):
        irregular.zero_unobserved(torch.ones(2, 3), torch.ones(2, 2))


@pytest.mark.parametrize("sensitivity", ["odeint_adjoint", "backsolve", "interpolating"])
def test_adjoint_params_upstream_of_what_func_uses(sensitivity):
    # func uses w2 = 2 w made before the solve and adjoint_params=(w,): the second vector-Jacobian product
    # failed with "Trying to backward through the graph a second time" (torchdiffeq computes it). The
    # gradient must equal direct backpropagation's, to the solves' tolerance (rtol 1e-10: agreement ~1e-8).
    y0, t = torch.ones(3, dtype=D), torch.linspace(0, 1, 5, dtype=D)

    def gradient(kind):
        w = torch.tensor([0.5, 1.0, 1.5], dtype=D, requires_grad=True)
        w2 = 2 * w

        def func(t, y):
            return -w2 * y

        tol = {"rtol": 1e-10, "atol": 1e-12}
        if kind == "direct":
            ys = hn.odeint(func, y0, t, **tol)
        elif kind == "odeint_adjoint":
            ys = hn.odeint_adjoint(func, y0, t, adjoint_params=(w,), **tol)
        else:
            sens = hn.BacksolveAdjoint() if kind == "backsolve" else hn.InterpolatingAdjoint()
            ys = hn.solve(func, y0, t, sensitivity=sens, adjoint_params=(w,), controller=hn.PIDController(**tol)).ys
        ys.sum().backward()
        return w.grad

    torch.testing.assert_close(gradient(sensitivity), gradient("direct"), rtol=1e-7, atol=1e-9)


def test_adjoint_params_on_the_meta_device_are_refused():
    # the forward solve passed and the backward failed with "Tensor on device meta is not on the expected device"
    model = torch.nn.Linear(2, 2).double()
    params = (*model.parameters(), torch.ones(2, device="meta", requires_grad=True))
    with pytest.raises(ValueError, match=r"adjoint_params\[2\] is on the meta device"):
        hn.odeint_adjoint(
            lambda t, y: model(y), torch.ones(2, dtype=D), torch.linspace(0, 1, 3, dtype=D), adjoint_params=params
        )
