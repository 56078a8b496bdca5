"""Direct backprop through an explicit adaptive method on a stiff problem warns (StiffGradientWarning).

Van der Pol with mu = 1000 to t = 0.2 under dopri5 at rtol 1e-6: the solve is accurate, but its
directly backpropagated dy1/dmu is -3.7e-3 where scipy Radau finite differences give -2.9e-7 (measured
here; to t = 2 it is of order 1e22). The warning is Hairer's DOPRI5 stiffness test (Hairer & Wanner,
Solving ODEs II, IV.2), run only where autograd records the steps.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import hybrid_node as hn
from hybrid_node.loop import stiff_watch
from hybrid_node.loop.stiff_watch import real_stability_boundary
from hybrid_node.solvers.auto_switch import TSIT5_STABILITY, stage_rho
from hybrid_node.solvers.dopri5 import Dopri5

# small solves: torch's thread pool only adds overhead (the mlp test took 13 s on a shared machine, 0.1 s so)
pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
T = torch.tensor([0.0, 0.2], dtype=F64)
Y0 = torch.tensor([2.0, 0.0], dtype=F64)


def vdp(mu):
    """Van der Pol, y1' = y2, y2' = mu ((1 - y1^2) y2 - y1): stiff for mu = 1000 (eigenvalue near -3 mu)."""
    return lambda t, y: torch.stack([y[..., 1], mu * ((1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0])], -1)


def robertson(k1):
    """Robertson's chemical kinetics (Hairer & Wanner II, IV.1), rate constants 0.04, 1e4, 3e7."""

    def field(t, y):
        a, b, c = y.unbind(-1)
        return torch.stack([-k1 * a + 1e4 * b * c, k1 * a - 1e4 * b * c - 3e7 * b**2, 3e7 * b**2], -1)

    return field


def stiff_warnings(fn) -> list[hn.StiffGradientWarning]:
    """The StiffGradientWarnings that ``fn()`` emits (every one: the "always" filter)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w.message for w in caught if issubclass(w.category, hn.StiffGradientWarning)]


def stiff_range(warning: hn.StiffGradientWarning) -> tuple[float, float]:
    """The user-time range a warning carries (where the stiff stretch began and ended)."""
    return warning.t_start, warning.t_end


def grad_solve(field, y0, t, param, method="dopri5", rtol=1e-6, atol=1e-6):
    """odeint and the gradient of y1(t_end) with respect to ``param`` (direct backprop)."""
    ys = hn.odeint(field, y0, t, method=method, rtol=rtol, atol=atol)
    return torch.autograd.grad(ys[-1, 0], param)[0]


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_van_der_pol_warns_once_with_range_and_fixes(method):
    mu = torch.tensor(1000.0, dtype=F64, requires_grad=True)
    messages = stiff_warnings(lambda: grad_solve(vdp(mu), Y0, T, mu, method))
    assert len(messages) == 1  # one per solve, however many stiff stretches
    msg = str(messages[0])
    assert "stiff" in msg and repr(method) in msg and messages[0].method == method
    # the fixes a user can act on: a stiff method and an adjoint
    assert "'bdf'" in msg and "'rodas5p'" in msg and "adjoint" in msg
    # the range lies in the solve's span: after the initial transient (t ~ 1/mu) and up to t = 0.2
    start, end = stiff_range(messages[0])
    assert 0 < start < end <= 0.2 + 1e-12
    # the largest h * rho seen lies past the limit (0.98 of dopri5's 3.307 / tsit5's 3.507) and below the
    # instability the controller allows no more than briefly (a few times the limit)
    assert messages[0].limit < messages[0].h_rho < 5 * messages[0].limit


def test_a_training_loop_warns_once_and_keeps_each_solves_numbers():
    """Five training steps on the stiff problem, under Python's default filter (once per message, category
    and line): one warning, not five, although mu (and with it the stiff range) changes every step; the
    numbers are on the warning instance. A second call site warns again (the dedup is per user line)."""
    mu = torch.nn.Parameter(torch.tensor(1000.0, dtype=F64))

    def train_step():
        ys = hn.odeint(vdp(mu), Y0, T, rtol=1e-6, atol=1e-6)
        ys[-1, 0].backward()
        with torch.no_grad():
            mu.add_(10.0)  # a parameter that moves, as an optimizer's step would: each solve's range differs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(5):
            train_step()
        hn.odeint(vdp(mu), Y0, T, rtol=1e-6, atol=1e-6)  # another line of this file: warns again
    stiff = [w for w in caught if issubclass(w.category, hn.StiffGradientWarning)]
    assert len(stiff) == 2
    # attributed to the user's lines (this file), not to the library's
    assert {w.filename for w in stiff} == {__file__}
    assert stiff[0].lineno != stiff[1].lineno
    start, end = stiff_range(stiff[0].message)
    assert 0 < start < end <= 0.2 + 1e-12 and stiff[0].message.h_rho > stiff[0].message.limit
    assert stiff[1].message.t_start != start  # the second call's own numbers (mu = 1050)


def test_the_warned_gradient_is_wrong_and_a_stiff_method_is_right():
    """What the warning stands for: dopri5's backpropagated gradient is off by orders of magnitude, rodas5p's
    (the fix it names) agrees with scipy Radau finite differences (-2.8788e-7, rtol 1e-11, h = 0.1: the
    central difference's truncation is O(h^2 y''') ~ 1e-14 here), and rodas5p gives no warning."""
    reference = -2.8788e-7
    mu = torch.tensor(1000.0, dtype=F64, requires_grad=True)
    grads = {}

    def solve(method, rtol, atol):
        grads[method] = grad_solve(vdp(mu), Y0, T, mu, method, rtol=rtol, atol=atol)

    assert len(stiff_warnings(lambda: solve("dopri5", 1e-6, 1e-8))) == 1
    # measured -3.7e-3, four orders of magnitude off (at atol 1e-6 it is -3.6e-7, 26% off: how wrong
    # such a gradient is depends on the tolerances, which is why it is only ever reported)
    assert abs(grads["dopri5"].item() - reference) > 100 * abs(reference)
    assert not stiff_warnings(lambda: solve("rodas5p", 1e-8, 1e-8))
    # rodas5p at 1e-8 differentiates its own steps: measured 1e-7 (relative) from the reference, whose
    # last digit is its own error
    assert abs(grads["rodas5p"].item() - reference) < 1e-3 * abs(reference)


def test_robertson_warns():
    """Robertson to t = 0.3: stiff after t ~ 0.01, detected; here the gradient happens to be fine
    (dy1/dk1 = -0.27444 against Radau's -0.27447), which is why this is a warning, not an error."""
    k1 = torch.tensor(0.04, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 0.3], dtype=F64)
    messages = stiff_warnings(lambda: grad_solve(robertson(k1), y0, t, k1, atol=1e-8))
    assert len(messages) == 1


