"""Hamiltonian neural networks: learn a scalar energy H_theta(q, p) and integrate its symplectic gradient.

The field is ``dq/dt = dH/dp``, ``dp/dt = -dH/dq`` (``J grad H`` with ``J = [[0, I], [-I, 0]]``), taken
by autograd. It conserves H_theta exactly along its own exact flows and is divergence-free (volume
preserving), whatever the weights: the structure is in the architecture, not learned. A plain
Neural ODE that outputs the derivatives directly has neither property, so its energy drifts in long
rollouts.

References:
    Greydanus, Dzamba, Yosinski, "Hamiltonian Neural Networks", NeurIPS 2019 (arXiv 1906.01563).
    Hairer, Lubich, Wanner, Geometric Numerical Integration, 2nd ed., Section VI.2 (Hamiltonian flows
    are symplectic and preserve H and volume).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._transforms import inside_transform
from ._checks import check_dtype, positive_int

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _mlp(in_dim: int, out_dim: int, hidden: int, layers: int, activation: Callable[[], nn.Module]) -> nn.Sequential:
    """An MLP with ``layers`` hidden layers of width ``hidden`` (smooth activations: H must be twice differentiable).

    Raises:
        TypeError: ``activation`` does not make an nn.Module when called (a string failed with "'str' object is
            not callable", an instance such as nn.Tanh() with "forward() missing 1 required positional argument").
    """
    made = activation() if callable(activation) and not isinstance(activation, nn.Module) else None
    if not isinstance(made, nn.Module):
        raise TypeError(
            f"activation must make an nn.Module when called with no arguments, such as the class nn.Tanh or "
            f"nn.Softplus (not an instance like nn.Tanh(), nor a name), got {activation!r}."
        )
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), activation()]
        width = hidden
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


def _pair(y: tuple | list, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair state ``(q, p)``, each of shape ``(..., dim)``.

    Raises:
        ValueError: ``y`` is not two tensors, or they are not both of shape ``(..., dim)`` (the same shape).
    """
    if len(y) != 2:
        raise ValueError(f"a tuple state must be the pair (q, p), got {len(y)} tensors.")
    q, p = y
    if q.shape[-1:] != (dim,) or p.shape != q.shape:
        raise ValueError(f"q and p must both have shape (..., {dim}), got {tuple(q.shape)} and {tuple(p.shape)}.")
    return q, p


def _checked_state(module: nn.Module, y: State, dim: int) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """The state of ``module``'s field checked: the pair ``(q, p)`` for a pair state, else the tensor.

    Args:
        module: the field (its parameters' dtype is the one the state must have).
        y: a pair ``(q, p)`` of shape ``(..., dim)`` each, or one tensor ending in ``2 * dim`` entries.
        dim: the number of coordinates q.

    Returns:
        ``(q, p)`` as a tuple for a pair state, ``y`` itself otherwise.

    Raises:
        ValueError: a pair state is not two tensors of shape ``(..., dim)``, or a tensor state does not
            end in ``2 * dim`` entries.
        TypeError: the state is not floating-point or not of the parameters' dtype.
    """
    if isinstance(y, (tuple, list)):
        q, p = _pair(y, dim)
        check_dtype(module, q, "q")  # float64 data (numpy's default) met float32 weights deep in the MLP
        return q, p
    check_dtype(module, y, "y")
    if y.shape[-1] != 2 * dim:
        raise ValueError(f"a tensor state must end in 2 * dim = {2 * dim} entries (q then p), got {y.shape}.")
    return y


class HamiltonianNN(nn.Module):
    """A learned Hamiltonian H_theta(q, p) whose ``forward(t, y)`` is the field ``J grad H_theta``.

    The state is either the pair ``(q, p)`` (for the symplectic methods ``leapfrog``, ``yoshida4``...,
    though those are only symplectic for a separable H; ``implicit_midpoint``/``gl4`` are for any H)
    or one tensor whose last dimension holds q then p (for any other solver). The derivatives are taken
    with ``create_graph`` whenever gradients are being recorded, so a loss on the field or on a solve
    trains the weights (double backprop); under ``torch.no_grad()`` they are detached. Under
    ``torch.inference_mode()`` and inside ``torch.func`` transforms (``vmap``, ``jacrev``, ``jacfwd``),
    where ``torch.autograd.grad`` cannot run, they are taken by ``torch.func.grad``.

    Args:
        dim: the number of coordinates q (and of momenta p).
        hidden: width of the hidden layers of the default MLP (the paper: 200).
        layers: number of hidden layers of the default MLP (the paper: 2).
        hamiltonian: optional module ``H(x) -> (..., 1)`` (or ``(...)``) on ``x = cat(q, p)`` replacing the
            default MLP: one energy per sample.
        activation: activation class of the default MLP (smooth; the paper uses tanh).

    Raises:
        TypeError: ``dim``, ``hidden`` or ``layers`` is not an int (a bool or float).
        ValueError: ``dim`` or ``hidden`` is not positive, ``layers`` is negative, or ``hidden``, ``layers``
            or ``activation`` is set away from its default beside a ``hamiltonian`` module (they shape the
            default MLP only, which that module replaces).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 200,
        layers: int = 2,
        hamiltonian: nn.Module | None = None,
        activation: Callable[[], nn.Module] = nn.Tanh,
    ):
        super().__init__()
        positive_int("dim", dim)
        if hamiltonian is not None:
            # they shape the default MLP, which the module replaces: hidden=64 beside it built nothing
            mlp = {"hidden": (hidden, 200), "layers": (layers, 2), "activation": (activation, nn.Tanh)}
            given = [name for name, (value, default) in mlp.items() if value != default]
            if given:
                raise ValueError(
                    f"HamiltonianNN got a hamiltonian module and {given}, which shape the default MLP that module "
                    f"replaces; drop {' and '.join(given)}, or drop hamiltonian to train the default MLP."
                )
        positive_int("hidden", hidden)
        if hamiltonian is None:  # a negative count built a linear H (a constant field) silently
            positive_int("layers", layers, minimum=0)
        self.dim = dim
        self.net = hamiltonian if hamiltonian is not None else _mlp(2 * dim, 1, hidden, layers, activation)

    def hamiltonian(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """H_theta(q, p), one value per sample: shape ``q.shape[:-1]``.

        Args:
            q, p: coordinates and momenta, shape (..., dim).

        Returns:
            The learned energy.

        Raises:
            ValueError: the energy module returned something other than one value per sample, shape
                ``(..., 1)`` or ``(...)`` (its sum would silently have been taken as the energy).
        """
        energy = self.net(torch.cat((q, p), dim=-1))
        batch = q.shape[:-1]
        if energy.shape == (*batch, 1):
            return energy.squeeze(-1)
        if energy.shape != batch:
            raise ValueError(
                f"the hamiltonian module must return one energy per sample, shape {(*batch, 1)} or {tuple(batch)} "
                f"for inputs of shape {(*batch, 2 * self.dim)}; got {tuple(energy.shape)}."
            )
        return energy

    def _energy_sum(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """The sum of H_theta over the samples (samples are independent: its gradient is every sample's own)."""
        return self.hamiltonian(q, p).sum()

    def symplectic_gradient(self, q: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dH/dp, -dH/dq)``: the Hamiltonian field at (q, p).

        Args:
            q, p: coordinates and momenta, shape (..., dim).

        Returns:
            ``(dq/dt, dp/dt)``, each shaped like q.

        Raises:
            ValueError: q or p does not end in ``dim`` entries, or the energy is not one value per sample.
        """
        if q.shape[-1] != self.dim or p.shape != q.shape:
            raise ValueError(
                f"q and p must both have shape (..., {self.dim}), got {tuple(q.shape)} and {tuple(p.shape)}."
            )
        if inside_transform() or torch.is_inference_mode_enabled() or q.is_inference() or p.is_inference():
            # torch.autograd.grad cannot run here: a vmap/jacfwd level refuses requires_grad_(), and
            # inference mode (or its tensors) records no graph, so the gradient would not exist.
            # torch.func.grad is a transform of its own: it composes with the outer levels and with
            # autograd (double backprop still reaches the weights where gradients are recorded).
            dh_dq, dh_dp = torch.func.grad(self._energy_sum, argnums=(0, 1))(q, p)
            return dh_dp, -dh_dq
        recording = torch.is_grad_enabled()
        with torch.enable_grad():  # the field is a gradient even in no_grad rollouts
            # a state that is not part of a graph becomes a leaf we can differentiate against
            q_in = q if q.requires_grad else q.detach().requires_grad_(True)
            p_in = p if p.requires_grad else p.detach().requires_grad_(True)
            energy = self.hamiltonian(q_in, p_in)
            # samples are independent, so the gradient of the sum is every sample's own gradient
            dh_dq, dh_dp = torch.autograd.grad(energy.sum(), (q_in, p_in), create_graph=recording)
        return dh_dp, -dh_dq

    def forward(self, t: torch.Tensor, y: State) -> State:
        """The field at (t, y): a pair for a pair state, one tensor (q then p on the last dim) otherwise.

        Raises:
            ValueError: a pair state is not two tensors of shape ``(..., dim)``, or a tensor state does not
                end in ``2 * dim`` entries.
            TypeError: the state is not floating-point or not of the parameters' dtype.
        """
        y = _checked_state(self, y, self.dim)
        if isinstance(y, tuple):
            return self.symplectic_gradient(*y)
        dq, dp = self.symplectic_gradient(y[..., : self.dim], y[..., self.dim :])
        return torch.cat((dq, dp), dim=-1)


class BaselineODE(nn.Module):
    """The paper's baseline: an MLP that outputs (dq/dt, dp/dt) directly, on the same state layouts.

    Reference: Greydanus et al. 2019, Section 3 ("Baseline NN").

    Args:
        dim: the number of coordinates q (and of momenta p).
        hidden: hidden width (200 in the paper).
        layers: number of hidden layers (2 in the paper).
        activation: activation class (tanh in the paper).

    Raises:
        TypeError: ``dim``, ``hidden`` or ``layers`` is not an int (a bool or float).
        ValueError: ``dim`` or ``hidden`` is not positive, or ``layers`` is negative.
    """

    def __init__(self, dim: int, hidden: int = 200, layers: int = 2, activation: Callable[[], nn.Module] = nn.Tanh):
        super().__init__()
        positive_int("dim", dim)
        positive_int("hidden", hidden)
        positive_int("layers", layers, minimum=0)
        self.dim = dim
        self.net = _mlp(2 * dim, 2 * dim, hidden, layers, activation)

    def forward(self, t: torch.Tensor, y: State) -> State:
        """The field at (t, y): a pair for a pair state, one tensor otherwise.

        Raises:
            ValueError: a pair state is not two tensors of shape ``(..., dim)``, or a tensor state does not
                end in ``2 * dim`` entries (a q of 1 and a p of 3 entries made 2 + 2 inputs and ran).
            TypeError: the state is not floating-point or not of the parameters' dtype.
        """
        y = _checked_state(self, y, self.dim)
        if isinstance(y, tuple):
            out = self.net(torch.cat(y, dim=-1))
            return out[..., : self.dim], out[..., self.dim :]
        return self.net(y)
