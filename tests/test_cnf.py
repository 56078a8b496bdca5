"""Continuous normalizing flows: traces, densities, consistency, regularisers, gradients, errors."""

import math
import re

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch
from torch import nn

import hybrid_node as hn
from hybrid_node.data.toy2d import sample_toy2d
from hybrid_node.nn.cnf import CNF, CNFSolver, HutchinsonTrace, RNODERegularization
from hybrid_node.nn.cnf_fields import PlanarCNFField, TimeMLPField
from hybrid_node.nn.cnf_trace import exact_divergence, hutchinson_divergence, sample_noise

pytestmark = pytest.mark.usefixtures("one_thread")


TIGHT = CNFSolver(rtol=1e-9, atol=1e-9)  # for the linear fields, where steps are cheap


class LinearField(nn.Module):
    """f(t, z) = A z with a fixed matrix: every quantity has a closed form."""

    def __init__(self, a):
        super().__init__()
        self.register_buffer("a", torch.as_tensor(a, dtype=torch.float64))

    def forward(self, t, z):
        return z @ self.a.T


def _full_jacobian_trace(field, t, z):
    out = []
    for zi in z:
        jac = torch.autograd.functional.jacobian(lambda v: field(t, v[None])[0], zi)
        out.append((torch.trace(jac), jac.pow(2).sum()))
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


