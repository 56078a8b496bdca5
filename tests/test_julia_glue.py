"""The Python side of the Julia backend, end to end against a stand-in engine (tests/julia_standin.py).

The stand-in honours the engine contract with scipy, so these tests check layouts, dtypes, the
autograd bridge (gradients of y0, parameters and t, via gradcheck) and error paths; they do not
exercise Julia (tests/test_cross_backend.py does, where Julia exists).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from julia_standin import DEFAULT_MAXITERS, JuliaError, JuliaVector, StandinEngine, gauss_config
from torch import nn

import hybrid_node as hn
from hybrid_node._errors import BackendError, JuliaNotAvailableError, SolverError, Status
from hybrid_node.julia import backend as jb
from hybrid_node.julia import runtime as julia_runtime
from hybrid_node.julia.translate import MLPSpec, MLPVectorField
from hybrid_node.sensitivity.settings import (
    BacksolveAdjoint,
    DirectBackprop,
    GaussAdjoint,
    InterpolatingAdjoint,
    QuadratureAdjoint,
)

TIGHT = dict(rtol=1e-12, atol=1e-12)
SENSITIVITIES = (GaussAdjoint(), InterpolatingAdjoint(), QuadratureAdjoint(), BacksolveAdjoint())


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class PlainMLP(nn.Module):
    """Same maths as MLPVectorField(net, time_input=True) but without mlp_spec: callback path."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return self.net(torch.cat([y, t.to(y.dtype).expand(*y.shape[:-1], 1)], -1))


def _net(d_in, d_out, hidden=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).double()


def _solve(func, y0, t, engine=None, **kw):
    return jb.solve_with_engine(engine or StandinEngine(), func, y0, t, **{**TIGHT, **kw})


# ---------------------------------------------------------------- gradients (gradcheck, float64)


def test_gradcheck_native_path_y0_t_params():
    func = MLPVectorField(_net(3, 2), time_input=True)
    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 0.7], dtype=torch.float64, requires_grad=True)
    params = tuple(func.parameters())
    engine = StandinEngine()

    def fn(y0, t, *ps):
        return _solve(func, y0, t, engine).ys

    assert torch.autograd.gradcheck(fn, (y0, t, *params), atol=1e-5, rtol=1e-4)
    assert isinstance(engine.forward_calls[0]["problem"], MLPSpec)


def test_gradcheck_callback_path_y0_t_params():
    func = PlainMLP(_net(3, 2, hidden=3))
    y0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 0.6], dtype=torch.float64, requires_grad=True)
    engine = StandinEngine()

    def fn(y0, t, *ps):
        return _solve(func, y0, t, engine).ys

    assert torch.autograd.gradcheck(fn, (y0, t, *func.parameters()), atol=1e-5, rtol=1e-4, fast_mode=True)
    assert not isinstance(engine.forward_calls[0]["problem"], MLPSpec)


def test_gradcheck_decreasing_times_and_tuple_state():
    w = torch.tensor([0.5, -0.8], dtype=torch.float64, requires_grad=True)

    def func(t, state):
        a, b = state
        return (w[0] * b.sum() * torch.ones_like(a) - a, w[1] * torch.sin(a).sum() + t * b)

    a0 = torch.tensor([0.3, -0.1], dtype=torch.float64, requires_grad=True)
    b0 = torch.tensor([[0.2]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 0.6, 0.1], dtype=torch.float64, requires_grad=True)

    def fn(a0, b0, t, w):
        return _solve(func, (a0, b0), t, adjoint_params=(w,)).ys

    assert torch.autograd.gradcheck(fn, (a0, b0, t, w), atol=1e-5, rtol=1e-4, fast_mode=True)


def test_time_gradient_matches_finite_differences_of_a_linear_system():
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    t = torch.tensor([0.2, 0.9, 1.5], dtype=torch.float64, requires_grad=True)
    ys = _solve(lambda t, y: y @ A.T, y0, t).ys
    weights = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 0.25]], dtype=torch.float64)
    (ys * weights).sum().backward()

    def loss(tt):  # exact solution y(t_i) = expm(A (t_i - t_0)) y0
        out = [torch.linalg.matrix_exp(A * (ti - tt[0])) @ y0 for ti in tt]
        return (torch.stack(out) * weights).sum()

    eps = 1e-6
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = eps
        fd = (loss(t.detach() + e) - loss(t.detach() - e)) / (2 * eps)
        assert abs(float(t.grad[i]) - float(fd)) < 1e-6


# ---------------------------------------------------------------- layouts, dtypes, devices


@pytest.mark.parametrize("shape", [(2,), (5, 2), (3, 4, 2)])
def test_output_layout_matches_exact_solution(shape):
    A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    y0 = torch.randn(*shape, dtype=torch.float64)
    t = torch.linspace(0, 1.3, 4, dtype=torch.float64)
    sol = _solve(lambda t, y: y @ A.T, y0, t)
    assert sol.ys.shape == (4, *shape)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(A * ti).T for ti in t])
    torch.testing.assert_close(sol.ys, exact, rtol=1e-9, atol=1e-9)
    assert sol.stats.nfe > 0 and sol.status is Status.SUCCESS


def test_engine_receives_julia_layout_and_float64():
    func = MLPVectorField(_net(2, 2))
    engine = StandinEngine()
    y0 = torch.arange(6, dtype=torch.float32).reshape(3, 2) / 10  # B=3, D=2
    sol = _solve(func, y0, torch.tensor([0.0, 0.5]), engine)
    call = engine.forward_calls[0]
    assert call["u0"].shape == (2, 3) and call["u0"].dtype == np.float64
    np.testing.assert_array_equal(call["u0"], y0.double().numpy().T)
    assert sol.ys.dtype == torch.float32 and sol.ys.shape == (2, 3, 2)
    np.testing.assert_allclose(call["theta"], nn.utils.parameters_to_vector(func.parameters()).detach().numpy())


def test_float32_parameters_get_float32_gradients():
    func = MLPVectorField(_net(2, 2).float())
    y0 = torch.randn(4, 2, requires_grad=True)
    _solve(func, y0, torch.tensor([0.0, 0.5])).ys.square().sum().backward()
    assert y0.grad.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in func.parameters())


def test_zero_size_parameters_on_the_callback_path():
    # theta is then empty and the vector-Jacobian product answers N values (the dummy parameter is
    # for no tensors at all): callback.jl checks its length against N + length(theta).
    empty = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.7], dtype=torch.float64)
    sol = _solve(lambda t, y: -y + empty.sum(), y0, t, adjoint_params=(empty,))
    sol.ys[-1].sum().backward()
    # y(t) = y0 exp(-t): d sum(y(0.7)) / d y0 = exp(-0.7); the stand-in's DOP853 at 1e-12 tolerances
    np.testing.assert_allclose(y0.grad.numpy(), np.exp(-0.7) * np.ones(2), rtol=1e-9)
    assert empty.grad is not None and empty.grad.shape == (0,)


def test_adjoint_params_subset_gets_gradients_only_there():
    func = MLPVectorField(_net(2, 2))
    first, *rest = list(func.parameters())
    _solve(
        func, torch.randn(3, 2, dtype=torch.float64), torch.tensor([0.0, 0.5]), adjoint_params=(first,)
    ).ys.sum().backward()
    assert first.grad is not None and all(p.grad is None for p in rest)


def test_native_and_callback_paths_agree():
    net = _net(3, 2)
    y0 = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    native = _solve(MLPVectorField(net, time_input=True), y0, t).ys
    callback = _solve(PlainMLP(net), y0, t).ys
    torch.testing.assert_close(native, callback, rtol=1e-9, atol=1e-10)