def test_warns_for_a_state_that_requires_grad():
    y0 = Y0.clone().requires_grad_(True)
    messages = stiff_warnings(lambda: grad_solve(vdp(1000.0), y0, T, y0))
    assert len(messages) == 1


def test_reverse_time_solve_names_user_times():
    mu = torch.tensor(1000.0, dtype=F64, requires_grad=True)
    y1 = hn.odeint(vdp(mu), Y0, T, rtol=1e-8, atol=1e-8, method="rodas5p")[-1].detach()
    messages = stiff_warnings(lambda: grad_solve(vdp(mu), y1, T.flip(0), mu))
    assert len(messages) == 1
    start, end = stiff_range(messages[0])
    assert 0.2 >= start > end >= 0.0  # user times, running backwards


def test_no_warning_without_autograd_or_with_an_adjoint():
    mu = torch.tensor(1000.0, dtype=F64, requires_grad=True)
    with torch.no_grad():
        assert not stiff_warnings(lambda: hn.odeint(vdp(mu), Y0, T, rtol=1e-6, atol=1e-6))
    # nothing requires grad: no autograd graph, no warning
    assert not stiff_warnings(lambda: hn.odeint(vdp(1000.0), Y0, T, rtol=1e-6, atol=1e-6))

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mu = torch.nn.Parameter(torch.tensor(1000.0, dtype=F64))

        def forward(self, t, y):
            return vdp(self.mu)(t, y)

    field = Field()

    def adjoint():
        sol = hn.solve(
            field,
            Y0,
            T,
            solver=hn.Dopri5(),
            controller=hn.PIDController(rtol=1e-6, atol=1e-6),
            sensitivity=hn.InterpolatingAdjoint(),
        )
        sol.ys[-1, 0].backward()

    assert not stiff_warnings(adjoint)
    assert field.mu.grad is not None and math.isfinite(field.mu.grad.item())


