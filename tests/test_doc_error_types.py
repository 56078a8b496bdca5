"""The docstrings of ``odeint``, ``odeint_adjoint`` and ``odeint_dense`` (rendered on docs/api.md) name
the error types their misuse raises."""

from __future__ import annotations

import re

import pytest
import torch

import hybrid_node as hn


def _raises_section(fn) -> str:
    return (fn.__doc__ or "").split("Raises:", 1)[1]


@pytest.mark.parametrize(
    "kwargs, y0",
    [
        ({"method": "rk5"}, torch.ones(1)),  # unknown method
        ({"options": 0.1}, torch.ones(1)),  # options that is no dict
        ({"method": "vern7"}, torch.ones(1)),  # a Julia-only method on the torch backend
        ({}, torch.ones(1, dtype=torch.int64)),  # a state that is not floating point
    ],
)
@pytest.mark.parametrize("entry", ["odeint", "odeint_adjoint", "odeint_dense"])
def test_the_solve_functions_document_what_they_raise(kwargs, y0, entry):
    fn = getattr(hn, entry)
    field = torch.nn.Linear(1, 1)  # odeint_adjoint needs a module (or adjoint_params)
    with pytest.raises(Exception) as err:
        if entry == "odeint_dense":
            fn(field, y0, 0.0, 1.0, **kwargs)
        else:
            fn(field, y0, torch.tensor([0.0, 1.0]), **kwargs)
    name = type(err.value).__name__
    assert re.search(rf"\b{name}\b", _raises_section(fn)), f"{entry} raises {name}, its docstring omits it"
