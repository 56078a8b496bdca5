"""Step-size rules around rejected steps, and the low-order pairs step by step against torchdiffeq.

``PIDController(grow_after_reject=False)`` caps the growth factor at 1 for the step after an accepted
step that directly follows a rejection: Hairer's codes (``facmax = 1``, Solving ODEs I, II.4) and
scipy's ``RK45``. The default keeps the rule of torchdiffeq (``odeint``'s steps are torchdiffeq's:
``tests/test_steps_vs_torchdiffeq.py``), diffrax and DifferentialEquations.jl, which let that step grow.

torchdiffeq's ``bosh3`` takes the same steps as ours; its ``adaptive_heun`` starts each step after the
first from ``f(t1, y0 + h k1)``, not from ``f(t1, y1)`` (docs/torchdiffeq.md), so only its first step is
Heun's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hybrid_node as hn
from hybrid_node.loop import core

F64 = torch.float64
A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)
Y0 = torch.tensor([2.0, 0.0], dtype=F64)
T_END = 25.0
#: relative agreement of two implementations' step sizes. The error ratio is a difference of nearly
#: equal stage sums, so its relative rounding is about eps * |y| / |error| (1e-16 / 1e-9 at rtol 1e-7);
#: the step factor is its -1/5-th power, and the rounding accumulates over ~350 steps: measured 2.3e-9
#: (dopri5 against RK45), where the rule under test changes steps by 5% to 14%.
STEP_RTOL = 1e-7


class Cubic(torch.nn.Module):
    """torchdiffeq's ode_demo field, recording each accepted step's start, state and size."""

    def __init__(self):
        super().__init__()
        self.accepted: list[tuple[float, torch.Tensor, float]] = []

    def forward(self, t, y):
        return (y**3) @ A

    def callback_accept_step(self, t0, y0, dt):
        self.accepted.append((float(t0), y0.detach().clone(), float(dt)))


def _scipy_rk45_steps(rtol: float, atol: float, first_step: float) -> np.ndarray:
    """The accepted step sizes of scipy's RK45 stepping the same problem."""
    from scipy.integrate import RK45

    a = A.numpy()
    stepper = RK45(lambda t, y: (y**3) @ a, 0.0, Y0.numpy(), T_END, rtol=rtol, atol=atol, first_step=first_step)
    steps = []
    while stepper.status == "running":
        t0 = stepper.t
        stepper.step()
        steps.append(stepper.t - t0)
    assert stepper.status == "finished"
    return np.array(steps)


def _our_steps(controller: hn.PIDController) -> tuple[np.ndarray, hn.Solution]:
    field = Cubic()
    sol = hn.solve(
        field,
        Y0,
        torch.tensor([0.0, T_END], dtype=F64),
        # RK45's error estimate: Dormand and Prince's own fourth-order solution (E = b - b_hat)
        solver=hn.Dopri5(embedded="dormand-prince"),
        controller=controller,
    )
    return np.array([dt for _, _, dt in field.accepted]), sol


@pytest.mark.parametrize("rtol", [1e-3, 1e-7])
def test_without_growth_after_a_rejection_the_steps_are_scipy_rk45s(rtol):
    """RK45: safety 0.9, factors in [0.2, 10], exponent -1/5, RMS norm of err / (atol + rtol max(|y0|,
    |y1|)), and an accepted step may shrink the next: PIDController's defaults (shrink_after_accept=True).
    The last step is left out: RK45 cuts it at t_bound, ours may stretch by up to 1% to land there."""
    atol, first_step = rtol * 1e-2, 0.01
    expected = _scipy_rk45_steps(rtol, atol, first_step)
    settings = dict(rtol=rtol, atol=atol, first_step=first_step)
    held, sol = _our_steps(hn.PIDController(**settings, grow_after_reject=False))
    assert sol.stats.n_rejected > 10  # the problem rejects: the rule is exercised
    assert len(held) == len(expected)
    np.testing.assert_allclose(held[:-1], expected[:-1], rtol=STEP_RTOL, atol=0)
    # the default lets the step grow right after a rejection: somewhere the steps part by far more
    grown, _ = _our_steps(hn.PIDController(**settings))
    n = min(len(grown), len(expected)) - 1
    assert np.max(np.abs(grown[:n] / expected[:n] - 1)) > 1e-2