ROT = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)


@pytest.mark.parametrize(
    "name, field, y0, t_end",
    [
        # torchdiffeq's spiral (non-autonomous, nonlinear)
        ("spiral", lambda w: lambda t, y: torch.tanh(y @ (w * ROT)) + 0.3 * torch.sin(2 * t), [2.0, 0.0], 25.0),
        # a harmonic oscillator, eigenvalues +-i w: 20 periods
        ("oscillator", lambda w: lambda t, y: torch.stack([y[..., 1], -(w**2) * y[..., 0]], -1), [1.0, 0.0], 125.0),
        # van der Pol with mu = 1 (non-stiff): two limit cycles
        ("vdp-1", lambda w: vdp(w), [2.0, 0.0], 15.0),
    ],
)
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8"])
def test_no_false_positive_on_nonstiff_problems(name, field, y0, t_end, method, monkeypatch):
    monkeypatch.setattr(stiff_watch, "SAMPLE_EVERY", 1)  # test every step, not every 10th
    w = torch.tensor(1.0, dtype=F64, requires_grad=True)
    y0 = torch.tensor(y0, dtype=F64)
    t = torch.tensor([0.0, t_end], dtype=F64)
    assert not stiff_warnings(lambda: grad_solve(field(w), y0, t, w, method, rtol=1e-7, atol=1e-9))


def test_no_false_positive_on_the_mlp_workload(monkeypatch):
    """The benchmarks' mlp field in its hard setting (gain 2.5 to t = 20; batch 64), trained by direct
    backprop: its largest h * rho is 0.27-0.44 of the limit (batch 16-512, measured)."""
    monkeypatch.setattr(stiff_watch, "SAMPLE_EVERY", 1)  # test every step, not every 10th
    workloads = pytest.importorskip("benchmarks.workloads")
    field, y0, t, target = workloads.mlp_problem(batch=64, gain=2.5, t_end=20.0)

    def train_step():
        ys = hn.odeint(field, y0, t, rtol=1e-5, atol=1e-6)
        (ys - target).pow(2).mean().backward()

    assert not stiff_warnings(train_step)


@pytest.mark.parametrize("lam", [-1.0, -1000.0, -3.0e5])
def test_stage_estimate_is_the_eigenvalue_of_a_linear_field(lam):
    """For y' = lam y the last two stages of a step give |k7 - k6| / |y1 - y6| = |lam| exactly (both at
    t + h, and the field is linear), to rounding; the weights cancel for a scalar."""
    solver = Dopri5()
    y0 = torch.tensor([1.5], dtype=F64)

    def f(t, y):
        return lam * y

    dt = 0.5 / abs(lam)
    step = solver.step(f, 0.0, y0, f(0.0, y0), dt)
    rho = stage_rho(solver.tableau, y0, step.y1, step.ks, dt, 1e-6, 1e-9)
    assert rho == pytest.approx(abs(lam), rel=1e-9)


def test_real_stability_boundary_matches_known_values():
    """dopri5's region reaches 3.3066 on the negative real axis (Hairer & Wanner II, Fig. IV.2.1: 'about
    3.3'), tsit5's 3.5068 (the constant of the auto switch), classical rk4's 2.7853 (|R(-x)| = 1 for
    R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24), explicit Euler's 2 exactly."""
    from hybrid_node.solvers.tsit5 import Tsit5

    dopri5 = Dopri5().tableau
    tsit5 = Tsit5().tableau
    assert real_stability_boundary(dopri5.a, dopri5.b) == pytest.approx(3.3066, abs=1e-3)
    assert real_stability_boundary(tsit5.a, tsit5.b) == pytest.approx(TSIT5_STABILITY, abs=1e-3)
    rk4_a = ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0))
    assert real_stability_boundary(rk4_a, (1 / 6, 1 / 3, 1 / 3, 1 / 6)) == pytest.approx(2.7853, abs=1e-3)
    assert real_stability_boundary(((),), (1.0,)) == pytest.approx(2.0, abs=1e-9)


class VdpField(torch.nn.Module):
    """Van der Pol with mu an ``nn.Parameter`` (the paths below differentiate the field's parameters)."""

    def __init__(self, mu: float = 1000.0):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(mu, dtype=F64))

    def forward(self, t, y):
        return vdp(self.mu)(t, y)


