"""Hamiltonian neural networks: structure (divergence-free, conserves its own H), solvers, training."""

from __future__ import annotations

import pytest
import torch

import hybrid_node as hn
from hybrid_node.nn import BaselineODE, HamiltonianNN

F64 = torch.float64


def _model(dim: int = 2) -> HamiltonianNN:
    torch.manual_seed(0)
    return HamiltonianNN(dim, hidden=16).to(F64)


@pytest.mark.usefixtures("one_thread")
def test_field_is_divergence_free():
    model = _model()
    t = torch.zeros((), dtype=F64)
    for x in torch.randn(5, 4, dtype=F64):
        jac = torch.autograd.functional.jacobian(lambda y: model(t, y), x)
        assert abs(float(torch.trace(jac))) < 1e-12
        # and J grad H: the Jacobian is J times a symmetric Hessian, so J^T jac is symmetric
        j = torch.zeros(4, 4, dtype=F64)
        j[:2, 2:] = torch.eye(2, dtype=F64)
        j[2:, :2] = -torch.eye(2, dtype=F64)
        sym = j.T @ jac
        torch.testing.assert_close(sym, sym.T, rtol=0, atol=1e-12)


@pytest.mark.usefixtures("one_thread")
def test_conserves_its_own_hamiltonian_along_accurate_flows():
    model = _model()
    q0, p0 = torch.randn(4, 2, dtype=F64), torch.randn(4, 2, dtype=F64)
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    with torch.no_grad():
        q, p = hn.odeint(model, (q0, p0), t, method="dopri5", rtol=1e-10, atol=1e-10)  # tuple state
        flat = hn.odeint(model, torch.cat([q0, p0], -1), t, method="dopri5", rtol=1e-10, atol=1e-10)  # flat state
        energy = model.hamiltonian(q, p)
        drift = (energy - energy[0]).abs().max()
    scale = float(energy.abs().max())
    assert float(drift) < 1e-8 * max(scale, 1.0)
    torch.testing.assert_close(flat, torch.cat([q, p], -1), rtol=1e-7, atol=1e-7)
    with torch.no_grad():  # a Gauss-Legendre solve (symplectic for this non-separable H) is fine too
        q2, p2 = hn.odeint(model, (q0, p0), t, method="gl4", options={"step_size": 0.1})
    assert (model.hamiltonian(q2, p2) - energy[0]).abs().max().item() < 1e-6 * max(scale, 1.0)


def test_field_trains_by_double_backprop_and_outputs_are_detached_without_grad():
    model = _model(1)
    q, p = torch.randn(16, 1, dtype=F64), torch.randn(16, 1, dtype=F64)
    dq, dp = model(torch.zeros(()), (q, p))
    loss = ((dq - p) ** 2 + (dp + q) ** 2).mean()
    loss.backward()
    # every parameter but the output bias (H is only defined up to a constant, so it has no gradient)
    *trained, out_bias = list(model.parameters())
    assert out_bias.grad is None
    assert all(prm.grad is not None and torch.isfinite(prm.grad).all() for prm in trained)
    with torch.no_grad():
        dq, _ = model(torch.zeros(()), (q, p))
    assert not dq.requires_grad


@pytest.mark.usefixtures("one_thread")
def test_hnn_learns_the_spring_and_baseline_has_the_same_interface():
    torch.manual_seed(1)
    x = torch.randn(256, 2)
    target = torch.stack([x[:, 1], -x[:, 0]], dim=1)  # H = (q^2 + p^2) / 2
    for model in (HamiltonianNN(1, hidden=16), BaselineODE(1, hidden=16)):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        first = None
        for _ in range(60):
            opt.zero_grad()
            loss = ((model(torch.zeros(()), x) - target) ** 2).mean()
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
        assert loss.item() < 0.1 * first


def test_shape_errors_say_what_is_expected():
    model = _model(2)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        model(torch.zeros(()), (torch.zeros(3, 1, dtype=F64), torch.zeros(3, 1, dtype=F64)))
    with pytest.raises(ValueError, match="2 \\* dim = 4"):
        model(torch.zeros(()), torch.zeros(3, 3, dtype=F64))
    # a negative layer count built a purely linear H (whose field is constant) without a word
    with pytest.raises(ValueError, match="layers must be >= 0"):
        HamiltonianNN(2, layers=-1)


