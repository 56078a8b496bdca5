"""dopri8's error estimate is DOP853's: the fifth- and third-order differences are each divided by the
tolerance scale ``atol + rtol * max(|y0|, |y1|)`` before their norms are combined as
``E5^2 / sqrt(n (E5^2 + 0.01 E3^2))`` (Hairer, Nørsett, Wanner, Solving ODEs I, II.10).

The independent solver is scipy's ``DOP853``: with the same first step and controller (safety 0.9,
factors in [0.2, 10], exponent -1/8, no growth right after a rejection: ``grow_after_reject=False``)
it takes the same steps. With the norms of the unscaled differences, ours took steps 1% to 2% off on a
linear problem and up to 80% off on Arenstorf's orbit, where ``y`` and ``y'`` have different scales.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hybrid_node as hn
from hybrid_node.controllers import ErrorPair, combined_ratio, error_ratio_tensor

F64 = torch.float64
#: relative agreement of two implementations' step sizes. The error ratio is a difference of nearly
#: equal stage sums (relative rounding about eps * |y| / |error|), the step factor its -1/8-th power,
#: and the rounding accumulates over the steps: measured 1.4e-9 (Arenstorf) and 2.1e-9 (linear) at the
#: tolerances below, where the unscaled norms were 1e-2 to 0.8 off.
STEP_RTOL = 1e-7

MU = 0.012277471
ARENSTORF_Y0 = (0.994, 0.0, 0.0, -2.00158510637908252240537862224)
ARENSTORF_T = 17.0652165601579625588917206249  # one period
A_LIN = ((-0.1, 2.0, 0.0), (-2.0, -0.1, 0.0), (0.0, 0.0, -0.5))
LIN_Y0 = (2.0, 0.0, 1e-3)  # a small third component: its scale, not its size, decides its weight


def _arenstorf(y, lib=torch):
    """The restricted three-body problem (Hairer, Nørsett, Wanner, I, II.0): state (x, y, x', y')."""
    x, v, u, w = (y[..., i] for i in range(4))
    m = 1 - MU
    d1 = ((x + MU) ** 2 + v**2) ** 1.5
    d2 = ((x - m) ** 2 + v**2) ** 1.5
    return lib.stack(
        [u, w, x + 2 * w - m * (x + MU) / d1 - MU * (x - m) / d2, v - 2 * u - m * v / d1 - MU * v / d2], -1
    )


def _linear(y, lib=torch):
    a = torch.tensor(A_LIN, dtype=F64) if lib is torch else np.array(A_LIN)
    return y @ a.T


PROBLEMS = {"arenstorf": (_arenstorf, ARENSTORF_Y0, ARENSTORF_T), "linear": (_linear, LIN_Y0, 20.0)}


class Recorded(torch.nn.Module):
    """A field that records each accepted step's size."""

    def __init__(self, f):
        super().__init__()
        self.f = f
        self.accepted: list[float] = []

    def forward(self, t, y):
        return self.f(y)

    def callback_accept_step(self, t0, y0, dt):
        self.accepted.append(float(dt))


def _scipy(problem: str, rtol: float, atol: float, first_step: float):
    """scipy's DOP853 on the problem: its accepted step sizes and its dense output."""
    from scipy.integrate import DOP853

    f, y0, t_end = PROBLEMS[problem]
    stepper = DOP853(lambda t, y: f(y, np), 0.0, np.array(y0), t_end, rtol=rtol, atol=atol, first_step=first_step)
    steps, pieces = [], []
    while stepper.status == "running":
        t0 = stepper.t
        stepper.step()
        steps.append(stepper.t - t0)
        pieces.append(stepper.dense_output())
    assert stepper.status == "finished"
    return np.array(steps), pieces


def _controller(rtol, atol, first_step, **kw):
    return hn.PIDController(rtol=rtol, atol=atol, first_step=first_step, grow_after_reject=False, **kw)


