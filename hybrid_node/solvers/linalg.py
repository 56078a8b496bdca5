"""Linear algebra of the implicit solvers: block Jacobians, iteration matrices and their LU factors.

Batched states. The state ``y`` of shape ``(*batch, *system)`` is read as independent samples: the
leading ``batch_dims`` dimensions index samples that do not interact, the remaining dimensions form one
system of size ``D = prod(system)``. The Jacobian is then block diagonal and is stored as its blocks,
shape ``(*batch, D, D)``; a dense ``(B*D) x (B*D)`` matrix is never formed. The default is
``batch_dims = y.dim() - 1`` (the last dimension is the system, as for a ``(batch, features)`` Neural
ODE state); ``batch_dims=0`` treats the whole state as one coupled system (needed when samples interact,
e.g. through batch statistics). Tuple states are flattened to 1-D and are always one system.

Because the samples are independent, one vector-Jacobian product with the cotangent ``e_i`` placed in
every sample at once returns row ``i`` of every block, so a Jacobian costs ``D`` products (vectorised
by ``torch.func.vmap`` into one batched call) whatever the batch size.

References: Hairer & Wanner, Solving ODEs II, 2nd ed., Section IV.8 (iteration matrix, reuse of
Jacobians and LU factors); the per-sample block trick is the column-compression idea of Curtis,
Powell & Reid, "On the estimation of sparse Jacobian matrices", IMA J. Appl. Math. 13 (1974).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch.func import jvp, vjp, vmap

from .._term import LeftLimit, Term

JACOBIAN_MODES = ("jacrev", "jacfwd", "loop", "fd")
#: how the Rosenbrock methods take df/dt (OrdinaryDiffEq's ``autodiff=AutoForwardDiff()`` / ``AutoFiniteDiff()``)
TIME_DERIVATIVE_MODES = ("autodiff", "fd")


@dataclasses.dataclass(frozen=True)
class JacobianSettings:
    """How the implicit solvers obtain the Jacobian df/dy.

    Args:
        jacobian: "jacrev" (reverse mode, vmapped vector-Jacobian products; default), "jacfwd"
            (forward mode, vmapped Jacobian-vector products; cheaper for wide systems), "loop" (one
            autograd call per row, for fields that ``torch.func.vmap`` cannot trace, e.g. ones that call
            ``torch.autograd`` themselves; "jacrev" and "jacfwd" fall back to it for such fields),
            "fd" (forward differences, D evaluations; for fields autograd cannot differentiate twice, used
            automatically when the others fail that way), or a callable ``jac(t, y)`` returning the blocks,
            shape ``(*batch, D, D)`` for a tensor state.
        batch_dims: number of leading state dimensions that index independent samples (default: all but
            the last); 0 means one coupled system.
    """

    jacobian: str | Callable = "jacrev"
    batch_dims: int | None = None

    def __post_init__(self):
        if not callable(self.jacobian) and self.jacobian not in JACOBIAN_MODES:
            raise ValueError(
                f"jacobian must be one of {JACOBIAN_MODES} or a callable jac(t, y), got {self.jacobian!r}."
            )
        if self.batch_dims is not None and not (isinstance(self.batch_dims, int) and self.batch_dims >= 0):
            raise ValueError(f"batch_dims must be a non-negative int or None, got {self.batch_dims!r}.")


def system_shape(y: torch.Tensor, batch_dims: int | None) -> tuple[tuple[int, ...], int]:
    """Split a state's shape into (batch shape, system size D).

    Raises:
        ValueError: batch_dims larger than the state's number of dimensions minus one.
    """
    if y.dim() == 0:
        return (), 1
    nb = y.dim() - 1 if batch_dims is None else batch_dims
    if nb > max(y.dim() - 1, 0):
        raise ValueError(
            f"batch_dims={batch_dims} leaves no system dimension in a state of shape {tuple(y.shape)}; "
            f"use at most {y.dim() - 1}."
        )
    batch = tuple(y.shape[:nb])
    return batch, int(math.prod(y.shape[nb:]))


def _count(f) -> None:
    """Count one Jacobian evaluation on the term (reported as ``stats.n_jacobian``)."""
    if hasattr(f, "n_jacobian"):
        f.n_jacobian += 1


def block_jacobian(
    f: Callable, t: float, y: torch.Tensor, settings: JacobianSettings, differentiable: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate f(t, y) and the blocks of its Jacobian.

    Args:
        f: the field in solver form ``f(t_float, y)`` (a :class:`~hybrid_node._term.Term`).
        t: time.
        y: state, shape ``(*batch, *system)``.
        settings: the Jacobian settings.
        differentiable: keep the Jacobian's dependence on the state and on the field's parameters
            where grad mode is on. A Rosenbrock step's result depends on J, so direct backpropagation
            needs it; the Newton methods pass False (J only steers the iteration, and the "loop" and
            "fd" modes then skip building its graph).

    Returns:
        ``(f(t, y), J)`` with ``J`` of shape ``(*batch, D, D)``, ``J[b, i, j] = d f_i / d y_j`` of sample b.
        ``f(t, y)`` is always in the graph where grad mode is on. With ``differentiable``, ``J`` is too
        (torch.func composes with autograd; "loop" keeps the graph of its rows, "fd" differentiates its
        differences), so direct backpropagation through a Rosenbrock step sees the derivative of the
        discrete method.

    Raises:
        TypeError: a user Jacobian of the wrong shape.
    """
    batch, d = system_shape(y, settings.batch_dims)
    _count(f)
    mode = settings.jacobian
    if callable(mode):
        return f(t, y), _user_jacobian(f, mode, t, y, batch, d)
    ybd = y.reshape(batch + (d,))
    keep = differentiable and torch.is_grad_enabled()

    def g(z):
        return f(t, z.reshape(y.shape)).reshape(batch + (d,))

    if mode in ("jacrev", "jacfwd"):
        vectorised = _vectorised_jacobian(g, ybd, mode, batch, d)
        if vectorised is not None:
            out, jac = vectorised
            return out.reshape(y.shape), jac
        # torch.func cannot trace the field (e.g. one that calls torch.autograd itself, as the adjoint's
        # and a CNF's augmented fields do): row by row with autograd gives the same Jacobian
        mode = "loop"
    if mode == "fd":
        return _fd_jacobian(g, ybd, y.shape, d, keep)
    try:
        return _loop_jacobian(g, ybd, y.shape, d, keep)
    except RuntimeError as e:
        if "does not require grad" not in str(e):
            raise
        return _fd_jacobian(g, ybd, y.shape, d, keep)  # the field is not differentiable by autograd here