def test_stiff_methods_send_a_jacobian_and_solve_robertson():
    def robertson(t, y):
        y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
        return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2], -1)

    engine = StandinEngine()
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    sol = jb.solve_with_engine(
        engine,
        robertson,
        y0,
        torch.tensor([0.0, 1.0, 40.0], dtype=torch.float64),
        method="rodas5p",
        rtol=1e-8,
        atol=1e-10,
    )
    assert engine.forward_calls[0]["config"].stiff
    torch.testing.assert_close(sol.ys.sum(-1), torch.ones(3, dtype=torch.float64), rtol=1e-7, atol=1e-7)
    # Reference at t=40: y1 = 0.7158271, y3 = 0.2841637 (Hairer & Wanner, Solving ODEs II).
    assert abs(float(sol.ys[2, 0]) - 0.7158271) < 1e-5 and abs(float(sol.ys[2, 2]) - 0.2841637) < 1e-5


def test_single_time_returns_y0_without_the_engine():
    engine = StandinEngine()
    y0 = torch.randn(2, requires_grad=True)
    sol = jb.solve_with_engine(engine, lambda t, y: y, y0, torch.tensor([0.3]))
    assert sol.ys.shape == (1, 2) and not engine.forward_calls
    sol.ys.sum().backward()
    torch.testing.assert_close(y0.grad, torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_state_comes_back_on_cuda():
    func = MLPVectorField(_net(2, 2).cuda())
    y0 = torch.randn(3, 2, dtype=torch.float64, device="cuda", requires_grad=True)
    sol = _solve(func, y0, torch.tensor([0.0, 0.5], device="cuda"))
    assert sol.ys.device.type == "cuda"
    sol.ys.sum().backward()
    assert y0.grad.device.type == "cuda"


# ---------------------------------------------------------------- configuration mapping


@pytest.mark.parametrize(
    "name, julia",
    [
        ("dopri5", "DP5"),
        (None, "DP5"),
        ("Tsit5", "Tsit5"),
        ("tsit5", "Tsit5"),
        ("bosh3", "BS3"),
        ("rk4", "RK4"),
        ("euler", "Euler"),
        ("Vern7", "Vern7"),
        ("vern9", "Vern9"),
        ("Rodas5P", "Rodas5P"),
        ("rosenbrock23", "Rosenbrock23"),
        ("KenCarp4", "KenCarp4"),
        ("trbdf2", "TRBDF2"),
        ("FBDF", "FBDF"),
        ("qndf", "QNDF"),
    ],
)
def test_method_names_map_to_julia_algorithms(name, julia):
    assert jb.resolve_method(name) == julia


def test_torch_only_method_names_the_julia_methods():
    with pytest.raises(BackendError, match="adaptive_heun.*torch backend.*tsit5"):
        jb.resolve_method("adaptive_heun")
    with pytest.raises(BackendError, match="Unknown method"):
        jb.resolve_method("rk45")
    with pytest.raises(TypeError):
        jb.resolve_method(5)


@pytest.mark.parametrize(
    "setting, name, checkpointing",
    [
        (None, "GaussAdjoint", False),
        (GaussAdjoint(), "GaussAdjoint", False),
        (InterpolatingAdjoint(), "InterpolatingAdjoint", False),
        (QuadratureAdjoint(), "QuadratureAdjoint", False),
        (BacksolveAdjoint(), "BacksolveAdjoint", False),
    ],
)
def test_sensitivity_mapping(setting, name, checkpointing):
    assert jb.resolve_sensitivity(setting, "Tsit5", 1e-6, 1e-8)[:2] == (name, checkpointing)


def test_checkpoint_count_is_said_to_be_unused_upstream():
    # Issue 20 item 9: SciMLSensitivity's InterpolatingAdjoint(checkpointing=true) checkpoints at the
    # saved times; N cannot be passed on, and the user is told so.
    with pytest.warns(UserWarning, match=r"checkpoints=4.*output times t only.*not used"):
        assert jb.resolve_sensitivity(InterpolatingAdjoint(checkpoints=4), "Tsit5", 1e-6, 1e-8)[:2] == (
            "InterpolatingAdjoint",
            True,
        )


def test_quadrature_tolerances_are_the_forward_ones_and_differing_ones_are_refused():
    # Issue 20 item 3: upstream overrides QuadratureAdjoint's own abstol/reltol with the solve's.
    assert jb.resolve_sensitivity(QuadratureAdjoint(), "Tsit5", 1e-6, 1e-8)[2:] == (1e-6, 1e-8)
    assert jb.resolve_sensitivity(QuadratureAdjoint(rtol=1e-6, atol=1e-8), "Tsit5", 1e-6, 1e-8)[2:] == (1e-6, 1e-8)
    for setting in (QuadratureAdjoint(rtol=1e-3), QuadratureAdjoint(atol=1e-4)):
        with pytest.raises(BackendError, match="QuadratureAdjoint backward pass with the forward tolerances"):
            jb.resolve_sensitivity(setting, "Tsit5", 1e-6, 1e-8)


@pytest.mark.parametrize(
    "setting, match",
    [
        (DirectBackprop(), "GaussAdjoint"),
        (InterpolatingAdjoint(checkpoints=3), "#1075"),
        (QuadratureAdjoint(rtol=1e-3), "forward tolerances"),
        (GaussAdjoint(norm="seminorm"), "seminorm"),
        (GaussAdjoint(rtol=1e-3), "forward tolerances"),
        (BacksolveAdjoint(method="tsit5"), "forward method"),
        (GaussAdjoint(options={"max_num_steps": 3}), "options"),
    ],
)
def test_impossible_sensitivities_raise_backend_error(setting, match):
    with pytest.raises(BackendError, match=match):
        jb.resolve_sensitivity(setting, "Rodas5P", 1e-6, 1e-8)


def test_standin_fails_checkpointed_interpolating_adjoint_after_fixed_euler_steps_as_upstream_does():
    # SciMLSensitivity re-solves each checkpoint interval with sol.alg and (; reltol, abstol) only
    # (src/interpolating_adjoint.jl:49-51): Euler gets no dt and OrdinaryDiffEqCore's __init throws.
    config = dataclasses.replace(
        _dp5_config(),
        algorithm="Euler",
        sensitivity="InterpolatingAdjoint",
        checkpointing=True,
        dt=0.1,
        fixed_step=True,
    )
    problem = jb.make_callbacks(lambda t, m: -m, (1, 1), (), torch.float64, "cpu")
    engine = StandinEngine()
    out = engine.forward(problem, np.ones((1, 1)), np.zeros(1), np.array([0.0, 0.5, 1.0]), config)
    assert out.success
    with pytest.raises(JuliaError, match="Fixed timestep methods require a choice of dt"):
        engine.backward(out.handle, np.ones_like(out.ys))
    # without checkpointing the backward solve gets the forward's dt (concrete_solve.jl's kwargs)
    unchecked = dataclasses.replace(config, checkpointing=False)
    out = engine.forward(problem, np.ones((1, 1)), np.zeros(1), np.array([0.0, 0.5, 1.0]), unchecked)
    assert np.all(np.isfinite(engine.backward(out.handle, np.ones_like(out.ys))[0]))


@pytest.mark.parametrize("method, options", [("euler", None), ("rk4", {"step_size": 0.25}), ("trbdf2", None)])
def test_checkpointed_interpolating_adjoint_with_fixed_steps_is_refused_before_the_solve(method, options):
    # With fixed steps a checkpointed InterpolatingAdjoint either fails in the backward pass (Euler,
    # see the stand-in test above) or re-solves the checkpoint intervals adaptively (RK4, TRBDF2:
    # gradients along another trajectory than the one returned). Refused before Julia is entered.
    engine = StandinEngine()
    y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    setting = InterpolatingAdjoint(checkpoints=2)
    with pytest.raises(BackendError, match=r"checkpoints=\.\.\.\) with fixed steps"):
        jb.solve_with_engine(engine, lambda t, y: -y, y0, t, method=method, options=options, sensitivity=setting)
    assert engine.forward_calls == []


def test_checkpointed_interpolating_adjoint_with_adaptive_steps_is_still_accepted():
    # trbdf2 with options adaptive=True takes adaptive steps: checkpointing works there.
    with pytest.warns(UserWarning, match="number of checkpoints is not used"):
        checkpointed = jb.resolve_sensitivity(
            InterpolatingAdjoint(checkpoints=2), "TRBDF2", 1e-6, 1e-8, fixed_step=False
        )
    assert checkpointed[:2] == ("InterpolatingAdjoint", True)
    assert jb.resolve_sensitivity(GaussAdjoint(), "Euler", 1e-6, 1e-8, fixed_step=True)[:2] == ("GaussAdjoint", False)


def test_per_component_adjoint_tolerances_are_checked_on_julia_too():
    # The adjoint settings take tensors (one tolerance per component) since the torch backend uses
    # them; comparing one with the forward tolerance raised "Boolean value of Tensor with more than
    # one value is ambiguous". Julia's adjoint runs with the scalar forward tolerances: equal
    # components are those, different ones are refused like a different scalar.
    same = GaussAdjoint(rtol=torch.tensor([1e-6, 1e-6]), atol=torch.full((2,), 1e-8))
    assert jb.resolve_sensitivity(same, "Tsit5", 1e-6, 1e-8) == ("GaussAdjoint", False, 1e-6, 1e-8)
    with pytest.raises(BackendError, match="forward tolerances"):
        jb.resolve_sensitivity(GaussAdjoint(rtol=torch.tensor([1e-6, 1e-5])), "Tsit5", 1e-6, 1e-8)
    with pytest.raises(BackendError, match="forward tolerances"):
        jb.resolve_sensitivity(QuadratureAdjoint(atol=torch.tensor(1e-9)), "Tsit5", 1e-6, 1e-8)


def test_options_map_to_dt_and_maxiters():
    ts = np.array([0.0, 0.5, 1.5])
    # adaptive steps get the torch backend's default limit, not upstream's 10^6 (test_julia_step_limit.py)
    assert jb.resolve_options({}, "Tsit5", ts) == (None, 2**31 - 1, False)
    assert jb.resolve_options({"first_step": 0.01, "max_num_steps": 50}, "Tsit5", ts) == (0.01, 50, False)
    # fixed steps always carry their limit (the torch backend's default 10^6; see below)
    assert jb.resolve_options(None, "RK4", ts) == (1.0, 10**6, True)  # steps on the output grid
    assert jb.resolve_options({"step_size": 0.1}, "Euler", ts) == (0.1, 10**6, True)
    assert jb.resolve_options({"step_size": 0.1, "max_num_steps": 15}, "Euler", ts) == (0.1, 15, True)
    with pytest.raises(ValueError, match=r"valid options are \['first_step', 'max_num_steps'\]"):
        jb.resolve_options({"step_size": 0.1}, "Tsit5", ts)
    with pytest.raises(ValueError, match="max_num_steps"):
        jb.resolve_options({"max_num_steps": 0}, "Tsit5", ts)


def _ordinarydiffeq_fixed_grid(ts: np.ndarray, dt: float) -> list[float]:
    """The times a fixed-step OrdinaryDiffEq solve with ``dt`` and ``tstops = ts`` steps to.

    OrdinaryDiffEqCore's modify_dt_for_tstops! (non-adaptive branch): each step is
    ``min(dtcache, distance to the next tstop)``, within 100 eps of the tstop counting as reaching it.
    """
    t, grid = float(ts[0]), [float(ts[0])]
    for stop in ts[1:]:
        while stop - t > 100 * np.finfo(float).eps * max(abs(t), abs(stop)):
            t = float(stop) if dt + 100 * np.finfo(float).eps * abs(stop) >= stop - t else t + dt
            grid.append(t)
    return grid


@pytest.mark.parametrize("algorithm, method", [("RK4", "rk4_classic"), ("Euler", "euler")])
def test_fixed_steps_without_step_size_step_on_the_output_times_as_on_torch(algorithm, method):
    # torch (and torchdiffeq) step from output time to output time without step_size. The Julia
    # backend sent dt = the smallest gap, so on [0, 0.1, 1] Julia took ten RK4 steps where torch
    # takes two: e = 2.7182797 against torch's 2.7119096 for y' = y.
    ts = np.array([0.0, 0.1, 1.0, 1.25])
    dt, _, fixed = jb.resolve_options(None, algorithm, ts)
    assert fixed and _ordinarydiffeq_fixed_grid(ts, dt) == ts.tolist()

    def step(h, y):  # OrdinaryDiffEqLowOrderRK's RK4 and Euler for y' = y
        if algorithm == "Euler":
            return y + h * y
        k1 = y
        k2 = y + h / 2 * k1
        k3 = y + h / 2 * k2
        k4 = y + h * k3
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    grid = _ordinarydiffeq_fixed_grid(ts, dt)
    y, julia = 1.0, [1.0]
    for a, b in zip(grid[:-1], grid[1:]):
        y = step(b - a, y)
        if b in ts:
            julia.append(y)
    torch_ys = hn.odeint(lambda t, y: y, torch.ones(1, dtype=torch.float64), torch.tensor(ts), method=method)
    # the same steps in the same order: only the rounding of the stage arithmetic differs
    np.testing.assert_allclose(julia, torch_ys.flatten().numpy(), rtol=1e-14)


def test_trbdf2_takes_fixed_steps_unless_adaptive_on_julia_too():
    # the same meaning as on torch: TRBDF2 on the output grid (or step_size), adaptive on request
    ts = np.array([0.0, 0.5, 1.5])
    assert jb.resolve_options(None, "TRBDF2", ts) == (1.0, 10**6, True)
    assert jb.resolve_options({"step_size": 0.1}, "TRBDF2", ts) == (0.1, 10**6, True)
    assert jb.resolve_options({"adaptive": True, "first_step": 0.01}, "TRBDF2", ts) == (0.01, 2**31 - 1, False)
    assert jb.resolve_options({"adaptive": True, "step_size": 0.1}, "TRBDF2", ts) == (0.1, 10**6, True)
    with pytest.raises(ValueError, match="valid options"):
        jb.resolve_options({"first_step": 0.1}, "TRBDF2", ts)
    with pytest.raises(TypeError, match="adaptive"):
        jb.resolve_options({"adaptive": 1}, "TRBDF2", ts)


@pytest.mark.parametrize("algorithm, limit", [("RK4", DEFAULT_MAXITERS), ("TRBDF2", DEFAULT_MAXITERS), ("Euler", None)])
def test_standin_limits_fixed_steps_by_the_algorithm_as_ordinarydiffeqcore_does(algorithm, limit):
    # maxiters = anyadaptive(alg) ? 1000000 : typemax(Int) (OrdinaryDiffEqCore src/solve.jl:161):
    # RK4 and TRBDF2 can adapt, so even with adaptive = false they stop after 10^6 steps; Euler never.
    # A fixed step of 1e-7 over [0, 0.2] is 2e6 steps: upstream's RK4 stops at t = 10^6 * 1e-7 = 0.1.
    config = dataclasses.replace(_dp5_config(), algorithm=algorithm, dt=1e-7, fixed_step=True)
    problem = jb.make_callbacks(lambda t, m: -m, (1, 1), (), torch.float64, "cpu")
    out = StandinEngine().forward(problem, np.ones((1, 1)), np.zeros(1), np.array([0.0, 0.2]), config)
    if limit is None:
        assert out.success
        np.testing.assert_allclose(out.ys[0, 0], np.exp(-np.array([0.0, 0.2])), rtol=1e-8)
    else:
        assert not out.success and out.retcode == "MaxIters"
        assert out.t_reached == pytest.approx(limit * 1e-7, rel=1e-9)


@pytest.mark.parametrize("method", ["rk4", "euler"])
def test_a_fixed_step_grid_longer_than_max_num_steps_is_refused_before_julia_as_on_torch(method):
    # The torch backend refuses a step_size grid of more than max_num_steps (default 10^6) steps
    # before solving. On Julia the default limit was upstream's: rk4 stopped with MaxIters after
    # 10^6 steps of work, euler had none (it ran all 10^7). Now both are refused like torch's.
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    torch_method = "rk4_classic" if method == "rk4" else method
    with pytest.raises(ValueError, match="max_num_steps") as on_torch:
        hn.odeint(lambda t, y: -y, y0, t, method=torch_method, options={"step_size": 1e-7})
    engine = StandinEngine()
    with pytest.raises(ValueError, match="10,000,000 steps, more than max_num_steps=1,000,000") as on_julia:
        _solve(lambda t, y: -y, y0, t, engine=engine, method=method, options={"step_size": 1e-7})
    assert not engine.forward_calls  # refused before Julia is entered
    assert "'max_num_steps': 10000000" in str(on_torch.value) and "'max_num_steps': 10000000" in str(on_julia.value)


def test_a_fixed_step_grid_within_max_num_steps_is_solved_with_that_limit():
    # Allowed explicitly, the grid is solved, and Julia gets the limit (not upstream's 10^6 for RK4).
    # The stand-in integrates with DOP853 at rtol 1e-10, so y(1) = e^-2 is met to about 1e-9.
    engine = StandinEngine()
    t = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    sol = _solve(
        lambda t, y: -y, torch.ones(1, dtype=torch.float64), t, engine=engine, method="rk4",
        options={"step_size": 1e-6, "max_num_steps": 2 * 10**6}, rtol=1e-10, atol=1e-12,
    )  # fmt: skip
    assert engine.forward_calls[0]["config"].maxiters == 2 * 10**6
    np.testing.assert_allclose(sol.ys.flatten().numpy(), np.exp(-t.numpy()), rtol=1e-8)


def test_output_grids_without_step_size_have_no_step_limit_as_on_torch():
    # Without step_size the torch backend steps from output time to output time, however many; Julia
    # gets a limit that the grid fits in (10^6 would stop rk4 on a grid of more output times).
    ts = np.linspace(0.0, 1.0, 10**6 + 3)
    dt, maxiters, fixed = jb.resolve_options(None, "RK4", ts)
    assert fixed and maxiters == 10**6 + 2 == jb.fixed_grid_steps(ts, dt)
    assert jb.resolve_options(None, "RK4", np.linspace(0.0, 1.0, 11))[1] == 10**6
    # the torch backend solves the whole output grid whatever max_num_steps; Julia stopped after 5
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    on_torch = hn.odeint(lambda t, y: -y, y0, t, method="euler", options={"max_num_steps": 5})
    on_julia = _solve(lambda t, y: -y, y0, t, method="euler", options={"max_num_steps": 5}).ys
    # Euler on the grid: y_i = 0.9**i exactly on torch; the stand-in integrates y' = -y (DOP853)
    np.testing.assert_allclose(on_torch.flatten().numpy(), 0.9 ** np.arange(11), rtol=1e-12)
    np.testing.assert_allclose(on_julia.flatten().numpy(), np.exp(-t.numpy()), rtol=1e-9)


# ---------------------------------------------------------------- error paths


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(y0=[1.0]), TypeError, "y0 must be a tensor"),
        (dict(y0=torch.tensor([1, 2])), TypeError, "floating"),
        # y0.double() would drop the imaginary part: the message must not suggest it
        (dict(y0=torch.ones(2, dtype=torch.complex128)), TypeError, r"complex \(torch.complex128\).*view_as_real"),
        (dict(t=torch.tensor([0.0, 1.0, 0.5])), ValueError, "strictly increasing"),
        (dict(t=torch.tensor([[0.0, 1.0]])), ValueError, "1-D"),
        (dict(rtol=-1.0), ValueError, "rtol"),
        (dict(atol=torch.ones(2)), ValueError, "scalar"),
        (dict(options={"bogus": 1}), ValueError, "valid options"),
        (dict(method="adaptive_heun"), BackendError, "torch backend"),
        (dict(func=3), TypeError, "callable"),
    ],
)
def test_bad_input_is_reported_before_julia_starts(kwargs, error, match, monkeypatch):
    monkeypatch.setattr(julia_runtime, "load_module", lambda: pytest.fail("Julia must not start"))
    args = dict(func=lambda t, y: -y, y0=torch.ones(2), t=torch.tensor([0.0, 1.0]))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        jb.solve(args.pop("func"), args.pop("y0"), args.pop("t"), **args)


