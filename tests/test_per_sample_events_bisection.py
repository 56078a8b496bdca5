"""The per-sample event bisection's per-halving work: what depends only on the located samples is
made once per bisection, and the event times stay those of a search that redoes it every halving.

The search (:class:`hybrid_node.loop.events._Locator`) reads the located samples' rows of the step's
dense output ~50 times per bisection. The Nordsieck (BDF) rows gathered the samples' coefficients from
the whole array at every read; :meth:`NordsieckInterpolant.sample_reader` gathers them once. The
halving also took two host synchronisations (the NaN check, then the signs) and rebuilt the views of
the batch handed to ``event_fn``; both are now made once.
"""

from __future__ import annotations

import math

import pytest
import torch
from bouncing import G, fall

import hybrid_node as hn
from hybrid_node.interpolation import PolynomialInterpolant
from hybrid_node.loop import events
from hybrid_node.solvers.multistep import NordsieckInterpolant
from hybrid_node.solvers.rosenbrock import _Rosenbrock23Interpolant

pytestmark = pytest.mark.usefixtures("float64_default")


def _nordsieck(dtype: torch.dtype, order: int = 4, n: int = 7, m: int = 3) -> NordsieckInterpolant:
    gen = torch.Generator().manual_seed(5)
    return NordsieckInterpolant(torch.randn(order + 1, n, m, generator=gen, dtype=torch.float64).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sample_reader_is_sample_rows_and_the_whole_batch_bit_for_bit(dtype):
    """A prepared reader gives the rows of ``many`` (the whole batch) to the last bit, at every read."""
    interp = _nordsieck(dtype)
    idx = torch.tensor([6, 0, 2, 3, 3, 1])
    read = interp.sample_reader(idx, 7)
    for thetas in ([0.0, 0.25, 0.5, 0.75, 1.0, 1e-9], [0.3, 0.3, 0.9, 0.1, 0.6, 1.0]):
        whole = interp.many(thetas).reshape(len(thetas), 7, -1)[torch.arange(len(thetas)), idx]
        assert torch.equal(read(thetas), whole)
        assert torch.equal(interp.sample_rows(thetas, idx, 7), whole)


def _drop(method: str, heights: torch.Tensor):
    """Balls dropped from ``heights`` stop at the ground, each at its own time sqrt(2 h / G)."""
    y0 = torch.stack([heights, torch.zeros_like(heights)], 1)
    return hn.odeint_event(
        fall,
        y0,
        0.0,
        event_fn=lambda t, y: y[:, 0],
        per_sample=True,
        t_end=10.0,
        method=method,
        rtol=1e-8,
        atol=1e-10,
    )


def test_bdf_bisection_gathers_each_samples_rows_once(monkeypatch):
    """One gather of the Nordsieck rows per bisection (and per read of the event rows), not per halving;
    the event times are the analytic ones to the dense output's accuracy."""
    counts = {"gathers": 0, "bisections": 0, "event_rows": 0}
    reader, locate, rows = NordsieckInterpolant.sample_reader, events._Locator.locate, events._Locator.rows

    def counted(key, fn):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(NordsieckInterpolant, "sample_reader", counted("gathers", reader))
    monkeypatch.setattr(events._Locator, "locate", counted("bisections", locate))
    monkeypatch.setattr(events._Locator, "rows", counted("event_rows", rows))
    heights = torch.linspace(1.0, 3.0, 16)
    t_event, _ = _drop("bdf", heights)
    assert counts["bisections"] > 0
    assert counts["gathers"] == counts["bisections"] + counts["event_rows"], counts
    # free fall is a quadratic, which BDF's polynomial of order >= 2 holds exactly up to the corrector's
    # convergence and rounding: 1e-8 is rtol, far above both and far below a wrong root (~step size)
    exact = torch.sqrt(2 * heights / G)
    torch.testing.assert_close(t_event, exact, rtol=1e-8, atol=0)


#: each method's dense output class
INTERPOLANTS = {"bdf": NordsieckInterpolant, "rosenbrock23": _Rosenbrock23Interpolant, "dopri5": PolynomialInterpolant}


@pytest.mark.parametrize("method", sorted(INTERPOLANTS))
def test_event_times_as_the_search_without_prepared_reads(method, monkeypatch):
    """The same event times and states, bit for bit, as the search that reads every halving's rows
    through ``sample_rows`` afresh (no prepared reader) and through whole-batch rows (neither)."""
    heights = torch.linspace(1.0, 3.0, 16)
    t_new, y_new = _drop(method, heights)
    with monkeypatch.context() as m:
        m.delattr(NordsieckInterpolant, "sample_reader")
        m.setattr(NordsieckInterpolant, "sample_rows", _rows_afresh)
        t_rows, y_rows = _drop(method, heights)
    assert torch.equal(t_new, t_rows) and torch.equal(y_new, y_rows)
    with monkeypatch.context() as m:
        m.setattr(events._Locator, "reader", _whole_batch_reader)
        t_whole, y_whole = _drop(method, heights)
    assert torch.equal(t_new, t_whole) and torch.equal(y_new, y_whole)
    with monkeypatch.context() as m:  # the search's own fallback for an interpolant without per-sample rows
        for name in ("sample_rows", "sample_slopes", "sample_reader"):
            m.delattr(INTERPOLANTS[method], name, raising=False)
        t_fallback, y_fallback = _drop(method, heights)
    assert torch.equal(t_new, t_fallback)
    if method == "dopri5":  # its rows sum in another order than its whole batch: a few ulps of the state
        torch.testing.assert_close(y_new, y_fallback, rtol=0, atol=16 * torch.finfo(y_new.dtype).eps)
    else:
        assert torch.equal(y_new, y_fallback)
    assert math.isfinite(float(t_new.max()))


def _rows_afresh(self, thetas, idx, n):
    """The Nordsieck rows with their coefficients gathered at every call (the search before)."""
    z = self.z.reshape(self.z.shape[0], n, -1)[:, idx]
    s = self._s(thetas).unsqueeze(1)
    out = z[-1]
    for zj in reversed(z[:-1].unbind(0)):
        out = zj + s * out
    return out


def _whole_batch_reader(self, idx):
    """Rows from the whole-batch evaluation ``many``, its diagonal (the fallback without sample rows)."""

    def read(thetas):
        many = self.seg.interpolant.many(thetas.tolist()).reshape(len(thetas), self.n, -1)
        return many[torch.arange(len(thetas)), idx]

    return read
