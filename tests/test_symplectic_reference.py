"""The symplectic compositions step for step against diffrax, and their geometric properties.

diffrax has one explicit symplectic method, ``SemiImplicitEuler`` (kick then drift on ``y = (y1, y2)``:
``y1`` moves with the old ``y2``, then ``y2`` with the new ``y1``, both fields at the step's start).
Störmer-Verlet is the composition of that step over h/2 with its adjoint (the roles swapped) over h/2,
and Yoshida's methods are compositions of Verlet steps with published weights, so each of our methods
is rebuilt here from diffrax's steps and must agree to rounding. ``diffrax.LeapfrogMidpoint`` is another
scheme with the same name (the two-step explicit midpoint rule ``y_{n+1} = y_{n-1} + 2 h f(t_n, y_n)``,
Shampine), not Störmer-Verlet, so it is not compared.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _hamiltonian_fields import oscillator, oscillator_energies, pendulum

import hybrid_node as hn

F64 = torch.float64
ORDERS = {"symplectic_euler": 1, "leapfrog": 2, "yoshida4": 4, "yoshida6": 6}
#: the triple jump of Verlet (Yoshida 1990, eq. 4.14; Forest & Ruth 1990)
_W1 = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
TRIPLE_JUMP = (_W1, 1.0 - 2.0 * _W1, _W1)
#: Yoshida 1990, Table 1, solution A: w1, w2, w3 as printed, w0 = 1 - 2 (w1 + w2 + w3), used w3 w2 w1 w0 w1 w2 w3
_YA = (-1.17767998417887, 0.235573213359357, 0.784513610477560)
YOSHIDA6 = (_YA[2], _YA[1], _YA[0], 1.0 - 2.0 * sum(_YA), _YA[0], _YA[1], _YA[2])


@pytest.fixture(scope="module")
def diffrax_steps():
    """Our four methods rebuilt from diffrax.SemiImplicitEuler steps on the pendulum (float64 jax)."""
    pytest.importorskip("diffrax")
    import diffrax
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    kick_first = (diffrax.ODETerm(lambda t, q, args: -jnp.sin(q)), diffrax.ODETerm(lambda t, p, args: p))  # (p, q)
    drift_first = (kick_first[1], kick_first[0])  # y = (q, p): its adjoint
    solver = diffrax.SemiImplicitEuler()

    def euler(q, p, t, h):
        (p1, q1), *_ = solver.step(kick_first, t, t + h, (p, q), None, None, False)
        return q1, p1

    def verlet(q, p, t, h):
        q, p = euler(q, p, t, h / 2)
        (q, p), *_ = solver.step(drift_first, t + h / 2, t + h, (q, p), None, None, False)
        return q, p

    def composition(weights):
        def step(q, p, t, h):
            for w in weights:
                q, p = verlet(q, p, t, w * h)
                t = t + w * h
            return q, p

        return step

    return {
        "symplectic_euler": euler,
        "leapfrog": verlet,
        "yoshida4": composition(TRIPLE_JUMP),
        "yoshida6": composition(YOSHIDA6),
    }


@pytest.mark.parametrize("method", list(ORDERS))
def test_steps_equal_diffrax_compositions(diffrax_steps, method):
    import jax.numpy as jnp

    q0, p0 = np.array([1.0, 0.5, -2.0]), np.array([0.0, 0.3, 0.1])
    h, n = 0.1, 100
    qs, ps = [q0], [p0]
    for i in range(n):
        q, p = diffrax_steps[method](*map(jnp.asarray, (qs[-1], ps[-1])), i * h, h)
        qs.append(np.asarray(q))
        ps.append(np.asarray(p))
    t = torch.linspace(0.0, n * h, n + 1, dtype=F64)  # every output a step end: no interpolation
    q, p = hn.odeint(pendulum, (torch.tensor(q0), torch.tensor(p0)), t, method=method, options={"step_size": h})
    # the same sub-steps in the same order: rounding only (measured 2e-13 after 100 steps)
    np.testing.assert_allclose(q.numpy(), np.stack(qs), rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.numpy(), np.stack(ps), rtol=0, atol=1e-12)


def _one_step(method: str, field, h: float):
    """The map (q, p) -> one step of ``method`` of size h, on a flat float64 vector (q then p)."""

    def step(y: torch.Tensor) -> torch.Tensor:
        q, p = y.chunk(2)
        qs, ps = hn.odeint(field, (q, p), torch.tensor([0.0, h], dtype=F64), method=method, options={"step_size": h})
        return torch.cat([qs[-1], ps[-1]])

    return step


@pytest.mark.parametrize("method", [*ORDERS, "rk4"])
def test_one_step_jacobian_is_symplectic(method):
    # J^T Omega J = Omega (so det J = 1) for every composition on a separable H, to rounding; rk4 is not
    # symplectic (off by 1e-5 at this step), which shows the check can fail
    y = torch.tensor([0.7, -1.2, 0.4, 0.9], dtype=F64)
    jac = torch.func.jacrev(_one_step(method, pendulum, 0.3))(y)
    omega = torch.zeros(4, 4, dtype=F64)
    omega[:2, 2:] = torch.eye(2, dtype=F64)
    omega[2:, :2] = -torch.eye(2, dtype=F64)
    defect = float((jac.T @ omega @ jac - omega).abs().max())
    det = float(torch.linalg.det(jac))
    if method == "rk4":
        assert defect > 1e-6 and abs(det - 1) > 1e-6
    else:  # products of a few O(1) entries: a few ulps
        assert defect < 1e-14 and abs(det - 1) < 1e-14, (defect, det)


@pytest.mark.parametrize("method", list(ORDERS))
def test_energy_error_stays_bounded_over_1e4_steps(method):
    # On the oscillator one step is a linear map whose matrix the solver computes (its Jacobian), so its
    # powers are the 10^4-step trajectory. A symplectic map conserves a modified energy H + O(h^p)
    # exactly, so the error oscillates with a bound of order h^p that does not grow (measured: 0.26 h,
    # h^2 / 8, 0.04 h^4, 0.002 h^6 at h = 0.1).
    h, n = 0.1, 10**4
    matrix = torch.func.jacrev(_one_step(method, oscillator, h))(torch.tensor([1.0, 0.0], dtype=F64))
    error = (oscillator_energies(matrix, n) - 0.5).abs()
    first, last = error[: n // 10].max(), error[-(n // 10) :].max()
    assert float(error.max()) < 0.5 * h ** ORDERS[method]
    assert float(last) < 1.01 * float(first)  # no drift: the last tenth's peak is the first tenth's


def varying(k):
    """A separable field whose drift depends on t and whose force has a parameter k."""

    def field(t, y):
        q, p = y
        return p * (1 + 0.2 * torch.sin(t)), -k * torch.sin(q)

    return field


@pytest.mark.parametrize("method", list(ORDERS))
def test_gradients_equal_finite_differences(method):
    def loss(q0, p0, k):
        t = torch.tensor([0.0, 0.7, 1.5], dtype=F64)  # 0.7: an output between steps (interpolated)
        qs, ps = hn.odeint(varying(k), (q0, p0), t, method=method, options={"step_size": 0.1})
        return (qs[-1] ** 2).sum() + (ps[1] * qs[1]).sum()

    inputs = (
        torch.tensor([0.8, -0.3], dtype=F64, requires_grad=True),
        torch.tensor([0.1, 0.5], dtype=F64, requires_grad=True),
        torch.tensor(2.0, dtype=F64, requires_grad=True),
    )
    # central differences at eps 1e-6 in float64: error ~ 1e-10, far inside gradcheck's atol 1e-5
    assert torch.autograd.gradcheck(loss, inputs)


def test_bad_input_gets_clear_errors():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    q, p = torch.ones(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match=r"needs a tuple state y0 = \(q, p\)"):
        hn.odeint(lambda t, y: -y, torch.cat([q, p]), t, method="yoshida4", options={"step_size": 0.1})
    # q and p of other shapes: the Hamiltonian field's derivatives cannot have their states' shapes
    with pytest.raises(ValueError, match=r"derivative of shape \(2,\) for state tensor 0 of shape \(3,\)"):
        hn.odeint(pendulum, (q, p[:2]), t, method="leapfrog", options={"step_size": 0.1})
    with pytest.raises(TypeError, match="must share one dtype"):
        hn.odeint(pendulum, (q, p.float()), t, method="leapfrog", options={"step_size": 0.1})
    # an adaptive method's options on a fixed-step one are refused, as are bad step sizes
    for options in ({"first_step": 0.1}, {"step_size": 0.1, "dtmin": 1e-3}, {"step_size": 0.1, "safety": 0.9}):
        with pytest.raises(ValueError, match=r"Unknown options \[.*\] for method 'leapfrog'"):
            hn.odeint(pendulum, (q, p), t, method="leapfrog", options=options)
    for step in (0.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="step_size must be a positive finite number"):
            hn.odeint(pendulum, (q, p), t, method="yoshida6", options={"step_size": step})
