"""The device-resident adaptive loop (options={"device_loop": True}) against the host loop it must reproduce."""

import math
import shutil

import pytest
import scipy.linalg
import torch

import hybrid_node as hn
from hybrid_node._errors import SolverError, Status
from hybrid_node.loop import compiled_step
from hybrid_node.loop import device as device_loop


@pytest.fixture
def field(time_mlp):
    return time_mlp


def _pair(func, y0, t, method="dopri5", throw=True, **settings):
    """The host loop's and the device loop's solutions of one problem."""
    solver = hn.solvers.METHODS[method][0]()
    sync_every = settings.pop("sync_every", 8)
    host = hn.solve(func, y0, t, solver=solver, controller=hn.PIDController(**settings), throw=throw)
    dev = hn.solve(
        func,
        y0,
        t,
        solver=solver,
        throw=throw,
        controller=hn.PIDController(device_loop=True, sync_every=sync_every, **settings),
    )
    return host, dev


def _assert_same(host, dev, rtol=1e-12):
    hs = host.ys if isinstance(host.ys, tuple) else (host.ys,)
    ds = dev.ys if isinstance(dev.ys, tuple) else (dev.ys,)
    for h, d in zip(hs, ds):
        h, d = h.detach(), d.detach()
        scale = h.abs().max()
        assert float((h - d).abs().max()) <= rtol * float(scale), float((h - d).abs().max() / scale)
    assert (dev.stats.nfe, dev.stats.n_accepted, dev.stats.n_rejected) == (
        host.stats.nfe,
        host.stats.n_accepted,
        host.stats.n_rejected,
    )
    assert dev.status == host.status


