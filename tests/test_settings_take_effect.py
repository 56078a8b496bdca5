"""Every setting a user can pass either changes the solve or is refused: none is accepted and ignored.

The settings are enumerated from the code, not listed by hand: every solver class ``hybrid_node``
exports and every field of its dataclass, every field of ``PIDController`` and ``ConstantStepSize``
on every solver that takes that controller, and every option name ``odeint`` takes per method. A
new setting therefore needs a probe value below (the test fails until it has one) or an entry in an
allow-list saying why it may change nothing on these problems.

A setting *acts* when the solve with it differs from the solve without it in its step counts, its
field evaluations or its outputs (compared exactly: a setting that only moved the outputs by
rounding still acted), or when it makes the solve fail where the default succeeded (SolverError,
e.g. ``max_num_steps``). It is *refused* when the solve raises a ValueError, TypeError or
NotImplementedError whose message names the setting.

The problems are chosen so that every setting has something to act on: a batch of two Van der Pol
oscillators (mu = 2, so Newton iterations, Jacobians and rejected steps all occur while explicit
methods still finish), coupled across the batch (so a block-diagonal Jacobian, ``batch_dims``, is an
approximation), forced by a unit step at t = 1 that takes a third value at t = 1 itself (so the field
depends on t, and ``perturb``, which moves evaluations at a grid point off it, changes any method
with a stage there), with outputs between fixed grid points (so ``interp`` matters).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

import hybrid_node as hn
from hybrid_node._registry import METHOD_SPECS, build_solver, option_names
from hybrid_node.solvers.base import AbstractSolver, ExternalSolver

F64 = torch.float64
T = torch.tensor([0.0, 0.55, 1.25, 2.0], dtype=F64)  # 0.55 and 1.25 lie between the 0.1 grid points
Y0 = torch.tensor([[1.5, 0.0], [1.0, 0.5]], dtype=F64)
RTOL, ATOL = 1e-5, 1e-7
STEP = 0.1  # the fixed step of the fixed-step solves (the grid hits the jump at t = 1 exactly: 10 * 0.1 == 1.0)


def field(t, y):
    """Two Van der Pol oscillators (mu = 2) coupled across the batch, forced by a unit step at t = 1."""
    x, v = y[..., 0], y[..., 1]
    force = _step(t, y.dtype)
    dv = 2.0 * (1 - x**2) * v - x + 0.5 * (v.flip(0) - v) + force
    return torch.stack([v, dv], dim=-1)


def _partitioned_field(t, y):
    """The symplectic methods' (q, p) form: a pendulum per sample, forced by the same unit step."""
    q, p = y
    return p, -torch.sin(q) + _step(t, q.dtype)


def _step(t, dtype):
    """0 before t = 1, 1 after, 0.5 at t = 1 itself: neither one-sided limit, so an evaluation that
    ``perturb`` moves off the jump to either side sees another value."""
    t = torch.as_tensor(t)
    return ((t > 1.0).to(dtype) + 0.5 * (t == 1.0).to(dtype)).to(dtype)


# ---- how a solve is run and compared -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a solve did: its counts and outputs, or the error it raised."""

    counts: tuple[int, ...] = ()
    ys: Any = None
    error: BaseException | None = None


def _run(solver, controller) -> Outcome:
    symplectic = isinstance(solver, hn.PartitionedComposition)
    func = _partitioned_field if symplectic else field
    y0 = (Y0[:, 0].clone(), Y0[:, 1].clone()) if symplectic else Y0
    try:
        sol = hn.solve(func, y0, T, solver=solver, controller=controller)
    except (ValueError, TypeError, NotImplementedError, hn.SolverError) as error:
        return Outcome(error=error)
    stats = sol.stats
    ys = torch.cat([part.reshape(-1) for part in sol.ys]) if isinstance(sol.ys, tuple) else sol.ys.reshape(-1)
    return Outcome((stats.n_accepted, stats.n_rejected, stats.nfe), ys)


@functools.cache
def _reference(solver_name: str) -> Outcome:
    """The solve of ``solver_name`` with its default settings and controller (each is run once)."""
    solver = _make(solver_name)
    return _run(solver, _default_controller(solver))


