"""Rosenbrock23's dense output reads per-sample rows and slopes, and per-sample events use them.

Before, :class:`~hybrid_node.solvers.rosenbrock._Rosenbrock23Interpolant` had neither, so the per-sample
event search evaluated the whole batch at every located sample's time in every bisection halving, and
took the rate at each event from one whole-batch call of the field per fired sample (O(batch^2) work).
The rows are the scalar evaluation's operations on the requested rows only (bitwise equal rows, hence
the same event times and states); the slope is the dense output's exact theta-derivative.
"""

from __future__ import annotations

import math

import pytest
import torch

import hybrid_node as hn
from hybrid_node.solvers.rosenbrock import _Rosenbrock23Interpolant

pytestmark = pytest.mark.usefixtures("float64_default")

#: decay rates of a batch of y' = lam y; the 7 rows of the interpolant tests
RATES = (-1.0, -30.0, -2.0, -0.5, -300.0, -4.0, -1.5)
THETAS = [0.3, 1.0, 0.0, 0.77, 0.3, 0.123456789, 0.5]
IDX = torch.tensor([6, 0, 2, 3, 3, 1, 4])


def _interpolant(h: float, dtype=torch.float64, nonlinear: bool = True):
    """One Rosenbrock23 step of size h from t = 0 of a (7, 2) batch; its dense output and y0 (with grad).

    The field is y' = lam y (lam from RATES, one rate per row) plus, with ``nonlinear``, a coupling
    0.3 sin(t + y_other) so that k1, k2 differ from each other in every row and coordinate.
    """
    lam = torch.tensor(RATES, dtype=dtype)[:, None]

    def field(t, y):
        out = lam * y
        return out + 0.3 * torch.sin(t + y.flip(-1)) if nonlinear else out

    y0 = torch.linspace(0.5, 2.0, 14, dtype=dtype).reshape(7, 2).requires_grad_(True)
    solver = hn.Rosenbrock23()
    state = solver.init(field, 0.0, y0)
    step = solver.step(field, 0.0, y0, state, h)
    interp = solver.interpolant(field, 0.0, y0, h, step, solver.next_state(field, h, step))
    assert isinstance(interp, _Rosenbrock23Interpolant)
    return interp, y0, step


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sample_rows_are_the_whole_batch_rows_bit_for_bit(dtype):
    """Row idx[j] at thetas[j] equals row idx[j] of the scalar evaluation at thetas[j], to the last bit
    (the same elementwise operations, the weights rounded once to the state's dtype as the scalar's
    are); gradients to rounding (the same values through graphs of another shape)."""
    interp, y0, step = _interpolant(0.05, dtype)
    rows = interp.sample_rows(THETAS, IDX, 7)
    whole = torch.stack([interp(t)[i] for t, i in zip(THETAS, IDX.tolist())])
    assert rows.dtype == dtype and rows.shape == (len(THETAS), 2)
    assert torch.equal(rows, whole)
    # the ends of the step: y0 and the step's y1 exactly (theta 0 gives weights 0)
    assert torch.equal(interp.sample_rows([0.0, 0.0], torch.tensor([1, 5]), 7), y0.detach()[[1, 5]])
    weights = torch.randn(rows.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    (g_rows,) = torch.autograd.grad((weights * rows).sum(), y0, retain_graph=True)
    (g_whole,) = torch.autograd.grad((weights * whole).sum(), y0)
    scale = float(g_whole.abs().max())
    torch.testing.assert_close(g_rows, g_whole, rtol=0, atol=16 * torch.finfo(dtype).eps * scale)


def test_sample_rows_on_random_rows_and_times():
    """Random rows (with repeats) at random times, on a 4 x 3 x 2 state seen as 12 rows of 2: equal
    to the scalar evaluation's rows, bit for bit."""
    gen = torch.Generator().manual_seed(5)
    y0 = torch.randn(4, 3, 2, generator=gen)
    k1, k2 = torch.randn(4, 3, 2, generator=gen), torch.randn(4, 3, 2, generator=gen)
    interp = _Rosenbrock23Interpolant(y0, k1, k2, 0.37, hn.Rosenbrock23._d)
    idx = torch.randint(0, 12, (40,), generator=gen)
    thetas = torch.rand(40, generator=gen, dtype=torch.float64).tolist()
    rows = interp.sample_rows(thetas, idx, 12)
    whole = torch.stack([interp(t).reshape(12, 2)[i] for t, i in zip(thetas, idx.tolist())])
    assert torch.equal(rows, whole)


def test_dense_output_converges_at_its_order():
    """On y' = lam y (the non-stiff rows, |lam h| <= 0.4) the dense output's error against exp(lam t) y0
    at theta = 0.4 is O(h^3) (a second-order continuous extension, Shampine and Reichelt 1997) and
    its slope's error O(h^2): halving h divides them by 8 and 4. The observed orders (log2 of the
    ratios) lie within 0.25 of 3 and 2 (at h = 0.1 .. 0.025 they are 2.97-3.0 and 1.95-2.0)."""
    rows = torch.tensor([0, 2, 3, 6])
    th = 0.4

    def errors(h):
        interp, y0, _ = _interpolant(h, nonlinear=False)
        lam = torch.tensor(RATES)[rows, None]
        exact = torch.exp(lam * th * h) * y0.detach()[rows]
        with torch.no_grad():
            value = interp.sample_rows([th] * 4, rows, 7)
            slope = interp.sample_slopes([th] * 4, rows, 7) / h
        return (value - exact).abs().max().item(), (slope - lam * exact).abs().max().item()

    (e1, s1), (e2, s2) = errors(0.1), errors(0.05)
    assert abs(math.log2(e1 / e2) - 3.0) < 0.25, (e1, e2)
    assert abs(math.log2(s1 / s2) - 2.0) < 0.25, (s1, s2)


def test_sample_slopes_are_the_theta_derivative_of_the_rows():
    """Against central differences of the rows: the dense output is quadratic in theta, so the
    difference quotient is exact but for rounding, ~1e-16 |y| / eps = 1e-11 here."""
    interp, _, _ = _interpolant(0.05)
    eps = 1e-5
    with torch.no_grad():
        slopes = interp.sample_slopes(THETAS, IDX, 7)
        up = interp.sample_rows([t + eps for t in THETAS], IDX, 7)
        down = interp.sample_rows([t - eps for t in THETAS], IDX, 7)
    torch.testing.assert_close(slopes, (up - down) / (2 * eps), rtol=1e-8, atol=1e-10)


class _Decays(torch.nn.Module):
    """y' = -theta y per sample (a (B, 1) state), theta a parameter; counts its calls and their rows."""

    def __init__(self, rates: torch.Tensor):
        super().__init__()
        self.theta = torch.nn.Parameter(rates.clone())
        self.calls = 0
        self.rows = 0

    def forward(self, t, y):
        self.calls += 1
        self.rows += y.shape[0]
        return -self.theta[:, None] * y


LEVEL = 0.25  # each sample's event: y = LEVEL, at t = log(1 / LEVEL) / theta from y(0) = 1
RTOL = 1e-6


def _decay_events(batch: int, grad: bool = True):
    """Per-sample events y = LEVEL of decays at rates spread over [0.5, 40] (a stiffness ratio of 80)."""
    field = _Decays(torch.logspace(math.log10(0.5), math.log10(40.0), batch))
    y0 = torch.ones(batch, 1)
    with torch.set_grad_enabled(grad):
        sol = hn.solve(
            field,
            y0,
            torch.tensor([0.0, 10.0]),
            solver=hn.Rosenbrock23(),
            controller=hn.PIDController(rtol=RTOL, atol=1e-9),
            event_fn=lambda t, y: y[:, 0] - LEVEL,
            per_sample_events=True,
            event_t_end=10.0,
        )
    assert bool(sol.event_fired.all())
    return field, sol


def test_event_times_against_the_analytic_roots():
    """t_i = log(1 / LEVEL) / theta_i, and dt_i/dtheta_i = -t_i / theta_i.

    The event state is the root of the event function on the dense output, found to a few ulps of the
    time, so y = LEVEL to |y'| * 1e-15 (1e-12 allowed). The event time's relative error is the solution's
    relative error at the event (y' = -theta y: dt / t = dy / (y log(1 / LEVEL))), and Rosenbrock23
    propagates its order-2 solution while its estimate bounds each step's local error by ~rtol: the
    global error is at most about the sum over the steps, n_steps * rtol (here 1.9e-4; observed
    1.3e-5 to 7e-5, growing with theta). The gradient combines the state's gradient and the dense
    output's slope at the event, each to the solver's accuracy: 1e-3 relative (observed 8e-5; a wrong
    slope formula is off by O(1)).
    """
    field, sol = _decay_events(24)
    theta = field.theta.detach()
    exact = math.log(1.0 / LEVEL) / theta
    torch.testing.assert_close(sol.ys[-1].detach(), torch.full((24, 1), LEVEL), rtol=0, atol=1e-12)
    torch.testing.assert_close(sol.t_final.detach(), exact, rtol=sol.stats.n_accepted * RTOL, atol=0)
    (g,) = torch.autograd.grad(sol.t_final.sum(), field.theta)
    torch.testing.assert_close(g, -exact / theta, rtol=1e-3, atol=0)


def test_event_gradients_add_no_field_call():
    """The slopes at the events come from the dense output: the solve with gradients calls the field
    as often as the one without, every call on the whole batch. Before, each fired sample's rate took
    one more whole-batch call (24 more here)."""
    field, _ = _decay_events(24)
    plain, _ = _decay_events(24, grad=False)
    assert field.calls == plain.calls, (field.calls, plain.calls)
    assert field.rows == 24 * field.calls


def test_event_times_and_states_as_the_whole_batch_search(monkeypatch):
    """The same event times and states as the search without per-sample rows (every row at every
    located time, the field at each event), bit for bit; the event-time gradients differ only by the
    rate at each event: the dense output's slope against the field at the dense state. The slope of a
    second-order extension is off by O(h^2) (test_dense_output_converges_at_its_order), relatively
    more than the state's ~rtol: observed 1.3e-4 relative, 1e-3 allowed (a wrong slope is off by O(1))."""

    def run():
        field, sol = _decay_events(16)
        (g,) = torch.autograd.grad(sol.t_final.sum(), field.theta)
        return sol.t_final.detach(), sol.ys[-1].detach(), g

    t_new, y_new, g_new = run()
    with monkeypatch.context() as m:
        m.delattr(_Rosenbrock23Interpolant, "sample_rows")
        m.delattr(_Rosenbrock23Interpolant, "sample_slopes")
        t_old, y_old, g_old = run()
    assert torch.equal(t_new, t_old)
    assert torch.equal(y_new, y_old)
    torch.testing.assert_close(g_new, g_old, rtol=1e-3, atol=0)
