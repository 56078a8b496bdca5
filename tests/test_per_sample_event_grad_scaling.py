"""Per-sample terminal events with gradients: O(batch) field work, and the gradients of frozen rows.

The event times' implicit-function-theorem gradient needs dy/dt at each sample's event. It used to be
one call of the field on the whole batch per fired sample (B calls of B rows: quadratic in the
batch); it is now the slope of the step's dense output at each sample's own time, no field call.

Closed forms (ball thrown from height h with upward speed v under gravity g, event: height 0):
t* = (v + s) / g with s = sqrt(v^2 + 2 g h), so dt*/dh = 1 / s, dt*/dv = (1 + v / s) / g and, from
h + v t - g t^2 / 2 = 0, dt*/dg = t*^2 / (2 (v - g t*)) = -t*^2 / (2 s). The event state: height 0
(no gradient) and speed v - g t* = -s, so dv_e/dh = -g / s, dv_e/dv = -v / s, dv_e/dg = -h / s.
dopri5 and rk4 integrate a quadratic exactly (their dense outputs too), so every gradient is exact
to rounding whatever the step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _gradient_problems import Damped, assert_matches_central_differences
from bouncing import CountingBall
from bouncing import G as G0

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default")


def _height(t, y):
    return y[:, 0]


def _solve(ball, y0, *, method="dopri5", t_end=10.0, sensitivity=None, throw=True):
    if method == "rk4":
        solver, ctrl = hn.RK4(), hn.ConstantStepSize(step_size=0.01)
    else:
        solver, ctrl = getattr(hn, method.capitalize())(), hn.PIDController(rtol=1e-8, atol=1e-10)
    return hn.solve(
        ball,
        y0,
        torch.tensor([0.0, t_end]),
        solver=solver,
        controller=ctrl,
        event_fn=_height,
        per_sample_events=True,
        event_t_end=t_end,
        throw=throw,
        sensitivity=sensitivity,
    )


def _closed_form(h: np.ndarray, v: np.ndarray, g: float = G0) -> dict[str, np.ndarray]:
    s = np.sqrt(v**2 + 2 * g * h)
    t = (v + s) / g
    return {
        "t": t,
        "dt_dh": 1 / s,
        "dt_dv": (1 + v / s) / g,
        "dt_dg": -(t**2) / (2 * s),
        "dve_dh": -g / s,
        "dve_dv": -v / s,
        "dve_dg": -h / s,
    }


def _counts(batch: int, grad: bool, method: str = "dopri5") -> tuple[int, int]:
    """(field calls, rows evaluated) of one solve of ``batch`` balls, with or without gradients."""
    ball = CountingBall()
    h = torch.linspace(1.0, 50.0, batch).requires_grad_(grad)  # impacts spread over 0.45 s to 3.2 s
    y0 = torch.stack([h, torch.zeros_like(h)], 1)
    with torch.set_grad_enabled(grad):
        sol = _solve(ball, y0, method=method)
    if grad:  # the gradients are still there (the slope at the event enters dt*/dh)
        (g,) = torch.autograd.grad(sol.t_final.sum(), h)
        np.testing.assert_allclose(g.numpy(), _closed_form(h.detach().numpy(), 0 * h.detach().numpy())["dt_dh"], 1e-9)
    return ball.calls, ball.rows


def test_field_work_with_gradients_is_linear_in_the_batch():
    """Rows evaluated grow like the batch, and the gradients add no call of the field.

    The old loop added one whole-batch call per fired sample: 34 + B calls of B rows (B = 16: 800
    rows, B = 64: 6272, a ratio of 7.8 for 4x the batch; 74240 at B = 256, against 8704 without
    gradients).
    """
    rows = {}
    for batch in (4, 16, 64, 256):
        calls, rows[batch] = _counts(batch, grad=True)
        plain_calls, _ = _counts(batch, grad=False)
        assert calls == plain_calls, (batch, calls, plain_calls)  # the same steps either way
    for small, big in ((4, 16), (16, 64), (64, 256)):
        # 4x the batch: 4x the rows, up to a few more steps for the wider spread of impact times
        assert rows[big] <= 4.5 * rows[small], rows


@pytest.mark.parametrize("method", ["rk4", "bosh3"])
def test_hermite_dense_output_gradients_add_no_field_call(method):
    """Fixed steps (rk4) and a pair without a continuous extension (bosh3) interpolate by cubic
    Hermite: the slope at the event is the cubic's derivative, no call of the field either."""
    batch = 24
    calls, _ = _counts(batch, grad=True, method=method)
    plain_calls, _ = _counts(batch, grad=False, method=method)
    assert calls == plain_calls  # the old loop: plain_calls + 24