def _check_acts_or_refused(name: str, base: Outcome, changed: Outcome) -> None:
    """Assert that setting ``name`` changed the solve, or was refused by a message naming it."""
    assert base.error is None, f"the reference solve failed: {base.error}"
    if isinstance(changed.error, hn.SolverError):
        return  # it stopped a solve the default finished (max_num_steps and the like): it acted
    if changed.error is not None:
        assert name in str(changed.error), f"{name} was refused, but the message does not name it: {changed.error}"
        return
    same = changed.counts == base.counts and torch.equal(changed.ys, base.ys)
    assert not same, f"{name} was accepted and changed nothing (steps, evaluations and outputs all equal)"


# ---- the solvers, enumerated from hybrid_node's exports --------------------------------------------

#: solver classes that need arguments: one representative instance each
_CONSTRUCT: dict[str, Callable[[], Any]] = {
    "ExplicitRungeKutta": lambda: hn.ExplicitRungeKutta(hn.Dopri5().tableau, "custom_rk"),
    "Dirk": lambda: hn.Dirk(hn.Kvaerno3().tableau, "custom_dirk", adaptive=True),
    "ImplicitRungeKutta": lambda: hn.ImplicitRungeKutta(hn.RadauIIA5().tableau, "custom_irk"),
    "Rosenbrock": lambda: hn.Rosenbrock(hn.Rodas4().tableau, "custom_rosenbrock", adaptive=True),
    "PartitionedComposition": lambda: hn.PartitionedComposition((0.5, 0.5), (1.0,), "custom_split", 2),
    "Reversible": lambda: hn.Reversible(hn.Tsit5()),
    "AbstractSolver": lambda: None,  # abstract bases: nothing to solve with
    "ExternalSolver": lambda: None,
}


def _solver_classes() -> list[str]:
    return sorted(
        name
        for name in hn.__all__
        if inspect.isclass(getattr(hn, name)) and issubclass(getattr(hn, name), (AbstractSolver, ExternalSolver))
    )


def _make(name: str):
    if name in _CONSTRUCT:
        return _CONSTRUCT[name]()
    return getattr(hn, name)()


def _default_controller(solver):
    return hn.PIDController(rtol=RTOL, atol=ATOL) if solver.adaptive else hn.ConstantStepSize(step_size=STEP)


def _zero_jacobian(t, y):
    """A Jacobian of zeros (blocks of the default shape): Newton then iterates as a fixed point."""
    return torch.zeros(*y.shape, y.shape[-1], dtype=y.dtype)


#: a non-default, valid value for each solver setting (by field name): the test fails for a field with
#: neither a value here nor an entry in _STRUCTURAL or _SAME_BY_DESIGN
_SOLVER_VALUES: dict[str, Callable[[Any], Any]] = {
    "max_order": lambda s: 2,
    "min_order": lambda s: 2,
    "corrector": lambda s: not s.corrector,
    "max_iters": lambda s: 1,
    "rtol": lambda s: 1e-2,
    "atol": lambda s: 1e-2,
    "norm": lambda s: lambda x: x.abs().max(),
    "jacobian": lambda s: _zero_jacobian,
    "batch_dims": lambda s: 0,  # one coupled system where the default takes each sample's block alone
    "autonomous": lambda s: True,  # wrong for this time-dependent field: it must change the solve
    "fullgraph": lambda s: True,  # without compile=True: refused
    "compiler": lambda s: "background",  # without compile=True: refused
    "time_derivative": lambda s: "fd",
    "stiff_method": lambda s: "bdf",
    "max_newton_iters": lambda s: 2,
    "newton_kappa": lambda s: 0.5,
    "newton_rtol": lambda s: 1e-2,
    "newton_atol": lambda s: 1e-2,
    "smooth_error": lambda s: not s.smooth_error,
    "cap_after_reject": lambda s: not s.cap_after_reject,
    "coupling": lambda s: 0.5,
    "solver": lambda s: "RK45",
    "min_step": lambda s: 0.05,
    "max_step": lambda s: 0.01,
    "first_step": lambda s: 1e-4,
    "max_num_steps": lambda s: 5,
}

