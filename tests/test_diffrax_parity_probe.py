"""Parity probe against diffrax 0.7.2: the same problem and settings, the same answer (or a known why not).

``tests/test_steps_vs_diffrax.py`` checks the I and PI step rule on Tsit5 and Dopri5. This file probes
what a diffrax user sets besides: the PID gains and clip factors, ``jump_ts``/``step_ts``, ``dtmin`` (and
``force_dtmin``), ``dtmax``, ``max_steps``, ``SaveAt`` (decreasing ``ts``, ``dense=True``, ``t0``/``t1``),
gradients (``RecursiveCheckpointAdjoint`` and ``BacksolveAdjoint``, in y0, a parameter, t0 and t1),
``jax.vmap`` against ``per_sample=True``, the solvers both libraries have, and inputs where the two
part. Each test states what agrees, to what tolerance and why; a difference is asserted as measured,
so that ``docs/solvers.md#parity-probe-against-diffrax`` stays true.

The problem is van der Pol with mu = 2 from (2, 0): it rejects steps at every tolerance used here, so
the rejection branch of both controllers is exercised. float64 throughout; jax's x64 mode is switched on
in this process only, as the other diffrax tests do. Every solve starts from the same first step (0.01,
diffrax's ``dt0``; ``hn.PIDController(first_step=0.01)``), and the controller keeps the steps from
shrinking after an accepted one (``shrink_after_accept=False``, diffrax's rule).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hybrid_node as hn

jax = pytest.importorskip("jax", reason="jax (for diffrax, the peer) is not installed")
diffrax = pytest.importorskip("diffrax", reason="diffrax (the peer) is not installed")
optx = pytest.importorskip("optimistix", reason="optimistix (diffrax's root finders) is not installed")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

F64 = torch.float64
FIRST = 0.01
Y0 = np.array([2.0, 0.0])
MU = 2.0
RTOL = 1e-6


def van_der_pol(t, y, xp, mu=MU):
    return xp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


TERM = diffrax.ODETerm(lambda t, y, args: van_der_pol(t, y, jnp))


class _Logged:
    """The field, recording where accepted steps end and where steps were rejected (step callbacks)."""

    def __init__(self):
        self.ends: list[float] = []
        self.rejected_at: list[float] = []

    def __call__(self, t, y):
        return van_der_pol(t, y, torch)

    def callback_accept_step(self, t0, y0, dt):
        self.ends.append(float(t0 + dt))

    def callback_reject_step(self, t0, y0, dt):
        self.rejected_at.append(float(t0))


def _ours(t=(0.0, 10.0), solver=None, rtol=RTOL, throw=True, jump_t=(), step_t=(), y0=Y0, **settings):
    """hn.solve of van der Pol from FIRST with diffrax's rule; returns the solution and the field's log."""
    field = _Logged()
    settings.setdefault("first_step", FIRST)
    controller = hn.PIDController(rtol=rtol, atol=rtol * 1e-3, shrink_after_accept=False, **settings)
    sol = hn.solve(
        field,
        torch.tensor(y0),
        torch.tensor(t, dtype=F64),
        solver=hn.Tsit5() if solver is None else solver,
        controller=controller,
        jump_t=jump_t,
        step_t=step_t,
        throw=throw,
    )
    return sol, field


#: diffrax's PIDController settings, its defaults but as arrays: diffrax compiles a solve per value of
#: every Python number it is given (they are static), so arrays let the tests share compiled solves.
#: dtmin = 0 and dtmax = inf clip nothing, as diffrax's None does.
_PID_DEFAULTS = {
    "pcoeff": 0.0,
    "icoeff": 1.0,
    "dcoeff": 0.0,
    "safety": 0.9,
    "factormin": 0.2,
    "factormax": 10.0,
    "dtmin": 0.0,
    "dtmax": np.inf,
}


def _theirs(
    t0=0.0, t1=10.0, solver=None, rtol=RTOL, saveat=None, max_steps=4096, ok=True, term=TERM, y0=Y0, dt0=FIRST,
    **settings,
):  # fmt: skip
    """diffrax.diffeqsolve of the same problem from the same first step (signed as t1 - t0).

    ``ok``: assert that the solve succeeded (it runs with ``throw=False`` so that a failure is a
    result code, as the tests of failures read it, without another compiled solve).
    """
    static = {k: settings.pop(k) for k in ("jump_ts", "step_ts", "force_dtmin") if k in settings}
    numbers = {**_PID_DEFAULTS, "rtol": rtol, "atol": rtol * 1e-3, **settings}
    controller = diffrax.PIDController(**{k: jnp.asarray(v) for k, v in numbers.items()}, **static)
    sol = diffrax.diffeqsolve(
        term,
        diffrax.Tsit5() if solver is None else solver,
        jnp.asarray(t0),
        jnp.asarray(t1),
        jnp.asarray(dt0 if t1 >= t0 else -dt0),
        jnp.asarray(y0),
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(steps=True) if saveat is None else saveat,
        max_steps=max_steps,
        throw=False,
    )
    if ok:
        assert sol.result == diffrax.RESULTS.successful, sol.result
    return sol


def _counts(sol) -> tuple[int, int]:
    if isinstance(sol, hn.Solution):
        return sol.stats.n_accepted, sol.stats.n_rejected
    return int(sol.stats["num_accepted_steps"]), int(sol.stats["num_rejected_steps"])


def _step_ends(sol) -> np.ndarray:
    """The accepted step ends of a ``SaveAt(steps=True)`` solve (its unused rows are inf)."""
    ts = np.asarray(sol.ts)
    return ts[np.isfinite(ts)]


def _last_state(sol) -> np.ndarray:
    ts, ys = np.asarray(sol.ts), np.asarray(sol.ys)
    return ys[np.isfinite(ts)][-1]


# The same steps give the same states to rounding: measured <= 4.9e-14 on the cases below, where a step
# sequence that differs at all moves y(t1) by 1e-9 and more at rtol 1e-6 (the error per step is ~ rtol).
SAME_STEPS_ATOL = 1e-10
# An accepted step's end depends on the rounding of the error estimate (a sum that cancels down to
# ~rtol |y|, summed in another order in each library): measured <= 4.6e-9 relative here; a change of
# the rule (safety, exponent, clip bounds) moves the ends by 1e-3 and more.
SAME_ENDS_RTOL = 1e-7


@pytest.mark.parametrize(
    "ours, theirs",
    [
        # diffrax's factormax / factormin are ifactor / dfactor here; safety the same
        (
            {"safety": 0.8, "ifactor": 5.0, "dfactor": 0.3},
            {"safety": 0.8, "factormax": 5.0, "factormin": 0.3},
        ),
        ({"max_step": 0.05}, {"dtmax": 0.05}),
    ],
    ids=["safety-factors", "dtmax"],
)
def test_clip_settings_take_diffraxs_steps(ours, theirs):
    sol, field = _ours(**ours)
    peer = _theirs(**theirs)
    assert _counts(sol) == _counts(peer)  # 114 / 17 and 206 / 5
    np.testing.assert_allclose(field.ends, _step_ends(peer), rtol=SAME_ENDS_RTOL, atol=0)
    np.testing.assert_allclose(sol.ys[-1].numpy(), _last_state(peer), rtol=0, atol=SAME_STEPS_ATOL)


def test_pid_gains_same_steps_until_the_first_rejection():
    # PID (0.2, 0.3, 0.1): the same formula after an accepted step, so the same steps up to the first
    # rejection; after it hn.PIDController takes the elementary factor safety * r^(-1/k) alone (Hairer
    # and Wanner's advice) where diffrax keeps the history terms: a documented difference
    gains = {"pcoeff": 0.2, "icoeff": 0.3, "dcoeff": 0.1}
    sol, field = _ours(**gains)
    peer = _theirs(**gains)
    first = field.rejected_at[0]
    ours_before = [e for e in field.ends if e <= first]
    theirs_ends = _step_ends(peer)
    assert len(ours_before) >= 5  # the comparison covers many PID proposals (31 measured)
    np.testing.assert_allclose(ours_before, theirs_ends[: len(ours_before)], rtol=SAME_ENDS_RTOL, atol=0)
    assert _counts(sol) == (129, 22) and _counts(peer) == (128, 18)  # as measured: the rejections differ
    # different steps, each within the tolerance: y(10) 3.1e-7 apart, of the order of the global error
    np.testing.assert_allclose(sol.ys[-1].numpy(), _last_state(peer), rtol=0, atol=1e-5)


def test_min_step_is_force_dtmin():
    # rtol 1e-10 asks for steps far below 0.05, so every step is clamped to min_step / dtmin and kept
    # whatever its error: the same 200 steps of 0.05 and the same values. diffrax's first attempt at
    # dtmin is rejected once more (its "at dtmin" flag starts False), ours is accepted at once
    sol, field = _ours(rtol=1e-10, min_step=0.05)
    peer = _theirs(rtol=1e-10, dtmin=0.05)
    np.testing.assert_allclose(field.ends, _step_ends(peer), rtol=1e-12, atol=0)
    assert _counts(sol) == (200, 1) and _counts(peer) == (200, 2)
    assert field.rejected_at == [pytest.approx(8.55)]  # a step grown past 0.05, too long: retried at 0.05
    np.testing.assert_allclose(sol.ys[-1].numpy(), _last_state(peer), rtol=0, atol=SAME_STEPS_ATOL)
    # force_dtmin=False makes diffrax fail at the first step below dtmin; hn.PIDController has no such
    # switch (a positive min_step always clamps; min_step=0 fails only below the time's resolution)
    failed = _theirs(rtol=1e-10, dtmin=0.05, force_dtmin=False, ok=False)
    assert failed.result == diffrax.RESULTS.dt_min_reached


def test_max_num_steps_counts_attempts_like_max_steps():
    # both count every attempt, rejected ones included, over the whole solve: 47 accepted + 3 rejected
    sol, _ = _ours(rtol=1e-8, max_num_steps=50, throw=False)
    peer = _theirs(rtol=1e-8, max_steps=50, ok=False)
    assert peer.result == diffrax.RESULTS.max_steps_reached
    assert sol.status is hn.Status.MAX_STEPS
    assert _counts(sol) == _counts(peer) == (47, 3)
    with pytest.raises(hn.SolverError, match="max_num_steps"):
        _ours(rtol=1e-8, max_num_steps=50)


JUMPS = [1.234, 3.3, 7.77]


@pytest.mark.parametrize("kind", ["step", "jump"])
def test_step_t_and_jump_t_take_diffraxs_steps(kind):
    # the step before each time is clipped to end there (diffrax's jump_ts: one ulp before it, then
    # restarts one ulp after) and the next proposal starts from the clipped step in both
    sol, field = _ours(**{f"{kind}_t": JUMPS})
    peer = _theirs(**{f"{kind}_ts": JUMPS})
    assert _counts(sol) == _counts(peer)  # 106 / 29
    for time in JUMPS:
        assert time in field.ends  # exactly
    # diffrax's ends one ulp off the jump times: the same relative bound covers them
    np.testing.assert_allclose(field.ends, _step_ends(peer), rtol=SAME_ENDS_RTOL, atol=0)
    np.testing.assert_allclose(sol.ys[-1].numpy(), _last_state(peer), rtol=0, atol=SAME_STEPS_ATOL)


def test_field_with_a_jump_is_exact_in_both():
    # y' = 1 before t = 1 and -1 from t = 1 on (the field's value at t = 1 is the right limit): y(1) = 1,
    # y(2) = 0 exactly. Both step to the jump and restart after it, so each is exact to rounding; a
    # step over the jump (step_t without the restart would see the right limit at its last stage)
    # leaves an error of the order of the tolerance
    def jumping(t, y):
        return torch.where(torch.as_tensor(t) >= 1.0, -1.0, 1.0) * torch.ones_like(y)

    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    ctrl = hn.PIDController(rtol=1e-6, atol=1e-9)
    ours = hn.solve(jumping, torch.zeros(1, dtype=F64), t, solver=hn.Tsit5(), controller=ctrl, jump_t=[1.0])
    peer = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: jnp.where(t >= 1.0, -1.0, 1.0) * jnp.ones_like(y)),
        diffrax.Tsit5(),
        0.0,
        2.0,
        None,
        jnp.zeros(1),
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-9, jump_ts=[1.0]),
        saveat=diffrax.SaveAt(ts=[0.0, 1.0, 2.0]),
    )
    exact = np.array([[0.0], [1.0], [0.0]])
    np.testing.assert_allclose(ours.ys.numpy(), exact, rtol=0, atol=1e-14)  # 4.4e-16 measured
    np.testing.assert_allclose(np.asarray(peer.ys), exact, rtol=0, atol=1e-14)  # 2.1e-15 measured


def test_step_t_within_one_percent_is_landed_on():
    # step_t every 0.2 on [0, 5]: a proposal ending less than 1% of its size before a step_t is stretched
    # to it here (Hairer's rule, as for t1); diffrax ends short of it and takes a sliver (4e-5 before 3.2)
    # from which its steps grow back by factormax: 3 steps more, y(5) the same to the tolerance
    grid = [float(x) for x in np.linspace(0.0, 5.0, 26)]
    sol, _ = _ours(t=(0.0, 5.0), step_t=grid)
    peer = _theirs(t1=5.0, step_ts=grid)
    assert _counts(sol) == (66, 6) and _counts(peer) == (69, 6)
    np.testing.assert_allclose(sol.ys[-1].numpy(), _last_state(peer), rtol=0, atol=1e-6)  # 4.7e-8 measured


def test_diffrax_jump_ts_a_step_apart_restart_from_an_ulp():
    # jump_ts at 0, 0.2, ..., 2.2 on van der Pol: diffrax's step from just after 2.0 is 0.2 long, as the
    # one before, and ends two ulps before 2.2, one short of where diffrax clips a step before a jump
    # (prevbefore); not taken for a jump step, it is followed by a step to the jump and the restart one
    # ulp after it (8 ulps long), from which the step grows tenfold (factormax) per step: 75 accepted
    # steps against 58 with jump_ts=[2.2] alone. hn.solve lands on every jump_t: 60. diffrax's cost,
    # not a wrong answer (y(5) the same to 7.4e-9, within the tolerance)
    grid = [float(x) for x in np.linspace(0.0, 2.2, 12)]
    sol, _ = _ours(t=(0.0, 5.0), jump_t=grid)
    peer = _theirs(t1=5.0, jump_ts=grid)
    alone = _theirs(t1=5.0, jump_ts=[2.2, 7.0, 9.0])  # 7 and 9 lie past t1: JUMPS' compiled solve
    assert _counts(sol) == (60, 13) and _counts(peer) == (75, 13) and _counts(alone) == (58, 13)
    ends = _step_ends(peer)
    ulp = np.spacing(2.2)
    k = int(np.searchsorted(ends, 2.2 - 10 * ulp))
    np.testing.assert_array_equal((ends[k : k + 4] - 2.2) / ulp, [-2, 1, 9, 89])
    np.testing.assert_allclose(sol.ys[-1].numpy(), _last_state(peer), rtol=0, atol=1e-6)


def test_per_sample_is_vmapped_diffeqsolve():
    # jax.vmap of diffeqsolve gives every sample its own steps (the while loop runs until all are done);
    # PIDController(per_sample=True) is that: eight van der Pol states, each ending where diffrax's own
    # steps end it, to rounding (measured 1.4e-13; on the batch's common steps, without per_sample, the
    # samples end 4.7e-8 to 2.2e-6 from diffrax's), and where the sample solved alone ends
    rng = np.random.default_rng(1)
    batch = np.stack([rng.uniform(0.5, 2.5, 8), rng.uniform(-1.0, 1.0, 8)], axis=1)

    def one(y0):
        return _theirs(t1=5.0, y0=y0, saveat=diffrax.SaveAt(t1=True), ok=False).ys[-1]

    theirs = np.asarray(jax.vmap(one)(jnp.asarray(batch)))
    controller = hn.PIDController(
        rtol=RTOL, atol=RTOL * 1e-3, first_step=FIRST, shrink_after_accept=False, per_sample=True
    )
    sol = hn.solve(
        lambda t, y: torch.stack([y[:, 1], MU * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], dim=1),
        torch.tensor(batch),
        torch.tensor([0.0, 5.0], dtype=F64),
        solver=hn.Tsit5(),
        controller=controller,
    )
    assert sol.sample_status == (hn.Status.SUCCESS,) * 8
    np.testing.assert_allclose(sol.ys[-1].numpy(), theirs, rtol=0, atol=SAME_STEPS_ATOL)
    first, _ = _ours(t=(0.0, 5.0), y0=batch[0])
    np.testing.assert_allclose(sol.ys[-1, 0].numpy(), first.ys[-1].numpy(), rtol=0, atol=SAME_STEPS_ATOL)


def test_decreasing_save_times():
    # SaveAt(t0=True, ts=..., t1=True) with t1 < t0 against a decreasing t: the same 48 / 7 steps, the
    # states at the five times to rounding (measured 4.9e-14; the interior ones come from the same Tsit5
    # interpolant), and SaveAt(t0=True)'s row, as t[0]'s, y0 itself
    ts = [5.0, 4.3, 3.1, 1.7, 0.0]
    sol, _ = _ours(t=ts)
    peer = _theirs(t0=5.0, t1=0.0, saveat=diffrax.SaveAt(t0=True, ts=ts[1:-1], t1=True))
    assert _counts(sol) == _counts(peer) == (48, 7)
    np.testing.assert_allclose(sol.ys.numpy(), np.asarray(peer.ys), rtol=0, atol=SAME_STEPS_ATOL)
    assert sol.ys[0].tolist() == np.asarray(peer.ys)[0].tolist() == Y0.tolist()


@pytest.mark.parametrize(
    "method, peer, t0, t1, tol",
    [
        # the same steps and the same interpolant: rounding, amplified by the interpolant's
        # coefficients (Tsit5's are up to ~1e2): measured 5.4e-13, 2.1e-14, 3.2e-13
        ("tsit5", diffrax.Tsit5, 0.0, 10.0, 1e-11),
        ("dopri5", diffrax.Dopri5, 0.0, 10.0, 1e-11),
        ("tsit5", diffrax.Tsit5, 5.0, 0.0, 1e-11),
    ],
    ids=["tsit5", "dopri5", "tsit5-backwards"],
)
def test_dense_output_is_diffraxs_evaluate(method, peer, t0, t1, tol):
    dense = hn.odeint_dense(
        lambda t, y: van_der_pol(t, y, torch),
        torch.tensor(Y0),
        t0,
        t1,
        rtol=RTOL,
        atol=RTOL * 1e-3,
        method=method,
        options={"first_step": FIRST},
    )
    theirs = _theirs(t0=t0, t1=t1, solver=peer(), saveat=diffrax.SaveAt(dense=True))
    assert (dense.stats.n_accepted, dense.stats.n_rejected) == _counts(theirs)
    q = np.linspace(t0, t1, 401)
    ours = dense(torch.tensor(q)).numpy()
    np.testing.assert_allclose(ours, np.asarray(jax.vmap(theirs.evaluate)(jnp.asarray(q))), rtol=0, atol=tol)
    # past the end diffrax's evaluate returns NaN; here a ValueError naming the solved interval
    beyond = t1 + 0.1 * (t1 - t0)
    assert np.isnan(np.asarray(theirs.evaluate(jnp.asarray(beyond)))).all()
    with pytest.raises(ValueError, match="outside the solved interval"):
        dense(torch.tensor(beyond, dtype=F64))


class _Mu(torch.nn.Module):
    """van der Pol with a trainable mu, for gradients in y0 and a parameter."""

    def __init__(self):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(MU, dtype=F64))

    def forward(self, t, y):
        return van_der_pol(t, y, torch, self.mu)


SAVE = np.array([0.0, 2.5, 5.0])


def _our_gradient(sensitivity, rtol=RTOL) -> np.ndarray:
    """d/d(y0, mu, t0, t1) of the sum of squares of y(2.5) and y(5) (t0 = 0, t1 = 5)."""
    field, y0 = _Mu(), torch.tensor(Y0, requires_grad=True)
    t = torch.tensor(SAVE, requires_grad=True)
    controller = hn.PIDController(rtol=rtol, atol=rtol * 1e-3, first_step=FIRST, shrink_after_accept=False)
    sol = hn.solve(field, y0, t, solver=hn.Tsit5(), controller=controller, sensitivity=sensitivity)
    grads = torch.autograd.grad((sol.ys[1:] ** 2).sum(), (y0, field.mu, t))
    return np.concatenate([grads[0].numpy(), grads[1].reshape(1).numpy(), grads[2][[0, 2]].numpy()])


def _their_gradient(adjoint, times: bool) -> np.ndarray:
    """As :func:`_our_gradient`; with ``times=False`` the t0 and t1 entries are NaN (not differentiated:
    diffrax's BacksolveAdjoint refuses a tangent in them)."""

    def loss(y0, mu, t0, t1):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, mu: van_der_pol(t, y, jnp, mu)),
            diffrax.Tsit5(),
            t0,
            t1,
            FIRST,
            y0,
            args=mu,
            stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=RTOL * 1e-3),
            saveat=diffrax.SaveAt(ts=jnp.stack([jnp.asarray(SAVE[1]), t1])),
            adjoint=adjoint,
        )
        return (sol.ys**2).sum()

    ends = (jnp.asarray(SAVE[0]), jnp.asarray(SAVE[-1]))
    if times:
        grads = jax.grad(loss, argnums=(0, 1, 2, 3))(jnp.asarray(Y0), jnp.asarray(MU), *ends)
        return np.concatenate([np.asarray(grads[0]), [float(g) for g in grads[1:]]])
    grads = jax.grad(lambda y0, mu: loss(y0, mu, *ends), argnums=(0, 1))(jnp.asarray(Y0), jnp.asarray(MU))
    return np.concatenate([np.asarray(grads[0]), [float(grads[1]), np.nan, np.nan]])