def test_wrong_output_shape_of_func_is_reported():
    with pytest.raises(ValueError, match="must return the shape of y0"):
        _solve(lambda t, y: y[..., :1], torch.ones(3, 2), torch.tensor([0.0, 1.0]))


def test_failed_solve_raises_solver_error():
    with pytest.raises(SolverError) as info:
        _solve(lambda t, y: y**2, torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 2.0]), rtol=1e-6, atol=1e-8)
    assert info.value.status in (Status.STEP_UNDERFLOW, Status.NONFINITE) and 0.9 < info.value.t < 1.01


def test_a_step_size_underflow_is_unstable_upstream_and_reported_as_an_underflow():
    # y' = y^2, y(0) = 1 blows up at t = 1 with the state finite until the steps vanish. Upstream's
    # default dtmin is 0 (OrdinaryDiffEqCore src/solve.jl), so SciMLBase check_error
    # (src/integrator_interface.jl) never returns DtLessThanMin here: a rejected step with
    # abs(dt) <= eps(t) returns ReturnCode.Unstable ("dt was forced below floating point epsilon"),
    # the code a non-finite state gets too. The finite state where it stopped tells them apart.
    problem = jb.make_callbacks(lambda t, m: m**2, (1, 1), (), torch.float64, "cpu")
    config = dataclasses.replace(_dp5_config(), rtol=1e-6, atol=1e-8)
    out = StandinEngine().forward(problem, np.ones((1, 1)), np.zeros(1), np.array([0.0, 2.0]), config)
    assert not out.success and out.retcode == "Unstable" and out.state_finite is True
    # The exact blow-up is at t = 1; the computed one is off by the error accumulated at rtol=1e-6
    # (about 1e-7 here), so 1e-3 only says that the solve stopped at the blow-up.
    assert abs(out.t_reached - 1.0) < 1e-3
    with pytest.raises(SolverError) as info:
        _solve(lambda t, y: y**2, torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 2.0]), rtol=1e-6, atol=1e-8)
    assert info.value.status is Status.STEP_UNDERFLOW and abs(info.value.t - 1.0) < 1e-3


