"""The shared step decision of hybrid_node.loop.core: one formula, identical on floats and tensors.

The host loop decides on Python floats and the device-resident loop on 0-d float64 tensors; both
must take the very same steps, so every decision function must give bit-identical results in both
namespaces. The per-sample loop runs the same functions on (batch,) tensors: elementwise, each
element must equal the scalar decision.
"""

import itertools
import math
import random

import pytest
import torch

import hybrid_node as hn
from hybrid_node.controllers import PIDController
from hybrid_node.loop import core

CONTROL = core.StepControl.of(PIDController(pcoeff=0.2, icoeff=0.5, dcoeff=0.1, max_step=0.7), 4, torch.float64)
CLAMPED = core.StepControl.of(PIDController(min_step=1e-4, max_step=0.7), 4, torch.float64)  # torchdiffeq's min_step


def _f64(x):
    return torch.tensor(x, dtype=torch.float64)


def _same(a, b) -> bool:
    """Float ``a`` equals tensor ``b`` exactly (NaN equal to NaN)."""
    b = float(b) if not isinstance(b, bool) else b
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b


def _cases(n=300, seed=0):
    rng = random.Random(seed)
    specials = [0.0, 1.0, 1e-10, 0.5, 2.0, math.inf, math.nan]
    for _ in range(n):
        ratio = rng.choice(specials) if rng.random() < 0.2 else 10 ** rng.uniform(-6, 3)
        yield rng.uniform(-5, 5), 10 ** rng.uniform(-8, 0), ratio, rng.random() < 0.5, 10 ** rng.uniform(-3, 1)


def test_propose_is_bit_identical_on_floats_and_tensors():
    for _t, dt, ratio, accepted, r1 in _cases():
        want = core.propose(core.FLOAT, CONTROL, dt, ratio, accepted, r1, 0.3)
        got = core.propose(core.TENSOR, CONTROL, _f64(dt), _f64(ratio), torch.tensor(accepted), _f64(r1), _f64(0.3))
        assert all(_same(a, b) for a, b in zip(want, got)), (dt, ratio, accepted, r1)


def test_landing_floor_settle_precheck_and_emission_are_bit_identical():
    for t, dt, *_ in _cases(seed=1):
        stop = t + dt * random.Random(int(1e6 * dt)).uniform(0.5, 1.5)
        lands, step, t1 = core.landing(core.FLOAT, t, dt, stop, CONTROL.max_step)
        lands_t, step_t, t1_t = core.landing(core.TENSOR, _f64(t), _f64(dt), _f64(stop), CONTROL.max_step)
        assert (lands, step, t1) == (bool(lands_t), float(step_t), float(t1_t))
        floor = core.step_floor(core.FLOAT, t, 1e-9)
        assert floor == float(core.step_floor(core.TENSOR, _f64(t), 1e-9))
        for c, done, nonfinite in itertools.product((CONTROL, CLAMPED), (False, True), (False, True)):
            for step_dt in (dt, 2 * dt, c.min_step):
                want = core.settle(core.FLOAT, c, done, t, dt, step_dt, nonfinite)
                got = core.settle(
                    core.TENSOR, c, torch.tensor(done), _f64(t), _f64(dt), _f64(step_dt), torch.tensor(nonfinite)
                )
                assert want == (float(got[0]), int(got[1]))
                for ratio in (0.5, 2.0, math.inf, math.nan):
                    assert core.accepts(core.FLOAT, c, ratio, step_dt) == bool(
                        core.accepts(core.TENSOR, c, _f64(ratio), _f64(step_dt))
                    )
        n_attempts = torch.tensor(5)  # the device loop counts attempts in an int64 tensor
        assert core.precheck(core.FLOAT, CONTROL, 5, t, dt) == int(
            core.precheck(core.TENSOR, CONTROL, n_attempts, _f64(t), _f64(dt))
        )
        for ts in (t, t + 0.5 * step, t1, t1 + 1e-3):
            within, at_end, theta = core.emission(core.FLOAT, ts, t, t1)
            within_t, at_end_t, theta_t = core.emission(core.TENSOR, _f64(ts), _f64(t), _f64(t1))
            assert (within, at_end, theta) == (bool(within_t), bool(at_end_t), float(theta_t))


def test_per_sample_decisions_equal_the_scalar_ones_elementwise():
    # vectorised pow may round differently from the scalar one by an ulp: equal to 2 eps, not bitwise
    cases = list(_cases(64, seed=2))
    dt, ratio, accepted, r1 = (
        _f64([c[1] for c in cases]),
        _f64([c[2] for c in cases]),
        torch.tensor([c[3] for c in cases]),
        _f64([c[4] for c in cases]),
    )
    batch = core.propose(core.TENSOR, CONTROL, dt, ratio, accepted, r1, torch.full_like(dt, 0.3))
    for i, (_, d, r, a, q) in enumerate(cases):
        scalar = core.propose(core.FLOAT, CONTROL, d, r, a, q, 0.3)
        for s, b in zip(scalar, batch):
            assert (math.isnan(s) and math.isnan(float(b[i]))) or float(b[i]) == pytest.approx(s, rel=4e-16, abs=0)


