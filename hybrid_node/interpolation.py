"""Dense output inside one accepted step: y(t0 + theta * dt) for theta in [0, 1]."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch


def linear_combination(y, scale, coeffs: Sequence[float], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return ``y + scale * sum_i coeffs[i] * ks[i]`` (just the sum when ``y`` is None), skipping zeros.

    The one stage-sum kernel of every step, output formula and loop (Hairer, Nørsett, Wanner, Solving
    ODEs I, 2nd ed., Section II.1: the stages and the solution of a Runge-Kutta step are such sums).
    The increment ``scale * sum_i coeffs[i] * ks[i]`` is summed first and added to ``y`` once, as
    torchdiffeq does (``y0 + k @ (dt * b)``): adding each term to ``y`` itself rounds every term
    against ``y``'s magnitude, which in float32 over a few hundred steps of a slowly varying large
    state drifts by ~5e-5 (torchdiffeq's float32 rk4 event test bounds the error by 1e-4; term by
    term missed it by 1%). Each term of the increment is one fused multiply-add
    ``acc + k * (scale * c)``, with ``scale * c`` rounded once in the scale's precision, whatever form
    ``scale`` takes:

    - a float (the host step): ``torch.add(acc, k, alpha=scale * c)``, in place (the accumulator is a
      fresh tensor), one kernel per nonzero coefficient;
    - a 0-d tensor (compiled steps, the device loop): ``torch.addcmul(acc, k, scale * c)`` with the
      factor cast to the state's dtype, out of place (the compiler fuses it); it rounds as
      ``torch.add`` with ``alpha`` does, so host and device steps agree to the last bit on the CPU;
    - a per-sample column (batch, 1, ...) (per-sample control): as the 0-d tensor (a float64 column
      would otherwise promote the state, as would a per-problem step under ``vmap``).

    Every form then adds ``y`` once (in place on the host, whose accumulator is its own; addition
    commutes bitwise, so ``acc + y`` is ``y + acc``).

    Args:
        y: the constant term, or None.
        scale: the step size: float, 0-d tensor or per-sample column tensor.
        coeffs: one coefficient per stage derivative.
        ks: the stage derivatives.

    Returns:
        A new tensor (``y`` itself when every coefficient is zero).
    """
    acc = None
    for c, k in zip(coeffs, ks):
        if c == 0.0:
            continue
        if isinstance(scale, torch.Tensor):
            # the factor in the state's dtype: a float64 column (or a per-problem step under vmap, whose
            # addcmul promotes) would otherwise promote the state; a 0-d factor is cast by the op anyway
            s = (scale * c).to(k.dtype)
            acc = k * s if acc is None else torch.addcmul(acc, k, s)
        elif acc is None:
            acc = k * (scale * c)
        else:
            acc.add_(k, alpha=scale * c)
    if acc is None:
        return torch.zeros_like(ks[0]) if y is None else y
    if y is None:
        return acc
    if isinstance(scale, torch.Tensor):
        return y + acc
    return acc.add_(y) if acc.dtype == y.dtype and acc.shape == y.shape else y + acc


