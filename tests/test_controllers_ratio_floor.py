"""The PID formula's floor on the error ratio, and its guard against powers out of the float range.

An error estimate of exactly 0 (a field at rest) is floored before the formula raises it to
``-(pcoeff + icoeff + dcoeff) / k``: the shared-step loops at 1e-10 (``core.RATIO_FLOOR``), the
per-sample loop at torchode's 1e-38 (``core.PER_SAMPLE_RATIO_FLOOR``; its parity with torchode is in
``tests/test_per_sample_torchode.py``). Gains large enough to take a power of the floored ratio
beyond 1e308 are accepted by ``PIDController``; the formula holds such ratios where its powers stay
finite, so these solves run as any other.
"""

import math

import pytest
import torch

import hybrid_node as hn
from hybrid_node.loop import core

B = 4
T_ON = torch.linspace(0.5, 3.0, B, dtype=torch.float64)
FORCING = torch.tensor([1.0, -2.0], dtype=torch.float64)
T = torch.linspace(0.0, 5.0, 6, dtype=torch.float64)


def _at_rest_then_forced(t, y):
    # every sample rests at y = 0 (an error estimate of exactly 0) until its forcing starts at T_ON
    tt = t[:, None] if t.dim() else t
    return -y + torch.relu(tt - T_ON[:, None]) ** 3 * FORCING


def _control(gains, **settings) -> hn.PIDController:
    p, i, d = gains
    return hn.PIDController(rtol=1e-6, atol=1e-8, pcoeff=p, icoeff=i, dcoeff=d, first_step=1e-3, **settings)


@pytest.mark.parametrize("xp", [core.FLOAT, core.TENSOR], ids=["float", "tensor"])
@pytest.mark.parametrize("gains", [(0.0, 160.0, 0.0), (250.0, 1.0, 0.0)])
@pytest.mark.parametrize("floor", [core.RATIO_FLOOR, core.PER_SAMPLE_RATIO_FLOOR])
def test_a_zero_error_with_large_gains_grows_the_step_by_ifactor(xp, gains, floor):
    """Gains (0, 160, 0) at 1e-10: the host's 1e-10 ** -32 raised OverflowError; (250, 1, 0) after an
    exact zero error: inf * 0 = NaN on tensors (the floored ratio's power overflows, the memory's
    underflows), a NaN step that the per-sample and device loops never recovered from."""
    ctrl = hn.PIDController(pcoeff=gains[0], icoeff=gains[1], dcoeff=gains[2])
    c = core.StepControl.of(ctrl, 4, torch.float64)
    num = (lambda x: x) if xp is core.FLOAT else (lambda x: torch.tensor(x, dtype=torch.float64))
    accepted = True if xp is core.FLOAT else torch.tensor(True)
    r1 = 1.0
    for _ in range(3):  # zero errors one after another: the memory holds the floored ratio
        dt, r1, r2 = core.propose(xp, c, num(1.0), num(0.0), accepted, num(r1), num(1.0), floor=floor)
        assert float(dt) == ctrl.ifactor  # the largest growth: the factor is far above it
        r1 = float(r1)
        # the memory is a small positive ratio (the floor, or where its power stays finite: 1.05e-6 for
        # (250, 1, 0), whose e1 is -50.2), never 0, whose negative powers are infinite
        assert floor <= r1 < 1e-5


@pytest.mark.parametrize("gains", [(9.0, 40.0, 0.0), (0.0, 160.0, 0.0), (250.0, 1.0, 0.0)])
def test_large_gains_from_rest_solve_on_every_loop(gains):
    """Host and device loop take the same steps (the same formula), the per-sample loop its own; all
    three reach the solution. Before: (0, 160, 0) and (250, 1, 0) raised OverflowError on the host
    loop, and (250, 1, 0) failed the device loop and ran the per-sample loop to max_num_steps."""
    y0 = torch.zeros(B, 2, dtype=torch.float64)
    ref = hn.solve(_at_rest_then_forced, y0, T, controller=hn.PIDController(rtol=1e-11, atol=1e-13)).ys
    host = hn.solve(_at_rest_then_forced, y0, T, controller=_control(gains))
    device = hn.solve(_at_rest_then_forced, y0, T, controller=_control(gains, device_loop=True))
    per_sample = hn.solve(_at_rest_then_forced, y0, T, controller=_control(gains, per_sample=True))
    # one formula on floats and 0-d tensors: the same steps (the device loop's outputs round otherwise,
    # to 1e-12 relative as in tests/test_device_loop.py)
    assert (host.stats.nfe, host.stats.n_accepted) == (device.stats.nfe, device.stats.n_accepted)
    assert float((host.ys - device.ys).abs().max() / host.ys.abs().max()) < 1e-12
    for sol in (host, per_sample):
        assert sol.status is hn.Status.SUCCESS
        # rtol 1e-6 per step: the global errors measured 2e-8 to 2e-7 of max|y| (52)
        assert float((sol.ys - ref).abs().max() / ref.abs().max()) < 1e-5


def test_the_floors_are_positive():
    # at 0 an exact zero error raised ZeroDivisionError on the host, and 0 * inf (pcoeff) made NaN steps
    assert 0 < core.PER_SAMPLE_RATIO_FLOOR < core.RATIO_FLOOR
    assert math.isfinite(core.PER_SAMPLE_RATIO_FLOOR ** (-0.2))  # the I controller's power of a 5(4) pair