def test_gradients_direct_and_backsolve():
    # entries: d/dy0 (2), d/dmu, d/dt0, d/dt1; the gradient is about 7 in size. Converged gradient: direct
    # backprop at rtol 1e-10 (its error falls with the tolerance: 6.5e-5 at 1e-6, 2.3e-7 at 1e-8)
    exact = _our_gradient(hn.DirectBackprop(), rtol=1e-10)
    # direct backprop is the exact derivative of the discrete solve, with the step sizes held constant in
    # both (diffrax stops their gradient); the same steps, so the same numbers to rounding (1.1e-11)
    direct = _our_gradient(hn.DirectBackprop())
    peer = _their_gradient(diffrax.RecursiveCheckpointAdjoint(), times=True)
    np.testing.assert_allclose(direct[:3], peer[:3], rtol=0, atol=1e-8)
    assert 1e-6 < np.abs(direct - exact)[:3].max() < 1e-3
    # the times: here the continuous solution's derivatives, <dL/dy(t1), f(t1, y(t1))> and -<a(t0), f(t0,
    # y0)> (docs/gradients.md), on every path; diffrax differentiates its discrete solve, whose steps
    # move with t0 and whose last step with t1. Apart by the solve's error: measured 8.3e-5 (t0) and
    # 6.1e-8 (t1), diffrax's 6.1e-5 and 5.7e-8 from the converged values, ours 2.2e-5 and 3.9e-9
    np.testing.assert_allclose(direct[3:], peer[3:], rtol=0, atol=1e-3)
    assert np.abs(direct - exact)[3:].max() < 1e-4 and np.abs(peer - exact)[3:].max() < 1e-3
    # BacksolveAdjoint solves the adjoint equation backwards, reconstructing y: another discretisation in
    # each library, so they agree only to the tolerance's effect on each. Measured at rtol 1e-6: 1.3e-3
    # here, 9.1e-4 in diffrax from the converged gradient, 3.8e-4 apart (at 1e-4: 2.3e-2 and 1.1e-1)
    ours, theirs = _our_gradient(hn.BacksolveAdjoint()), _their_gradient(diffrax.BacksolveAdjoint(), times=False)
    assert np.abs(ours - exact).max() < 5e-3 and np.abs(theirs - exact)[:3].max() < 5e-3
    np.testing.assert_allclose(ours[:3], theirs[:3], rtol=0, atol=5e-3)
    # diffrax's BacksolveAdjoint takes no gradient in t0 or t1; ours does (2e-6 from the converged value)
    with pytest.raises(Exception, match="Unexpected tangent"):
        _their_gradient(diffrax.BacksolveAdjoint(), times=True)


