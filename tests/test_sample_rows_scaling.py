"""Per-sample dense output: each sample at its own time, without the batch x times intermediate.

Locating per-sample events evaluates every located sample at its own time inside one step. Taking
those rows as the diagonal of ``interpolant.many(times)`` made a (times x batch) intermediate: for a
batch whose samples all cross in one step that is quadratic in the batch (a batch of 10^4 took 150x
the time of 10^3). These tests check the per-sample rows against that diagonal and bound the size
of what the event search evaluates, so they fail on the quadratic form without timing anything.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hybrid_node as hn
from hybrid_node import interpolation
from hybrid_node.interpolation import HermiteInterpolant, LinearInterpolant, PolynomialInterpolant


def _diagonal(interp, thetas, idx, n):
    """The reference: every sample at every theta, then row idx[j] of theta j."""
    many = interp.many(thetas).reshape(len(thetas), n, -1)
    return many[torch.arange(len(thetas)), idx]


def _interpolants(n: int, m: int):
    g = torch.Generator().manual_seed(0)
    r = lambda: torch.randn(n, m, generator=g, dtype=torch.float64)  # noqa: E731
    y0, y1 = r(), r()
    coeffs = ((1.0, -0.5, 0.25), (0.0, 0.0, 0.0), (0.5, 0.3, -0.2))  # a zero stage row is skipped
    return [
        PolynomialInterpolant(y0, (r(), r(), r()), 0.3, coeffs, y1=y1),
        PolynomialInterpolant(y0, (r(), r(), r()), 0.3, coeffs),
        HermiteInterpolant(y0, y1, r(), r(), 0.3),
        LinearInterpolant(y0, y1),
    ]


@pytest.mark.parametrize("which", range(4))
def test_sample_rows_match_the_diagonal_of_many(which):
    n, m = 7, 3
    interp = _interpolants(n, m)[which]
    thetas = [0.0, 0.25, 1.0, 0.6, 0.9]  # 1.0: the step's own end value where the interpolant keeps it
    idx = torch.tensor([3, 0, 6, 3, 1])
    got = interp.sample_rows(thetas, idx, n)
    # the same sums in another order (a mat-mul against a broadcast sum): a few ulps apart
    torch.testing.assert_close(got, _diagonal(interp, thetas, idx, n), rtol=1e-14, atol=1e-14)


def test_sample_rows_carry_gradients():
    n, m = 4, 2
    y0 = torch.randn(n, m, dtype=torch.float64, requires_grad=True)
    y1 = torch.randn(n, m, dtype=torch.float64)
    interp = LinearInterpolant(y0, y1)
    rows = interp.sample_rows([0.25, 0.5], torch.tensor([1, 2]), n)
    (grad,) = torch.autograd.grad(rows.sum(), y0)
    expected = torch.zeros(n, m, dtype=torch.float64)
    expected[1], expected[2] = 0.75, 0.5  # d/dy0 of (1 - theta) y0 + theta y1
    torch.testing.assert_close(grad, expected)


def test_event_search_evaluates_rows_linear_in_the_batch(monkeypatch):
    """Every sample crosses in the same step; the dense output the search builds stays O(batch)."""
    batch = 120
    largest = [0]
    real_rows, real_sample = interpolation.combine_rows, interpolation.combine_sample_rows

    def rows(*args, **kwargs):
        out = real_rows(*args, **kwargs)
        largest[0] = max(largest[0], out.numel())
        return out

    def sample(*args, **kwargs):
        out = real_sample(*args, **kwargs)
        largest[0] = max(largest[0], out.numel())
        return out

    monkeypatch.setattr(interpolation, "combine_rows", rows)
    monkeypatch.setattr(interpolation, "combine_sample_rows", sample)
    w = torch.linspace(1.0, 1.2, batch, dtype=torch.float64).unsqueeze(-1)

    def f(t, y):
        return torch.cat([y[..., 1:2], -w * w * y[..., 0:1]], -1)

    y0 = torch.zeros(batch, 2, dtype=torch.float64)
    y0[:, 0] = 1.0
    t_e, _ = hn.odeint_event(
        f,
        y0,
        torch.tensor(0.0, dtype=torch.float64),
        event_fn=lambda t, y: y[..., 0] + 0.5,  # cos(w t) = -1/2 first at t = 2 pi / (3 w)
        per_sample=True,
        rtol=1e-8,
        atol=1e-10,
    )
    # the located times against the analytic roots: the dense output's error at rtol 1e-8 is ~1e-7
    exact = (2 * np.pi / 3) / w.squeeze(-1)
    torch.testing.assert_close(t_e, exact, rtol=0, atol=1e-6)
    # the check points (4 times of the whole batch) are the largest honest evaluation; the diagonal
    # of many() made batch x batch x 2 elements (28800 here)
    assert largest[0] <= 4 * batch * 2


def test_interpolant_without_sample_rows_is_evaluated_in_chunks(monkeypatch):
    """An interpolant without per-sample rows (BDF's, Rodas'): the search takes the diagonal a few times at a time.

    DOP853's dense output, with its per-sample rows and slopes taken away, serves as one.
    """
    from hybrid_node.loop import events
    from hybrid_node.solvers.dopri8 import Dopri8Interpolant

    monkeypatch.setattr(events, "_ROWS_BUDGET", 50)  # batch 40: one time per evaluation, many chunks
    monkeypatch.delattr(Dopri8Interpolant, "sample_rows")
    monkeypatch.delattr(Dopri8Interpolant, "sample_slopes")
    batch = 40
    w = torch.linspace(1.0, 1.5, batch, dtype=torch.float64).unsqueeze(-1)

    def f(t, y):
        return torch.cat([y[..., 1:2], -w * w * y[..., 0:1]], -1)

    y0 = torch.zeros(batch, 2, dtype=torch.float64)
    y0[:, 0] = 1.0
    t_e, ys = hn.odeint_event(
        f,
        y0,
        torch.tensor(0.0, dtype=torch.float64),
        event_fn=lambda t, y: y[..., 0] + 0.5,
        per_sample=True,
        method="dopri8",
        rtol=1e-9,
        atol=1e-11,
    )
    exact = (2 * np.pi / 3) / w.squeeze(-1)
    # DOP853's seventh-order dense output at rtol 1e-9: well inside 1e-7 of the root
    torch.testing.assert_close(t_e, exact, rtol=0, atol=1e-7)
    torch.testing.assert_close(ys[-1][:, 0], torch.full((batch,), -0.5, dtype=torch.float64), rtol=0, atol=1e-7)


class _Counting:
    """An interpolant wrapper that counts its evaluations (one call or one batched ``many``)."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def __call__(self, theta):
        self.calls[0] += 1
        return self.inner(theta)

    def many(self, thetas):
        self.calls[0] += 1
        return self.inner.many(thetas)


