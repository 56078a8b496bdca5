"""``extra_solver_state`` and ``extra=True`` in sdeint_adjoint, against torchsde on the same Brownian path.

A reversible Heun solve continued from a previous solve's extra state (f, z's drift and diffusion, z)
must give torchsde's states and gradients, and, through the reversible adjoint, the gradients of direct
backprop through the same steps (both are the derivative of one discrete solve, so they agree to rounding).
The other methods have an empty extra state: () or None is accepted, as torchsde does, and the stochastic
adjoint gives the extra state's tensors no gradient, as torchsde's neither.

Each test failed before sdeint_adjoint took an extra state (it refused any).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import hybrid_node as hn

torchsde = pytest.importorskip("torchsde")

pytestmark = pytest.mark.usefixtures("one_thread")

DT = 1 / 16  # divides the output intervals: torchsde's reversible adjoint is exact only on its step grid
FIRST = [0.0, 0.25, 0.5]
SECOND = [0.5, 0.75, 1.0]
# ~16 steps of float64 arithmetic on states and gradients of size <= 10, grouped differently in the two
# libraries: 4e-15 was measured, so 1e-12 leaves room and still catches any real difference (the
# stochastic adjoint is 1e-5 to 1e-3 away from these gradients at this dt).
TOL = 1e-12


class Field(torch.nn.Module):
    """A nonlinear Stratonovich SDE with a prior drift (d = 3; m = 2 for general noise)."""

    def __init__(self, noise_type: str, d: int = 3, m: int = 2):
        super().__init__()
        self.noise_type, self.sde_type = noise_type, "stratonovich"
        self.m = d if noise_type == "diagonal" else m
        gen = torch.Generator().manual_seed(1)
        self.a = torch.nn.Parameter(0.5 * torch.randn(d, d, generator=gen, dtype=torch.float64))
        self.b = torch.nn.Parameter(0.3 * torch.randn(d, self.m, generator=gen, dtype=torch.float64))
        self.c = torch.nn.Parameter(0.3 * torch.randn(d, generator=gen, dtype=torch.float64))

    def f(self, t, y):
        return torch.tanh(y @ self.a) * torch.cos(torch.as_tensor(t, dtype=y.dtype)) - 0.1 * y

    def g(self, t, y):
        if self.noise_type == "diagonal":
            return torch.sigmoid(self.c * y) + 0.1
        if self.noise_type == "additive":
            return self.b.expand(y.shape[0], *self.b.shape)
        return torch.tanh(y).unsqueeze(-1) * self.b + 0.1

    def h(self, t, y):
        return -y


def _bm(sde: Field) -> torchsde.BrownianInterval:
    # a fresh interval from the same entropy for every call: the same path whatever the query order
    return torchsde.BrownianInterval(
        0.0, 1.0, (2, sde.m), dtype=torch.float64, levy_area_approximation="space-time", entropy=3, tol=1e-10
    )


def _y0() -> torch.Tensor:
    return torch.linspace(-0.5, 0.7, 6, dtype=torch.float64).view(2, 3).requires_grad_()


def _call(lib, fn: str, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's warnings about its reversible adjoint's limits
        return getattr(lib, fn)(*args, **kw)


def _flat(grads, inputs) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(x) if g is None else g).flatten() for g, x in zip(grads, inputs)])


def _continued(lib, fn: str, sde: Field):
    """Two reversible Heun solves, the second from the first's final state and extra state.

    The loss reads both solves' states and the second's final extra state, so the gradients pass back
    through the second solve's extra-state input into the first solve, and from its extra-state output.

    Returns:
        (the second solve's states, its final extra state, the gradients to y0 and the parameters, flat).
    """
    params = list(sde.parameters())
    y0 = _y0()
    kw = dict(method="reversible_heun", dt=DT, extra=True)
    ys1, state = _call(lib, fn, sde, y0, torch.tensor(FIRST, dtype=torch.float64), bm=_bm(sde), **kw)
    ys2, state2 = _call(
        lib, fn, sde, ys1[-1], torch.tensor(SECOND, dtype=torch.float64), bm=_bm(sde), extra_solver_state=state, **kw
    )
    loss = (ys1**2).sum() + (ys2**2).sum() + (state2[0] ** 2).sum() + state2[2].sum()
    grads = torch.autograd.grad(loss, [y0, *params], allow_unused=True)
    return ys2.detach(), [x.detach() for x in state2], _flat(grads, [y0, *params])


@pytest.mark.parametrize("noise", ["general", "diagonal", "additive"])
def test_a_continued_solve_matches_torchsde_and_direct_backprop(noise):
    sde = Field(noise)
    theirs = _continued(torchsde, "sdeint_adjoint", sde)
    ours = _continued(hn, "sdeint_adjoint", sde)
    direct = _continued(hn, "sdeint", sde)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=TOL)
    for a, b in zip(ours[1], theirs[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    assert theirs[2].abs().max() > 1.0  # gradients of size ~1-10, so TOL is a relative bound too
    torch.testing.assert_close(ours[2], theirs[2], rtol=0, atol=TOL)
    torch.testing.assert_close(ours[2], direct[2], rtol=0, atol=TOL)


def _given_start(sde: Field):
    """y0 and an extra state (f0, g0, z0) of its own, as leaves: f0 and g0 are not the fields at z0.

    So a gradient sent through f and g at z0 (instead of to f0 and g0) would show.
    """
    y0 = _y0().detach()
    with torch.no_grad():
        z0 = y0 - 0.2
        f0, g0 = 1.3 * sde.f(0.5, z0 + 0.1), 0.7 * sde.g(0.5, z0 + 0.1)
    return [x.clone().requires_grad_() for x in (y0, f0, g0, z0)]


def _from_given_start(lib, fn: str, sde: Field, logqp: bool = False):
    leaves = _given_start(sde)
    y0, start = leaves[0], tuple(leaves[1:])
    ts = torch.tensor(SECOND, dtype=torch.float64)
    out = _call(
        lib, fn, sde, y0, ts, bm=_bm(sde), method="reversible_heun", dt=DT, extra_solver_state=start, logqp=logqp
    )
    ys, log_ratio = out if logqp else (out, None)
    loss = (ys**2).sum()
    if log_ratio is not None:
        loss = loss + (log_ratio * torch.tensor([[1.0], [2.0]], dtype=torch.float64)).sum()
    inputs = [*leaves, *sde.parameters()]
    return ys.detach(), _flat(torch.autograd.grad(loss, inputs, allow_unused=True), inputs)


def test_gradients_reach_a_given_extra_state_as_in_torchsde():
    # torchsde's adjoint of reversible Heun returns gradients to the extra state's tensors (f0, g0, z0)
    sde = Field("general")
    theirs = _from_given_start(torchsde, "sdeint_adjoint", sde)
    ours = _from_given_start(hn, "sdeint_adjoint", sde)
    direct = _from_given_start(hn, "sdeint", sde)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=TOL)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=TOL)
    torch.testing.assert_close(ours[1], direct[1], rtol=0, atol=TOL)


def test_the_kl_integral_from_a_given_extra_state_has_exact_gradients():
    # The KL rate at z0 is taken from the given f0, g0 and the prior drift at z0: its gradient goes to
    # all three. torchsde keeps the KL term in an augmented state, with an extra state of another layout,
    # so the reference is backprop through our own solve. Gradients are ~100 here; 1e-13 was measured.
    sde = Field("general")
    ours = _from_given_start(hn, "sdeint_adjoint", sde, logqp=True)
    direct = _from_given_start(hn, "sdeint", sde, logqp=True)
    torch.testing.assert_close(ours[1], direct[1], rtol=1e-12, atol=TOL)


@pytest.mark.parametrize(
    "method,adjoint_method,start",
    [
        ("midpoint", None, ()),
        ("euler_heun", "midpoint", ()),
        ("reversible_heun", "midpoint", "init"),
    ],
)
def test_the_stochastic_adjoint_starts_from_the_extra_state_and_gives_it_no_gradient(method, adjoint_method, start):
    # The forward states equal torchsde's; the gradients to y0 and the parameters equal those of the same
    # solve without an extra state (the stochastic adjoint does not read it), and the extra state's tensors
    # get none in both libraries.
    sde = Field("general")
    params = list(sde.parameters())
    kw = dict(method=method, adjoint_method=adjoint_method, dt=DT, extra=True)
    ts = torch.tensor(SECOND, dtype=torch.float64)
    results = []
    for lib, given in ((torchsde, True), (hn, True), (hn, False)):
        y0 = _y0()
        state = start
        if start == "init":  # reversible Heun's own start state, as leaves
            with torch.no_grad():
                state = tuple(x.clone().requires_grad_() for x in (sde.f(0.5, y0), sde.g(0.5, y0), y0))
        ys, final = _call(
            lib, "sdeint_adjoint", sde, y0, ts, bm=_bm(sde), extra_solver_state=state if given else None, **kw
        )
        leaves = list(state) if isinstance(state, tuple) else []
        grads = torch.autograd.grad((ys**2).sum(), [y0, *params, *leaves], allow_unused=True)
        results.append((ys.detach(), len(final), grads[: 1 + len(params)], grads[1 + len(params) :]))
    (ys_t, n_t, g_t, s_t), (ys_h, n_h, g_h, s_h), (_, _, g_plain, _) = results
    torch.testing.assert_close(ys_h, ys_t, rtol=0, atol=TOL)
    assert n_h == n_t == (3 if method == "reversible_heun" else 0)
    assert all(g is None for g in s_t) and all(g is None for g in s_h)
    torch.testing.assert_close(_flat(g_h, [_y0(), *params]), _flat(g_plain, [_y0(), *params]), rtol=0, atol=TOL)


@pytest.mark.parametrize(
    "method,state",
    [("reversible_heun", "y0 only"), ("reversible_heun", ()), ("midpoint", "y0 only"), ("euler_heun", "tensor")],
)
def test_bad_layouts_are_refused_as_in_sdeint(method, state):
    sde = Field("general")
    y0 = _y0().detach()
    bad = {"y0 only": (y0,), "tensor": y0}.get(state, state)
    for fn in (hn.sdeint, hn.sdeint_adjoint):
        with pytest.raises(ValueError, match="extra_solver_state for method .* must be a tuple of tensors"):
            fn(sde, y0, SECOND, bm=_bm(sde), method=method, dt=DT, extra_solver_state=bad)


def test_a_single_output_time_returns_the_given_extra_state():
    # no step is taken: the extra state at ts[0] is the one given (sdeint's and torchsde's answer)
    sde = Field("general")
    y0 = _y0().detach()
    state = tuple(
        x.detach() for x in hn.sdeint(sde, y0, FIRST, bm=_bm(sde), method="reversible_heun", dt=DT, extra=True)[1]
    )
    ys, back = hn.sdeint_adjoint(
        sde, y0, [0.5], bm=_bm(sde), method="reversible_heun", dt=DT, extra=True, extra_solver_state=state
    )
    assert all(a is b for a, b in zip(back, state)) and len(back) == 3
    torch.testing.assert_close(ys[0], y0)
