"""Every error path: bad inputs are rejected early with a message that says what to change, and
failed solves name the time they reached (or, with throw=False, report a status and NaN-padded ys)."""

from __future__ import annotations

import math

import pytest
import torch

import hybrid_node as hn
from hybrid_node import SolverError, Status

T01 = torch.tensor([0.0, 1.0])


def decay(t, y):
    return -y


# ----------------------------------------------------------------------------------------------------
# Output times
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "t",
    [
        torch.tensor([0.0, 1.0, 0.5]),
        torch.tensor([0.0, 1.0, 1.0]),
        torch.tensor([1.0, 0.0, 0.5]),
        torch.tensor([0.0, 0.0]),
    ],
    ids=["non-monotone", "duplicate", "reverse-non-monotone", "all-equal"],
)
def test_times_must_be_strictly_monotone(t):
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing.*torch.unique"):
        hn.odeint(decay, torch.ones(2), t)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_times_must_be_finite(bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        hn.odeint(decay, torch.ones(2), torch.tensor([0.0, bad]))


def test_times_changed_in_place_after_a_solve_are_checked_again():
    """The check skips times equal to the last ones it accepted: the same tensor changed in place,
    even where autograd's version counter does not see it (``.data``), is checked again."""
    t = torch.linspace(0.0, 1.0, 4)
    hn.odeint(decay, torch.ones(2), t)
    t.data[2] = 0.1
    with pytest.raises(ValueError, match="strictly increasing"):
        hn.odeint(decay, torch.ones(2), t)
    t.data[2] = math.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        hn.odeint(decay, torch.ones(2), t)
    t.data[2] = 2.0 / 3.0
    torch.testing.assert_close(hn.odeint(decay, torch.ones(2), t)[-1], torch.full((2,), math.exp(-1.0)))


def test_times_shape_and_dtype():
    with pytest.raises(ValueError, match="1-D"):
        hn.odeint(decay, torch.ones(2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="non-empty"):
        hn.odeint(decay, torch.ones(2), torch.zeros(0))
    with pytest.raises(TypeError, match="floating dtype.*linspace"):
        hn.odeint(decay, torch.ones(2), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="1-D tensor of times"):
        hn.odeint(decay, torch.ones(2), object())


# ----------------------------------------------------------------------------------------------------
# Initial state and the field's output
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_y0(bad):
    with pytest.raises(ValueError, match="y0 contains NaN or infinite"):
        hn.odeint(decay, torch.tensor([1.0, bad]), T01)
    with pytest.raises(ValueError, match=r"y0\[1\] contains NaN"):
        hn.odeint(lambda t, y: (-y[0], -y[1]), (torch.ones(2), torch.tensor([bad])), T01)


def test_y0_types():
    with pytest.raises(TypeError, match="floating dtype.*y0.float()"):
        hn.odeint(decay, torch.tensor([1, 2]), T01)
    with pytest.raises(TypeError, match="tensor or a tuple of tensors"):
        hn.odeint(decay, [1.0, 2.0], T01)
    with pytest.raises(ValueError, match="empty tuple"):
        hn.odeint(decay, (), T01)
    with pytest.raises(TypeError, match="share one dtype"):
        hn.odeint(lambda t, y: y, (torch.ones(1), torch.ones(1, dtype=torch.float64)), T01)
    with pytest.raises(TypeError, match="callable"):
        hn.odeint(3, torch.ones(1), T01)


def test_func_output_shape():
    with pytest.raises(ValueError, match=r"func returned shape \(2,\) but the state has shape \(3,\)"):
        hn.odeint(lambda t, y: torch.zeros(2), torch.ones(3), T01)
    with pytest.raises(ValueError, match=r"shape \(3, 1\)"):  # no silent broadcasting either
        hn.odeint(lambda t, y: -y[:, None], torch.ones(3), T01, method="euler")


@pytest.mark.parametrize("method", ["dopri5", "rk4", "explicit_adams"])
def test_func_output_dtype(method):
    with pytest.raises(TypeError, match="func returned dtype torch.float64 but the state is torch.float32"):
        hn.odeint(lambda t, y: -y.double(), torch.ones(3), T01, method=method, options=_opts(method))
    with pytest.raises(TypeError, match="must return a torch.Tensor, got float"):
        hn.odeint(lambda t, y: 1.0, torch.ones(3), T01, method=method, options=_opts(method))
    with pytest.raises(TypeError, match="must return a torch.Tensor, got tuple"):
        hn.odeint(lambda t, y: (-y,), torch.ones(3), T01, method=method, options=_opts(method))


def _opts(method):
    return {"step_size": 0.1} if method in ("rk4", "explicit_adams", "euler") else {}


def test_tuple_state_output_mismatch():
    y0 = (torch.ones(3), torch.ones(2))
    with pytest.raises(TypeError, match="tuple state of 2 tensors it must return a tuple"):
        hn.odeint(lambda t, y: -y[0], y0, T01)
    with pytest.raises(TypeError, match="tuple state of 2 tensors"):
        hn.odeint(lambda t, y: (-y[0],), y0, T01)
    with pytest.raises(ValueError, match=r"shape \(3,\) for state tensor 1 of shape \(2,\)"):
        hn.odeint(lambda t, y: (-y[0], -y[0]), y0, T01)


# ----------------------------------------------------------------------------------------------------
# Failures during the solve: the time reached and what to change
# ----------------------------------------------------------------------------------------------------


def nan_after_half(t, y):
    return -y if float(t) < 0.5 else y * math.nan


def test_nan_mid_solve_adaptive_names_the_time():
    # a float32 state: located to float32's step floor, 4 eps32 (printed as 0.5 or 0.499999)
    with pytest.raises(SolverError, match=r"t=0\.(5|49999\d).*NaN or infinite") as info:
        hn.odeint(nan_after_half, torch.ones(3), T01)
    assert info.value.status is Status.NONFINITE
    assert info.value.t == pytest.approx(0.5, abs=1e-6)


def test_nan_mid_solve_fixed_grid_is_caught():
    # fixed steps have no error estimate; the first non-finite output is reported with the last good one
    t = torch.tensor([0.0, 0.25, 0.75, 1.0])
    with pytest.raises(SolverError, match=r"t=0.75.*last finite one is at t=0.25") as info:
        hn.odeint(nan_after_half, torch.ones(3), t, method="rk4", options={"step_size": 0.05})
    assert info.value.status is Status.NONFINITE


def test_overflow_is_step_underflow_at_the_blowup_time():
    # y' = y^2, y(0) = 1 has the solution 1 / (1 - t), which blows up at t = 1
    y0 = torch.ones(1, dtype=torch.float64)
    # the cause is named, not the generic advice (stiffness, tolerances) that does not apply here
    with pytest.raises(SolverError, match="step size fell below the minimum. The solution grows without bound") as info:
        hn.odeint(lambda t, y: y**2, y0, torch.tensor([0.0, 2.0], dtype=torch.float64))
    assert info.value.status is Status.STEP_UNDERFLOW
    assert info.value.t == pytest.approx(1.0, abs=1e-4)


def test_blowup_backwards_reports_user_time():
    # y' = -y^2 backwards from y(0) = 1: y = 1 / (1 + t) blows up at t = -1 (a negative user time)
    y0 = torch.ones(1, dtype=torch.float64)
    with pytest.raises(SolverError, match="t=-1") as info:
        hn.odeint(lambda t, y: -(y**2), y0, torch.tensor([0.0, -2.0], dtype=torch.float64))
    assert info.value.t == pytest.approx(-1.0, abs=1e-4)


def test_min_step_clamps_until_the_state_is_nonfinite():
    # torchdiffeq's min_step: a field that is steep after t = 0.5 no longer fails there with a step size
    # underflow; steps of min_step are accepted whatever their error, the explicit method goes unstable on
    # the stiff part and the solve ends when the state stops being finite (torchdiffeq: its assertion
    # "non-finite values in state"), naming the clamped dt
    def steep(t, y):
        return -y if float(t) < 0.5 else -1e6 * (y - torch.cos(t))

    with pytest.raises(SolverError, match=r"Solve failed at t=0\.5[0-9]*: The state became NaN.*\(dt=0\.001\)") as info:
        hn.odeint(
            steep,
            torch.ones(1, dtype=torch.float64),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            rtol=1e-10,
            atol=1e-10,
            options={"min_step": 1e-3},
        )
    assert info.value.status is Status.NONFINITE
    assert 0.5 < info.value.t < 0.53


def test_step_collapse_without_min_step_is_still_underflow():
    # min_step = 0 (the default) keeps the resolution floor: a step that collapses at a blow-up fails as
    # STEP_UNDERFLOW, with or without a min_step below the floor being there to clamp it
    y0 = torch.ones(1, dtype=torch.float64)
    for options in ({}, {"min_step": 1e-300}):
        with pytest.raises(SolverError, match="step size fell below the minimum") as info:
            hn.odeint(lambda t, y: y**2, y0, torch.tensor([0.0, 2.0], dtype=torch.float64), options=options)
        assert info.value.status is Status.STEP_UNDERFLOW
        assert info.value.t == pytest.approx(1.0, abs=1e-4)


def test_max_num_steps():
    match = r"maximum number of steps.*increasing `max_num_steps`.*max_num_steps=5"
    with pytest.raises(SolverError, match=match) as info:
        hn.odeint(decay, torch.ones(3), torch.tensor([0.0, 10.0]), options={"max_num_steps": 5})
    assert info.value.status is Status.MAX_STEPS
    assert 0.0 < info.value.t < 10.0
    assert f"t={info.value.t:.6g}" in str(info.value)


def test_throw_false_reports_status_and_nan_pads():
    t = torch.tensor([0.0, 0.01, 5.0, 10.0], dtype=torch.float64)
    sol = hn.solve(
        decay, torch.ones(3, dtype=torch.float64), t, controller=hn.PIDController(max_num_steps=5), throw=False
    )
    assert sol.status is Status.MAX_STEPS
    assert sol.ys.shape == (4, 3)
    torch.testing.assert_close(sol.ys[1], torch.full((3,), math.exp(-0.01), dtype=torch.float64), rtol=1e-6, atol=0)
    assert torch.isnan(sol.ys[2:]).all()
    assert sol.stats.n_accepted + sol.stats.n_rejected == 5
    assert sol.stats.nfe > 0  # the work of a failed solve is reported


def test_throw_false_nonfinite_adaptive_and_fixed():
    t = torch.tensor([0.0, 0.25, 0.75, 1.0])
    for solver, ctrl in [(hn.Dopri5(), hn.PIDController()), (hn.RK4(), hn.ConstantStepSize(step_size=0.05))]:
        sol = hn.solve(nan_after_half, torch.ones(2), t, solver=solver, controller=ctrl, throw=False)
        assert sol.status is Status.NONFINITE, solver.name
        assert torch.isfinite(sol.ys[:2]).all() and torch.isnan(sol.ys[2:]).all()
        torch.testing.assert_close(sol.ys[1], torch.full((2,), math.exp(-0.25)), rtol=1e-3, atol=0)


def test_throw_false_tuple_state_is_padded_per_tensor():
    y0 = (torch.ones(2), torch.ones(1, 3))
    sol = hn.solve(lambda t, y: (y[0] ** 2, -y[1]), y0, torch.tensor([0.0, 0.5, 2.0]), throw=False)
    assert sol.status is Status.STEP_UNDERFLOW
    assert isinstance(sol.ys, tuple) and sol.ys[0].shape == (3, 2) and sol.ys[1].shape == (3, 1, 3)
    assert torch.isnan(sol.ys[0][2]).all() and torch.isnan(sol.ys[1][2]).all()
    torch.testing.assert_close(sol.ys[0][1], torch.full((2,), 2.0), rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------------------------------
# Methods, options and settings
# ----------------------------------------------------------------------------------------------------


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown method 'rk5'\. Valid methods: .*dopri5.*tsit5"):
        hn.odeint(decay, torch.ones(1), T01, method="rk5")


@pytest.mark.parametrize(
    "method,option,valid",
    [
        ("dopri5", "step_size", "first_step"),  # a fixed-step option on an adaptive method
        ("rk4", "first_step", "step_size"),  # and the other way round
        ("dopri5", "foo", "max_num_steps"),
        ("scipy_solver", "step_size", "solver"),  # scipy chooses its own steps
        ("explicit_adams", "max_iters", "max_order"),
    ],
)
def test_unknown_options_list_the_valid_ones(method, option, valid):
    with pytest.raises(ValueError, match=rf"Unknown options \['{option}'\] for method '{method}'.*{valid}"):
        hn.odeint(decay, torch.ones(1), T01, method=method, options={option: 1})


@pytest.mark.parametrize("value", ["no", None, 2])
def test_the_compile_option_takes_a_bool(value):
    with pytest.raises(TypeError, match=r"options\['compile'\] must be True or False"):
        hn.odeint(decay, torch.ones(1), T01, options={"compile": value})


@pytest.mark.parametrize(
    "options,match",
    [
        ({"pcoeff": float("nan")}, "pcoeff must be finite"),  # the solve ran forever on NaN steps
        ({"dcoeff": float("inf")}, "dcoeff must be finite"),
        ({"icoeff": 0.0}, "pcoeff . icoeff . dcoeff must be positive"),  # steps never grew back
        ({"pcoeff": -2.0}, "pcoeff . icoeff . dcoeff must be positive"),  # rejections never shrank
        ({"max_step": 0.0}, "max_step > 0"),  # failed as a "stiff" step-size underflow
        ({"min_step": float("inf"), "max_step": float("inf")}, "min_step finite"),
    ],
)
def test_controller_settings_that_cannot_work_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        hn.odeint(decay, torch.ones(1), T01, options=options)


def test_invalid_option_values():
    y0 = torch.ones(1)
    with pytest.raises(ValueError, match="step_size must be a positive finite number"):
        hn.odeint(decay, y0, T01, method="rk4", options={"step_size": -0.1})
    with pytest.raises(ValueError, match="step_size or grid_constructor, not both"):
        hn.odeint(decay, y0, T01, method="rk4", options={"step_size": 0.1, "grid_constructor": lambda f, y, t: t})
    with pytest.raises(ValueError, match="interp must be 'linear' or 'cubic'"):
        hn.odeint(decay, y0, T01, method="rk4", options={"interp": "quadratic"})
    with pytest.raises(ValueError, match="grid_constructor must return a strictly monotonic grid"):
        hn.odeint(decay, y0, T01, method="rk4", options={"grid_constructor": lambda f, y, t: torch.tensor([0.0, 0.5])})
    with pytest.raises(ValueError, match="max_order must be an int between 1 and 12"):
        hn.odeint(decay, y0, T01, method="explicit_adams", options={"max_order": 13})
    with pytest.raises(ValueError, match="first_step must be positive"):
        hn.odeint(decay, y0, T01, options={"first_step": -1.0})
    with pytest.raises(ValueError, match="max_num_steps must be a positive int"):
        hn.odeint(decay, y0, T01, options={"max_num_steps": 0})
    with pytest.raises(ValueError, match="safety must be in"):
        hn.odeint(decay, y0, T01, options={"safety": 2.0})
    with pytest.raises(ValueError, match="unknown solver 'RK99'.*DOP853"):
        hn.odeint(decay, y0, T01, method="scipy_solver", options={"solver": "RK99"})


@pytest.mark.parametrize(
    "rtol,atol,match",
    [
        (-1e-3, 1e-6, "rtol must be finite and non-negative"),
        (1e-3, math.nan, "atol must be finite and non-negative"),
        (torch.ones(4), 1e-6, r"tolerance of shape \(4,\) does not broadcast to the state \(3,\)"),
        # broadcasts with the state to a larger shape: accepted, then the adjoint's backward pass failed
        (torch.full((2, 3), 1e-6), 1e-6, r"rtol: a tolerance of shape \(2, 3\) does not broadcast to the state \(3,\)"),
    ],
)
def test_invalid_tolerances(rtol, atol, match):
    with pytest.raises(ValueError, match=match):
        hn.odeint(decay, torch.ones(3), T01, rtol=rtol, atol=atol)


def test_tolerance_tuple_needs_one_entry_per_state_tensor():
    with pytest.raises(ValueError, match="one entry per state tensor"):
        hn.odeint(lambda t, y: (-y[0], -y[1]), (torch.ones(2), torch.ones(3)), T01, rtol=(1e-3, 1e-3, 1e-3))
    # an entry that does not fit its tensor is named (it was torch's "expanded size" RuntimeError)
    match = r"atol\[0\] of shape \(3,\) does not broadcast to state tensor 0 of shape \(2,\)"
    with pytest.raises(ValueError, match=match):
        hn.odeint(lambda t, y: (-y[0], -y[1]), (torch.ones(2), torch.ones(3)), T01, atol=(torch.ones(3), 1e-6))


@pytest.mark.parametrize("key", ["jump_t", "step_t"])
def test_jump_and_step_times_must_be_numbers(key):
    # a NaN was sorted among the other times and silently dropped (the solve ran as without it)
    with pytest.raises(ValueError, match=f"{key} contains NaN"):
        hn.odeint(decay, torch.ones(2), T01, options={key: [0.5, math.nan]})
    with pytest.raises(ValueError, match=f"{key} contains NaN"):
        hn.solve(decay, torch.ones(2), T01, **{key: torch.tensor([math.nan])})
    with pytest.raises(TypeError, match=f"{key} must be a tensor or a sequence of times"):
        hn.solve(decay, torch.ones(2), T01, **{key: [[0.25, 0.5]]})


@pytest.mark.parametrize("t_dtype", [torch.int64, torch.bool, torch.complex64, "float64"])
def test_time_dtype_must_be_a_floating_dtype(t_dtype):
    # an integer time handed func t = 0 at every stage of a solve on [0, 1]: exp(-1) instead of exp(-1.5)
    with pytest.raises(TypeError, match="t_dtype must be a floating torch dtype"):
        hn.solve(lambda t, y: -y * (1 + t), torch.ones(1, dtype=torch.float64), T01, t_dtype=t_dtype)


def test_time_dtype_is_checked_inside_the_users_torch_compile():
    # traced without gradients, a solve is the traced loop, which builds no Problem: an integer t_dtype
    # went through unchecked there
    def solve(y):
        return hn.solve(lambda t, y: -y * (1 + t), y, T01, t_dtype=torch.int64).ys

    torch._dynamo.reset()
    with torch.no_grad(), pytest.raises(TypeError, match="t_dtype must be a floating torch dtype"):
        torch.compile(solve, backend="eager")(torch.ones(1, dtype=torch.float64))


def test_solver_controller_mismatch():
    with pytest.raises(ValueError, match="no error estimate; use ConstantStepSize"):
        hn.solve(decay, torch.ones(1), T01, solver=hn.RK4(), controller=hn.PIDController())


def test_fixed_grid_event_needs_a_step_size():
    with pytest.raises(ValueError, match=r"needs options=\{'step_size'"):
        hn.odeint_event(decay, torch.ones(1), torch.tensor(0.0), event_fn=lambda t, y: y[0] - 0.5, method="rk4")


def test_dense_solution_outside_interval():
    sol = hn.odeint_dense(decay, torch.ones(1), 0.0, 1.0)
    with pytest.raises(ValueError, match="outside the solved interval"):
        sol(1.5)


def test_dense_solution_refuses_a_query_of_several_dimensions():
    # a (2, 2) grid of times came back as 4 states stacked along one dimension
    sol = hn.odeint_dense(decay, torch.ones(1), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"t must be a scalar or a 1-D tensor of times, got shape \(2, 2\)"):
        sol(torch.tensor([[0.1, 0.2], [0.3, 0.4]]))
    assert sol(torch.tensor([0.1, 0.2, 0.3, 0.4])).shape == (4, 1)


@pytest.mark.parametrize(("t0", "t1"), [(0.0, 0.0), (torch.tensor(0.5), 0.5), (0.0, math.nan), (-math.inf, 0.0)])
def test_odeint_dense_needs_two_finite_different_ends(t0, t1):
    # the grid check spoke of "t must be strictly increasing" / "t contains NaN", a t the caller never passed
    with pytest.raises(ValueError, match="odeint_dense needs finite t0 and t1 that differ"):
        hn.odeint_dense(decay, torch.ones(1), t0, t1)


def test_odeint_adjoint_needs_params_for_plain_functions():
    with pytest.raises(ValueError, match="pass adjoint_params"):
        hn.odeint_adjoint(decay, torch.ones(1), T01)


def test_julia_only_sensitivities_on_torch_backend():
    with pytest.raises(hn.BackendError, match="only on the Julia backend.*BacksolveAdjoint"):
        hn.solve(decay, torch.ones(1), T01, sensitivity=hn.GaussAdjoint(), backend="torch")


def test_solver_error_is_a_runtime_error_and_status_carries_the_fix():
    err = SolverError(Status.MAX_STEPS, 0.25)
    assert isinstance(err, RuntimeError) and isinstance(err, hn.HybridNodeError)
    assert "t=0.25" in str(err) and "max_num_steps" in str(err)
    for status in Status:
        assert status.message  # every member carries its message


@pytest.mark.parametrize("reverse", [False, True])
def test_event_that_never_happens_stops_with_a_clear_error(reverse):
    # a constant state: the steps grow without bound and the solve runs out of representable times
    with pytest.raises(SolverError, match="event function never changed sign") as info:
        hn.odeint_event(
            lambda t, y: torch.zeros_like(y),
            torch.ones(1),
            torch.tensor(0.0),
            event_fn=lambda t, y: y + 1.0,
            reverse_time=reverse,
        )
    assert info.value.status is Status.NO_EVENT
    assert (info.value.t < 0) == reverse
    sol = hn.solve(
        lambda t, y: torch.zeros_like(y),
        torch.ones(1),
        torch.tensor([0.0, 1.0]),
        event_fn=lambda t, y: y + 1.0,
        throw=False,
    )
    assert sol.status is Status.NO_EVENT


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("t0", [torch.tensor([0.0, 1.0]), torch.zeros(0)], ids=["two", "empty"])
def test_odeint_event_needs_one_start_time(t0, per_sample):
    # torchdiffeq's contract is one start time; a t0 of several was refused as "t must be strictly increasing"
    with pytest.raises(ValueError, match=rf"t0 must be one start time .* got shape \({t0.numel()},\)"):
        hn.odeint_event(decay, torch.ones(1), t0, event_fn=lambda t, y: y[..., 0] - 0.5, per_sample=per_sample)
    # one element in any layout is the start time
    for one in (torch.tensor([0.0]), torch.tensor([[0.0]]), 0.0):
        t_event, _ = hn.odeint_event(decay, torch.ones(1), one, event_fn=lambda t, y: y[0] - 0.5)
        assert float(t_event) == pytest.approx(math.log(2), rel=1e-5)  # y = exp(-t) halves at log 2; solver rtol 1e-7


def test_event_solve_respects_max_num_steps():
    # a decaying state never reaches -1; max_num_steps bounds the search
    with pytest.raises(SolverError, match="max_num_steps=50"):
        hn.odeint_event(
            decay, torch.ones(1), torch.tensor(0.0), event_fn=lambda t, y: y + 1.0, options={"max_num_steps": 50}
        )