def test_dense_solution_evaluates_each_step_once_per_call():
    """Many query times: one batched evaluation per step's dense output, not one per query."""
    a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    sol = hn.odeint_dense(lambda t, y: -a * y, y0, 0.0, 2.0, rtol=1e-9, atol=1e-11)
    calls = [0]
    for seg in sol.segments:
        seg.interpolant = _Counting(seg.interpolant, calls)
    q = torch.linspace(2.0, 0.0, 501, dtype=torch.float64)  # decreasing: answered in the order asked
    ys = sol(q)
    assert calls[0] <= len(sol.segments) < 100  # was one evaluation per query (501)
    exact = y0 * torch.exp(-a * q).unsqueeze(-1)
    # the dense output of dopri5 at rtol 1e-9: errors ~1e-9, far inside 1e-7
    torch.testing.assert_close(ys, exact, rtol=0, atol=1e-7)
    # gradients with respect to the field's parameter flow through the batched rows
    (g,) = torch.autograd.grad(ys.sum(), a)
    (g_exact,) = torch.autograd.grad(exact.sum(), a)
    torch.testing.assert_close(g, g_exact, rtol=1e-6, atol=0)


def _oscillators(batch: int):
    w = torch.linspace(1.0, 1.2, batch, dtype=torch.float64).unsqueeze(-1)
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return torch.cat([y[..., 1:2], -w * w * y[..., 0:1]], -1)

    y0 = torch.zeros(batch, 2, dtype=torch.float64)
    y0[:, 0] = 1.0
    return f, y0, w, calls


