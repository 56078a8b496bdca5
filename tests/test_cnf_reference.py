"""The CNF against its reference implementations with the same weights and inputs: torchdiffeq's
examples/cnf.py (exact trace, hypernetwork field) and FFJORD's lib/layers (Hutchinson's estimator with
a given probe, its exact trace and its Jacobian regularisers); finite differences of the log-likelihood."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import torch
from _ffjord_odenet import odenet_pair
from _reference_code import extract_tree, import_package, load_module, read_source, repository
from torch import nn

from hybrid_node.nn.cnf import CNF, CNFSolver, ExactTrace, HutchinsonTrace, RNODERegularization
from hybrid_node.nn.cnf_fields import PlanarCNFField, TimeMLPField
from hybrid_node.nn.cnf_trace import exact_divergence, sample_noise

pytestmark = [
    pytest.mark.usefixtures("one_thread", "float64_default"),
    # the references call torch.tensor(t) on a tensor t, which warns
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

#: the references' repositories (checkouts or bare git directories)
TORCHDIFFEQ_REPO = repository("TORCHDIFFEQ_REPO", "/work/.mirror/rtqichen+torchdiffeq/repo")
FFJORD_REPO = repository("FFJORD_REPO", "/work/.mirror/rtqichen+ffjord/repo")


@pytest.fixture
def torchdiffeq_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """torchdiffeq's examples/cnf.py as a module, read from the repository into ``tmp_path`` (skip if absent)."""
    pytest.importorskip("torchdiffeq")
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    path = tmp_path / "torchdiffeq_cnf_example.py"
    path.write_text(read_source(TORCHDIFFEQ_REPO, "examples/cnf.py", "TORCHDIFFEQ_REPO", "torchdiffeq's repository"))
    # the example draws its data with sklearn's make_circles, which is not used here, and parses sys.argv
    if "sklearn" not in sys.modules:
        datasets = types.ModuleType("sklearn.datasets")
        datasets.make_circles = None
        monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
        monkeypatch.setitem(sys.modules, "sklearn.datasets", datasets)
    monkeypatch.setattr(sys, "argv", ["cnf.py"])
    return load_module(path, "torchdiffeq_cnf_example")


@pytest.fixture
def ffjord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """FFJORD's lib/layers (ODEnet, ODEfunc, CNF, the regularisers), imported as the package ``lib``
    from a copy in ``tmp_path`` (skip if absent)."""
    pytest.importorskip("torchdiffeq")  # lib/layers/cnf.py solves with it
    root = extract_tree(FFJORD_REPO, "lib", tmp_path, "FFJORD_REPO", "FFJORD's repository")
    layers, regularization = import_package(root, "lib", ["layers", "layers.wrappers.cnf_regularization"], monkeypatch)
    return types.SimpleNamespace(layers=layers, regularization=regularization)


class _StateOf(nn.Module):
    """The vector field of torchdiffeq's example CNF, whose forward takes (t, (z, log p)) and returns
    (dz/dt, d log p/dt), as a field ``f(t, z)``."""

    def __init__(self, func: nn.Module):
        super().__init__()
        self.func = func

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.func(t, (z, z.new_zeros(z.shape[0], 1)))[0]


def _example_logp(example, func, x, **solver):
    """log p(x) as torchdiffeq's example computes it: from data at t1 = 10 to the base N(0, 0.1 I) at t0 = 0."""
    import torchdiffeq

    z_t, logp_diff_t = torchdiffeq.odeint(func, (x, x.new_zeros(x.shape[0], 1)), torch.tensor([10.0, 0.0]), **solver)
    p_z0 = torch.distributions.MultivariateNormal(torch.zeros(2), 0.1 * torch.eye(2))
    return p_z0.log_prob(z_t[-1]) - logp_diff_t[-1].view(-1)


def _example_flow(example, solver: CNFSolver):
    torch.manual_seed(0)
    func = example.CNF(in_out_dim=2, hidden_dim=8, width=16)
    flow = CNF(_StateOf(func), 2, end_time=10.0, learn_end_time=False, base_std=math.sqrt(0.1), solver=solver)
    x = 0.7 * torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    return func, flow, x