@pytest.mark.parametrize(
    "state_finite, status", [(True, Status.STEP_UNDERFLOW), (False, Status.NONFINITE), (None, Status.NONFINITE)]
)
def test_unstable_is_an_underflow_only_with_a_finite_state(state_finite, status):
    assert jb.status_from_retcode("ReturnCode.Unstable", state_finite) is status
    assert jb.status_from_retcode("MaxIters", state_finite) is Status.MAX_STEPS


@pytest.mark.parametrize("sensitivity", SENSITIVITIES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("decreasing", [False, True], ids=["increasing", "decreasing"])
def test_failed_solve_reports_the_time_reached_not_the_last_output_time(sensitivity, decreasing):
    # Issue 20 item 2: upstream's solution says t[end] after a failure (sensitivity_solution sets
    # sol.t = ts); the error must carry the time the solver reached.
    t = torch.tensor([0.0, 1.0, 5.0, 50.0], dtype=torch.float64)
    t = -t if decreasing else t
    with pytest.raises(SolverError, match="max_num_steps") as info:
        _solve(
            lambda t, y: -y,
            torch.ones(2, dtype=torch.float64),
            t,
            options={"max_num_steps": 8},
            sensitivity=sensitivity,
            rtol=1e-8,
            atol=1e-10,
        )
    assert info.value.status is Status.MAX_STEPS
    reached = abs(info.value.t)
    assert 0.0 < reached < 50.0 and np.sign(info.value.t) == (-1 if decreasing else 1)


@pytest.mark.parametrize(
    "retcode, status",
    [
        ("ReturnCode.MaxIters", Status.MAX_STEPS),
        ("DtLessThanMin", Status.STEP_UNDERFLOW),
        ("Unstable", Status.NONFINITE),
        ("ConvergenceFailure", Status.NEWTON_FAILED),
        ("ReturnCode.InitialFailure", Status.INITIAL_FAILURE),
        ("MaxTime", Status.TIME_LIMIT),
        ("Stalled", Status.STALLED),
        ("Failure", Status.FAILED),
    ],
)
def test_each_retcode_has_its_own_message(retcode, status):
    # Issue 20 item 9: InitialFailure, MaxTime and Stalled were reported as "the state became NaN".
    assert jb.status_from_retcode(retcode) is status
    assert status is Status.NONFINITE or status.message != Status.NONFINITE.message


def test_missing_julia_raises_with_install_instructions(monkeypatch):
    monkeypatch.setattr(julia_runtime, "_MODULE", None)
    monkeypatch.setattr(
        julia_runtime, "probe", lambda: julia_runtime.Availability(False, None, False, "juliacall is not installed")
    )
    with pytest.raises(
        JuliaNotAvailableError, match=r"(?s)pip install 'hybrid_node\[julia\]'.*julia-setup.*PYTHON_JULIAPKG_OFFLINE"
    ) as info:
        jb.solve(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]))
    assert isinstance(info.value, ImportError) and isinstance(info.value, BackendError)


