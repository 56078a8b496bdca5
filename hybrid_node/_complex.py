"""Complex states for the implicit methods: the equivalent real system on ``torch.view_as_real`` views.

The implicit methods solve their stage equations with real Jacobians and LU factors. A complex state
``z`` of shape ``(..., n)`` is therefore integrated as the real state ``x`` of shape ``(..., 2n)``
that holds ``Re z_k, Im z_k`` side by side (``torch.view_as_real(z)`` with its last two dimensions
merged; a 0-d ``z`` becomes shape ``(2,)``), and the field as ``x -> view_as_real(f(t, z(x)))``.
This is exact for every field, analytic or not: the Jacobian of the real system is the real
derivative, which a complex matrix describes only for an analytic field. Merging the last two
dimensions keeps the leading ones, so the implicit solvers' ``batch_dims`` (samples that do not
interact) mean the same on the real state, and the real and imaginary parts of a sample stay one
system.

Gradients need nothing of their own: ``view_as_real`` and ``view_as_complex`` are views that autograd
differentiates, so a real adjoint ``(dL/dRe z, dL/dIm z)`` comes back as torch's complex gradient
``dL/dRe z + i dL/dIm z``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._term import CALLBACK_NAMES, check_derivative


class RealView:
    """One complex tensor of a given shape held as its real view (see the module docstring).

    Args:
        shape: the complex tensor's shape.
        dtype: its complex dtype.
    """

    def __init__(self, shape: Sequence[int], dtype: torch.dtype):
        self.shape = tuple(shape)
        self.dtype = dtype
        #: the real view's shape: the last dimension doubled, (2,) for a 0-d tensor
        self.real_shape = (*self.shape[:-1], 2 * self.shape[-1]) if self.shape else (2,)

    def to_real(self, z: torch.Tensor) -> torch.Tensor:
        """The real view of ``z`` (shape ``(*lead, *shape)``) as shape ``(*lead, *real_shape)``."""
        x = torch.view_as_real(z.resolve_conj())  # a conjugate view (z.conj()) has no real view of its own
        return x if not self.shape else x.flatten(-2)

    def to_complex(self, x: torch.Tensor) -> torch.Tensor:
        """The complex tensor whose real view is ``x`` (any leading dimensions)."""
        pairs = x if not self.shape else x.unflatten(-1, (-1, 2))
        if pairs.stride(-1) != 1 or any(s % 2 for s in pairs.stride()[:-1]) or pairs.storage_offset() % 2:
            pairs = pairs.contiguous()  # view_as_complex needs (re, im) pairs adjacent and aligned
        return torch.view_as_complex(pairs)

    def field_output(self, out: object, z: torch.Tensor) -> torch.Tensor:
        """The real view of ``func``'s derivative ``out`` at ``z``, after the checks the term makes
        for a real state (here, where they can still name the complex dtype the caller used).

        Raises:
            TypeError: ``out`` is not a tensor, or not of the state's complex dtype.
            ValueError: ``out`` does not have the state's shape.
        """
        hint = "for a real derivative of a complex state, e.g. torch.complex(dy, torch.zeros_like(dy))"
        check_derivative(out, z, hint)
        assert isinstance(out, torch.Tensor)  # checked above
        return self.to_real(out)


class ComplexState:
    """The complex state of a solve (a tensor or a tuple of tensors) and its real form.

    Args:
        y0: the caller's complex initial state.
    """

    def __init__(self, y0: torch.Tensor | Sequence[torch.Tensor]):
        self.is_tuple = not isinstance(y0, torch.Tensor)
        parts = tuple(y0) if self.is_tuple else (y0,)
        self.views = tuple(RealView(p.shape, p.dtype) for p in parts)

    def to_real(self, z):
        """The real form of a complex state (a tensor, or a tuple for a tuple state)."""
        if self.is_tuple:
            return tuple(v.to_real(p) for v, p in zip(self.views, z))
        return self.views[0].to_real(z)

    def to_complex(self, x):
        """The complex state whose real form is ``x`` (a tensor, or a tuple for a tuple state)."""
        if self.is_tuple:
            return tuple(v.to_complex(p) for v, p in zip(self.views, x))
        return self.views[0].to_complex(x)

    def field(self, func: Callable) -> Callable:
        """``func`` on the real form of the state: ``(t, x) -> real form of func(t, to_complex(x))``.

        An ``nn.Module`` ``func`` gives an ``nn.Module`` holding it, so that its parameters are the
        adjoints' default ``adjoint_params`` as before; a plain function gives a plain callable (the
        adjoints then ask for ``adjoint_params`` as they do for it). The step callbacks of ``func``
        (``callback_step``, ...) are carried over and receive the complex state.
        """
        field = ComplexFieldModule(func, self) if isinstance(func, torch.nn.Module) else ComplexField(func, self)
        for name in CALLBACK_NAMES:
            callback = getattr(func, name, None)
            if callback is not None:
                object.__setattr__(field, name, _ComplexCallback(callback, self))
            adjoint_callback = getattr(func, name + "_adjoint", None)
            if adjoint_callback is not None:
                # the backward solve's callbacks get torchdiffeq's augmented tuple (y, adj_y, *adj_params) of
                # the real system: passed on as they are (docs/torchdiffeq.md, complex states)
                object.__setattr__(field, name + "_adjoint", adjoint_callback)
        return field

    def unpack(self, x: torch.Tensor, layout) -> object:
        """The caller's complex state (or stacked states) from the loops' flat real state ``x``.

        Args:
            x: the flat real state, shape ``(*lead, N)`` for a tuple state (``N`` the real sizes summed),
                else ``(*lead, *real_shape)``.
            layout: the real tuple layout (None for a tensor state).
        """
        return self.to_complex(x if layout is None else layout.unflatten(x))

    def call(self, func: Callable, t: torch.Tensor, x):
        """``func(t, z)`` at the complex state ``z`` whose real form is ``x``, returned in real form."""
        z = self.to_complex(x)
        out = func(t, z)
        if not self.is_tuple:
            return self.views[0].field_output(out, z)
        if not isinstance(out, (tuple, list)) or len(out) != len(z):
            return out  # the term names the wrong structure
        return tuple(v.field_output(o, p) for v, o, p in zip(self.views, out, z))


class ComplexField:
    """The user's field on the real form of a complex state (made by :meth:`ComplexState.field`).

    Args:
        func: the user's field.
        state: the complex state's form.
    """

    def __init__(self, func: Callable, state: ComplexState):
        self.func = func
        self.state = state

    def __call__(self, t: torch.Tensor, x):
        return self.state.call(self.func, t, x)


class ComplexFieldModule(torch.nn.Module):
    """:class:`ComplexField` for an ``nn.Module`` field: its parameters are this module's (``func.*``)."""

    def __init__(self, func: torch.nn.Module, state: ComplexState):
        super().__init__()
        self.func = func
        self.state = state

    def forward(self, t: torch.Tensor, x):
        return self.state.call(self.func, t, x)


