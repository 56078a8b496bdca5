"""A failed solve names its real cause, the time it reached and a fix, on every path that can fail.

The probe behind these tests (path x failure, see docs/solvers.md "When a solve fails") found the
cases below whose message was missing or misleading; each test fails on the code before its fix.
"""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

import hybrid_node as hn
from hybrid_node._errors import SolverError, Status

# the stop times of the per-sample events below: sample i fires at t = C[i] - 0.1
C = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)


def _sqrt_field(theta: torch.Tensor, clamp: bool):
    """``y' = -theta sqrt(c - t)``: past c_i (after sample i's event) non-finite in row i unless clamped."""

    def field(t, y):
        gap = (C - t).clamp(min=0) if clamp else C - t
        return -theta * torch.sqrt(gap)[:, None] * torch.ones_like(y)

    return field


def _per_sample_adjoint_grad(interface: str, clamp: bool) -> torch.Tensor:
    """d(sum of event times + event states)/d theta of a per-sample event solve by an adjoint."""
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    field = _sqrt_field(theta, clamp)
    y0 = torch.ones(3, 1, dtype=torch.float64)

    def event_fn(t, y):
        return (C - 0.1) - t

    if interface == "odeint_event":
        t_e, ys = hn.odeint_event(
            field,
            y0,
            0.0,
            event_fn=event_fn,
            per_sample=True,
            t_end=5.0,
            odeint_interface=hn.odeint_adjoint,
            adjoint_params=(theta,),
        )
    else:
        sensitivity = {"backsolve": hn.BacksolveAdjoint(), "interpolating": hn.InterpolatingAdjoint()}[interface]
        sol = hn.solve(
            field,
            y0,
            torch.tensor([0.0, 5.0], dtype=torch.float64),
            event_fn=event_fn,
            per_sample_events=True,
            sensitivity=sensitivity,
            adjoint_params=(theta,),
        )
        t_e, ys = sol.t_final, sol.ys
    (t_e.sum() + ys[-1].sum()).backward()
    assert theta.grad is not None
    return theta.grad


@pytest.mark.parametrize("interface", ["odeint_event", "backsolve", "interpolating"])
def test_per_sample_event_adjoint_names_nonfinite_frozen_rows_as_the_cause(interface):
    # the forward solve warns; the backward solve then fails, and its message used to blame overflow,
    # stiffness and the tolerances ("Check the vector field for overflow, lower the tolerances ...")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(SolverError) as err:
            _per_sample_adjoint_grad(interface, clamp=False)
    msg = str(err.value)
    assert err.value.status is Status.NONFINITE
    assert "already fired" in msg and "clamp" in msg, msg
    assert "lower the tolerances" not in msg, msg
    assert "backward (adjoint) solve" in msg, msg


def test_the_suggested_fix_makes_the_same_adjoint_gradient_finite():
    # the fix the message gives (clamp into the domain) works: the gradient is finite, and it matches
    # direct backpropagation of the same solve. Each y_i(t_e_i) = 1 - theta * int_0^{t_e} sqrt(c_i - s) ds
    # is linear in theta and t_e_i does not depend on theta, so d/dtheta of the sum is
    # -sum_i (2/3) (c_i^{3/2} - 0.1^{3/2}), exact up to the solve's tolerance (1e-7 relative here,
    # loosened to 1e-5 for the default rtol of the adjoint and the event location).
    grad = _per_sample_adjoint_grad("odeint_event", clamp=True)
    exact = -(2.0 / 3.0) * (C**1.5 - 0.1**1.5).sum()
    assert torch.isfinite(grad)
    assert torch.allclose(grad, exact, rtol=1e-5), (grad, exact)