def test_importing_hybrid_node_never_starts_julia():
    code = (
        "import sys, hybrid_node, hybrid_node.julia.backend, hybrid_node.commands.doctor; "
        "print('juliacall' in sys.modules, 'juliapkg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- issue 20: what upstream really does

A2 = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=torch.float64)


class LinearField(nn.Module):
    """dy/dt = y A^T with A a parameter: exact solution expm(A (t - t0)) y0 (callback path)."""

    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(A2.clone())

    def forward(self, t, y):
        return y @ self.A.T


def _exact_loss(A, y0, t, weights):
    out = torch.stack([y0 @ torch.linalg.matrix_exp(A * (ti - t[0])).T for ti in t])
    return (out * weights).sum(), out


@pytest.mark.parametrize("sensitivity", SENSITIVITIES, ids=lambda s: type(s).__name__)
def test_decreasing_times_give_the_exact_states_and_gradients(sensitivity):
    # Issue 20 item 1: non-backsolve adjoints return sol(sort(ts)); the glue must still pair every
    # state and cotangent with its own time. The engine only ever sees increasing times.
    func = LinearField()
    y0 = torch.tensor([[1.0, 0.5], [-0.3, 0.8]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.5, 0.9, 0.2, -0.4], dtype=torch.float64, requires_grad=True)
    weights = torch.linspace(0.5, 2.0, 16, dtype=torch.float64).reshape(4, 2, 2)
    engine = StandinEngine()
    ys = _solve(func, y0, t, engine, sensitivity=sensitivity).ys
    (ys * weights).sum().backward()
    assert np.all(np.diff(engine.forward_calls[0]["ts"]) > 0)

    A = A2.clone().requires_grad_(True)
    y0r, tr = y0.detach().clone().requires_grad_(True), t.detach().clone().requires_grad_(True)
    loss, exact = _exact_loss(A, y0r, tr, weights)
    loss.backward()
    torch.testing.assert_close(ys.detach(), exact.detach(), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(y0.grad, y0r.grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(func.A.grad, A.grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(t.grad, tr.grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sensitivity", SENSITIVITIES, ids=lambda s: type(s).__name__)
def test_decreasing_times_on_the_native_path(sensitivity):
    func = MLPVectorField(_net(3, 2), time_input=True)
    y0 = torch.randn(3, 2, dtype=torch.float64)
    t_dec = torch.tensor([0.8, 0.3, -0.2], dtype=torch.float64)
    native = _solve(func, y0, t_dec, sensitivity=sensitivity).ys
    reference = _solve(PlainMLP(func.net), y0, t_dec, sensitivity=sensitivity).ys  # callback path
    torch.testing.assert_close(native, reference, rtol=1e-9, atol=1e-10)
    # against the increasing solve from the final state back: the same trajectory
    back = _solve(func, native[-1], t_dec.flip(0)).ys.flip(0)
    torch.testing.assert_close(native, back, rtol=1e-7, atol=1e-8)


def test_standin_returns_sorted_saveat_except_for_backsolve():
    # The stand-in must do what SciMLSensitivity's concrete_solve.jl does, or the tests above
    # would prove nothing: sol(sort(ts)) for every adjoint but BacksolveAdjoint.
    func = LinearField()
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    problem = jb.make_callbacks(lambda t, m: func(t, m), (1, 2), tuple(func.parameters()), torch.float64, "cpu")
    ts = np.array([1.0, 0.5, 0.0])
    for sensitivity, expect in (("GaussAdjoint", np.sort(ts)), ("BacksolveAdjoint", ts)):
        config = jb.SolveConfig(
            algorithm="DP5",
            sensitivity=sensitivity,
            checkpointing=False,
            rtol=1e-10,
            atol=1e-12,
            quad_rtol=1e-10,
            quad_atol=1e-12,
            maxiters=None,
            dt=None,
            fixed_step=False,
        )
        out = StandinEngine().forward(problem, y0.numpy().T, np.zeros(4), ts, config)
        exact = np.stack([(torch.linalg.matrix_exp(A2 * (tau - 1.0)) @ y0[0]).numpy() for tau in expect], -1)
        np.testing.assert_allclose(out.ys[:, 0, :], exact, rtol=1e-8, atol=1e-10)


def _dp5_config(maxiters: int | None = None) -> jb.SolveConfig:
    """DP5 with GaussAdjoint at tight tolerances: the settings of the stand-in's engine-level tests."""
    return gauss_config("DP5", maxiters=maxiters)


def test_standin_extrapolates_and_reports_the_last_output_time_after_a_failure():
    # sol(ts) without a retcode check, and sensitivity_solution's sol.t = ts.
    problem = jb.make_callbacks(lambda t, m: -m, (1, 1), (), torch.float64, "cpu")
    config = _dp5_config(maxiters=5)
    out = StandinEngine().forward(problem, np.ones((1, 1)), np.zeros(1), np.array([0.0, 10.0, 100.0]), config)
    assert not out.success and out.retcode == "MaxIters"
    assert out.ys.shape == (1, 1, 3) and np.all(np.isfinite(out.ys))
    assert out.t_final == 100.0 and out.t_reached < 10.0


def test_standin_backsolve_keeps_the_point_where_a_failed_solve_stopped():
    # BacksolveAdjoint solves with saveat and save_end = true (a Bool, concrete_solve.jl), so after a
    # failure OrdinaryDiffEqCore also saves the state where the solver stopped
    # (solution_endpoint_match_cur_integrator!): sol.t is the output times reached, then that point.
    problem = jb.make_callbacks(lambda t, m: -m, (1, 1), (), torch.float64, "cpu")
    config = dataclasses.replace(_dp5_config(maxiters=5), sensitivity="BacksolveAdjoint")
    ts = np.array([0.0, 1e-3, 10.0, 100.0])
    out = StandinEngine().forward(problem, np.ones((1, 1)), np.zeros(1), ts, config)
    assert not out.success and out.retcode == "MaxIters"
    assert 1e-3 < out.t_reached < 10.0 and out.t_final == out.t_reached
    # the states at 0, 1e-3 and the stopping point of y' = -y (DOP853 at rtol 1e-8)
    np.testing.assert_allclose(out.ys[0, 0], np.exp(-np.array([0.0, 1e-3, out.t_reached])), rtol=1e-6)


class Boom(Exception):
    pass


@pytest.mark.parametrize("wrapped", [False, True], ids=["restored-by-pythoncall", "wrapped-by-a-solver-layer"])
def test_an_error_raised_in_func_during_the_solve_reaches_the_user_as_itself(wrapped):
    # PythonCall restores the Python exception when its PyException reaches the boundary unwrapped;
    # where a solver layer wrapped it, python_exception finds it in the JuliaError (the fallback).
    def func(t, y):
        if float(t) > 0.5:
            raise Boom("bad vector field")
        return -y

    engine = StandinEngine(wrap_callback_errors=wrapped)
    with pytest.raises(Boom, match="bad vector field"):
        _solve(func, torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64), engine=engine)


@pytest.mark.parametrize("wrapped", [False, True], ids=["restored-by-pythoncall", "wrapped-by-a-solver-layer"])
def test_an_error_raised_in_the_backward_callbacks_reaches_the_user_as_itself(wrapped):
    calls = {"n": 0}
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    def func(t, y):
        if torch.is_grad_enabled() and y.requires_grad:
            calls["n"] += 1
            raise Boom("bad vjp")
        return -w * y

    engine = StandinEngine(wrap_callback_errors=wrapped)
    ys = _solve(
        func, torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0]), adjoint_params=(w,), engine=engine
    ).ys
    with pytest.raises(Boom, match="bad vjp"):
        ys.sum().backward()
    assert calls["n"] >= 1


def test_the_standin_lets_a_callback_error_out_as_pythoncall_does():
    # PythonCall 0.9.34 src/JlWrap/base.jl: a PyException reaching the boundary is restored with
    # PyErr_Restore, so juliacall raises the original exception, not a JuliaError. The stand-in
    # wrapped it always, which tested only the fallback.
    def f(x, t):
        raise Boom("from the callback")

    problem = jb.make_callbacks(lambda t, m: -m, (1, 1), (), torch.float64, "cpu")
    problem = dataclasses.replace(problem, f=f)
    config = _dp5_config()
    with pytest.raises(Boom, match="from the callback"):
        StandinEngine().forward(problem, np.ones((1, 1)), np.zeros(0), np.array([0.0, 1.0]), config)
    with pytest.raises(JuliaError) as info:
        StandinEngine(wrap_callback_errors=True).forward(
            problem, np.ones((1, 1)), np.zeros(0), np.array([0.0, 1.0]), config
        )
    assert isinstance(StandinEngine().python_exception(info.value), Boom)


def test_wrong_output_shape_is_reported_before_julia_starts(monkeypatch):
    monkeypatch.setattr(julia_runtime, "load_module", lambda: pytest.fail("Julia must not start"))
    with pytest.raises(ValueError, match="must return the shape of y0"):
        jb.solve(lambda t, y: y[..., :1], torch.ones(3, 2), torch.tensor([0.0, 1.0]))


def test_float32_callback_field_at_tight_tolerances_warns():
    # Issue 20 item 8: Julia integrates in Float64 at rtol 1e-7 while the field rounds at ~6e-8.
    net = _net(3, 2).float()
    y0 = torch.randn(2, 2)
    with pytest.warns(UserWarning, match=r"float32.*rtol=1e-07.*double\(\)"):
        jb.solve_with_engine(StandinEngine(), PlainMLP(net), y0, torch.tensor([0.0, 0.5]), rtol=1e-7, atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jb.solve_with_engine(StandinEngine(), PlainMLP(net), y0, torch.tensor([0.0, 0.5]), rtol=1e-5, atol=1e-7)
        jb.solve_with_engine(
            StandinEngine(), PlainMLP(net.double()), y0.double(), torch.tensor([0.0, 0.5]), rtol=1e-7, atol=1e-9
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backward_enters_the_engine_on_the_calling_thread():
    # Issue 20 item 4: a CUDA input would put the Function's backward on PyTorch's CUDA worker
    # thread, which Julia did not start.
    seen = []

    class ThreadRecorder(StandinEngine):
        def backward(self, handle, ybar):
            seen.append(threading.get_ident())
            return super().backward(handle, ybar)

    func = PlainMLP(_net(3, 2).cuda())
    y0 = torch.randn(3, 2, dtype=torch.float64, device="cuda", requires_grad=True)
    ys = _solve(func, y0, torch.tensor([0.0, 0.5], device="cuda", dtype=torch.float64), ThreadRecorder()).ys
    assert ys.device.type == "cuda"
    ys.square().sum().backward()
    assert seen == [threading.get_ident()]
    assert y0.grad.device.type == "cuda" and all(p.grad.device.type == "cuda" for p in func.parameters())


# ---------------------------------------------------------------- ODEBlock on the Julia backend


@pytest.mark.parametrize("native", [True, False])
def test_ode_block_keeps_the_native_path_and_counts_its_evaluations(monkeypatch, native):
    """An ODEBlock whose field has ``mlp_spec()`` reaches the Julia engine as the native MLP (the
    torch module is never called; the count is the engine's), a field without it as callbacks (counted
    by the block); both give the torch backend's states and gradients."""
    from hybrid_node.nn import ODEBlock, SolveSettings

    monkeypatch.setattr(julia_runtime, "load_module", lambda: None)
    monkeypatch.setattr(jb, "JuliaEngine", lambda module: StandinEngine())
    net = _net(3, 2)
    func = MLPVectorField(net, time_input=True) if native else PlainMLP(net)
    calls = []
    func.register_forward_hook(lambda *args: calls.append(1))
    settings = dict(rtol=1e-10, atol=1e-10, sensitivity=InterpolatingAdjoint())
    block = ODEBlock(func, (0.0, 1.0), train_settings=SolveSettings(**settings, backend="julia"))
    x = torch.tensor([[0.3, -0.2], [0.1, 0.5]], dtype=torch.float64)
    y = block(x)
    assert block.nfe_forward > 0
    assert (len(calls) == 0) if native else (len(calls) >= block.nfe_forward)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    assert block.nfe_backward == 0 if native else block.nfe_backward > 0

    net.zero_grad()
    reference = ODEBlock(PlainMLP(net), (0.0, 1.0), train_settings=SolveSettings(**settings, backend="torch"))
    want = reference(x)
    want.square().sum().backward()
    torch.testing.assert_close(y, want, rtol=1e-7, atol=1e-9)
    for got, expected in zip(grads, [p.grad for p in net.parameters()]):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)


def test_the_standins_step_limit_counts_rejected_attempts_as_upstream_does():
    # OrdinaryDiffEqCore counts every attempt in integrator.iter (loopheader!) and fails once
    # iter > maxiters (DiffEqBase check_error); its default is 1_000_000 for adaptive methods
    # (src/solve.jl). The stand-in counted accepted steps only, with a default of 100_000.
    def func(t, y):
        return -200.0 * t * y  # a sharp decay: DOP853 rejects some steps

    y0, t = torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    sol = _solve(func, y0, t, rtol=1e-8, atol=1e-10)
    accepted, rejected = sol.stats.n_accepted, sol.stats.n_rejected
    assert rejected > 0
    with pytest.raises(SolverError, match="max_num_steps"):
        _solve(func, y0, t, rtol=1e-8, atol=1e-10, options={"max_num_steps": accepted})
    ok = _solve(func, y0, t, rtol=1e-8, atol=1e-10, options={"max_num_steps": accepted + rejected})
    assert ok.stats.n_accepted == accepted
    assert DEFAULT_MAXITERS == 1_000_000


def test_a_failed_backward_solve_raises_instead_of_returning_its_gradients():
    # SciMLSensitivity returns the gradients of a failed backward solve (no retcode check in
    # gauss_adjoint.jl / sensitivity_interface.jl); only the solver's warning shows it. bridge.jl's
    # backward turns the warning into AdjointSolveFailed, which reaches the user as a SolverError.
    # The forward solve takes 3 steps; the backward one restarts at each of the 20 output times.
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 20, dtype=torch.float64)
    ys = _solve(lambda t, y: -w * y, torch.ones(2, dtype=torch.float64), t, adjoint_params=(w,),
                options={"max_num_steps": 10}).ys  # fmt: skip
    with pytest.raises(SolverError, match="backward solve in Julia failed.*maxiters") as info:
        ys.pow(2).sum().backward()
    assert info.value.status is Status.MAX_STEPS
    assert jb.adjoint_solve_error("dt forced below epsilon").status is Status.FAILED


class _NaNGradients(StandinEngine):
    """The stand-in, with the non-finite gradients of a blow-up that left no warning."""

    def backward(self, handle, ybar):
        u0bar, thetabar = super().backward(handle, ybar)
        return np.full_like(u0bar, np.nan), thetabar


def test_non_finite_gradients_are_refused():
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys = _solve(lambda t, y: -w * y, y0, t, engine=_NaNGradients(), adjoint_params=(w,)).ys
    with pytest.raises(SolverError, match="non-finite gradients.*does not check") as info:
        ys.sum().backward()
    assert info.value.status is Status.NONFINITE


def test_a_nan_loss_fails_the_backward_solve_as_on_the_torch_backend():
    # Upstream: a NaN cotangent makes dt NaN (DiffEqBase check_error warns "NaN dt detected").
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    ys = _solve(lambda t, y: -w * y, torch.ones(2, dtype=torch.float64), t, adjoint_params=(w,)).ys
    with pytest.raises(SolverError, match="NaN dt"):
        (ys.sum() * float("nan")).backward()


def test_the_docs_say_that_rk4_is_another_method_on_each_backend():
    # hybrid_node/solvers/registry.py: `rk4` is Kutta's 3/8 rule on torch (torchdiffeq's), and maps
    # to Julia's RK4, the classic method (OrdinaryDiffEqLowOrderRK fixed_timestep_perform_step.jl).
    assert jb.METHODS["rk4"] == jb.METHODS["rk4_classic"] == "RK4"
    # One step of y' = t^4 over [0, 1]: Simpson's 3/8 rule (51/81 + 1) / 8, the classic method's Simpson rule 5/24.
    f = lambda t, y: t**4 * torch.ones_like(y)
    y0, t = torch.zeros(1, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch_rk4 = hn.odeint(f, y0, t, method="rk4", options={"step_size": 1.0})[-1].item()
    classic = hn.odeint(f, y0, t, method="rk4_classic", options={"step_size": 1.0})[-1].item()
    assert torch_rk4 == pytest.approx((51 / 81 + 1) / 8) and classic == pytest.approx(5 / 24)
    text = (Path(__file__).resolve().parents[1] / "docs" / "julia.md").read_text()
    caveat = re.search(r"`rk4` is not the same method on both backends:(.*?)\. `trbdf2`", text, re.S)
    assert caveat and "3/8" in caveat.group(1) and "classic" in caveat.group(1) and "rk4_classic" in caveat.group(1)


@pytest.mark.parametrize(
    "controller, dropped",
    [
        (hn.PIDController(max_step=0.01, safety=0.5), "['safety', 'max_step']"),
        (hn.PIDController(pcoeff=0.2, icoeff=0.8), "['pcoeff', 'icoeff']"),
        (hn.PIDController(norm=lambda x: x.abs().max()), "['norm']"),
        (hn.PIDController(per_sample=True), "['per_sample']"),
        (hn.ConstantStepSize(step_size=0.1, interp="cubic"), "['interp']"),
        (hn.ConstantStepSize(grid_constructor=lambda f, y0, t: t), "['grid_constructor']"),
    ],
)
def test_controller_settings_the_julia_backend_cannot_take_are_refused(controller, dropped):
    # They were dropped without a word: a max_step=0.01 and safety=0.5 solve ran with neither
    solver = hn.Dopri5() if controller.adaptive else hn.RK4()
    with pytest.raises(BackendError, match=re.escape(dropped)):
        hn.solve(
            lambda t, y: -y,
            torch.ones(2),
            torch.linspace(0, 1, 3),
            solver=solver,
            controller=controller,
            backend="julia",
        )


def test_controller_settings_the_julia_backend_takes_reach_it(monkeypatch):
    from hybrid_node import _external

    calls = []
    monkeypatch.setattr(_external.julia_backend, "solve", lambda *args, **kw: calls.append(kw))
    controller = hn.PIDController(rtol=1e-4, atol=1e-6, first_step=0.01, max_num_steps=50)
    hn.solve(lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 3), controller=controller, backend="julia")
    assert (calls[0]["rtol"], calls[0]["atol"], calls[0]["options"]) == (
        1e-4,
        1e-6,
        {"first_step": 0.01, "max_num_steps": 50},
    )


@pytest.mark.parametrize(
    "solver, changed",
    [
        (hn.METHODS["kencarp4"].solver(max_newton_iters=3), "['max_newton_iters']"),
        (hn.METHODS["rodas5p"].solver(jacobian="fd"), "['jacobian']"),
        (hn.Dopri5(compile=True), "['compile']"),
    ],
)
def test_solver_settings_the_julia_backend_cannot_take_are_refused(solver, changed):
    # the Julia backend receives the method's name only: these solved with Julia's defaults
    with pytest.raises(BackendError, match=re.escape(changed)):
        hn.solve(lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 3), solver=solver, backend="julia")


