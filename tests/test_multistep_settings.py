"""The integer settings of the Adams methods (``max_order``, ``max_iters``): an integer of any type is
taken as torchdiffeq's ``int(max_order)`` takes it, a bool is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hybrid_node as hn

F64 = torch.float64


def _pendulum(t, y):
    return torch.stack([y[1], -torch.sin(y[0])])


def _solve(method: str, **settings) -> torch.Tensor:
    options = {"step_size": 0.05} if method != "adams" else {}
    return hn.odeint(
        _pendulum,
        torch.tensor([1.0, 0.0], dtype=F64),
        torch.linspace(0.0, 3.0, 4, dtype=F64),
        method=method,
        options={**options, **settings},
    )


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams", "adams"])
@pytest.mark.parametrize("value", [np.int64(5), torch.tensor(5)], ids=["numpy", "tensor"])
def test_max_order_of_another_integer_type_is_that_order(method, value):
    # refused before ("must be an int ..., got 5"), where torchdiffeq's int(max_order) takes it
    assert torch.equal(_solve(method, max_order=value), _solve(method, max_order=5))


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams", "adams"])
def test_bool_max_order_is_refused(method):
    # True passed for an int and ran order 1 (a bool is an int to Python)
    with pytest.raises(ValueError, match="max_order"):
        _solve(method, max_order=True)


@pytest.mark.parametrize("method", ["implicit_adams", "adams"])
def test_max_iters_of_another_integer_type_and_bool(method):
    assert torch.equal(_solve(method, max_iters=np.int64(3)), _solve(method, max_iters=3))
    with pytest.raises(ValueError, match="max_iters"):
        _solve(method, max_iters=True)


@pytest.mark.parametrize("method", ["adams", "bdf", "lsoda"])
def test_odeint_refuses_pid_settings_the_method_does_not_use(method):
    y0, t = torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"chooses its own step size and order.*\['dfactor', 'safety'\]"):
        hn.odeint(lambda t, y: -y, y0, t, method=method, options={"safety": 0.8, "dfactor": 0.3})
    # the settings that do act are taken
    hn.odeint(lambda t, y: -y, y0, t, method=method, options={"first_step": 0.01, "max_step": 0.5})


@pytest.mark.parametrize("method", ["adams", "bdf", "lsoda"])
def test_an_unknown_option_lists_only_the_settings_the_method_uses(method):
    y0, t = torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="Unknown options") as info:
        hn.odeint(lambda t, y: -y, y0, t, method=method, options={"frist_step": 0.01})
    listed = str(info.value).split("The valid options are")[1]
    # the PID settings it refuses (test above) are not offered as valid; the step limits it uses are
    assert "'safety'" not in listed and "'pcoeff'" not in listed and "'first_step'" in listed
