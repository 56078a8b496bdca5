"""Solves backwards in time (t decreasing) across the features, against two references.

1. The time-reversed forward problem: with s = -t, y(t) solves dz/ds = -f(-s, z) over s increasing. The
   torch loops integrate a decreasing t exactly this way (hybrid_node/_problem.py negates the times and
   wraps the field), and negation is exact in floating point (fl(-a - b) = -fl(a + b)), so every method
   takes the same steps and gives the same states bit for bit. A test that finds a difference of one
   ulp here has found a path that does not go through that negation.
2. scipy's ``solve_ivp`` with ``t_span=(t0, t1)``, t1 < t0, an independent integrator (DOP853 at
   rtol = atol = 1e-12, error about 1e-12 on these smooth problems), with tolerances justified where
   they are used.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import hybrid_node as hn
from hybrid_node.nn import ODEBlock, SolveSettings

F64 = torch.float64
T_BACK = torch.tensor([1.0, 0.5, 0.0], dtype=F64)
Y0 = torch.tensor([1.0, 0.5], dtype=F64)


def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A forced oscillator: non-autonomous, so a wrong sign of the time handed to the field shows."""
    force = 0.3 * torch.sin(2 * t) * torch.ones_like(y[..., 0])
    return torch.stack([y[..., 1], -y[..., 0] + force], -1)


