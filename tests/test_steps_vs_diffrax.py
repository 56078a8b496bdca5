"""``hn.solve`` with ``PIDController(shrink_after_accept=False)`` takes diffrax's steps.

diffrax 0.7.2's ``PIDController`` is an independent implementation of the same rule: the RMS of
``err / (atol + rtol * max(|y0|, |y1|))``, the factor ``safety * ratio^(-1/5)`` clipped to [1, 10]
after an accepted step and to [0.2, safety] after a rejected one. Given the same first step, the two
accept and reject the same attempts and end on the same values to rounding (Tsit5 and Dopri5, a
nonlinear oscillator, Lotka-Volterra and a batch of MLP fields; rtol 1e-3 to 1e-8 in
``docs/benchmarks/steps_vs_diffrax.md``). The differences that remain are deliberate and are
checked here so that the page stays true: diffrax's ``dt0=None`` starts with 0.01 (its heuristic is
Hairer's, ours, but ``diffeqsolve`` never reaches it), and a step that would end within 1% before
``t1`` is stretched to end there (one step fewer than diffrax).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hybrid_node as hn
from hybrid_node.controllers import initial_step, rms_norm

jax = pytest.importorskip("jax", reason="jax (for diffrax, the peer) is not installed")
diffrax = pytest.importorskip("diffrax", reason="diffrax (the peer) is not installed")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

F64 = torch.float64
FIRST = 0.01  # diffrax's first step with dt0=None (see test_diffrax_dt0_none_starts_at_a_hundredth)

_RNG = np.random.default_rng(0)
W1, B1 = _RNG.standard_normal((2, 16)) * 0.8, _RNG.standard_normal(16) * 0.3
W2, B2 = _RNG.standard_normal((16, 2)) * 0.8, _RNG.standard_normal(2) * 0.1
MLP_Y0 = _RNG.standard_normal((4, 2))


def van_der_pol(t, y, xp):
    return xp.stack([y[1], 2.0 * (1 - y[0] ** 2) * y[1] - y[0]])


def lotka_volterra(t, y, xp):
    return xp.stack([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])


def mlp(t, y, xp):
    """A batch of four 2-D states through one fixed random tanh MLP."""
    if xp is torch:
        return torch.tanh(y @ torch.as_tensor(W1) + torch.as_tensor(B1)) @ torch.as_tensor(W2) + torch.as_tensor(B2)
    return jnp.tanh(y @ W1 + B1) @ W2 + B2


PROBLEMS = {
    "van_der_pol": (van_der_pol, np.array([2.0, 0.0]), 10.0),
    "lotka_volterra": (lotka_volterra, np.array([1.0, 1.0]), 10.0),
    "mlp": (mlp, MLP_Y0, 5.0),
}
SOLVERS = {"tsit5": (hn.Tsit5, diffrax.Tsit5), "dopri5": (hn.Dopri5, diffrax.Dopri5)}


class _Logged:
    """The field, recording where every accepted step ends (torchdiffeq's step callbacks)."""

    def __init__(self, f):
        self.f = f
        self.ends: list[float] = []

    def __call__(self, t, y):
        return self.f(t, y, torch)

    def callback_accept_step(self, t0, y0, dt):
        self.ends.append(float(t0 + dt))


def _ours(name, solver, rtol, t1=None, **settings):
    f, y0, end = PROBLEMS[name]
    field = _Logged(f)
    controller = hn.PIDController(rtol=rtol, atol=rtol * 1e-3, shrink_after_accept=False, **settings)
    t = torch.tensor([0.0, end if t1 is None else t1], dtype=F64)
    sol = hn.solve(field, torch.tensor(y0), t, solver=SOLVERS[solver][0](), controller=controller)
    return sol, np.array(field.ends)


def _diffrax(name, solver, rtol, t1=None, dt0=FIRST, **gains):
    f, y0, end = PROBLEMS[name]
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: f(t, y, jnp)),
        SOLVERS[solver][1](),
        0.0,
        end if t1 is None else t1,
        dt0,
        jnp.asarray(y0),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol * 1e-3, **gains),
        saveat=diffrax.SaveAt(steps=True),
        max_steps=1024,
    )
    ts = np.asarray(sol.ts)
    finite = np.isfinite(ts)
    return sol, ts[finite], np.asarray(sol.ys)[finite][-1]