#: fields that say which method this is (its coefficients, its name, its declared orders, whether it
#: takes a PIDController): another value is another method, each checked by its own order tests
_STRUCTURAL = {
    "tableau",
    "name",
    "family",
    "kicks",
    "drifts",
    "method_order",
    "dense_output",
    "error_estimate",
    "error_estimate_order",
    "adaptive",
    "order",
    "error_order",
    "base",
}

#: settings that choose how a solve runs, not what it computes (same steps and results by design)
_SAME_BY_DESIGN = {
    # one torch.compile graph per step attempt, equal to the eager steps up to rounding
    # (tests/test_compile*.py); compiling takes tens of seconds, so it is not run here
    "compile": "how the steps run (compiled), tested in tests/test_compile*.py",
}


def _solver_field_cases() -> list:
    cases = []
    for name in _solver_classes():
        solver = _make(name)
        if solver is None or not dataclasses.is_dataclass(solver):
            continue
        for f in dataclasses.fields(solver):
            if f.name not in _STRUCTURAL:
                cases.append(pytest.param(name, f.name, id=f"{name}.{f.name}"))
    return cases


_NEVER_STIFF = (
    "this problem never turns stiff (no switch to the stiff method: n_switches is 0), so the stiff phase's "
    "settings have nothing to act on; tests/test_auto_switch.py and tests/test_lsoda*.py exercise them"
)
#: (solver class, setting) pairs that legitimately change nothing on this problem, and why
_ALLOWED_INERT: dict[tuple[str, str], str] = {
    ("AutoSwitch", "jacobian"): _NEVER_STIFF,
    ("AutoSwitch", "batch_dims"): _NEVER_STIFF,
    ("AutoSwitch", "autonomous"): _NEVER_STIFF,
    ("AutoSwitch", "time_derivative"): _NEVER_STIFF,
    ("AutoSwitch", "stiff_method"): _NEVER_STIFF,
    ("LSODA", "jacobian"): _NEVER_STIFF,
    ("LSODA", "batch_dims"): _NEVER_STIFF,
}


@pytest.mark.parametrize(("solver_name", "setting"), _solver_field_cases())
def test_every_solver_setting_acts_or_is_refused(solver_name, setting):
    if setting in _SAME_BY_DESIGN:
        pytest.skip(_SAME_BY_DESIGN[setting])
    if (solver_name, setting) in _ALLOWED_INERT:
        pytest.skip(_ALLOWED_INERT[solver_name, setting])
    assert setting in _SOLVER_VALUES, f"no probe value for {solver_name}.{setting}: add one to _SOLVER_VALUES"
    solver = _make(solver_name)
    base = _reference(solver_name)
    try:
        changed_solver = dataclasses.replace(solver, **{setting: _SOLVER_VALUES[setting](solver)})
    except (ValueError, TypeError) as error:  # refused where it is set
        assert setting in str(error), f"{setting} was refused, but the message does not name it: {error}"
        return
    _check_acts_or_refused(setting, base, _run(changed_solver, _default_controller(changed_solver)))


# ---- the controllers' fields on every solver that takes them -----------------------------------------

#: a non-default, valid value for each controller field
_PID_VALUES: dict[str, Any] = {
    "rtol": 1e-3,
    "atol": 1e-3,
    "pcoeff": 0.2,
    "icoeff": 0.7,
    "dcoeff": 0.1,
    "safety": 0.7,
    "ifactor": 2.0,
    "dfactor": 0.5,
    "first_step": 1e-4,
    "min_step": 0.05,
    "max_step": 0.01,
    "max_num_steps": 5,
    "norm": lambda x: x.abs().max(),
    "per_sample": True,
    "device_loop": True,
    "sync_every": 3,
    "shrink_after_accept": False,
    "grow_after_reject": False,
}
_FIXED_VALUES: dict[str, Any] = {
    "step_size": 0.05,
    "grid_constructor": lambda func, y0, t: torch.linspace(float(t[0]), float(t[-1]), 31, dtype=F64),
    "interp": "cubic",
    "perturb": True,
    "max_num_steps": 5,
}