def reversed_field(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The same problem in s = -t: dz/ds = -f(-s, z)."""
    return -field(-s, z)


def scipy_reference(t: torch.Tensor, y0: torch.Tensor = Y0) -> np.ndarray:
    """``solve_ivp`` over ``t`` (either direction) at rtol = atol = 1e-12, states at every time of ``t``."""
    sol = solve_ivp(
        lambda s, y: field(torch.tensor(s, dtype=F64), torch.as_tensor(y)).numpy(),
        (float(t[0]), float(t[-1])),
        y0.numpy(),
        t_eval=t.numpy(),
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
    )
    assert sol.success
    return sol.y.T


# ------------------------------------------------------------------ every method, plain odeint

FIXED = {
    "euler",
    "midpoint",
    "heun2",
    "heun3",
    "rk4",
    "rk4_classic",
    "explicit_adams",
    "implicit_adams",
    "fixed_adams",
    "implicit_euler",
    "implicit_midpoint",
    "trapezoid",
    "sdirk2",
    "trbdf2",
    "ros3p",
    "gl4",
    "gl6",
    "radauIIA3",
    "radauIIA5",
}
SYMPLECTIC = {"leapfrog", "symplectic_euler", "yoshida4", "yoshida6"}
JULIA_ONLY = {"dp5", "bs3", "vern7", "vern9", "fbdf", "qndf"}
VECTOR_METHODS = sorted(set(hn.METHODS) - SYMPLECTIC - JULIA_ONLY)


def _settings(method: str) -> dict:
    if method in FIXED:
        return dict(method=method, options={"step_size": 0.05})
    return dict(method=method, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("method", VECTOR_METHODS)
def test_every_method_mirrors_the_reversed_forward_solve_bit_for_bit(method):
    back = hn.odeint(field, Y0, T_BACK, **_settings(method))
    mirrored = hn.odeint(reversed_field, Y0, -T_BACK, **_settings(method))
    assert torch.equal(back, mirrored)
    # Against scipy: the same method forwards over [0, 1] (same smoothness, same step count) sets the
    # accuracy to expect, 10x for the two directions' different local errors; at least 1e-6, as an adaptive
    # solve at tolerance 1e-8 over unit length may land within 100x its tolerance, in either direction
    # (a forward error that cancels to 1.6e-9 does not promise as much backwards). A backward solve that
    # stepped the wrong way or misread the times would be off by O(0.1).
    forward_t = T_BACK.flip(0)
    forward = hn.odeint(field, Y0, forward_t, **_settings(method))
    forward_error = np.abs(forward.numpy() - scipy_reference(forward_t)).max()
    backward_error = np.abs(back.numpy() - scipy_reference(T_BACK)).max()
    assert backward_error <= max(10 * forward_error, 1e-6)


def hamiltonian_field(t, state):
    """A non-autonomous separable system in (q, p) for the partitioned (symplectic) methods."""
    q, p = state
    return p * (1 + 0.1 * torch.cos(t)), -q - 0.2 * torch.sin(3 * t)


def reversed_hamiltonian_field(s, state):
    dq, dp = hamiltonian_field(-s, state)
    return -dq, -dp


@pytest.mark.parametrize("method", sorted(SYMPLECTIC))
def test_symplectic_methods_mirror_the_reversed_forward_solve_bit_for_bit(method):
    y0 = (torch.tensor([1.0], dtype=F64), torch.tensor([0.3], dtype=F64))
    options = {"step_size": 0.05}
    back = hn.odeint(hamiltonian_field, y0, T_BACK, method=method, options=options)
    mirrored = hn.odeint(reversed_hamiltonian_field, y0, -T_BACK, method=method, options=options)
    assert all(torch.equal(a, b) for a, b in zip(back, mirrored))
    reference = hn.odeint(hamiltonian_field, y0, T_BACK, method="dopri8", rtol=1e-12, atol=1e-12)
    # the crudest of them (symplectic Euler, order 1, h = 0.05 over length 1) is off by about 0.023
    assert max(float((a - b).abs().max()) for a, b in zip(back, reference)) < 0.05


@pytest.mark.parametrize("scipy_method", ["RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA"])
def test_scipy_solver_backwards_equals_solve_ivp_backwards_bit_for_bit(scipy_method):
    # scipy steps t_span=(1, 0) with negative steps; its formulas are odd in the step, so its numbers
    # equal those of our solve in s = -t exactly
    ours = hn.odeint(field, Y0, T_BACK, method="scipy_solver", options={"solver": scipy_method}, rtol=1e-8, atol=1e-8)
    theirs = solve_ivp(
        lambda s, y: field(torch.tensor(s, dtype=F64), torch.as_tensor(y)).numpy(),
        (1.0, 0.0),
        Y0.numpy(),
        t_eval=T_BACK.numpy(),
        method=scipy_method,
        rtol=1e-8,
        atol=1e-8,
    )
    assert np.array_equal(ours.numpy(), theirs.y.T)


def test_matches_torchdiffeq_on_fixed_grids_backwards():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    for method in ("euler", "midpoint", "rk4"):
        ours = hn.odeint(field, y0, T_BACK, method=method, options={"step_size": 0.1})
        theirs = torchdiffeq.odeint(field, y0, T_BACK, method=method, options={"step_size": 0.1})
        assert torch.equal(ours, theirs)  # the same grid in s = -t, the same tableau


# ------------------------------------------------------------------ loops and step options


BATCH = torch.tensor([[1.0, 0.5], [0.3, -0.2]], dtype=F64)


@pytest.mark.parametrize(
    "options",
    [
        {"first_step": 0.1},
        {"max_step": 0.05},
        {"min_step": 0.05},
        {"device_loop": True},
        {"per_sample": True},
    ],
    ids=lambda o: next(iter(o)),
)
def test_step_options_mirror_bit_for_bit(options):
    # first_step, max_step and min_step are lengths in both directions (as scipy's; Julia's dt may be
    # negative for a backwards tspan, and OrdinaryDiffEqCore's handle_dt! negates a positive one)
    back = hn.odeint(field, BATCH, T_BACK, options=dict(options))
    mirrored = hn.odeint(reversed_field, BATCH, -T_BACK, options=dict(options))
    assert torch.equal(back, mirrored)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("dopri5", {"first_step": -0.1}),
        ("dopri5", {"max_step": -0.1}),
        ("dopri5", {"min_step": -0.1}),
        ("rk4", {"step_size": -0.1}),
        ("bdf", {"first_step": -0.1}),
    ],
)
def test_a_negative_step_for_a_backward_solve_is_refused_saying_steps_are_lengths(method, options):
    with pytest.raises(ValueError, match="backwards in time"):
        hn.odeint(field, Y0, T_BACK, method=method, options=options)


@pytest.mark.parametrize(
    ("method", "options", "backend"),
    [
        ("scipy_solver", {"first_step": -0.1}, "torch"),
        ("scipy_solver", {"max_step": -0.1}, "torch"),
        ("dopri5", {"first_step": -0.1}, "julia"),  # checked in Python before Julia starts
        ("rk4", {"step_size": -0.1}, "julia"),
    ],
)
def test_negative_steps_of_scipy_and_julia_are_refused_saying_steps_are_lengths(method, options, backend):
    with pytest.raises(ValueError, match="backwards in time"):
        hn.odeint(field, Y0, T_BACK, method=method, options=options, backend=backend)


def test_negative_per_sample_first_step_is_refused_saying_steps_are_lengths():
    with pytest.raises(ValueError, match="backwards in time"):
        hn.PIDController(per_sample=True, first_step=torch.tensor([-0.1, -0.1]))


def test_fixed_grid_options_mirror_bit_for_bit():
    seen = []

    def grid(func, y0, t):  # called with the user's times (decreasing here), as torchdiffeq calls it
        seen.append((float(t[0]), float(t[-1])))
        return torch.linspace(float(t[0]), float(t[-1]), 7, dtype=t.dtype)

    for options in (
        {"step_size": 0.1, "perturb": True},
        {"step_size": 0.3, "interp": "cubic"},
        {"grid_constructor": grid},
    ):
        back = hn.odeint(field, Y0, T_BACK, method="rk4", options=dict(options))
        mirrored = hn.odeint(reversed_field, Y0, -T_BACK, method="rk4", options=dict(options))
        assert torch.equal(back, mirrored)
    assert seen == [(1.0, 0.0), (-1.0, 0.0)]


def test_jump_t_and_step_t_are_given_in_the_users_time():
    for key in ("jump_t", "step_t"):
        back = hn.odeint(field, Y0, T_BACK, options={key: [0.7]})
        mirrored = hn.odeint(reversed_field, Y0, -T_BACK, options={key: [-0.7]})
        assert torch.equal(back, mirrored)
    back = hn.solve(field, Y0, T_BACK, solver=hn.RK4(), controller=hn.ConstantStepSize(0.1), jump_t=[0.73])
    mirrored = hn.solve(
        reversed_field, Y0, -T_BACK, solver=hn.RK4(), controller=hn.ConstantStepSize(0.1), jump_t=[-0.73]
    )
    assert torch.equal(back.ys, mirrored.ys)


@pytest.mark.parametrize("method", ["dopri5", "bdf", "rosenbrock23", "adams", "kvaerno5", "lsoda"])
def test_jump_t_backwards_integrates_a_step_field_exactly(method):
    # y' = 1 after t = 0.7, -1 before: from y(1) = 0 back to 0, y(0) = -0.3 + 0.7 = 0.4. Each piece is
    # constant, which every method integrates exactly once a step ends on the jump: only rounding remains.
    def step_field(t, y):
        return torch.where(t > 0.7, 1.0, -1.0).to(y.dtype) * torch.ones_like(y)

    y = hn.odeint(
        step_field,
        torch.zeros(1, dtype=F64),
        torch.tensor([1.0, 0.0], dtype=F64),
        method=method,
        rtol=1e-9,
        atol=1e-9,
        options={"jump_t": [0.7]},
    )
    assert float(y[-1]) == pytest.approx(0.4, abs=1e-12)


def test_compiled_per_step_graphs_mirror_bit_for_bit():
    # one graph per step attempt (with an autograd graph, so not the whole-solve graph)
    y0 = Y0.clone().requires_grad_()
    options = {"step_size": 0.1, "compile": True}
    back = hn.odeint(field, y0, T_BACK, method="rk4", options=dict(options))
    mirrored = hn.odeint(reversed_field, y0, -T_BACK, method="rk4", options=dict(options))
    assert torch.equal(back, mirrored)
    eager = hn.odeint(field, y0, T_BACK, method="rk4", options={"step_size": 0.1})
    torch.testing.assert_close(back, eager, rtol=0, atol=1e-14)  # inductor may fuse the stage sums


def test_compiled_whole_solve_mirrors_bit_for_bit():
    with torch.no_grad():  # no autograd graph: the whole solve runs as one compiled graph
        back = hn.odeint(field, BATCH, T_BACK, rtol=1e-7, atol=1e-7, options={"compile": True})
        mirrored = hn.odeint(reversed_field, BATCH, -T_BACK, rtol=1e-7, atol=1e-7, options={"compile": True})
        eager = hn.odeint(field, BATCH, T_BACK, rtol=1e-7, atol=1e-7)
    assert torch.equal(back, mirrored)
    torch.testing.assert_close(back, eager, rtol=0, atol=1e-12)  # fused arithmetic: rounding only


# ------------------------------------------------------------------ events


def _scipy_event_times(t0: float, t1: float, y0: torch.Tensor, level: float) -> np.ndarray:
    sol = solve_ivp(
        lambda s, y: field(torch.tensor(s, dtype=F64), torch.as_tensor(y)).numpy(),
        (t0, t1),
        y0.numpy(),
        rtol=1e-12,
        atol=1e-12,
        events=lambda s, y: y[0] - level,
    )
    return sol.t_events[0]


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4", "bdf"])
def test_odeint_event_reverse_time_mirrors_and_matches_scipy(method):
    settings = dict(method=method, rtol=1e-10, atol=1e-10)
    if method == "rk4":
        settings["options"] = {"step_size": 0.01}
    t_event, ys = hn.odeint_event(
        field, Y0, torch.tensor(1.0, dtype=F64), event_fn=lambda t, y: y[..., 0] - 0.3, reverse_time=True, **settings
    )
    s_event, zs = hn.odeint_event(
        reversed_field, Y0, torch.tensor(-1.0, dtype=F64), event_fn=lambda s, z: z[..., 0] - 0.3, **settings
    )
    assert float(t_event) == -float(s_event) and torch.equal(ys, zs)
    # scipy's first root going backwards from 1 (at 0.0655); rk4 at h = 0.01 has a state error of
    # about 3e-6 here, which the root inherits divided by |y0'| ~ 1
    expected = _scipy_event_times(1.0, -5.0, Y0, 0.3)[0]
    assert float(t_event) == pytest.approx(expected, abs=1e-5 if method == "rk4" else 1e-8)


def test_per_sample_events_backwards_mirror():
    t_event, ys = hn.odeint_event(
        field,
        BATCH + 0.5,
        torch.tensor(1.0, dtype=F64),
        event_fn=lambda t, y: y[..., 0] - 0.3,
        reverse_time=True,
        per_sample=True,
        rtol=1e-10,
        atol=1e-10,
    )
    s_event, zs = hn.odeint_event(
        reversed_field,
        BATCH + 0.5,
        torch.tensor(-1.0, dtype=F64),
        event_fn=lambda s, z: z[..., 0] - 0.3,
        per_sample=True,
        rtol=1e-10,
        atol=1e-10,
    )
    assert torch.equal(t_event, -s_event) and torch.equal(ys, zs)
    for k in range(2):
        assert float(t_event[k]) == pytest.approx(_scipy_event_times(1.0, -5.0, BATCH[k] + 0.5, 0.3)[0], abs=1e-8)


def test_event_t_end_on_the_wrong_side_names_the_direction():
    with pytest.raises(ValueError, match="before t0 with reverse_time=True"):
        hn.odeint_event(field, Y0, 1.0, event_fn=lambda t, y: y[..., 0] - 0.3, reverse_time=True, t_end=5.0)


@pytest.mark.parametrize(("direction", "expected"), [(-1, [math.pi]), (0, [math.pi]), (1, [])])
def test_event_direction_counts_along_the_users_time(direction, expected):
    # y = sin t solved from 5 back to 0: its one root inside is pi, where sin decreases as t increases.
    # hn.Event's direction follows t (scipy's solve_ivp counts along the integration instead: there the
    # same root is an increasing crossing)
    sol = hn.solve(
        lambda t, y: torch.cos(t) * torch.ones_like(y),
        torch.tensor([math.sin(5.0)], dtype=F64),
        torch.tensor([5.0, 0.0], dtype=F64),
        event=hn.Event(lambda t, y: y[0], direction=direction),
        controller=hn.PIDController(rtol=1e-10, atol=1e-10),
    )
    assert [float(r.t) for r in sol.events] == pytest.approx(expected, abs=1e-8)


def test_event_with_jump_backwards_mirrors():
    controller = hn.PIDController(rtol=1e-10, atol=1e-10)

    def halve(t, y):
        return 0.5 * y

    back = hn.solve(field, Y0, T_BACK, event=hn.Event(lambda t, y: y[0] - 0.8, on_event=halve), controller=controller)
    mirrored = hn.solve(
        reversed_field, Y0, -T_BACK, event=hn.Event(lambda s, z: z[0] - 0.8, on_event=halve), controller=controller
    )
    assert torch.equal(back.ys, mirrored.ys)
    assert [float(r.t) for r in back.events] == [-float(r.t) for r in mirrored.events]
    assert len(back.events) == 1 and 0.0 < float(back.events[0].t) < 1.0


# ------------------------------------------------------------------ dense output


def test_odeint_dense_backwards_mirrors_and_matches_scipy():
    dense = hn.odeint_dense(field, Y0, 1.0, 0.0, rtol=1e-10, atol=1e-10)
    mirrored = hn.odeint_dense(reversed_field, Y0, -1.0, 0.0, rtol=1e-10, atol=1e-10)
    queries = torch.tensor([0.9, 0.33, 0.1, 0.0, 1.0], dtype=F64)  # unsorted, ends included
    assert torch.equal(dense(queries), mirrored(-queries))
    # dopri5's 4th-order interpolant between steps taken at 1e-10: about 1e-10 off scipy's 1e-12 solve
    ordered = queries.sort(descending=True).values  # solve_ivp wants t_eval in the direction of t_span
    np.testing.assert_allclose(dense(ordered).numpy(), scipy_reference(ordered), atol=2e-9)
    with pytest.raises(ValueError, match=r"outside the solved interval \[0.0, 1.0\]"):
        dense(1.5)


# ------------------------------------------------------------------ gradients


class Forced(torch.nn.Module):
    """tanh(W y) + b sin(2t): parameters in the state and the time parts."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[0.1, 1.0], [-1.0, -0.2]], dtype=F64))
        self.b = torch.nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, t, y):
        return torch.tanh(y @ self.w.T) + self.b * torch.sin(2 * t)


