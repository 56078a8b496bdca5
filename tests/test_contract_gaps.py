"""Small contracts of the public API, the adjoint settings and the step controllers: each case was
accepted silently (or failed obscurely) and is now either honoured or refused with the fix named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hybrid_node as hn

F64 = torch.float64
ROT = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)


# ----------------------------------------------------------------------------------------------------
# odeint_adjoint: forward options with another adjoint_method
# ----------------------------------------------------------------------------------------------------


def _linear_adjoint_grad(lib, **kw):
    a = ROT.clone().requires_grad_(True)
    ys = lib.odeint_adjoint(
        lambda t, y: y @ a, torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
        adjoint_params=(a,), **kw,
    )  # fmt: skip
    return torch.autograd.grad(ys[-1].sum(), a)[0]


def test_adjoint_method_other_than_method_with_options_needs_adjoint_options_as_torchdiffeq():
    """torchdiffeq refuses forward options it cannot carry over to another backward method; the backward
    euler solve had run with none of them: one step over [0, 1], dL/dA off in sign."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    kw = dict(method="rk4", options={"step_size": 0.05}, adjoint_method="euler")
    with pytest.raises(ValueError, match="adjoint_options"):
        _linear_adjoint_grad(torchdiffeq, **kw)
    with pytest.raises(ValueError, match=r"adjoint_method='euler' differs from method='rk4'.*adjoint_options"):
        _linear_adjoint_grad(hn, **kw)
    # with adjoint_options both libraries solve the same backward problem: rk4 forward, euler backward
    # on the same grid (outputs on it), so they agree to rounding
    got = _linear_adjoint_grad(hn, **kw, adjoint_options={"step_size": 0.05})
    want = _linear_adjoint_grad(torchdiffeq, **kw, adjoint_options={"step_size": 0.05})
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)  # the same arithmetic, rounding only


def test_adjoint_options_rule_cases_that_stay_accepted():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    # the same method, no options, or adjoint_options given: accepted (the first two reuse the forward settings)
    for kw in (
        dict(method="rk4", options={"step_size": 0.1}, adjoint_method="rk4"),
        dict(method="rk4", adjoint_method="euler"),
        dict(method="rk4", options={"step_size": 0.1}, adjoint_method="dopri5", adjoint_options={}),
        dict(method="rk4", options={"step_size": 0.1}, adjoint_method="dopri5", adjoint_options={"norm": "seminorm"}),
    ):
        torch.testing.assert_close(
            _linear_adjoint_grad(hn, **kw), _linear_adjoint_grad(torchdiffeq, **kw), rtol=1e-6, atol=1e-6
        )  # dopri5's backward: both at rtol 1e-7, different step sequences
    # method=None is dopri5 here (torchdiffeq compares the raw strings and would refuse this one)
    _linear_adjoint_grad(hn, options={"first_step": 0.1}, adjoint_method="dopri5")


def test_adjoint_options_rule_applies_to_per_sample_events_and_ignores_t_end():
    a = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.tensor([[1.0], [2.0]], dtype=F64)
    common = dict(event_fn=lambda t, y: y[..., 0] - 0.5, odeint_interface=hn.odeint_adjoint, adjoint_params=(a,))
    with pytest.raises(ValueError, match="adjoint_options"):
        hn.odeint_event(
            lambda t, y: -a * y, y0, 0.0, per_sample=True, method="rk4", options={"step_size": 0.01},
            adjoint_method="euler", **common,
        )  # fmt: skip
    # t_end travels as options['event_t_end'], which is no method setting: no refusal
    t_e, _ = hn.odeint_event(
        lambda t, y: -a * y, y0, 0.0, per_sample=True, t_end=50.0, adjoint_method="rk4", **common
    )  # fmt: skip
    torch.testing.assert_close(t_e, torch.log(y0[:, 0] / 0.5) / 0.5, rtol=1e-6, atol=1e-6)  # dopri5 at rtol 1e-7
    t_e, _ = hn.odeint_event(lambda t, y: -a * y, y0[0], 0.0, t_end=50.0, adjoint_method="rk4", **common)
    torch.testing.assert_close(t_e, torch.log(y0[0, 0] / 0.5) / 0.5, rtol=1e-6, atol=1e-6)  # as above


