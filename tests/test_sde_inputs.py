"""sdeint's input checks: bad input raises a ValueError that names the input and how to fix it (or a warning)."""

from __future__ import annotations

import warnings

import pytest
import torch
from _sde_problems import GBM, OU, NeuralSDE

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("solve", [hn.sdeint, hn.sdeint_adjoint])
def test_non_finite_times_are_refused(bad, solve):
    # NaN passed the increasing check (and failed later in the Brownian motion's constructor with a
    # message about t0 < t1); an infinite end time took no step and returned y0 as y(inf).
    with pytest.raises(ValueError, match="ts must be finite"):
        solve(GBM(), torch.ones(2, 1), [0.0, bad], method="euler")


@pytest.mark.parametrize("solve", [hn.sdeint, hn.sdeint_adjoint])
def test_non_finite_initial_state_is_refused(solve):
    # It ran the whole solve on NaN, then failed at ts[-1] blaming the vector field.
    y0 = torch.ones(3, 2)
    y0[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"y0 has NaN or infinite entries \(batch rows \[1\]\)"):
        solve(GBM(), y0, [0.0, 1.0], method="euler", dt=0.1)


def test_adaptive_euler_with_multiplicative_noise_warns_as_torchsde_does():
    # Step doubling does not converge for Euler-Maruyama with non-additive noise (torchsde warns too).
    with pytest.warns(UserWarning, match="not guaranteed to converge"):
        hn.sdeint(GBM(), torch.ones(2, 1), [0.0, 1.0], method="euler", adaptive=True, rtol=1e-2, atol=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hn.sdeint(OU(), torch.ones(2, 1), [0.0, 1.0], method="euler", adaptive=True, rtol=1e-2, atol=1e-2)
        hn.sdeint(GBM(), torch.ones(2, 1), [0.0, 1.0], method="euler", dt=0.1)
        hn.sdeint(GBM(), torch.ones(2, 1), [0.0, 1.0], method="milstein", adaptive=True, rtol=1e-2, atol=1e-2)


def test_extra_solver_state_of_the_wrong_layout_is_refused():
    sde = NeuralSDE("general", "stratonovich")
    y0 = torch.randn(4, 3)
    # reversible_heun's state is (f, g, z): one tensor failed inside the step with "not enough values to
    # unpack"; a state given to a method without one (euler_heun) was silently ignored.
    with pytest.raises(ValueError, match=r"shapes \[\(4, 3\), \(4, 3, 2\), \(4, 3\)\], got \[\(4, 3\)\]"):
        hn.sdeint(sde, y0, [0.0, 1.0], method="reversible_heun", extra_solver_state=(y0,))
    with pytest.raises(ValueError, match="for method 'euler_heun'"):
        hn.sdeint(sde, y0, [0.0, 1.0], method="euler_heun", extra_solver_state=(y0,))
    _, state = hn.sdeint(sde, y0, [0.0, 0.5], method="reversible_heun", dt=0.1, extra=True)
    ys = hn.sdeint(sde, y0, [0.5, 1.0], method="reversible_heun", dt=0.1, extra_solver_state=state)
    assert ys.shape == (2, 4, 3)


def test_a_torchsde_logqp_brownian_motion_gets_a_hint():
    # torchsde's logqp with diagonal noise adds a state, and a noise channel, for the KL term.
    sde = GBM()
    sde.h = lambda t, y: 0.2 * y
    bm = hn.BrownianInterval(0.0, 1.0, (2, 2), levy_area_approximation="space-time")
    with pytest.raises(ValueError, match=r"got \(2, 2\) \(torchsde's logqp wants one channel more"):
        hn.sdeint(sde, torch.ones(2, 1), [0.0, 1.0], bm=bm, logqp=True)
    with pytest.raises(ValueError, match=r"got \(2, 2\)\.$"):  # no hint without logqp
        hn.sdeint(sde, torch.ones(2, 1), [0.0, 1.0], bm=bm)


@pytest.mark.parametrize("solve", [hn.sdeint, hn.sdeint_adjoint])
def test_a_single_output_time_returns_the_initial_extra_state(solve):
    # torchsde returns the solver's extra state at ts[0] (reversible_heun: (f, g, z) of y0); it was None.
    sde = NeuralSDE("general", "stratonovich")
    y0 = torch.randn(4, 3)
    ys, state = solve(sde, y0, [0.0], method="reversible_heun", extra=True)
    assert torch.equal(ys[0], y0)
    f, g = sde.f(torch.tensor(0.0), y0), sde.g(torch.tensor(0.0), y0)
    for got, want in zip(state, (f, g, y0), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert solve(sde, y0, [0.0], method="midpoint", extra=True)[1] == ()