TIGHT = dict(rtol=1e-11, atol=1e-11)
T_GRAD = torch.tensor([1.0, 0.6, 0.0], dtype=F64)


def _loss(ys: torch.Tensor) -> torch.Tensor:
    return (ys[1:] ** 2).sum() + ys[-1, 0]


def _finite_differences(model: Forced) -> list[torch.Tensor]:
    """Central differences of the loss in y0 and every parameter entry (direct odeint at TIGHT)."""
    eps = 1e-6

    def loss(y0: torch.Tensor) -> float:
        return float(_loss(hn.odeint(model, y0, T_GRAD, **TIGHT)))

    grads = []
    with torch.no_grad():
        grads.append(
            torch.stack(
                [
                    torch.tensor((loss(Y0 + eps * e) - loss(Y0 - eps * e)) / (2 * eps), dtype=F64)
                    for e in torch.eye(2, dtype=F64)
                ]
            )
        )
        for p in model.parameters():
            g = torch.zeros_like(p)
            flat = p.view(-1)
            for i in range(flat.numel()):
                keep = float(flat[i])
                flat[i] = keep + eps
                up = loss(Y0)
                flat[i] = keep - eps
                down = loss(Y0)
                flat[i] = keep
                g.view(-1)[i] = (up - down) / (2 * eps)
            grads.append(g)
    return grads