_ESDIRK_HOLDS = (
    "the ESDIRK methods hold the step after a rejection themselves (cap_after_reject=True, their default, "
    "Hairer & Wanner IV.8), which is what grow_after_reject=False asks for; with cap_after_reject=False it acts"
)
_NO_STAGE_AT_GRID = (
    "no stage of this method lies on a grid point (Gauss nodes are interior), so perturb, which moves "
    "evaluations at grid points off them, has none to move"
)
#: (solver class or "*", controller field) pairs that legitimately change nothing, and why
_CONTROLLER_INERT: dict[tuple[str, str], str] = {
    **{(name, "grow_after_reject"): _ESDIRK_HOLDS for name in ("Dirk", "KenCarp4", "Kvaerno3", "Kvaerno5", "TRBDF2")},
    **{(name, "perturb"): _NO_STAGE_AT_GRID for name in ("GaussLegendre4", "GaussLegendre6", "ImplicitMidpoint")},
    # the device loop decides the same steps as the host loop (on the CPU, from the same float64
    # numbers): it changes where the decisions run, not what they are (tests/test_device_loop*.py)
    ("Bosh3", "device_loop"): "the device loop takes the host loop's steps by design",
}


def _controller_cases() -> list:
    cases = []
    for name in _solver_classes():
        solver = _make(name)
        if solver is None:
            continue
        kind, values = (hn.PIDController, _PID_VALUES) if solver.adaptive else (hn.ConstantStepSize, _FIXED_VALUES)
        for f in dataclasses.fields(kind):
            cases.append(pytest.param(name, kind.__name__, f.name, id=f"{name}-{kind.__name__}.{f.name}"))
    return cases


@pytest.mark.parametrize(("solver_name", "kind", "setting"), _controller_cases())
def test_every_controller_setting_acts_or_is_refused(solver_name, kind, setting):
    reason = _CONTROLLER_INERT.get((solver_name, setting)) or _CONTROLLER_INERT.get(("*", setting))
    if reason:
        pytest.skip(reason)
    values = _PID_VALUES if kind == "PIDController" else _FIXED_VALUES
    assert setting in values, f"no probe value for {kind}.{setting}: add one"
    solver = _make(solver_name)
    base_controller = _default_controller(solver)
    base = _reference(solver_name)
    value = values[setting]
    if setting == "max_step" and base.counts[0]:
        value = 0.5 * float(T[-1] - T[0]) / base.counts[0]  # half the mean accepted step: it must bind
    try:
        # a grid_constructor replaces the step_size (the two together are refused)
        extra = {"step_size": None} if setting == "grid_constructor" else {}
        changed = dataclasses.replace(base_controller, **{setting: value}, **extra)
    except (ValueError, TypeError) as error:
        assert setting in str(error), f"{setting} was refused, but the message does not name it: {error}"
        return
    _check_acts_or_refused(setting, base, _run(solver, changed))


# ---- the fixes these probes found, each with its own check ---------------------------------------------


def _oscillator(t, y):
    return torch.stack([y[1], -y[0]])


_Y0_OSC = torch.tensor([1.0, 0.0], dtype=F64)
_T_OSC = torch.linspace(0.0, 10.0, 3, dtype=F64)


@pytest.mark.parametrize("solver", [hn.VariableAdams, hn.BDF, hn.LSODA], ids=lambda s: s.__name__)
@pytest.mark.parametrize(
    "setting",
    [{"safety": 0.5}, {"pcoeff": 0.2}, {"ifactor": 2.0}, {"shrink_after_accept": False}, {"grow_after_reject": False}],
    ids=lambda s: next(iter(s)),
)
def test_solve_refuses_pid_settings_a_nordsieck_method_does_not_use(solver, setting):
    # hn.solve accepted them and ran the same steps (odeint refused them): the method proposes its own step
    name = next(iter(setting))
    with pytest.raises(ValueError, match=rf"chooses its own step size and order.*\['{name}'\] have no effect"):
        hn.solve(_oscillator, _Y0_OSC, _T_OSC, solver=solver(), controller=hn.PIDController(**setting))
    # the settings that apply are taken
    hn.solve(_oscillator, _Y0_OSC, _T_OSC, solver=solver(), controller=hn.PIDController(max_step=0.5))