def test_per_sample_refusal_of_the_adjoints_names_odeint_for_odeint_adjoint_callers():
    """odeint_adjoint has no sensitivity argument, so the refusal names hn.odeint too (it named only
    sensitivity=DirectBackprop())."""
    lin = torch.nn.Linear(2, 2).to(F64)
    y0 = torch.ones(3, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"per-sample.*hn\.odeint instead of hn\.odeint_adjoint"):
        hn.odeint_adjoint(lambda tt, y: lin(y), y0, t, options={"per_sample": True}, adjoint_params=())
    with pytest.raises(ValueError, match=r"per-sample.*DirectBackprop\(\)"):
        hn.solve(lin.forward, y0, t, controller=hn.PIDController(per_sample=True), sensitivity=hn.BacksolveAdjoint())


# ----------------------------------------------------------------------------------------------------
# DirectBackprop(checkpoints=k): the tensors of a plain function
# ----------------------------------------------------------------------------------------------------


def _decay_grads(sensitivity, listed=False):
    w = torch.tensor(0.7, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    sol = hn.solve(
        lambda t, y: -w * y, y0, torch.tensor([0.0, 1.0], dtype=F64), solver=hn.RK4(),
        controller=hn.ConstantStepSize(step_size=0.1), sensitivity=sensitivity, adjoint_params=(w,) if listed else None,
    )  # fmt: skip
    return torch.autograd.grad(sol.ys[-1].sum(), (y0, w), allow_unused=True)


def test_checkpointed_direct_backprop_needs_adjoint_params_for_a_plain_function():
    """The replayed steps differentiate y0 and the listed tensors only: a tensor the plain function closes
    over got no gradient (None, where DirectBackprop() gives dL/dw = -(1 + 0.5) e^-0.7 = -0.745)."""
    g_y0, g_w = _decay_grads(hn.DirectBackprop())
    torch.testing.assert_close(g_w, -1.5 * torch.exp(torch.tensor(-0.7, dtype=F64)), rtol=1e-6, atol=0)  # rk4 h=0.1
    with pytest.raises(ValueError, match=r"not an nn.Module.*adjoint_params=\(\.\.\.\).*DirectBackprop\(\)"):
        _decay_grads(hn.DirectBackprop(checkpoints=2))
    # listed, w gets direct backprop's gradient (the same steps, recomputed: rounding only)
    c_y0, c_w = _decay_grads(hn.DirectBackprop(checkpoints=2), listed=True)
    torch.testing.assert_close((c_y0, c_w), (g_y0, g_w), rtol=1e-13, atol=1e-15)  # same arithmetic, reordered


# ----------------------------------------------------------------------------------------------------
# PIDController.first_step
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [torch.tensor([0.1, 0.2]), np.array([0.1, 0.2])], ids=["tensor", "array"])
def test_several_first_steps_without_per_sample_control_are_refused_clearly(value):
    """One first step per sample needs per_sample=True; here it failed with torch's "Boolean value of Tensor
    with more than one value is ambiguous"."""
    with pytest.raises(ValueError, match="first_step must be one positive number, got 2 values"):
        hn.PIDController(first_step=value, per_sample=False)
    with pytest.raises(ValueError, match="first_step must be one positive number"):
        hn.odeint(
            lambda t, y: -y,
            torch.ones(2, 1),
            torch.tensor([0.0, 1.0]),
            options={"first_step": value, "per_sample": False},
        )


@pytest.mark.parametrize("value", ["0.1", True, torch.tensor(0.1j), -0.1, float("nan"), torch.tensor(0.0)])
def test_first_step_that_is_not_a_positive_number_is_refused(value):
    with pytest.raises(ValueError, match="first_step must be (one real number|positive)"):
        hn.PIDController(first_step=value)


@pytest.mark.parametrize(
    "setting, value",
    [
        ("safety", torch.tensor([0.9, 0.8])),
        ("max_step", torch.tensor([1.0, 2.0])),
        ("min_step", "0.1"),
        ("pcoeff", "a"),
        ("dfactor", 0.5j),
    ],
)
def test_scalar_controller_settings_that_are_not_one_number_are_named(setting, value):
    """They failed inside the comparisons of the checks, with torch's "Boolean value of Tensor with more
    than one value is ambiguous" or Python's "'<=' not supported", without the setting's name."""
    with pytest.raises(ValueError, match=f"{setting} must be one real number"):
        hn.PIDController(**{setting: value})