SOLVES = {
    "direct": lambda m, y, t: hn.odeint(m, y, t, **TIGHT),
    "odeint_adjoint": lambda m, y, t: hn.odeint_adjoint(m, y, t, **TIGHT),
    "odeint_adjoint_seminorm": lambda m, y, t: hn.odeint_adjoint(
        m, y, t, adjoint_options={"norm": "seminorm"}, **TIGHT
    ),
    "odeint_adjoint_reversible": lambda m, y, t: hn.odeint_adjoint(
        m, y, t, adjoint_options={"reversible": True}, **TIGHT
    ),
    "interpolating": lambda m, y, t: (
        hn.solve(m, y, t, sensitivity=hn.InterpolatingAdjoint(), controller=hn.PIDController(**TIGHT)).ys
    ),
    "interpolating_checkpoints": lambda m, y, t: (
        hn.solve(m, y, t, sensitivity=hn.InterpolatingAdjoint(checkpoints=3), controller=hn.PIDController(**TIGHT)).ys
    ),
    "direct_checkpoints": lambda m, y, t: (
        hn.solve(m, y, t, sensitivity=hn.DirectBackprop(checkpoints=3), controller=hn.PIDController(**TIGHT)).ys
    ),
    "reversible": lambda m, y, t: (
        hn.solve(
            m,
            y,
            t,
            solver=hn.Reversible(hn.Dopri5()),
            sensitivity=hn.ReversibleAdjoint(),
            controller=hn.PIDController(**TIGHT),
        ).ys
    ),
}