@pytest.mark.parametrize("method", ["adams", "bdf", "lsoda"])
def test_odeint_of_a_nordsieck_method_still_runs(method):
    # odeint no longer sets torchdiffeq's shrink rule on their controller (it was inert there), and hands the
    # solver the tolerances of its controller, which solve's check accepts; the result is the cosine to rtol
    ys = hn.odeint(_oscillator, _Y0_OSC, _T_OSC, method=method, rtol=1e-8, atol=1e-10)
    # a global error a few hundred times rtol over 1.6 periods is what these codes reach at rtol 1e-8
    torch.testing.assert_close(ys[:, 0], torch.cos(_T_OSC), rtol=0, atol=1e-5)


@pytest.mark.parametrize("solver", [hn.VariableAdams, hn.BDF, hn.LSODA, hn.AutoSwitch], ids=lambda s: s.__name__)
def test_solver_tolerances_the_controller_replaces_are_refused(solver):
    # hn.BDF(rtol=1e-3) under PIDController() ran at the controller's 1e-7 (the loop hands it those)
    with pytest.raises(ValueError, match=r"takes its tolerances from the PIDController.*\['rtol'\]"):
        hn.solve(_oscillator, _Y0_OSC, _T_OSC, solver=solver(rtol=1e-3), controller=hn.PIDController())
    # the same tolerances on both are what odeint builds, and fine
    hn.solve(_oscillator, _Y0_OSC, _T_OSC, solver=solver(rtol=1e-5), controller=hn.PIDController(rtol=1e-5))


def test_sync_every_without_the_device_loop_is_refused():
    # the host loops check every attempt: sync_every=4 alone was accepted and changed nothing
    with pytest.raises(ValueError, match=r"sync_every=4 .* needs device_loop=True"):
        hn.PIDController(sync_every=4)
    with pytest.raises(ValueError, match="needs device_loop=True"):
        hn.odeint(_oscillator, _Y0_OSC, _T_OSC, options={"sync_every": 4})
    hn.PIDController(sync_every=4, device_loop=True)


def test_adams_jacobian_settings_are_refused():
    # Adams iterates its corrector without a Jacobian (BDF and LSODA's stiff phase use one)
    with pytest.raises(ValueError, match="uses no Jacobian"):
        hn.VariableAdams(jacobian="jacfwd")
    with pytest.raises(ValueError, match="uses no Jacobian"):
        hn.VariableAdams(batch_dims=0)
    hn.BDF(jacobian="jacfwd", batch_dims=0)


@pytest.mark.parametrize("setting", [{"max_iters": 2}, {"rtol": 1e-3}, {"atol": 1e-3}], ids=lambda s: next(iter(s)))
def test_corrector_settings_without_the_corrector_are_refused(setting):
    with pytest.raises(ValueError, match=rf"\['{next(iter(setting))}'\] of 'explicit_adams'.*corrector=False"):
        hn.AdamsBashforth(**setting)
    hn.AdamsBashforthMoulton(**setting)  # it runs the corrector


@pytest.mark.parametrize("solver", [hn.ImplicitEuler, hn.SDIRK2, hn.Trapezoid], ids=lambda s: s.__name__)
@pytest.mark.parametrize("setting", ["smooth_error", "cap_after_reject"])
def test_error_control_settings_of_a_fixed_step_dirk_are_refused(solver, setting):
    with pytest.raises(ValueError, match=rf"\['{setting}'\] .* on fixed steps they have no effect"):
        solver(**{setting: False})
    hn.TRBDF2(**{setting: False})  # adaptive: they act (test_every_solver_setting_acts_or_is_refused)


# ---- odeint's options, per method ----------------------------------------------------------------------

#: step-size option values (the controllers' fields, and torchdiffeq's stop times); a method's own
#: options (its spec's ``options``, the solver's fields) take _SOLVER_VALUES
_ODEINT_VALUES: dict[str, Any] = {
    **_FIXED_VALUES,
    **_PID_VALUES,
    "jump_t": [1.0],  # the field jumps there: a restart on its far side changes the steps
    "step_t": [0.77],
}