@pytest.mark.parametrize(
    ("problem", "rtol"), [("arenstorf", 1e-4), ("arenstorf", 1e-6), ("linear", 1e-6), ("linear", 1e-10)]
)
def test_the_steps_are_scipy_dop853s(problem, rtol):
    """Every accepted step as scipy's DOP853 (the last left out: scipy cuts it at t_bound, ours may
    stretch by up to 1% to land there)."""
    atol, first_step = rtol * 1e-2, 1e-3
    expected, _ = _scipy(problem, rtol, atol, first_step)
    f, y0, t_end = PROBLEMS[problem]
    field = Recorded(f)
    sol = hn.solve(
        field,
        torch.tensor(y0, dtype=F64),
        torch.tensor([0.0, t_end], dtype=F64),
        solver=hn.Dopri8(),
        controller=_controller(rtol, atol, first_step),
    )
    got = np.array(field.accepted)
    if problem == "arenstorf":
        assert sol.stats.n_rejected > 10  # the controller's rule after a rejection is exercised
    assert len(got) == len(expected)
    np.testing.assert_allclose(got[:-1], expected[:-1], rtol=STEP_RTOL, atol=0)


def test_the_event_loop_takes_scipy_dop853s_steps():
    """A solve with an event function runs the event loop, which takes its error ratio by the same
    function: with an event that does not fire within the orbit's period, scipy's steps as in the host
    loop (measured 1.4e-9)."""
    rtol, atol, first_step = 1e-6, 1e-8, 1e-3
    expected, _ = _scipy("arenstorf", rtol, atol, first_step)
    field = Recorded(_arenstorf)
    hn.solve(
        field,
        torch.tensor(ARENSTORF_Y0, dtype=F64),
        torch.tensor([0.0, ARENSTORF_T], dtype=F64),
        solver=hn.Dopri8(),
        controller=_controller(rtol, atol, first_step),
        throw=False,  # the event is not found by event_t_end: a failed solve, its steps recorded
        event_t_end=1.1 * ARENSTORF_T,
        event_fn=lambda t, y: y[0] - 10.0,  # the orbit stays within |x| < 1.2
    )
    # the solve goes on past the output time looking for the event: its first steps are scipy's
    got = np.array(field.accepted)[: len(expected) - 1]
    np.testing.assert_allclose(got, expected[:-1], rtol=STEP_RTOL, atol=0)


def _dense(pieces, t: float) -> np.ndarray:
    for piece in pieces:
        if piece.t_min <= t <= piece.t_max:
            return piece(t)
    raise AssertionError(f"{t} outside the solve")


def test_per_sample_rows_take_their_own_dop853_steps():
    """Per-sample control: each row's norms are its own (the weight of the two estimates too). Two
    Arenstorf orbits of different initial speed, as a batch, give scipy's DOP853 dense output of each
    orbit solved alone at the output times: the same steps, the same seventh-order interpolant.
    Measured 6e-13 apart; with the unscaled weights the outputs were 3e-8 off."""
    rtol, atol, first_step = 1e-8, 1e-10, 1e-3
    speeds = (ARENSTORF_Y0[3], -2.0317326295573368357302057924)  # the second: Hairer's other periodic orbit
    y0 = torch.tensor([ARENSTORF_Y0[:3] + (s,) for s in speeds], dtype=F64)
    ts = torch.linspace(0.0, 6.0, 7, dtype=F64)
    sol = hn.solve(
        lambda t, y: _arenstorf(y),
        y0,
        ts,
        solver=hn.Dopri8(),
        controller=_controller(rtol, atol, first_step, per_sample=True),
    )
    for row, speed in enumerate(speeds):
        from scipy.integrate import DOP853

        stepper = DOP853(
            lambda t, y: _arenstorf(y, np),
            0.0,
            np.array(ARENSTORF_Y0[:3] + (speed,)),
            6.0,
            rtol=rtol,
            atol=atol,
            first_step=first_step,
        )
        pieces = []
        while stepper.status == "running":
            stepper.step()
            pieces.append(stepper.dense_output())
        expected = np.stack([_dense(pieces, float(t)) for t in ts[1:-1]] + [stepper.y])
        # the outputs of identical steps, up to the rounding the orbit's sensitivity amplifies (6e-13)
        np.testing.assert_allclose(sol.ys[1:, row].numpy(), expected, rtol=0, atol=1e-10)