@pytest.fixture(scope="module")
def fd_gradients():
    return _finite_differences(Forced())


@pytest.mark.parametrize("name", list(SOLVES))
def test_gradients_of_a_backward_solve_match_finite_differences(name, fd_gradients):
    model = Forced()
    y0 = Y0.clone().requires_grad_()
    grads = torch.autograd.grad(_loss(SOLVES[name](model, y0, T_GRAD)), [y0, *model.parameters()])
    # The solves' error (~1e-11) moves with the parameters unevenly (the adaptive steps change), which
    # central differences at eps = 1e-6 turn into up to ~1e-11 / 1e-6 = 1e-5; measured: 4.2e-9. A sign
    # error in the backward pass would be O(1).
    for ours, fd in zip(grads, fd_gradients):
        torch.testing.assert_close(ours, fd, rtol=0, atol=1e-6)


def test_time_gradients_of_a_backward_solve():
    model = Forced()
    t = T_GRAD.clone().requires_grad_()
    ys = hn.odeint(model, Y0, t, **TIGHT)
    (direct,) = torch.autograd.grad(ys[-1].sum(), t)
    t2 = T_GRAD.clone().requires_grad_()
    (adjoint,) = torch.autograd.grad(hn.odeint_adjoint(model, Y0, t2, **TIGHT)[-1].sum(), t2)
    with torch.no_grad():
        slope_at_end = float(model(T_GRAD[-1], ys[-1]).sum())
    assert float(direct[-1]) == pytest.approx(slope_at_end, abs=1e-12)  # d y(t_end) / d t_end = f there
    assert float(direct[1]) == 0.0  # the middle time does not reach the last state
    torch.testing.assert_close(adjoint, direct, rtol=0, atol=1e-9)  # two solves at 1e-11


