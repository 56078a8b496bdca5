"""Frozen settings objects hash and compare by value, with and without options dicts and tensors.

``hash(SolveSettings(options={...}))`` raised "unhashable type: 'dict'" while ``hash(SolveSettings())``
worked (a frozen dataclass hashes the tuple of its fields), and ``==`` of adjoint settings with tolerance
tensors raised torch's "Boolean value of Tensor with more than one value is ambiguous".
"""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn
from hybrid_node.nn.cnf import CNFSolver
from hybrid_node.nn.ode_block import SolveSettings


def _pairs():
    """Two equal settings built from separate (equal) option dicts and tensors, per class."""
    grid = torch.tensor([0.0, 0.5, 1.0])
    return {
        "SolveSettings": lambda: SolveSettings(method="rk4", options={"step_size": 0.1}),
        "SolveSettings with an adjoint": lambda: SolveSettings(
            sensitivity=hn.BacksolveAdjoint(options={"first_step": 0.01}, rtol=torch.tensor([1e-4, 1e-5]))
        ),
        "CNFSolver": lambda: CNFSolver(options={"first_step": 0.01}),
        "BacksolveAdjoint": lambda: hn.BacksolveAdjoint(method="rk4", options={"step_size": 0.1}),
        "InterpolatingAdjoint": lambda: hn.InterpolatingAdjoint(rtol=torch.tensor([1e-4, 1e-5]), checkpoints=2),
        "GaussAdjoint": lambda: hn.GaussAdjoint(options={"first_step": 0.01}),
        "QuadratureAdjoint": lambda: hn.QuadratureAdjoint(options={"first_step": grid.clone()[1]}),
    }


@pytest.mark.parametrize("name", sorted(_pairs()))
def test_equal_settings_are_equal_and_hash_equal(name):
    make = _pairs()[name]
    a, b = make(), make()
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1  # usable as dict keys and set members


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            SolveSettings(method="rk4", options={"step_size": 0.1}),
            SolveSettings(method="rk4", options={"step_size": 0.2}),
        ),
        (CNFSolver(options={"first_step": 0.01}), CNFSolver(options={"first_step": 0.02})),
        (hn.BacksolveAdjoint(rtol=torch.tensor([1e-4, 1e-5])), hn.BacksolveAdjoint(rtol=torch.tensor([1e-4, 1e-6]))),
        (hn.BacksolveAdjoint(), hn.GaussAdjoint()),  # the same fields, another class
    ],
)
def test_different_settings_differ(a, b):
    assert a != b
    assert len({a, b}) == 2


def test_an_unhashable_option_value_is_named():
    class Opaque:
        __hash__ = None  # e.g. a mutable object of the user's

    settings = SolveSettings(method="rk4", options={"step_size": 0.1})
    object.__setattr__(settings, "options", {"step_size": 0.1, "perturb": Opaque()})
    with pytest.raises(
        TypeError, match=r"SolveSettings\.options\['perturb'\] holds a value of type Opaque, which has no"
    ):
        hash(settings)
