"""The reversible solvers and their exact adjoints against independent references.

* ``hn.Reversible``: the McCallum & Foster (2024, arXiv:2410.11648) scheme written out here in numpy
  from its formulas (classic RK4 as the base method), and its gradient against central finite
  differences of that numpy solve (no autograd, no code of the library).
* ``reversible_heun`` (Kidger et al. 2021): step for step against ``diffrax.ReversibleHeun`` (jax,
  float64) on an ODE and on an SDE with the same Brownian increments; its adjoint against torchsde's
  direct backprop and ``adjoint_reversible_heun`` on the same ``BrownianInterval``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hybrid_node as hn

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
RNG = np.random.default_rng(0)
A = RNG.normal(size=(3, 3)) * 0.7  # f(t, y) = tanh(y A) cos(t) + b
B = RNG.normal(size=3) * 0.3
C = RNG.normal(size=3) * 0.4  # diagonal noise g(t, y) = sin(y) c + 0.5


def _field_np(t: float, y: np.ndarray, a: np.ndarray = A) -> np.ndarray:
    return np.tanh(y @ a) * np.cos(t) + B


def _rk4_increment(t: float, x: np.ndarray, h: float, a: np.ndarray) -> np.ndarray:
    k1 = _field_np(t, x, a)
    k2 = _field_np(t + h / 2, x + h / 2 * k1, a)
    k3 = _field_np(t + h / 2, x + h / 2 * k2, a)
    k4 = _field_np(t + h, x + h * k3, a)
    return h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def _mccallum_foster(y0: np.ndarray, h: float, n: int, lam: float, a: np.ndarray = A) -> np.ndarray:
    """The paper's scheme: y' = lam y + (1 - lam) z + Psi_h(t, z), z' = z - Psi_{-h}(t + h, y')."""
    y, z, t = y0.copy(), y0.copy(), 0.0
    for _ in range(n):
        y = lam * y + (1 - lam) * z + _rk4_increment(t, z, h, a)
        z = z - _rk4_increment(t + h, y, -h, a)
        t += h
    return y


class _Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(A))

    def forward(self, t, y):
        return torch.tanh(y @ self.a) * torch.cos(t) + torch.tensor(B)


@pytest.mark.parametrize("coupling", [0.999, 0.7, 1.0])
def test_reversible_rk4_matches_the_papers_scheme_written_out_in_numpy(coupling):
    y0 = RNG.normal(size=(4, 3))
    h, n = 0.05, 40
    ys = hn.solve(
        _Field(),
        torch.tensor(y0),
        torch.tensor([0.0, h * n], dtype=F64),
        solver=hn.Reversible(hn.RK4Classic(), coupling=coupling),
        controller=hn.ConstantStepSize(step_size=h),
    ).ys
    # the same arithmetic in another order: rounding only (|y| ~ 1, 40 steps; measured 4e-16)
    np.testing.assert_allclose(ys[-1].detach().numpy(), _mccallum_foster(y0, h, n, coupling), rtol=0, atol=1e-13)


def test_reversible_adjoint_matches_finite_differences_of_the_numpy_scheme():
    y0 = RNG.normal(size=(2, 3))
    h, n, lam = 0.05, 20, 0.999
    field = _Field()
    y0_t = torch.tensor(y0, requires_grad=True)
    sol = hn.solve(
        field,
        y0_t,
        torch.tensor([0.0, h * n], dtype=F64),
        solver=hn.Reversible(hn.RK4Classic(), coupling=lam),
        controller=hn.ConstantStepSize(step_size=h),
        sensitivity=hn.ReversibleAdjoint(),
    )
    grad_y0, grad_a = torch.autograd.grad((sol.ys[-1] ** 2).sum(), (y0_t, field.a))

    def loss(y0_, a_):
        return float((_mccallum_foster(y0_, h, n, lam, a_) ** 2).sum())

    eps = 1e-6
    fd_y0 = np.zeros_like(y0)
    for idx in np.ndindex(*y0.shape):
        e = np.zeros_like(y0)
        e[idx] = eps
        fd_y0[idx] = (loss(y0 + e, A) - loss(y0 - e, A)) / (2 * eps)
    fd_a = np.zeros_like(A)
    for idx in np.ndindex(*A.shape):
        e = np.zeros_like(A)
        e[idx] = eps
        fd_a[idx] = (loss(y0, A + e) - loss(y0, A - e)) / (2 * eps)
    # central differences: truncation eps^2 |f'''| ~ 1e-12 plus rounding 1e-16 / eps ~ 1e-10 (measured 3e-10)
    np.testing.assert_allclose(grad_y0.numpy(), fd_y0, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(grad_a.numpy(), fd_a, rtol=1e-7, atol=1e-8)


@pytest.fixture(scope="module")
def jax_x64():
    pytest.importorskip("diffrax")
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


class _Stratonovich(torch.nn.Module):
    sde_type = "stratonovich"
    noise_type = "diagonal"

    def __init__(self, noise: bool):
        super().__init__()
        self.noise = noise

    def f(self, t, y):
        return torch.tanh(y @ torch.tensor(A)) * torch.cos(t) + torch.tensor(B)

    def g(self, t, y):
        return torch.sin(y) * torch.tensor(C) + 0.5 if self.noise else torch.zeros_like(y)


class _Increments:
    """A Brownian motion given by its increments over the steps (those diffrax's path gave)."""

    levy_area_approximation = "none"
    dtype = F64
    device = torch.device("cpu")

    def __init__(self, increments: dict[tuple[float, float], torch.Tensor]):
        self.increments = increments
        self.shape = next(iter(increments.values())).shape

    def __call__(self, ta, tb=None):
        return self.increments[(float(ta), float(tb))]


@pytest.mark.parametrize("noise", [False, True], ids=["ode", "sde"])
def test_reversible_heun_matches_diffrax_step_for_step(jax_x64, noise):
    import diffrax
    import jax.numpy as jnp

    n, h = 32, 1 / 16
    y0 = RNG.normal(size=3)
    drift = diffrax.ODETerm(lambda t, y, args: jnp.tanh(y @ A) * jnp.cos(t) + B)
    path = diffrax.VirtualBrownianTree(0.0, n * h, tol=1e-6, shape=(3,), key=jax_x64.random.PRNGKey(0))
    diffusion = diffrax.ControlTerm(lambda t, y, args: jnp.diag(jnp.sin(y) * C + 0.5), path)
    ref = diffrax.diffeqsolve(
        diffrax.MultiTerm(drift, diffusion) if noise else drift,
        diffrax.ReversibleHeun(),
        0.0,
        n * h,
        h,
        jnp.asarray(y0),
        saveat=diffrax.SaveAt(steps=True),
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=n,
    )
    grid = np.concatenate([[0.0], np.asarray(ref.ts)[:n]])
    steps = list(zip(grid[:-1].tolist(), grid[1:].tolist()))
    # all increments in one compiled call (one un-compiled evaluate takes seconds); the ODE has none
    increments = (
        jax_x64.jit(jax_x64.vmap(path.evaluate))(jnp.asarray(grid[:-1]), jnp.asarray(grid[1:]))
        if noise
        else np.zeros((n, 3))
    )
    bm = _Increments({s: torch.tensor(np.asarray(dw))[None] for s, dw in zip(steps, increments)})
    ours = hn.sdeint(
        _Stratonovich(noise), torch.tensor(y0)[None], torch.tensor(grid), bm=bm, method="reversible_heun", dt=h
    )
    # every step's state, |y| ~ 3: rounding of 32 steps in two libraries (measured 1e-16 ODE, 1.3e-15 SDE)
    np.testing.assert_allclose(ours[1:, 0].numpy(), np.asarray(ref.ys)[:n], rtol=0, atol=1e-12)


class _NeuralSDE(torch.nn.Module):
    sde_type = "stratonovich"

    def __init__(self, noise_type: str):
        super().__init__()
        torch.manual_seed(1)
        self.noise_type = noise_type
        self.a = torch.nn.Parameter(torch.randn(3, 3, dtype=F64) * 0.5)
        self.b = torch.nn.Parameter(torch.randn(3, dtype=F64) * 0.3)
        self.c = torch.nn.Parameter(torch.randn(3, 2, dtype=F64) * 0.3)

    def f(self, t, y):
        return torch.tanh(y @ self.a) * torch.cos(t) + self.b

    def g(self, t, y):
        if self.noise_type == "diagonal":
            return torch.sin(y + t) * self.c[:, 0] + 0.5
        return torch.tanh(y).unsqueeze(-1) * self.c + 0.1 * t + 0.2


def _torchsde_gradients(solve, sde, y0, ts, **kwargs):
    y = y0.clone().requires_grad_(True)
    ys = solve(sde, y, ts, method="reversible_heun", dt=0.05, **kwargs)
    loss = (ys**2).sum() + ys[-1].sin().sum()
    grads = torch.autograd.grad(loss, (y, *sde.parameters()), allow_unused=True)
    return ys.detach(), torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, (y, *sde.parameters()))]
    )


