"""Per-sample terminal events with the stiff methods: the event search reads each sample's own rows of
the Rodas and Nordsieck (BDF) dense outputs.

Their interpolants (:class:`~hybrid_node.solvers.rosenbrock._RodasInterpolant`,
:class:`~hybrid_node.solvers.multistep.NordsieckInterpolant`) had no per-sample rows or slopes, so the
search evaluated the whole batch at every located sample's time in every bisection halving and took the
rate at each event from one whole-batch call of the field per fired sample. Now they evaluate the
requested rows with the whole-batch evaluation's own elementwise operations (bitwise equal rows, hence
the same event times and states), and the rate is the dense output's exact slope, which differs from
the field at the event by the dense output's error.
"""

from __future__ import annotations

import pytest
import torch
from bouncing import SeededMlp

import hybrid_node as hn
from hybrid_node.solvers.multistep import NordsieckInterpolant
from hybrid_node.solvers.rosenbrock import _RodasInterpolant

pytestmark = pytest.mark.usefixtures("float64_default")

#: the stiff methods whose dense outputs gained per-sample rows, with their interpolant classes
METHODS = {"rodas5p": (hn.Rodas5P, _RodasInterpolant), "rodas4": (hn.Rodas4, _RodasInterpolant)}
METHODS["bdf"] = (hn.BDF, NordsieckInterpolant)

STIFFNESS = 200.0  # the decay rate of the second coordinate: ~100x the rate of the first's motion


def _solve(method: str, batch: int, dtype=torch.float64, grad: bool = True, t_end: float = 4.0):
    """Per-sample events x = 2 of a batch spread over x in [-1, 1]; the field, initial state and solution."""
    field = SeededMlp(dtype, STIFFNESS)
    y0 = torch.zeros(batch, 2, dtype=dtype)
    y0[:, 0] = torch.linspace(-1.0, 1.0, batch, dtype=dtype)
    y0[:, 1] = torch.linspace(0.5, -0.5, batch, dtype=dtype)
    y0.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        sol = hn.solve(
            field,
            y0,
            torch.tensor([0.0, t_end], dtype=dtype),
            solver=METHODS[method][0](),
            controller=hn.PIDController(rtol=1e-7, atol=1e-9),
            event_fn=lambda t, y: y[:, 0] - 2.0,
            per_sample_events=True,
            event_t_end=t_end,
        )
    assert bool(sol.event_fired.all())
    return field, y0, sol


def _interpolants(method: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> list:
    """The dense outputs of a short solve of the batch (7 samples), with gradients to the initial state."""
    kept: list = []
    cls = METHODS[method][1]
    init = cls.__init__

    def keep(self, *args, **kwargs):
        init(self, *args, **kwargs)
        kept.append(self)

    monkeypatch.setattr(cls, "__init__", keep)
    _, y0, sol = _solve(method, 7, dtype)
    monkeypatch.undo()
    assert len(kept) >= 4, len(kept)
    return [(k, y0) for k in kept[1:4]]  # steps past the first, whose BDF polynomial has order > 1


THETAS = [0.3, 1.0, 0.0, 0.77, 0.3, 0.123456789]
IDX = torch.tensor([6, 0, 2, 3, 3, 1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_sample_rows_are_the_whole_batch_rows_bit_for_bit(method, dtype, monkeypatch):
    """Each row equals the same row of the whole batch at its theta (``many``, and the scalar
    ``__call__``), to the last bit; gradients to rounding."""
    for interp, y0 in _interpolants(method, dtype, monkeypatch):
        whole = interp.many(THETAS)[torch.arange(len(THETAS)), IDX]
        one = torch.stack([interp(t)[i] for t, i in zip(THETAS, IDX.tolist())])
        rows = interp.sample_rows(THETAS, IDX, 7)
        assert rows.dtype == dtype
        assert torch.equal(rows, whole)
        assert torch.equal(rows, one)
        weights = torch.randn(rows.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        (g_rows,) = torch.autograd.grad((weights * rows).sum(), y0, retain_graph=True)
        (g_whole,) = torch.autograd.grad((weights * whole).sum(), y0, retain_graph=True)
        # the same values through differently shaped graphs: the backward may sum in another order
        scale = float(g_whole.abs().max())
        torch.testing.assert_close(g_rows, g_whole, rtol=0, atol=16 * torch.finfo(dtype).eps * scale)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_sample_slopes_are_the_theta_derivative_of_the_dense_output(method, monkeypatch):
    """Against central differences of the rows in theta: truncation ~eps^2 |y'''| and rounding
    ~1e-16 / eps, both below 1e-9 of the slopes' O(0.1-1) size."""
    eps = 1e-5
    for interp, _ in _interpolants(method, torch.float64, monkeypatch):
        with torch.no_grad():
            slopes = interp.sample_slopes(THETAS, IDX, 7)
            up = interp.sample_rows([t + eps for t in THETAS], IDX, 7)
            down = interp.sample_rows([t - eps for t in THETAS], IDX, 7)
        torch.testing.assert_close(slopes, (up - down) / (2 * eps), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_event_gradients_add_no_field_call(method):
    """The event times' gradients cost no call of the field: as many calls as the solve without
    gradients. Before, the rate at each event took one whole-batch call per fired sample (B more)."""
    field, _, _ = _solve(method, 12)  # the rates at the events are taken in the forward solve
    plain, _, _ = _solve(method, 12, grad=False)
    assert field.calls == plain.calls, (field.calls, plain.calls)
    assert field.rows == 12 * field.calls


@pytest.mark.parametrize("method", sorted(METHODS))
def test_event_times_and_states_as_the_whole_batch_search(method, monkeypatch):
    """The same event times and states as the whole-batch search, bit for bit; gradients to the dense
    output's accuracy.

    The gradients differ only in the rate at each event (the dense output's slope against the field at
    the dense state): both are y' to the step's local error, a few rtol = 1e-7 relative; 1e-5 of the
    largest gradient leaves a margin and still catches a wrong slope (an O(1) error in the rate).
    """

    def run():
        field, y0, sol = _solve(method, 8)
        grads = torch.autograd.grad(sol.t_final.sum() + sol.ys[-1][:, 1].sum(), (y0, field.w1, field.w2))
        return sol.t_final.detach(), sol.ys[-1].detach(), grads

    t_new, y_new, g_new = run()
    with monkeypatch.context() as m:  # the search's fallback: whole-batch rows, the field at every event
        m.delattr(METHODS[method][1], "sample_rows")
        m.delattr(METHODS[method][1], "sample_slopes")
        m.delattr(METHODS[method][1], "sample_reader", raising=False)  # the Nordsieck rows' prepared reads
        t_old, y_old, g_old = run()
    assert torch.equal(t_new, t_old)
    assert torch.equal(y_new, y_old)
    for a, b in zip(g_new, g_old):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))