class _NaNGradient(torch.autograd.Function):
    """The identity, whose derivative is NaN: a field whose vector-Jacobian product is NaN everywhere."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_an_unrelated_nonfinite_backward_keeps_the_generic_message():
    # the frozen rows are finite (y' = -theta y); the backward solve fails for another reason, and
    # its message must not blame them
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)

    def field(t, y):
        return -_NaNGradient.apply(theta) * y

    with pytest.raises(SolverError) as err:
        t_e, ys = hn.odeint_event(
            field,
            torch.ones(3, 1, dtype=torch.float64),
            0.0,
            event_fn=lambda t, y: (C - 0.1) - t,
            per_sample=True,
            t_end=5.0,
            odeint_interface=hn.odeint_adjoint,
            adjoint_params=(theta,),
        )
        (t_e.sum() + ys[-1].sum()).backward()
    assert err.value.status is Status.NONFINITE
    msg = str(err.value)
    assert "already fired" not in msg and "vector-Jacobian products are not finite" in msg, msg


def test_solver_error_survives_pickling():
    # a DataLoader worker or multiprocessing pool sends exceptions pickled: SolverError(message) was
    # rebuilt from its message alone and raised TypeError (missing t) instead of the solve's failure
    err = SolverError(Status.NONFINITE, 1.5, "detail", "cause and fix")
    err.args = ("a message rewritten by the caller",)  # as a CNF rewrites it with its flow time
    back = pickle.loads(pickle.dumps(err))
    assert (back.status, back.t, back.detail, back.cause, str(back)) == (
        err.status,
        err.t,
        err.detail,
        err.cause,
        str(err),
    )


def _nan_past(t_bad: float):
    """``y' = -y`` up to ``t_bad``, NaN after it: a field that leaves its domain, on a finite state."""

    def field(t, y):
        return torch.where(torch.as_tensor(t) > t_bad, torch.full_like(y, float("nan")), -y)

    return field


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "kvaerno5", "rodas4", "bdf"])
def test_a_field_that_turns_nan_is_named_as_the_cause(method):
    # the message used to say "Check the vector field for overflow, lower the tolerances or the first
    # step, or use a stiff solver" (all four wrong here); it now says the field is NaN on a finite
    # state, where, and what to do. The time is within the step controller's last rejections of 0.7
    # (rodas4's df/dt difference looks 1.5e-8 ahead, so it stops that far before 0.7).
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    with pytest.raises(SolverError) as err:
        hn.odeint(
            _nan_past(0.7), y0, torch.tensor([0.0, 1.0], dtype=torch.float64), method=method, rtol=1e-8, atol=1e-10
        )
    msg = str(err.value)
    assert err.value.status is Status.NONFINITE
    assert abs(err.value.t - 0.7) < 1e-7, err.value.t
    assert "returned NaN" in msg and "on a finite state" in msg and "clamp" in msg, msg
    assert "lower the tolerances" not in msg, msg


@pytest.mark.parametrize("method", ["dopri5", "kvaerno5", "rodas4"])
def test_a_finite_time_blowup_is_named_as_the_cause(method):
    # y' = y^2, y(0) = 1: y = 1 / (1 - t) blows up at t = 1 (Hairer, Norsett & Wanner I, Sec. I.7).
    # The message used to suggest an implicit method (also to kvaerno5 and rodas4, which are) or
    # looser tolerances; it now names the blow-up and its time.
    y0 = torch.ones(2, dtype=torch.float64)
    with pytest.raises(SolverError) as err:
        hn.odeint(lambda t, y: y * y, y0, torch.tensor([0.0, 2.0], dtype=torch.float64), method=method)
    msg = str(err.value)
    assert err.value.status is Status.STEP_UNDERFLOW
    assert abs(err.value.t - 1.0) < 1e-6, err.value.t
    assert "grows without bound" in msg and "blow-up" in msg, msg
    assert "implicit method" not in msg, msg


@pytest.mark.filterwarnings("ignore:rtol=1e-12 is below the unit roundoff")
def test_a_stiff_underflow_keeps_the_generic_advice():
    # no blow-up and a finite field: the generic STEP_UNDERFLOW message stays (an explicit method on a
    # stiff problem at a tolerance below float32's resolution)
    y0 = torch.tensor([1.0, 0.0])
    with pytest.raises(SolverError) as err:
        hn.odeint(
            lambda t, y: torch.stack([y[1], -1e4 * y[0] - 1e2 * y[1]]),
            y0,
            torch.tensor([0.0, 1.0]),
            rtol=1e-12,
            atol=1e-14,
        )
    assert err.value.status in (Status.STEP_UNDERFLOW, Status.MAX_STEPS)
    assert "grows without bound" not in str(err.value) and "returned NaN" not in str(err.value)


@pytest.mark.parametrize(
    "sensitivity, solver",
    [
        (hn.DirectBackprop(checkpoints=2), hn.Tsit5()),  # replays the forward steps
        (hn.ReversibleAdjoint(), hn.Reversible(hn.Tsit5())),
        (hn.InterpolatingAdjoint(), hn.Tsit5()),
    ],
)
def test_the_gradient_paths_name_a_nan_field_too(sensitivity, solver):
    # the checkpointed and reversible paths record their forward steps in a loop of their own, which
    # gave the generic overflow/tolerance advice
    with pytest.raises(SolverError) as err:
        hn.solve(
            _nan_past(0.7),
            torch.ones(2, dtype=torch.float64, requires_grad=True),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            solver=solver,
            sensitivity=sensitivity,
            adjoint_params=(),
        )
    assert err.value.status is Status.NONFINITE and abs(err.value.t - 0.7) < 1e-7
    assert "returned NaN" in str(err.value), str(err.value)