@pytest.mark.parametrize("noise_type", ["diagonal", "general"])
def test_reversible_heun_adjoint_against_torchsde(noise_type):
    torchsde = pytest.importorskip("torchsde")
    sde = _NeuralSDE(noise_type)
    y0 = torch.randn(4, 3, dtype=F64) * 0.5
    size = (4, 3) if noise_type == "diagonal" else (4, 2)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=size, dtype=F64, entropy=3)
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731

    # several outputs, one between steps: torchsde's direct backprop is the exact discrete gradient
    ts = torch.tensor([0.0, 0.25, 0.33, 1.0], dtype=F64)
    ys_ref, g_ref = _torchsde_gradients(torchsde.sdeint, sde, y0, ts, bm=bm)
    ys, g = _torchsde_gradients(hn.sdeint_adjoint, sde, y0, ts, bm=bm)
    torch.testing.assert_close(ys, ys_ref, rtol=0, atol=1e-13)  # the same steps: rounding (measured 8e-16)
    assert rel(g, g_ref) < 1e-12, rel(g, g_ref)  # rounding of 20 reconstructed steps (measured 3e-16)

    # one output: torchsde's adjoint_reversible_heun is exact too (with several it restarts the adjoint
    # at each output and differs by up to 3.5e-2, docs/reversible.md)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    _, g_adj = _torchsde_gradients(
        torchsde.sdeint_adjoint, sde, y0, ts, bm=bm, adjoint_method="adjoint_reversible_heun"
    )
    _, g = _torchsde_gradients(hn.sdeint_adjoint, sde, y0, ts, bm=bm)
    # torchsde's backward pass reads its increments off the reversed Brownian interval (measured 9e-9)
    assert rel(g, g_adj) < 1e-7, rel(g, g_adj)