def test_step_size_that_is_not_one_number_is_named():
    # a tensor of several values said "only one element tensors can be converted to Python scalars"
    with pytest.raises(ValueError, match="step_size must be one real number"):
        hn.ConstantStepSize(step_size=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="step_size must be one real number"):
        hn.ConstantStepSize(step_size="0.1")
    # one number in any numeric form is a step size, as before
    for value in (0.25, 1, np.float32(0.25), torch.tensor(0.25)):
        ys = hn.odeint(lambda t, y: torch.ones_like(y), torch.zeros(1), torch.tensor([0.0, 1.0]), method="euler",
                       options={"step_size": value})  # fmt: skip
        torch.testing.assert_close(ys[-1], torch.ones(1), rtol=0, atol=1e-6)  # y = t exactly, float32 rounding


def test_bool_settings_of_the_pid_controller_must_be_bools():
    """max_num_steps=True was one step (a bool is an int) and per_sample="no" switched per-sample
    control on; ConstantStepSize and device_loop refused such values already."""
    with pytest.raises(ValueError, match="max_num_steps must be a positive int, got True"):
        hn.PIDController(max_num_steps=True)
    with pytest.raises(ValueError, match="per_sample must be True or False, got 'no'"):
        hn.PIDController(per_sample="no")


@pytest.mark.parametrize("value", [0.05, 1, np.float32(0.05), torch.tensor(0.05), torch.tensor([0.05])])
def test_one_first_step_is_taken_in_any_numeric_form(value):
    y0 = torch.ones(2, 1, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    for per_sample in (False, True):
        ys = hn.odeint(lambda tt, y: -y, y0, t, options={"first_step": value, "per_sample": per_sample})
        # dopri5 at rtol 1e-7 on y' = -y: within 1e-6 of e^-1 whatever the first step
        torch.testing.assert_close(ys[-1], torch.full_like(y0, np.exp(-1.0)), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# scipy_solver through hn.solve: throw=False, jump_t/step_t
# ----------------------------------------------------------------------------------------------------


def _blowup(t, y):
    """y' = y^2 from y(0) = y0: y = y0 / (1 - y0 t), infinite at t = 1 / y0."""
    return y**2


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("sensitivity", [hn.DirectBackprop(), hn.BacksolveAdjoint()], ids=["direct", "backsolve"])
def test_scipy_solver_with_throw_false_returns_the_status_and_the_outputs_reached(reverse, sensitivity):
    """As the torch solvers: the failure's status, the states before it, NaN after (it raised SolverError)."""
    sign = -1.0 if reverse else 1.0
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    t = sign * torch.tensor([0.0, 0.5, 0.9, 1.5, 2.0], dtype=F64)
    field = _blowup if not reverse else (lambda tt, y: -(y**2))
    kw = dict(solver=hn.ScipySolver("RK45"), sensitivity=sensitivity, adjoint_params=())
    with pytest.raises(hn.SolverError, match="t=(-)?1"):
        hn.solve(field, y0, t, **kw)
    sol = hn.solve(field, y0, t, throw=False, **kw)
    assert sol.status == hn.Status.STEP_UNDERFLOW
    exact = 1.0 / (1.0 - sign * t[:3])
    # solve_ivp's RK45 at rtol 1e-7: the error grows as y^2 towards the blow-up (3e-7 relative at y = 10)
    torch.testing.assert_close(sol.ys[:3, 0], exact, rtol=1e-5, atol=0)
    assert torch.isnan(sol.ys[3:]).all()
    if isinstance(sensitivity, hn.BacksolveAdjoint):
        # the outputs reached keep their gradient: dy(0.9)/dy0 = 1 / (1 - 0.9 y0)^2 = 100
        (g,) = torch.autograd.grad(sol.ys[2].sum(), y0)
        torch.testing.assert_close(g, torch.tensor([100.0], dtype=F64), rtol=1e-4, atol=0)  # backward RK45, rtol 1e-7


def test_scipy_solver_with_throw_false_pads_each_tensor_of_a_tuple_state():
    y0 = (torch.tensor([1.0], dtype=F64), torch.tensor([0.5, 0.25], dtype=F64))
    t = torch.tensor([0.0, 0.5, 1.5], dtype=F64)
    sol = hn.solve(lambda tt, y: (y[0] ** 2, -y[1]), y0, t, solver=hn.ScipySolver("RK45"), throw=False)
    assert sol.status == hn.Status.STEP_UNDERFLOW
    torch.testing.assert_close(sol.ys[0][1], torch.tensor([2.0], dtype=F64), rtol=1e-5, atol=0)  # RK45, rtol 1e-7
    torch.testing.assert_close(sol.ys[1][1], y0[1] * np.exp(-0.5), rtol=1e-5, atol=0)  # as above
    assert torch.isnan(sol.ys[0][2]).all() and torch.isnan(sol.ys[1][2]).all()


@pytest.mark.parametrize("name", ["jump_t", "step_t"])
def test_scipy_solver_refuses_jump_and_step_times(name):
    """odeint refuses them as unknown options of scipy_solver; hn.solve dropped them without a word."""
    with pytest.raises(ValueError, match=f"Unknown options.*{name}"):
        hn.odeint(
            lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method="scipy_solver", options={name: [0.5]}
        )
    with pytest.raises(ValueError, match="scipy_solver runs its own steps and cannot end them at jump_t/step_t"):
        hn.solve(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), solver=hn.ScipySolver(), **{name: [0.5]})


# ----------------------------------------------------------------------------------------------------
# A terminal event_fn with no value
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "interface, kw",
    [
        (hn.odeint, {}),
        (hn.odeint, {"method": "rk4", "options": {"step_size": 0.1}}),
        (hn.odeint_adjoint, {"adjoint_params": ()}),
        (hn.odeint_adjoint, {"adjoint_params": (), "method": "rk4", "options": {"step_size": 0.1}}),
    ],
    ids=["adaptive", "fixed", "adjoint-adaptive", "adjoint-fixed"],
)
def test_empty_event_value_is_refused_at_once(interface, kw):
    """An empty event_fn value can never change sign: the search ran its 100,000 steps (36 s adaptive,
    16 s on the fixed grid) before failing with NO_EVENT; now the first evaluation refuses it."""
    calls = []

    def event_fn(t, y):
        calls.append(float(t))
        return y[2:] - 0.5  # the state has two elements: empty

    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    with pytest.raises(ValueError, match=r"event_fn returned an empty tensor \(shape \(0,\)\)"):
        hn.odeint_event(lambda t, y: -y, y0, 0.0, event_fn=event_fn, odeint_interface=interface, **kw)
    assert len(calls) == 1  # at t0, before any step
    for sensitivity in (hn.DirectBackprop(), hn.BacksolveAdjoint(), hn.InterpolatingAdjoint()):
        with pytest.raises(ValueError, match="event_fn returned an empty tensor"):
            hn.solve(
                lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=event_fn,
                sensitivity=sensitivity, adjoint_params=(),
            )  # fmt: skip


