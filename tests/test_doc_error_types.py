"""``odeint``'s docstring (rendered on docs/api.md) names the error types its misuse raises."""

from __future__ import annotations

import re

import pytest
import torch

import hybrid_node as hn


def _decay(t, y):
    return -y


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
def test_odeint_documents_what_it_raises(kwargs, y0):
    with pytest.raises(Exception) as err:
        hn.odeint(_decay, y0, torch.tensor([0.0, 1.0]), **kwargs)
    name = type(err.value).__name__
    assert re.search(rf"\b{name}\b", _raises_section(hn.odeint)), f"odeint raises {name}, its docstring omits it"