def test_an_adaptive_trbdf2_solve_asks_julia_for_adaptive_steps(monkeypatch):
    # TRBDF2 takes fixed steps on the Julia backend unless options["adaptive"]: hn.solve with a
    # PIDController sent no such option, so Julia stepped from output time to output time
    from hybrid_node import _external

    calls = []
    monkeypatch.setattr(_external.julia_backend, "solve", lambda *args, **kw: calls.append(kw))
    trbdf2 = hn.METHODS["trbdf2"].solver
    t = torch.linspace(0, 1, 3)
    hn.solve(
        lambda t, y: -y, torch.ones(2), t, solver=trbdf2(adaptive=True), controller=hn.PIDController(), backend="julia"
    )
    hn.solve(lambda t, y: -y, torch.ones(2), t, solver=trbdf2(), controller=hn.ConstantStepSize(0.1), backend="julia")
    assert [c["options"] for c in calls] == [{"adaptive": True}, {"step_size": 0.1}]
    assert jb.resolve_options(calls[0]["options"], "TRBDF2", t.numpy())[2] is False  # adaptive there


def _nan_after_half(t, y):
    """-y up to t = 0.5, NaN after it (a field that leaves its domain, as log of a negative number)."""
    return torch.where(t > 0.5, torch.full_like(y, float("nan")), -y)