def _vectorised_jacobian(g, ybd, mode, batch, d) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The rows ("jacrev") or columns ("jacfwd") of every block by one vmapped torch.func call.

    Returns:
        ``(g(ybd), J)``, or None where torch.func cannot trace ``g``: it raised (e.g. "Batching rule not
        implemented for ..."), or, for a field that runs ``torch.autograd.grad(..., is_grads_batched=True)``
        inside, returned tensors still wrapped by that call's own vmap, which fail at their next use far
        from here.
    """
    basis = torch.eye(d, dtype=ybd.dtype, device=ybd.device).reshape((d,) + (1,) * len(batch) + (d,))
    basis = basis.expand((d,) + batch + (d,))
    try:
        if mode == "jacrev":
            out, pullback = vjp(g, ybd)  # type: ignore[misc]  # torch stubs: vjp's return includes the has_aux triple
            jac = vmap(pullback)(basis)[0].movedim(0, -2)  # rows: (D_i, *batch, D_j)
        else:
            out = g(ybd)
            jac = vmap(lambda v: jvp(g, (ybd,), (v,))[1])(basis).movedim(0, -1)  # columns: (D_j, *batch, D_i)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, NotImplementedError):  # what torch.func raises for an operation it cannot batch
        return None
    if _escaped_batching(out) or _escaped_batching(jac):
        return None
    return out, jac


def _escaped_batching(x: torch.Tensor) -> bool:
    """Whether ``x`` is still a batched tensor of the legacy vmap behind ``is_grads_batched``."""
    check = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)
    return bool(check is not None and check(x))


def _loop_jacobian(g, ybd, shape, d, keep):
    """Row by row with torch.autograd (works for any differentiable field).

    With ``keep`` the rows are built with ``create_graph``, so they depend on the parameters (and on
    ``ybd`` where it requires grad); ``g(ybd)`` keeps its graph wherever grad mode is on.
    """
    outer = torch.is_grad_enabled()
    with torch.enable_grad():
        z = ybd if (outer and ybd.requires_grad) else ybd.detach().requires_grad_(True)
        out = g(z)
        rows = []
        for i in range(d):
            cot = torch.zeros_like(out)
            cot[..., i] = 1.0
            (r,) = torch.autograd.grad(out, z, cot, retain_graph=True, create_graph=keep, allow_unused=True)
            rows.append(torch.zeros_like(z) if r is None else r)
    jac = torch.stack(rows, dim=-2)
    if not keep:
        jac = jac.detach()
    if not outer:
        out = out.detach()
    return out.reshape(shape), jac


def _fd_jacobian(g, ybd, shape, d, keep):
    """Forward differences, one evaluation per system column (all samples perturbed at once).

    ``g(ybd)`` is evaluated in the caller's grad mode; with ``keep`` the differences are too, so the
    Jacobian's dependence on the parameters (and on ``ybd``) is that of the difference quotients.

    Reference: Hairer & Wanner, Solving ODEs II, Section IV.8 (increment sqrt(eps * max(1e-5, |y_j|))).
    """
    out = g(ybd)
    with torch.set_grad_enabled(keep):
        y = ybd if keep else ybd.detach()
        base = out if keep else out.detach()
        ya = ybd.detach()
        eps = torch.finfo(ya.dtype).eps
        cols = []
        for j in range(d):
            h = torch.sqrt(eps * torch.clamp(ya[..., j].abs(), min=1e-5))
            h = (ya[..., j] + h) - ya[..., j]  # the increment actually represented
            step = torch.zeros_like(ya)
            step[..., j] = h
            cols.append((g(y + step) - base) / h.unsqueeze(-1))
        jac = torch.stack(cols, dim=-1)
    return out.reshape(shape), jac


def _user_jacobian(f, jac, t, y, batch, d) -> torch.Tensor:
    """A user-supplied ``jac(t, y)`` in the user's time; the solver's field may be time-reversed."""
    if getattr(f, "layout", None) is not None:
        raise TypeError(
            "a user Jacobian is supported for tensor states only; flatten the tuple state or use jacobian='jacrev'."
        )
    time = f.time(t) if hasattr(f, "time") else torch.as_tensor(t, dtype=y.dtype)
    out = jac(time, y)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != batch + (d, d):
        raise TypeError(
            f"jac(t, y) must return a tensor of shape {batch + (d, d)} (the per-sample blocks), got "
            f"{tuple(getattr(out, 'shape', ()))}."
        )
    return -out if getattr(f, "reverse", False) else out


@dataclasses.dataclass(frozen=True)
class TimeRoute:
    """What a solve has learnt so far about taking df/dt of its field exactly.

    Explicit state, not a property of the field: a Rosenbrock solver starts from :data:`UNPROBED` in
    ``init`` and hands the value each df/dt returns to its next state, so what one solve learns never
    reaches another (a restart, e.g. after a ``jump_t``, where the field may be another piece, starts
    afresh).

    Attributes:
        follows: an exact df/dt reached the output (:func:`time_derivative`): later steps take it within
            the Jacobian's own pass (:func:`jacobian_and_time_derivative`).
        unreachable: ``torch.func`` could not give df/dt (it raised, or no derivative reached the
            output): later steps go straight to the difference instead of trying again.
    """

    follows: bool = False
    unreachable: bool = False


#: the route at the start of a solve (or a restart): nothing learnt yet
UNPROBED = TimeRoute()


def jacobian_and_time_derivative(
    f: Callable,
    t: float,
    y: torch.Tensor,
    settings: JacobianSettings,
    how: str = "autodiff",
    route: TimeRoute = UNPROBED,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TimeRoute]:
    """f(t, y), the blocks of df/dy and df/dt at (t, y): what a Rosenbrock step needs, in one pass where possible.

    With ``how="autodiff"`` and the Jacobian modes "jacrev" or "jacfwd", t is one more input of the
    Jacobian's vectorised derivative (the zero seed of :func:`time_derivative` on the term's time):

    - "jacfwd": one more tangent, (0, 1), beside the D columns of the same vmapped ``jvp``;
    - "jacrev" with one system (``batch_dims=0``, a 1-D state, or a batch of one sample): the seed's
      components of the same vmapped ``vjp`` rows, e_i^T df/dt;
    - "jacrev" with a batch of samples: the rows' seed components would be sums over the samples
      (the time is shared), so df/dt takes the two reverse passes of :func:`_exact_time_derivative`
      inside the Jacobian's pass, sharing its evaluation and first reverse pass.

    The first df/dt of a solve (``route`` fresh) takes the separate route of :func:`time_derivative`,
    which checks that a derivative in t reaches the output; the combined pass runs only once
    ``route.follows``, and anything ``torch.func`` cannot follow there falls back to the separate
    route. The other modes ("loop", "fd", a user ``jac``) and ``how="fd"`` keep the separate df/dt
    (exact by two passes, or the forward difference), ``how="fd"`` always the difference.

    Args:
        f: the field in solver form (see :func:`block_jacobian`).
        t: the solver time.
        y: the state.
        settings: the Jacobian settings.
        how: "autodiff" (exact where autograd follows the field, else the difference) or "fd" (the
            forward difference always).
        route: what this solve has learnt about the field so far (:data:`UNPROBED` at its start).

    Returns:
        ``(f(t, y), J, df/dt, route)``: as :func:`block_jacobian`, df/dt in solver time of the state's
        shape, and what the solve knows after this call (for its next one). In grad mode the three
        tensors keep their graph in the state and the parameters.

    Raises:
        ValueError: ``how`` is not one of :data:`TIME_DERIVATIVE_MODES`.

    References: Griewank & Walther, Evaluating Derivatives, 2nd ed., Chapters 3-5 (t as one more
    independent variable of the same forward or reverse sweep); Hairer & Wanner, Solving ODEs II,
    Section IV.7 (the df/dt term of non-autonomous Rosenbrock methods).
    """
    if how not in TIME_DERIVATIVE_MODES:
        raise ValueError(f"time_derivative must be one of {TIME_DERIVATIVE_MODES}, got {how!r}.")
    term = _base_term(f) if how == "autodiff" else None
    mode = settings.jacobian
    if term is not None and route.follows and not callable(mode) and mode in ("jacrev", "jacfwd"):
        batch, d = system_shape(y, settings.batch_dims)
        combined = _combined_time_jacobian(term, f, t, y, mode, batch, d)
        if combined is not None:
            _count(f)
            return (*combined, route)
    f0, jac = block_jacobian(f, t, y, settings)
    if how == "fd":
        return f0, jac, _difference_time_derivative(f, t, y, f0), route
    f_t, route = time_derivative(f, t, y, f0, route)
    return f0, jac, f_t, route


def _seeded(f: Callable, t: float, shape: torch.Size, flat: tuple[int, ...]) -> Callable:
    """``g(z, s) = f(t + s, z)`` with ``z`` of shape ``flat`` read as ``shape``: the seed ``s`` is an
    argument of the evaluation, added to the time tensor the term builds
    (:meth:`~hybrid_node._term.Term.time`), so the one-sided limits are kept."""

    def g(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return f(t, z.reshape(shape), seed=s).reshape(flat)

    return g


def _combined_time_jacobian(
    term: Term, f: Callable, t: float, y: torch.Tensor, mode: str, batch: tuple[int, ...], d: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(f, J, df/dt)`` by one vectorised ``torch.func`` pass in (y, t) (see
    :func:`jacobian_and_time_derivative`), or None where ``torch.func`` cannot run the field."""
    flat = batch + (d,)
    ybd = y.reshape(flat)
    g = _seeded(f, t, y.shape, flat)
    zero = torch.zeros((), dtype=term.t_dtype, device=term.device)
    basis = torch.eye(d, dtype=ybd.dtype, device=ybd.device).reshape((d,) + (1,) * len(batch) + (d,))
    basis = basis.expand((d,) + flat)
    try:
        if mode == "jacfwd":
            out = g(ybd, zero)
            tangents_y = torch.cat([basis, torch.zeros_like(basis[:1])])
            tangents_s = torch.zeros(d + 1, dtype=zero.dtype, device=zero.device)
            tangents_s[d] = 1.0
            cols = vmap(lambda v, w: jvp(g, (ybd, zero), (v, w))[1])(tangents_y, tangents_s)
            jac, f_t = cols[:d].movedim(0, -1), cols[d]
        elif math.prod(batch) == 1:  # one system: the rows' seed components are the components of df/dt
            out, pullback = vjp(g, ybd, zero)  # type: ignore[misc]  # torch stubs: vjp's return includes the has_aux triple
            jac, f_t = vmap(pullback)(basis)
        else:
            out, jac, f_t = _rows_and_double_reverse(g, ybd, zero, basis)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, NotImplementedError):  # what torch.func raises for an operation it cannot batch
        return None
    if any(_escaped_batching(x) for x in (out, jac, f_t)):
        return None
    if mode == "jacrev":
        jac = jac.movedim(0, -2)  # rows: (D_i, *batch, D_j)
    return out.reshape(y.shape), jac, f_t.to(out.dtype).reshape(y.shape)


