"""The method registry: every name solves on its backend, every table and message reads the registry."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import hybrid_node as hn
from hybrid_node._registry import METHOD_SPECS, build_solver, method_spec
from hybrid_node.julia import backend as jb
from hybrid_node.solvers import METHODS
from hybrid_node.solvers.implicit import IMPLICIT_METHODS

TORCH_NAMES = [name for name, spec in METHOD_SPECS.items() if "torch" in spec.backends]
JULIA_ONLY = [name for name, spec in METHOD_SPECS.items() if spec.backends == ("julia",)]
TORCH_ONLY = [name for name, spec in METHOD_SPECS.items() if spec.backends == ("torch",)]


def decay(t, y):
    return -y


_KNOWN_BAD: dict[str, str] = {}  # name -> why it is expected to fail


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(reason=_KNOWN_BAD[name], strict=True))
        if name in _KNOWN_BAD
        else name
        for name in TORCH_NAMES
    ],
)
def test_every_torch_name_solves_decay_to_the_exact_value(name):
    # y' = -y on [0, 1]: y(1) = e^-1. Fixed-step methods take h = 1/64; the least accurate of them
    # (first order: euler, implicit_euler) has a global error of about h/2 * max|y''| * T ~ 3e-3, so 1e-2
    # holds for all; the adaptive ones reach rtol=1e-8 to within a few hundred times the tolerance
    # (fehlberg2's loose estimate, README), so 1e-5 holds with room.
    spec = METHOD_SPECS[name]
    solver, _, _ = build_solver(name, None, 1e-8, 1e-10)
    options = None if solver.adaptive else {"step_size": 1 / 64}
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    if solver.partitioned:  # a symplectic method steps a pair (q, p): q'' = -q from (1, 0), q(1) = cos(1)
        one = torch.ones(1, dtype=torch.float64)
        q, _ = hn.odeint(lambda t, y: (y[1], -y[0]), (one, 0 * one), t, method=name, options=options)
        torch.testing.assert_close(q[-1], math.cos(1.0) * one, rtol=1e-2, atol=1e-2)
        return
    ys = hn.odeint(decay, torch.ones(2, dtype=torch.float64), t, method=name, options=options, rtol=1e-8, atol=1e-10)
    tol = 1e-5 if solver.adaptive else 1e-2
    torch.testing.assert_close(ys[-1], torch.full((2,), math.exp(-1.0), dtype=torch.float64), rtol=tol, atol=tol)
    assert spec.solver is not None


def test_hn_methods_lists_every_name_odeint_accepts():
    assert dict(hn.METHODS) == dict(METHOD_SPECS)
    assert set(METHODS) | set(IMPLICIT_METHODS) == set(TORCH_NAMES)
    assert len(TORCH_NAMES) == 40  # 32 from before, 4 symplectic, adams, bdf, lsoda, auto
    assert set(jb.METHODS) == {name.lower() for name, spec in METHOD_SPECS.items() if "julia" in spec.backends}
    for name in TORCH_NAMES:
        build_solver(name, None, 1e-6, 1e-8)  # accepted by the torch backend
    for name in hn.METHODS:
        if "julia" in hn.METHODS[name].backends:
            assert jb.resolve_method(name) == hn.METHODS[name].julia


def test_derived_tables_keep_their_shape():
    for table in (METHODS, IMPLICIT_METHODS):
        for name, (factory, options) in table.items():
            assert METHOD_SPECS[name].solver is factory and METHOD_SPECS[name].options == options
    assert all(factory().implicit for factory, _ in IMPLICIT_METHODS.values())
    assert set(jb.TORCH_ONLY_METHODS) == {name.lower() for name in TORCH_ONLY}
    assert "ros3p" in jb.TORCH_ONLY_METHODS


@pytest.mark.parametrize("name", JULIA_ONLY)
def test_julia_only_names_say_so_on_the_torch_backend(name):
    with pytest.raises(hn.BackendError, match=rf"'{name}' is available on the Julia backend only"):
        hn.odeint(decay, torch.ones(1), torch.tensor([0.0, 1.0]), method=name)


@pytest.mark.parametrize("name", TORCH_ONLY)
def test_torch_only_names_say_so_on_the_julia_backend(name):
    # the name is checked in Python before Julia would start, so this runs without Julia
    with pytest.raises(hn.BackendError, match=rf"'{name}' is available on the torch backend only"):
        jb.prepare(
            decay,
            torch.ones(1, dtype=torch.float64),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            method=name,
            rtol=1e-6,
            atol=1e-8,
            options=None,
            sensitivity=None,
            adjoint_params=(),
        )


def test_unknown_names_list_the_backends_methods():
    with pytest.raises(ValueError, match=r"Unknown method 'rk5'\. Valid methods: .*radauIIA5.*tsit5") as err:
        hn.odeint(decay, torch.ones(1), torch.tensor([0.0, 1.0]), method="rk5")
    assert "vern7" not in str(err.value)
    with pytest.raises(hn.BackendError, match="Unknown method 'rk5' for the Julia backend.*vern7"):
        method_spec("rk5", "julia")


def test_loop_variants_follow_the_declared_capabilities():
    assert METHOD_SPECS["dopri5"].loops == ("host", "per_sample", "device_loop", "compile", "whole_solve")
    # own dense output: no device loop; the whole-solve graph builds its extra stages on every attempt
    assert METHOD_SPECS["dopri8"].loops == ("host", "per_sample", "compile", "whole_solve")
    assert METHOD_SPECS["rk4"].loops == ("host", "compile")
    assert METHOD_SPECS["kencarp4"].loops == ("host",)
    assert METHOD_SPECS["scipy_solver"].loops == ()  # runs its own loop
    assert METHOD_SPECS["vern7"].loops == ()
    for spec in METHOD_SPECS.values():
        assert spec.backends and set(spec.backends) <= {"torch", "julia"}


def test_the_method_table_is_the_registrys():
    # one copy, on the solvers page, which the README links to instead of repeating it
    root = Path(__file__).resolve().parent.parent
    assert "](docs/solvers.md#all-methods)" in (root / "README.md").read_text()
    text = (root / "docs" / "solvers.md").read_text()
    table = hn.methods_table()
    header = table.splitlines()[0]
    start = text.index(header)
    found = text[start : text.index("\n\n", start)] + "\n"
    assert found == table
    assert all(re.search(rf"\| `{re.escape(name)}` \|", table) for name in METHOD_SPECS)


def test_repeated_plain_calls_share_the_built_objects_and_others_are_built_afresh():
    first = build_solver("dopri5", {"compile": True, "max_num_steps": 50}, 1e-6, 1e-8)
    again = build_solver("dopri5", {"compile": True, "max_num_steps": 50}, 1e-6, 1e-8)
    assert first[0] is again[0] and first[1] is again[1]  # frozen objects, shared
    assert first[2] == again[2] and first[2] is not again[2]  # the extras dict is the caller's
    assert build_solver("dopri5", {"compile": True, "max_num_steps": 51}, 1e-6, 1e-8)[1].max_num_steps == 51
    assert build_solver("dopri5", None, 1e-6, 1e-8)[1] is not build_solver("dopri5", None, 1e-5, 1e-8)[1]
    # values that are not plain numbers (a tensor may change in place) build afresh, and so do
    # tensor tolerances
    jumps = torch.tensor([0.5])
    a = build_solver("dopri5", {"jump_t": jumps}, 1e-6, 1e-8)
    jumps[0] = 0.25
    assert build_solver("dopri5", {"jump_t": jumps}, 1e-6, 1e-8)[2]["jump_t"] == (0.25,) != a[2]["jump_t"]
    rtol = torch.full((2,), 1e-6)
    assert build_solver("dopri5", None, rtol, 1e-8)[1] is not build_solver("dopri5", None, rtol, 1e-8)[1]
    # an invalid call raises every time (nothing is kept)
    for _ in range(2):
        with pytest.raises(ValueError, match="Unknown options"):
            build_solver("dopri5", {"stepsize": 0.1}, 1e-6, 1e-8)
