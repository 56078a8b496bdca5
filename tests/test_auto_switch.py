"""The stiffness switch of ``method="auto"``: when it switches to its stiff method, that it stays explicit on
non-stiff problems, that it switches back, and how a failure of its stiff phase is reported."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import scipy_lsoda_steps
from scipy.integrate import solve_ivp
from test_stiff import ROBERTSON_NP, _van_der_pol_np, robertson, van_der_pol

import hybrid_node as hn
from hybrid_node.solvers import auto_switch, linalg
from hybrid_node.solvers.rosenbrock import RosenbrockState

torch.set_num_threads(1)
F64 = torch.float64


def _radau(fun, jac, y0, t1: float, atol: float) -> np.ndarray:
    """scipy's Radau at rtol 1e-12: the end state, a reference far tighter than the tolerances tested."""
    r = solve_ivp(fun, (0.0, t1), np.asarray(y0, dtype=float), method="Radau", rtol=1e-12, atol=atol, jac=jac)
    assert r.success
    return r.y[:, -1]


# (problem, field, numpy field and Jacobian, y0, t1, atol / rtol, the reference's atol)
_STIFF = {
    "robertson": (robertson, ROBERTSON_NP, [1.0, 0.0, 0.0], 1e5, 1e-4, 1e-16),
    "vanderpol-1000": (van_der_pol(1000.0), _van_der_pol_np(1000.0), [2.0, 0.0], 1000.0, 1e-2, 1e-13),
}


@pytest.mark.parametrize("rtol", [1e-3, 1e-8])
@pytest.mark.parametrize("problem", sorted(_STIFF))
def test_switches_within_scipy_lsoda_steps_and_matches_radau(problem, rtol):
    """Robertson to t = 1e5 and Van der Pol (mu = 1000) to t = 1000: auto switches to Rodas5P early, in no
    more attempts than scipy's LSODA takes steps, and ends within the tolerance of Radau at rtol 1e-12.

    Before the stiffness votes counted rejected steps and let a run survive a few steps within the
    stability limit (and before the estimate was weighted as the error test weighs), Robertson at
    rtol 1e-3 ran out of 200,000 Tsit5 attempts and at rtol 1e-8 took 5,219 attempts (LSODA: 137, 903).
    """
    f, (fun, jac), y0, t1, ratio, ref_atol = _STIFF[problem]
    atol = ratio * rtol
    budget = scipy_lsoda_steps(fun, jac, y0, t1, rtol, atol)
    sol = hn.solve(
        f,
        torch.tensor(y0, dtype=F64),
        torch.tensor([0.0, t1], dtype=F64),
        solver=hn.METHODS["auto"].solver(),
        controller=hn.PIDController(rtol=rtol, atol=atol, max_num_steps=2 * budget),
        throw=False,
    )
    assert sol.status == hn.Status.SUCCESS
    assert sol.stats.n_switches >= 1
    assert sol.stats.n_accepted + sol.stats.n_rejected <= budget
    ref = _radau(fun, jac, y0, t1, ref_atol)
    err = np.max(np.abs(sol.ys[-1].numpy() - ref) / (np.abs(ref) + ratio))
    # the global error of a tolerance-controlled solve is a small multiple of rtol (measured 0.01-0.6 rtol)
    assert err < 3 * rtol


def test_robertson_switches_with_bdf_as_the_stiff_method():
    """The same rule with stiff_method="bdf": Robertson at rtol 1e-3 switches once and ends (it ran out of
    200,000 Tsit5 attempts before)."""
    f, (fun, jac), y0, t1, ratio, ref_atol = _STIFF["robertson"]
    rtol = 1e-3
    sol = hn.solve(
        f,
        torch.tensor(y0, dtype=F64),
        torch.tensor([0.0, t1], dtype=F64),
        solver=hn.METHODS["auto"].solver(stiff_method="bdf"),
        controller=hn.PIDController(rtol=rtol, atol=ratio * rtol, max_num_steps=2000),
        throw=False,
    )
    assert sol.status == hn.Status.SUCCESS and sol.stats.n_switches == 1
    ref = _radau(fun, jac, y0, t1, ref_atol)
    err = np.max(np.abs(sol.ys[-1].numpy() - ref) / (np.abs(ref) + ratio))
    # BDF's global error is a larger multiple of rtol than Rodas5P's (measured 0.6 rtol here, up to ~30 rtol
    # at tighter tolerances on this problem)
    assert err < 10 * rtol


