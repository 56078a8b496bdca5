"""``scipy_solver`` takes a PIDController's step bounds (first_step, min_step, max_step) in ``hn.solve``
and refuses its PID formula settings, which scipy has no use for (it chooses its own step sizes).

Before, only rtol, atol and max_num_steps of the controller reached scipy: the others were dropped
without a word. Each solve here is compared with scipy's ``solve_ivp`` given the same options, bit for
bit (scipy_solver steps the same solver objects, with the same calls), and also with the solve without
the option, so that a dropped option cannot pass.
"""

import numpy as np
import pytest
import scipy.integrate
import torch

import hybrid_node as hn
from hybrid_node.solvers import scipy_solver

F64 = torch.float64
T = torch.linspace(0.0, 10.0, 21, dtype=F64)
Y0 = torch.tensor([1.0, 0.0], dtype=F64)
RTOL, ATOL = 1e-6, 1e-8


def _field(t, y):
    """A parametrically forced oscillator (time-dependent, so that the steps vary along the solve)."""
    return torch.stack([y[1], -y[0] + 0.1 * torch.cos(torch.as_tensor(t, dtype=F64)) * y[0]])


def _field_np(t, y):
    return np.array([y[1], -y[0] + 0.1 * np.cos(t) * y[0]])


def _ours(solver: hn.ScipySolver, **controller) -> np.ndarray:
    ctrl = hn.PIDController(rtol=RTOL, atol=ATOL, **controller)
    return hn.solve(_field, Y0, T, solver=solver, controller=ctrl).ys.numpy()


def _scipy(method: str, **options) -> np.ndarray:
    ref = scipy.integrate.solve_ivp(
        _field_np, (0.0, 10.0), Y0.numpy(), method=method, t_eval=T.numpy(), rtol=RTOL, atol=ATOL, **options
    )
    assert ref.success
    return ref.y.T


@pytest.mark.parametrize(
    "method, option, value",
    [
        ("RK45", "first_step", 1e-4),
        ("RK45", "max_step", 0.05),
        ("DOP853", "max_step", 0.05),
        ("BDF", "first_step", 1e-5),
        ("LSODA", "max_step", 0.05),
        ("LSODA", "first_step", 1e-5),
    ],
)
def test_the_controllers_step_options_reach_scipy(method, option, value):
    got = _ours(hn.ScipySolver(solver=method), **{option: value})
    want = _scipy(method, **{option: value})
    np.testing.assert_array_equal(got, want)  # the same scipy calls: bit for bit
    # the option changes scipy's steps here, so a solve that dropped it differs
    assert not np.array_equal(got, _scipy(method))


def test_a_max_step_set_on_both_keeps_the_smaller():
    # both are bounds the solve keeps within
    got = _ours(hn.ScipySolver(solver="RK45", max_step=0.5), max_step=0.05)
    np.testing.assert_array_equal(got, _scipy("RK45", max_step=0.05))
    got = _ours(hn.ScipySolver(solver="RK45", max_step=0.05), max_step=0.5)
    np.testing.assert_array_equal(got, _scipy("RK45", max_step=0.05))


class _SpyLSODA(scipy.integrate.LSODA):
    """scipy's LSODA recording the options it is built with."""

    seen: list = []

    def __init__(self, *args, **kwargs):
        _SpyLSODA.seen.append(kwargs)
        super().__init__(*args, **kwargs)


@pytest.mark.parametrize("own, given", [(1e-3, 0.01), (0.01, 1e-3)])
def test_a_min_step_set_on_both_keeps_the_larger(own, given, monkeypatch):
    # the installed scipy's LSODA may ignore min_step (then it is refused, below): the merge is checked
    # on what reaches LSODA, as for a scipy that applies it
    monkeypatch.setattr(scipy_solver, "lsoda_applies_min_step", lambda: True)
    monkeypatch.setattr(scipy.integrate, "LSODA", _SpyLSODA)
    _SpyLSODA.seen.clear()
    got = _ours(hn.ScipySolver(solver="LSODA", min_step=own), min_step=given)
    assert _SpyLSODA.seen[-1]["min_step"] == 0.01
    np.testing.assert_array_equal(got, _scipy("LSODA", min_step=0.01))


def test_min_step_reaches_lsoda_or_is_refused_where_it_is_ignored():
    if scipy_solver.lsoda_applies_min_step():
        got = _ours(hn.ScipySolver(solver="LSODA"), min_step=0.5)
        np.testing.assert_array_equal(got, _scipy("LSODA", min_step=0.5))
        assert not np.array_equal(got, _scipy("LSODA"))
    else:  # scipy 1.17.1: the same steps with or without it (scipy issue gh-25827)
        assert np.array_equal(_scipy("LSODA", min_step=0.5), _scipy("LSODA"))
        with pytest.raises(ValueError, match=r"min_step=0\.5 would be ignored: the installed scipy .*gh-25827"):
            _ours(hn.ScipySolver(solver="LSODA"), min_step=0.5)
        with pytest.raises(ValueError, match="would be ignored"):
            hn.odeint(_field, Y0, T, method="scipy_solver", options={"min_step": 0.5})


class _ClampingLSODA(scipy.integrate.LSODA):
    """LSODA stepped with its steps raised to min_step, as ODEPACK's HMIN does where scipy applies it."""

    def __init__(self, fun, t0, y0, t_bound, min_step=0.0, **kwargs):
        super().__init__(fun, t0, y0, t_bound, **kwargs)
        self.floor = min_step

    def _step_impl(self):
        if self.floor:
            self.t = min(self.t + self.floor, self.t_bound)
            return True, None
        return super()._step_impl()


