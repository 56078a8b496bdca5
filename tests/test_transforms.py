"""Solves inside torch.func transforms: vmap over y0 and over parameters, jacrev/jacfwd/grad through odeint.

References are the eager host loop solving each problem alone (the transformed loop makes the same step
decisions per problem, so outputs agree to rounding, 1e-10 here), torch.autograd on the eager solve
(the same derivative of the same discrete map), and the exact solution of a linear system.
"""

import math

import pytest
import torch
from torch.func import functional_call, grad, jacfwd, jacrev, vmap

import hybrid_node as hn

T = torch.linspace(0.0, 2.0, 7, dtype=torch.float64)
TOL = {"rtol": 1e-7, "atol": 1e-9}


@pytest.fixture
def net(float64_default, one_thread):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def _field(net):
    return lambda t, y: net(y) * torch.cos(t)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8", "adaptive_heun", "fehlberg2"])
def test_vmap_over_y0_equals_solving_each_problem_alone(net, method):
    f = _field(net)
    y0 = torch.randn(4, 2)
    batched = vmap(lambda y: hn.odeint(f, y, T, method=method, **TOL))(y0)
    alone = torch.stack([hn.odeint(f, y, T, method=method, **TOL) for y in y0])
    assert batched.shape == (4, len(T), 2)
    torch.testing.assert_close(batched, alone, rtol=1e-10, atol=1e-12)


def test_every_problem_of_a_vmap_takes_its_own_steps(float64_default):
    """Rates 0.1 to 100: a step shared by the batch would be set by the stiffest member and change the
    others' outputs at the 1e-7 level; each member alone agrees with its own host solve to rounding."""
    rates = torch.tensor([0.1, 3.0, 100.0])

    def solve(k):
        return hn.odeint(lambda t, y: -k * y + torch.sin(t), torch.ones(2), T, rtol=1e-6, atol=1e-9)

    batched = vmap(solve)(rates)
    alone = torch.stack([solve(k) for k in rates])
    torch.testing.assert_close(batched, alone, rtol=1e-11, atol=1e-13)
    stats = [hn.solve(lambda t, y, k=k: -k * y + torch.sin(t), torch.ones(2), T).stats.n_accepted for k in rates]
    assert len(set(stats)) == 3  # the members really need different step sequences


def test_vmap_over_parameters_equals_a_loop_over_models(net):
    params = {k: v.detach() for k, v in net.named_parameters()}
    stacked = {k: v + 0.2 * torch.randn(3, *v.shape) for k, v in params.items()}
    y0 = torch.tensor([0.5, -1.0])

    def solve(p):
        return hn.odeint(lambda t, y: functional_call(net, p, (y,)), y0, T, **TOL)

    batched = vmap(solve)(stacked)
    alone = torch.stack([solve({k: v[i] for k, v in stacked.items()}) for i in range(3)])
    torch.testing.assert_close(batched, alone, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "method, options",
    [
        ("rk4", {"step_size": 0.1}),
        ("euler", {"step_size": 0.05}),
        ("midpoint", None),
        ("explicit_adams", {"step_size": 0.1}),
    ],
)
def test_vmap_of_fixed_step_methods(net, method, options):
    f = _field(net)
    y0 = torch.randn(3, 2)
    batched = vmap(lambda y: hn.odeint(f, y, T, method=method, options=options))(y0)
    alone = torch.stack([hn.odeint(f, y, T, method=method, options=options) for y in y0])
    torch.testing.assert_close(batched, alone, rtol=1e-12, atol=1e-14)


def test_vmap_of_a_symplectic_method_on_a_tuple_state(float64_default):
    q0, p0 = torch.randn(3, 2), torch.randn(3, 2)

    def solve(q, p):
        return hn.odeint(lambda t, s: (s[1], -s[0]), (q, p), T, method="yoshida4", options={"step_size": 0.02})

    qs, ps = vmap(solve)(q0, p0)
    alone = [solve(q, p) for q, p in zip(q0, p0)]
    torch.testing.assert_close(qs, torch.stack([a[0] for a in alone]), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ps, torch.stack([a[1] for a in alone]), rtol=1e-12, atol=1e-14)
    # the harmonic oscillator at the last grid point: q(2) = q0 cos 2 + p0 sin 2, 4th order at h = 0.02 (1.5e-6 at 0.05)
    torch.testing.assert_close(qs[:, -1], q0 * math.cos(2.0) + p0 * math.sin(2.0), rtol=0, atol=1e-6)