def test_events_without_gradients_skip_the_field_at_each_event():
    """The field at each sample's event time (one whole-batch call per sample) serves only gradients."""
    batch = 300
    f, y0, w, calls = _oscillators(batch)
    with torch.no_grad():
        t_e, _ = hn.odeint_event(
            f, y0, torch.tensor(0.0, dtype=torch.float64), event_fn=lambda t, y: y[..., 0] + 0.5, per_sample=True
        )
    torch.testing.assert_close(t_e, (2 * np.pi / 3) / w.squeeze(-1), rtol=0, atol=1e-6)
    # the steps take a few dozen evaluations; one per sample on top (300) was the O(batch^2) part
    assert calls[0] < batch


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_event_time_gradients_with_the_scalable_event_search(interface):
    """With gradients (direct and adjoint) the event times move with the frequency: dt_e/dw = -t_e / w."""
    batch = 5
    w = torch.linspace(1.0, 1.5, batch, dtype=torch.float64).requires_grad_(True)

    class Osc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(w.detach().clone().unsqueeze(-1))

        def forward(self, t, y):
            return torch.cat([y[..., 1:2], -self.w * self.w * y[..., 0:1]], -1)

    field = Osc()
    y0 = torch.zeros(batch, 2, dtype=torch.float64)
    y0[:, 0] = 1.0
    t_e, _ = hn.odeint_event(
        field,
        y0,
        torch.tensor(0.0, dtype=torch.float64),
        event_fn=lambda t, y: y[..., 0] + 0.5,
        per_sample=True,
        odeint_interface=getattr(hn, interface),
        rtol=1e-9,
        atol=1e-11,
    )
    (g,) = torch.autograd.grad(t_e.sum(), field.w)
    # t_e = 2 pi / (3 w): the derivative -t_e / w, to the solve's tolerance
    exact = -(2 * np.pi / 3) / w.detach() ** 2
    torch.testing.assert_close(g.reshape(-1), exact, rtol=1e-5, atol=0)


def test_per_sample_outputs_are_written_per_step_not_per_output_time(monkeypatch):
    """per_sample with many output times: one masked select per step, not one per output per step."""
    from hybrid_node.loop import per_sample

    selects = [0]
    real_col = per_sample._col

    def col(v, like):
        selects[0] += 1
        return real_col(v, like)

    monkeypatch.setattr(per_sample, "_col", col)
    f, y0, w, _ = _oscillators(6)
    t = torch.linspace(0.0, 3.0, 2000, dtype=torch.float64)
    ys = hn.odeint(f, y0, t, rtol=1e-8, atol=1e-10, options={"per_sample": True})
    exact = torch.cos(w.squeeze(-1) * t.unsqueeze(-1))  # x(t) = cos(w t)
    # dopri5's dense output at rtol 1e-8: ~1e-7 at worst
    torch.testing.assert_close(ys[..., 0], exact, rtol=0, atol=1e-6)
    # the loop's own columns are a few per step (under 100 steps here); the old writes took one per output
    assert selects[0] < 1000


def test_per_sample_dense_output_only_at_the_times_a_step_emits(monkeypatch):
    """Output times inside the batch's span that no accepted sample's step emits are not re-evaluated."""
    from hybrid_node.loop import per_sample

    rows = [0]
    real = per_sample._Polynomial.increments

    def increments(self, theta, h, y):
        rows[0] += theta.shape[0]
        return real(self, theta, h, y)

    monkeypatch.setattr(per_sample._Polynomial, "increments", increments)
    w = torch.tensor([[1.0], [8.0]], dtype=torch.float64)  # a slow and a fast sample: wide spans

    def f(t, y):
        return torch.cat([y[..., 1:2], -w * w * y[..., 0:1]], -1)

    y0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    t = torch.linspace(0.0, 4.0, 1000, dtype=torch.float64)
    ys = hn.odeint(f, y0, t, rtol=1e-7, atol=1e-9, options={"per_sample": True})
    torch.testing.assert_close(ys[..., 0], torch.cos(w.squeeze(-1) * t.unsqueeze(-1)), rtol=0, atol=1e-5)
    # each output time is emitted once per sample, in the step of each that covers it: at most 2 x 1000
    # rows (a time both samples' accepted steps cover in one batched step counts once); rebuilding the
    # whole span at every step evaluated every time between the slow and the fast sample again and again
    assert rows[0] <= 2 * len(t)