def test_event_with_one_value_is_still_found():
    """The check lets a one-element event through: y = e^-t reaches 0.5 at t = ln 2."""
    t_e, ys = hn.odeint_event(lambda t, y: -y, torch.tensor([1.0], dtype=F64), 0.0, event_fn=lambda t, y: y - 0.5)
    torch.testing.assert_close(t_e, torch.tensor(np.log(2.0), dtype=F64), rtol=1e-7, atol=1e-7)  # dopri5, rtol 1e-7


# ----------------------------------------------------------------------------------------------------
# benchmarks/per_sample.py: the same problem for torchode
# ----------------------------------------------------------------------------------------------------


def test_per_sample_benchmark_gives_torchode_the_tolerances_in_the_state_dtype(monkeypatch, capsys):
    """torchode stores a float tolerance in float32 (atol=1e-8 became 9.99999994e-09): the float64 rows
    compared solves of slightly different problems."""
    to = pytest.importorskip("torchode")
    from benchmarks import per_sample

    built = []

    class Recording(to.IntegralController):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(to, "IntegralController", Recording)
    assert per_sample.main(["--repeats", "1", "--batch", "2", "--hidden", "2"]) == 0
    assert "torchode (per-sample)" in capsys.readouterr().out
    assert built
    for ctrl in built:
        assert ctrl.atol.dtype == F64 and ctrl.rtol.dtype == F64
        assert ctrl.atol.item() == 1e-8 and ctrl.rtol.item() == 1e-6  # exactly the float64 values