def test_jacrev_and_jacfwd_equal_autograd_on_the_eager_solve(net):
    f = _field(net)
    y0 = torch.tensor([0.3, -0.7])

    def final(y):
        return hn.odeint(f, y, T, **TOL)[-1]

    expected = torch.autograd.functional.jacobian(final, y0)
    torch.testing.assert_close(jacrev(final)(y0), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jacfwd(final)(y0), expected, rtol=1e-10, atol=1e-12)
    # the outputs between steps come from the dense output: their Jacobian too
    middle = jacrev(lambda y: hn.odeint(f, y, T, **TOL)[3])(y0)
    torch.testing.assert_close(
        middle, torch.autograd.functional.jacobian(lambda y: hn.odeint(f, y, T, **TOL)[3], y0), rtol=1e-10, atol=1e-12
    )


def test_jacrev_of_a_linear_system_is_the_matrix_exponential(float64_default):
    """d y(t) / d y0 = expm(A t) for y' = A y; at rtol 1e-10 the solver's Jacobian matches it to ~1e-8."""
    a = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]])
    jac = jacrev(lambda y: hn.odeint(lambda t, y: a @ y, y, T, rtol=1e-10, atol=1e-12)[-1])(torch.ones(2))
    torch.testing.assert_close(jac, torch.linalg.matrix_exp(a * T[-1]), rtol=1e-8, atol=1e-9)


def test_parameter_gradients_and_per_sample_jacobians(net):
    params = {k: v.detach() for k, v in net.named_parameters()}
    y0 = torch.randn(3, 2)

    def loss(p, y):
        return hn.odeint(lambda t, z: functional_call(net, p, (z,)), y, T, **TOL)[-1].pow(2).sum()

    g = grad(loss)(params, y0[0])
    expected = torch.autograd.grad(loss(dict(net.named_parameters()), y0[0]), list(net.parameters()))
    for (name, value), ref in zip(g.items(), expected):
        torch.testing.assert_close(value, ref, rtol=1e-10, atol=1e-12, msg=name)
    # per-sample Jacobians of the final state: vmap of jacrev
    jacs = vmap(jacrev(lambda y: hn.odeint(_field(net), y, T, **TOL)[-1]))(y0)
    for y, jac in zip(y0, jacs):
        ref = torch.autograd.functional.jacobian(lambda z: hn.odeint(_field(net), z, T, **TOL)[-1], y)
        torch.testing.assert_close(jac, ref, rtol=1e-10, atol=1e-12)