def test_checkpointed_direct_backprop_warns():
    """DirectBackprop(checkpoints=k) runs its forward pass without a graph and replays the steps with their
    sizes frozen: the same gradient as plain direct backprop, as unreliable (to t = 2: -8.7e14 where the
    solution's is -3.65e-5, measured), so it warns as the plain loop does, with the same range."""
    field = VdpField()

    def solve(sensitivity):
        sol = hn.solve(
            field, Y0, T, solver=hn.Dopri5(), controller=hn.PIDController(rtol=1e-6, atol=1e-6), sensitivity=sensitivity
        )
        sol.ys[-1, 0].backward()

    plain = stiff_warnings(lambda: solve(hn.DirectBackprop()))
    replayed = stiff_warnings(lambda: solve(hn.DirectBackprop(checkpoints=4)))
    assert len(plain) == len(replayed) == 1
    # the replay's forward pass takes the plain loop's steps, so the watch sees the same ones
    assert stiff_range(replayed[0]) == pytest.approx(stiff_range(plain[0]), rel=1e-12)
    controller = hn.PIDController(rtol=1e-6, atol=1e-6)
    checkpointed = hn.DirectBackprop(checkpoints=4)
    with torch.no_grad():  # nothing is differentiated: no warning
        assert not stiff_warnings(
            lambda: hn.solve(field, Y0, T, solver=hn.Dopri5(), controller=controller, sensitivity=checkpointed)
        )


def per_sample_solve(field, y0, t, rtol=1e-6, atol=1e-6):
    """A per-sample step-controlled dopri5 solve of the batch ``y0`` (shape (batch, 2))."""
    controller = hn.PIDController(rtol=rtol, atol=atol, per_sample=True)
    return hn.solve(field, y0, t, solver=hn.Dopri5(), controller=controller).ys


def test_per_sample_step_control_warns():
    """Per-sample step control differentiates each row's accepted steps with their sizes frozen, as the
    shared loop does (to t = 2: -8.7e14 where the solution's is -3.65e-5, measured), so it warns too; the
    estimate joins the loop's one read per step. A batch of a stiff and a non-stiff row warns (the stiff
    row is found), over a range inside the stiff row's."""
    field = VdpField()
    plain = stiff_warnings(lambda: grad_solve(field, Y0, T, field.mu))
    y0 = Y0.expand(2, 2).clone()
    per_sample = stiff_warnings(lambda: per_sample_solve(field, y0, T)[-1, 0, 0].backward())
    assert len(plain) == len(per_sample) == 1
    start, end = stiff_range(per_sample[0])
    # both rows are the plain solve (its range starts within the first tested steps' ~1e-3 of the plain
    # start: the per-sample loop's own first step and sampling differ slightly)
    assert start == pytest.approx(plain[0].t_start, abs=2e-3) and end == pytest.approx(0.2, abs=1e-2)

    class Mixed(torch.nn.Module):
        """Row 0 van der Pol with mu = 1000 (stiff), row 1 with mu = 1 (not)."""

        def __init__(self):
            super().__init__()
            self.mu = torch.nn.Parameter(torch.tensor([1000.0, 1.0], dtype=F64))

        def forward(self, t, y):
            return torch.stack([y[:, 1], self.mu * ((1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0])], -1)

    mixed = Mixed()
    assert len(stiff_warnings(lambda: per_sample_solve(mixed, y0, T)[-1, :, 0].sum().backward())) == 1


def test_per_sample_no_false_positive(monkeypatch):
    """A batch of spirals (torchdiffeq's, each row with its own gain) under per-sample control: no warning."""
    monkeypatch.setattr(stiff_watch, "SAMPLE_EVERY", 1)  # test every step, not every 10th
    w = torch.tensor([[0.5], [1.0], [2.0]], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[2.0, 0.0]] * 3, dtype=F64)
    t = torch.tensor([0.0, 25.0], dtype=F64)

    def spiral(t, y):
        return torch.tanh(y @ ROT) * w + 0.3 * torch.sin(2 * t)[:, None]

    assert not stiff_warnings(lambda: per_sample_solve(spiral, y0, t, 1e-7, 1e-9).sum().backward())


def device_solve(field, y0, t, rtol=1e-6, atol=1e-6, sync_every=8):
    """A dopri5 solve in the device-resident loop (runs of ``sync_every`` attempts, one host read per run)."""
    controller = hn.PIDController(rtol=rtol, atol=atol, device_loop=True, sync_every=sync_every)
    return hn.solve(field, y0, t, solver=hn.Dopri5(), controller=controller).ys