def test_the_pair_is_scaled_before_it_is_combined():
    """The ratio of an ErrorPair: Hairer's formula with the Euclidean norms of the scaled estimates."""
    gen = torch.Generator().manual_seed(0)
    high, low, y0, y1 = (torch.randn(5, dtype=F64, generator=gen) for _ in range(4))
    rtol, atol = 1e-3, torch.tensor([1e-6, 1e-3, 1.0, 1e-6, 1e-2], dtype=F64)
    scale = atol + rtol * torch.maximum(y0.abs(), y1.abs())
    e5 = float(torch.linalg.vector_norm(high / scale)) ** 2
    e3 = float(torch.linalg.vector_norm(low / scale)) ** 2
    expected = e5 / math.sqrt(5 * (e5 + 0.01 * e3))
    got = error_ratio_tensor(ErrorPair(high, low), y0, y1, rtol, atol, hn.controllers.rms_norm)
    assert float(got) == pytest.approx(expected, rel=1e-14)


def test_the_combined_ratio_is_zero_for_no_error_and_not_finite_for_a_non_finite_one():
    zero = torch.zeros((), dtype=F64)
    assert float(combined_ratio(zero, zero)) == 0.0
    assert float(combined_ratio(zero, torch.tensor(3.0, dtype=F64))) == 0.0
    assert math.isnan(float(combined_ratio(torch.tensor(math.nan, dtype=F64), zero)))
    assert not math.isfinite(float(combined_ratio(torch.tensor(math.inf, dtype=F64), zero)))
    assert not math.isfinite(float(combined_ratio(zero, torch.tensor(math.nan, dtype=F64))))


@pytest.mark.slow  # one torch.compile graph: about 20 s on a CPU
def test_the_whole_solve_graph_takes_scipy_dop853s_steps():
    """A solve without an autograd graph and ``compile=True`` runs as one compiled graph: as many
    accepted and rejected steps as the host loop, which takes scipy's (above), and scipy's end state."""
    rtol, atol, first_step = 1e-6, 1e-8, 1e-3
    expected, _ = _scipy("arenstorf", rtol, atol, first_step)
    t = torch.tensor([0.0, ARENSTORF_T], dtype=F64)
    y0 = torch.tensor(ARENSTORF_Y0, dtype=F64)[None]
    ctrl = _controller(rtol, atol, first_step)
    with torch.no_grad():
        host = hn.solve(lambda t, y: _arenstorf(y), y0, t, solver=hn.Dopri8(), controller=ctrl)
        graph = hn.solve(lambda t, y: _arenstorf(y), y0, t, solver=hn.Dopri8().compiled(), controller=ctrl)
    assert graph.stats.n_accepted == host.stats.n_accepted == len(expected)
    assert graph.stats.n_rejected == host.stats.n_rejected
    # the compiled graph's fused arithmetic rounds otherwise, and the orbit's close passages amplify
    # that: measured 7e-10 apart, where the solution's own error is about 1e-6
    torch.testing.assert_close(graph.ys, host.ys, rtol=0, atol=1e-8)


@pytest.mark.parametrize("coupling", [1.0, 0.999])
def test_the_reversible_pair_of_dopri8_raises_both_estimates_and_solves(coupling):
    """``Reversible(Dopri8())`` raises the pair's two estimates by its coupled-mode term: an adaptive solve
    of y' = A y (a damped rotation) meets the exponential to about the tolerance (measured 8.4e-9 at
    rtol 1e-8; 10x as margin for the global error's growth over the 20 steps)."""
    from scipy.linalg import expm

    a = torch.tensor(A_LIN, dtype=F64)[:2, :2]
    y0 = torch.tensor(LIN_Y0[:2], dtype=F64)
    sol = hn.solve(
        lambda t, y: y @ a.T,
        y0,
        torch.tensor([0.0, 5.0], dtype=F64),
        solver=hn.Reversible(hn.Dopri8(), coupling=coupling),
        controller=hn.PIDController(rtol=1e-8, atol=1e-10),
    )
    exact = expm(5.0 * a.numpy()) @ y0.numpy()
    np.testing.assert_allclose(sol.ys[-1].numpy(), exact, rtol=0, atol=1e-7)