@pytest.mark.parametrize(
    "ours, theirs",
    [(hn.Euler, diffrax.Euler), (hn.Heun2, diffrax.Heun), (hn.Midpoint, diffrax.Midpoint)],
    ids=["euler", "heun", "midpoint"],
)
def test_fixed_steps_same_values(ours, theirs):
    # 1000 steps of 0.01: the same tableau, so the same values to rounding (measured <= 2e-15)
    sol = hn.solve(
        lambda t, y: van_der_pol(t, y, torch),
        torch.tensor(Y0),
        torch.tensor([0.0, 10.0], dtype=F64),
        solver=ours(),
        controller=hn.ConstantStepSize(step_size=0.01),
    )
    peer = diffrax.diffeqsolve(TERM, theirs(), 0.0, 10.0, 0.01, jnp.asarray(Y0), max_steps=2000)
    assert int(peer.stats["num_accepted_steps"]) == sol.stats.n_accepted == 1000
    np.testing.assert_allclose(sol.ys[-1].numpy(), np.asarray(peer.ys)[-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "ours, theirs, rtol, counts",
    [
        (hn.Bosh3, diffrax.Bosh3, 1e-6, (402, 41)),
        # diffrax's adaptive Heun is Heun with embedded Euler, as hn.AdaptiveHeun
        (hn.AdaptiveHeun, diffrax.Heun, 1e-4, (948, 81)),
    ],
    ids=["bosh3", "heun"],
)
def test_adaptive_pairs_take_diffraxs_steps(ours, theirs, rtol, counts):
    sol, _ = _ours(t=(0.0, 5.0), solver=ours(), rtol=rtol)
    peer = _theirs(t1=5.0, solver=theirs(), rtol=rtol, saveat=diffrax.SaveAt(t1=True))
    assert _counts(sol) == _counts(peer) == counts
    np.testing.assert_allclose(sol.ys[-1].numpy(), np.asarray(peer.ys)[-1], rtol=0, atol=SAME_STEPS_ATOL)


def test_kvaerno5_with_newton_takes_diffraxs_steps():
    # With a full Newton root finder (optimistix.Newton, the Jacobian at every iterate) diffrax's Kvaerno5
    # takes ours' steps (unfiltered error estimate, smooth_error=False): 41 / 10. diffrax's default
    # VeryChord keeps the Jacobian of the step's start and rejects a step when the iteration contracts
    # too slowly: 195 / 196 on the same problem, every other attempt rejected
    rtol = 1e-4
    sol, _ = _ours(solver=hn.Kvaerno5(smooth_error=False), rtol=rtol)
    newton = diffrax.Kvaerno5(root_finder=optx.Newton(rtol=rtol, atol=rtol * 1e-3))
    peer = _theirs(solver=newton, rtol=rtol, saveat=diffrax.SaveAt(t1=True))
    assert _counts(sol) == _counts(peer) == (41, 10)
    # the same steps up to the stage equations' solution (each library's Newton stops at its own test):
    # measured 4.2e-4 apart, where each y(10) is 2.2e-3 (here) and 2.6e-3 (diffrax) from the solution
    np.testing.assert_allclose(sol.ys[-1].numpy(), np.asarray(peer.ys)[-1], rtol=0, atol=1e-3)
    chord = _theirs(solver=diffrax.Kvaerno5(), rtol=rtol, saveat=diffrax.SaveAt(t1=True))
    assert _counts(chord) == (195, 196)


def _reference_y10() -> np.ndarray:
    """y(10) by scipy's Radau at rtol 1e-12 (atol 1e-14): 4e-14 from its value at rtol 1e-13."""
    scipy_integrate = pytest.importorskip("scipy.integrate")
    sol = scipy_integrate.solve_ivp(
        lambda t, y: van_der_pol(t, y, np), (0.0, 10.0), Y0, method="Radau", rtol=1e-12, atol=1e-14
    )
    return sol.y[:, -1]


def test_kvaerno5_with_a_tight_newton_tolerance_rejects_more_steps_than_diffraxs_newton(monkeypatch):
    # A documented difference, not a rounding stall. With the Newton test asked for 1e-12 (diffrax's Newton
    # at rtol 1e-12, atol 1e-15) at rtol 1e-4, diffrax takes 44 / 13 steps and we take 72 / 36. Each of our
    # 32 Newton failures is a stage iteration that used all max_newton_iters = 10 iterations while it
    # contracted steadily (rate 0.06 to 0.17): simplified Newton, with one Jacobian per step (Hairer &
    # Wanner IV.8), gains one digit per iteration at rate 0.1, and its first increments measured 3e9 to
    # 1e11 units of the Newton scale, so it needs 11 iterations and more. The step is then rejected and
    # halved, as RADAU5 does after a Newton failure. A stall at rounding would show rates near 1; the
    # round-off floor of the test (10 eps / newton_rtol, RADAU5's floor 10 uround / rtol on its Newton
    # tolerance) never decides here. diffrax's optimistix.Newton takes the Jacobian at every iterate and
    # converges quadratically, within its 10 iterations; with 20 ours takes 44 / 14.
    from hybrid_node.solvers import implicit_common

    results = []
    newton_solve = implicit_common.newton_solve

    def recorded(*args):
        res = newton_solve(*args)
        results.append(res)
        return res

    monkeypatch.setattr(implicit_common, "newton_solve", recorded)
    rtol, newton_rtol, newton_atol = 1e-4, 1e-12, 1e-15
    tight = {"smooth_error": False, "newton_rtol": newton_rtol, "newton_atol": newton_atol}
    sol, _ = _ours(solver=hn.Kvaerno5(**tight), rtol=rtol)
    assert _counts(sol) == (72, 36)
    failed = [res for res in results if not res.converged]
    assert len(failed) == 32
    # every failure ran out of iterations while contracting (measured rates 0.060 to 0.167)
    assert all(res.iters == 10 for res in failed)
    # no rate of any stage came near 1 (at most 0.167 measured): the round-off floor 10 eps / 1e-12 =
    # 2.2e-3 accepts an iterate the rate test would not only where eta > kappa / floor, a rate above 0.82
    assert max(res.theta for res in results) < 0.25

    newton = diffrax.Kvaerno5(root_finder=optx.Newton(rtol=newton_rtol, atol=newton_atol))
    peer = _theirs(solver=newton, rtol=rtol, saveat=diffrax.SaveAt(t1=True))
    assert _counts(peer) == (44, 13)
    more_iters, _ = _ours(solver=hn.Kvaerno5(max_newton_iters=20, **tight), rtol=rtol)
    assert _counts(more_iters) == (44, 14)

    # The extra rejections cost steps, not accuracy: y(10) is 6.4e-5 from the reference on the smaller
    # steps, 1.8e-3 with 20 iterations, 1.9e-3 in diffrax (each measured; the bounds allow 50% more)
    ref = _reference_y10()
    assert np.abs(sol.ys[-1].numpy() - ref).max() < 1e-4
    assert np.abs(more_iters.ys[-1].numpy() - ref).max() < 2.7e-3
    assert np.abs(np.asarray(peer.ys)[-1] - ref).max() < 2.9e-3


def test_dopri8_is_another_method_than_diffraxs():
    # hn.Dopri8 is DOP853 (Hairer's 12-stage pair, c2 = 0.0526...); diffrax's Dopri8 is Prince and
    # Dormand's RK8(7)13M (c2 = 1/18). Different methods: their answers agree to the tolerance, not to
    # rounding (y(10) 4.3e-6 apart at rtol 1e-6; 4.7e-6 here and 4.3e-7 in diffrax from the solution),
    # and the steps differ (43 / 16 here, 42 / 10)
    from hybrid_node.solvers.dopri8 import DOPRI8_TABLEAU

    assert DOPRI8_TABLEAU.c[1] == pytest.approx(0.0526001519587677, rel=1e-12)
    assert float(diffrax.Dopri8.tableau.c[0]) == pytest.approx(1 / 18, rel=1e-15)
    sol, _ = _ours(solver=hn.Dopri8())
    peer = _theirs(solver=diffrax.Dopri8(), saveat=diffrax.SaveAt(t1=True))
    assert _counts(sol) != _counts(peer)
    np.testing.assert_allclose(sol.ys[-1].numpy(), np.asarray(peer.ys)[-1], rtol=0, atol=1e-4)


DECAY = diffrax.ODETerm(lambda t, y, args: -y)


def _decay(t0, t1, saveat, ok=True, rtol=1e-6, **settings):
    """diffrax on y' = -y from 1 (first step 0.1), a failure as a result code."""
    return _theirs(t0, t1, rtol=rtol, saveat=saveat, ok=ok, term=DECAY, y0=np.ones(1), dt0=0.1, **settings)


def _solve_decay(t, **controller):
    return hn.solve(
        lambda t, y: -y,
        torch.ones(1, dtype=F64),
        torch.tensor(t, dtype=F64),
        controller=hn.PIDController(**{"rtol": 1e-6, "atol": 1e-9, **controller}),
    )


def test_empty_interval_and_repeated_times():
    # t0 == t1: diffrax returns y0 at every save time; a repeated time is refused here (torchdiffeq's
    # contract, strictly monotone t) and the message's fix, one time, returns y0
    peer = _decay(1.0, 1.0, diffrax.SaveAt(ts=[1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(np.asarray(peer.ys), [[1.0], [1.0], [1.0]])
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        _solve_decay([1.0, 1.0])
    assert _solve_decay([1.0]).ys.tolist() == [[1.0]]
    # diffrax keeps duplicates inside the interval too; here the same refusal
    peer = _decay(0.0, 1.0, diffrax.SaveAt(ts=[0.5, 0.5, 0.9]))
    assert peer.result == diffrax.RESULTS.successful
    with pytest.raises(ValueError, match="remove duplicates"):
        _solve_decay([0.0, 0.5, 0.5, 1.0])


def test_out_of_order_times_refused_by_both():
    # diffrax: a runtime error "saveat.ts must be increasing or decreasing" (an EquinoxRuntimeError from
    # the compiled solve; throw=False turns it into a result code); here a ValueError before any step
    with pytest.raises(Exception, match="saveat.ts must be increasing or decreasing"):
        _decay(0.0, 1.0, diffrax.SaveAt(ts=[0.5, 0.2, 0.9]), ok=False)
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        _solve_decay([0.0, 0.5, 0.2, 1.0])


def test_inputs_diffrax_runs_and_we_refuse():
    # a NaN end time: diffrax returns successfully, y0 at t = 0 in place of y(NaN): silent garbage
    peer = _decay(0.0, float("nan"), diffrax.SaveAt(t1=True))
    assert peer.result == diffrax.RESULTS.successful and np.asarray(peer.ys).tolist() == [[1.0]]
    with pytest.raises(ValueError, match="NaN or infinite"):
        _solve_decay([0.0, float("nan")])
    # dtmin > dtmax: diffrax takes steps of dtmin (the larger one), past dtmax, without a word
    peer = _decay(0.0, 1.0, diffrax.SaveAt(t1=True), dtmin=0.5, dtmax=0.1)
    assert peer.result == diffrax.RESULTS.successful and int(peer.stats["num_accepted_steps"]) == 2
    with pytest.raises(ValueError, match="min_step <= max_step"):
        _solve_decay([0.0, 1.0], min_step=0.5, max_step=0.1)
    # rtol = atol = 0: no step can pass, diffrax runs until max_steps; here refused with the reason
    peer = _decay(0.0, 1.0, diffrax.SaveAt(t1=True), ok=False, rtol=0.0)
    assert peer.result == diffrax.RESULTS.max_steps_reached
    with pytest.raises(ValueError, match="both 0"):
        _solve_decay([0.0, 1.0], rtol=0.0, atol=0.0)
    # safety above 1 (a rejected step's factor is capped at safety, so its retry may be longer): diffrax
    # runs until max_steps; no weight on the current error (pcoeff + icoeff + dcoeff = 0): diffrax's
    # steps ignore the error (it succeeds, the helper checks); here a ValueError for each
    peer = _decay(0.0, 1.0, diffrax.SaveAt(t1=True), ok=False, safety=2.0)
    assert peer.result == diffrax.RESULTS.max_steps_reached
    with pytest.raises(ValueError, match="safety must be in"):
        _solve_decay([0.0, 1.0], safety=2.0)
    _decay(0.0, 1.0, diffrax.SaveAt(t1=True), icoeff=0.0)
    with pytest.raises(ValueError, match="must be positive"):
        _solve_decay([0.0, 1.0], icoeff=0.0)


def test_first_step_sign():
    # diffrax's dt0 carries the direction (dt0 < 0 for t1 < t0, refused otherwise); first_step is a length
    # here, positive both ways, and a negative one is refused with that explanation
    with pytest.raises(Exception, match=r"\(t1 - t0\) \* dt0 >= 0"):
        diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, args: -y), diffrax.Tsit5(), 0.0, 1.0, -0.1, jnp.ones(1))
    with pytest.raises(ValueError, match="first_step must be positive"):
        _solve_decay([0.0, 1.0], first_step=-0.1)
    backwards = _solve_decay([1.0, 0.0], first_step=0.1)
    assert backwards.ys[-1].item() == pytest.approx(np.e, rel=1e-6)
