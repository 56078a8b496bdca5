"""What a Rosenbrock solve learns about taking df/dt of its field is per-solve state (``TimeRoute``).

The solver state created by ``init`` starts knowing nothing and hands what it learns on through
``step``/``next_state``; nothing is remembered per field outside a solve. So a restart (a ``jump_t``,
where the field may be another piece) checks again whether a derivative in t reaches the output,
instead of reusing what the previous piece taught. References are analytic: y' = -y + sin(t),
y(t) = (y0 + 1/2) e^-t + (sin t - cos t) / 2.
"""

import math
import weakref

import pytest
import torch

import hybrid_node as hn
from hybrid_node._term import Term
from hybrid_node.solvers import linalg
from hybrid_node.solvers.implicit import IMPLICIT_METHODS
from hybrid_node.solvers.rosenbrock import Rodas5P

torch.set_num_threads(1)
F64 = torch.float64


def _tensor_forcing(t, y):
    return -y + torch.sin(t)


def _host_forcing(t, y):
    # the same field with t read as a host number (e.g. a table lookup): no derivative reaches the output
    return -y + math.sin(float(t.detach()))


def _switching(t, y):
    """sin(t) forcing, read as a tensor before the jump at t = 1 and as a host number after it."""
    return _tensor_forcing(t, y) if t < 1.0 else _host_forcing(t, y)


def _fixed_end(field, name, n):
    y0 = torch.tensor([1.0], dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    solver = IMPLICIT_METHODS[name][0](adaptive=False)
    return hn.solve(field, y0, t, solver=solver, controller=hn.ConstantStepSize(step_size=2.0 / n), jump_t=[1.0]).ys[-1]


@pytest.mark.parametrize("name", ["rodas5p", "rodas4"])
def test_restart_at_a_jump_checks_the_new_piece_again(name):
    """After the jump the field reads t as a host number, where the passes would give df/dt = 0.

    The restart finds that and takes the forward difference, so the solution is that of the same
    field read as a tensor throughout, up to the difference's error: ~1e-8 relative in df/dt, which
    enters each step as h * d_i * df/dt, over 8 steps of a contracting problem: below 1e-9 (measured
    7e-12 for rodas5p, 5e-11 for rodas4). Keeping the first piece's verdict across the restart
    dropped the df/dt term after the jump: 7e-6 (rodas5p) and 1.1e-4 (rodas4) off at 16 steps.
    """
    n = 16
    got = _fixed_end(_switching, name, n)
    reference = _fixed_end(_tensor_forcing, name, n)
    assert float((got - reference).abs().max()) < 1e-9
    exact = 1.5 * math.exp(-2.0) + 0.5 * (math.sin(2.0) - math.cos(2.0))
    # the method's own error at h = 1/8 (rodas5p 1.4e-9, rodas4 1.6e-7): nothing was lost at the jump
    assert abs(float(got) - exact) < 1e-6


def test_a_term_used_again_is_checked_again():
    """Two solves through one term whose field reads t differently: each init finds its own df/dt."""
    use_host = False

    def field(t, y):
        return _host_forcing(t, y) if use_host else _tensor_forcing(t, y)

    y = torch.tensor([0.4, -0.7], dtype=F64)
    term = Term(field, y, F64)
    solver = Rodas5P()
    t = 0.3
    first = solver.init(term, t, y)
    assert first.time_route == linalg.TimeRoute(follows=True)
    # one evaluation and its two reverse passes in float64: a few eps of cos(t)
    torch.testing.assert_close(first.f_t, torch.full_like(y, math.cos(t)), rtol=0, atol=1e-15)
    use_host = True
    second = solver.init(term, t, y)
    assert second.time_route == linalg.TimeRoute(unreachable=True)
    # the forward difference: step sqrt(eps), truncation sin(t) / 2 * 1.5e-8 and rounding ~1e-8
    torch.testing.assert_close(second.f_t, torch.full_like(y, math.cos(t)), rtol=0, atol=1e-7)


def test_the_route_travels_with_the_states():
    """init -> step -> next_state hands the route on: a field the passes cannot follow is tried once."""
    y = torch.tensor([0.4, -0.7], dtype=F64)
    term = Term(_host_forcing, y, F64)
    solver = Rodas5P(adaptive=False)
    state = solver.init(term, 0.0, y)
    assert state.time_route.unreachable
    for k in range(3):
        step = solver.step(term, 0.1 * k, y, state, 0.1)
        assert step.time_route == state.time_route
        before = term.nfe
        state = solver.next_state(term, 0.1 * (k + 1), step)
        assert state.time_route.unreachable
        # f0 with the vectorised Jacobian, and the difference's one evaluation: no further attempt
        assert term.nfe - before == 2
        y = step.y1


def test_interleaved_solves_keep_their_own_routes():
    """Two solves of different fields stepped alternately through one solver object."""
    y = torch.tensor([0.4, -0.7], dtype=F64)
    tensor_term, host_term = Term(_tensor_forcing, y, F64), Term(_host_forcing, y, F64)
    solver = Rodas5P(adaptive=False)
    states = {"tensor": solver.init(tensor_term, 0.0, y), "host": solver.init(host_term, 0.0, y)}
    ys = {"tensor": y, "host": y}
    terms = {"tensor": tensor_term, "host": host_term}
    for k in range(3):
        for key in ("tensor", "host"):
            step = solver.step(terms[key], 0.1 * k, ys[key], states[key], 0.1)
            states[key] = solver.next_state(terms[key], 0.1 * (k + 1), step)
            ys[key] = step.y1
    t = 0.3
    assert states["tensor"].time_route == linalg.TimeRoute(follows=True)
    assert states["host"].time_route == linalg.TimeRoute(unreachable=True)
    # exact (combined pass) to rounding; the difference to its sqrt(eps) accuracy
    torch.testing.assert_close(states["tensor"].f_t, torch.full_like(y, math.cos(t)), rtol=0, atol=1e-15)
    torch.testing.assert_close(states["host"].f_t, torch.full_like(y, math.cos(t)), rtol=0, atol=1e-7)


def test_no_per_field_state_outside_a_solve():
    """The module keeps nothing per field, and a term carries no time seed: the seed is an argument."""
    containers = (set, dict, weakref.WeakSet, weakref.WeakKeyDictionary)
    assert not [k for k, v in vars(linalg).items() if not k.startswith("__") and isinstance(v, containers)]
    y = torch.tensor([0.4], dtype=F64)
    term = Term(_tensor_forcing, y, F64)
    linalg.jacobian_and_time_derivative(term, 0.3, y, linalg.JacobianSettings())
    assert not hasattr(term, "time_seed")
    seed = torch.zeros((), dtype=F64, requires_grad=True)
    (d,) = torch.autograd.grad(term(0.3, y, seed=seed).sum(), seed)
    assert abs(float(d) - math.cos(0.3)) < 1e-15
