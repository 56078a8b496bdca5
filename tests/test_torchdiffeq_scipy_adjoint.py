"""The black-box adjoint: ``odeint_adjoint(..., method="scipy_solver")`` solves the forward and the
adjoint system with scipy (no derivative of the solver is needed); scipy's step options pass through.

Compared with the installed torchdiffeq and with analytic gradients.
"""

import math
import warnings

import pytest
import torch
import torchdiffeq

import hybrid_node as hn

F64 = torch.float64


def _decay(mod, solver, t):
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    ys = mod.odeint_adjoint(
        lambda t, y: -w * y,
        y0,
        t,
        method="scipy_solver",
        rtol=1e-10,
        atol=1e-12,
        options={"solver": solver},
        adjoint_params=(w,),
    )
    ys.sum().backward()
    return ys.detach(), y0.grad, w.grad


@pytest.mark.filterwarnings("ignore:The following arguments have no effect")  # torchdiffeq passes min_step
@pytest.mark.parametrize("solver", ["LSODA", "RK45", "DOP853", "BDF"])
@pytest.mark.parametrize("reverse", [False, True])
def test_black_box_adjoint(solver, reverse):
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    if reverse:
        t = torch.flip(t, [0])
    ys, gy0, gw = _decay(hn, solver, t)
    ref = _decay(torchdiffeq, solver, t)
    for a, b in zip((ys, gy0, gw), ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    # analytic: L = sum_i sum(y0 e^{-w (t_i - t_0)})
    dts = (t - t[0]).abs() * (1 if not reverse else -1)
    torch.testing.assert_close(gy0, torch.full((2,), float(torch.exp(-0.5 * dts).sum()), dtype=F64), rtol=1e-6, atol=0)
    expected_w = -3.0 * float((dts * torch.exp(-0.5 * dts)).sum())
    assert float(gw) == pytest.approx(expected_w, rel=1e-6)


def test_black_box_adjoint_of_a_module():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    f = Field()
    y0 = torch.tensor([0.3, -0.2], dtype=F64)
    t = torch.linspace(0, 1, 4, dtype=F64)
    ys = hn.odeint_adjoint(f, y0, t, method="scipy_solver", rtol=1e-10, atol=1e-12, options={"solver": "LSODA"})
    ys.square().sum().backward()
    ours = [p.grad.clone() for p in f.parameters()]
    f.zero_grad()
    ref = hn.odeint(f, y0, t, rtol=1e-10, atol=1e-12)  # direct backprop through dopri5
    ref.square().sum().backward()
    for a, p in zip(ours, f.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-7)


def test_interpolating_adjoint_needs_a_torch_solver():
    with pytest.raises(hn.BackendError, match="BacksolveAdjoint"):
        hn.solve(
            lambda t, y: -y,
            torch.ones(2, requires_grad=True),
            torch.tensor([0.0, 1.0]),
            solver=hn.solvers.ScipySolver(),
            sensitivity=hn.InterpolatingAdjoint(),
            adjoint_params=(),
        )


class Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.nfe = 0
        self.a = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)

    def forward(self, t, y):
        self.nfe += 1
        return self.a @ y


@pytest.mark.parametrize("option, value", [("min_step", 2.0), ("max_step", 0.01), ("first_step", 1e-3)])
def test_scipy_step_options_pass_through(option, value, monkeypatch):
    import scipy.integrate

    seen = []

    class Spy(scipy.integrate.LSODA):  # the solver object that scipy_solver steps
        def __init__(self, *args, **kwargs):
            seen.append(kwargs)
            super().__init__(*args, **kwargs)

    # scipy 1.17's LSODA ignores min_step, which scipy_solver then refuses (tests/test_scipy_controller_options.py);
    # the pass-through is checked as for a scipy that applies it
    monkeypatch.setattr(hn.solvers.scipy_solver, "lsoda_applies_min_step", lambda: True)
    monkeypatch.setattr(scipy.integrate, "LSODA", Spy)
    t = torch.linspace(1, 8, 10, dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    f = Counting()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LSODA may complain about a large min_step
        ys = hn.odeint(f, y0, t, method="scipy_solver", options={"solver": "LSODA", option: value})
    assert seen[-1][option] == value
    assert not {"min_step", "max_step", "first_step"} - {option} & set(seen[-1])  # defaults are not passed
    if option == "max_step":
        assert f.nfe > 7 / 0.01  # at least one evaluation per step of at most 0.01
        exact = torch.stack([torch.cos(t - 1), -torch.sin(t - 1)], dim=1)
        torch.testing.assert_close(ys, exact, rtol=0, atol=1e-4)


def test_scipy_step_options_are_checked():
    with pytest.raises(ValueError, match="first_step must be positive"):
        hn.odeint(
            lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method="scipy_solver", options={"first_step": 0.0}
        )
    assert math.isinf(hn.solvers.ScipySolver().max_step)
