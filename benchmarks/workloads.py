"""The benchmark workloads (mlp-fwd, mlp-train, conv-odenet, cnf-2d, memory-vs-steps).

Each gives its dynamics, initial states, losses and tolerances.

Every framework gets the same weights (built from one numpy seed), the same initial state and the same
tolerances. The dynamics accept a scalar time (torchdiffeq, hybrid_node) and a per-sample time vector
(torchode), and count their evaluations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def _linear(rng: np.random.Generator, n_in: int, n_out: int, gain: float = 1.0) -> nn.Linear:
    """A linear layer with PyTorch's default uniform initialisation, drawn from ``rng``."""
    layer = nn.Linear(n_in, n_out)
    bound = 1.0 / np.sqrt(n_in)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.uniform(-bound, bound, (n_out, n_in)) * gain))
        layer.bias.copy_(torch.from_numpy(rng.uniform(-bound, bound, n_out)))
    return layer


class Counted(nn.Module):
    """Base of the benchmark fields: counts evaluations in ``nfe``."""

    def __init__(self):
        super().__init__()
        self.nfe = 0


class MLPField(Counted):
    """Autonomous tanh MLP dy/dt = net(y) (mlp-fwd, mlp-train, memory-vs-steps)."""

    def __init__(self, rng: np.random.Generator, width: int = 64, gain: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(
            _linear(rng, 2, width, gain),
            nn.Tanh(),
            _linear(rng, width, width, gain),
            nn.Tanh(),
            _linear(rng, width, 2, gain),
        )

    def forward(self, t, y):
        self.nfe += 1
        return self.net(y)


def _time_column(t: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A (batch, 1) column of times from a scalar time or a per-sample time vector."""
    t = t.to(like.dtype)
    return t.reshape(-1, 1).expand(batch, 1) if t.dim() else t.reshape(1, 1).expand(batch, 1)


class CNFField(Counted):
    """FFJORD-style 2-D CNF on the state [z, delta_logp] (shape (B, 3)) with the exact Jacobian trace.

    d z/dt = g(t, z) with g an MLP 3->64->64->64->2 (tanh) on [t, z]; d delta/dt = -tr(dg/dz).
    Reference: Grathwohl et al., "FFJORD", ICLR 2019 (exact trace for low dimensions).
    """

    def __init__(self, rng: np.random.Generator, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            _linear(rng, 3, width),
            nn.Tanh(),
            _linear(rng, width, width),
            nn.Tanh(),
            _linear(rng, width, width),
            nn.Tanh(),
            _linear(rng, width, 2),
        )

    def forward(self, t, y):
        self.nfe += 1
        with torch.enable_grad():
            if not y.requires_grad:
                y = y.detach().requires_grad_(True)
            z = y[:, :2]
            dz = self.net(torch.cat([_time_column(t, y.shape[0], y), z], dim=1))
            trace = 0.0
            for i in range(2):
                trace = trace + torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i]
        return torch.cat([dz, -trace.unsqueeze(1)], dim=1)


class _ConcatConv(nn.Module):
    """3x3 convolution over [t, x] (a constant time channel), as in the ODE-Net MNIST block."""

    def __init__(self, rng: np.random.Generator, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels + 1, channels, 3, padding=1)
        fan_in = (channels + 1) * 9
        bound = 1.0 / np.sqrt(fan_in)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(rng.uniform(-bound, bound, tuple(self.conv.weight.shape))))
            self.conv.bias.copy_(torch.from_numpy(rng.uniform(-bound, bound, channels)))

    def forward(self, t, x):
        tt = torch.ones_like(x[:, :1]) * t.reshape(-1)[0].to(x.dtype)
        return self.conv(torch.cat([tt, x], dim=1))


class ConvField(Counted):
    """The MNIST ODE-Net block: GroupNorm-ReLU-ConcatConv-GroupNorm-ReLU-ConcatConv-GroupNorm.

    Reference: Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018 (Section 7.1).
    ``shape`` is the state's shape; a flat (1, N) state (torchode) is reshaped to it.
    """

    def __init__(self, rng: np.random.Generator, shape=(128, 64, 7, 7)):
        super().__init__()
        c = shape[1]
        self.shape = tuple(shape)
        self.norm1, self.norm2, self.norm3 = (nn.GroupNorm(min(32, c), c) for _ in range(3))
        self.conv1 = _ConcatConv(rng, c)
        self.conv2 = _ConcatConv(rng, c)

    def forward(self, t, y):
        self.nfe += 1
        x = y.reshape(self.shape)
        out = self.conv1(t, torch.relu(self.norm1(x)))
        out = self.conv2(t, torch.relu(self.norm2(out)))
        return self.norm3(out).reshape(y.shape)


@dataclasses.dataclass
class Workload:
    """One benchmark problem.

    Attributes:
        name: workload name; field: the dynamics; y0: initial state; t: output times; rtol, atol.
        loss: ``loss(ys) -> scalar`` (None: forward only); mode: "fwd", "direct" or "adjoint".
        per_sample_ok: torchode may treat the leading dimension as independent samples.
        method: the solver; step_size: for fixed-step workloads.
    """

    name: str
    field: Counted
    y0: torch.Tensor
    t: torch.Tensor
    rtol: float
    atol: float
    mode: str
    loss: Callable | None = None
    per_sample_ok: bool = True
    method: str = "dopri5"
    step_size: float | None = None


def mlp_problem(
    seed: int = 0, batch: int = 512, gain: float = 1.0, t_end: float = 5.0, device="cpu", dtype=torch.float32
):
    """The mlp field, y0 ~ N(0, 1) of shape (batch, 2), 50 times on [0, t_end] and fixed MSE targets."""
    rng = np.random.default_rng(seed)
    field = MLPField(rng, gain=gain).to(device, dtype)
    y0 = torch.from_numpy(rng.standard_normal((batch, 2))).to(device, dtype)
    t = torch.linspace(0, t_end, 50, device=device, dtype=dtype)
    target = torch.from_numpy(rng.standard_normal((50, batch, 2)) * 0.5).to(device, dtype)
    return field, y0, t, target


def make(name: str, device="cpu", batch: int | None = None) -> Workload:
    """Build the workload ``name`` (see :data:`WORKLOADS`) on ``device``."""
    if name.startswith("mlp"):
        hard = name.startswith("mlp-hard")
        field, y0, t, target = mlp_problem(
            batch=batch or 512, gain=2.5 if hard else 1.0, t_end=20.0 if hard else 5.0, device=device
        )
        mode = name.split("-")[-1]
        loss = None if mode == "fwd" else (lambda ys: (ys - target).pow(2).mean())
        return Workload(name, field, y0, t, 1e-5, 1e-6, mode, loss)
    if name.startswith("conv"):
        rng = np.random.default_rng(1)
        shape = (batch or 128, 64, 7, 7)
        field = ConvField(rng, shape).to(device)
        y0 = torch.from_numpy(rng.standard_normal(shape)).float().to(device)
        target = torch.from_numpy(rng.standard_normal(shape)).float().to(device)
        mode = name.split("-")[-1]
        loss = None if mode == "fwd" else (lambda ys: (ys[-1] - target).pow(2).mean())
        return Workload(
            name, field, y0, torch.tensor([0.0, 1.0], device=device), 1e-3, 1e-3, mode, loss, per_sample_ok=False
        )
    if name.startswith("cnf"):
        rng = np.random.default_rng(2)
        b = batch or 1024
        field = CNFField(rng).to(device)
        # data: a rotated anisotropic Gaussian (a fixed toy density); delta_logp starts at 0
        x = rng.standard_normal((b, 2)) * np.array([1.5, 0.4])
        c, s = np.cos(0.6), np.sin(0.6)
        x = x @ np.array([[c, -s], [s, c]])
        y0 = torch.from_numpy(np.concatenate([x, np.zeros((b, 1))], axis=1)).float().to(device)

        def nll(ys):
            z1, delta = ys[-1][:, :2], ys[-1][:, 2]
            logp_z = -0.5 * z1.pow(2).sum(1) - np.log(2 * np.pi)
            return -(logp_z - delta).mean()

        return Workload(name, field, y0, torch.tensor([0.0, 1.0], device=device), 1e-5, 1e-5, name.split("-")[-1], nll)
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


#: workload names in the order of the README table (the "-hard" one is the harder mlp setting)
WORKLOADS = (
    "mlp-fwd",
    "mlp-hard-fwd",
    "mlp-train-direct",
    "mlp-train-adjoint",
    "conv-fwd",
    "conv-direct",
    "conv-adjoint",
    "cnf-direct",
    "cnf-adjoint",
)