def test_fixed_steps_point_to_an_adaptive_method_to_find_the_cause():
    # fixed steps cannot stop where the state turns non-finite: the message says so and how to find out
    with pytest.raises(SolverError) as err:
        hn.odeint(
            _nan_past(0.7),
            torch.ones(2, dtype=torch.float64),
            torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64),
            method="rk4",
            options={"step_size": 0.05},
        )
    msg = str(err.value)
    assert err.value.status is Status.NONFINITE and err.value.t == 1.0
    assert "last finite one is at t=0.5" in msg and "adaptive method such as 'dopri5'" in msg, msg


class _DriftNaNPast(torch.nn.Module):
    """dy = -a y dt + 0.1 dW, with a drift that is NaN past ``t_bad``."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, t_bad: float):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.t_bad = t_bad

    def f(self, t, y):
        return torch.where(torch.as_tensor(t) > self.t_bad, torch.full_like(y, float("nan")), -self.a * y)

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


@pytest.mark.parametrize("entry", ["sdeint", "sdeint_adjoint"])
def test_a_fixed_step_sde_failure_is_reported_where_it_happened(entry):
    # the state is NaN from the step after t = 0.5 on: the first non-finite output is at t = 1, the last
    # finite one at 0.5. The error used to name t = 2, the end of the solve.
    ts = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    with pytest.raises(SolverError) as err:
        getattr(hn, entry)(_DriftNaNPast(0.5), torch.ones(3, 2, dtype=torch.float64), ts, dt=0.01, method="euler")
    msg = str(err.value)
    assert err.value.status is Status.NONFINITE and err.value.t == 1.0, msg
    assert "the last finite one is at t=0.5" in msg and "adaptive=True" in msg, msg


def _assert_cause_named(solve, status: Status, *words: str, t: float | None = None, t_tol: float = 1e-7):
    """``solve()`` raises a SolverError of ``status`` whose message holds each of ``words`` (and, given
    ``t``, that stopped within ``t_tol`` of it)."""
    with pytest.raises(SolverError) as err:
        solve()
    assert err.value.status is status, str(err.value)
    assert t is None or abs(err.value.t - t) < t_tol, err.value.t
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("scipy_method", ["RK45", "DOP853"])
def test_scipy_names_a_nan_field_and_a_blowup(scipy_method):
    # solve_ivp stops with "Required step size is less than spacing between numbers" in both cases; it
    # was reported as STEP_UNDERFLOW with the stiffness/tolerance advice
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(2, dtype=torch.float64)

    def solve(field, t):
        return lambda: hn.odeint(field, y0, t, method="scipy_solver", options={"solver": scipy_method})

    _assert_cause_named(solve(_nan_past(0.7), t), Status.NONFINITE, "returned NaN or inf", t=0.7, t_tol=1e-6)
    _assert_cause_named(
        solve(lambda t, y: y * y, 2 * t), Status.STEP_UNDERFLOW, "grows without bound", t=1.0, t_tol=1e-6
    )


@pytest.mark.parametrize(
    ("options", "times", "t_nan"),
    [
        # the device loop (one host read per run of steps)
        ({"device_loop": True}, [0.0, 1.0], None),
        # the compiled whole solve runs as one graph, which hands back no state where it stopped
        ({"compile": True}, [0.0, 0.5, 1.0], 0.7),
    ],
)
def test_the_device_loop_and_the_compiled_whole_solve_name_the_cause_too(options, times, t_nan):
    # both run loops of their own; they gave the generic advice for a NaN field and for a blow-up
    t = torch.tensor(times, dtype=torch.float64)
    y0 = torch.ones(2, 2, dtype=torch.float64)

    def solve(field, t):
        return lambda: hn.odeint(field, y0, t, options=options)

    _assert_cause_named(solve(_nan_past(0.7), t), Status.NONFINITE, "returned NaN", t=t_nan)
    _assert_cause_named(solve(lambda t, y: y * y, 2 * t), Status.STEP_UNDERFLOW, "grows without bound")


def test_per_sample_step_control_names_the_cause_too():
    # options={"per_sample": True}: the failing sample's row is diagnosed (the field's NaN there, or
    # its blow-up); it gave the generic advice. Sample 1 decays, sample 0 hits the NaN / the blow-up.
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    options = {"per_sample": True}

    def nan_in_row_0(t, y):
        bad = (torch.as_tensor(t) > 0.7)[:, None] & (torch.arange(2) == 0)[:, None]
        return torch.where(bad, torch.full_like(y, float("nan")), -y)

    def solve(field, y0, t):
        return lambda: hn.odeint(field, y0, t, options=options)

    nan_field = solve(nan_in_row_0, torch.ones(2, 3, dtype=torch.float64), t)
    _assert_cause_named(nan_field, Status.NONFINITE, "returned NaN", "sample(s) [0]", t=0.7)
    y0 = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)  # y' = y^2: row 0 blows up at t = 1, row 1 decays
    _assert_cause_named(solve(lambda t, y: y * y, y0, 2 * t), Status.STEP_UNDERFLOW, "grows without bound")


@pytest.mark.parametrize("kind", ["per_sample_event", "non_terminal_event"])
def test_the_event_loops_name_the_cause_too(kind):
    # the per-sample terminal event loop and the non-terminal event loop run steps of their own; they
    # gave the generic advice for a NaN field and for a blow-up
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(2, 1, dtype=torch.float64)

    def run(field, t_end):
        if kind == "per_sample_event":
            hn.odeint_event(field, y0, 0.0, event_fn=lambda t, y: 1.5 - t + 0 * y[:, 0], per_sample=True, t_end=t_end)
        else:
            hn.solve(field, y0, t_end * t, event=hn.Event(lambda t, y: y[0, 0] - 0.75))

    _assert_cause_named(lambda: run(_nan_past(0.7), 1.0), Status.NONFINITE, "returned NaN", t=0.7)
    _assert_cause_named(lambda: run(lambda t, y: y * y, 2.0), Status.STEP_UNDERFLOW, "grows without bound")


def _stiff_linear(t, y):
    """y' = A y with eigenvalues -1 and -1e4: the explicit methods' steps are held at dt ~ 3.3e-4."""
    return torch.stack([-y[0], -1e4 * (y[1] - y[0])])


def test_an_explicit_method_on_a_stiff_problem_is_told_to_use_an_implicit_one():
    # MAX_STEPS used to advise only raising max_num_steps; here the steps are held by dopri5's
    # stability (dt * rho at its boundary, 3.3), so the message names the stiffness, rho (1e4, the
    # largest eigenvalue's magnitude, which the power iteration finds to its first digits) and the fix.
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 10.0], dtype=torch.float64)
    options = {"max_num_steps": 500}
    with pytest.raises(SolverError) as err:
        hn.odeint(_stiff_linear, y0, t, rtol=1e-6, atol=1e-9, options=options)
    msg = str(err.value)
    assert err.value.status is Status.MAX_STEPS
    assert "stiff" in msg and "spectral radius of about 1e+04" in msg and "'rodas4'" in msg, msg
    # the fix works: the implicit method takes the same solve within the same step budget
    ys = hn.odeint(_stiff_linear, y0, t, method="rodas4", rtol=1e-6, atol=1e-9, options=options)
    # y_0(10) = exp(-10); rtol 1e-6 per step, accumulated over the ~100 steps, stays well within 1e-4
    assert torch.allclose(ys[-1, 0], torch.exp(torch.tensor(-10.0, dtype=torch.float64)), rtol=1e-4)


def test_a_non_stiff_max_steps_keeps_the_generic_advice():
    # y' = -y with too few steps: rho = 1 and the steps are short, so dt * rho is far below 1
    with pytest.raises(SolverError) as err:
        hn.odeint(
            lambda t, y: -y, torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 10.0]), options={"max_num_steps": 3}
        )
    assert err.value.status is Status.MAX_STEPS and "stiff" not in str(err.value)
    assert "increasing `max_num_steps`" in str(err.value)


def test_a_diagnosis_that_fails_leaves_the_solver_error_as_it_was():
    # the diagnosis looks at the field and the state once more; where that raises (a field that
    # raises there, a state that cannot be read on the host), the failure is reported without a cause
    from hybrid_node.loop.diagnose import failure_cause, stiffness_cause

    class Broken:
        nfe = 0
        n_jacobian = 0

        @property
        def reverse(self):
            raise RuntimeError("cannot be read here")

        def __call__(self, t, y, perturb=0):
            raise RuntimeError("cannot be evaluated here")

    y = torch.full((2,), 1e9, dtype=torch.float64)  # a blow-up, were the time readable
    assert failure_cause(Status.STEP_UNDERFLOW, Broken(), 1.0, y, torch.ones(2, dtype=torch.float64)) == ""
    assert stiffness_cause(Broken(), hn.Dopri5(), 1.0, y, 0.1) == ""