@pytest.mark.parametrize(
    "name, solver, rtol",
    [
        ("van_der_pol", "tsit5", 1e-6),
        ("van_der_pol", "dopri5", 1e-4),
        ("lotka_volterra", "tsit5", 1e-3),
        ("mlp", "dopri5", 1e-5),
    ],
)
def test_same_steps_as_diffrax(name, solver, rtol):
    ours, ends = _ours(name, solver, rtol, first_step=FIRST)
    theirs, their_ends, their_y1 = _diffrax(name, solver, rtol)
    assert (ours.stats.n_accepted, ours.stats.n_rejected) == (
        int(theirs.stats["num_accepted_steps"]),
        int(theirs.stats["num_rejected_steps"]),
    )
    # every accepted step ends at the same time, to the rounding of the error estimate: it is a sum of
    # terms dt * k of the size of dt |y| that cancel down to about rtol |y| or less, so its last bits
    # differ with the order of summation (after the first step of Lotka-Volterra at rtol 1e-7 it is 1e-10
    # of its terms, 4e-6 and 7e-7 off a 40-digit value in the two libraries); measured <= 4.5e-9 relative
    # on these cases, where a change of the rule (safety, exponent, clip bounds) moves steps by 1e-3 and more
    np.testing.assert_allclose(ends, their_ends, rtol=1e-7, atol=0)
    # the same steps, so the same values to rounding (measured <= 1.1e-11 on these cases)
    np.testing.assert_allclose(ours.ys[-1].numpy(), their_y1, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["van_der_pol", "lotka_volterra", "mlp"])
@pytest.mark.parametrize("rtol", [1e-3, 1e-6])
def test_initial_step_heuristic_is_diffrax(name, rtol):
    from diffrax._step_size_controller.pid import _select_initial_step  # what dt0=None would run on an ODETerm

    f, y0, _ = PROBLEMS[name]
    y = torch.tensor(y0)
    ours = initial_step(lambda t, x: f(t, x, torch), 0.0, y, f(0.0, y, torch), 4, rtol, rtol * 1e-3, rms_norm)
    solver = diffrax.Tsit5()
    term = diffrax.ODETerm(lambda t, x, args: f(t, x, jnp))
    theirs = float(
        _select_initial_step(term, 0.0, jnp.asarray(y0), None, solver.func, 5, rtol, rtol * 1e-3, diffrax_rms)
    )
    # the same formula on the same two evaluations: equal to rounding (measured <= 6e-15 relative)
    assert ours == pytest.approx(theirs, rel=1e-12)


def diffrax_rms(x):
    return jnp.sqrt(jnp.mean(x**2))


def test_diffrax_dt0_none_starts_at_a_hundredth():
    # diffeqsolve wraps an ODETerm in a WrapTerm before the controller's init, whose heuristic returns
    # 0.01 for any term that is not an ODETerm: whatever the problem, dt0=None starts with 0.01 in
    # diffrax 0.7.2, while hn.solve starts with the heuristic's step (7.3e-2 here); the page says so
    _, ts, _ = _diffrax("mlp", "tsit5", 1e-3, dt0=None)
    ours, ends = _ours("mlp", "tsit5", 1e-3)
    assert ts[0] == pytest.approx(FIRST, rel=1e-15)
    assert ends[0] == pytest.approx(0.0734, rel=1e-3)


def test_last_step_stretched_where_diffrax_takes_a_sliver():
    # diffrax's steps on a longer interval; t1 0.5% past the end of one of them: diffrax takes that
    # step and a sliver of 0.005 h, the step here is stretched to t1 (Hairer's 1% rule), one fewer
    _, ts, _ = _diffrax("lotka_volterra", "tsit5", 1e-6, t1=20.0)
    k = 40
    t1 = float(ts[k] + 1.005 * (ts[k + 1] - ts[k]))
    ours, _ = _ours("lotka_volterra", "tsit5", 1e-6, t1=t1, first_step=FIRST)
    theirs, _, their_y1 = _diffrax("lotka_volterra", "tsit5", 1e-6, t1=t1)
    assert int(theirs.stats["num_accepted_steps"]) == k + 3  # the k + 2 steps to ts[k + 1], then the sliver
    assert ours.stats.n_accepted == k + 2
    assert ours.stats.n_rejected == int(theirs.stats["num_rejected_steps"])
    # different last steps, each within the tolerance: apart by about rtol (4.3e-8 measured)
    np.testing.assert_allclose(ours.ys[-1].numpy(), their_y1, rtol=0, atol=1e-6)


