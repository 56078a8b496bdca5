"""Derivatives of an SDE solve with respect to its output times and step settings are refused, not dropped.

The solve reads ``ts`` and ``dt`` as floats, so a forward-mode tangent on them used to vanish: for
dy = -y dt (zero diffusion) ``torch.func.jvp`` in ts[-1] = 1 gave 0 instead of about -exp(-1), and a
``torch.autograd.forward_ad`` dual ``ts`` gave an output without a tangent.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import hybrid_node as hn

SOLVERS = {"sdeint": hn.sdeint, "sdeint_adjoint": hn.sdeint_adjoint}


class Decay(torch.nn.Module):
    """dy = -y dt + 0 dW: the ODE y' = -y, whose y(1) = exp(-1) y0 and dy(1)/dt_end = -exp(-1) y0."""

    noise_type = "diagonal"
    sde_type = "ito"

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return torch.zeros_like(y)


def _ts() -> torch.Tensor:
    return torch.tensor([0.0, 1.0], dtype=torch.float64)


def _y0() -> torch.Tensor:
    return torch.ones(1, 1, dtype=torch.float64)


def _end(ts, solve=hn.sdeint, **kw) -> torch.Tensor:
    return solve(Decay(), _y0(), ts, method="euler", **{"dt": 1e-3, **kw})[-1, 0, 0]


def test_torch_func_jvp_in_ts_is_refused():
    # was (0.368, 0.0): the tangent on ts[-1] silently missing
    with pytest.raises(ValueError, match="ts carries a forward-mode tangent.*hn.odeint"):
        torch.func.jvp(_end, (_ts(),), (torch.tensor([0.0, 1.0], dtype=torch.float64),))


def test_torch_func_jacfwd_in_ts_is_refused():
    # was a zero Jacobian
    with pytest.raises(ValueError, match="ts carries a forward-mode tangent"):
        torch.func.jacfwd(_end, randomness="same")(_ts())


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_a_dual_ts_is_refused(name):
    # was an output without a tangent, from both entry points
    with fwAD.dual_level():
        ts = fwAD.make_dual(_ts(), torch.tensor([0.0, 1.0], dtype=torch.float64))
        with pytest.raises(ValueError, match="ts carries a forward-mode tangent.*y0 and the SDE's parameters"):
            _end(ts, SOLVERS[name])


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("setting", ["dt", "dt_min"])
def test_a_dual_step_setting_is_refused(name, setting):
    value = torch.tensor(1e-3 if setting == "dt" else 1e-5, dtype=torch.float64)
    with fwAD.dual_level():
        dual = fwAD.make_dual(value, torch.ones_like(value))
        with pytest.raises(ValueError, match=f"{setting} carries a forward-mode tangent.*Pass a float"):
            _end(_ts(), SOLVERS[name], **{setting: dual})


def test_torch_func_jvp_in_dt_is_refused():
    def end(dt):
        return _end(_ts(), dt=dt)

    one = torch.tensor(1.0, dtype=torch.float64)
    with pytest.raises(ValueError, match="dt carries a forward-mode tangent"):
        torch.func.jvp(end, (torch.tensor(1e-3, dtype=torch.float64),), (one,))


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_reverse_mode_in_ts_stays_refused(name):
    # torchsde refuses it too ("Argument ts must not require gradient")
    ts = _ts().requires_grad_()
    with pytest.raises(ValueError, match="gradients with respect to ts are not supported"):
        _end(ts, SOLVERS[name])


def test_tangents_on_y0_still_pass_with_times_not_differentiated():
    """Times closed over, or made inside the transform, carry no tangent and are not refused.

    dy(1)/dy0 = exp(-1); Euler with dt = 1e-3 gives (1 - 1e-3)^1000, whose error is about
    exp(-1) dt / 2 = 1.8e-4, inside the 5e-4 tolerance.
    """
    y0, one = _y0(), torch.ones(1, 1, dtype=torch.float64)

    def closed_over(y):
        return hn.sdeint(Decay(), y, _ts(), method="euler", dt=1e-3)[-1, 0, 0]

    def made_inside(y):
        ts = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
        return hn.sdeint(Decay(), y, ts, method="euler", dt=1e-3)[-1, 0, 0]

    for fn in (closed_over, made_inside):
        value, tangent = torch.func.jvp(fn, (y0,), (one,))
        assert abs(float(tangent) - math.exp(-1.0)) < 5e-4
        jac = torch.func.jacfwd(fn, randomness="same")(y0)
        assert abs(float(jac) - math.exp(-1.0)) < 5e-4
    with fwAD.dual_level():
        out = closed_over(fwAD.make_dual(y0, one))
        assert abs(float(fwAD.unpack_dual(out).tangent) - math.exp(-1.0)) < 5e-4