def _propose(xp, c, dt, ratio, accepted, r1, r2=1.0):
    if xp is core.TENSOR:
        dt, ratio, r1, r2 = (torch.tensor(x, dtype=F64) for x in (dt, ratio, r1, r2))
        accepted = torch.tensor(accepted)
    return tuple(float(x) for x in core.propose(xp, c, dt, ratio, accepted, r1, r2))


@pytest.mark.parametrize("xp", [core.FLOAT, core.TENSOR], ids=["float", "tensor"])
@pytest.mark.parametrize("gains", [(0.0, 1.0, 0.0), (0.4, 0.3, 0.0)], ids=["I", "PI"])
def test_the_rule_in_the_step_proposal(xp, gains):
    p, i, d = gains
    held = core.StepControl.of(hn.PIDController(pcoeff=p, icoeff=i, dcoeff=d, grow_after_reject=False), 4, F64)
    free = core.StepControl.of(hn.PIDController(pcoeff=p, icoeff=i, dcoeff=d), 4, F64)
    for c in (held, free):
        # a rejection (ratio 3) then an accepted retry with a small error (1e-6)
        dt, r1, r2 = _propose(xp, c, 1.0, 3.0, False, 0.5, 0.7)
        assert dt < 1.0
        dt_next, r1_next, r2_next = _propose(xp, c, dt, 1e-6, True, r1, r2)
        assert (r1_next, r2_next) == (pytest.approx(1e-6), pytest.approx(0.5))  # the memory moves on as before
        if c is held:
            assert dt_next == dt  # capped at the accepted step
            # only the step right after the rejection is held: the next accepted one grows again
            assert _propose(xp, c, dt_next, 1e-6, True, r1_next, r2_next)[0] > 2 * dt_next
        else:
            assert dt_next > 2 * dt
    # the same formula as the default where no rejection came before
    for ratio in (1e-6, 0.3, 0.99):
        assert _propose(xp, held, 1.0, ratio, True, 0.5, 0.7) == _propose(xp, free, 1.0, ratio, True, 0.5, 0.7)