def test_device_loop_warns_from_one_sample_per_run():
    """The device loop keeps every attempt in the graph for direct backprop (to t = 2: -8.7e14 where the
    solution's is -3.65e-5, measured). It tests the last attempt of each run, read with the run's
    summary: no host read of its own, so 15 stiff samples take 15 runs (~120 attempts). To t = 0.5 (358
    accepted steps, 45 runs) it warns over a range inside the host loop's; to t = 0.2 (22 runs) the
    stretch is too short for it, which docs/gradients.md states."""
    field = VdpField()
    t = torch.tensor([0.0, 0.5], dtype=F64)
    host = stiff_warnings(lambda: hn.odeint(field, Y0, t, rtol=1e-6, atol=1e-6))
    device = stiff_warnings(lambda: device_solve(field, Y0, t))
    assert len(host) == len(device) == 1
    # the device loop's samples lie on the host loop's steps (the same decisions, eager on the CPU); it
    # needs more of the stretch to count 15 of them
    assert host[0].t_start <= device[0].t_start < device[0].t_end <= host[0].t_end + 1e-12
    assert device[0].h_rho > device[0].limit
    with torch.no_grad():  # nothing recorded: not watched
        assert not stiff_warnings(lambda: device_solve(field, Y0, t))


def test_device_loop_no_false_positive():
    """The spiral of the shared-loop test in the device loop: no warning. Runs of one attempt, so every
    attempt is a sample (as SAMPLE_EVERY = 1 in the shared-loop test; with 8, this solve has 14 runs,
    too few to ever count 15)."""
    w = torch.tensor(1.0, dtype=F64, requires_grad=True)
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 25.0], dtype=F64)

    def spiral(t, y):
        return torch.tanh(y @ (w * ROT)) + 0.3 * torch.sin(2 * t)

    assert not stiff_warnings(lambda: device_solve(spiral, y0, t, 1e-7, 1e-9, sync_every=1))


@pytest.mark.parametrize("option", ["step_t", "jump_t", "event"])
def test_host_loop_variants_warn(option):
    """step_t, jump_t and odeint_event run the host loop's watch too (each is as wrong: to t = 2, -2.0e22,
    -2.0e22 and +1.7e20, measured), once per solve."""
    field = VdpField()

    def solve():
        if option == "event":
            hn.odeint_event(field, Y0, T[0], event_fn=lambda t, y: t - 0.18, rtol=1e-6, atol=1e-6)
        else:
            hn.odeint(field, Y0, T, rtol=1e-6, atol=1e-6, options={option: torch.tensor([0.1], dtype=F64)})

    assert len(stiff_warnings(solve)) == 1


def sample_event_solve(field, y0, t_stop, rtol=1e-6, atol=1e-6, event_fn=None):
    """odeint_event with one event per sample (dopri5): sample i stops at t_stop[i] (a time event, so the
    stiff stretch each sample runs through is known)."""
    if event_fn is None:

        def event_fn(t, y):
            return t - t_stop + 0 * y[..., 0]

    return hn.odeint_event(field, y0, 0.0, event_fn=event_fn, per_sample=True, rtol=rtol, atol=atol)


def test_per_sample_events_warn():
    """Per-sample events differentiate the shared steps with their sizes frozen, as the host loop does
    (events at t = 2: dy1/dmu = +6.3e22 where the solution's is -3.65e-5, measured), so they warn too; the
    estimate (the largest over the samples) joins the sign read at each step's end. The range lies in the
    stiff stretch of the host loop's solve to the same time."""
    field = VdpField()
    y0 = Y0.expand(2, 2).clone()
    t_stop = torch.tensor([0.15, 0.2], dtype=F64)
    plain = stiff_warnings(lambda: grad_solve(field, Y0, T, field.mu))
    messages = stiff_warnings(lambda: sample_event_solve(field, y0, t_stop)[1][-1, :, 0].sum().backward())
    assert len(plain) == len(messages) == 1
    start, end = stiff_range(messages[0])
    # the same steps as the host loop while both samples run (so the same first stiff run), up to the step
    # that brackets the later event (it ends past it: measured 0.2004; a step here is ~3e-3 long)
    assert start == pytest.approx(plain[0].t_start, abs=2e-3) and 0.15 < end < 0.2 + 1e-2
    assert messages[0].limit < messages[0].h_rho < 5 * messages[0].limit
    with torch.no_grad():  # nothing recorded: not watched
        assert not stiff_warnings(lambda: sample_event_solve(field, y0, t_stop))


