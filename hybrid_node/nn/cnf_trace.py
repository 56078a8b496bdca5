"""Divergence (Jacobian trace) of a vector field: exact, and Hutchinson's stochastic estimator.

The instantaneous change of variables (Chen et al. 2018, Theorem 1) needs tr(df/dz) along the flow.
:func:`exact_divergence` builds the full Jacobian with one forward pass and one batched reverse pass
(``torch.autograd.grad(..., is_grads_batched=True)`` vectorises the D vector-Jacobian products, so there
is no Python loop over dimensions); it costs O(D) backward work and suits low dimensions.
:func:`hutchinson_divergence` uses one vector-Jacobian product, tr(J) ~ eps^T J eps with E[eps eps^T] = I
(Hutchinson 1990; Grathwohl et al. 2019, "FFJORD", Section 3.1).

Both also return the squared Frobenius norm of the Jacobian used by RNODE's regulariser
(Finlay et al. 2020, "How to train your neural ODE", Eq. 4): exactly for the exact method, and as the
unbiased estimate ||eps^T J||^2 for Hutchinson's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = ["NOISE_KINDS", "Divergence", "exact_divergence", "hutchinson_divergence", "sample_noise"]

#: Distributions accepted by :func:`sample_noise`.
NOISE_KINDS = ("rademacher", "gaussian")


class Divergence(NamedTuple):
    """Vector field value and Jacobian quantities at a batch of points.

    Attributes:
        f: the field, shape (B, D).
        trace: tr(df/dz) per sample (exact or estimated), shape (B,).
        frobenius_sq: ||df/dz||_F^2 per sample (exact or estimated), shape (B,).
    """

    f: torch.Tensor
    trace: torch.Tensor
    frobenius_sq: torch.Tensor


def _as_differentiable(z: torch.Tensor, outer_grad: bool) -> torch.Tensor:
    # With gradients on, a tensor with history must stay in the graph so that gradients flow through the
    # solve. With gradients off (evaluation, or inside an adjoint's forward solve, where views of
    # tensors that require grad carry no usable history) a fresh leaf is the only safe choice.
    if outer_grad and z.requires_grad:
        return z
    return z.detach().requires_grad_(True)


def _evaluate(fn, z: torch.Tensor, outer_grad: bool):
    """``fn`` at a differentiable copy of ``z`` (call inside enable_grad); checks the shape is kept."""
    z = _as_differentiable(z, outer_grad)
    f = fn(z)
    if f.shape != z.shape:
        raise ValueError(f"The vector field must return the shape of its input {tuple(z.shape)}, got {tuple(f.shape)}.")
    return z, f


def _vjp(
    f: torch.Tensor, z: torch.Tensor, cotangent: torch.Tensor, *, create_graph: bool, batched: bool
) -> torch.Tensor:
    """``cotangent^T df/dz``, zero where ``f`` does not depend on ``z``.

    A field may ignore its state (a translation f(t, z) = c(t), a block that only moves along time);
    its Jacobian is zero, but autograd refuses to differentiate an output that does not depend on the
    input at all. (``materialize_grads`` is no help here: under ``is_grads_batched`` its zeros lack the
    leading batch dimension.)

    Args:
        f: the field's value at ``z``, shape (B, D).
        z: the differentiable points, shape (B, D).
        cotangent: shape (B, D), or (K, B, D) with ``batched`` (K products at once).
        create_graph: keep the graph of the products.
        batched: the leading dimension of ``cotangent`` batches the products.

    Returns:
        The products, shaped like ``cotangent``.
    """
    shape = cotangent.shape if batched else z.shape
    if not f.requires_grad:  # neither z nor any parameter reaches f
        return z.new_zeros(shape)
    (vjp,) = torch.autograd.grad(
        f, z, cotangent, create_graph=create_graph, is_grads_batched=batched, allow_unused=True
    )
    return z.new_zeros(shape) if vjp is None else vjp


def _check_batch(z: torch.Tensor) -> None:
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(
            f"Expected a batch of points of shape (batch, dim), got "
            f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}."
        )


def exact_divergence(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, *, create_graph: bool) -> Divergence:
    """Exact trace and Frobenius norm of the Jacobian of ``fn`` at each row of ``z``.

    Args:
        fn: maps a batch (B, D) to (B, D), each row depending only on the same row of the input.
        z: points, shape (B, D).
        create_graph: keep the graph of the derivatives (needed to train through the trace).

    Returns:
        :class:`Divergence` with the exact trace and squared Frobenius norm.

    Raises:
        ValueError: ``z`` is not two-dimensional or ``fn`` changes its shape.
    """
    _check_batch(z)
    outer_grad = torch.is_grad_enabled()
    with torch.enable_grad():
        z, f = _evaluate(fn, z, outer_grad)
        batch, dim = z.shape
        # Row i of the Jacobian for every sample at once: the D cotangents e_i are batched by vmap.
        basis = torch.eye(dim, dtype=z.dtype, device=z.device).unsqueeze(1).expand(dim, batch, dim)
        rows = _vjp(f, z, basis, create_graph=create_graph, batched=True)
    # rows[i, b, j] = d f_i / d z_j at sample b.
    trace = rows.diagonal(dim1=0, dim2=2).sum(-1)
    frobenius_sq = rows.pow(2).sum(dim=(0, 2))
    return Divergence(f, trace, frobenius_sq)


def hutchinson_divergence(
    fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, noise: torch.Tensor, *, create_graph: bool
) -> Divergence:
    """Hutchinson estimates of the Jacobian trace and squared Frobenius norm with one VJP.

    With ``v = noise^T J``: trace ~ v . noise and ||J||_F^2 ~ ||v||^2; both are unbiased when the noise
    has zero mean and identity covariance (Rademacher or standard Gaussian entries).

    Args:
        fn: maps a batch (B, D) to (B, D), rows independent.
        z: points, shape (B, D).
        noise: probe vectors, shape (B, D); keep them fixed over one solve so that the integrand is a
            smooth function of time (Grathwohl et al. 2019).
        create_graph: keep the graph of the derivatives.

    Returns:
        :class:`Divergence` with the estimated trace and squared Frobenius norm.

    Raises:
        ValueError: shapes of ``z``, ``noise`` or ``fn(z)`` disagree.
    """
    _check_batch(z)
    if noise.shape != z.shape:
        raise ValueError(f"noise must have the shape of z {tuple(z.shape)}, got {tuple(noise.shape)}.")
    outer_grad = torch.is_grad_enabled()
    with torch.enable_grad():
        z, f = _evaluate(fn, z, outer_grad)
        vjp = _vjp(f, z, noise, create_graph=create_graph, batched=False)
    return Divergence(f, (vjp * noise).sum(-1), vjp.pow(2).sum(-1))


def sample_noise(kind: str, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Probe vectors for :func:`hutchinson_divergence` with zero mean and identity covariance.

    Args:
        kind: "rademacher" (entries +-1, lowest variance for the trace) or "gaussian".
        like: tensor whose shape, dtype and device the noise takes.
        generator: optional torch Generator for reproducibility.

    Returns:
        Tensor shaped like ``like``.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "gaussian":
        return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)
    if kind == "rademacher":
        bits = torch.randint(0, 2, like.shape, device=like.device, generator=generator)
        return bits.to(like.dtype) * 2 - 1
    raise ValueError(f"Unknown noise {kind!r}; choose one of {', '.join(NOISE_KINDS)}.")
