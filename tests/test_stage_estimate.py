"""The one stage estimate of the Jacobian's spectral radius behind ``auto``'s switch and the stiffness watch.

``stage_ratios`` (Hairer & Wanner, Solving ODEs II, Section IV.2) is ``|k_s - k_(s-1)| / |y1 - Y_(s-1)|``
per sample, in the error test's weights ``1 / (atol + rtol max(|y0|, |y1|))``, for methods whose last two
stages sit at the step's end. ``stage_rho`` (``auto``'s vote) takes its largest value as a host float and
``row_hrho`` (the watch of per-sample and device loops) multiplies each row by its ``|h|``. Each is compared
here with a direct numpy computation of the formula, and ``auto`` is run on the stiff problems of
``test_auto_switch`` with that numpy computation in place of the library's: the same steps, switches and end
state, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_stiff import robertson, van_der_pol

import hybrid_node as hn
from hybrid_node.loop.stiff_watch import row_hrho
from hybrid_node.solvers import auto_switch
from hybrid_node.solvers.dopri5 import Dopri5
from hybrid_node.solvers.dopri8 import Dopri8
from hybrid_node.solvers.tsit5 import Tsit5

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
RTOL, ATOL = 1e-6, 1e-9
SOLVERS = {"dopri5": Dopri5, "tsit5": Tsit5, "dopri8": Dopri8}


def numpy_ratios(tableau, y0, y1, ks, h, rtol, atol, rows):
    """The estimate of each of ``rows`` samples, written out in numpy float64 from the formula, and the
    relative rounding error it may differ by from any other float64 evaluation.

    ``y1 - Y_(s-1)`` cancels: the two states agree to about the step's local error, so the difference
    carries the rounding of its terms (~eps times their magnitudes, a few per term) relative to its own
    size. The bound is 8 s eps (|y0| + |h| sum_j |a_j k_j| + |y1|) / |y1 - Y_(s-1)| in the weighted norms,
    per row (the numerator's difference of two stages adds ~eps relative).

    Args:
        h: the step, a float or one per row.

    Returns:
        (ratios, bounds), each shape (rows,).
    """
    y0, y1 = (np.asarray(x.detach(), dtype=np.float64).reshape(rows, -1) for x in (y0, y1))
    k = [np.asarray(x.detach(), dtype=np.float64).reshape(rows, -1) for x in ks]
    h = np.broadcast_to(np.asarray(h, dtype=np.float64).reshape(-1, 1), (rows, 1))
    s = len(k)
    row = tableau.a[s - 2]
    # the stage state Y_(s-1) = y0 + h sum_j a[s-2][j] k_j
    y_stage = y0 + h * sum(c * k[j] for j, c in enumerate(row))
    w = 1.0 / (atol + rtol * np.maximum(np.abs(y0), np.abs(y1)))
    num = np.sqrt(np.sum(((k[s - 1] - k[s - 2]) * w) ** 2, axis=1))
    den = np.sqrt(np.sum(((y1 - y_stage) * w) ** 2, axis=1))
    ratios = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    terms = np.abs(y0) + np.abs(y1) + np.abs(h) * sum(abs(c * k[j]) for j, c in enumerate(row))
    size = np.sqrt(np.sum((terms * w) ** 2, axis=1))
    bounds = 8 * s * np.finfo(np.float64).eps * size / np.where(den > 0, den, 1.0) + 1e-14
    return ratios, bounds


def vdp_batch(mu: torch.Tensor):
    """Van der Pol with one mu per sample (the batch's first dimension)."""

    def field(t, y):
        return torch.stack([y[..., 1], mu * ((1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0])], -1)

    return field


MUS = torch.tensor([100.0, 300.0, 1000.0], dtype=F64)
Y0 = torch.tensor([[2.0, 0.0], [1.5, -0.3], [2.0, -6.7e-4]], dtype=F64)


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_stage_rho_matches_the_formula(method):
    """A step of a batch of van der Pol samples (mu 100, 300, 1000): each sample's estimate and their largest
    agree with numpy within the rounding that the cancellation in ``y1 - Y_(s-1)`` allows (the two sum
    the stage state in different orders; :func:`numpy_ratios`' bound, 5e-14 to 2e-6 here, measured)."""
    solver = SOLVERS[method]()
    field = vdp_batch(MUS)
    dt = 1e-3
    step = solver.step(field, 0.0, Y0, field(0.0, Y0), dt)
    expected, bounds = numpy_ratios(solver.tableau, Y0, step.y1, step.ks, dt, RTOL, ATOL, rows=3)
    ratios = auto_switch.stage_ratios(solver.tableau, Y0, step.y1, step.ks, dt, RTOL, ATOL)
    assert ratios.shape == (3,)
    assert np.all(np.abs(ratios.numpy() - expected) <= bounds * expected)
    # what it estimates: the spectral radius of each sample's Jacobian at y1, to 1% (measured 1e-5 to 5e-3:
    # the two stage states differ along the stiff eigenvector, up to the smooth part of the difference)
    y1 = step.y1.detach()
    jac = torch.zeros(3, 2, 2, dtype=F64)
    jac[:, 0, 1] = 1.0
    jac[:, 1, 0] = -MUS * (1 + 2 * y1[:, 0] * y1[:, 1])
    jac[:, 1, 1] = MUS * (1 - y1[:, 0] ** 2)
    radius = torch.linalg.eigvals(jac).abs().amax(-1).numpy()
    np.testing.assert_allclose(expected, radius, rtol=1e-2)
    rho = auto_switch.stage_rho(solver.tableau, Y0, step.y1, step.ks, dt, RTOL, ATOL)
    assert rho == pytest.approx(expected[2], rel=bounds[2])
    # one system of all six components (batch_dims=0): the norm over the whole state
    whole, bound = numpy_ratios(solver.tableau, Y0, step.y1, step.ks, dt, RTOL, ATOL, rows=1)
    rho = auto_switch.stage_rho(solver.tableau, Y0, step.y1, step.ks, dt, RTOL, ATOL, batch_dims=0)
    assert rho == pytest.approx(whole[0], rel=bound[0])


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_row_hrho_matches_the_formula_per_row(method):
    """Per-sample steps (one column of step sizes, one of them zero, a (batch, 2, 2) state): |h_i| times
    each row's estimate, as numpy computes it; a zero step gives 0 (its stage states coincide)."""
    solver = SOLVERS[method]()
    tab = solver.tableau
    gen = torch.Generator().manual_seed(3)
    y0 = torch.randn(4, 2, 2, generator=gen, dtype=F64)
    matrix = torch.randn(4, 4, generator=gen, dtype=F64) * 50.0

    def field(t, y):  # linear and coupled within each row, plus a nonlinear term
        flat = y.reshape(4, 4)
        return (flat @ matrix.T + torch.sin(flat)).reshape(y.shape)

    h = torch.tensor([1e-3, 0.0, 2e-3, 5e-4], dtype=F64)
    col = h.reshape(4, 1, 1)
    ks = [field(0.0, y0)]
    for i in range(1, tab.stages):
        yi = y0 + col * sum(c * k for c, k in zip(tab.a[i], ks))
        ks.append(field(0.0, yi))
    y1 = y0 + col * sum(c * k for c, k in zip(tab.b, ks))
    ratios, bounds = numpy_ratios(tab, y0, y1, ks, h.numpy(), RTOL, ATOL, rows=4)
    expected = h.abs().numpy() * ratios
    got = row_hrho(tab, y0, y1, ks, h, RTOL, ATOL)
    assert got.dtype == F64 and got[1] == 0.0
    assert np.all(np.abs(got.numpy() - expected) <= bounds * expected)


def _numpy_stage_rho(tableau, y0, y1, ks, dt, rtol, atol, batch_dims=None):
    """``stage_rho`` written out in numpy (every leading dimension a sample, as ``auto`` passes None)."""
    rows = int(np.prod(y0.shape[:-1])) if y0.dim() > 1 else 1
    return float(numpy_ratios(tableau, y0, y1, ks, dt, rtol, atol, rows)[0].max())


@pytest.mark.parametrize(
    "field, y0, t1, rtol, atol",
    [
        (robertson, [1.0, 0.0, 0.0], 1e5, 1e-3, 1e-7),
        (robertson, [1.0, 0.0, 0.0], 1e5, 1e-8, 1e-12),
        (van_der_pol(1000.0), [2.0, 0.0], 1000.0, 1e-3, 1e-5),
        (van_der_pol(1000.0), [2.0, 0.0], 100.0, 1e-6, 1e-8),
    ],
    ids=["robertson", "robertson-tight", "vdp-1000", "vdp-1000-tight"],
)
def test_auto_switches_as_with_the_formula(field, y0, t1, rtol, atol, monkeypatch):
    """``auto`` on the stiff problems of test_auto_switch (measured: Robertson 46 accepted steps, 5 rejected,
    1 switch, at rtol 1e-8 247, 10, 1; van der Pol 87, 45, 3): with numpy's estimate in place of the
    library's, every vote, step and switch is the same, and the end state is equal to the last bit. An
    unweighted estimate changes Robertson at rtol 1e-8 (its small second component is the stiff one)."""

    def solve():
        return hn.solve(
            field,
            torch.tensor(y0, dtype=F64),
            torch.tensor([0.0, t1], dtype=F64),
            solver=hn.METHODS["auto"].solver(),
            controller=hn.PIDController(rtol=rtol, atol=atol, max_num_steps=20_000),
        )

    library = solve()
    monkeypatch.setattr(auto_switch, "stage_rho", _numpy_stage_rho)
    reference = solve()
    assert library.stats.n_switches >= 1  # the estimate decided something
    for name in ("n_accepted", "n_rejected", "n_switches", "n_jacobian", "nfe"):
        assert getattr(library.stats, name) == getattr(reference.stats, name), name
    assert torch.equal(library.ys, reference.ys)