def test_pair_states_that_are_not_q_and_p_of_dim_entries_are_refused_by_both_models():
    # the baseline concatenated whatever it got: a q of 1 and a p of 3 entries (4 = 2 * dim inputs) ran
    # and returned a pair of other shapes; three tensors failed in the HNN with "too many values to unpack"
    for model in (_model(2), BaselineODE(2, hidden=4).to(F64)):
        with pytest.raises(ValueError, match=r"must both have shape \(\.\.\., 2\), got \(3, 1\) and \(3, 3\)"):
            model(torch.zeros(()), (torch.zeros(3, 1, dtype=F64), torch.zeros(3, 3, dtype=F64)))
        with pytest.raises(ValueError, match=r"must be the pair \(q, p\), got 3 tensors"):
            model(torch.zeros(()), (torch.zeros(3, 2, dtype=F64),) * 3)
        with pytest.raises(ValueError, match="2 \\* dim = 4"):
            model(torch.zeros(()), torch.zeros(3, 3, dtype=F64))
        dq, dp = model(torch.zeros(()), (torch.zeros(3, 2, dtype=F64), torch.zeros(3, 2, dtype=F64)))
        assert dq.shape == dp.shape == (3, 2)


class _Pendulum(torch.nn.Module):
    """H = p^2 / 2 - cos q summed over the coordinates, one value per sample (shape (...), no trailing 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, p = x.chunk(2, dim=-1)
        return (0.5 * p**2 - torch.cos(q)).sum(-1)


class _PerCoordinate(torch.nn.Module):
    """Returns one value per coordinate instead of one energy per sample (a mistake to be caught)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x**2


def test_custom_energy_gives_j_grad_h_and_a_wrong_energy_shape_is_refused():
    q, p = torch.randn(5, 2, dtype=F64), torch.randn(5, 2, dtype=F64)
    dq, dp = HamiltonianNN(2, hamiltonian=_Pendulum())(torch.zeros(()), (q, p))
    # Hamilton's equations by hand: dq/dt = dH/dp = p, dp/dt = -dH/dq = -sin q (exact up to rounding)
    torch.testing.assert_close(dq, p, rtol=0, atol=1e-15)
    torch.testing.assert_close(dp, -torch.sin(q), rtol=0, atol=1e-15)
    # the sum over the (5, 4) output was silently taken as the energy: a field of 2x, not J grad H
    with pytest.raises(ValueError, match=r"one energy per sample, shape \(5, 1\) or \(5,\).*got \(5, 4\)"):
        HamiltonianNN(2, hamiltonian=_PerCoordinate())(torch.zeros(()), (q, p))


@pytest.mark.usefixtures("one_thread")
def test_field_under_inference_mode_vmap_and_jacfwd_equals_the_eager_field():
    # torch.autograd.grad cannot run there (inference mode records no graph; vmap and jacfwd refuse
    # requires_grad_()): the field raised "element 0 of tensors does not require grad" or a functorch
    # error. The reference is the eager field and torch.autograd.functional.jacobian of it; both take
    # the same derivatives in the same order, so they agree to rounding (1e-14 for O(1) values).
    model = _model()
    t = torch.zeros((), dtype=F64)
    y = torch.randn(5, 4, dtype=F64)
    want = model(t, y).detach()
    with torch.inference_mode():
        torch.testing.assert_close(model(t, y), want, rtol=0, atol=1e-14)
        inference_y = y.clone()
    torch.testing.assert_close(model(t, inference_y).detach(), want, rtol=0, atol=1e-14)  # an inference tensor
    torch.testing.assert_close(torch.func.vmap(lambda z: model(t, z))(y), want, rtol=0, atol=1e-14)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda z: model(t, z), row) for row in y])
    torch.testing.assert_close(torch.func.vmap(torch.func.jacfwd(lambda z: model(t, z)))(y), jac, rtol=0, atol=1e-14)
    times = torch.linspace(0.0, 1.0, 3, dtype=F64)
    with torch.no_grad():
        solved = hn.odeint(model, (y[:, :2], y[:, 2:]), times, method="leapfrog", options={"step_size": 0.05})
    with torch.inference_mode():  # an evaluation rollout under inference mode solves as under no_grad
        got = hn.odeint(model, (y[:, :2], y[:, 2:]), times, method="leapfrog", options={"step_size": 0.05})
    for a, b in zip(got, solved):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