@pytest.mark.parametrize("method", ["dopri5", "rk4", "dopri8"])
def test_ball_gradients_match_the_closed_form(method):
    """Event times and event states against the closed form (dopri8 with its own per-sample slopes)."""
    ball = CountingBall()
    h = torch.tensor([1.0, 20.0, 2.0, 0.5], requires_grad=True)
    v = torch.tensor([0.0, 3.0, -4.0, 1.0], requires_grad=True)
    sol = _solve(ball, torch.stack([h, v], 1), method=method)
    ref = _closed_form(h.detach().numpy(), v.detach().numpy())
    np.testing.assert_allclose(sol.t_final.detach().numpy(), ref["t"], rtol=1e-12)
    dh, dv, dg = torch.autograd.grad(sol.t_final.sum(), (h, v, ball.g), retain_graph=True)
    # exact integration of a quadratic: only rounding, amplified by the bisection's bracket (ulps of t)
    np.testing.assert_allclose(dh.numpy(), ref["dt_dh"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dv.numpy(), ref["dt_dv"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(dg), ref["dt_dg"].sum(), rtol=1e-9, atol=1e-12)
    ye = sol.ys[-1]
    dh, dv, dg = torch.autograd.grad(ye[:, 1].sum(), (h, v, ball.g), retain_graph=True)
    np.testing.assert_allclose(dh.numpy(), ref["dve_dh"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dv.numpy(), ref["dve_dv"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(dg), ref["dve_dg"].sum(), rtol=1e-9, atol=1e-12)
    # the event height is 0 whatever the inputs: it moves with its event time by the slope
    dh, dv, dg = torch.autograd.grad(ye[:, 0].sum(), (h, v, ball.g))
    assert max(float(dh.abs().max()), float(dv.abs().max()), abs(float(dg))) < 1e-9


def _damped_outputs(func, y0):
    sol = hn.solve(
        func,
        y0,
        torch.tensor([0.0, 20.0]),
        solver=hn.RK4(),
        controller=hn.ConstantStepSize(step_size=0.025),
        event_fn=lambda t, y: y[:, 0] + 0.3,
        per_sample_events=True,
    )
    return sol.t_final, sol.ys[-1][:, 1]


def test_nonlinear_gradients_match_central_differences():
    """A nonlinear field on fixed steps: the solve is a smooth map of its inputs, so central differences
    of the whole solve check the event times' and event states' gradients (with respect to y0 and the
    field's parameters) without a closed form."""
    func = Damped()
    y0 = torch.tensor([[1.0, 0.0], [0.5, 0.4], [2.0, -1.0]], requires_grad=True)
    t_e, u_e = _damped_outputs(func, y0)
    weights = torch.tensor([1.0, -0.7, 0.4])
    loss = (weights * t_e).sum() + (weights.flip(0) * u_e).sum()
    grads = torch.autograd.grad(loss, (y0, func.w, func.c))

    def perturbed_loss():
        t_p, u_p = _damped_outputs(func, y0)
        return (weights * t_p).sum() + (weights.flip(0) * u_p).sum()

    # central differences: truncation ~eps^2, rounding ~1e-16 / eps = 1e-10
    assert_matches_central_differences(perturbed_loss, (y0, func.w, func.c), grads, eps=1e-6, abs_tol=1e-8)


def test_rows_solved_one_at_a_time_give_the_same_gradients():
    """On fixed steps a row's solve does not depend on the rest of the batch: its event time, event
    state and their gradients are those of the row solved alone (the shared g's gradient: their sum)."""
    h = torch.tensor([1.0, 30.0, 0.0, 5.0])
    v = torch.tensor([0.5, 0.0, -1.0, 2.0])
    ball = CountingBall()
    y0 = torch.stack([h, v], 1).requires_grad_(True)
    sol = _solve(ball, y0, method="rk4")
    loss = sol.t_final.sum() + sol.ys[-1][:, 1].sum()
    g_y0, g_g = torch.autograd.grad(loss, (y0, ball.g))
    total = 0.0
    for i in range(len(h)):
        one = CountingBall()
        y0_i = y0.detach()[i : i + 1].clone().requires_grad_(True)
        sol_i = _solve(one, y0_i, method="rk4")
        assert float(sol_i.t_final.detach()[0]) == float(sol.t_final.detach()[i])
        gi_y0, gi_g = torch.autograd.grad(sol_i.t_final.sum() + sol_i.ys[-1][:, 1].sum(), (y0_i, one.g))
        torch.testing.assert_close(gi_y0[0], g_y0[i], rtol=1e-12, atol=1e-12)
        total += float(gi_g)
    assert float(g_g) == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize(
    "sensitivity", [None, hn.BacksolveAdjoint(), hn.InterpolatingAdjoint()], ids=["direct", "backsolve", "interp"]
)
def test_frozen_rows_get_finite_correct_gradients(sensitivity):
    """Rows that fire far apart (0.45 s and 45 s: the first stays frozen for thousands of steps), one that
    fires at t0 (height 0, falling) and one that never fires before t_end (throw=False)."""
    ball = CountingBall()
    h = torch.tensor([1.0, 1e4, 0.0, 1e6], requires_grad=True)
    v = torch.tensor([0.0, 0.0, -1.0, 0.0], requires_grad=True)
    t_end = 60.0
    sol = _solve(ball, torch.stack([h, v], 1), t_end=t_end, sensitivity=sensitivity, throw=False)
    assert sol.event_fired.tolist() == [True, True, True, False]
    assert math.isnan(float(sol.t_final.detach()[3]))
    ref = _closed_form(h.detach().numpy()[:3], v.detach().numpy()[:3])
    t_fired = torch.where(sol.event_fired, sol.t_final, torch.zeros(()))
    loss = t_fired.sum() + sol.ys[-1][:, 1].sum()
    dh, dv, dg = torch.autograd.grad(loss, (h, v, ball.g))
    assert torch.isfinite(dh).all() and torch.isfinite(dv).all() and math.isfinite(float(dg))
    # the adjoints integrate backward at rtol 1e-8 (the forward's): their gradients are that accurate
    rtol = 1e-9 if sensitivity is None else 1e-6
    np.testing.assert_allclose(dh.numpy()[:3], ref["dt_dh"] + ref["dve_dh"], rtol=rtol)
    np.testing.assert_allclose(dv.numpy()[:3], ref["dt_dv"] + ref["dve_dv"], rtol=rtol)
    # the row that never fired: its state where the search stopped (t_end), v(t_end) = v0 - g t_end
    assert float(dh[3]) == 0.0
    assert float(dv[3]) == pytest.approx(1.0, rel=1e-12)
    dg_exact = ref["dt_dg"].sum() + ref["dve_dg"].sum() - t_end
    assert float(dg) == pytest.approx(dg_exact, rel=rtol)


@pytest.mark.parametrize("which", ["polynomial", "hermite", "linear"])
def test_sample_slopes_are_the_theta_derivative_of_sample_rows(which):
    """Each interpolant's per-sample slope against central differences of its own per-sample rows."""
    from hybrid_node.interpolation import HermiteInterpolant, LinearInterpolant, PolynomialInterpolant

    n, m = 5, 3
    gen = torch.Generator().manual_seed(1)
    r = lambda: torch.randn(n, m, generator=gen)  # noqa: E731
    coeffs = ((1.0, -0.5, 0.25), (0.0, 0.0, 0.0), (0.5, 0.3, -0.2))
    interp = {
        "polynomial": lambda: PolynomialInterpolant(r(), (r(), r(), r()), 0.3, coeffs),
        "hermite": lambda: HermiteInterpolant(r(), r(), r(), r(), 0.3),
        "linear": lambda: LinearInterpolant(r(), r()),
    }[which]()
    thetas, idx = [0.1, 0.5, 0.9, 0.3, 0.7], torch.tensor([0, 3, 4, 1, 3])
    eps = 1e-5  # central differences: truncation ~eps^2 = 1e-10, rounding ~1e-16 / eps = 1e-11
    up = interp.sample_rows([t + eps for t in thetas], idx, n)
    down = interp.sample_rows([t - eps for t in thetas], idx, n)
    torch.testing.assert_close(interp.sample_slopes(thetas, idx, n), (up - down) / (2 * eps), rtol=1e-8, atol=1e-8)


class _Waning(torch.nn.Module):
    """y' = -k_i sqrt(c_i - t): defined only before c_i, which the first sample passes while frozen.

    From y(0) = y0 the level 1/2 is reached at t* = c - (c^(3/2) - 3 (y0 - 1/2) / (2 k))^(2/3), so with
    r = c^(3/2) - 3 (y0 - 1/2) / (2 k): dt*/dk = -(y0 - 1/2) r^(-1/3) / k^2 and dt*/dy0 = r^(-1/3) / k.
    """

    def __init__(self, clamp: bool):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor([4.0, 0.3]))
        self.c = torch.tensor([0.5, 4.0])
        self.clamp = clamp

    def forward(self, t, y):
        arg = self.c[:, None] - t
        if self.clamp:  # into the domain: finite past c (the clamp passes no gradient to sqrt's slope at 0)
            arg = arg.clamp(min=0.0)
        return -self.k[:, None] * torch.sqrt(arg)


def _waning(func):
    y0 = torch.ones(2, 1, requires_grad=True)
    sol = hn.solve(
        func,
        y0,
        torch.tensor([0.0, 10.0]),
        controller=hn.PIDController(rtol=1e-10, atol=1e-12),
        event_fn=lambda t, y: y[:, 0] - 0.5,
        per_sample_events=True,
    )
    return sol.t_final, y0


def test_a_field_non_finite_in_frozen_rows_is_named_not_silently_nan():
    """The first sample stops at 0.2 and the batch goes on to 0.88, past t = 0.5, where the first
    sample's field is sqrt of a negative number: masked out of the solution, but every gradient of its
    k is NaN. The solve warns."""
    func = _Waning(clamp=False)
    with pytest.warns(RuntimeWarning, match="non-finite values in the rows of samples whose event had") as seen:
        t_e, y0 = _waning(func)
    assert seen[0].filename == __file__  # the user's call, not a line inside the library
    (dk,) = torch.autograd.grad(t_e.sum(), func.k)
    assert math.isnan(float(dk[0]))  # what the warning announces


def test_the_warned_field_clamped_into_its_domain_has_the_closed_form_gradients():
    import warnings

    func = _Waning(clamp=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a field that stays finite
        t_e, y0 = _waning(func)
    k, c = func.k.detach().numpy(), func.c.numpy()
    r = c**1.5 - 0.75 / k
    np.testing.assert_allclose(t_e.detach().numpy(), c - r ** (2 / 3), rtol=1e-8)
    dk, dy0 = torch.autograd.grad(t_e.sum(), (func.k, y0))
    # rtol 1e-10 solves: the gradients to 1e-7 (the adjoint-free direct backpropagation of dopri5)
    np.testing.assert_allclose(dk.numpy(), -0.5 * r ** (-1 / 3) / k**2, rtol=1e-7)
    np.testing.assert_allclose(dy0.reshape(-1).numpy(), r ** (-1 / 3) / k, rtol=1e-7)


def test_the_benchmark_prints_field_work_flat_in_calls(capsys):
    """benchmarks/per_sample_event_grads.py: a bad batch is a usage error; its table's calls hardly grow
    with the batch and its errors stay at the solve's tolerance (rtol 1e-6)."""
    from benchmarks import per_sample_event_grads as bench

    with pytest.raises(SystemExit) as info:
        bench.main(["--batches", "0"])
    assert info.value.code == 2
    capsys.readouterr()
    assert bench.main(["--batches", "3", "30", "--repeats", "1"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    calls = [int(r[2].replace(",", "")) for r in rows]
    # the steps: about 115 calls for either batch (a few more for the wider one); one more per sample was 27 more
    assert len(rows) == 2 and calls[1] - calls[0] < 15
    assert all(float(r[4]) < 1e-6 and float(r[5]) < 1e-4 for r in rows)


def test_frozen_rows_pass_the_term_attributes_and_counters_through():
    """The frozen-rows wrapper is the wrapped term for everything but the field's frozen rows."""
    from hybrid_node._term import Term
    from hybrid_node.loop.events import FrozenRows

    y0 = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    term = Term(CountingBall(), y0, torch.float64)
    wrapped = FrozenRows(term, torch.tensor([True, False]), torch.Size([2]))
    assert wrapped.reverse is term.reverse and wrapped.t_dtype == term.t_dtype
    f = wrapped(0.0, y0)
    assert f.tolist() == [[0.0, 0.0], [0.0, -G0]]  # the first sample frozen: its field is zero
    wrapped.nfe = 5  # the counters are the term's
    assert term.nfe == 5
    with pytest.raises(AttributeError, match="immutable"):
        wrapped.reverse = True


def _waning_adjoint(func, sensitivity, y0_grad=True):
    """:func:`_waning` in float64 with gradients by ``sensitivity``: the forward loop runs without a graph."""
    func = func.double()
    y0 = torch.ones(2, 1, dtype=torch.float64, requires_grad=y0_grad)
    sol = hn.solve(
        func,
        y0,
        torch.tensor([0.0, 10.0], dtype=torch.float64),
        controller=hn.PIDController(rtol=1e-10, atol=1e-12),
        event_fn=lambda t, y: y[:, 0] - 0.5,
        per_sample_events=True,
        sensitivity=sensitivity,
    )
    return sol.t_final, y0


def test_a_field_non_finite_in_frozen_rows_is_named_for_the_adjoint_too():
    """The adjoint's loop runs without a graph, so nothing was noted: no warning, and the backward solve then
    stopped at a NaN state (the switched field's vector-Jacobian product is 0 * NaN in the frozen rows), with
    a message about overflow and stiffness. The solve now warns as direct backpropagation does."""
    func = _Waning(clamp=False).double()
    y0 = torch.ones(2, 1, dtype=torch.float64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="rows of samples whose event had already fired.*adjoint") as seen:
        t_e, _ = hn.odeint_event(
            func,
            y0,
            torch.tensor(0.0, dtype=torch.float64),
            event_fn=lambda t, y: y[:, 0] - 0.5,
            odeint_interface=hn.odeint_adjoint,
            per_sample=True,
            rtol=1e-10,
            atol=1e-12,
            adjoint_rtol=1e-10,
            adjoint_atol=1e-12,
        )
    assert seen[0].filename == __file__  # the user's call, not a line inside the library
    with pytest.raises(hn.SolverError, match="backward"):  # what the warning announces
        torch.autograd.grad(t_e.sum(), func.k)


def test_an_adjoint_solve_with_nothing_to_differentiate_does_not_warn():
    import warnings

    func = _Waning(clamp=False)
    func.k.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t_e, _ = _waning_adjoint(func, hn.BacksolveAdjoint(), y0_grad=False)
    assert not t_e.requires_grad


@pytest.mark.parametrize(
    "sensitivity",
    [hn.BacksolveAdjoint(rtol=1e-10, atol=1e-12), hn.InterpolatingAdjoint(rtol=1e-10, atol=1e-12)],
    ids=["backsolve", "interpolating"],
)
def test_the_clamped_field_has_the_closed_form_gradients_by_the_adjoint(sensitivity):
    import warnings

    func = _Waning(clamp=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a field that stays finite
        t_e, y0 = _waning_adjoint(func, sensitivity)
    k, c = func.k.detach().numpy(), func.c.numpy()
    r = c**1.5 - 0.75 / k
    dk, dy0 = torch.autograd.grad(t_e.sum(), (func.k, y0))
    # forward and backward solves at rtol 1e-10 (float64): the gradients to 1e-7, as for direct backpropagation
    np.testing.assert_allclose(dk.numpy(), -0.5 * r ** (-1 / 3) / k**2, rtol=1e-7)
    np.testing.assert_allclose(dy0.reshape(-1).numpy(), r ** (-1 / 3) / k, rtol=1e-7)
