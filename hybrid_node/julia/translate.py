"""How a torch vector field reaches Julia: an MLP translated to data (native path) or callbacks.

Native path: an ``nn.Sequential`` of ``nn.Linear`` layers, each optionally followed by one of the
activations below (with torch's default arguments), becomes layer sizes, activation names and the
flat parameter vector in :func:`torch.nn.utils.parameters_to_vector` order. The Julia module
rebuilds each weight as ``W = transpose(reshape(theta[r], in, out))``, which is the row-major
``(out, in)`` torch weight read column-major.

A module takes the native path when it offers ``mlp_spec() -> (sequential, time_input)``, as
:class:`MLPVectorField` does; with ``time_input`` the time is appended as the last input feature.
A subclass of :class:`MLPVectorField` that overrides ``forward`` but keeps the inherited
``mlp_spec`` computes something else and takes the callback path. Forward hooks on the field
itself are kept out of that test on purpose: the native path never calls the module, so a hook
that only observes (counts calls) is fine, and one that changes the output is not honoured.
Every other callable takes the callback path: Julia calls back into torch for ``f``, one
vector-Jacobian product (state and parameter parts together) and, for stiff methods, the Jacobian.
All callbacks exchange flat float64 arrays whose order is that of a torch ``(B, D)`` tensor, which
is also the memory order of the Julia ``(D, B)`` state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

#: torch activation class -> (name sent to Julia, default arguments it must have)
_ACTIVATIONS = {
    nn.Tanh: ("tanh", {}),
    nn.ReLU: ("relu", {}),
    nn.Softplus: ("softplus", {"beta": 1.0, "threshold": 20.0}),
    nn.Sigmoid: ("sigmoid", {}),
    nn.SiLU: ("silu", {}),
    nn.ELU: ("elu", {"alpha": 1.0}),
}
ACTIVATION_NAMES = tuple(name for name, _ in _ACTIVATIONS.values())


class MLPVectorField(nn.Module):
    """The vector field ``f(t, y) = net(y)`` (or ``net([y, t])`` with ``time_input``).

    Both backends accept it; the Julia backend solves it natively (no Python in the loop).

    Args:
        net: ``nn.Sequential`` of ``nn.Linear`` layers, each optionally followed by one of
            Tanh, ReLU, Softplus, Sigmoid, SiLU, ELU (default arguments).
        time_input: append the time as the last input feature of ``net``.
    """

    def __init__(self, net: nn.Sequential, time_input: bool = False):
        super().__init__()
        if not isinstance(net, nn.Sequential):
            raise TypeError(f"net must be an nn.Sequential, got {type(net).__name__}.")
        self.net = net
        self.time_input = bool(time_input)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.time_input:
            tt = torch.as_tensor(t, dtype=y.dtype, device=y.device).expand(*y.shape[:-1], 1)
            y = torch.cat([y, tt], dim=-1)
        return self.net(y)

    def mlp_spec(self) -> tuple[nn.Sequential, bool]:
        return self.net, self.time_input


@dataclasses.dataclass(frozen=True)
class MLPSpec:
    """An MLP as data for Julia.

    Attributes:
        n_in, n_out: features in and out of each layer.
        has_bias: whether each layer has a bias.
        activations: activation name after each layer ("identity" for none).
        time_input: the time is the last input feature of the first layer.
        params: the parameter tensors, in the order of the flat vector.
    """

    n_in: tuple[int, ...]
    n_out: tuple[int, ...]
    has_bias: tuple[bool, ...]
    activations: tuple[str, ...]
    time_input: bool
    params: tuple[torch.Tensor, ...]

    @property
    def n_state_in(self) -> int:
        return self.n_in[0] - int(self.time_input)

    def ranges(self):
        """Yield ``(weight_slice, bias_slice_or_None)`` of each layer in the flat vector."""
        offset = 0
        for n_in, n_out, bias in zip(self.n_in, self.n_out, self.has_bias):
            w = slice(offset, offset + n_in * n_out)
            offset += n_in * n_out
            b = None
            if bias:
                b = slice(offset, offset + n_out)
                offset += n_out
            yield w, b


def _runs_plain_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """Whether ``module`` computes exactly what ``base.forward`` does.

    A subclass that overrides ``forward``, or a forward (pre-)hook, changes the function while the
    layer still looks like a ``base``; Julia would rebuild ``base`` and silently solve another ODE.

    Args:
        module: the layer.
        base: the torch class whose formula Julia rebuilds.

    Returns:
        True when ``type(module).forward`` is ``base.forward`` and no forward hook is registered.
    """
    return type(module).forward is base.forward and not module._forward_hooks and not module._forward_pre_hooks


def _activation_name(module: nn.Module) -> str | None:
    entry = _ACTIVATIONS.get(type(module))
    if entry is None or not _runs_plain_forward(module, type(module)):
        return None
    name, defaults = entry
    for attr, value in defaults.items():
        if float(getattr(module, attr)) != value:
            return None
    return name


def translate_mlp(func) -> tuple[MLPSpec | None, str]:
    """Translate ``func`` for the native path.

    Args:
        func: the vector field.

    Returns:
        ``(spec, "")`` when ``func`` offers ``mlp_spec()`` and its network is translatable, else
        ``(None, reason)``; the reason says why the callback path is used.
    """
    spec_fn = getattr(func, "mlp_spec", None)
    if not callable(spec_fn):
        return None, f"{type(func).__name__} has no mlp_spec()"
    if (
        isinstance(func, MLPVectorField)
        and type(func).mlp_spec is MLPVectorField.mlp_spec
        and type(func).forward is not MLPVectorField.forward
    ):
        # the inherited mlp_spec() describes MLPVectorField.forward, not the subclass's formula
        return None, f"{type(func).__name__} overrides MLPVectorField.forward but not mlp_spec()"
    net, time_input = spec_fn()
    if not isinstance(net, nn.Sequential):
        return None, "mlp_spec() did not return an nn.Sequential"
    if not _runs_plain_forward(net, nn.Sequential):
        return None, f"{type(net).__name__} overrides Sequential.forward or has a forward hook"
    n_in, n_out, has_bias, acts, params = [], [], [], [], []
    for module in net:
        if isinstance(module, nn.Linear):
            if not _runs_plain_forward(module, nn.Linear):
                return None, f"layer {module!r} overrides Linear.forward or has a forward hook"
            n_in.append(module.in_features)
            n_out.append(module.out_features)
            has_bias.append(module.bias is not None)
            acts.append("identity")
            params.append(module.weight)
            if module.bias is not None:
                params.append(module.bias)
            continue
        if isinstance(module, nn.Identity) and _runs_plain_forward(module, nn.Identity):
            continue
        name = _activation_name(module)
        if name is None:
            return None, f"layer {module!r} is not translatable"
        if not acts or acts[-1] != "identity":
            return None, "an activation must follow a Linear layer, one per layer"
        acts[-1] = name
    if not n_in:
        return None, "the network has no Linear layer"
    for k in range(1, len(n_in)):
        if n_in[k] != n_out[k - 1]:
            return None, f"layer {k} takes {n_in[k]} features but receives {n_out[k - 1]}"
    if [id(p) for p in params] != [id(p) for p in net.parameters()]:
        return None, "the network has parameters outside its Linear layers"
    spec = MLPSpec(tuple(n_in), tuple(n_out), tuple(has_bias), tuple(acts), bool(time_input), tuple(params))
    if spec.n_out[-1] != spec.n_state_in:
        return None, f"the network maps {spec.n_state_in} state features to {spec.n_out[-1]}"
    return spec, ""


@dataclasses.dataclass(frozen=True)
class CallbackProblem:
    """Python callables Julia calls on flat float64 arrays (torch ``(B, D)`` memory order).

    Attributes:
        f: ``f(u, t) -> du`` (length N).
        vjp: ``vjp(lam, u, t) -> [lam^T df/du, lam^T df/dtheta]`` (length N + P).
        jac: ``jac(u, t) -> df/du`` as a length N*N array in column-major order.
        n_state: N.
        n_params: P (at least 1; a dummy zero parameter stands in for none).
    """

    f: Callable
    vjp: Callable
    jac: Callable
    n_state: int
    n_params: int


def make_callbacks(
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    state_shape: tuple[int, int],
    params: Sequence[torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
) -> CallbackProblem:
    """Build the callbacks for ``field(t, y)`` acting on a ``(B, D)`` state.

    Args:
        field: the vector field on the ``(B, D)`` layout, returning ``(B, D)``.
        state_shape: ``(B, D)``.
        params: tensors whose gradient the parameter part of the VJP returns, in order.
        dtype, device: where torch evaluates the field.

    Returns:
        A :class:`CallbackProblem`.
    """
    B, D = state_shape
    n_state = B * D
    sizes = [p.numel() for p in params]
    n_params = max(1, sum(sizes))
    trainable = [i for i, p in enumerate(params) if p.requires_grad]

    def tensor(x) -> torch.Tensor:
        return torch.tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device)

    def to_numpy(x: torch.Tensor) -> np.ndarray:
        return x.detach().to("cpu", torch.float64).reshape(-1).numpy()

    def time(t) -> torch.Tensor:
        return torch.tensor(float(t), dtype=dtype, device=device)

    def f(u, t):
        with torch.no_grad():
            return to_numpy(field(time(t), tensor(u).reshape(B, D)))

    def vjp(lam, u, t):
        with torch.enable_grad():
            y = tensor(u).reshape(B, D).requires_grad_(True)
            out = field(time(t), y)
            inputs = [y] + [params[i] for i in trainable]
            grads = torch.autograd.grad(out, inputs, tensor(lam).reshape(B, D), allow_unused=True)
        g_state = grads[0] if grads[0] is not None else torch.zeros_like(y)
        g_params = [torch.zeros(s, dtype=torch.float64) for s in sizes] or [torch.zeros(1, dtype=torch.float64)]
        for i, g in zip(trainable, grads[1:]):
            if g is not None:
                g_params[i] = g.detach().to("cpu", torch.float64).reshape(-1)
        return np.concatenate([to_numpy(g_state), torch.cat(g_params).numpy()])

    def jac(u, t):
        tt = time(t)
        with torch.enable_grad():
            J = torch.autograd.functional.jacobian(lambda v: field(tt, v.reshape(B, D)).reshape(-1), tensor(u))
        # J[i, j] = d f_i / d u_j; Julia reads the flat array column-major.
        return J.detach().to("cpu", torch.float64).t().contiguous().reshape(-1).numpy()

    return CallbackProblem(f=f, vjp=vjp, jac=jac, n_state=n_state, n_params=n_params)