def test_linear_ode_matches_host_and_matrix_exponential(float64_default, one_thread):
    a = torch.tensor([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -1.0]])
    y0 = torch.tensor([1.0, -0.5, 2.0])
    t = torch.linspace(0.0, 4.0, 9)
    for method in ("dopri5", "tsit5"):
        host, dev = _pair(lambda tt, y: a @ y, y0, t, method, rtol=1e-9, atol=1e-11)
        _assert_same(host, dev)
        exact = torch.stack([torch.from_numpy(scipy.linalg.expm(a.numpy() * float(s))) @ y0 for s in t])
        torch.testing.assert_close(dev.ys, exact, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("sync_every", [1, 8, 13])
@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_mlp_batch_both_directions(field, method, sync_every):
    y0 = torch.randn(16, 2)
    for t in (torch.linspace(0.0, 3.0, 7), torch.linspace(3.0, -1.0, 6)):
        host, dev = _pair(field, y0, t, method, rtol=1e-7, atol=1e-9, sync_every=sync_every)
        _assert_same(host, dev)


def test_many_outputs_inside_one_step(field):
    y0 = torch.randn(4, 2)
    t = torch.cat([torch.linspace(0.0, 2.0, 97), torch.tensor([2.0137])])  # none on a step end but the last
    host, dev = _pair(field, y0, t, rtol=1e-4, atol=1e-6)
    assert dev.stats.n_accepted * 4 < len(t)  # several outputs per step
    _assert_same(host, dev)
    assert torch.equal(dev.ys[0], y0)


def test_tuple_state(float64_default, one_thread):
    def f(t, state):
        x, v = state
        return v, -x - 0.1 * v + torch.sin(t)

    y0 = (torch.tensor([1.0, 0.0]), torch.tensor([[0.0], [0.5]]).reshape(2))
    host, dev = _pair(f, y0, torch.linspace(0.0, 5.0, 11), "tsit5", rtol=1e-8, atol=1e-10)
    assert isinstance(dev.ys, tuple) and dev.ys[1].shape == (11, 2)
    _assert_same(host, dev)


def test_rejections_are_reproduced(field):
    y0 = torch.randn(8, 2)
    host, dev = _pair(field, y0, torch.linspace(0.0, 4.0, 5), rtol=1e-9, atol=1e-11, first_step=2.0, sync_every=3)
    assert host.stats.n_rejected > 0
    _assert_same(host, dev)


def test_step_within_one_percent_of_the_end_is_stretched(float64_default, one_thread):
    # a first step of 0.995 ends within 1% of t = 1: both loops stretch it to end there (one step)
    host, dev = _pair(
        lambda tt, y: -y, torch.ones(2), torch.tensor([0.0, 0.5, 1.0]), rtol=1e-3, atol=1e-6, first_step=0.995
    )
    assert host.stats.n_accepted == 1
    _assert_same(host, dev)


def test_pid_coefficients_and_step_bounds(field):
    y0 = torch.randn(8, 2)
    t = torch.linspace(0.0, 3.0, 4)
    host, dev = _pair(field, y0, t, rtol=1e-8, atol=1e-10, pcoeff=0.2, icoeff=0.4, dcoeff=0.1, max_step=0.3)
    _assert_same(host, dev)


def test_one_host_read_per_run(field, monkeypatch):
    calls = []
    original = device_loop.DeviceRuns.__call__

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(device_loop.DeviceRuns, "__call__", counted)
    y0 = torch.randn(8, 2)
    sol = hn.odeint(
        field, y0, torch.linspace(0.0, 6.0, 4), rtol=1e-8, atol=1e-10, options={"device_loop": True, "sync_every": 5}
    )
    assert sol.shape == (4, 8, 2)
    ctrl = hn.PIDController(rtol=1e-8, atol=1e-10, shrink_after_accept=False)  # odeint's (torchdiffeq's) step rule
    stats = hn.solve(field, y0, torch.linspace(0.0, 6.0, 4), controller=ctrl).stats
    n_attempts = stats.n_accepted + stats.n_rejected
    assert n_attempts > 5
    assert len(calls) == math.ceil(n_attempts / 5)


# ---- failures -------------------------------------------------------------------------------------


def _blows_up(t, y):
    return torch.where(t > 1.0, torch.full_like(y, math.nan), -y)


def test_nonfinite_field_raises_like_host(float64_default, one_thread):
    y0 = torch.ones(3)
    t = torch.linspace(0.0, 2.0, 5)
    with pytest.raises(SolverError) as host:
        hn.solve(_blows_up, y0, t)
    with pytest.raises(SolverError) as dev:
        hn.solve(_blows_up, y0, t, controller=hn.PIDController(device_loop=True))
    assert host.value.status is dev.value.status is Status.NONFINITE
    assert dev.value.t == host.value.t


def test_nonfinite_without_throw_gives_nan_for_unreached(float64_default, one_thread):
    y0 = torch.ones(3)
    t = torch.linspace(0.0, 2.0, 5)
    host, dev = _pair(_blows_up, y0, t, throw=False, sync_every=4)
    assert dev.status is Status.NONFINITE
    reached = torch.isfinite(host.ys).all(dim=1)
    # the field is finite up to t = 1 itself, so a step landing exactly there is accepted (e^-1)
    assert reached.tolist() == [True, True, True, False, False]
    torch.testing.assert_close(host.ys[2], torch.full((3,), math.exp(-1.0)), rtol=1e-6, atol=0)
    assert torch.equal(torch.isfinite(dev.ys).all(dim=1), reached)
    torch.testing.assert_close(dev.ys[reached], host.ys[reached], rtol=1e-12, atol=0)
    assert torch.isnan(dev.ys[~reached]).all()


def test_max_num_steps(field):
    y0 = torch.randn(4, 2)
    t = torch.linspace(0.0, 5.0, 3)
    with pytest.raises(SolverError) as info:
        hn.odeint(field, y0, t, rtol=1e-10, atol=1e-12, options={"device_loop": True, "max_num_steps": 6})
    assert info.value.status is Status.MAX_STEPS
    host, dev = _pair(field, y0, t, throw=False, rtol=1e-10, atol=1e-12, max_num_steps=6, sync_every=4)
    assert dev.status is Status.MAX_STEPS
    assert dev.stats.nfe == host.stats.nfe == 2 + 6 * 6
    assert torch.isnan(dev.ys[1:]).all() and torch.isnan(host.ys[1:]).all()


def test_min_step_clamps_alike(field):
    # min_step above the steps the tolerance needs: both loops clamp to it and accept (torchdiffeq's
    # meaning, decided once in loop.core), so they take the same steps and succeed
    y0 = torch.randn(4, 2)
    t = torch.linspace(0.0, 5.0, 3)
    host, dev = _pair(field, y0, t, rtol=1e-12, atol=1e-14, min_step=0.5)
    assert host.status is dev.status is Status.SUCCESS
    _assert_same(host, dev)
    assert host.stats.n_rejected == 0 and host.stats.n_accepted <= 10  # 5 / 0.5 steps at most


def test_step_underflow():
    # no min_step: a step that collapses at a blow-up (y' = y^2 from 1, t = 1) fails alike in both loops
    y0 = torch.ones(3, dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    with pytest.raises(SolverError) as host:
        hn.solve(lambda t, y: y**2, y0, t, controller=hn.PIDController())
    with pytest.raises(SolverError) as dev:
        hn.solve(lambda t, y: y**2, y0, t, controller=hn.PIDController(device_loop=True))
    assert host.value.status is dev.value.status is Status.STEP_UNDERFLOW
    assert dev.value.t == host.value.t == pytest.approx(1.0, abs=1e-4)


# ---- options ---------------------------------------------------------------------------------------


def test_option_validation(field):
    y0 = torch.randn(4, 2)
    t = torch.linspace(0.0, 1.0, 3)
    with pytest.raises(ValueError, match="sync_every"):
        hn.odeint(field, y0, t, options={"device_loop": True, "sync_every": 0})
    with pytest.raises(ValueError, match="device_loop must be"):
        hn.odeint(field, y0, t, options={"device_loop": "yes"})
    with pytest.raises(ValueError, match="first-same-as-last"):
        hn.odeint(field, y0, t, method="fehlberg2", options={"device_loop": True})
    with pytest.raises(ValueError, match="Unknown options"):
        hn.odeint(field, y0, t, method="rk4", options={"device_loop": True, "step_size": 0.1})
    with pytest.raises(ValueError, match="jump_t"):
        hn.odeint(field, y0, t, options={"device_loop": True, "jump_t": [0.5]})
    with pytest.raises(ValueError, match="events"):
        hn.odeint(field, y0, t, options={"device_loop": True}, event_fn=lambda tt, y: y.sum() - 100.0)
    with pytest.raises(ValueError, match="per_sample"):
        hn.odeint(field, y0, t, options={"device_loop": True, "per_sample": True})


# ---- gradients -------------------------------------------------------------------------------------


def _gradients(field, y0, t, target, options):
    field.zero_grad()
    y0 = y0.clone().requires_grad_(True)
    ys = hn.odeint(field, y0, t, rtol=1e-7, atol=1e-9, options=options)
    ((ys - target) ** 2).sum().backward()
    return [y0.grad] + [p.grad.clone() for p in field.parameters()]


def test_direct_backprop_equals_host(field):
    y0 = torch.randn(8, 2)
    t = torch.linspace(0.0, 2.5, 6)
    target = torch.randn(6, 8, 2)
    host = _gradients(field, y0, t, target, {"first_step": 1.0})  # a rejection in the graph too
    dev = _gradients(field, y0, t, target, {"first_step": 1.0, "device_loop": True, "sync_every": 3})
    for h, d in zip(host, dev):
        torch.testing.assert_close(d, h, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sensitivity", [hn.BacksolveAdjoint(), hn.InterpolatingAdjoint(checkpoints=2)])
def test_adjoint_forward_solves_through_device_loop(field, sensitivity):
    # the forward solves (and the interpolating adjoint's segment re-solves) may use the device loop;
    # the backward solve, with its impulses at the output times, stays on the host loop
    y0 = torch.randn(8, 2)
    t = torch.linspace(0.0, 2.0, 5)
    target = torch.randn(5, 8, 2)

    def grads(device):
        field.zero_grad()
        ctrl = hn.PIDController(rtol=1e-7, atol=1e-9, device_loop=device)
        sol = hn.solve(field, y0, t, controller=ctrl, sensitivity=sensitivity)
        ((sol.ys - target) ** 2).sum().backward()
        return [p.grad.clone() for p in field.parameters()]

    for h, d in zip(grads(False), grads(True)):
        torch.testing.assert_close(d, h, rtol=1e-9, atol=1e-12)


# ---- compiled runs and CUDA ------------------------------------------------------------------------


@pytest.mark.slow  # about 45 s of compilation on a 2-core CPU
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None,
    reason="torch.compile needs a C++ compiler for CPU tensors",
)
def test_compiled_runs_equal_eager(field):
    y0 = torch.randn(8, 2)
    t = torch.linspace(0.0, 3.0, 7)
    opts = {"device_loop": True, "sync_every": 4}
    with torch.no_grad():
        eager = hn.solve(field, y0, t, controller=hn.PIDController(rtol=1e-7, atol=1e-9, **opts))
        fast = hn.solve(
            field, y0, t, solver=hn.Dopri5().compiled(), controller=hn.PIDController(rtol=1e-7, atol=1e-9, **opts)
        )
    assert any(key[0] == "device_loop" for key in compiled_step._CACHE[field])  # the compiled run was built
    _assert_same(eager, fast, rtol=1e-11)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_loop_equals_host(time_mlp):
    field = time_mlp.cuda()
    y0 = torch.randn(64, 2, device="cuda")
    t = torch.linspace(0.0, 3.0, 7, device="cuda")
    with torch.no_grad():
        host, dev = _pair(field, y0, t, rtol=1e-7, atol=1e-9)
        _assert_same(host, dev)
        compiled = hn.solve(
            field,
            y0,
            t,
            solver=hn.Dopri5().compiled(),
            controller=hn.PIDController(rtol=1e-7, atol=1e-9, device_loop=True),
        )
        _assert_same(host, compiled, rtol=1e-11)
    target = torch.randn(7, 64, 2, device="cuda")
    host_g = _gradients(field, y0, t, target, {})
    dev_g = _gradients(field, y0, t, target, {"device_loop": True})
    for h, d in zip(host_g, dev_g):
        torch.testing.assert_close(d, h, rtol=1e-10, atol=1e-12)