class _ComplexCallback:
    """A step callback of the user's field called with the complex state ``(t0, y0, dt)``."""

    def __init__(self, callback: Callable, state: ComplexState):
        self.callback = callback
        self.state = state

    def __call__(self, t0: torch.Tensor, y0, dt: torch.Tensor):
        return self.callback(t0, self.state.to_complex(y0), dt)


class ComplexNorm:
    """A user's error norm on a complex state, called on the real form the loops hold: it receives the
    scaled error as a complex tensor (real and imaginary parts each scaled by its own tolerance).
    An object for the reason given in :class:`hybrid_node._problem.PartsRMS`.

    Args:
        norm: the user's norm.
        state: the complex state's form.
    """

    def __init__(self, norm: Callable, state: ComplexState):
        self.norm = norm
        self.state = state

    def __call__(self, x) -> torch.Tensor:
        return self.norm(self.state.to_complex(x))


def real_tolerance(tol, shape: Sequence[int]) -> object:
    """A tolerance on a complex flat state as one on its real form: each element's value for both parts.

    Args:
        tol: a float, or a tensor broadcastable to ``shape`` (complex-typed, as built on the complex state).
        shape: the complex flat state's shape.

    Returns:
        ``tol`` itself for a float, else a real tensor of the real form's shape.
    """
    if not isinstance(tol, torch.Tensor):
        return tol
    value = (tol.real if tol.is_complex() else tol).expand(tuple(shape))
    return value.unsqueeze(-1).expand(*value.shape, 2).reshape(RealView(shape, tol.dtype).real_shape)


class ComplexJacobian:
    """A user's ``jac(t, y)`` of a complex tensor state, as the real form's Jacobian.

    A complex Jacobian ``J = A + iB`` describes an analytic field (one whose derivative is complex
    linear); on the real form, where element ``k`` is held as ``(Re, Im)`` at ``2k, 2k + 1``, its
    block ``(k, l)`` is ``[[A, -B], [B, A]]`` at ``(k, l)``. A real ``J`` is read as ``B = 0``.

    Args:
        jac: the user's Jacobian, ``jac(t, z)`` returning the per-sample blocks ``(*batch, D, D)`` of
            the complex system.
        view: the complex state's real view.
    """

    def __init__(self, jac: Callable, view: RealView):
        self.jac = jac
        self.view = view

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.jac(t, self.view.to_complex(x))
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[-1] != out.shape[-2]:
            return out  # the solver names the shape it needs
        a, b = (out.real, out.imag) if out.is_complex() else (out, torch.zeros_like(out))
        blocks = torch.stack([torch.stack([a, -b]), torch.stack([b, a])])  # (2, 2, *batch, D, D)
        lead, d = tuple(out.shape[:-2]), out.shape[-1]
        # (re/im of row, re/im of column, *batch, row, column) -> (*batch, row, re/im, column, re/im)
        order = [*range(2, 2 + len(lead)), 2 + len(lead), 0, 3 + len(lead), 1]
        return blocks.permute(order).reshape(*lead, 2 * d, 2 * d)
