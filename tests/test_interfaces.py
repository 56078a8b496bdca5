"""The interfaces: solver classes, controllers and sensitivities declare what they can do."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import hybrid_node as hn
from hybrid_node._registry import METHOD_SPECS

FAMILIES = {
    hn.ExplicitRungeKutta: [
        "Dopri5",
        "Tsit5",
        "Bosh3",
        "Fehlberg2",
        "AdaptiveHeun",
        "Dopri8",
        "Euler",
        "Midpoint",
        "Heun2",
        "Heun3",
        "RK4",
        "RK4Classic",
    ],
    hn.solvers.Adams: ["AdamsBashforth", "AdamsBashforthMoulton"],
    hn.Rosenbrock: ["Rodas5P", "Rodas4", "ROS3P"],
    hn.Rosenbrock23: ["Rosenbrock23"],
    hn.Dirk: ["KenCarp4", "Kvaerno3", "Kvaerno5", "TRBDF2", "ImplicitEuler", "SDIRK2", "Trapezoid"],
    hn.Nordsieck: ["VariableAdams", "BDF", "LSODA"],
    hn.AutoSwitch: ["AutoSwitch"],
    hn.ImplicitRungeKutta: ["ImplicitMidpoint", "GaussLegendre4", "GaussLegendre6", "RadauIIA3", "RadauIIA5"],
    hn.PartitionedComposition: ["SymplecticEuler", "Leapfrog", "Yoshida4", "Yoshida6"],
}
CLASSES = [(family, name) for family, names in FAMILIES.items() for name in names]


@pytest.mark.parametrize("family, name", CLASSES)
def test_every_solver_name_is_a_class_of_its_family(family, name):
    cls = getattr(hn, name)
    solver = cls()
    assert isinstance(cls, type) and isinstance(solver, cls) and isinstance(solver, family)
    assert isinstance(solver, hn.AbstractSolver)
    assert solver == cls() and hash(solver) == hash(cls())
    assert repr(solver) == f"{name}()"
    for copy in (dataclasses.replace(solver), solver.fixed_steps(), solver.with_tolerances(1e-5, 1e-7)):
        assert type(copy) is cls
    if solver.supports_compile:
        compiled = solver.compiled()
        assert type(compiled) is cls and compiled.compile and repr(compiled) == f"{name}(compile=True)"
    else:
        with pytest.raises(ValueError, match="compile"):
            solver.compiled()


def test_scipy_solver_is_an_external_solver():
    solver = hn.ScipySolver()
    assert isinstance(solver, hn.ScipySolver) and isinstance(solver, hn.ExternalSolver) and solver.adaptive
    assert not isinstance(solver, hn.AbstractSolver)


def test_constructor_arguments_are_kept():
    assert hn.Dopri5(embedded="dormand-prince") != hn.Dopri5()
    with pytest.raises(ValueError, match="embedded"):
        hn.Dopri5(embedded="x")
    assert hn.AdamsBashforth(max_order=3).max_order == 3
    abm = hn.AdamsBashforthMoulton(max_iters=2, name="fixed_adams")
    assert (
        abm.corrector and abm.max_iters == 2 and repr(abm) == "AdamsBashforthMoulton(max_iters=2, name='fixed_adams')"
    )
    assert hn.KenCarp4(jacobian="jacfwd").jacobian == "jacfwd"
    assert not hn.ImplicitEuler().adaptive and hn.TRBDF2().adaptive and not hn.TRBDF2().fixed_steps().adaptive
    assert hn.TRBDF2().with_tolerances(1e-5, 1e-7).newton_rtol == 1e-5


@pytest.mark.parametrize(
    "family, adaptive, implicit, compile",
    [
        ("Dopri5", True, False, True),
        ("Euler", False, False, True),
        ("AdamsBashforth", False, False, False),
        ("Rodas5P", True, True, False),
        ("Rosenbrock23", True, True, False),
        ("KenCarp4", True, True, False),
        ("ImplicitEuler", False, True, False),
        ("GaussLegendre4", False, True, False),
    ],
)
def test_capabilities_per_family(family, adaptive, implicit, compile):
    solver = getattr(hn, family)()
    assert (solver.adaptive, solver.implicit, solver.supports_compile) == (adaptive, implicit, compile)
    # only explicit first-same-as-last pairs run on the device loop; only explicit pairs per sample
    assert solver.supports_device_loop == (family == "Dopri5")
    assert solver.supports_per_sample == (family == "Dopri5")


def test_registry_solvers_are_the_public_classes():
    public = {getattr(hn, name) for _, name in CLASSES} | {hn.ScipySolver}
    for name, spec in METHOD_SPECS.items():
        # fixed_adams: AdamsBashforthMoulton(name=...); trbdf2: TRBDF2 on fixed steps unless adaptive=True
        if spec.solver is not None and name not in ("fixed_adams", "trbdf2"):
            assert spec.solver in public, name
    assert type(METHOD_SPECS["fixed_adams"].solver()) is hn.AdamsBashforthMoulton
    assert type(METHOD_SPECS["trbdf2"].solver()) is hn.TRBDF2


def test_controllers_declare_what_the_loops_read():
    assert issubclass(hn.PIDController, hn.AbstractController)
    assert issubclass(hn.ConstantStepSize, hn.AbstractController)
    pid, const = hn.PIDController(), hn.ConstantStepSize()
    assert pid.adaptive and not const.adaptive
    assert not const.per_sample and not const.device_loop and const.init() is None
    assert pid.init() == (1.0, 1.0)
    assert "adaptive" not in {f.name for f in dataclasses.fields(pid)}


def test_sensitivities_declare_their_backends():
    assert hn.DirectBackprop().backends == ("torch",)
    assert hn.BacksolveAdjoint().backends == hn.InterpolatingAdjoint().backends == ("torch", "julia")
    assert hn.GaussAdjoint().backends == hn.QuadratureAdjoint().backends == ("julia",)
    for cls in (hn.DirectBackprop, hn.BacksolveAdjoint, hn.InterpolatingAdjoint, hn.GaussAdjoint):
        assert issubclass(cls, hn.AbstractSensitivity)


@pytest.mark.parametrize("sensitivity", [hn.GaussAdjoint(), hn.QuadratureAdjoint()])
def test_julia_only_sensitivities_raise_on_torch(sensitivity):
    with pytest.raises(hn.BackendError, match="only on the Julia backend"):
        hn.solve(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), sensitivity=sensitivity, backend="torch")


def test_solve_rejects_objects_that_are_not_the_interfaces():
    t = torch.tensor([0.0, 1.0])
    with pytest.raises(TypeError, match="solver must be"):
        hn.solve(lambda t, y: -y, torch.ones(1), t, solver="dopri5")
    with pytest.raises(TypeError, match="controller must be"):
        hn.solve(lambda t, y: -y, torch.ones(1), t, controller=object())
    with pytest.raises(TypeError, match="sensitivity must be"):
        hn.solve(lambda t, y: -y, torch.ones(1), t, sensitivity=object())
    with pytest.raises(ValueError, match="no error estimate"):
        hn.solve(lambda t, y: -y, torch.ones(1), t, solver=hn.Euler(), controller=hn.PIDController())