def _counts(field, y0, t1, rtol, gains=None, norm=None):
    """(accepted, rejected) of hn.solve and of diffrax on ``field(t, y, xp)`` from the same first step."""
    gains = gains or {}
    as_torch = tuple(torch.tensor(p) for p in y0) if isinstance(y0, tuple) else torch.tensor(y0)
    as_jax = tuple(jnp.asarray(p) for p in y0) if isinstance(y0, tuple) else jnp.asarray(y0)
    extra = {} if norm is None else {"norm": norm}
    controller = hn.PIDController(rtol, rtol * 1e-3, shrink_after_accept=False, first_step=FIRST, **gains, **extra)
    t = torch.tensor([0.0, t1], dtype=F64)
    ours = hn.solve(lambda t, y: field(t, y, torch), as_torch, t, solver=hn.Tsit5(), controller=controller).stats
    term = diffrax.ODETerm(lambda t, y, args: field(t, y, jnp))
    pid = diffrax.PIDController(rtol=rtol, atol=rtol * 1e-3, **gains)
    theirs = diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, t1, FIRST, as_jax, stepsize_controller=pid).stats
    return (ours.n_accepted, ours.n_rejected), (int(theirs["num_accepted_steps"]), int(theirs["num_rejected_steps"]))


def _oscillator_beside_slow_parts(t, y, xp):
    return xp.stack([y[0][1], -y[0][0]]), -0.01 * y[1]


def test_tuple_state_norm_is_the_largest_part_rms():
    # diffrax's RMS runs over all leaves together; here each part's RMS is taken and the largest
    # decides, so 20 slow elements beside an oscillator do not dilute its error: more steps here
    y0 = (np.array([1.0, 0.0]), np.ones(20))
    ours, theirs = _counts(_oscillator_beside_slow_parts, y0, 20.0, 1e-6)
    assert ours[0] > theirs[0] + 10  # 87 against 66 measured

    # with the RMS over all parts as the norm, diffrax's steps exactly
    def whole_rms(parts):
        return rms_norm(torch.cat([p.reshape(-1) for p in parts]))

    ours, theirs = _counts(_oscillator_beside_slow_parts, y0, 20.0, 1e-6, norm=whole_rms)
    assert ours == theirs


def test_zero_error_keeps_the_floored_ratio_in_the_pi_history():
    # y' = 0: every error estimate is exactly 0. The ratio is floored at 1e-10 and that is the history
    # a PI controller's next factor sees (0.9 * 1e-10^(-0.14) * 1e-10^(0.06) = 5.7), where diffrax
    # records 1 (and grows by factormax = 10); the I controller has no history and the two agree
    def at_rest(t, y, xp):
        return 0.0 * y

    ours, theirs = _counts(at_rest, np.array([1.0]), 1e5, 1e-6)
    assert ours == theirs  # 8 / 0
    ours, theirs = _counts(at_rest, np.array([1.0]), 1e5, 1e-6, gains={"pcoeff": 0.3, "icoeff": 0.4})
    assert ours == (10, 0) and theirs == (8, 0)


def main() -> None:
    """Print the tables of docs/benchmarks/steps_vs_diffrax.md: accepted/rejected steps of both and the
    largest difference of the end values, per problem, method and rtol (atol = rtol / 1000)."""
    cases = {
        "I controller, first step 0.01 on both": ({}, FIRST),
        "I controller, dt0=None / first_step=None": ({}, None),
        "PI controller (pcoeff=0.3, icoeff=0.4), first step 0.01": ({"pcoeff": 0.3, "icoeff": 0.4}, FIRST),
    }
    for title, (gains, first) in cases.items():
        print(f"\n{title}\n\n| problem | method | rtol | hybrid_node acc/rej | diffrax acc/rej | max abs diff y(t1) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name in PROBLEMS:
            for solver in SOLVERS:
                for rtol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
                    ours, _ = _ours(name, solver, rtol, first_step=first, **gains)
                    theirs, _, their_y1 = _diffrax(name, solver, rtol, dt0=first, **gains)
                    ours_n = f"{ours.stats.n_accepted} / {ours.stats.n_rejected}"
                    theirs_n = f"{int(theirs.stats['num_accepted_steps'])} / {int(theirs.stats['num_rejected_steps'])}"
                    diff = float(np.max(np.abs(ours.ys[-1].numpy() - their_y1)))
                    print(f"| {name} | {solver} | {rtol:.0e} | {ours_n} | {theirs_n} | {diff:.1e} |")


if __name__ == "__main__":
    main()