@pytest.mark.parametrize("ratio", [0.0, 1e-3, 0.5, 0.99])
def test_an_accepted_step_grows_at_most_by_ifactor(ratio):
    dt, _, _ = core.propose(core.FLOAT, CONTROL, 0.01, ratio, True, 1.0, 1.0)
    assert 0.01 * CONTROL.dfactor <= dt <= 0.01 * CONTROL.ifactor


@pytest.mark.parametrize("ratio", [1.5, 10.0, 1e6, math.inf, math.nan])
def test_a_rejected_step_never_grows_and_a_nonfinite_ratio_shrinks_by_dfactor(ratio):
    dt, r1, r2 = core.propose(core.FLOAT, CONTROL, 0.01, ratio, False, 0.4, 0.2)
    assert dt <= 0.01 and (r1, r2) == (0.4, 0.2)  # a rejection leaves the controller's memory alone
    if not math.isfinite(ratio):
        assert dt == pytest.approx(0.01 * CONTROL.dfactor)


def test_landing_stretches_a_step_that_would_leave_a_sliver():
    lands, step, t1 = core.landing(core.FLOAT, 0.0, 0.995, 1.0, math.inf)
    assert lands and step == 1.0 and t1 == 1.0
    lands, step, t1 = core.landing(core.FLOAT, 0.0, 0.98, 1.0, math.inf)
    assert not lands and step == 0.98


def test_min_step_clamps_and_accepts_instead_of_failing():
    # torchdiffeq's meaning of min_step: the proposal is clamped up to it and a step of at most min_step is
    # accepted whatever its (finite) error; without min_step a proposal below the floor fails
    assert not core.accepts(core.FLOAT, CONTROL, 5.0, 1e-4)
    assert core.accepts(core.FLOAT, CLAMPED, 5.0, 1e-4) and core.accepts(core.FLOAT, CLAMPED, 5.0, 5e-5)
    assert not core.accepts(core.FLOAT, CLAMPED, 5.0, 2e-4)  # above min_step the error test decides
    assert not core.accepts(core.FLOAT, CLAMPED, math.nan, 1e-4)  # a non-finite step is never accepted
    assert core.settle(core.FLOAT, CLAMPED, False, 0.5, 1e-9, 2e-4, False) == (1e-4, core.RUNNING)
    assert core.settle(core.FLOAT, CONTROL, False, 0.5, 1e-17, 2e-4, False) == (1e-17, core.STEP_UNDERFLOW)
    # a non-finite rejection at min_step cannot shrink further: NONFINITE; above it, retry at min_step
    assert core.settle(core.FLOAT, CLAMPED, False, 0.5, 2e-5, 1e-4, True) == (1e-4, core.NONFINITE)
    assert core.settle(core.FLOAT, CLAMPED, False, 0.5, 2e-5, 1e-3, True) == (1e-4, core.RUNNING)
    # a min_step below the resolution at a large |t| still fails as underflow
    assert core.settle(core.FLOAT, CLAMPED, False, 1e13, 1e-9, 1e-3, False)[1] == core.STEP_UNDERFLOW


@pytest.mark.parametrize("coeffs", [(0.0, 0.1, 1.0), (0.7, 0.4, 0.0), (0.2, 0.5, 0.1)])
def test_a_rejected_step_always_shrinks(coeffs):
    """After a rejection only the elementary controller acts: the history terms of a PID controller
    (small earlier ratios raised to negative powers) cannot hold a rejected step at its size."""
    p, i, d = coeffs
    c = core.StepControl.of(PIDController(pcoeff=p, icoeff=i, dcoeff=d), 4, torch.float64)
    for ratio in (1.0 + 1e-9, 1.5, 10.0, 1e6):
        for r1, r2 in itertools.product((1e-8, 1e-3, 1.0, 5.0), repeat=2):
            dt_next, r1_next, r2_next = core.propose(core.FLOAT, c, 0.1, ratio, False, r1, r2)
            assert dt_next <= 0.1 * c.safety
            assert (r1_next, r2_next) == (r1, r2)  # a rejection leaves the history as it is


def test_a_pid_controller_with_a_strong_derivative_term_finishes():
    """icoeff=0.1, dcoeff=1.0 held a rejected step at one size across a jump of the field (20000
    rejections) before rejections used the elementary controller alone."""

    def field(t, y):
        return torch.stack([y[..., 1], -100 * y[..., 0]], -1) * (1 + 10 * (t > 0.5))

    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ctrl = PIDController(rtol=1e-6, atol=1e-8, icoeff=0.1, dcoeff=1.0, max_num_steps=20000)
    sol = hn.solve(field, y0, t, controller=ctrl)
    ref = hn.odeint(field, y0, t, rtol=1e-10, atol=1e-12, options={"step_t": [0.5]})
    assert sol.stats.n_rejected < sol.stats.n_accepted
    torch.testing.assert_close(sol.ys[-1], ref[-1], rtol=0, atol=1e-3)
