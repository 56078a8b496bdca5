"""Per-sample terminal events (``odeint_event(..., per_sample=True)``), float64.

Closed forms: decay y' = -theta y from y0_i to the level c_i reaches it at t_i = log(y0_i / c_i) / theta,
with dt_i/dtheta = -t_i / theta, dt_i/dy0_i = 1 / (theta y0_i), dt_i/dc_i = -1 / (theta c_i) and the event
state c_i whatever the parameters; a ball dropped from h_i under gravity g hits the ground at
sqrt(2 h_i / g) with speed sqrt(2 g h_i), so dt_i/dh_i = 1 / sqrt(2 g h_i) and dv_i/dh_i = -sqrt(g / (2 h_i)).
"""

from __future__ import annotations

import math

import pytest
import torch
from bouncing import Decay, G, fall

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default")

TOL = {"rtol": 1e-10, "atol": 1e-12}


def test_first_passage_times_of_a_linear_system_match_the_closed_form():
    func = Decay(1.3)
    y0 = torch.tensor([[2.0], [5.0], [1.5], [40.0]], requires_grad=True)
    level = torch.tensor([0.5, 1.0, 1.2, 0.1], requires_grad=True)
    t_e, ys = hn.odeint_event(func, y0, 0.0, event_fn=lambda t, y: y[:, 0] - level, per_sample=True, **TOL)
    exact = torch.log(y0.detach()[:, 0] / level.detach()) / 1.3
    assert t_e.shape == (4,) and ys.shape == (2, 4, 1)
    torch.testing.assert_close(t_e.detach(), exact, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ys[-1, :, 0].detach(), level.detach(), rtol=1e-8, atol=1e-8)
    g_theta, g_y0, g_c = torch.autograd.grad(t_e.sum(), (func.theta, y0, level), retain_graph=True)
    torch.testing.assert_close(float(g_theta), float(-exact.sum() / 1.3), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g_y0[:, 0], 1 / (1.3 * y0.detach()[:, 0]), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g_c, -1 / (1.3 * level.detach()), rtol=1e-6, atol=1e-9)
    # the event state is the level whatever theta and y0 are: its total gradient vanishes
    g_theta_y, g_y0_y = torch.autograd.grad(ys[-1].sum(), (func.theta, y0))
    assert abs(float(g_theta_y)) < 1e-6 and float(g_y0_y.abs().max()) < 1e-6


def test_a_batch_of_dropped_balls_hits_the_ground_at_the_analytic_times():
    h = torch.tensor([1.0, 2.0, 0.5, 3.0, 10.0], requires_grad=True)
    y0 = torch.stack([h, torch.zeros(5)], 1)
    t_e, ys = hn.odeint_event(fall, y0, 0.0, event_fn=lambda t, y: y[:, 0], per_sample=True, **TOL)
    hd = h.detach()
    torch.testing.assert_close(t_e.detach(), torch.sqrt(2 * hd / G), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ys[-1, :, 1].detach(), -torch.sqrt(2 * G * hd), rtol=1e-8, atol=1e-8)
    assert float(ys[-1, :, 0].detach().abs().max()) < 1e-8  # each ball frozen on the ground, not fallen through
    (g_t,) = torch.autograd.grad(t_e.sum(), h, retain_graph=True)
    torch.testing.assert_close(g_t, 1 / torch.sqrt(2 * G * hd), rtol=1e-6, atol=1e-9)
    (g_v,) = torch.autograd.grad(ys[-1, :, 1].sum(), h)
    torch.testing.assert_close(g_v, -torch.sqrt(G / (2 * hd)), rtol=1e-6, atol=1e-9)


