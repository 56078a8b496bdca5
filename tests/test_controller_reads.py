"""The one declaration of which PIDController fields a solver reads (``controller_reads``).

``hn.solve``'s refusal for the Nordsieck methods, ``odeint``'s for their options and
``ScipySolver.with_controller``'s all come from it (:func:`hybrid_node.solvers.base.unread_controller_settings`).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import hybrid_node as hn
from hybrid_node._registry import ADAPTIVE_OPTIONS
from hybrid_node.solvers.base import (
    AbstractSolver,
    ExternalSolver,
    unread_controller_fields,
    unread_controller_settings,
)

_PID_FIELDS = {f.name for f in dataclasses.fields(hn.PIDController)}


def _solver_classes() -> list[type]:
    return [c for c in vars(hn).values() if isinstance(c, type) and issubclass(c, (AbstractSolver, ExternalSolver))]


@pytest.mark.parametrize("cls", _solver_classes(), ids=lambda c: c.__name__)
def test_declared_fields_are_pid_controller_fields(cls):
    # a misspelt name would make the field it meant "unread", and refused wherever it is set
    reads = cls.controller_reads
    assert reads is None or reads <= _PID_FIELDS, sorted(set(reads or ()) - _PID_FIELDS)


def test_scipy_and_nordsieck_declarations():
    formula = {"safety", "ifactor", "dfactor", "pcoeff", "icoeff", "dcoeff"}
    proposal_rules = {"shrink_after_accept", "grow_after_reject"}
    for solver in (hn.BDF(), hn.LSODA(), hn.VariableAdams()):
        assert unread_controller_fields(solver) == formula | proposal_rules
    scipy_takes = {"rtol", "atol", "first_step", "min_step", "max_step", "max_num_steps"}
    assert unread_controller_fields(hn.ScipySolver()) == _PID_FIELDS - scipy_takes
    assert unread_controller_fields(hn.Dopri5()) == frozenset()


def test_only_fields_set_away_from_their_defaults_are_reported():
    controller = hn.PIDController(rtol=1e-3, safety=0.9, ifactor=2.0, per_sample=False, norm=None)
    assert unread_controller_settings(hn.BDF(), controller) == ["ifactor"]  # safety=0.9 is the default
    assert unread_controller_settings(hn.Dopri5(), controller) == []
    assert unread_controller_settings(hn.BDF(), hn.ConstantStepSize(step_size=0.1)) == []


@pytest.mark.parametrize("option", sorted(unread_controller_fields(hn.BDF()) & set(ADAPTIVE_OPTIONS)))
def test_odeint_and_solve_refuse_the_same_nordsieck_settings(option):
    func = lambda t, y: -y  # noqa: E731
    y0, t = torch.ones(2, dtype=torch.float64), torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    value = {"safety": 0.5, "ifactor": 2.0, "dfactor": 0.5, "pcoeff": 0.2, "icoeff": 0.7, "dcoeff": 0.1}[option]
    message = rf"chooses its own step size and order.*\['{option}'\] have no effect"
    with pytest.raises(ValueError, match=message):
        hn.odeint(func, y0, t, method="bdf", options={option: value})
    with pytest.raises(ValueError, match=message):
        hn.solve(func, y0, t, solver=hn.BDF(), controller=hn.PIDController(**{option: value}))


@pytest.mark.parametrize("method", ["bdf", "dopri5"])
def test_controller_fields_that_are_no_odeint_options_stay_unknown_options(method):
    # the proposal rules are PIDController fields a Nordsieck method does not read, but odeint has no such
    # options: they are reported as unknown, for bdf as for dopri5
    func = lambda t, y: -y  # noqa: E731
    with pytest.raises(ValueError, match=r"Unknown options \['grow_after_reject'\]"):
        hn.odeint(func, torch.ones(2), torch.linspace(0.0, 1.0, 3), method=method, options={"grow_after_reject": False})