def _rows_and_double_reverse(g, ybd, zero, basis) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One evaluation of ``g``, the Jacobian's rows by its vmapped pullback and df/ds by the pullback's
    own pullback (the cotangent ``u`` is the outer level's input; the rows do not depend on it)."""

    def seed_component(u: torch.Tensor):
        out, pullback = vjp(g, ybd, zero)  # type: ignore[misc]
        rows = vmap(pullback)(basis)[0]
        return pullback(u)[1], (out, rows)

    _, outer, (out, rows) = vjp(seed_component, torch.zeros_like(ybd), has_aux=True)  # type: ignore[misc]
    return out, rows, outer(torch.ones_like(zero))[0]


def time_derivative(
    f: Callable, t: float, y: torch.Tensor, f0: torch.Tensor, route: TimeRoute = UNPROBED
) -> tuple[torch.Tensor, TimeRoute]:
    """df/dt at (t, y), exact by automatic differentiation where the field allows it, else by a difference.

    Exact: one evaluation of the field and two reverse passes (see :func:`_exact_time_derivative`);
    the time tensor the :class:`~hybrid_node._term.Term` hands to ``func`` gets a zero seed added, so
    its value is unchanged and the one-sided limits at jumps are kept. The result is
    exact to rounding and, in grad mode, keeps its graph in the state and the parameters, so direct
    backpropagation (also twice) and ``torch.autograd.forward_ad`` tangents differentiate a map that
    is smooth in its inputs.

    The forward difference is used instead, automatically, where the exact derivative is out of reach:

    - the field is not a term's (an adjoint's augmented field, which takes its time as a number;
      the restart right after a ``jump_t`` in the adaptive loop);
    - ``torch.func`` cannot differentiate the field twice (it calls numpy on t or
      ``torch.autograd.grad``, as a CNF's exact trace does, or a Function without a double backward:
      it raises);
    - no derivative reaches the output: the field ignores t, or reads it only as a host number
      (``t.item()``, ``float(t)``) or detached. The difference is right there (exactly zero for a
      field that ignores t), where the passes would silently give zero.

    The choice is returned as a :class:`TimeRoute` that the caller hands to its next call, so a field
    ``torch.func`` cannot follow costs one extra evaluation per solve (and per restart); after a
    solve's first exact df/dt the Rosenbrock methods take the later ones within the Jacobian's pass
    (:func:`jacobian_and_time_derivative`). A field that reads t both ways
    (``torch.sin(t) + math.cos(t.item())``) cannot be told apart: its derivative misses the host
    part, so keep the dependence on t in tensor operations.

    The difference's step is sqrt(eps) * max(1, |t|) in the time dtype; its O(step) error enters a
    Rosenbrock stage multiplied by h * gamma_i, below the method's local error. Its rounding, ~eps /
    step relative, leaves ~1e-11 of noise in a float64 solution and its derivatives (the two
    evaluations get cotangents +-1/step, which cancel) that does not vary smoothly with the inputs:
    finite differences with steps under ~1e-4 (gradgradcheck's 1e-6) see it. A solver made with
    ``autonomous=True`` skips df/dt altogether; one made with ``time_derivative="fd"`` always takes
    the difference.

    Args:
        f: the field in solver form ``f(t_float, y)``: a term, possibly seen through a one-sided
            limit (:class:`~hybrid_node._term.LeftLimit`, :class:`~hybrid_node._term.OpenInterval`).
        t: the solver time.
        y: the state.
        f0: ``f(t, y)``, for the difference.
        route: what the solve has learnt about the field so far (:data:`UNPROBED` at its start).

    Returns:
        ``(df/dt, route)``: df/dt at (t, y) in solver time, the state's shape, and what the solve
        knows after this call.

    References: Hairer & Wanner, Solving ODEs II, Section IV.7 (the df/dt term of non-autonomous
    Rosenbrock methods); Griewank & Walther, Evaluating Derivatives, 2nd ed., Chapters 3 and 5 (a
    directional derivative for the cost of a few evaluations); the difference's step balancing
    truncation and rounding is that of Dennis & Schnabel, Numerical Methods for Unconstrained
    Optimization, Section 5.4.
    """
    term = _base_term(f)
    if term is not None and not route.unreachable:
        exact = _exact_time_derivative(term, f, t, y)
        if exact is not None:
            return exact, dataclasses.replace(route, follows=True)
        route = dataclasses.replace(route, unreachable=True)
    return _difference_time_derivative(f, t, y, f0), route


def _base_term(f: Callable) -> Term | None:
    """The :class:`~hybrid_node._term.Term` beneath the one-sided-limit views of ``f``, or None."""
    while isinstance(f, LeftLimit):  # OpenInterval is one too
        f = f._term
    return f if isinstance(f, Term) else None


def _exact_time_derivative(term: Term, f: Callable, t: float, y: torch.Tensor) -> torch.Tensor | None:
    """d/ds f(t + s, y) at s = 0 by two reverse passes of ``torch.func.vjp``, or None where they cannot give it.

    The field is evaluated once with a seed s = 0 added to its time. The pullback ``u -> <u, df/ds>``
    is linear in the cotangent ``u``, so its own pullback at the cotangent 1 is df/ds (Griewank &
    Walther, Evaluating Derivatives, 2nd ed., Chapter 5: the adjoint of an adjoint is a tangent).

    Why not one forward-mode pass (``torch.func.jvp``): torch runs the forward-mode derivatives of
    many operations through Python reference implementations, ~1 ms per operation on the test
    machine (a 64-wide MLP field: 5.6 ms under a jvp, 1.3 ms by these two passes, 0.14 ms for a plain
    evaluation). Why ``torch.func`` and not ``torch.autograd.grad``: autograd walks the whole graph
    behind its outputs, and under direct backpropagation the state's graph reaches back to the start
    of the solve, so each step's df/dt cost more than the last; a ``torch.func`` level sees the
    state as a constant and composes with the outer graph (and with a ``torch.autograd.forward_ad``
    tangent), so df/dt keeps its dependence on the state and the parameters.

    Returns:
        df/dt; or None: ``torch.func`` raised (the field calls numpy on t or ``torch.autograd.grad``,
        or an operation it cannot differentiate twice), or the output does not depend on the seed
        (see :func:`time_derivative`).
    """
    reached: list[bool] = []

    def shifted(seed: torch.Tensor) -> torch.Tensor:
        out = f(t, y, seed=seed)
        reached.append(out.requires_grad)  # at the seed's level: whether the output depends on it
        return out

    zero = torch.zeros((), dtype=term.t_dtype, device=term.device)

    def pullback(u: torch.Tensor) -> torch.Tensor:
        return vjp(shifted, zero)[1](u)[0]

    try:
        f_t = vjp(pullback, torch.zeros_like(y))[1](torch.ones_like(zero))[0]
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, NotImplementedError):  # what torch.func raises for a field it cannot run
        return None
    return f_t if reached and reached[0] else None


