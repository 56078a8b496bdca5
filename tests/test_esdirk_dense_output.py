"""Dense output of the ESDIRKs: the continuous extensions' order conditions, their convergence order between
step ends, their error between steps against scipy, and gradients through them.

kencarp4 and kvaerno5 interpolate with an order-4 continuous extension from their stages
(:mod:`hybrid_node.solvers.dirk_dense`); before, they (and still the others) used cubic Hermite on the end
values and slopes, of order 3. The order conditions are written out here tree by tree (Hairer, Nørsett,
Wanner, Solving ODEs I, Table II.2.2), independently of the module's own list. Kennedy & Carpenter's
published extension of ARK4(3)6L[2]SA (Appl. Numer. Math. 44, 2003, the b*_ij of its dense output) is
checked as well: it is of order 3, and measured worse between steps than the one adopted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import hybrid_node as hn
from benchmarks.esdirk_dense import KC4_PUBLISHED  # the published table, written once
from benchmarks.stiff_problems import robertson
from hybrid_node.interpolation import HermiteInterpolant, PolynomialInterpolant
from hybrid_node.solvers.dirk_dense import continuous_extension
from hybrid_node.solvers.esdirk import KENCARP4_TABLEAU, KVAERNO3_TABLEAU, KVAERNO5_TABLEAU, Dirk

TABLEAUS = {"kencarp4": KENCARP4_TABLEAU, "kvaerno5": KVAERNO5_TABLEAU}
THETAS = np.linspace(0.0, 1.0, 21)


def full(tab) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.zeros((tab.stages, tab.stages))
    for i, row in enumerate(tab.a):
        a[i, : len(row)] = row
    return a, np.array(tab.c), np.array(tab.b)


def weights(coeffs, thetas: np.ndarray) -> np.ndarray:
    """b_i(theta) for each theta, shape (thetas, stages)."""
    c = np.asarray(coeffs)
    return (thetas[:, None] ** np.arange(1, c.shape[1] + 1)) @ c.T


def order_residuals(tab, coeffs) -> dict[int, float]:
    """The largest residual over theta of the order conditions with 1 .. 5 nodes, by number of nodes."""
    a, c, _ = full(tab)
    ac = a @ c
    conditions = {
        1: [(np.ones_like(c), 1)],
        2: [(c, 2)],
        3: [(c * c, 3), (ac, 6)],
        4: [(c**3, 4), (c * ac, 8), (a @ (c * c), 12), (a @ ac, 24)],
        5: [(c**4, 5), (c * c * ac, 10), (c * (a @ (c * c)), 15), (c * (a @ ac), 30), (ac * ac, 20)],
    }
    bt = weights(coeffs, THETAS)
    return {
        n: max(float(np.abs(bt @ phi - THETAS**n / g).max()) for phi, g in conds) for n, conds in conditions.items()
    }


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_extension_has_order_four_and_ends_at_b(name: str) -> None:
    tab = TABLEAUS[name]
    assert tab.dense is not None and tab.dense_order == 4
    np.testing.assert_allclose(np.sum(tab.dense, axis=1), tab.b, rtol=0, atol=1e-13)
    res = order_residuals(tab, tab.dense)
    # every condition up to order 4 to rounding (coefficients of size ~10), for every theta
    assert max(res[n] for n in (1, 2, 3, 4)) < 1e-13, res
    assert res[5] > 1e-3  # order 5 is out of reach of these stages (a check that the conditions bite)


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_extension_follows_cubic_manifold_in_stiff_limit(name: str) -> None:
    """Stages exactly on phi(t) = t^m (h = 1): the interpolant must give theta^m for m <= 3."""
    tab = TABLEAUS[name]
    a, c, _ = full(tab)
    bt = weights(tab.dense, THETAS)
    inv = np.linalg.inv(a[1:, 1:])
    for m in (1, 2, 3):
        k = np.zeros_like(c)
        k[0] = float(m == 1)  # the explicit stage: the slope at the start
        k[1:] = inv @ (c[1:] ** m - a[1:, 0] * k[0])
        np.testing.assert_allclose(bt @ k, THETAS**m, rtol=0, atol=1e-12)


def test_published_kencarp4_extension_has_order_three() -> None:
    np.testing.assert_allclose(np.sum(KC4_PUBLISHED, axis=1), KENCARP4_TABLEAU.b, rtol=0, atol=1e-14)
    res = order_residuals(KENCARP4_TABLEAU, KC4_PUBLISHED)
    assert max(res[n] for n in (1, 2, 3)) < 1e-14, res
    assert res[4] > 1e-3, res


def test_continuous_extension_refuses_what_the_stages_cannot_carry() -> None:
    tab = KVAERNO3_TABLEAU
    with pytest.raises(ValueError, match="no extension of order 4"):
        continuous_extension(tab.a, tab.c, tab.b, order=4, degree=4)


# ---------------------------------------------------------------- one step: convergence order at theta


def vdp_torch(t, y):
    return torch.stack([y[..., 1], 2.0 * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)


def vdp_np(t, y):
    return [y[1], 2.0 * (1 - y[0] ** 2) * y[1] - y[0]]


def one_step(name: str, h: float, theta: float) -> tuple[float, float]:
    """Errors at theta of one step from the exact (t, y) = (0, (2, 0)): the extension's and Hermite's."""
    solver = Dirk(tableau=TABLEAUS[name], name=name, newton_rtol=1e-14, newton_atol=1e-16)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    state = solver.init(vdp_torch, 0.0, y0)
    step = solver.step(vdp_torch, 0.0, y0, state, h)
    dense = solver.interpolant(vdp_torch, 0.0, y0, h, step, solver.next_state(vdp_torch, h, step))
    assert isinstance(dense, PolynomialInterpolant)
    # the cubic Hermite the method used before, on the same step: end slopes = first and last stage
    hermite = HermiteInterpolant(y0, step.y1, step.ks[0], step.ks[-1], h)
    ref = solve_ivp(vdp_np, (0.0, theta * h), [2.0, 0.0], method="DOP853", rtol=1e-13, atol=1e-15).y[:, -1]
    return tuple(float(np.abs(i(theta).numpy() - ref).max()) for i in (dense, hermite))  # type: ignore[return-value]


@pytest.mark.parametrize("name", sorted(TABLEAUS))
@pytest.mark.parametrize("theta", [0.3, 0.5])
def test_dense_output_local_order(name: str, theta: float) -> None:
    """Local error at interior theta ~ h^(p+1): 5 for an order-4 extension, 4 for cubic Hermite.

    Steps 0.05 and 0.025 keep the errors (3e-6 .. 5e-10) far above the reference's (1e-13) and the Newton
    tolerance, and small enough for the leading term to dominate (measured orders 4.8-5.0 and 3.94-3.98;
    at steps 0.1 and 0.05 the extension's is still 4.6).
    """
    coarse, fine = one_step(name, 0.05, theta), one_step(name, 0.025, theta)
    new_order, hermite_order = (np.log2(c / f) for c, f in zip(coarse, fine))
    assert new_order > 4.6, (coarse, fine)
    assert hermite_order < 4.4, (coarse, fine)  # the old interpolant is one order lower on this problem


def test_end_of_step_is_the_step_solution_exactly() -> None:
    solver = Dirk(tableau=KVAERNO5_TABLEAU, name="kvaerno5")
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    step = solver.step(vdp_torch, 0.0, y0, solver.init(vdp_torch, 0.0, y0), 0.1)
    dense = solver.interpolant(vdp_torch, 0.0, y0, 0.1, step, solver.next_state(vdp_torch, 0.1, step))
    assert torch.equal(dense(1.0), step.y1)  # continuity across steps to the last bit
    many = dense.many([0.25, 1.0])
    assert torch.equal(many[1], step.y1)
    # one matrix product against a sum of stage terms: equal to rounding
    torch.testing.assert_close(many[0], dense(0.25), rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------- between steps, against scipy


def robertson_np(t, y):
    return [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]


def robertson_jac(t, y):
    return [
        [-0.04, 1e4 * y[2], 1e4 * y[1]],
        [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]],
        [0.0, 6e7 * y[1], 0.0],
    ]


def decay(t, y):
    return -y + torch.sin(torch.as_tensor(t, dtype=y.dtype))


def decay_np(t, y):
    return [-y[0] + np.sin(t)]


PROBLEMS = {
    # field, numpy field, its Jacobian (None: scipy's finite differences), y0, t1, rtol, atol
    "robertson": (robertson, robertson_np, robertson_jac, [1.0, 0.0, 0.0], 1e5, 1e-6, 1e-8),
    "decay": (decay, decay_np, None, [1.0], 10.0, 1e-6, 1e-8),
}


def between_step_errors(problem: str, name: str) -> tuple[float, float, float]:
    """Largest local errors, in tolerances, over the steps of one solve: at theta = 1/4, 1/2, 3/4 for the
    extension and for cubic Hermite on the same steps, and at the step ends.

    Each step is compared with scipy's Radau (rtol 1e-12) from the step's own start value, so that the
    error carried in from earlier steps (the same for both interpolants) does not hide the interpolant's.
    """
    f, fnp, jac, y0, t1, rtol, atol = PROBLEMS[problem]
    sol = hn.odeint_dense(f, torch.tensor(y0, dtype=torch.float64), 0.0, t1, rtol=rtol, atol=atol, method=name)
    thetas = np.array([0.25, 0.5, 0.75])
    worst = np.zeros(3)
    for seg in sol.segments:
        dense = seg.interpolant
        h = seg.t1 - seg.t0
        hermite = HermiteInterpolant(dense.y0, dense.y1, dense.ks[0], dense.ks[-1], h)
        ts = np.append(seg.t0 + thetas * h, seg.t1)
        ref = solve_ivp(fnp, (seg.t0, seg.t1), dense.y0.numpy(), "Radau", ts, jac=jac, rtol=1e-12, atol=1e-16).y.T
        scale = atol + rtol * np.abs(ref)
        got = (dense.many(list(thetas) + [1.0]).numpy(), hermite.many(thetas).numpy())
        worst = np.maximum(
            worst,
            [
                (np.abs(got[0][:3] - ref[:3]) / scale[:3]).max(),
                (np.abs(got[1] - ref[:3]) / scale[:3]).max(),
                (np.abs(got[0][3] - ref[3]) / scale[3]).max(),
            ],
        )
    return tuple(worst.tolist())  # type: ignore[return-value]


# measured (tolerances, 2026-12-06): extension / Hermite / step end
#   robertson kencarp4 3.3 / 52 / 1.8, kvaerno5 9.1 / 72 / 0.19; decay kencarp4 2.1 / 18 / 2.2, kvaerno5 10 / 53 / 1.2
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_between_step_error_against_scipy(problem: str, name: str) -> None:
    dense, hermite, end = between_step_errors(problem, name)
    assert hermite > 3.0 * dense, (dense, hermite)  # measured 5x to 16x
    # within the interior error the method's order allows: a few step-end errors, at most 15 tolerances
    # (twice the largest measured), far below Hermite's 18 to 72
    assert dense < 15.0, (dense, hermite, end)


# ---------------------------------------------------------------- gradients through the dense output


class VdP(torch.nn.Module):
    def __init__(self, mu: float):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(mu, dtype=torch.float64))

    def forward(self, t, y):
        return torch.stack([y[..., 1], self.mu * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)


TS = torch.tensor([0.0, 0.37, 0.81, 1.3], dtype=torch.float64)  # outputs between the steps
WEIGHTS = torch.tensor([0.7, -0.4], dtype=torch.float64)


def loss_and_grads(name: str, sensitivity, mu: float = 2.0, y00: float = 2.0):
    """L = sum over the outputs of <w, y(t)>, and dL/dy0, dL/dmu."""
    func = VdP(mu)
    y0 = torch.tensor([y00, 0.0], dtype=torch.float64, requires_grad=True)
    solver = hn.KenCarp4() if name == "kencarp4" else hn.Kvaerno5()
    controller = hn.PIDController(rtol=1e-10, atol=1e-10)
    sol = hn.solve(func, y0, TS, solver=solver, controller=controller, sensitivity=sensitivity)
    loss = (sol.ys[1:] * WEIGHTS).sum()
    return loss.item(), torch.autograd.grad(loss, (y0, func.mu))


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_gradient_through_dense_output_matches_finite_differences(name: str) -> None:
    """DirectBackprop differentiates the interpolant; the interpolating adjoint runs backward on it."""
    eps = 1e-4
    # central differences: truncation ~eps^2 * (third derivative of L) ~ 1e-8, the solve's error at rtol
    # 1e-10 over eps ~1e-6; the gradients are O(1), so 1e-5 relative separates a wrong one (> 1e-3)
    fd_mu = (loss_and_grads(name, None, mu=2.0 + eps)[0] - loss_and_grads(name, None, mu=2.0 - eps)[0]) / (2 * eps)
    fd_y0 = (loss_and_grads(name, None, y00=2.0 + eps)[0] - loss_and_grads(name, None, y00=2.0 - eps)[0]) / (2 * eps)
    for sensitivity in (hn.DirectBackprop(), hn.InterpolatingAdjoint()):
        _, (g_y0, g_mu) = loss_and_grads(name, sensitivity)
        for got, want in ((g_mu.item(), fd_mu), (g_y0[0].item(), fd_y0)):
            assert abs(got - want) < 1e-5 * max(1.0, abs(want)), (sensitivity, got, want)