def test_a_nan_vector_field_ends_an_adaptive_solve_with_dtnan_at_the_last_accepted_step():
    # Upstream: the attempt that meets the NaN has a NaN error estimate, is rejected, and the
    # PIController's step_reject_controller! makes dt NaN (Julia's min propagates NaN; OrdinaryDiffEqCore
    # src/integrators/controllers.jl:838-842 at b211787), so check_error returns DtNaN first
    # (DiffEqBase 7.18 check_error.jl:77-80). scipy instead shrinks the step until it underflows,
    # which the stand-in reported as Unstable with a finite state: a step-size underflow.
    problem = jb.make_callbacks(_nan_after_half, (1, 1), (), torch.float64, "cpu")
    out = StandinEngine().forward(problem, np.ones((1, 1)), np.zeros(1), np.array([0.0, 1.0]), _dp5_config())
    assert not out.success and out.retcode == "DtNaN" and out.state_finite is True
    # it stops where the last accepted step ended: before the NaN region, and not at the start
    # (y' = -y at rtol=1e-8 takes steps far shorter than 0.5)
    assert 0.0 < out.t_reached <= 0.5
    assert jb.status_from_retcode(out.retcode, out.state_finite) is Status.NONFINITE


def test_a_nan_vector_field_is_reported_as_nonfinite_on_both_backends():
    y0, t = torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(SolverError) as julia:
        _solve(_nan_after_half, y0, t)
    with pytest.raises(SolverError) as torch_backend:
        hn.odeint(_nan_after_half, y0, t, rtol=1e-8, atol=1e-10)
    assert julia.value.status is torch_backend.value.status is Status.NONFINITE
    assert julia.value.t <= 0.5  # upstream stops at its last accepted step, before the NaN
    # the cause named is the field (the state is finite where the solve stopped), as on the torch backend
    # (the status's generic message also names an overflow, which a finite state rules out)
    assert "the state here is finite" in str(julia.value) and "DtNaN" in str(julia.value)
    assert "vector field returned NaN" in str(torch_backend.value)