@pytest.mark.parametrize("loop", ["device_loop", "per_sample"])
def test_every_loop_holds_the_step_after_a_rejection(loop):
    """The device and per-sample loops carry the controller memory as tensors: the same steps as the host loop."""
    t = torch.tensor([0.0, T_END], dtype=F64)
    settings = dict(rtol=1e-7, atol=1e-9, first_step=0.01, grow_after_reject=False)
    host = hn.solve(lambda t, y: (y**3) @ A, Y0[None], t, controller=hn.PIDController(**settings))
    other = hn.solve(lambda t, y: (y**3) @ A, Y0[None], t, controller=hn.PIDController(**settings, **{loop: True}))
    grown = dict(settings, grow_after_reject=True)
    free = hn.solve(lambda t, y: (y**3) @ A, Y0[None], t, controller=hn.PIDController(**grown, **{loop: True}))
    # the loop honours the setting: with the default rule it takes other steps (330 accepted, 64 rejected)
    assert (free.stats.n_accepted, free.stats.n_rejected) != (host.stats.n_accepted, host.stats.n_rejected)
    assert (other.stats.n_accepted, other.stats.n_rejected) == (host.stats.n_accepted, host.stats.n_rejected)
    torch.testing.assert_close(other.ys, host.ys, rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # two torch.compile graphs: about 20 s on a CPU
def test_the_whole_solve_graph_holds_the_step_after_a_rejection():
    """A solve without an autograd graph and ``compile=True`` runs as one compiled graph (the device loop's
    attempt in a ``while_loop``): the same steps as the host loop under either rule."""
    t = torch.tensor([0.0, T_END], dtype=F64)
    counts = []
    for grow in (False, True):
        ctrl = hn.PIDController(rtol=1e-7, atol=1e-9, first_step=0.01, grow_after_reject=grow)
        with torch.no_grad():
            host = hn.solve(lambda t, y: (y**3) @ A, Y0[None], t, controller=ctrl)
            graph = hn.solve(lambda t, y: (y**3) @ A, Y0[None], t, solver=hn.Dopri5().compiled(), controller=ctrl)
        assert (graph.stats.n_accepted, graph.stats.n_rejected) == (host.stats.n_accepted, host.stats.n_rejected)
        torch.testing.assert_close(graph.ys, host.ys, rtol=1e-10, atol=1e-12)
        counts.append((host.stats.n_accepted, host.stats.n_rejected))
    assert counts[0] != counts[1]  # measured (329, 58) against (330, 64)


def test_the_setting_is_a_bool_and_off_by_default():
    assert hn.PIDController().grow_after_reject is True
    with pytest.raises(ValueError, match="grow_after_reject must be True or False"):
        hn.PIDController(grow_after_reject="no")


def _torchdiffeq():
    """torchdiffeq's module, or a skip of the test asking for it (the peer is an optional install)."""
    return pytest.importorskip("torchdiffeq", reason="torchdiffeq (the peer) is not installed")


def _accepted_steps(solve, method: str, rtol: float) -> list[tuple[float, torch.Tensor, float]]:
    field = Cubic()
    solve(field, Y0, torch.tensor([0.0, T_END], dtype=F64), method=method, rtol=rtol, atol=rtol * 1e-2)
    return field.accepted


@pytest.mark.parametrize("rtol", [1e-3, 1e-7])
def test_bosh3_takes_torchdiffeqs_steps(rtol):
    """Every accepted step's start, state and size as torchdiffeq's ``bosh3``, the last one left out (torchdiffeq
    steps past t[-1] and interpolates back, ours lands on it). Measured: 4e-10 relative in the steps, 2e-11 in
    the states over 2625 steps at rtol 1e-7 (the rounding of the error ratio, see STEP_RTOL)."""
    expected = _accepted_steps(_torchdiffeq().odeint, "bosh3", rtol)
    got = _accepted_steps(hn.odeint, "bosh3", rtol)
    assert len(got) == len(expected)
    for (t0, y0, dt), (t_ref, y_ref, dt_ref) in zip(got[:-1], expected[:-1]):
        assert t0 == pytest.approx(t_ref, rel=0, abs=1e-9) and dt == pytest.approx(dt_ref, rel=STEP_RTOL)
        torch.testing.assert_close(y0, y_ref, rtol=0, atol=1e-9)


def _heun(t0: float, y0: torch.Tensor, dt: float, k1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Heun's step from ``y0`` with first stage ``k1``: the new state and the stage ``f(t0 + dt, y0 + dt k1)``."""
    k2 = Cubic()(t0 + dt, y0 + dt * k1)
    return y0 + dt / 2 * (k1 + k2), k2


def test_adaptive_heun_is_heuns_method_where_torchdiffeq_reuses_the_predictors_derivative():
    """Ours: every accepted step is Heun's, ``y0 + h/2 (f(t0, y0) + f(t0 + h, y0 + h f(t0, y0)))``.
    torchdiffeq's first step is the same; from then on it starts each step from the previous step's
    second stage, ``f(t1, y0 + h k1)``, which is not ``f(t1, y1)`` (docs/torchdiffeq.md): a different
    method, one evaluation a step cheaper, whose results differ at the level of the method's error."""
    field = Cubic()
    ours = _accepted_steps(hn.odeint, "adaptive_heun", 1e-4)
    peer = _accepted_steps(_torchdiffeq().odeint, "adaptive_heun", 1e-4)
    for (t0, y0, dt), (_, y_next, _) in zip(ours, ours[1:]):
        torch.testing.assert_close(y_next, _heun(t0, y0, dt, field(t0, y0))[0], rtol=1e-14, atol=1e-14)
    # the first step: the same start, size and result in both
    (t0, y0, dt), (t1, y1, _) = peer[0], peer[1]
    assert (t0, dt, t1) == (ours[0][0], ours[0][2], ours[1][0])
    torch.testing.assert_close(ours[1][1], y1, rtol=1e-14, atol=1e-14)
    # after it: torchdiffeq's results are Heun's formula with the previous step's second stage as k1
    k1, far_from_heun = field(t0, y0), 0.0
    for (t, y, h), (_, y_next, _) in zip(peer, peer[1:]):
        predicted, k2 = _heun(t, y, h, k1)
        torch.testing.assert_close(y_next, predicted, rtol=1e-12, atol=1e-14)
        far_from_heun = max(far_from_heun, float((y_next - _heun(t, y, h, field(t, y))[0]).abs().max()))
        k1 = k2
    # k2 and f(t1, y1) differ by O(h^2): the steps part from Heun's far above rounding (measured 6.9e-6)
    assert far_from_heun > 1e-7