def test_what_a_transform_cannot_run_is_refused_with_the_fix(net):
    f = _field(net)
    y0 = torch.randn(2, 2)
    with pytest.raises(ValueError, match="odeint_adjoint outside"):
        vmap(lambda y: hn.odeint_adjoint(f, y, T, adjoint_params=tuple(net.parameters())))(y0)
    with pytest.raises(ValueError, match="adaptive method 'adams'"):
        vmap(lambda y: hn.odeint(f, y, T, method="adams"))(y0)
    with pytest.raises(ValueError, match="fixed-step method 'implicit_adams'"):  # corrector iterations
        vmap(lambda y: hn.odeint(f, y, T, method="implicit_adams", options={"step_size": 0.1}))(y0)
    with pytest.raises(ValueError, match="events"):
        vmap(lambda y: hn.odeint(f, y, T, event_fn=lambda t, z: z[0] - 5.0))(y0)
    with pytest.raises(ValueError, match="t is batched"):
        vmap(lambda tt: hn.odeint(f, y0[0], tt))(torch.stack([T, 2 * T]))
    with pytest.raises(ValueError, match="output times"):
        jacrev(lambda tt: hn.odeint(f, y0[0], tt)[-1])(T)
    bad = y0.clone()
    bad[1, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        vmap(lambda y: hn.odeint(f, y, T))(bad)
    # these three failed inside torch ("Cannot access data pointer of Tensor that doesn't have storage")
    with pytest.raises(ValueError, match="rtol is batched"):
        vmap(lambda r: hn.odeint(f, y0[0], T, rtol=r))(torch.tensor([1e-3, 1e-6]))
    with pytest.raises(ValueError, match="scipy_solver solves with scipy"):
        vmap(lambda y: hn.odeint(f, y, T, method="scipy_solver"))(y0)
    with pytest.raises(hn.BackendError, match="run on the torch backend"):
        vmap(lambda y: hn.odeint(f, y, T, backend="julia"))(y0)


def test_a_failing_member_fails_the_batch_or_reports_its_status(float64_default):
    rates = torch.tensor([1.0, 1e6])

    def solve(k, throw=True):
        return hn.solve(
            lambda t, y: -k * y, torch.ones(1), T, controller=hn.PIDController(max_num_steps=50), throw=throw
        ).ys

    with pytest.raises(hn.SolverError, match="max_num_steps=50"):
        vmap(solve)(rates)
    ys = vmap(lambda k: solve(k, throw=False))(rates)
    torch.testing.assert_close(ys[0], torch.exp(-T).unsqueeze(1), rtol=1e-5, atol=1e-6)  # the good one finished
    assert torch.isnan(ys[1, -1]).all()  # the stiff one stopped: NaN where it did not reach


def _nan_after(c, k=1.0):
    """y' = -k y, NaN from t > c on: a solve fails there (NONFINITE), or earlier for a large k (max steps)."""
    return lambda t, y: torch.where(t > c, torch.full_like(y, math.nan), -k * y)


def test_a_failure_is_reported_with_its_own_time_and_names_the_member(float64_default):
    """Member 1 fails NONFINITE at t = 1 and member 2 hits max_num_steps near t = 8e-4: the error is
    member 1's, with the status and time of its own solve alone (not the other failure's time), and
    names it; under nested vmap (in_dims=1 outside) the index is (outer, inner)."""
    ks, cs = torch.tensor([1.0, 1.0, 1e6]), torch.tensor([5.0, 1.0, 5.0])

    def solve(k, c):
        return hn.solve(_nan_after(c, k), torch.ones(1), T, controller=hn.PIDController(max_num_steps=300)).ys

    with pytest.raises(hn.SolverError) as alone:
        solve(ks[1], cs[1])
    with pytest.raises(hn.SolverError) as other:
        solve(ks[2], cs[2])
    assert alone.value.status is hn.Status.NONFINITE and other.value.status is hn.Status.MAX_STEPS
    with pytest.raises(hn.SolverError) as batched:
        vmap(solve)(ks, cs)
    assert (batched.value.status, batched.value.t) == (alone.value.status, alone.value.t)
    assert "in problem 1 of the vmap batch of 3 (2 of the 3 failed)" in str(batched.value)
    # nested: the member at (outer 1, inner 2) of a (2, 3) batch fails; the outer vmap maps dim 1
    cs2 = torch.full((2, 3), 5.0)
    cs2[1, 2] = 1.0
    with pytest.raises(hn.SolverError, match=r"in problem \(1, 2\) of the vmap batch of \(2, 3\) \(1 of the 6"):
        vmap(vmap(lambda c: hn.odeint(_nan_after(c), torch.ones(1), T)), in_dims=1)(cs2.T.contiguous())


def test_float32_reverse_time_and_nested_vmap(one_thread):
    """A per-problem step under vmap must not promote a float32 state (torch.addcmul's batching rule
    promotes to the factor's float64); decreasing times and vmap of vmap work as a loop of solves."""
    torch.manual_seed(1)
    net = torch.nn.Linear(2, 2)
    f = lambda t, y: torch.tanh(net(y))  # noqa: E731
    y0 = torch.randn(3, 4, 2)
    back = torch.linspace(1.0, 0.0, 5)
    single = vmap(lambda y: hn.odeint(f, y, back))(y0[0])
    assert single.dtype == torch.float32
    torch.testing.assert_close(single, torch.stack([hn.odeint(f, y, back) for y in y0[0]]), rtol=1e-5, atol=1e-6)
    nested = vmap(vmap(lambda y: hn.odeint(f, y, back)))(y0)
    assert nested.shape == (3, 4, len(back), 2)
    alone = torch.stack([torch.stack([hn.odeint(f, y, back) for y in row]) for row in y0])
    torch.testing.assert_close(nested, alone, rtol=1e-5, atol=1e-6)


def test_times_made_inside_the_transform_are_not_taken_for_an_input(net):
    # Every tensor made inside a transform is wrapped at its levels: times built there (and the copy
    # ODEBlock makes of its times) were refused as "an input of a torch.func transform", so
    # jacrev/jacfwd of an ODEBlock failed. Reference: torch.autograd on the eager solve.
    f = _field(net)
    y0 = torch.randn(2)

    def final(y):
        return hn.odeint(f, y, torch.linspace(0.0, 2.0, 7, dtype=torch.float64), **TOL)[-1]

    expected = torch.autograd.functional.jacobian(final, y0)
    torch.testing.assert_close(jacrev(final)(y0), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jacfwd(final)(y0), expected, rtol=1e-10, atol=1e-12)

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    block = hn.nn.ODEBlock(Field())
    x = torch.randn(1, 2)
    expected = torch.autograd.functional.jacobian(block, x)
    torch.testing.assert_close(jacrev(block)(x), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jacfwd(block)(x), expected, rtol=1e-10, atol=1e-12)
    # hessian = jacfwd(jacrev): the block's times are wrapped by the inner level only, so they pass
    expected = torch.autograd.functional.hessian(lambda z: block(z).sum(), x)
    torch.testing.assert_close(torch.func.hessian(lambda z: block(z).sum())(x), expected, rtol=1e-8, atol=1e-10)


def test_derivatives_with_respect_to_t_stay_refused_at_every_level(net):
    f = _field(net)
    y0 = torch.randn(2)
    # reverse mode in t inside a transform (forward mode, jvp and jacfwd, works: test_forward_mode_times.py)
    with pytest.raises(ValueError, match="t is differentiated by a reverse-mode"):
        jacrev(lambda tt: hn.odeint(f, y0, tt)[-1])(T)
    with pytest.raises(ValueError, match="t is differentiated"):  # the outer level differentiates t
        grad(lambda tt: grad(lambda y: hn.odeint(f, y, tt)[-1].sum())(y0).sum())(T)
    # an outer forward-mode level's tangent cannot be read from inside the inner one: refused, with the fix
    with pytest.raises(ValueError, match="cannot be told"):
        torch.func.hessian(lambda y: hn.odeint(f, y, torch.linspace(0.0, 2.0, 7, dtype=torch.float64))[-1].sum())(y0)
    # the fix it names: times closed over from outside the transforms
    hessian = torch.func.hessian(lambda y: hn.odeint(f, y, T, **TOL)[-1].sum())(y0)
    expected = torch.autograd.functional.hessian(lambda y: hn.odeint(f, y, T, **TOL)[-1].sum(), y0)
    torch.testing.assert_close(hessian, expected, rtol=1e-8, atol=1e-10)


def test_a_fixed_step_failure_under_vmap_names_the_member(float64_default):
    # y' = k y^2 from 1 blows up at t = 1/k: k = 80 first (non-finite at the first output after t0), k = 1
    # later, k = -1 never; the error named the earliest time only, not which problem it came from
    k = torch.tensor([1.0, -1.0, 80.0])

    def solve(k):
        return hn.odeint(lambda t, y: k * y * y, torch.ones(1), T, method="rk4", options={"step_size": 0.01})

    with pytest.raises(hn.SolverError, match=r"in problem 2 of the vmap batch of 3 \(2 of the 3 failed\)") as err:
        vmap(solve)(k)
    with pytest.raises(hn.SolverError) as alone:
        solve(k[2])
    assert err.value.t == alone.value.t  # the failing member's own time