def test_exact_log_density_and_gradient_match_torchdiffeq_example_step_for_step(torchdiffeq_example):
    # rk4 with 20 steps: the example steps h = 0.5 in t over [10, 0], we step 0.05 in s = 1 - t / 10,
    # the same points, so the two differ by the rounding of the time scaling only (measured 1e-15).
    func, flow, x = _example_flow(torchdiffeq_example, CNFSolver(method="rk4", options={"step_size": 0.05}))
    theirs = _example_logp(torchdiffeq_example, func, x, method="rk4", options={"step_size": 0.5})
    ours = flow.log_prob(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    params = list(func.parameters())
    g_theirs = torch.autograd.grad(theirs.mean(), params)
    g_ours = torch.autograd.grad(ours.mean(), params)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)  # the same arithmetic, rounded differently


def test_exact_log_density_matches_torchdiffeq_example_with_dopri5(torchdiffeq_example):
    func, _, x = _example_flow(torchdiffeq_example, CNFSolver())
    reference = _example_logp(torchdiffeq_example, func, x, method="dopri5", rtol=1e-11, atol=1e-11)
    for tol, bound in [(1e-11, 1e-8), (1e-5, 1e-3)]:
        # Bounds: both solvers' global errors at tolerance tol over T = 10 (the example's own dopri5 at
        # 1e-5 lands 7e-4 from the tight solution, ours 3e-5; at 1e-11 the two agree to 5e-11).
        _, flow, _ = _example_flow(torchdiffeq_example, CNFSolver(rtol=tol, atol=tol))
        torch.testing.assert_close(flow.log_prob(x), reference, rtol=0, atol=bound)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_hutchinson_log_density_matches_ffjord_with_the_same_probe(ffjord, noise, method):
    dim, end_time = 3, 0.8
    net, field = odenet_pair(ffjord.layers.ODEnet, dim, end_time)
    x = torch.randn(6, dim, generator=torch.Generator().manual_seed(2))
    probe = sample_noise(noise, x, torch.Generator().manual_seed(7))  # the draw our solve makes below
    odefunc = ffjord.layers.ODEfunc(net, divergence_fn="approximate", rademacher=noise == "rademacher")
    if method == "rk4":
        theirs_solver, ours_solver = {"options": {"step_size": 0.05 * end_time}}, {"options": {"step_size": 0.05}}
    else:
        theirs_solver = ours_solver = {"rtol": 1e-9, "atol": 1e-9}
    cnf = ffjord.layers.CNF(
        odefunc, T=end_time, solver=method, **{k: v for k, v in theirs_solver.items() if k != "options"}
    )
    cnf.solver_options = theirs_solver.get("options", {})
    # FFJORD's CNF draws the probe in before_odeint(); hand it ours instead
    odefunc.before_odeint = lambda e=None: ffjord.layers.ODEfunc.before_odeint(odefunc, probe)
    cnf.train()  # in eval mode FFJORD takes the exact trace of 2-d data (and of nothing else)
    z, delta_logp = cnf(x, x.new_zeros(x.shape[0], 1))
    theirs = -0.5 * z.pow(2).sum(1) - 0.5 * dim * math.log(2 * math.pi) - delta_logp.view(-1)

    flow = CNF(field, dim, end_time=end_time, learn_end_time=False, trace=HutchinsonTrace(noise))
    flow.solver = CNFSolver(method=method, **ours_solver)
    res = flow.to_base(x, generator=torch.Generator().manual_seed(7))
    # rk4 takes the same steps (the differences are the rounding of 1e-16 quantities); dopri5 at 1e-9
    # picks its own steps in each time variable, and its global error over T = 0.8 stays below 1e-6
    # (measured 1.5e-7)
    atol = 1e-12 if method == "rk4" else 1e-6
    torch.testing.assert_close(res.z, z, rtol=0, atol=atol)
    torch.testing.assert_close(res.log_prob, theirs, rtol=0, atol=atol)