def _lotka_volterra(t, y):
    return torch.stack([1.5 * y[..., 0] - y[..., 0] * y[..., 1], -3.0 * y[..., 1] + y[..., 0] * y[..., 1]], -1)


def _oscillator(t, y):
    return torch.stack([y[..., 1], -2500.0 * y[..., 0]], -1)  # omega = 50: fast, but not stiff


def _arenstorf(t, y):
    mu = 0.012277471
    y1, y2, y3, y4 = y.unbind(-1)
    d1 = ((y1 + mu) ** 2 + y2**2) ** 1.5
    d2 = ((y1 - 1 + mu) ** 2 + y2**2) ** 1.5
    return torch.stack(
        [
            y3,
            y4,
            y1 + 2 * y4 - (1 - mu) * (y1 + mu) / d1 - mu * (y1 - 1 + mu) / d2,
            y2 - 2 * y3 - (1 - mu) * y2 / d1 - mu * y2 / d2,
        ],
        -1,
    )


_NON_STIFF = {
    "lotka-volterra": (_lotka_volterra, [1.0, 1.0], 50.0),
    "oscillator": (_oscillator, [1.0, 0.0], 2.0),
    "arenstorf": (_arenstorf, [0.994, 0.0, 0.0, -2.00158510637908252240537862224], 17.0652165601579625588917206249),
}


@pytest.mark.parametrize("atol_ratio", [1.0, 1e-6])
@pytest.mark.parametrize("rtol", [1e-3, 1e-6, 1e-10])
@pytest.mark.parametrize("problem", sorted(_NON_STIFF))
def test_stays_explicit_on_non_stiff_problems(problem, rtol, atol_ratio):
    """No switch and no Jacobian on non-stiff problems, with atol far below rtol too (the stiffness estimate
    is weighted by the error test's weights, which a small atol makes uneven near a zero of a component)."""
    f, y0, t1 = _NON_STIFF[problem]
    sol = hn.solve(
        f,
        torch.tensor(y0, dtype=F64),
        torch.tensor([0.0, t1], dtype=F64),
        solver=hn.METHODS["auto"].solver(),
        controller=hn.PIDController(rtol=rtol, atol=atol_ratio * rtol),
    )
    assert sol.stats.n_switches == 0 and sol.stats.n_jacobian == 0


def _fading_stiffness(t, y):
    """``y' = -lam(t) (y - sin t) + cos t`` with ``lam = 1 + 1e4 exp(-2t)``: stiff at first, not after t ~ 5;
    ``y = sin t`` from ``y(0) = 0``."""
    lam = 1.0 + 1e4 * torch.exp(-2.0 * t)
    return -lam * (y - torch.sin(t)) + torch.cos(t)


@pytest.mark.parametrize("stiff_method", ["rodas5p", "bdf"])
def test_switches_back_when_the_stiffness_fades(stiff_method):
    """Stiff while lam(t) dt is beyond Tsit5's stability region, explicit again once it is not: two switches,
    and the exact solution sin t at the end."""
    y0 = torch.zeros(2, dtype=F64)
    t = torch.tensor([0.0, 20.0], dtype=F64)
    rtol = 1e-6
    sol = hn.solve(
        _fading_stiffness,
        y0,
        t,
        solver=hn.METHODS["auto"].solver(stiff_method=stiff_method),
        controller=hn.PIDController(rtol=rtol, atol=rtol),
    )
    assert sol.stats.n_switches == 2
    # a global error of a few tolerances (atol = rtol here, |y| <= 1)
    assert float((sol.ys[-1] - math.sin(20.0)).abs().max()) < 10 * rtol


def _decay(t, y):
    return -1e4 * y


def test_a_rejected_step_at_the_stability_limit_completes_the_votes():
    """A rejected Tsit5 step beyond the stability limit is a stiff vote: with the run one short, the retry
    state is the stiff method's at (t, y). A step well within the limit is a non-stiff vote, which leaves
    the run as it was (it ends only after several in a row)."""
    solver = hn.METHODS["auto"].solver()
    y = torch.ones(3, dtype=F64)
    start = solver.init(_decay, 0.0, y)
    state = auto_switch.AutoState(False, start.inner, auto_switch._MAX_STIFF_STEPS - 1)
    unstable = solver.step(_decay, 0.0, y, state, 1e-3)  # dt * lambda = 10, beyond Tsit5's 3.5
    retry = solver.reject(_decay, 0.0, y, state, unstable)
    assert retry.stiff and isinstance(retry.inner, RosenbrockState)
    stable = solver.step(_decay, 0.0, y, state, 1e-5)  # dt * lambda = 0.1
    kept = solver.next_state(_decay, 1e-5, stable)
    assert not kept.stiff and (kept.votes, kept.misses) == (auto_switch._MAX_STIFF_STEPS - 1, 1)


