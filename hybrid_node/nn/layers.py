"""Layers for time-dependent dynamics ``f(t, y)``: time enters as one extra input feature or channel.

Concatenating ``t`` to the input is the simplest way to make a vector field non-autonomous and is
what the convolutional ODE-Net of Chen et al. (2018) uses in every convolution of its ODE block.

Reference: Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations",
NeurIPS 2018, Section 3 and the MNIST ODE-Net.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from ._checks import positive_int


def _time_like(t: torch.Tensor | float, x: torch.Tensor, shape: tuple) -> torch.Tensor:
    """The time ``t`` as a tensor of ``shape`` (the extra input feature or channel of a batch ``x``).

    Args:
        t: a scalar time, or one time per sample, shape (batch,), when ``shape`` starts with that
            batch size: per-sample step control (``options={"per_sample": True}``) calls the field
            with each sample's own time.
        x: the input (gives the dtype and device).
        shape: the shape of the time input, batch first.

    Returns:
        ``t`` broadcast to ``shape`` (row ``b`` holds ``t[b]`` for per-sample times).

    Raises:
        ValueError: ``t`` is neither a scalar nor of shape (batch,).
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.numel() == 1:
        return t.reshape(()).expand(shape)
    if t.dim() == 1 and len(shape) >= 2 and t.shape[0] == shape[0]:
        return t.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
    batch = f" or one time per sample, shape ({shape[0]},)" if len(shape) >= 2 else ""
    raise ValueError(f"t must be a scalar time{batch}, got shape {tuple(t.shape)}.")