def test_gradients_match_finite_differences_for_a_nonlinear_field_and_a_time_dependent_event():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    func = lambda t, y: net(y) + torch.stack([torch.ones_like(y[:, 0]), torch.zeros_like(y[:, 0])], 1)
    y0 = torch.tensor([[0.1, 0.2], [-0.3, 0.5], [0.0, -0.4]])
    event = lambda t, y: y[:, 0] + 0.3 * t - 1.0  # t is each sample's own time while it is located

    def run():
        return hn.odeint_event(func, y0, 0.0, event_fn=event, per_sample=True, **TOL)

    t_e, ys = run()
    loss_fn = lambda t_e, ys: (t_e * torch.tensor([1.0, 2.0, 3.0])).sum() + (ys[-1][:, 1] ** 2).sum()
    w = net[0].weight
    (grad,) = torch.autograd.grad(loss_fn(t_e, ys), w)
    eps = 1e-6
    for i, j in [(0, 0), (3, 1), (7, 0)]:
        with torch.no_grad():
            w[i, j] += eps
            up = loss_fn(*run())
            w[i, j] -= 2 * eps
            down = loss_fn(*run())
            w[i, j] += eps
        torch.testing.assert_close(float(grad[i, j]), float((up - down) / (2 * eps)), rtol=1e-5, atol=1e-7)


def test_batch_shape_of_several_dimensions_and_samples_firing_in_one_step():
    y0 = torch.full((2, 3, 1), 2.0) * torch.arange(1.0, 7.0).reshape(2, 3, 1)
    t_e, ys = hn.odeint_event(Decay(1.0), y0, 0.0, event_fn=lambda t, y: y[..., 0] - 1.0, per_sample=True, **TOL)
    assert t_e.shape == (2, 3)
    torch.testing.assert_close(t_e.detach(), torch.log(y0[..., 0]), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ys[-1].detach(), torch.ones(2, 3, 1), rtol=1e-8, atol=1e-8)


def test_a_sample_that_never_fires_is_reported_not_waited_for():
    y0 = torch.tensor([[2.0], [0.5], [4.0]])  # the second starts below the level and only decays further
    event = lambda t, y: y[:, 0] - 1.0
    # the sample by its index as plain ints (numpy 2 printed "(np.int64(1),)")
    with pytest.raises(hn.SolverError, match=r"1 of 3 samples.*t_end.*samples \(1,\);") as info:
        hn.odeint_event(Decay(1.0), y0, 0.0, event_fn=event, per_sample=True, t_end=5.0, **TOL)
    assert info.value.status is hn.Status.NO_EVENT
    t_e, ys = hn.odeint_event(Decay(1.0), y0, 0.0, event_fn=event, per_sample=True, t_end=5.0, throw=False, **TOL)
    assert math.isnan(float(t_e[1].detach()))
    torch.testing.assert_close(t_e[[0, 2]], torch.log(torch.tensor([2.0, 4.0])), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ys[-1, 1, 0].item(), 0.5 * math.exp(-5.0), rtol=1e-7, atol=1e-10)  # stopped at t_end
    sol = hn.solve(
        Decay(1.0),
        y0,
        torch.tensor([0.0, 1.0]),
        event_fn=event,
        per_sample_events=True,
        controller=hn.PIDController(rtol=1e-8, atol=1e-10, max_num_steps=30),
        throw=False,
    )
    assert sol.status is hn.Status.NO_EVENT
    assert sol.event_fired.tolist() == [True, False, True]
    assert sol.stats.n_accepted + sol.stats.n_rejected <= 30  # the step cap, not a hang


def test_reverse_time_and_t_end_before_the_events():
    y0 = torch.tensor([[0.5], [0.25]])  # backwards in time decay grows: y = y0 exp(t0 - t)
    t_e, ys = hn.odeint_event(
        Decay(1.0), y0, 1.0, event_fn=lambda t, y: y[:, 0] - 1.0, per_sample=True, reverse_time=True, **TOL
    )
    torch.testing.assert_close(t_e, 1.0 - torch.log(1.0 / y0[:, 0]), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ys[-1].detach(), torch.ones(2, 1), rtol=1e-8, atol=1e-8)
    with pytest.raises(hn.SolverError, match="2 of 2 samples"):
        hn.odeint_event(
            Decay(1.0),
            torch.tensor([[2.0], [3.0]]),
            0.0,
            event_fn=lambda t, y: y[:, 0] - 1.0,
            per_sample=True,
            t_end=0.5,
            **TOL,
        )