def _cubic_decay(t, y):
    return -1e3 * y**3


@dataclasses.dataclass(frozen=True, repr=False)
class _StiffFirst(hn.AutoSwitch):
    """auto that starts in its stiff phase (BDF), to reach BDF's corrector at ``min_step`` directly."""

    def init(self, f, t0, y0):
        return auto_switch.AutoState(True, self._stiff_solver().init(f, t0, y0))


def test_a_bdf_corrector_failure_at_min_step_is_named():
    """In auto's BDF phase a corrector that cannot converge at min_step ends the solve as NEWTON_FAILED,
    as bdf's own does: the loop's report read ``converged`` from auto's step, which did not pass BDF's on,
    and called the finite state non-finite."""
    # at h = 0.5 from y = 1 the corrector of y' = -1e3 y^3 does not converge (h |J| = 1500, and the
    # solution falls to ~0.04 within the step, where the kept Jacobian is 600x too large)
    sol = hn.solve(
        _cubic_decay,
        torch.tensor([1.0], dtype=F64),
        torch.tensor([0.0, 10.0], dtype=F64),
        solver=_StiffFirst(stiff_method="bdf"),
        controller=hn.PIDController(min_step=0.5),
        throw=False,
    )
    assert sol.status is hn.Status.NEWTON_FAILED
    with pytest.raises(hn.SolverError, match=r"corrector of 'auto' did not converge at min_step=0.5"):
        hn.solve(
            _cubic_decay,
            torch.tensor([1.0], dtype=F64),
            torch.tensor([0.0, 10.0], dtype=F64),
            solver=_StiffFirst(stiff_method="bdf"),
            controller=hn.PIDController(min_step=0.5),
        )
    # bdf alone on the same solve: the same status
    alone = hn.solve(
        _cubic_decay,
        torch.tensor([1.0], dtype=F64),
        torch.tensor([0.0, 10.0], dtype=F64),
        solver=hn.METHODS["bdf"].solver(),
        controller=hn.PIDController(min_step=0.5),
        throw=False,
    )
    assert alone.status is hn.Status.NEWTON_FAILED


@pytest.mark.parametrize(("how", "differences"), [("autodiff", False), ("fd", True)])
def test_time_derivative_reaches_the_stiff_phase(monkeypatch, how, differences):
    """``time_derivative`` is Rodas5P's in auto's stiff phase: with "fd" every stiff state takes df/dt by
    the forward difference, with "autodiff" none does (autograd follows this field). Either way the
    solution is sin t within a few tolerances."""
    calls = []
    difference = linalg._difference_time_derivative

    def counted(*args):
        calls.append(args[1])
        return difference(*args)

    monkeypatch.setattr(linalg, "_difference_time_derivative", counted)
    y0 = torch.zeros(2, dtype=F64)
    t = torch.tensor([0.0, 20.0], dtype=F64)
    rtol = 1e-6
    ys = hn.odeint(_fading_stiffness, y0, t, method="auto", rtol=rtol, atol=rtol, options={"time_derivative": how})
    # a global error of a few tolerances (atol = rtol here, |y| <= 1), as for the default above
    assert float((ys[-1] - math.sin(20.0)).abs().max()) < 10 * rtol
    # the stiff phase (the first ~5 time units) takes several Rodas5P steps, each from a state with df/dt
    assert (len(calls) > 5) if differences else not calls
    assert hn.AutoSwitch(time_derivative=how)._stiff_solver().time_derivative == how


@pytest.mark.parametrize("stiff_method", ["rodas5p", "bdf"])
def test_time_derivative_typo_is_refused(stiff_method):
    with pytest.raises(ValueError, match="time_derivative must be one of"):
        hn.AutoSwitch(stiff_method=stiff_method, time_derivative="forward")
    with pytest.raises(ValueError, match="time_derivative must be one of"):
        hn.odeint(
            _fading_stiffness,
            torch.zeros(1, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="auto",
            options={"stiff_method": stiff_method, "time_derivative": "ad"},
        )