#: options that by design change nothing on any method here
_ODEINT_SAME_BY_DESIGN = {
    # torchdiffeq's precision of its internal time; the loops keep float64 host times whatever it is
    # (documented in _registry._time_dtype_option), so it is accepted for torchdiffeq's callers
    "dtype": "accepted for torchdiffeq's callers; the loops' float64 times are at least as precise",
    **_SAME_BY_DESIGN,
}


def _odeint_methods() -> list[str]:
    return sorted(name for name, spec in METHOD_SPECS.items() if "torch" in spec.backends and spec.solver is not None)


def _odeint_cases() -> list:
    return [
        pytest.param(method, option, id=f"{method}-{option}")
        for method in _odeint_methods()
        for option in sorted(option_names(method, "torch"))
    ]


def _odeint_run(method: str, options: dict) -> Outcome:
    """odeint's solve (its mapping of method and options to solver and controller, then solve), with stats."""
    try:
        solver, controller, extras = build_solver(method, options, RTOL, ATOL)
    except (ValueError, TypeError, NotImplementedError) as error:
        return Outcome(error=error)
    symplectic = isinstance(solver, hn.PartitionedComposition)
    try:
        sol = hn.solve(
            _partitioned_field if symplectic else field,
            (Y0[:, 0].clone(), Y0[:, 1].clone()) if symplectic else Y0,
            T,
            solver=solver,
            controller=controller,
            jump_t=extras.get("jump_t", ()),
            step_t=extras.get("step_t", ()),
        )
    except (ValueError, TypeError, NotImplementedError, hn.SolverError) as error:
        return Outcome(error=error)
    ys = torch.cat([part.reshape(-1) for part in sol.ys]) if isinstance(sol.ys, tuple) else sol.ys.reshape(-1)
    return Outcome((sol.stats.n_accepted, sol.stats.n_rejected, sol.stats.nfe), ys)


def _base_options(method: str) -> dict:
    assert METHOD_SPECS[method].solver is not None
    return {} if METHOD_SPECS[method].solver().adaptive else {"step_size": STEP}


@functools.cache
def _odeint_reference(method: str) -> Outcome:
    return _odeint_run(method, _base_options(method))


#: (method, option) pairs that legitimately change nothing on this problem, and why
_ODEINT_INERT: dict[tuple[str, str], str] = {
    ("auto", "jacobian"): _NEVER_STIFF,
    ("auto", "batch_dims"): _NEVER_STIFF,
    ("auto", "autonomous"): _NEVER_STIFF,
    ("auto", "time_derivative"): _NEVER_STIFF,
    ("auto", "stiff_method"): _NEVER_STIFF,
    ("lsoda", "jacobian"): _NEVER_STIFF,
    ("lsoda", "batch_dims"): _NEVER_STIFF,
    ("bosh3", "device_loop"): "the device loop takes the host loop's steps by design",
    **{(m, "perturb"): _NO_STAGE_AT_GRID for m in ("gl4", "gl6", "implicit_midpoint")},
}


@pytest.mark.parametrize(("method", "option"), _odeint_cases())
def test_every_odeint_option_acts_or_is_refused(method, option):
    if option in _ODEINT_SAME_BY_DESIGN:
        pytest.skip(_ODEINT_SAME_BY_DESIGN[option])
    if (method, option) in _ODEINT_INERT:
        pytest.skip(_ODEINT_INERT[method, option])
    base = _odeint_reference(method)
    spec = METHOD_SPECS[method]
    assert spec.solver is not None
    if option == "adaptive":
        value: Any = not spec.solver().adaptive
    elif option in spec.options:
        assert option in _SOLVER_VALUES, f"no probe value for {method}'s option {option!r}: add one to _SOLVER_VALUES"
        value = _SOLVER_VALUES[option](spec.solver())
    else:
        assert option in _ODEINT_VALUES, f"no probe value for odeint's option {option!r}: add one to _ODEINT_VALUES"
        value = _ODEINT_VALUES[option]
    if option == "max_step" and base.counts[0]:
        value = 0.5 * float(T[-1] - T[0]) / base.counts[0]
    options = {**_base_options(method), option: value}
    if option == "grid_constructor":
        options.pop("step_size", None)
    _check_acts_or_refused(option, base, _odeint_run(method, options))