def host_matrix(rows: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A small host matrix as a tensor on ``like``'s device and dtype, without a blocking copy on CUDA."""
    m = torch.from_numpy(np.ascontiguousarray(rows))
    if like.device.type == "cpu":
        return m.to(like.dtype)
    # pinned memory + non_blocking: the copy is queued on the stream, the host does not wait for the GPU
    return m.to(like.dtype).pin_memory().to(like.device, non_blocking=True)


def combine_rows(y0, scale: float, weights: np.ndarray, ks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return ``y0 + scale * weights @ ks`` for many weight rows at once, shape (rows, *ks[0].shape).

    ``y0`` may be None (no constant term). One stack and one matrix product replace rows x stages
    elementwise kernels (dense output at many times inside one step).
    """
    shape = (weights.shape[0],) + tuple(ks[0].shape)
    keep = np.flatnonzero(np.any(weights != 0.0, axis=0)).tolist()
    if not keep:
        return torch.zeros(shape, dtype=ks[0].dtype, device=ks[0].device) if y0 is None else y0.expand(shape).clone()
    k = torch.stack([ks[j].reshape(-1) for j in keep])
    w = host_matrix(weights[:, keep] * scale, k)
    out = torch.mm(w, k) if y0 is None else torch.addmm(y0.reshape(1, -1), w, k)
    return out.reshape(shape)


def combine_sample_rows(
    y0: torch.Tensor | None, scale: float, weights: np.ndarray, ks: Sequence[torch.Tensor], idx: torch.Tensor, n: int
) -> torch.Tensor:
    """Row ``idx[j]`` of ``y0 + scale * weights[j] @ ks``, each tensor seen as ``n`` rows: shape (k, m).

    The per-sample counterpart of :func:`combine_rows`: sample ``idx[j]`` at its own weights
    ``weights[j]`` (its own time), in O(k * stages * m) work. Taking these rows from
    ``combine_rows(...)`` instead evaluates every sample at every row's weights, k * n rows, which
    for a batch whose samples all locate an event in one step is quadratic in the batch.

    Args:
        y0: the constant term, or None.
        scale: the factor of the weights (the step size, or 1).
        weights: (k, stages) one row of weights per requested sample.
        ks: the tensors combined, each of ``n * m`` elements.
        idx: (k,) the sample (row) each weight row is for.
        n: the number of rows each tensor is seen as.

    Returns:
        A (k, m) tensor, with autograd as enabled.
    """
    rows = [k.reshape(n, -1)[idx] for k in ks]  # (k, m) each
    keep = np.flatnonzero(np.any(weights != 0.0, axis=0)).tolist()
    out = None
    if keep:
        w = host_matrix(weights[:, keep] * scale, rows[0])  # (k, kept stages)
        out = (w.t().unsqueeze(-1) * torch.stack([rows[j] for j in keep])).sum(0)
    if y0 is None:
        return out if out is not None else torch.zeros_like(rows[0])
    start = y0.reshape(n, -1)[idx]
    return start if out is None else start + out


class SampleRows(Protocol):
    """Per-sample reads of one step's dense output: each requested row at its own fraction of the step.

    The contract every interpolant with per-sample rows follows (the interpolants here, DOP853's,
    Rodas', Rosenbrock23's and the Nordsieck array's); the per-sample event search
    (:class:`hybrid_node.loop.events._Locator`) reads the rows of the samples it locates through
    it, and falls back to rows of whole-batch evaluations (``many``) for an interpolant without it.
    Each implementation documents only its own formula and its reference.

    In every method the state is seen as ``n`` rows (its leading dimensions flattened, the rest
    ``m``), ``thetas`` are k fractions of the step and ``idx`` a (k,) long tensor of rows: row
    ``idx[j]`` is read at ``thetas[j]``, in O(k) rows of work where the diagonal of ``many`` is
    O(k * n). The results carry autograd as enabled (an interpolant whose extra stages are built on
    first use builds them in the mode of its step).
    """

    def sample_rows(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """Row ``idx[j]`` of the dense output at ``thetas[j]``, shape (k, m).

        Each row equals row ``idx[j]`` of the whole-batch evaluation at ``thetas[j]``: to the last
        bit where the implementation repeats the evaluation's operations on the requested rows (the
        fractions rounded to the state's dtype as a scalar fraction is: DOP853, Rodas, Rosenbrock23,
        Nordsieck), so an event located on these rows is the one located on the whole batch; to a
        few ulps where it sums in another order (the Runge-Kutta, Hermite and linear ones here).

        Args:
            thetas: (k,) the fractions of the step.
            idx: (k,) the row each fraction is for.
            n: the number of rows the state is seen as.

        Returns:
            A (k, m) tensor.
        """
        ...

    def sample_slopes(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """The theta-derivative of row ``idx[j]`` of the dense output at ``thetas[j]``, shape (k, m).

        The exact derivative of the computed dense output (not the field): divided by the step, the
        rate at which an event state located on it moves with its time, which the
        implicit-function-theorem gradient of the event time needs, without a call of the field.

        Args: as :meth:`sample_rows`.

        Returns:
            A (k, m) tensor.
        """
        ...


class SampleReader(SampleRows, Protocol):
    """A :class:`SampleRows` interpolant that can prepare repeated reads of one set of rows.

    Optional: a bisection reads the same rows at ~50 sets of fractions, and where the work that
    depends on the rows alone (gathering their coefficients) is a sizeable part of a read, the
    interpolant offers it once per set of rows.
    """

    def sample_reader(self, idx: torch.Tensor, n: int) -> Callable[[Sequence[float]], torch.Tensor]:
        """A function ``thetas -> sample_rows(thetas, idx, n)``, equal to it to the last bit.

        Made and used in one autograd mode (the prepared coefficients keep the mode they were made in).

        Args: ``idx`` and ``n`` as :meth:`SampleRows.sample_rows`.

        Returns:
            The reader of those rows.
        """
        ...


@dataclasses.dataclass
class PolynomialInterpolant:
    """The Runge-Kutta pair's own continuous extension: y0 + dt * sum_i b_i(theta) k_i.

    ``coeffs[i][p]`` is the coefficient of theta^(p+1) in b_i(theta). ``y1``: the step's solution, returned
    as it is at theta = 1 (where the sum reproduces it only up to rounding), so that the dense output is
    continuous across steps to the last bit; None: the sum there too.
    """

    y0: torch.Tensor
    ks: tuple[torch.Tensor, ...]
    dt: float
    coeffs: tuple[tuple[float, ...], ...]
    y1: torch.Tensor | None = None

    def __call__(self, theta: float) -> torch.Tensor:
        if theta == 1.0 and self.y1 is not None:
            return self.y1
        weights = [sum(c * theta ** (p + 1) for p, c in enumerate(row)) for row in self.coeffs]
        return linear_combination(self.y0, self.dt, weights, self.ks)

    def many(self, thetas: Sequence[float]) -> torch.Tensor:
        """The interpolant at several thetas at once, shape (len(thetas), *y0.shape)."""
        th = np.asarray(thetas, dtype=np.float64)
        out = combine_rows(self.y0, self.dt, self._weights(th), self.ks)
        at_end = th == 1.0
        if self.y1 is not None and at_end.any():  # out of place: the rows may carry gradients
            mask = torch.as_tensor(at_end, device=out.device).reshape((-1,) + (1,) * self.y0.dim())
            out = torch.where(mask, self.y1.unsqueeze(0), out)
        return out

    def sample_rows(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`SampleRows.sample_rows`: ``y0 + dt * sum_i b_i(theta_j) k_i`` on the rows, ``y1`` at theta 1."""
        th = np.asarray(thetas, dtype=np.float64)
        out = combine_sample_rows(self.y0, self.dt, self._weights(th), self.ks, idx, n)
        at_end = th == 1.0
        if self.y1 is not None and at_end.any():  # the step's own solution at its end, as many() gives it
            mask = torch.as_tensor(at_end, device=out.device).unsqueeze(1)
            out = torch.where(mask, self.y1.reshape(n, -1)[idx], out)
        return out

    def sample_slopes(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`SampleRows.sample_slopes`: ``dt * sum_i b_i'(theta) k_i`` (Hairer, Nørsett, Wanner, Solving
        ODEs I, 2nd ed., Section II.6)."""
        c = np.asarray(self.coeffs, dtype=np.float64)  # (stages, degree): b_i' has coefficients (p + 1) c_ip
        th = np.asarray(thetas, dtype=np.float64)
        powers = np.arange(c.shape[1])
        weights = (th[:, None] ** powers) @ (c * (powers + 1)).T
        return combine_sample_rows(None, self.dt, weights, self.ks, idx, n)

    def _weights(self, th: np.ndarray) -> np.ndarray:
        """The (len(th), stages) weights ``b_i(theta)`` at the thetas ``th``."""
        c = np.asarray(self.coeffs, dtype=np.float64)  # (stages, degree)
        return (th[:, None] ** np.arange(1, c.shape[1] + 1)) @ c.T


def hermite_weights(theta, dt):
    """The cubic Hermite basis at ``theta`` (a float, a NumPy array or a tensor), in the order of
    (y0, y1, f0, f1): the weights of the end values and of the end derivatives times the step ``dt``.

    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.6.
    """
    return [
        (1 + 2 * theta) * (1 - theta) ** 2,
        theta**2 * (3 - 2 * theta),
        theta * (1 - theta) ** 2 * dt,
        theta**2 * (theta - 1) * dt,
    ]


@dataclasses.dataclass
class HermiteInterpolant:
    """Cubic Hermite interpolation from the end values and derivatives of a step (third order).

    Reference: Hairer, Nørsett, Wanner, Solving ODEs I, 2nd ed., Section II.6.
    """

    y0: torch.Tensor
    y1: torch.Tensor
    f0: torch.Tensor
    f1: torch.Tensor
    dt: float

    def __call__(self, theta: float) -> torch.Tensor:
        w00, w01, w10, w11 = hermite_weights(theta, self.dt)
        return self.y0 * w00 + self.y1 * w01 + self.f0 * w10 + self.f1 * w11

    def many(self, thetas: Sequence[float]) -> torch.Tensor:
        """The interpolant at several thetas at once, shape (len(thetas), *y0.shape)."""
        w = np.stack(hermite_weights(np.asarray(thetas, dtype=np.float64), self.dt), axis=1)
        return combine_rows(None, 1.0, w, (self.y0, self.y1, self.f0, self.f1))

    def sample_rows(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`SampleRows.sample_rows`: the Hermite basis of :func:`hermite_weights` on the rows."""
        w = np.stack(hermite_weights(np.asarray(thetas, dtype=np.float64), self.dt), axis=1)
        return combine_sample_rows(None, 1.0, w, (self.y0, self.y1, self.f0, self.f1), idx, n)

    def sample_slopes(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`SampleRows.sample_slopes`: the cubic's derivative, ``dt * f0`` at theta 0 and ``dt * f1`` at 1."""
        th = np.asarray(thetas, dtype=np.float64)
        w = np.stack(
            [-6 * th * (1 - th), 6 * th * (1 - th), (1 - th) * (1 - 3 * th) * self.dt, th * (3 * th - 2) * self.dt], 1
        )
        return combine_sample_rows(None, 1.0, w, (self.y0, self.y1, self.f0, self.f1), idx, n)


@dataclasses.dataclass
class LinearInterpolant:
    """Linear interpolation between the ends of a step (the fixed-grid default, as in torchdiffeq)."""

    y0: torch.Tensor
    y1: torch.Tensor

    def __call__(self, theta: float) -> torch.Tensor:
        return torch.lerp(self.y0, self.y1, theta)

    def many(self, thetas: Sequence[float]) -> torch.Tensor:
        """The interpolant at several thetas at once, shape (len(thetas), *y0.shape)."""
        th = np.asarray(thetas, dtype=np.float64)
        return combine_rows(self.y0, 1.0, np.stack([-th, th], axis=1), (self.y0, self.y1))

    def sample_rows(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`SampleRows.sample_rows`: ``y0 + (theta y1 - theta y0)`` on the rows."""
        th = np.asarray(thetas, dtype=np.float64)
        return combine_sample_rows(self.y0, 1.0, np.stack([-th, th], axis=1), (self.y0, self.y1), idx, n)

    def sample_slopes(self, thetas: Sequence[float], idx: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`SampleRows.sample_slopes`: ``y1 - y0`` whatever the theta."""
        w = np.tile([-1.0, 1.0], (len(thetas), 1))
        return combine_sample_rows(None, 1.0, w, (self.y0, self.y1), idx, n)