def test_invalid_per_sample_event_calls_are_named():
    y0 = torch.ones(3, 2)
    with pytest.raises(ValueError, match="with respect to t"):
        hn.odeint_event(
            Decay(1.0), y0, torch.tensor(0.0, requires_grad=True), event_fn=lambda t, y: y[:, 0] - 0.5, per_sample=True
        )
    with pytest.raises(ValueError, match="one value per sample"):
        hn.odeint_event(Decay(1.0), y0, 0.0, event_fn=lambda t, y: y.sum() - 0.5, per_sample=True)
    with pytest.raises(ValueError, match="hn.odeint or hn.odeint_adjoint"):
        hn.odeint_event(
            Decay(1.0),
            y0,
            0.0,
            event_fn=lambda t, y: y[:, 0] - 0.5,
            per_sample=True,
            odeint_interface=lambda *args, **kwargs: None,
        )
    with pytest.raises(ValueError, match="adjoint_params"):
        hn.odeint_event(
            lambda t, y: -y,
            y0,
            0.0,
            event_fn=lambda t, y: y[:, 0] - 0.5,
            per_sample=True,
            odeint_interface=hn.odeint_adjoint,
        )


@pytest.mark.parametrize("method", ["rodas4", "kvaerno5", "bdf", "adams"])
def test_implicit_and_multistep_methods_locate_per_sample_events(method):
    h = torch.tensor([1.0, 2.0, 3.0])
    y0 = torch.stack([h, torch.zeros(3)], 1)
    t_e, ys = hn.odeint_event(
        fall, y0, 0.0, event_fn=lambda t, y: y[:, 0], per_sample=True, method=method, rtol=1e-8, atol=1e-10
    )
    torch.testing.assert_close(t_e, torch.sqrt(2 * h / G), rtol=1e-7, atol=1e-7)