@pytest.mark.parametrize("dim", [2, 5])
def test_exact_trace_equals_trace_of_full_jacobian(dim):
    torch.manual_seed(0)
    field = TimeMLPField(dim, (16, 16)).double()
    z, t = torch.randn(7, dim, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    div = exact_divergence(lambda v: field(t, v), z, create_graph=False)
    tr, frob = _full_jacobian_trace(field, t, z)
    torch.testing.assert_close(div.trace, tr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(div.frobenius_sq, frob, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(div.f, field(t, z))


def test_exact_trace_matches_planar_closed_form():
    torch.manual_seed(1)
    field = PlanarCNFField(3, width=6).double()
    z, t = torch.randn(9, 3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    div = exact_divergence(lambda v: field(t, v), z, create_graph=False)
    torch.testing.assert_close(div.trace, field.divergence(t, z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise):
    # Many independent probes at the same 3 points: the sample mean must agree with the exact trace
    # (and Frobenius norm) within 5 standard errors, a test that fails with probability < 1e-5 if the
    # estimator is unbiased and almost surely detects a bias larger than ~5 standard errors.
    torch.manual_seed(2)
    field = TimeMLPField(3, (16,)).double()
    t = torch.tensor(0.1, dtype=torch.float64)
    points = torch.randn(3, 3, dtype=torch.float64)
    n = 20_000
    z = points.repeat_interleave(n, dim=0)
    eps = sample_noise(noise, z, torch.Generator().manual_seed(5))
    est = hutchinson_divergence(lambda v: field(t, v), z, eps, create_graph=False)
    exact = exact_divergence(lambda v: field(t, v), points, create_graph=False)
    for quantity, truth in ((est.trace, exact.trace), (est.frobenius_sq, exact.frobenius_sq)):
        q = quantity.reshape(3, n)
        se = q.std(dim=1) / math.sqrt(n)
        assert (q.mean(dim=1) - truth).abs().le(5 * se).all(), (q.mean(dim=1), truth, se)
        assert (se > 0).all()


def test_noise_has_identity_covariance():
    like = torch.zeros(100_000, 3)
    for kind in ("rademacher", "gaussian"):
        eps = sample_noise(kind, like, torch.Generator().manual_seed(0))
        cov = eps.T @ eps / len(eps)
        torch.testing.assert_close(cov, torch.eye(3), atol=0.02, rtol=0)
    assert set(sample_noise("rademacher", like).unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("end_time", [1.0, 0.7])
def test_linear_flow_log_prob_and_regularisers_by_hand(end_time):
    # dz/dt = A z over [0, T]: x = expm(TA) z0, log p(x) = log N(expm(-TA) x) - T tr(A).
    # In solver time s, g = T A z and z(s) = expm(-TAs) x on the way to the base, so
    # kinetic = int_0^1 ||T A expm(-TAs) x||^2 ds, jacobian (exact) = ||T A||_F^2 and
    # jacobian (Hutchinson, fixed eps) = ||eps^T T A||^2.
    a = np.array([[-0.3, 0.8], [-0.5, 0.2]])
    flow = CNF([LinearField(a)], dim=2, end_time=end_time, learn_end_time=False, solver=TIGHT).double()
    x = torch.tensor([[0.5, -1.0], [1.5, 0.3], [-2.0, 0.7]], dtype=torch.float64)
    with torch.no_grad():
        res = flow.to_base(x, regularize=True)
    xn = x.numpy()
    z0 = xn @ scipy.linalg.expm(-end_time * a).T
    logp = -0.5 * (z0**2).sum(1) - math.log(2 * math.pi) - end_time * np.trace(a)
    np.testing.assert_allclose(res.log_prob.numpy(), logp, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(res.z.numpy(), z0, rtol=1e-7, atol=1e-8)
    ta = end_time * a
    kinetic = [
        scipy.integrate.quad(
            lambda s, v=v: float(np.sum((ta @ scipy.linalg.expm(-ta * s) @ v) ** 2)), 0, 1, epsabs=1e-12, epsrel=1e-12
        )[0]
        for v in xn
    ]
    np.testing.assert_allclose(res.kinetic.numpy(), kinetic, rtol=1e-7)
    np.testing.assert_allclose(res.jacobian.numpy(), np.full(3, np.sum(ta**2)), rtol=1e-8)

    gen_seed = 11
    with torch.no_grad():
        res_h = flow.to_base(
            x, trace=HutchinsonTrace("gaussian"), regularize=True, generator=torch.Generator().manual_seed(gen_seed)
        )
    eps = sample_noise("gaussian", x, torch.Generator().manual_seed(gen_seed)).numpy()
    np.testing.assert_allclose(res_h.jacobian.numpy(), np.sum((eps @ ta) ** 2, axis=1), rtol=1e-8)
    # Hutchinson's trace of a constant Jacobian along a fixed probe: eps^T (TA) eps.
    expected_delta = np.einsum("bi,ij,bj->b", eps, ta, eps)
    np.testing.assert_allclose(res_h.delta_logp.numpy(), expected_delta, rtol=1e-8)


def test_sample_then_evaluate_is_consistent():
    # Base -> data with log q accumulated on the way, then data -> base: both directions must agree to
    # within the solver tolerance (1e-8 here; the observed gap is ~1e-8).
    torch.manual_seed(3)
    flow = CNF(
        [PlanarCNFField(2, 4), TimeMLPField(2, (16, 16))], dim=2, solver=CNFSolver(rtol=1e-8, atol=1e-8)
    ).double()
    with torch.no_grad():
        for p in flow.parameters():  # move away from the near-identity initialisation
            p.mul_(2.0)
        x, logq = flow.sample(16, generator=torch.Generator().manual_seed(0))
        res = flow.to_base(x)
    torch.testing.assert_close(res.log_prob, logq, rtol=0, atol=1e-5)
    assert (logq - flow.base_log_prob(x)).abs().max() > 0.05  # the flow is not the identity
    # Going back lands on the same base points.
    z = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.z, z, rtol=0, atol=1e-5)


def test_path_output_runs_from_base_to_data():
    flow = CNF([TimeMLPField(2, (8,)), TimeMLPField(2, (8,))], dim=2).double()
    z = torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        out = flow.from_base(z, n_times=4)
    assert out.path.shape == (7, 5, 2)  # 4 times per block, the shared boundary counted once
    torch.testing.assert_close(out.path[0], z)
    torch.testing.assert_close(out.path[-1], out.z)


def test_trained_density_integrates_to_one():
    # Train briefly on two moons, then integrate exp(log p) over [-7, 7]^2, which holds essentially
    # all the mass (the data lie in [-4, 4]^2 and the flow starts from N(0, I)); the midpoint rule on
    # a 0.14 grid is accurate to far below the 1% tolerance for this smooth density.
    torch.manual_seed(0)
    flow = CNF([TimeMLPField(2, (16, 16))], dim=2, solver=CNFSolver(rtol=1e-4, atol=1e-4))
    opt = torch.optim.Adam(flow.parameters(), lr=2e-2)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(30):
        x = torch.from_numpy(sample_toy2d("two_moons", 64, rng=rng))
        opt.zero_grad()
        loss, _ = flow.loss(x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2  # it trained
    evaluator = CNF([flow.blocks[0].field], dim=2, solver=CNFSolver(rtol=1e-5, atol=1e-5)).double()
    evaluator.blocks[0].log_end_time.data.fill_(flow.blocks[0].log_end_time.item())
    h = 0.14
    axis = torch.arange(-7 + h / 2, 7, h, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        mass = evaluator.log_prob(grid).exp().sum().item() * h * h
    assert abs(mass - 1.0) < 0.01, mass


def test_learnable_end_time_gradient_matches_finite_difference_and_adjoint():
    # Fixed-step RK4 makes the discrete solution a smooth function of log T, so central differences
    # of the loss agree with backpropagation through the solver to O(h^2); the adjoint then solves
    # the continuous adjoint problem on the same grid and agrees to the RK4 error (~1e-6 here).
    torch.manual_seed(4)
    rk4 = dict(method="rk4", options={"step_size": 0.05})
    flow = CNF([TimeMLPField(2, (8, 8))], dim=2, solver=CNFSolver(**rk4)).double()
    x = torch.randn(8, 2, dtype=torch.float64)

    def loss_at(log_t):
        with torch.no_grad():
            flow.blocks[0].log_end_time.fill_(log_t)
            return flow.loss(x)[0].item()

    log_t0 = flow.blocks[0].log_end_time.item()
    h = 1e-4
    fd = (loss_at(log_t0 + h) - loss_at(log_t0 - h)) / (2 * h)
    with torch.no_grad():
        flow.blocks[0].log_end_time.fill_(log_t0)
    flow.zero_grad()
    flow.loss(x)[0].backward()
    direct = [p.grad.clone() for p in flow.parameters()]
    assert abs(direct[0].item() - fd) < 1e-6 * max(1.0, abs(fd))

    adj = CNF([TimeMLPField(2, (8, 8))], dim=2, solver=CNFSolver(adjoint=True, **rk4)).double()
    adj.load_state_dict(flow.state_dict())
    adj.loss(x)[0].backward()
    for g_direct, p in zip(direct, adj.parameters()):
        torch.testing.assert_close(p.grad, g_direct, rtol=1e-4, atol=1e-6)


def test_loss_adds_weighted_regularisers():
    torch.manual_seed(5)
    reg = RNODERegularization(kinetic=0.3, jacobian=0.2)
    flow = CNF([TimeMLPField(2, (8,))], dim=2, regularization=reg).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    loss, res = flow.loss(x)
    expected = -res.log_prob.mean() + 0.3 * res.kinetic.mean() + 0.2 * res.jacobian.mean()
    torch.testing.assert_close(loss, expected)
    assert CNF([TimeMLPField(2, (8,))], dim=2).to_base(x.float()).kinetic is None


def test_hutchinson_training_step_runs_and_noise_is_fixed_within_a_solve():
    # With a linear field the Hutchinson integrand eps^T (TA) eps is constant only if eps is fixed
    # over the solve; a fresh probe per evaluation would not reproduce this exact value.
    a = np.array([[0.4, -0.2], [0.1, -0.6]])
    flow = CNF(
        [LinearField(a)], dim=2, learn_end_time=False, solver=CNFSolver(method="rk4", options={"step_size": 0.1})
    ).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    with torch.no_grad():
        res = flow.to_base(x, trace=HutchinsonTrace(), generator=torch.Generator().manual_seed(1))
    eps = sample_noise("rademacher", x, torch.Generator().manual_seed(1)).numpy()
    np.testing.assert_allclose(res.delta_logp.numpy(), np.einsum("bi,ij,bj->b", eps, a, eps), rtol=1e-10)
    assert res.nfe == 40  # 10 RK4 steps of 4 stages


def test_bad_input_messages():
    field = TimeMLPField(2, (8,))
    with pytest.raises(ValueError, match="shape"):
        CNF([field], dim=2).log_prob(torch.zeros(3, 3))
    with pytest.raises(TypeError, match="floating"):
        CNF([field], dim=2).log_prob(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="rademacher"):
        HutchinsonTrace("uniform")
    with pytest.raises(TypeError, match="ExactTrace"):
        CNF([field], dim=2, trace="exact")
    with pytest.raises(ValueError, match=">= 0"):
        RNODERegularization(kinetic=-1.0)
    with pytest.raises(ValueError, match="positive"):
        CNFSolver(rtol=0)
    with pytest.raises(ValueError, match="at least one"):
        CNF([], dim=2)
    with pytest.raises(ValueError, match="n_times"):
        CNF([field], dim=2).from_base(torch.zeros(2, 2), n_times=1)
    with pytest.raises(ValueError, match="activation"):
        TimeMLPField(2, activation="relu6")


@pytest.mark.parametrize("other_batch", [8, 32])
def test_adjoint_hutchinson_gradient_ignores_later_forward_passes(other_batch):
    # The adjoint's backward solve calls the dynamics again; it must use its own solve's probe noise,
    # not that of forward passes made before backward() (another loss term, a validation batch).
    torch.manual_seed(6)
    flows = [
        CNF([TimeMLPField(2, (8,)), TimeMLPField(2, (8,))], dim=2, trace=HutchinsonTrace(), solver=CNFSolver(adjoint=a))
        for a in (False, True)
    ]
    flows[1].load_state_dict(flows[0].state_dict())
    x = torch.randn(8, 2)
    flows[0].loss(x, generator=torch.Generator().manual_seed(1))[0].backward()
    loss, _ = flows[1].loss(x, generator=torch.Generator().manual_seed(1))
    other = torch.randn(other_batch, 2)
    flows[1].loss(other, generator=torch.Generator().manual_seed(2))  # a graph left unused
    with torch.no_grad():
        flows[1].log_prob(other, trace=HutchinsonTrace("gaussian"))
    loss.backward()
    for p_direct, p_adjoint in zip(flows[0].parameters(), flows[1].parameters()):
        torch.testing.assert_close(p_adjoint.grad, p_direct.grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("end_time", [float("inf"), float("nan"), 0.0, -1.0])
def test_end_time_must_be_finite_and_positive(end_time):
    with pytest.raises(ValueError, match="finite positive"):
        CNF([TimeMLPField(2, (8,))], dim=2, end_time=end_time)


class DriftField(nn.Module):
    """f(t, z) = t c: a translation that ignores z (zero Jacobian), with a learnable c or a fixed one."""

    def __init__(self, c, learn=True):
        super().__init__()
        c = torch.as_tensor(c, dtype=torch.float64)
        if learn:
            self.c = nn.Parameter(c)
        else:
            self.register_buffer("c", c)

    def forward(self, t, z):
        return (t * self.c).expand_as(z)


@pytest.mark.parametrize("learn", [True, False])
@pytest.mark.parametrize("trace", [None, HutchinsonTrace()])
def test_field_that_ignores_the_state_has_zero_divergence(learn, trace):
    # dz/dt = t c moves every point by c T^2 / 2 and keeps volumes: log p(x) = log N(x - c T^2 / 2).
    # Autograd refuses to differentiate an output that does not depend on z, which used to crash.
    c, end_time = [0.6, -0.4], 1.3
    flow = CNF([DriftField(c, learn)], dim=2, end_time=end_time, learn_end_time=learn, solver=TIGHT).double()
    x = torch.tensor([[0.5, -1.0], [1.5, 0.3], [-2.0, 0.7]], dtype=torch.float64)
    loss, res = flow.loss(x) if trace is None else (None, flow.to_base(x, trace=trace))
    z0 = x - torch.tensor(c, dtype=torch.float64) * flow.blocks[0].end_time.detach() ** 2 / 2
    # dopri5 integrates this quadratic-in-time path exactly; only rounding is left.
    torch.testing.assert_close(res.z, z0, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.delta_logp, torch.zeros(3, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(res.log_prob, flow.base_log_prob(z0), rtol=0, atol=1e-12)
    if loss is not None and learn:
        loss.backward()
        # d(-mean log N(x - c s)) / dc = -s mean(x - c s) with s = T^2 / 2.
        s = flow.blocks[0].end_time.detach() ** 2 / 2
        torch.testing.assert_close(flow.blocks[0].field.c.grad, -s * z0.mean(0), rtol=1e-10, atol=1e-12)
    div = exact_divergence(lambda v: torch.ones_like(v), x, create_graph=False)
    assert div.trace.eq(0).all() and div.frobenius_sq.eq(0).all()


def test_sample_takes_the_dtype_of_a_flow_without_parameters():
    # A fixed T and a field of buffers only: no parameters, but .double() made every tensor float64,
    # so the base draw must be float64 too (it used to be the default float32, and the field failed).
    a = np.array([[0.4, -0.2], [0.1, -0.6]])
    flow = CNF([LinearField(a)], dim=2, learn_end_time=False, solver=TIGHT).double()
    assert not list(flow.parameters())
    with torch.no_grad():
        x, logq = flow.sample(4, generator=torch.Generator().manual_seed(0))
    assert x.dtype == logq.dtype == torch.float64
    # x = expm(A) z0 with z0 the generator's draw, and log q(x) = log N(z0) - tr(A).
    z0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, z0 @ torch.from_numpy(scipy.linalg.expm(a)).T, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(logq, flow.base_log_prob(z0) - float(np.trace(a)), rtol=1e-8, atol=1e-9)


def test_fixed_step_method_needs_a_step_size():
    # Every block is solved over the solver time [0, 1] with outputs at 0 and 1 only, so a fixed-step
    # method without a step size took one step per block (rk4's log-density was off by 1e-4 on a
    # small MLP, euler's by 0.26), and another number of steps when from_base was asked for a path.
    with pytest.raises(ValueError, match="step_size"):
        CNFSolver(method="rk4")
    with pytest.raises(ValueError, match="step_size"):
        CNFSolver(method="trbdf2", options={"jacobian": "loop"})  # fixed steps unless adaptive=True
    torch.manual_seed(7)
    flow = CNF([TimeMLPField(2, (8,))], dim=2, solver=CNFSolver(method="rk4", options={"step_size": 0.1})).double()
    z = torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        plain, with_path = flow.from_base(z), flow.from_base(z, n_times=5)
    # The same steps either way: only rounding may differ.
    torch.testing.assert_close(with_path.z, plain.z, rtol=0, atol=1e-14)
    torch.testing.assert_close(with_path.log_prob, plain.log_prob, rtol=0, atol=1e-14)


@pytest.mark.parametrize("method", ["leapfrog", "yoshida4"])
def test_partitioned_methods_are_refused(method):
    # They treat the state (z, log p) as a (q, p) pair of a separable system; yoshida4 with
    # step 0.1 put the log-density 0.2 away from dopri5's.
    with pytest.raises(ValueError, match="partitioned"):
        CNFSolver(method=method, options={"step_size": 0.1})


def test_implicit_method_takes_the_loop_jacobian_and_agrees_with_dopri5():
    # The default torch.func Jacobian cannot trace the dynamics' own torch.autograd call; it used to
    # fail deep inside the solve with "Batching rule not implemented for aten::detach".
    assert CNFSolver(method="kvaerno5").options == {"jacobian": "loop"}
    assert CNFSolver(method="rodas5p", options={"jacobian": "fd"}).options == {"jacobian": "fd"}
    torch.manual_seed(8)
    flow = CNF([TimeMLPField(2, (8,))], dim=2, solver=CNFSolver(rtol=1e-10, atol=1e-10)).double()
    x = torch.randn(4, 2, dtype=torch.float64)

    def loss_and_grad():
        flow.zero_grad()
        loss, _ = flow.loss(x)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in flow.parameters()])

    ref = loss_and_grad()
    flow.solver = CNFSolver(method="kvaerno5", rtol=1e-7, atol=1e-7)
    got = loss_and_grad()
    # kvaerno5 at rtol = atol = 1e-7 against a 1e-10 reference: observed gaps 5e-8 (loss), 1e-6 (grads)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_points_are_named(bad):
    # The solver's own message called them "y0[0]", a part of the augmented state.
    flow = CNF([TimeMLPField(2, (8,))], dim=2)
    x = torch.zeros(4, 2)
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"x contains NaN or infinite values \(rows 2\)"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"z contains NaN or infinite values \(rows 2\)"):
        flow.from_base(x)


class _SingularAt(nn.Module):
    """dz/dt = z / (t - t_star): the solution |z| ~ |t - t_star| stops the solver at the flow time t_star."""

    def __init__(self, t_star: float):
        super().__init__()
        self.t_star = t_star
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, t, z):
        return self.w * z / (t - self.t_star)


class _RootAt(nn.Module):
    """dz/dt = z sqrt(t - t_star): NaN at every flow time before t_star."""

    def __init__(self, t_star: float):
        super().__init__()
        self.t_star = t_star
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, t, z):
        return self.w * z * torch.sqrt(t - self.t_star)


@pytest.mark.parametrize("direction", ["to_base", "from_base"])
def test_solver_failure_names_the_flow_time(direction):
    # The solver integrates block k over s in [0, 1] with t = T s (base to data) or T (1 - s) (data to
    # base); its failure at s must be reported at the flow time t where the field is singular.
    t_star, end_time = 0.4, 2.0
    blocks = [TimeMLPField(2, (4,)), _SingularAt(t_star)]
    flow = CNF(blocks, dim=2, end_time=end_time, solver=CNFSolver(rtol=1e-6, atol=1e-6)).double()
    with pytest.raises(hn.SolverError) as info:
        getattr(flow, direction)(torch.ones(3, 2, dtype=torch.float64))
    s_star = 1 - t_star / end_time if direction == "to_base" else t_star / end_time
    # the step size collapses only next to the singularity (observed within 2e-15 of it)
    assert info.value.t == pytest.approx(t_star, abs=1e-6)
    assert info.value.status is hn.Status.STEP_UNDERFLOW
    assert re.match(r"Solve failed at flow time t=0\.4 \(CNF block 1, T=2, ", str(info.value))
    assert f"the solver's time s={s_star:.6g} of [0, 1]" in str(info.value)
    # the solver's own error, in its time s, is kept as the cause
    assert isinstance(info.value.__cause__, hn.SolverError)
    assert info.value.__cause__.t == pytest.approx(s_star, abs=1e-6)


def test_solver_failure_details_name_flow_times():
    # rk4 on [0, 1] in s from data to base: the field is NaN below t = 0.45, i.e. after s = 0.775 of a
    # T = 2 block; the fixed-step check reports the first non-finite output (s = 1, t = 0) and the last
    # finite one (s = 0, t = T = 2): both named in the flow's time.
    flow = CNF([_RootAt(0.45)], dim=2, end_time=2.0, solver=CNFSolver(method="rk4", options={"step_size": 0.1}))
    with pytest.raises(hn.SolverError, match=r"flow time t=0 \(CNF block 0, .*the last finite one is at t=2;"):
        flow.double().to_base(torch.ones(3, 2, dtype=torch.float64))


def test_regularisers_can_be_left_out_of_the_step_size_control():
    # RNODE's code solves the regularised state with tolerances of 1e20 on the two integrals, so they
    # cost no steps; here they are in the error norm unless a norm of the first two parts is given (the
    # module docstring says so). With it, the regularised solve takes the unregularised one's steps.
    def z_and_logp(parts):
        return torch.stack([p.pow(2).mean().sqrt() for p in parts[:2]]).max()

    torch.manual_seed(0)
    flow = CNF(TimeMLPField(2, (32, 32)), dim=2)
    with torch.no_grad():
        for p in flow.parameters():  # a field that moves the points enough to need some steps
            p.mul_(2.5)
        x = torch.as_tensor(sample_toy2d("two_moons", 64, seed=0), dtype=torch.float32)
        plain = flow.to_base(x, regularize=False)
        default = flow.to_base(x, regularize=True)
        flow.solver = CNFSolver(options={"norm": z_and_logp})
        left_out = flow.to_base(x, regularize=True)
    assert default.nfe > plain.nfe  # the integrals do cost steps by default
    assert left_out.nfe == plain.nfe
    torch.testing.assert_close(left_out.log_prob, plain.log_prob, rtol=0, atol=0)