def test_vmap_and_jacrev_through_a_backward_solve():
    from torch.func import jacrev, vmap

    model = Forced()
    with torch.no_grad():
        batched = vmap(lambda y: hn.odeint(model, y, T_GRAD, **TIGHT))(BATCH)
        one_by_one = torch.stack([hn.odeint(model, y, T_GRAD, **TIGHT) for y in BATCH])
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-10)  # steps shared by the batch
    jac = jacrev(lambda y: hn.odeint(model, y, T_GRAD, **TIGHT)[-1])(Y0)
    with torch.no_grad():
        fd = torch.stack(
            [
                (
                    hn.odeint(model, Y0 + 1e-6 * e, T_GRAD, **TIGHT)[-1]
                    - hn.odeint(model, Y0 - 1e-6 * e, T_GRAD, **TIGHT)[-1]
                )
                / 2e-6
                for e in torch.eye(2, dtype=F64)
            ],
            -1,
        )
    torch.testing.assert_close(jac, fd, rtol=0, atol=1e-6)  # finite differences as above


# ------------------------------------------------------------------ SDEs and the nn modules


class _OU(torch.nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


@pytest.mark.parametrize("entry", ["sdeint", "sdeint_adjoint"])
def test_sdes_refuse_decreasing_times_saying_what_to_do(entry):
    kwargs = {"adjoint_params": ()} if entry == "sdeint_adjoint" else {}
    with pytest.raises(ValueError, match="strictly increasing.*reverse the SDE"):
        getattr(hn, entry)(_OU(), torch.ones(3, 1, dtype=F64), T_BACK, **kwargs)


@pytest.mark.parametrize("sensitivity", [hn.DirectBackprop(), hn.BacksolveAdjoint(), hn.InterpolatingAdjoint()])
def test_ode_block_with_reversed_times_inverts_the_forward_block(sensitivity):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    settings = SolveSettings(sensitivity=sensitivity, rtol=1e-9, atol=1e-9)
    backward_block = ODEBlock(Field(), t=(1.0, 0.0), train_settings=settings)
    forward_block = ODEBlock(Field(), t=(0.0, 1.0), train_settings=settings)
    x = torch.randn(4, 2, dtype=F64, requires_grad=True)
    out = backward_block(x)
    torch.testing.assert_close(forward_block(out), x, rtol=0, atol=1e-7)  # two solves at 1e-9, length 1
    (grad,) = torch.autograd.grad(out.sum(), x)
    x2 = x.detach().clone().requires_grad_()
    reference = hn.odeint(Field(), x2, torch.tensor([1.0, 0.0], dtype=F64), rtol=1e-9, atol=1e-9)[-1]
    (direct,) = torch.autograd.grad(reference.sum(), x2)
    torch.testing.assert_close(grad, direct, rtol=0, atol=1e-6)


def _latent_model():
    from hybrid_node.nn import LatentODE

    torch.manual_seed(0)
    return LatentODE(obs_dim=2, latent_dim=3, rtol=1e-10, atol=1e-10).double()


def test_latent_ode_backcasts_from_t0_backwards():
    model = _latent_model()
    z0 = torch.randn(4, 3, dtype=F64)
    times = torch.tensor([-0.3, -0.8], dtype=F64)
    with torch.no_grad():
        back = model.latent_trajectory(z0, times, t0=0.0)
        direct = hn.odeint(model.dynamics, z0, torch.tensor([0.0, -0.3, -0.8], dtype=F64), rtol=1e-10, atol=1e-10)
        assert torch.equal(back, direct[1:])  # the same solve
        # and forecasting from the earliest state returns z0: two solves at 1e-10 over length 0.8, each
        # accumulating up to ~100x its tolerance (measured: 1.2e-8 apart)
        again = model.latent_trajectory(back[-1], torch.tensor([-0.3, 0.0], dtype=F64), t0=-0.8)
    torch.testing.assert_close(again[-1], z0, rtol=0, atol=1e-7)
    assert model.decode(z0, times, t0=0.0).shape == (4, 2, 2)


@pytest.mark.parametrize("times", [[0.5, 0.2], [-0.5, 0.5], [0.0, 0.5, 0.3]])
def test_latent_ode_refuses_times_that_do_not_run_from_t0_in_one_direction(times):
    model = _latent_model()
    with pytest.raises(ValueError, match="times must run from t0=0 in one direction"):
        model.latent_trajectory(torch.zeros(1, 3, dtype=F64), torch.tensor(times, dtype=F64), t0=0.0)


# ------------------------------------------------------------------ implicit methods, failures, event gradients


def _unstable_forwards(t, y):
    """y' = 50 (y - cos t): stiff and stable when solved backwards (the forward problem blows up)."""
    return 50.0 * (y - torch.cos(t))


@pytest.mark.parametrize("method", ["rodas5p", "rosenbrock23", "bdf", "kvaerno5"])
def test_implicit_methods_with_a_users_jacobian_mirror_bit_for_bit(method):
    # the user's jacobian is d f / d y at the user's time; the mirrored problem's is its negative at -s
    def jac(t, y):
        return 50.0 * torch.eye(2, dtype=F64)

    y0 = torch.tensor([1.0, 0.2], dtype=F64)
    t = torch.tensor([0.0, -0.5, -1.0], dtype=F64)
    for own, mirrored_jac in (({}, {}), ({"jacobian": jac}, {"jacobian": lambda s, z: -jac(-s, z)})):
        back = hn.odeint(_unstable_forwards, y0, t, method=method, rtol=1e-6, atol=1e-6, options=own)
        mirrored = hn.odeint(
            lambda s, z: -_unstable_forwards(-s, z), y0, -t, method=method, rtol=1e-6, atol=1e-6, options=mirrored_jac
        )
        assert torch.equal(back, mirrored)
    reference = hn.odeint(_unstable_forwards, y0, t, method="dopri8", rtol=1e-12, atol=1e-12)
    # 100x the tolerance 1e-6 (kept loose: rosenbrock23, order 2, takes thousands of steps at 1e-8)
    torch.testing.assert_close(back, reference, rtol=0, atol=1e-4)


def test_a_backward_blow_up_is_reported_at_the_users_time():
    # y' = -y^2 from y(0) = 1 is 1 / (1 + t): it blows up at t = -1 going backwards
    with pytest.raises(hn.SolverError, match=r"failed at t=-1\b") as info:
        hn.odeint(lambda t, y: -(y**2), torch.ones(1, dtype=F64), torch.tensor([0.0, -0.5, -2.0], dtype=F64))
    assert float(info.value.t) == pytest.approx(-1.0, abs=1e-5)
    sol = hn.solve(
        lambda t, y: -(y**2), torch.ones(1, dtype=F64), torch.tensor([0.0, -0.5, -2.0], dtype=F64), throw=False
    )
    assert float(sol.ys[1]) == pytest.approx(2.0, rel=1e-5) and bool(sol.ys[2].isnan())


class _Spring(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.3, dtype=F64))

    def forward(self, t, y):
        force = 0.2 * torch.sin(t) * torch.ones_like(y[..., 0])
        return torch.stack([y[..., 1], -self.k * y[..., 0] + force], -1)


