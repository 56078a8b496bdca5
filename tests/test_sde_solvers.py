"""SDE solvers: strong and weak orders as log-log slopes, Ito vs Stratonovich, parity with torchsde, errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _sde_problems import GBM, OU, Heisenberg, NeuralSDE, ScalarGBM, fine_grid_levy_area

import hybrid_node as hn
from hybrid_node.sde import METHODS

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")


def _slope(dts, errs) -> float:
    x, y = torch.tensor(dts).log(), torch.tensor(errs).log()
    return float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


STRONG = [  # (method, options, sde class, sde_type, expected strong order on this problem)
    ("euler", None, GBM, "ito", 0.5),
    ("milstein", None, GBM, "ito", 1.0),
    ("milstein", {"grad_free": True}, GBM, "ito", 1.0),
    ("milstein", None, GBM, "stratonovich", 1.0),
    ("milstein", {"grad_free": True}, GBM, "stratonovich", 1.0),
    ("milstein", None, ScalarGBM, "ito", 1.0),
    ("srk", None, GBM, "ito", 1.5),
    ("srk", None, ScalarGBM, "ito", 1.5),
    ("euler_heun", None, GBM, "stratonovich", 1.0),
    ("heun", None, GBM, "stratonovich", 1.0),
    ("midpoint", None, GBM, "stratonovich", 1.0),
    ("reversible_heun", None, GBM, "stratonovich", 0.5),  # 0.5 in general (Kidger et al.); ~1 on GBM
    ("log_ode", None, GBM, "stratonovich", 1.0),  # commutative noise: no Levy area term
]


@pytest.mark.parametrize("method,options,cls,sde_type,order", STRONG)
def test_strong_order_on_geometric_brownian_motion(method, options, cls, sde_type, order):
    n, t1 = 1000, 1.0
    sde = cls(sde_type)
    y0 = torch.ones(n, 1)
    bm = hn.BrownianInterval(0.0, t1, (n, 1), entropy=11, levy_area_approximation="foster")  # gives U and A
    exact = sde.exact(y0, t1, bm(0.0, t1)).detach()
    dts = [2.0**-k for k in range(3, 8)]
    with torch.no_grad():
        errs = [
            float(
                (hn.sdeint(sde, y0, [0.0, t1], bm=bm, method=method, dt=dt, options=options)[-1] - exact).abs().mean()
            )
            for dt in dts
        ]
    slope = _slope(dts, errs)
    assert slope > order - 0.15, (slope, errs)


def _ou_exact(sde: OU, y0, bm, t1: float, fine: float):
    """y(t1) = e^{-theta t1} y0 + sigma (W(t1) - theta int_0^t1 e^{-theta (t1 - s)} W(s) ds), the integral by
    exact cell integrals of W (space-time Levy area) times the exponential at the cell midpoint."""
    integral = torch.zeros_like(y0)
    k = 0
    while (k + 1) * fine <= t1 + 1e-12:
        a, b = k * fine, (k + 1) * fine
        w_a = bm(0.0, a) if a > 0 else torch.zeros_like(y0)
        _, u = bm(a, b, return_U=True)
        integral = integral + math.exp(-sde.theta * (t1 - 0.5 * (a + b))) * (u + fine * w_a)
        k += 1
    return math.exp(-sde.theta * t1) * y0 + sde.sigma * (bm(0.0, t1) - sde.theta * integral)


@pytest.mark.parametrize("method,order", [("euler", 1.0), ("srk", 1.5)])
def test_strong_order_on_ornstein_uhlenbeck(method, order):
    n, t1, fine = 500, 1.0, 2.0**-11
    sde, y0 = OU(), torch.ones(500, 1)
    bm = hn.BrownianInterval(0.0, t1, (n, 1), entropy=5, levy_area_approximation="space-time", dt=fine)
    exact = _ou_exact(sde, y0, bm, t1, fine)
    dts = [2.0**-k for k in range(2, 7)]
    errs = [float((hn.sdeint(sde, y0, [0.0, t1], bm=bm, method=method, dt=dt)[-1] - exact).abs().mean()) for dt in dts]
    assert _slope(dts, errs) > order - 0.15, errs


class _RotatingGBM(torch.nn.Module):
    """dy = (a y + c J y) dt + s J y dW with J the rotation generator: scalar noise on a 2-d state whose
    diffusion has a non-symmetric Jacobian (s J), so (dg/dy) g and (dg/dy)^T g differ. J commutes with
    itself, so y(t) = exp(alpha t) R(c t + s W(t)) y0 with alpha = a (+ s^2/2 for Ito, as J^2 = -1)."""

    noise_type = "scalar"

    def __init__(self, sde_type: str, a: float = 0.3, c: float = 0.5, s: float = 0.7):
        super().__init__()
        self.sde_type, self.a, self.c, self.s = sde_type, a, c, s
        self.j = torch.tensor([[0.0, -1.0], [1.0, 0.0]])

    def f(self, t, y):
        return self.a * y + self.c * y @ self.j.T

    def g(self, t, y):
        return (self.s * y @ self.j.T).unsqueeze(-1)

    def exact(self, y0: torch.Tensor, t: float, w: torch.Tensor) -> torch.Tensor:
        alpha = self.a * t + (0.5 * self.s**2 * t if self.sde_type == "ito" else 0.0)
        angle = self.c * t + self.s * w[:, 0]
        cos, sin = torch.cos(angle), torch.sin(angle)
        return math.exp(alpha) * torch.stack([cos * y0[:, 0] - sin * y0[:, 1], sin * y0[:, 0] + cos * y0[:, 1]], -1)


@pytest.mark.parametrize(
    "method,options,sde_type,order",
    [
        ("milstein", None, "ito", 1.0),
        ("milstein", {"grad_free": True}, "ito", 1.0),
        ("milstein", None, "stratonovich", 1.0),
        ("srk", None, "ito", 1.5),
    ],
)
def test_strong_order_with_scalar_noise_on_a_two_dimensional_state(method, options, sde_type, order):
    # The GBM tests have d = 1, where the Jacobian is symmetric. Measured here (1000 paths): milstein 0.97,
    # grad-free 0.97, Stratonovich 0.98, srk 1.51; torchsde 0.2.6's milstein, which uses (dg/dy)^T g, 0.50.
    n, t1 = 1000, 1.0
    sde = _RotatingGBM(sde_type)
    y0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    bm = hn.BrownianInterval(0.0, t1, (n, 1), entropy=11, levy_area_approximation="space-time")
    exact = sde.exact(y0, t1, bm(0.0, t1))
    dts = [2.0**-k for k in range(3, 8)]
    with torch.no_grad():
        errs = [
            float(
                (hn.sdeint(sde, y0, [0.0, t1], bm=bm, method=method, dt=dt, options=options)[-1] - exact)
                .norm(dim=-1)
                .mean()
            )
            for dt in dts
        ]
    # the GBM tests' slack: over 8 seeds the slopes were 0.975 +- 0.003 (milstein), 1.503 +- 0.009 (srk)
    assert _slope(dts, errs) > order - 0.15, errs


@pytest.mark.parametrize(
    "method,sde_type", [("euler", "ito"), ("milstein", "ito"), ("srk", "ito"), ("heun", "stratonovich")]
)
def test_weak_order_one_on_geometric_brownian_motion(method, sde_type):
    # E[y_h(T)] - E[y(T)] = E[y_h(T) - y(T)]: pairing each path with its exact solution removes most of
    # the Monte Carlo noise, so the O(h) weak error shows with a few thousand paths.
    n, t1 = 4000, 1.0
    sde = GBM(sde_type, mu=1.0, sigma=0.5)
    y0 = torch.ones(n, 1)
    bm = hn.BrownianInterval(0.0, t1, (n, 1), entropy=2, levy_area_approximation="space-time")
    exact = sde.exact(y0, t1, bm(0.0, t1)).detach()
    dts = [2.0**-k for k in range(1, 5)]
    with torch.no_grad():
        errs = [
            abs(float((hn.sdeint(sde, y0, [0.0, t1], bm=bm, method=method, dt=dt)[-1] - exact).mean())) for dt in dts
        ]
    assert _slope(dts, errs) > 0.8, errs


def test_ito_and_stratonovich_differ_by_the_drift_correction():
    # dy = mu y dt + s y dW (Ito) is dy = (mu - s^2/2) y dt + s y o dW (Stratonovich): same paths.
    n = 200
    bm = hn.BrownianInterval(0.0, 1.0, (n, 1), entropy=4)
    y0 = torch.ones(n, 1)
    ito = hn.sdeint(GBM("ito", 0.5, 0.8), y0, [0.0, 1.0], bm=bm, method="milstein", dt=2**-9)
    strat = hn.sdeint(GBM("stratonovich", 0.5 - 0.32, 0.8), y0, [0.0, 1.0], bm=bm, method="heun", dt=2**-9)
    uncorrected = hn.sdeint(GBM("stratonovich", 0.5, 0.8), y0, [0.0, 1.0], bm=bm, method="heun", dt=2**-9)
    assert float((ito - strat).detach().abs().max()) < 0.02
    assert float((ito - uncorrected).detach().abs().mean()) > 0.2


def test_output_layout_logqp_and_extra():
    torch.manual_seed(0)
    sde = NeuralSDE("diagonal", "ito")
    sde.h = lambda t, y: torch.zeros_like(y)
    y0 = torch.randn(6, 3)
    ts = torch.linspace(0, 1, 5)
    ys, log_ratio = hn.sdeint(sde, y0, ts, dt=0.05, method="euler", logqp=True)
    assert ys.shape == (5, 6, 3) and log_ratio.shape == (4, 6) and bool((log_ratio >= 0).all())
    torch.testing.assert_close(ys[0], y0)
    ys2, extra = hn.sdeint(NeuralSDE("general", "stratonovich"), y0, ts, method="reversible_heun", extra=True)
    assert ys2.shape == (5, 6, 3) and len(extra) == 3 and extra[1].shape == (6, 3, 2)


def test_reversible_heun_extra_state_continues_a_solve_in_either_library():
    """The extra state is torchsde's (f, g, z): a solve continued from either library's state agrees."""
    torchsde = pytest.importorskip("torchsde")
    torch.manual_seed(0)
    sde, y0 = NeuralSDE("diagonal", "stratonovich"), torch.randn(4, 3)

    def bm():
        return torchsde.BrownianInterval(0.0, 1.0, (4, 3), entropy=5)

    first, second = torch.tensor([0.0, 0.5]), torch.tensor([0.5, 1.0])
    kw = {"method": "reversible_heun", "dt": 1 / 16}
    ys, state = torchsde.sdeint(sde, y0, first, bm=bm(), extra=True, **kw)
    ours, our_state = hn.sdeint(sde, y0, first, bm=bm(), extra=True, **kw)
    for a, b in zip(our_state, state):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    theirs = torchsde.sdeint(sde, ys[-1], second, bm=bm(), extra_solver_state=state, **kw)
    resumed = hn.sdeint(sde, ys[-1], second, bm=bm(), extra_solver_state=state, **kw)
    torch.testing.assert_close(resumed, theirs, rtol=1e-6, atol=1e-6)


def test_adaptive_stepping_agrees_with_fine_fixed_steps():
    n = 50
    sde, y0 = GBM("ito"), torch.ones(n, 1)
    bm = hn.BrownianInterval(0.0, 1.0, (n, 1), entropy=9)
    with torch.no_grad():
        fine = hn.sdeint(sde, y0, [0.0, 0.5, 1.0], bm=bm, method="milstein", dt=2**-10)
        adaptive = hn.sdeint(
            sde, y0, [0.0, 0.5, 1.0], bm=bm, method="milstein", dt=0.1, adaptive=True, rtol=1e-4, atol=1e-4
        )
        coarse = hn.sdeint(sde, y0, [0.0, 0.5, 1.0], bm=bm, method="milstein", dt=0.1)
    # At ts[-1], which every grid hits (between steps outputs are linear interpolations, as in torchsde).
    err = float(((fine[-1] - adaptive[-1]) / fine[-1]).abs().mean())
    assert err < 2e-2 and err < 0.3 * float(((fine[-1] - coarse[-1]) / fine[-1]).abs().mean())


def test_every_method_runs_on_every_noise_type_it_declares():
    torch.manual_seed(1)
    for name, (factory, _) in METHODS.items():
        for sde_type in factory("ito").sde_types:
            for noise in factory(sde_type).noise_types:
                if noise in ("diagonal", "general"):
                    sde = NeuralSDE(noise, sde_type)
                elif noise == "scalar":
                    sde = ScalarGBM(sde_type)
                else:
                    sde = OU()
                    sde.sde_type = sde_type
                y0 = torch.rand(4, sde.d if isinstance(sde, NeuralSDE) else 1)
                ys = hn.sdeint(sde, y0, [0.0, 0.3], method=name, dt=0.1)
                assert ys.shape == (2, *y0.shape) and bool(torch.isfinite(ys).all()), (name, sde_type, noise)


def test_bad_inputs_say_how_to_fix_them():
    sde, y0 = GBM(), torch.ones(3, 1)
    with pytest.raises(ValueError, match="batch dimension"):
        hn.sdeint(sde, torch.ones(3), [0.0, 1.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        hn.sdeint(sde, y0, [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="unknown SDE method"):
        hn.sdeint(sde, y0, [0.0, 1.0], method="rk4")
    with pytest.raises(ValueError, match="Unknown options"):
        hn.sdeint(sde, y0, [0.0, 1.0], method="euler", options={"grad_free": True})
    with pytest.raises(ValueError, match="solves stratonovich SDEs but sde_type is 'ito'"):
        hn.sdeint(sde, y0, [0.0, 1.0], method="heun")
    with pytest.raises(ValueError, match="for ito SDEs with general noise use one of"):
        hn.sdeint(NeuralSDE("general", "ito"), torch.ones(2, 3), [0.0, 1.0], method="milstein")
    bad = NeuralSDE("general", "ito")
    bad.g = lambda t, y: torch.ones(2, 3, 2)
    bad.noise_type = "diagonal"
    with pytest.raises(ValueError, match="use noise_type 'general'"):
        hn.sdeint(bad, torch.ones(2, 3), [0.0, 1.0])
    with pytest.raises(ValueError, match="noise_type"):
        hn.sdeint(type("S", (), {"sde_type": "ito", "f": None})(), y0, [0.0, 1.0])
    with pytest.raises(ValueError, match="levy_area_approximation='space-time'"):
        hn.sdeint(sde, y0, [0.0, 1.0], method="srk", bm=hn.BrownianInterval(0.0, 1.0, (3, 1)))
    with pytest.raises(ValueError, match="levy_area_approximation='foster'"):
        bm = hn.BrownianInterval(0.0, 1.0, (2, 2), levy_area_approximation="space-time")
        hn.sdeint(NeuralSDE("general", "stratonovich"), torch.ones(2, 3), [0.0, 1.0], method="log_ode", bm=bm)
    with pytest.raises(ValueError, match="bm must have shape"):
        hn.sdeint(sde, y0, [0.0, 1.0], method="euler", bm=hn.BrownianInterval(0.0, 1.0, (2, 1)))
    # another dtype promoted the whole solve to the wider one (float32 states came back float64)
    other = torch.float32 if y0.dtype == torch.float64 else torch.float64
    bm = hn.BrownianInterval(0.0, 1.0, (y0.shape[0], 1), dtype=other)
    with pytest.raises(ValueError, match=rf"bm has dtype {other} but y0 has {y0.dtype}"):
        hn.sdeint(sde, y0, [0.0, 1.0], method="euler", bm=bm)
    assert hn.sdeint(sde, y0.to(other), [0.0, 1.0], method="euler", bm=bm).dtype == other
    with pytest.raises(ValueError, match="prior drift"):
        hn.sdeint(sde, y0, [0.0, 1.0], logqp=True)
    with pytest.raises(ValueError, match="unknown keys in names"):
        hn.sdeint(sde, y0, [0.0, 1.0], names={"drfit": "f"})
    with pytest.raises(ValueError, match="dt must be positive"):
        hn.sdeint(sde, y0, [0.0, 1.0], dt=0.0)


def test_log_ode_on_non_commutative_noise_strong_order_and_levy_area_in_law():
    sde, n, t1, cells = Heisenberg(), 2000, 1.0, 2**9
    y0 = torch.zeros(n, 3)
    bm = hn.BrownianInterval(0.0, t1, (n, 2), entropy=5, levy_area_approximation="foster", dt=t1 / cells)
    # x3(t1) = 2 A_12 on this path, from its fine grid (error ~ 1/sqrt(cells), 5 % of the finest)
    true = 2 * fine_grid_levy_area(bm, t1, cells)
    dts = [2.0**-k for k in range(1, 7)]
    errs = {}
    with torch.no_grad():
        for method in ("log_ode", "midpoint"):
            errs[method] = [
                float((hn.sdeint(sde, y0, [0.0, t1], bm=bm, method=method, dt=dt)[-1, :, 2] - true).abs().mean())
                for dt in dts
            ]
    # Strong order 0.5 for both (an approximate area is not the path's area), the log-ODE constant smaller.
    assert _slope(dts, errs["log_ode"]) > 0.35, errs
    assert all(a < 0.95 * b for a, b in zip(errs["log_ode"], errs["midpoint"])), errs
    # In law the area is right: E[cos x3(1)] = 1/cosh(1) at every step size, where the midpoint method,
    # which sees no area inside a step, has weak error ~0.35 dt.
    n = 20000
    bm = hn.BrownianInterval(0.0, t1, (n, 2), entropy=3, levy_area_approximation="foster")
    y0 = torch.zeros(n, 3)
    weak = {}
    with torch.no_grad():
        for method in ("log_ode", "midpoint"):
            weak[method] = [
                float(torch.cos(hn.sdeint(sde, y0, [0.0, t1], bm=bm, method=method, dt=dt)[-1, :, 2]).mean())
                - 1 / math.cosh(t1)
                for dt in dts[:3]
            ]
    mc = 3 * 0.6 / math.sqrt(n)  # three standard errors of the mean of cos (its std is below 0.6)
    assert all(abs(e) < mc for e in weak["log_ode"]), weak
    assert all(e > 0.04 for e in weak["midpoint"]) and _slope(dts[:3], weak["midpoint"]) > 0.85, weak


def test_reversible_heun_steps_are_undone_exactly():
    from hybrid_node.sde._sde import SDEView
    from hybrid_node.sde.solvers.reversible_heun import ReversibleHeun, forward_step, reverse_step

    torch.manual_seed(2)
    sde = SDEView(NeuralSDE("general", "stratonovich"))
    y = torch.randn(4, 3)
    extra = ReversibleHeun().init(sde, 0.0, y)
    state = (y, extra)
    dws = [0.3 * torch.randn(4, 2) for _ in range(20)]
    for k, dw in enumerate(dws):
        state = forward_step(sde, 0.05 * k, 0.05 * (k + 1), dw, *state)
    for k, dw in reversed(list(enumerate(dws))):
        state = reverse_step(sde, 0.05 * k, 0.05 * (k + 1), dw, *state)
    torch.testing.assert_close(state[0], y, rtol=0, atol=1e-12)
    torch.testing.assert_close(state[1][2], extra[2], rtol=0, atol=1e-12)


PARITY = [  # torchsde's scalar-noise Milstein uses J^T g instead of J g, and its diagonal SRK is another tableau
    ("euler", None, "diagonal", "ito"),
    ("euler", None, "general", "ito"),
    ("milstein", None, "diagonal", "ito"),
    ("milstein", {"grad_free": True}, "diagonal", "ito"),
    ("milstein", None, "diagonal", "stratonovich"),
    ("euler_heun", None, "general", "stratonovich"),
    ("euler_heun", None, "diagonal", "stratonovich"),  # a diffusion that depends on t
    ("heun", None, "general", "stratonovich"),
    ("midpoint", None, "general", "stratonovich"),
    ("reversible_heun", None, "general", "stratonovich"),
    ("srk", None, "additive", "ito"),
    ("log_ode", None, "general", "stratonovich"),
]


@pytest.mark.parametrize("method,options,noise,sde_type", PARITY)
def test_parity_with_torchsde_on_the_same_brownian_path(method, options, noise, sde_type):
    torchsde = pytest.importorskip("torchsde")
    torch.manual_seed(0)
    if noise == "additive":
        sde = OU()
        y0, m = torch.randn(5, 1), 1
    else:
        sde = NeuralSDE(noise, sde_type)
        y0, m = torch.randn(5, 3), 3 if noise == "diagonal" else 2
    ts = torch.tensor([0.0, 0.3, 0.5, 1.0])
    levy = "foster" if method == "log_ode" else "space-time"  # log_ode reads torchsde's own Levy area
    bm = torchsde.BrownianInterval(0.0, 1.0, (5, m), levy_area_approximation=levy, entropy=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torchsde.sdeint(sde, y0, ts, bm=bm, method=method, dt=1 / 64, options=options)
    ours = hn.sdeint(sde, y0, ts, bm=bm, method=method, dt=1 / 64, options=options)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_reusing_evaluates_f_and_g_once_per_state_and_grad_mode():
    """SDEView.reusing: inside the block f and g at one (t, y) are evaluated once; another tensor (even an
    equal one), another grad mode, or a call outside the block evaluates them anew."""
    from hybrid_node.sde._sde import SDEView

    class Counting:
        noise_type, sde_type = "diagonal", "ito"

        def __init__(self):
            self.calls = {"f": 0, "g": 0}

        def f(self, t, y):
            self.calls["f"] += 1
            return -y

        def g(self, t, y):
            self.calls["g"] += 1
            return 0.5 * y

    sde = Counting()
    view = SDEView(sde)
    y = torch.ones(2, 3)
    with view.reusing(0.25, y):
        f1, g1 = view.f(0.25, y), view.g(0.25, y)
        f2, g2 = view.f_and_g(0.25, y)
        assert view.f(0.25, y) is f1 and view.g(0.25, y) is g1 and f2 is f1 and g2 is g1
        assert sde.calls == {"f": 1, "g": 1}
        view.f(0.25, y.clone())  # another tensor: it may carry another graph
        view.f(0.5, y)  # another time
        with torch.no_grad():
            view.g(0.25, y)  # another grad mode
        assert sde.calls == {"f": 3, "g": 2}
    view.f(0.25, y)
    assert sde.calls["f"] == 4
    torch.testing.assert_close(f1, -y)
    torch.testing.assert_close(g1, 0.5 * y)


def test_a_missing_drift_or_diffusion_alone_is_named():
    """A method that needs f (or g) alone from an SDE that gives only f_and_g_prod / g_prod says what to define."""
    from hybrid_node.sde._sde import SDEView

    class ProdOnly:
        noise_type, sde_type = "general", "ito"

        def f_and_g_prod(self, t, y, v):
            return -y, v.sum(-1, keepdim=True) * y

    view = SDEView(ProdOnly())
    with pytest.raises(ValueError, match=r"needs the drift alone; define f\(t, y\)"):
        view.f(0.0, torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"needs the diffusion matrix; define g\(t, y\) or f_and_g\(t, y\)"):
        view.g(0.0, torch.ones(1, 2))


class _Decay(torch.nn.Module):
    """dy = -2 y dt with zero noise: the linear test equation of the drift alone."""

    noise_type, sde_type = "diagonal", "stratonovich"

    def f(self, t, y):
        return -2.0 * y

    def g(self, t, y):
        return torch.zeros_like(y)


def test_reversible_heun_grows_on_a_decaying_drift_at_its_parasitic_root_as_torchsdes_does():
    # On y' = λy with a = λ dt the scheme's characteristic roots are a ± sqrt(1 + a²) (docs/sde.md):
    # for λ < 0 one has modulus above 1, so late steps multiply y by that root whatever the true decay.
    torchsde = pytest.importorskip("torchsde")
    dt, n = 0.05, 400
    ts = torch.linspace(0.0, n * dt, n + 1, dtype=torch.float64)
    y0 = torch.ones(1, 1, dtype=torch.float64)
    ys = hn.sde.sdeint(_Decay(), y0, ts, method="reversible_heun", dt=dt)
    a = -2.0 * dt
    parasitic = a - math.sqrt(1.0 + a * a)
    # the other root's share is (|root ratio|)^-400 ~ 1e-35 of it by the end: the ratio is the root to rounding
    assert (ys[-1] / ys[-2]).item() == pytest.approx(parasitic, rel=1e-9)
    assert abs(ys[-1].item()) > 1e10  # exact solution e^-40 ~ 4e-18
    bm = torchsde.BrownianInterval(0.0, n * dt, size=(1, 1), dtype=torch.float64)
    theirs = torchsde.sdeint(_Decay(), y0, ts, method="reversible_heun", dt=dt, bm=bm)
    # the same recurrence in both libraries: equal up to the rounding of 400 steps of growth 1.1
    torch.testing.assert_close(ys, theirs, rtol=1e-10, atol=0.0)
