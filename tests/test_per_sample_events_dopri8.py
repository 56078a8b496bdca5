"""Per-sample terminal events with dopri8: the event search reads each sample's own rows of DOP853's dense output.

DOP853's continuous extension (:class:`~hybrid_node.solvers.dopri8.Dopri8Interpolant`) had no
per-sample rows or slopes, so the search evaluated the whole batch at every sample's time in every
bisection halving (O(k * n) rows per halving for k samples located in a step of n), and took the rate
at each event from one call of the field on the whole batch per fired sample. It now evaluates the
requested rows only: the rows are bitwise those of the whole-batch evaluation (the same elementwise
operations), so event times and states do not change; the rate is the dense output's slope, which
differs from the field at the event by the dense output's error (a relative 4e-9 in the MLP benchmark
of ``docs/events.md`` at rtol 1e-8).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bouncing import CountingBall, G, SeededMlp

import hybrid_node as hn
from hybrid_node.solvers.dopri8 import Dopri8Interpolant

pytestmark = pytest.mark.usefixtures("float64_default")


def _balls(batch: int, grad: bool) -> tuple[CountingBall, torch.Tensor, hn.Solution]:
    ball = CountingBall()
    h = torch.linspace(1.0, 50.0, batch).requires_grad_(grad)  # impacts spread over 0.45 s to 3.2 s
    y0 = torch.stack([h, torch.zeros_like(h)], 1)
    with torch.set_grad_enabled(grad):
        sol = hn.solve(
            ball,
            y0,
            torch.tensor([0.0, 10.0]),
            solver=hn.Dopri8(),
            controller=hn.PIDController(rtol=1e-8, atol=1e-10),
            event_fn=lambda t, y: y[:, 0],
            per_sample_events=True,
            event_t_end=10.0,
        )
    return ball, h, sol


def test_event_gradients_add_no_field_call_and_rows_grow_like_the_batch():
    """The gradients cost no call of the field, and the field's rows grow linearly in the batch.

    Before, every fired sample added a whole-batch call: 16 + B more calls of B rows with gradients
    (B = 64: 80 extra calls, 4096 extra rows).
    """
    rows = {}
    for batch in (16, 64):
        ball, h, sol = _balls(batch, grad=True)
        calls, rows[batch] = ball.calls, ball.rows
        plain, _, _ = _balls(batch, grad=False)
        assert calls == plain.calls, (batch, calls, plain.calls)
        # a quadratic is integrated exactly by DOP853 and its 7th-order dense output: rounding only,
        # amplified by the bisection's bracket (a few ulps of t)
        (dh,) = torch.autograd.grad(sol.t_final.sum(), h)
        s = np.sqrt(2 * G * h.detach().numpy())
        np.testing.assert_allclose(dh.numpy(), 1 / s, rtol=1e-9)
    # 4x the batch: 4x the rows, up to a few more steps for the wider spread of impact times
    assert rows[64] <= 4.5 * rows[16], rows


def _step(dtype: torch.dtype, grad: bool) -> tuple[Dopri8Interpolant, torch.Tensor, float]:
    """One DOP853 step of the MLP field from a batch of 7 states, and its dense output."""
    field = SeededMlp(dtype)
    y0 = torch.randn(7, 2, generator=torch.Generator().manual_seed(5), dtype=dtype).requires_grad_(grad)
    solver, dt = hn.Dopri8(), 0.4
    with torch.set_grad_enabled(grad):
        step = solver.step(field, 0.0, y0, field(0.0, y0), dt)
        return solver.interpolant(field, 0.0, y0, dt, step, step.ks[-1]), y0, dt


THETAS = [0.3, 1.0, 0.0, 0.77, 0.3, 0.123456789]
IDX = torch.tensor([6, 0, 2, 3, 3, 1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sample_rows_are_the_whole_batch_rows_bit_for_bit(dtype):
    """Each row equals the same row of the whole batch at its theta, to the last bit, gradients too:
    the event search's bisection and event states are unchanged by evaluating only those rows."""
    interp, y0, _ = _step(dtype, grad=True)
    whole = interp.many(THETAS)[torch.arange(len(THETAS)), IDX]
    rows = interp.sample_rows(THETAS, IDX, 7)
    assert rows.dtype == dtype
    assert torch.equal(rows, whole)
    weights = torch.randn(rows.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    (g_rows,) = torch.autograd.grad((weights * rows).sum(), y0, retain_graph=True)
    (g_whole,) = torch.autograd.grad((weights * whole).sum(), y0)
    # the same values through differently shaped graphs (gathered rows before or after the sums): the
    # backward's accumulation order may differ, so equal to rounding of the state's dtype
    torch.testing.assert_close(g_rows, g_whole, rtol=0, atol=8 * torch.finfo(dtype).eps)


def test_sample_slopes_are_the_theta_derivative_of_the_dense_output():
    """Against central differences of the rows in theta, and at the ends the step times the field there
    (DOP853's dense output matches y' at both ends: Hairer, Nørsett, Wanner, Section II.10)."""
    interp, _, dt = _step(torch.float64, grad=False)
    slopes = interp.sample_slopes(THETAS, IDX, 7)
    eps = 1e-5  # central differences: truncation ~eps^2 |y'''| ~ 1e-10, rounding ~1e-16 / eps ~ 1e-11
    up = interp.sample_rows([t + eps for t in THETAS], IDX, 7)
    down = interp.sample_rows([t - eps for t in THETAS], IDX, 7)
    torch.testing.assert_close(slopes, (up - down) / (2 * eps), rtol=1e-8, atol=1e-9)
    ks = interp.step.ks
    # the end slopes are sums of the coefficients that cancel to h k: rounding of the O(|dy|) terms
    torch.testing.assert_close(slopes[2], dt * ks[0][2], rtol=0, atol=1e-14)  # theta 0
    torch.testing.assert_close(slopes[1], dt * ks[-1][0], rtol=0, atol=1e-14)  # theta 1


def _mlp_events(monkeypatch_old: pytest.MonkeyPatch | None):
    field = SeededMlp()
    y0 = torch.zeros(24, 2)
    y0[:, 0] = torch.linspace(-1.0, 1.0, 24)
    y0[:, 1] = torch.linspace(0.5, -0.5, 24)
    y0.requires_grad_(True)
    if monkeypatch_old is not None:  # the search's fallback: whole-batch rows, the field at every event
        monkeypatch_old.delattr(Dopri8Interpolant, "sample_rows")
        monkeypatch_old.delattr(Dopri8Interpolant, "sample_slopes")
    sol = hn.solve(
        field,
        y0,
        torch.tensor([0.0, 50.0]),
        solver=hn.Dopri8(),
        controller=hn.PIDController(rtol=1e-8, atol=1e-10),
        event_fn=lambda t, y: y[:, 0] - 3.0,
        per_sample_events=True,
        event_t_end=50.0,
    )
    assert bool(sol.event_fired.all())
    grads = torch.autograd.grad(sol.t_final.sum() + sol.ys[-1][:, 1].sum(), (y0, field.w1, field.w2))
    return sol.t_final.detach(), sol.ys[-1].detach(), grads


def test_event_times_and_states_as_the_whole_batch_search(monkeypatch):
    """The same event times and states as the whole-batch search, bit for bit; the gradients to the
    dense output's accuracy.

    The gradients differ only in the rate at each event (the dense output's slope against the field at
    the dense state): both are y' to the step's local error, a few rtol (measured: 2e-9 relative here),
    so 1e-7 relative to the largest gradient leaves a margin of 50 and still catches a wrong slope.
    """
    t_new, y_new, g_new = _mlp_events(None)
    with monkeypatch.context() as m:
        t_old, y_old, g_old = _mlp_events(m)
    assert torch.equal(t_new, t_old)
    assert torch.equal(y_new, y_old)
    for a, b in zip(g_new, g_old):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7 * float(b.abs().max()))