def _event_loss(model, y0, sensitivity):
    def flip_velocity(t, y):
        return y * torch.tensor([1.0, -0.7], dtype=F64)

    sol = hn.solve(
        model,
        y0,
        torch.tensor([3.0, 1.5, 0.0], dtype=F64),
        event=hn.Event(lambda t, y: y[..., 0] - 0.5, on_event=flip_velocity),
        controller=hn.PIDController(rtol=1e-11, atol=1e-11),
        sensitivity=sensitivity,
    )
    return (sol.ys[1:] ** 2).sum() + sum(r.t for r in sol.events), len(sol.events)


@pytest.mark.parametrize("sensitivity", [hn.DirectBackprop(), hn.BacksolveAdjoint(), hn.InterpolatingAdjoint()])
def test_event_jumps_backwards_have_finite_difference_gradients(sensitivity):
    model, y0 = _Spring(), torch.tensor([1.0, 0.0], dtype=F64)
    y = y0.clone().requires_grad_()
    loss, n_events = _event_loss(model, y, sensitivity)
    assert n_events == 2
    grads = torch.autograd.grad(loss, [y, model.k])
    eps = 1e-6
    with torch.no_grad():
        fd_y = [
            (
                _event_loss(model, y0 + eps * e, hn.DirectBackprop())[0]
                - _event_loss(model, y0 - eps * e, hn.DirectBackprop())[0]
            )
            / (2 * eps)
            for e in torch.eye(2, dtype=F64)
        ]
        model.k += eps
        up = _event_loss(model, y0, hn.DirectBackprop())[0]
        model.k -= 2 * eps
        down = _event_loss(model, y0, hn.DirectBackprop())[0]
        model.k += eps
    # as for the plain gradients above: solve error ~1e-11 over 2e-6 (measured 1.5e-9); the event times'
    # own error is of the same size
    torch.testing.assert_close(grads[0], torch.stack(fd_y), rtol=0, atol=1e-6)
    assert float(grads[1]) == pytest.approx(float((up - down) / (2 * eps)), abs=1e-6)