def test_adaptive_true_with_a_step_size_is_refused():
    # trbdf2 with both: the step_size switched it to fixed steps, and adaptive=True was silently overruled
    with pytest.raises(ValueError, match=r"adaptive=True and \['step_size'\] contradict"):
        hn.odeint(field, Y0, T, method="trbdf2", options={"adaptive": True, "step_size": STEP})
    fixed = hn.odeint(field, Y0, T, method="trbdf2", options={"step_size": STEP})
    adaptive = hn.odeint(field, Y0, T, method="trbdf2", options={"adaptive": True}, rtol=RTOL, atol=ATOL)
    assert not torch.equal(fixed, adaptive)


# ---- the nn modules' constructor options ---------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["rnn", "gru"])
def test_latent_ode_refuses_ode_rnn_kwargs_its_encoder_does_not_read(encoder):
    # only encoder="ode-rnn" builds the ODE-RNN they configure; the RNN encoders ran without them
    with pytest.raises(ValueError, match=r"ode_rnn_kwargs \['rtol'\] configure the ODE-RNN encoder"):
        hn.nn.LatentODE(encoder=encoder, ode_rnn_kwargs={"rtol": 1e-3})
    hn.nn.LatentODE(encoder=encoder)
    hn.nn.LatentODE(encoder="ode-rnn", ode_rnn_kwargs={"rtol": 1e-3})


# ---- sdeint's settings ---------------------------------------------------------------------------------


class _GeometricSDE(torch.nn.Module):
    """dy = (-y + sin t) dt + 0.3 y dW (Ito, diagonal noise)."""

    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return -y + torch.sin(t)

    def g(self, t, y):
        return 0.3 * y


def _sdeint(**settings) -> torch.Tensor:
    y0 = torch.ones(2, 1, dtype=F64)
    bm = hn.BrownianInterval(0.0, 1.0, size=(2, 1), dtype=F64, entropy=1)  # the same path for every call
    settings = {"method": "milstein", "dt": 0.05, **settings}
    return hn.sdeint(_GeometricSDE(), y0, torch.tensor([0.0, 0.5, 1.0], dtype=F64), bm=bm, **settings)


#: sdeint's settings with a non-default value and the settings it is probed with
_SDE_PROBES = {
    "method": ({"method": "euler"}, {}),
    "dt": ({"dt": 0.02}, {}),
    "adaptive": ({"adaptive": True}, {}),
    # the step-doubling tolerances and least step act with adaptive=True; without it torchsde's callers
    # pass them unconditionally (its examples do), so they are accepted there for the drop-in
    "rtol": ({"rtol": 1e-2}, {"adaptive": True}),
    "atol": ({"atol": 1e-2}, {"adaptive": True}),
    "dt_min": ({"dt_min": 0.04}, {"adaptive": True}),
    "options": ({"options": {"grad_free": True}}, {}),  # milstein's derivative-free variant
}


@pytest.mark.parametrize("setting", sorted(_SDE_PROBES))
def test_every_sdeint_setting_acts(setting):
    changed, context = _SDE_PROBES[setting]
    assert not torch.equal(_sdeint(**context, **changed), _sdeint(**context)), f"{setting} changed nothing"


def test_sdeint_probes_cover_its_solver_settings():
    # a new keyword of sdeint needs a probe above (names, logqp and extra* shape what it returns, bm is the path)
    shaping = {"sde", "y0", "ts", "bm", "names", "logqp", "extra", "extra_solver_state"}
    assert set(inspect.signature(hn.sdeint).parameters) - shaping == set(_SDE_PROBES)


@pytest.mark.parametrize("method", ["dopri5", "bdf", "kvaerno5"])
def test_odeint_dense_refuses_the_device_loop_it_does_not_run(method):
    # the dense solve keeps every step in the host loop: device_loop was accepted and changed nothing
    assert "device_loop" in option_names(method, "torch")
    with pytest.raises(ValueError, match="device_loop has no effect"):
        hn.odeint_dense(field, Y0, 0.0, 1.0, method=method, options={"device_loop": True})
    hn.odeint_dense(field, Y0, 0.0, 1.0, method=method)  # the same call without it runs