def test_the_probe_tells_an_applied_min_step(monkeypatch):
    scipy_solver.lsoda_applies_min_step.cache_clear()
    try:
        monkeypatch.setattr(scipy.integrate, "LSODA", _ClampingLSODA)
        assert scipy_solver.lsoda_applies_min_step()
        monkeypatch.undo()
        scipy_solver.lsoda_applies_min_step.cache_clear()
        # the installed scipy's own answer: the steps of its LSODA with and without min_step
        ignored = np.array_equal(_scipy("LSODA", min_step=0.5), _scipy("LSODA"))
        assert scipy_solver.lsoda_applies_min_step() is not ignored
    finally:
        scipy_solver.lsoda_applies_min_step.cache_clear()


def test_the_solvers_own_options_still_apply():
    got = _ours(hn.ScipySolver(solver="RK45", first_step=1e-4, max_step=0.05))
    np.testing.assert_array_equal(got, _scipy("RK45", first_step=1e-4, max_step=0.05))


def test_the_same_first_step_on_both_is_taken():
    got = _ours(hn.ScipySolver(solver="RK45", first_step=1e-4), first_step=torch.tensor(1e-4, dtype=F64))
    np.testing.assert_array_equal(got, _scipy("RK45", first_step=1e-4))


def test_two_first_steps_are_refused_naming_both():
    with pytest.raises(ValueError, match=r"first_step is set twice, 0\.001 on the ScipySolver and 0\.0001 on the"):
        _ours(hn.ScipySolver(solver="RK45", first_step=1e-3), first_step=1e-4)


def test_merged_bounds_that_cross_are_refused():
    with pytest.raises(ValueError, match=r"min_step \(0\.1\) must not exceed max_step \(0\.05\)"):
        _ours(hn.ScipySolver(solver="LSODA", max_step=0.05), min_step=0.1)


@pytest.mark.parametrize("where", ["solver", "controller"])
def test_min_step_with_a_method_other_than_lsoda_is_refused(where):
    # scipy only warned that min_step "has no effect" on RK45 and solved without it
    with pytest.raises(ValueError, match="min_step=0.01 applies to LSODA only: scipy's RK45"):
        if where == "solver":
            _ours(hn.ScipySolver(solver="RK45", min_step=0.01))
        else:
            _ours(hn.ScipySolver(solver="RK45"), min_step=0.01)


@pytest.mark.parametrize(
    "setting",
    [
        {"safety": 0.8},
        {"ifactor": 5.0},
        {"dfactor": 0.5},
        {"pcoeff": 0.2},
        {"icoeff": 0.7},
        {"dcoeff": 0.1},
        {"norm": lambda x: x.abs().max()},
        {"per_sample": True},
        {"device_loop": True},
        {"grow_after_reject": False},
    ],
    ids=lambda s: next(iter(s)),
)
def test_settings_scipy_cannot_honour_are_refused(setting):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=rf"PIDController settings \['{name}'\] have no effect.*scipy chooses"):
        _ours(hn.ScipySolver(solver="RK45"), **setting)


def test_shrink_after_accept_is_refused():
    # odeint leaves it at its default for scipy_solver; scipy proposes its own steps, so a user's False
    # would change nothing (the solve equal to scipy's with or without it, before this was refused)
    with pytest.raises(ValueError, match=r"PIDController settings \['shrink_after_accept'\] have no effect"):
        _ours(hn.ScipySolver(solver="RK45"), shrink_after_accept=False)


@pytest.mark.parametrize(
    "method, options",
    [("RK45", {"first_step": 1e-4, "max_step": 0.05}), ("LSODA", {"first_step": 1e-5, "max_step": 0.5})],
)
def test_odeint_options_reach_scipy(method, options):
    # odeint hands these options to the ScipySolver; the PID formula's are refused as unknown options
    got = hn.odeint(_field, Y0, T, rtol=RTOL, atol=ATOL, method="scipy_solver", options={"solver": method, **options})
    np.testing.assert_array_equal(got.numpy(), _scipy(method, **options))


@pytest.mark.parametrize("option", ["safety", "pcoeff", "per_sample", "norm"])
def test_odeint_refuses_the_pid_options(option):
    with pytest.raises(ValueError, match=rf"Unknown options \['{option}'\] for method 'scipy_solver'"):
        hn.odeint(_field, Y0, T, method="scipy_solver", options={option: None})


def test_a_first_step_longer_than_the_interval_is_named():
    # scipy said only "`first_step` exceeds bounds."
    with pytest.raises(ValueError, match=r"first_step=0\.3 is longer than the interval \[0\.0, 0\.1\] scipy solves"):
        hn.solve(_field, Y0, T[:2] / 5, solver=hn.ScipySolver("RK45"), controller=hn.PIDController(first_step=0.3))


def test_the_adjoints_backward_solves_name_a_first_step_too_long_for_them():
    # the forward solve over [0, 1] takes a first step of 0.3; the backward ones run between outputs 0.25 apart
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    options = {"solver": "RK45", "first_step": 0.3}
    ys = hn.odeint_adjoint(lambda t, y: -w * y, Y0, t, method="scipy_solver", options=options, adjoint_params=(w,))
    with pytest.raises(
        ValueError, match=r"first_step=0\.3 is longer than the interval \[0\.75, 1\.0\].*odeint_adjoint"
    ):
        ys.sum().backward()