def test_per_sample_event_adjoint_backwards_matches_direct():
    model = _Spring()
    y0 = torch.tensor([[1.0, 0.0], [0.9, 0.1]], dtype=F64)
    grads = {}
    for interface in (hn.odeint, hn.odeint_adjoint):
        y = y0.clone().requires_grad_()
        extra = {"adjoint_params": tuple(model.parameters())} if interface is hn.odeint_adjoint else {}
        t_event, ys = hn.odeint_event(
            model,
            y,
            torch.tensor(3.0, dtype=F64),
            event_fn=lambda t, y: y[..., 0] - 0.5,
            reverse_time=True,
            per_sample=True,
            odeint_interface=interface,
            rtol=1e-11,
            atol=1e-11,
            **extra,
        )
        grads[interface] = torch.autograd.grad(t_event.sum() + ys[-1].sum(), [y, model.k])
    for direct, adjoint in zip(grads[hn.odeint], grads[hn.odeint_adjoint]):
        torch.testing.assert_close(adjoint, direct, rtol=0, atol=1e-8)  # two solves at 1e-11 (measured 7e-12)


def test_scipy_lsoda_stall_backwards_names_the_users_time():
    # LSODA's step underflows to 0 at the blow-up of 1 / (1 + t) (t = -1 backwards) and then stalls; its
    # own stopping time, named in the message, is the user's (it was printed in scipy's time, +0.99999)
    with pytest.raises(hn.SolverError, match=r"stopped at t=-0\.99999") as info:
        hn.odeint(
            lambda t, y: -(y**2),
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, -0.5, -2.0], dtype=F64),
            method="scipy_solver",
            options={"solver": "LSODA"},
        )
    assert float(info.value.t) == pytest.approx(-1.0, abs=1e-4)


@pytest.mark.parametrize("method", ["leapfrog", "yoshida4", "yoshida6", "implicit_midpoint", "gl4"])
def test_symmetric_methods_undo_a_backward_solve_to_rounding(method):
    # A symmetric one-step method satisfies Phi_{-h} o Phi_h = id (Hairer, Lubich and Wanner, Geometric
    # Numerical Integration, 2nd ed., V.1): solving the pendulum from 1 back to 0 and then forwards again
    # with the same step returns the start to rounding (100 steps: a few ulp each), not to the method's
    # error (1e-5 for leapfrog here). Symplectic Euler is not symmetric and is left out.
    start = torch.tensor([1.0, 0.3], dtype=F64)
    options = {"step_size": 0.01}
    if method in SYMPLECTIC:

        def pendulum(t, state):
            return state[1], -torch.sin(state[0])

        back = hn.odeint(
            pendulum, (start[:1], start[1:]), torch.tensor([1.0, 0.0], dtype=F64), method=method, options=options
        )
        again = hn.odeint(
            pendulum, (back[0][-1], back[1][-1]), torch.tensor([0.0, 1.0], dtype=F64), method=method, options=options
        )
        end = torch.cat([again[0][-1], again[1][-1]])
    else:

        def pendulum(t, y):
            return torch.stack([y[1], -torch.sin(y[0])])

        back = hn.odeint(pendulum, start, torch.tensor([1.0, 0.0], dtype=F64), method=method, options=options)
        end = hn.odeint(pendulum, back[-1], torch.tensor([0.0, 1.0], dtype=F64), method=method, options=options)[-1]
    torch.testing.assert_close(end, start, rtol=0, atol=1e-13)
