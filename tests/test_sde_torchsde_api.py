"""torchsde's public API beyond sdeint: settings, types, the SDE base classes and ReverseBrownian.

torchsde's own tests (``benchmarks/torchsde_suite.py``) and its examples subclass ``torchsde.SDEIto``,
import enums from ``torchsde.settings`` and run a reversible solve back with ``torchsde.ReverseBrownian``;
without these a torchsde project did not switch with its import line.
"""

from __future__ import annotations

import pytest
import torch

from hybrid_node import sde as hsde
from hybrid_node.sde import _sde, brownian, settings
from hybrid_node.sde.solvers import METHODS as REGISTRY

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


def test_settings_name_what_the_registries_accept():
    # one source of truth: a method or noise type added to hybrid_node must show in settings too
    assert set(settings.METHODS.all()) == set(REGISTRY) | {"adjoint_reversible_heun"}
    assert settings.NOISE_TYPES.all() == sorted(_sde.NOISE_TYPES)
    assert settings.SDE_TYPES.all() == sorted(_sde.SDE_TYPES)
    assert settings.LEVY_AREA_APPROXIMATIONS.all() == sorted(brownian.LEVY_AREA_APPROXIMATIONS)
    assert "diagonal" in settings.NOISE_TYPES and "blah" not in settings.NOISE_TYPES
    assert (
        settings.METHODS.log_ode_midpoint == "log_ode" and settings.LEVY_AREA_APPROXIMATIONS.space_time == "space-time"
    )


def test_settings_and_types_match_torchsde():
    torchsde = pytest.importorskip("torchsde")
    import torchsde.settings as theirs
    import torchsde.types as their_types

    for name in ("METHODS", "NOISE_TYPES", "SDE_TYPES", "LEVY_AREA_APPROXIMATIONS", "METHOD_OPTIONS"):
        ours, ref = getattr(settings, name), getattr(theirs, name)
        assert ours.all() == ref.all(), name
        assert {k: getattr(ours, k) for k in dir(ours) if not k.startswith("__") and k != "all"} == {
            k: getattr(ref, k) for k in dir(ref) if not k.startswith("__") and k != "all"
        }, name
    public = {k for k in dir(their_types) if not k.startswith("_")} - {"torch"}
    assert public <= set(dir(hsde.types)), public - set(dir(hsde.types))
    assert torchsde.__version__  # the reference that was compared


class _Decay(hsde.SDEIto):
    def __init__(self):
        super().__init__(noise_type="diagonal")
        self.mu = torch.nn.Parameter(torch.tensor([0.5, -0.3]))

    def f(self, t, y):
        return -self.mu * y

    def g(self, t, y):
        return 0.2 * torch.sigmoid(y)


def test_sde_base_classes_check_their_types_and_carry_parameters():
    with pytest.raises(ValueError, match="noise type"):
        hsde.BaseSDE(noise_type="blah", sde_type="ito")
    with pytest.raises(ValueError, match="sde type"):
        hsde.BaseSDE(noise_type="diagonal", sde_type="blah")
    assert hsde.SDEStratonovich("general").sde_type == "stratonovich"
    sde = _Decay()
    assert (sde.noise_type, sde.sde_type) == ("diagonal", "ito")
    assert [p is sde.mu for p in sde.parameters()] == [True]  # an nn.Module: sdeint_adjoint finds its parameters
    y0 = torch.full((3, 2), 0.5, requires_grad=True)
    hsde.sdeint_adjoint(sde, y0, [0.0, 0.5], method="euler", dt=0.05)[-1].sum().backward()
    assert sde.mu.grad is not None and y0.grad is not None


def test_an_sde_ito_subclass_solves_as_in_torchsde():
    torchsde = pytest.importorskip("torchsde")
    y0 = torch.full((3, 2), 0.5)
    bm = torchsde.BrownianInterval(0.0, 0.5, (3, 2), entropy=3)
    ours = hsde.sdeint(_Decay(), y0, [0.0, 0.25, 0.5], bm=bm, method="euler", dt=0.05)
    torch.manual_seed(0)
    theirs = torchsde.sdeint(_Decay(), y0, [0.0, 0.25, 0.5], bm=bm, method="euler", dt=0.05)
    # the same Euler-Maruyama arithmetic; the step times differ in the last bit (t0 + k dt here, a running
    # sum there), and a Brownian bridge across such a gap moves W by ~sqrt(1e-17): 2e-11 was measured
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)


def test_reverse_brownian_mirrors_the_increments():
    bm = hsde.BrownianInterval(0.0, 1.0, (4, 2), entropy=7, levy_area_approximation="space-time")
    rev = hsde.ReverseBrownian(bm)
    assert (rev.shape, rev.dtype, rev.device, rev.levy_area_approximation) == (
        bm.shape,
        bm.dtype,
        bm.device,
        "space-time",
    )
    assert torch.equal(rev(-0.7, -0.2), bm(0.2, 0.7))
    w, u = rev(-0.9, -0.4, return_U=True)
    w_ref, u_ref = bm(0.4, 0.9, return_U=True)
    assert torch.equal(w, w_ref) and torch.equal(u, u_ref)
    with pytest.raises(ValueError, match="increments only"):
        rev(-0.5)


@pytest.mark.parametrize("noise_type,m", [("diagonal", 3), ("general", 2), ("additive", 2), ("scalar", 1)])
def test_reversible_heun_runs_back_on_the_reversed_path(noise_type, m):
    # Algebraic reversibility (Kidger et al. 2021): the negated SDE solved from ts[-1] back to ts[0] on the
    # reversed Brownian path, started from the forward solve's extra state, retraces the forward solve.
    torch.manual_seed(0)
    a = torch.randn(3, 3) * 0.5
    b = torch.randn(3, m) * 0.3 if noise_type != "diagonal" else torch.randn(3) * 0.3

    def g_of(t, y):
        if noise_type == "diagonal":
            return torch.sin(y + t) * b
        if noise_type == "additive":
            return (b * torch.cos(t)).expand(y.shape[0], 3, m)
        return torch.tanh(y).unsqueeze(-1) * b + 0.1 * t

    class Forward(torch.nn.Module):
        sde_type = "stratonovich"

        def __init__(self):
            super().__init__()
            self.noise_type = noise_type

        def f(self, t, y):
            return torch.tanh(y @ a) * torch.cos(t)

        def g(self, t, y):
            return g_of(t, y)

    class Minus(Forward):
        def f(self, t, y):
            return -super().f(-t, y)

        def g(self, t, y):
            return -super().g(-t, y)

    ts = torch.linspace(0.0, 1.9, 20)
    y0 = torch.full((5, 3), 0.1)
    bm = hsde.BrownianInterval(ts[0], ts[-1], (5, m), entropy=11)
    ys, (f, g, z) = hsde.sdeint(Forward(), y0, ts, bm=bm, method="reversible_heun", dt=0.1, extra=True)
    back = hsde.sdeint(
        Minus(),
        ys[-1],
        -ts.flip(0),
        bm=hsde.ReverseBrownian(bm),
        method="reversible_heun",
        dt=0.1,
        extra_solver_state=(-f, -g, z),
    ).flip(0)
    # exact up to rounding: each backward step undoes one forward step algebraically (torchsde's test: 1e-6)
    torch.testing.assert_close(back, ys, rtol=1e-10, atol=1e-10)
