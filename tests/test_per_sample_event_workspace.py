"""The per-sample event search builds the batch it hands the event function once per bisection.

Each halving used to copy the whole state, build a whole-batch time vector and convert it, then
overwrite the located samples' rows; now one batch per bisection is kept and only those rows are
overwritten (:meth:`hybrid_node.loop.events._Locator.workspace`). The event function must see exactly
what it saw before: the located samples at their own times, every other sample at the step's end.
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn
from hybrid_node.loop import events
from hybrid_node.loop.host import check_no_nan

pytestmark = pytest.mark.usefixtures("float64_default")


def _fresh_halving(self, idx, sign0):
    """The search's halving as built before: a fresh copy of the batch at every halving."""
    return lambda times: (torch.sign(_fresh_values(self, times, idx)) != sign0).cpu().numpy()


def _fresh_values(self, times, idx):
    """The located samples' event values, the whole batch built afresh (the others at the step's end)."""
    with torch.no_grad():
        y = self.y1.detach().reshape(self.n, -1).clone()
        y[idx] = self.rows(times, idx)
        t = torch.full((self.n,), self.seg.t1, dtype=torch.float64)
        t[idx.cpu()] = torch.from_numpy(times)
        t = torch.from_numpy(events._user_times(self.term, t.numpy())).to(self.term.t_dtype).to(y.device)
        g = self.event_fn(t.reshape(self.batch_shape), y.reshape(self.y1.shape)).reshape(self.n)[idx]
        check_no_nan(g, events._user_times(self.term, times), y[idx], idx)
        return g


def _solve(method, reverse: bool, seen: list | None = None):
    """Per-sample events x = +-6 of a stiff 2-d batch of 40 samples spread in x; optional spy on event_fn."""
    n = 40
    y0 = torch.stack([torch.linspace(-1.0, 1.0, n), torch.linspace(0.5, -0.5, n)], 1)
    sign = -1.0 if reverse else 1.0

    def field(t, y):
        # x moves in the direction of integration; y_2 decays fast along it (stiff), either way
        rate = torch.stack([1.0 + 0.3 * torch.sin(3.0 * y[:, 0] + t), -200.0 * sign * y[:, 1] + torch.cos(t)], 1)
        return rate

    def event_fn(t, y):
        if seen is not None and t.dim() == 1 and not t.requires_grad:  # the bisection (not the gradients)
            seen.append((t.clone(), y.clone()))
        return y[:, 0] - sign * 6.0

    ts = torch.tensor([0.0, sign * 9.0])
    y0 = y0 * torch.tensor([sign, 1.0])
    sol = hn.solve(
        field,
        y0,
        ts,
        solver=method(),
        controller=hn.PIDController(rtol=1e-5, atol=1e-7, max_step=0.05),
        event_fn=event_fn,
        per_sample_events=True,
        event_t_end=float(ts[-1]),
    )
    assert bool(sol.event_fired.all())
    return sol


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("method", [hn.BDF, hn.Rosenbrock23, hn.Dopri5])
def test_event_times_and_states_as_with_a_fresh_batch_per_halving(method, reverse, monkeypatch):
    """Bit for bit the event times and states of the search that rebuilt the batch at every halving
    (forward and backward in time: the user's times are negated there)."""
    new = _solve(method, reverse)
    with monkeypatch.context() as m:
        m.setattr(events._Locator, "halving", _fresh_halving)
        old = _solve(method, reverse)
    assert torch.equal(new.t_final, old.t_final)
    assert torch.equal(new.ys[-1], old.ys[-1])


def test_event_fn_sees_the_other_samples_at_the_step_end(monkeypatch):
    """In every call of the bisection the samples not being located are at the step's end (its time,
    its state), so the batch reused across halvings keeps no stale row of an earlier halving, while
    the located ones are at their own times inside the step."""
    seen: list = []
    located: list = []
    locate = events._Locator.locate

    def spy(self, idx, sign0, lo, hi):
        first = len(seen)
        out = locate(self, idx, sign0, lo, hi)
        located.append((self.y1.detach().reshape(self.n, -1).clone(), self.seg.t0, self.seg.t1, idx, first, len(seen)))
        return out

    monkeypatch.setattr(events._Locator, "locate", spy)
    _solve(hn.BDF, False, seen)
    assert len(located) >= 5
    for y_end, t0, t1, idx, first, last in located:
        others = torch.ones(len(y_end), dtype=torch.bool)
        others[idx] = False
        assert last - first > 20  # ~40 halvings per bisection in float64
        for t, y in seen[first:last]:
            assert torch.equal(y.reshape(len(y_end), -1)[others], y_end[others])
            assert bool((t[others] == t1).all())
            assert bool(((t[idx] >= t0) & (t[idx] <= t1)).all())