class TimeLinear(nn.Module):
    """``Linear`` on ``[t, x]``: an affine map whose input has the time as one extra feature.

    Args:
        in_features: features of ``x`` (the time feature is added on top).
        out_features: output features.
        bias: whether to learn an additive bias.

    Raises:
        TypeError, ValueError: ``in_features`` or ``out_features`` is not a positive int.

    Forward:
        ``layer(t, x)`` with a scalar ``t`` (or one time per sample, shape (B,), for ``x`` of shape
        (B, ..., in_features)) and ``x`` of shape (..., in_features) returns (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        positive_int("in_features", in_features)
        positive_int("out_features", out_features)
        self.in_features = in_features
        self.linear = nn.Linear(in_features + 1, out_features, bias=bias)

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"TimeLinear expects x of shape (..., {self.in_features}) (the time feature is added inside), "
                f"got {tuple(x.shape)}."
            )
        tt = _time_like(t, x, (*x.shape[:-1], 1))
        return self.linear(torch.cat([tt, x], dim=-1))


class TimeConv2d(nn.Module):
    """``Conv2d`` on ``[t, x]``: the time is added as one constant input channel.

    Args:
        in_channels: channels of ``x`` (the time channel is added on top).
        out_channels: output channels.
        kernel_size, stride, padding, dilation, groups, bias: as for :class:`torch.nn.Conv2d`
            (``groups`` must divide ``in_channels + 1``).

    Raises:
        TypeError, ValueError: ``in_channels`` or ``out_channels`` is not a positive int.

    Forward:
        ``layer(t, x)`` with a scalar ``t`` (or one time per sample, shape (N,)) and ``x`` of shape
        (N, C, H, W) returns (N, out_channels, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        positive_int("in_channels", in_channels)
        positive_int("out_channels", out_channels)
        # torch's own errors came late (kernel 0 at the first forward) or not at all (stride 0, padding -1);
        # a tuple (one size per spatial dimension) is left to nn.Conv2d
        for name, value, minimum in (
            ("kernel_size", kernel_size, 1),
            ("stride", stride, 1),
            ("padding", padding, 0),
            ("dilation", dilation, 1),
        ):
            if not isinstance(value, tuple):
                positive_int(name, value, minimum)
        positive_int("groups", groups)
        if (in_channels + 1) % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide out_channels ({out_channels}) and in_channels + 1 ({in_channels + 1}: "
                "the input channels and the time channel added in front of them)."
            )
        self.conv = nn.Conv2d(
            in_channels + 1,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"TimeConv2d expects x of shape (N, C, H, W), got {tuple(x.shape)}.")
        tt = _time_like(t, x, (x.shape[0], 1, x.shape[2], x.shape[3]))
        return self.conv(torch.cat([tt, x], dim=1))


class MLPDynamics(nn.Module):
    """A multilayer perceptron vector field ``f(t, y)`` with the time fed to every layer.

    Args:
        dim: state dimension (input and output features).
        hidden: width of each hidden layer.
        layers: number of hidden layers (>= 1).
        activation: module applied after each hidden layer (a fresh copy per layer).
        time_dependent: feed ``t`` into every layer (:class:`TimeLinear`); if False the field is autonomous.

    Raises:
        TypeError, ValueError: ``dim``, ``hidden`` or ``layers`` is not a positive int, or
            ``activation`` is not a module instance.

    Forward:
        ``field(t, y)`` with a scalar ``t``, or one time per sample of shape (B,) for ``y`` of shape
        (B, ..., dim) (per-sample step control), returns a tensor shaped like ``y``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 32,
        layers: int = 1,
        activation: nn.Module | None = None,
        time_dependent: bool = True,
    ):
        super().__init__()
        positive_int("dim", dim)
        positive_int("hidden", hidden)
        positive_int("layers", layers)
        if activation is not None and not isinstance(activation, nn.Module):
            raise TypeError(f"activation must be an nn.Module instance such as nn.Tanh(), got {activation!r}.")
        act = activation if activation is not None else nn.ReLU()
        self.dim = dim
        sizes = [dim] + [hidden] * layers + [dim]
        make = TimeLinear if time_dependent else nn.Linear
        self.time_dependent = time_dependent
        self.linears = nn.ModuleList(make(a, b) for a, b in itertools.pairwise(sizes))
        self.activations = nn.ModuleList(_copy(act) for _ in range(layers))

    def forward(self, t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        h = y
        for i, lin in enumerate(self.linears):
            h = lin(t, h) if self.time_dependent else lin(h)
            if i < len(self.activations):
                h = self.activations[i](h)
        return h


class ConvDynamics(nn.Module):
    """The ODE-Net vector field: GroupNorm, ReLU, time-conv 3x3, GroupNorm, ReLU, time-conv 3x3, GroupNorm.

    Args:
        channels: channels of the state (N, channels, H, W).
        groups: GroupNorm groups (``min(32, channels)`` if None; must divide ``channels``).

    Raises:
        TypeError, ValueError: ``channels`` or ``groups`` is not a positive int, or ``groups`` does not
            divide ``channels``.

    Reference: the MNIST ODE-Net of Chen et al. (2018), a pre-activation residual block
    (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016) turned into a vector field.
    """

    def __init__(self, channels: int, groups: int | None = None):
        super().__init__()
        positive_int("channels", channels)
        groups = min(32, channels) if groups is None else positive_int("groups", groups)
        if channels % groups:
            raise ValueError(f"groups ({groups}) must divide channels ({channels}).")
        self.channels = channels
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = TimeConv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = TimeConv2d(channels, channels, 3, padding=1)
        self.norm3 = nn.GroupNorm(groups, channels)

    def forward(self, t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        """The field at (t, y).

        Args:
            t: the time, a scalar (tensor or float).
            y: the state, shape (N, channels, H, W).

        Returns:
            The field, shaped like ``y``.

        Raises:
            ValueError: ``y`` is not (N, channels, H, W); checked here because GroupNorm's own message
                names neither the field nor the expected shape (e.g. for an unbatched (C, H, W) image).
        """
        if y.dim() != 4 or y.shape[1] != self.channels:
            raise ValueError(
                f"ConvDynamics({self.channels}) expects y of shape (N, {self.channels}, H, W), got {tuple(y.shape)}"
                + ("; add a batch dimension with y.unsqueeze(0)." if y.dim() == 3 else ".")
            )
        h = self.conv1(t, torch.relu(self.norm1(y)))
        h = self.conv2(t, torch.relu(self.norm2(h)))
        return self.norm3(h)


def _copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module)