def test_a_sample_that_starts_on_its_event_fires_at_t0_and_the_others_go_on():
    y0 = torch.tensor([[1.0], [2.0]])  # the first sample starts exactly at the level
    t_e, ys = hn.odeint_event(Decay(1.0), y0, 0.5, event_fn=lambda t, y: y[:, 0] - 1.0, per_sample=True, **TOL)
    torch.testing.assert_close(t_e.detach(), torch.tensor([0.5, 0.5 + math.log(2.0)]), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(ys[-1].detach(), torch.ones(2, 1), rtol=1e-8, atol=1e-10)


def test_an_empty_batch_has_no_events_to_find():
    """A batch dimension of size 0 returns empty event times of the batch shape and y0 as both states,
    as per-sample step control returns an empty batch's outputs; the loop raised ZeroDivisionError."""
    for shape in ((0, 2), (2, 0, 2)):
        y0 = torch.ones(shape, requires_grad=True)
        t_e, ys = hn.odeint_event(Decay(1.0), y0, 0.0, event_fn=lambda t, y: y[..., 0] - 0.5, per_sample=True)
        assert t_e.shape == shape[:-1] and ys.shape == (2, *shape)
        (g,) = torch.autograd.grad(ys.sum(), y0)
        assert g.shape == shape
    sol = hn.solve(
        Decay(1.0), torch.ones(0, 2), torch.tensor([0.0, 1.0]), event_fn=lambda t, y: y[:, 0], per_sample_events=True
    )
    assert sol.status is hn.Status.EVENT and sol.event_fired.shape == (0,) and sol.stats.nfe == 0
    # the event function's shape is still checked
    with pytest.raises(ValueError, match="one value per sample"):
        hn.odeint_event(Decay(1.0), torch.ones(0, 2), 0.0, event_fn=lambda t, y: y[:, :1], per_sample=True)


@pytest.mark.parametrize("times", ["jump_t", "step_t"])
def test_jump_or_step_times_are_refused_with_the_fix(times):
    """As the shared-step events (check_event_search): the loop lays its own steps, so forced ends are refused."""
    with pytest.raises(ValueError, match=r"per-sample events cannot take jump_t or step_t; drop them"):
        hn.solve(
            Decay(1.0),
            torch.ones(3, 1),
            torch.tensor([0.0, 2.0]),
            event_fn=lambda t, y: y[:, 0] - 0.5,
            per_sample_events=True,
            **{times: [0.3]},
        )


@pytest.mark.parametrize("transform", ["vmap", "grad"])
def test_inside_torch_func_transforms_the_refusal_says_what_to_do(transform):
    """The search decides on the host after every step: inside vmap (or grad) it raised torch's bare
    "data-dependent control flow" (or "data pointer") RuntimeError; now a ValueError naming the transform,
    as the shared-step terminal event's."""

    def first_passage(y0):
        return hn.odeint_event(Decay(1.0), y0, 0.0, event_fn=lambda t, y: y[:, 0] - 0.5, per_sample=True)[0]

    with pytest.raises(ValueError, match=r"per-sample events cannot run inside torch.func transforms"):
        if transform == "vmap":
            torch.func.vmap(first_passage)(torch.ones(4, 3, 1))
        else:
            torch.func.grad(lambda y0: first_passage(y0).sum())(torch.ones(3, 1))
    # the same problems as one batch: each sample its own event
    t_e = first_passage(torch.full((3, 1), 2.0))
    # the default rtol 1e-7: the dense output, so the root, to about that
    torch.testing.assert_close(t_e, torch.full((3,), math.log(4.0)), rtol=1e-6, atol=1e-7)


def test_a_sample_that_blows_up_ends_the_search_for_the_batch_as_documented():
    """docs/events.md: the batch shares its steps, so sample 1's blow-up (y' = y^2 from 1, at t = 1)
    ends the search with its status; the event that fired before it (t = log 2) is kept, the later
    one (log 8) is reported as not found."""

    def f(t, y):
        return torch.where((torch.arange(y.shape[0]) == 1)[:, None], y**2, -y)

    y0 = torch.tensor([[1.0], [1.0], [4.0]])
    kwargs = dict(event_fn=lambda t, y: y[:, 0] - 0.5, per_sample_events=True)
    ctrl = hn.PIDController(rtol=1e-8, atol=1e-10)
    with pytest.raises(hn.SolverError) as info:
        hn.solve(f, y0, torch.tensor([0.0, 1.0]), controller=ctrl, **kwargs)
    sol = hn.solve(f, y0, torch.tensor([0.0, 1.0]), controller=ctrl, throw=False, **kwargs)
    assert sol.status is info.value.status is hn.Status.STEP_UNDERFLOW
    assert sol.event_fired.tolist() == [True, False, False]
    assert math.isnan(float(sol.t_final[2]))
    assert float(sol.t_final[0]) == pytest.approx(math.log(2.0), rel=1e-7)  # rtol 1e-8 on the dense output


@pytest.mark.parametrize("reverse", [False, True])
def test_a_fixed_step_adjoint_sees_the_field_of_the_samples_that_stop_last(reverse):
    """Two samples of y' = -1.3 y reach their levels at the same time t_e = t0 -+ log(2) / 1.3 (the
    last stop, where the adjoint's backward solve starts). The switched field ran a sample only strictly
    before its stop, so the rk4 adjoint's first stage at t_e saw zero: dt_e/dtheta was 9.6e-4 off at
    step_size 0.01 (first order in the step), where direct backpropagation is 7e-10 off."""
    func = Decay(1.3)
    y0 = torch.tensor([[0.5], [0.25]] if reverse else [[2.0], [4.0]], requires_grad=True)
    level = torch.tensor([1.0, 0.5] if reverse else [1.0, 2.0])
    t_e, _ = hn.odeint_event(
        func,
        y0,
        1.0,
        event_fn=lambda t, y: y[:, 0] - level,
        per_sample=True,
        reverse_time=reverse,
        method="rk4",
        options={"step_size": 0.01},
        odeint_interface=hn.odeint_adjoint,
    )
    span = math.log(2.0) / 1.3  # |t_e - t0|; t_e = t0 -+ log(y0 / c) / theta
    torch.testing.assert_close(t_e.detach(), torch.full((2,), 1.0 - span if reverse else 1.0 + span))
    g_theta, g_y0 = torch.autograd.grad(t_e.sum(), (func.theta, y0))
    # dt_e/dtheta = -+ span / theta per sample, dt_e/dy0 = 1 / (theta y0) either way: the rk4 solves at
    # h = 0.01 are accurate to about h^4 = 1e-8 (6e-8 measured on dt_e/dtheta), where the old error was 1e-3
    torch.testing.assert_close(float(g_theta), (1.0 if reverse else -1.0) * 2 * span / 1.3, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(g_y0[:, 0], 1 / (1.3 * y0.detach()[:, 0]), rtol=1e-6, atol=1e-8)