def test_a_nan_vector_field_with_fixed_steps_is_unstable_with_a_nonfinite_state():
    # adaptive = false rejects nothing: the NaN step is accepted and unstable_check (any(isnan, u))
    # ends the solve with Unstable (DiffEqBase check_error.jl:103-107), the state not finite.
    config = dataclasses.replace(_dp5_config(), algorithm="RK4", dt=0.1, fixed_step=True)
    problem = jb.make_callbacks(_nan_after_half, (1, 1), (), torch.float64, "cpu")
    out = StandinEngine().forward(problem, np.ones((1, 1)), np.zeros(1), np.array([0.0, 1.0]), config)
    assert not out.success and out.retcode == "Unstable" and out.state_finite is False
    assert jb.status_from_retcode(out.retcode, out.state_finite) is Status.NONFINITE


def test_callbacks_receive_juliacall_vectors_not_numpy_arrays():
    # PythonCall hands a Julia Vector{Float64} to Python as juliacall.VectorValue (Py(x) = pyjl(x),
    # src/JlWrap/base.jl:141), and Float64 as a Python float: the glue must convert with np.asarray
    # and never rely on ndarray methods. The stand-in handed numpy arrays over, which hid that.
    seen = []
    problem = jb.make_callbacks(lambda t, m: -m, (2, 1), (), torch.float64, "cpu")
    f = problem.f

    def watched(u, t):
        seen.append((type(u), type(t)))
        return f(u, t)

    problem = dataclasses.replace(problem, f=watched)
    out = StandinEngine().forward(problem, np.ones((1, 2)), np.zeros(1), np.array([0.0, 1.0]), _dp5_config())
    assert out.success and seen
    assert all(u is JuliaVector and t is float for u, t in seen)
    assert not hasattr(JuliaVector(np.ones(2)), "astype")  # no ndarray API to lean on
    # y' = -y solved at rtol=1e-8: 1e-7 of exp(-1) leaves room for the accumulated error
    np.testing.assert_allclose(out.ys[..., -1], np.exp(-1.0) * np.ones((1, 2)), rtol=1e-7)


def _nan_everywhere(t, y):
    return y * float("nan")


def test_a_nan_field_at_the_start_stops_upstream_before_any_step_as_an_apparent_underflow():
    # Upstream: initdt finds f0 NaN and returns dt = 0 (OrdinaryDiffEqCore src/initdt.jl:189-198),
    # fix_dt_at_bounds! raises it to eps(t0) and check_error's dt_epsilon branch stops before any
    # step (accept_step starts false, src/solve.jl:710): Unstable at t0 with u0 finite. scipy's NaN
    # first step never ended its step loop, so the stand-in hung here.
    problem = jb.make_callbacks(_nan_everywhere, (1, 1), (), torch.float64, "cpu")
    out = StandinEngine().forward(problem, np.ones((1, 1)), np.zeros(1), np.array([0.0, 1.0]), _dp5_config())
    assert (out.retcode, out.state_finite, out.t_reached) == ("Unstable", True, 0.0)


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)], ids=["increasing", "decreasing"])
def test_a_nan_field_at_the_start_is_reported_as_the_fields_nan_as_on_the_torch_backend(t0, t1):
    # Read alone, upstream's answer (Unstable at t0, the state finite) is a step-size underflow; the
    # glue evaluates the field at (t0, y0) and names it, as the torch backend does.
    y0, t = torch.ones(1, dtype=torch.float64), torch.tensor([t0, t1], dtype=torch.float64)
    with pytest.raises(SolverError) as julia:
        _solve(_nan_everywhere, y0, t)
    with pytest.raises(SolverError) as torch_backend:
        hn.odeint(_nan_everywhere, y0, t, rtol=1e-8, atol=1e-10)
    assert julia.value.status is torch_backend.value.status is Status.NONFINITE
    assert julia.value.t == torch_backend.value.t == t0
    assert f"returned NaN at t={t0:.10g} on a finite state" in str(julia.value)


def test_a_nan_field_at_the_start_with_fixed_steps_is_nonfinite():
    # adaptive = false: the first step is accepted with its NaN state; unstable_check stops there.
    with pytest.raises(SolverError) as info:
        _solve(_nan_everywhere, torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 1.0]), method="rk4")
    assert info.value.status is Status.NONFINITE and info.value.t == 1.0


class _BoundsError:
    """A Julia BoundsError, as an interpolation of a one-point solution might throw it."""


class _ThrowsAfterNaNStart(StandinEngine):
    """Upstream's solve with a NaN f0 keeps only t0; sol(ts) over that one point may throw instead of
    extrapolating (not verified against a running Julia): this engine throws there."""

    def __init__(self, always: bool = False):
        super().__init__()
        self.always = always

    def forward(self, problem, u0, theta, ts, config):
        out = super().forward(problem, u0, theta, ts, config)
        if self.always or (not out.success and out.t_reached == ts[0]):
            raise JuliaError(_BoundsError(), None)
        return out


def test_a_julia_error_after_a_nan_field_at_the_start_is_reported_as_the_fields_nan():
    y0, t = torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(SolverError, match="returned NaN at t=0 on a finite state") as info:
        _solve(_nan_everywhere, y0, t, engine=_ThrowsAfterNaNStart())
    assert info.value.status is Status.NONFINITE and isinstance(info.value.__cause__, JuliaError)
    # an engine error with a finite field at the start is left alone
    with pytest.raises(JuliaError):
        _solve(lambda t, y: -y, y0, t, engine=_ThrowsAfterNaNStart(always=True))


def test_a_nan_in_the_standins_dense_output_does_not_hide_a_later_nan_step(monkeypatch):
    # The stand-in's own dense output evaluates the field too (DOP853's extra stages); a NaN there is
    # no step attempt of upstream's and must not stop the watch from seeing the attempt that meets
    # the NaN region later (it kept only the first non-finite call of the whole solve).
    from scipy.integrate import DOP853

    state = {"dense": False, "poisoned": False}
    original = DOP853.dense_output

    def dense_output(self):
        state["dense"] = True
        try:
            return original(self)
        finally:
            state["dense"] = False

    def field(t, y):
        if state["dense"] and not state["poisoned"]:  # one NaN, in the first dense output
            state["poisoned"] = True
            return torch.full_like(y, float("nan"))
        return _nan_after_half(t, y)

    monkeypatch.setattr(DOP853, "dense_output", dense_output)
    problem = jb.make_callbacks(field, (1, 1), (), torch.float64, "cpu")
    out = StandinEngine().forward(problem, np.ones((1, 1)), np.zeros(1), np.array([0.0, 1.0]), _dp5_config())
    assert state["poisoned"] and out.retcode == "DtNaN" and 0.0 < out.t_reached <= 0.5