def test_per_sample_events_integer_event_values_and_no_false_positive(monkeypatch):
    """A batch of spirals (non-stiff) with an integer event value (a sign read with the estimate is read as
    a float): every step tested, no warning, and the events fire where the float event finds them."""
    monkeypatch.setattr(stiff_watch, "SAMPLE_EVERY", 1)  # test every step, not every 10th
    w = torch.tensor([[0.5], [1.0], [2.0]], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[2.0, 0.0]] * 3, dtype=F64)

    def spiral(t, y):
        return torch.tanh(y @ ROT) * w + 0.3 * torch.sin(2 * t)

    def below(t, y):  # 0 while y1 > 0.5, then 1: an integer event
        return (y[..., 0] < 0.5).long()

    def crossing(t, y):
        return y[..., 0] - 0.5

    caught = []
    caught += stiff_warnings(lambda: sample_event_solve(spiral, y0, None, 1e-7, 1e-9, below)[1][-1].sum().backward())
    t_int, _ = sample_event_solve(spiral, y0, None, 1e-7, 1e-9, below)
    t_float, _ = sample_event_solve(spiral, y0, None, 1e-7, 1e-9, crossing)
    assert not caught
    # both locate the same crossing, to the event search's resolution
    assert torch.allclose(t_int.detach(), t_float.detach(), atol=1e-6)


def test_bosh3_stays_unwatched_as_its_stages_do_not_estimate_the_eigenvalue(monkeypatch):
    """bosh3's last two stages sit at t + h and t + 3h/4, so ``|k4 - k3| / |y1 - Y3|`` is not the stage
    estimate: ``y1 - Y3 ~ (h/4) y'`` and the quotient measures ``|y''| / |y'|``, the solution's own rate.
    On van der Pol (mu = 1000) bosh3's accepted steps sit at its stability boundary (h times the Jacobian's
    spectral radius at y1, computed exactly, is 2.5 in the median of the second half; boundary 2.513)
    while the quotient gives ~0.13 there (measured), so it would never warn; OrdinaryDiffEq.jl has no
    estimate for BS3 either. The watch leaves bosh3 alone: no warning although its gradient is wrong."""
    from hybrid_node.loop import host

    tab = hn.METHODS["bosh3"].solver().tableau
    assert stiff_watch.watch_for(hn.METHODS["bosh3"].solver(), 1e-6, 1e-6, differentiated=True) is None
    rows = []

    class Recorder:
        def observe(self, step, t0, y0, t1):
            h, ks, y0, y1 = t1 - t0, [k.detach() for k in step.ks], y0.detach(), step.y1.detach()
            y3 = y0 + h * sum(c * k for c, k in zip(tab.a[-2], ks[:-2]))
            w = 1 / (1e-6 + 1e-6 * torch.maximum(y0.abs(), y1.abs()))
            quotient = float(((ks[-1] - ks[-2]) * w).norm() / ((y1 - y3) * w).norm())
            a, b = float(y1[0]), float(y1[1])
            jac = torch.tensor([[0.0, 1.0], [-1000.0 * (1 + 2 * a * b), 1000.0 * (1 - a * a)]], dtype=F64)
            rows.append((h * quotient, h * float(torch.linalg.eigvals(jac).abs().max())))

        def count(self, *args):
            pass

        def warn(self, reverse):
            pass

    monkeypatch.setattr(host, "watch_for", lambda *args, **kwargs: Recorder())
    mu = torch.tensor(1000.0, dtype=F64, requires_grad=True)
    grad_solve(vdp(mu), Y0, T, mu, "bosh3")
    late = torch.tensor(rows[len(rows) // 2 :], dtype=F64)
    boundary = real_stability_boundary(tab.a, tab.b)
    assert late[:, 1].median() > 0.9 * boundary  # held at the boundary: stiff
    assert late[:, 0].max() < 0.2 * boundary  # the cross-time quotient sees none of it
    monkeypatch.undo()
    assert not stiff_warnings(lambda: grad_solve(vdp(mu), Y0, T, mu, "bosh3"))