def _difference_time_derivative(f: Callable, t: float, y: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    """df/dt by a forward difference with step sqrt(eps) * max(1, |t|) (one evaluation; see
    :func:`time_derivative`)."""
    eps = torch.finfo(getattr(f, "t_dtype", y.dtype)).eps
    delta = math.sqrt(eps) * max(1.0, abs(t))
    t1 = t + delta
    return (f(t1, y) - f0) / (t1 - t)


@dataclasses.dataclass(frozen=True)
class Factorization:
    """LU factors of the blocks of ``I - scale * J`` (for one value of ``scale``)."""

    lu: torch.Tensor
    pivots: torch.Tensor
    scale: float
    shape: torch.Size

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """Solve ``(I - scale J) x = rhs`` blockwise; rhs has the state's shape."""
        b = rhs.reshape(self.lu.shape[:-1] + (1,))
        return torch.linalg.lu_solve(self.lu, self.pivots, b).reshape(self.shape)


def factorize(jac: torch.Tensor, scale: float, shape: torch.Size) -> Factorization:
    """LU-factorise the blocks of ``I - scale * J``.

    A singular matrix is not checked here (that would synchronise with the device); it yields
    non-finite stages, which the step reports as a non-finite error so the step is rejected.
    """
    d = jac.shape[-1]
    eye = torch.eye(d, dtype=jac.dtype, device=jac.device)
    lu, piv, _ = torch.linalg.lu_factor_ex(eye - scale * jac)
    return Factorization(lu, piv, scale, shape)