def test_exact_log_density_matches_ffjord_brute_force_trace(ffjord):
    # FFJORD's evaluation of 2-d data: the trace summed over D backward passes (divergence_bf).
    dim, end_time = 2, 1.3
    net, field = odenet_pair(ffjord.layers.ODEnet, dim, end_time)
    x = torch.randn(6, dim, generator=torch.Generator().manual_seed(3))
    odefunc = ffjord.layers.ODEfunc(net, divergence_fn="brute_force")
    cnf = ffjord.layers.CNF(odefunc, T=end_time, rtol=1e-10, atol=1e-10).eval()
    z, delta_logp = cnf(x, x.new_zeros(x.shape[0], 1))
    theirs = -0.5 * z.pow(2).sum(1) - math.log(2 * math.pi) - delta_logp.view(-1)
    flow = CNF(field, dim, end_time=end_time, learn_end_time=False, solver=CNFSolver(rtol=1e-10, atol=1e-10))
    # Global errors of two dopri5 solves at 1e-10 over T = 1.3 (measured agreement ~1e-10)
    torch.testing.assert_close(flow.log_prob(x), theirs, rtol=0, atol=1e-7)


def test_jacobian_regulariser_integrands_match_ffjord(ffjord):
    # FFJORD's jacobian_frobenius_regularization_fn is the batch mean of ||df/dz||_F / D (the root mean
    # square of the entries) and l2_regularzation_fn the batch mean of ||f|| / sqrt(D): one sample at a
    # time, they are the square roots of our integrands ||df/dz||_F^2 and ||f||^2, scaled.
    dim = 3
    net, _ = odenet_pair(ffjord.layers.ODEnet, dim, 1.0)
    t = torch.tensor(0.4)
    z = torch.randn(5, dim, generator=torch.Generator().manual_seed(4))
    ours = exact_divergence(lambda v: net(t, v), z, create_graph=False)
    reg = ffjord.regularization
    for b in range(z.shape[0]):
        zb = z[b : b + 1].clone().requires_grad_(True)
        fb = net(t, zb)
        context = types.SimpleNamespace()
        jac = reg.jacobian_frobenius_regularization_fn(zb, None, fb, None, context)
        l2 = reg.l2_regularzation_fn(zb, None, fb, None, context)
        # the same derivatives summed in another order
        torch.testing.assert_close(ours.frobenius_sq[b], (dim * jac) ** 2, rtol=1e-12, atol=0)
        torch.testing.assert_close(ours.f[b].pow(2).sum(), dim * l2**2, rtol=1e-12, atol=0)
        # and the trace is the trace of FFJORD's minibatch Jacobian
        full = reg._get_minibatch_jacobian(fb, zb)[0]
        torch.testing.assert_close(ours.trace[b], torch.trace(full), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("trace", [ExactTrace(), HutchinsonTrace("gaussian")])
def test_loss_gradient_matches_finite_differences(adjoint, trace):
    # The regularised loss of two stacked blocks, differentiated with respect to every kind of
    # parameter (an MLP weight, a planar hypernetwork weight, each block's log T) and the data.
    torch.manual_seed(0)
    flow = CNF(
        [TimeMLPField(2, (8,)), PlanarCNFField(2, 3, hyper_hidden=4)],
        2,
        end_time=0.9,
        trace=trace,
        solver=CNFSolver(rtol=1e-10, atol=1e-10, adjoint=adjoint),
        regularization=RNODERegularization(kinetic=0.1, jacobian=0.2),
    )
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(5), requires_grad=True)

    def loss() -> torch.Tensor:
        return flow.loss(x, generator=torch.Generator().manual_seed(6))[0]

    blocks = flow.blocks
    picks = [
        (blocks[0].field.layers[0].weight, (1, 2)),
        (blocks[1].field.hyper[2].weight, (3, 1)),
        (blocks[0].log_end_time, ()),
        (blocks[1].log_end_time, ()),
        (x, (2, 1)),
    ]
    grads = torch.autograd.grad(loss(), [p for p, _ in picks])
    h = 1e-5
    for (tensor, idx), grad in zip(picks, grads):
        with torch.no_grad():
            old = tensor[idx].item()
            tensor[idx] = old + h
            up = loss().item()
            tensor[idx] = old - h
            down = loss().item()
            tensor[idx] = old
        # central differences: truncation h^2 ~ 1e-10 and solver noise 1e-10 / h ~ 1e-5 relative at most
        # (measured relative errors ~1e-8)
        fd = (up - down) / (2 * h)
        assert abs(grad[idx].item() - fd) <= 1e-5 * max(1.0, abs(fd)), (tensor.shape, idx, grad[idx].item(), fd)
