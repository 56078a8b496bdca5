"""What both adjoint methods share: the parameters, the backward solve's settings, the augmented
field's term and error norm, and the loop that runs the backward solve.

Time conventions. The forward loop runs in solver time ``s`` (increasing; ``s = -t`` for solves
backwards in time). The backward solve runs in ``r = -s``, so it too runs with increasing time and
reuses the forward loops unchanged. An augmented state is one flat vector of channels, e.g.
``[z, a, q]``: state, adjoint ``a = dL/dz`` and the accumulated parameter gradient ``q``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .._errors import SolverError, Status
from .._problem import Problem, real_dtype, refuse_meta, warn_unresolvable_tolerance
from .._problem import _tolerance as state_tolerance
from .._registry import build_solver
from .._solution import Stats
from .._term import CALLBACK_NAMES, LeftLimit, StepCallbacks, solver_time_field
from ..controllers import ConstantStepSize, PIDController
from ..loop import warn_unsupported_callbacks
from ..loop.device import Impulses
from ..loop.host import Integration, integrate_adaptive, integrate_fixed
from ..loop.whole_impulses import applies as whole_impulses_apply
from ..loop.whole_impulses import integrate_whole_impulses
from ..solvers.base import ExternalSolver

if TYPE_CHECKING:
    from ..loop.compiled_step import PureField

#: relative spacing below which a grid point is merged into a required time
_MERGE = 1e-9


def resolve_params(func: Callable, adjoint_params: Sequence[torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
    """The tensors the adjoint differentiates: ``adjoint_params`` or ``func.parameters()``.

    Only tensors that require gradients are kept, each once.

    Raises:
        ValueError: ``func`` is not an ``nn.Module`` and no ``adjoint_params`` were given, or one of
            ``adjoint_params`` is on the meta device.
        TypeError: ``adjoint_params`` is not a sequence of tensors (:func:`param_tensors`).
    """
    if adjoint_params is None:
        if not isinstance(func, torch.nn.Module):
            raise ValueError(
                "func is not an nn.Module, so the adjoint cannot find its parameters: pass "
                "adjoint_params=(...) with the tensors to differentiate (an empty tuple if none)."
            )
        params: tuple[torch.Tensor, ...] = tuple(func.parameters())
    else:
        params = param_tensors(adjoint_params)
        for i, p in enumerate(params):
            refuse_meta(f"adjoint_params[{i}]", p)  # else "Tensor on device meta is not on the expected device"
    seen, out = set(), []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return tuple(out)


def param_tensors(adjoint_params: Any) -> tuple[torch.Tensor, ...]:
    """``adjoint_params`` (of an ODE or SDE adjoint) as a tuple of tensors, or a refusal saying what to pass.

    Args:
        adjoint_params: what the caller gave: a tuple, list or other iterable of tensors.

    Returns:
        The tensors, in the order given.

    Raises:
        TypeError: a single tensor (iterating it would differentiate its rows, or fail for a 0-d one), a
            dict (iterating it gives its keys), something that is no iterable, or an entry that is no tensor.
    """
    if isinstance(adjoint_params, torch.Tensor):
        raise TypeError(
            "adjoint_params must be a tuple of tensors, e.g. (w,) or tuple(model.parameters()); got a single tensor."
        )
    if isinstance(adjoint_params, Mapping):
        raise TypeError("adjoint_params must be a tuple of tensors, got a dict; pass tuple(adjoint_params.values()).")
    try:
        params = tuple(adjoint_params)
    except TypeError as e:
        raise TypeError(f"adjoint_params must be a sequence of tensors, got {type(adjoint_params).__name__}.") from e
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"adjoint_params[{i}] is a {type(p).__name__}; every entry must be a tensor.")
    return params


def user_field(problem: Problem, term, s: float, y: torch.Tensor) -> torch.Tensor:
    """dy/dt in the user's time at solver time ``s`` (the term returns the solver-time field)."""
    f = term(s, y)
    return -f if problem.reverse else f


class AugmentedTerm:
    """A field on the flat augmented state in backward time ``r``, with the interface the loops use.

    Args:
        field: ``field(r, x) -> dx/dr``; called as ``field(r, x, perturb)`` when an evaluation must
            take a one-sided limit (``perturb`` = +1/-1 in r, see :class:`~hybrid_node._term.Term`).
        problem: the forward problem (for error messages in the user's time).
        unpack: the augmented state as the user's ``*_adjoint`` step callbacks receive it (a tuple
            of the channels); None: the flat state.
    """

    def __init__(
        self,
        field: Callable[..., torch.Tensor],
        problem: Problem,
        unpack: Callable[[torch.Tensor], object] | None = None,
    ):
        self.field = field
        # the loops report failures at -r when ``reverse``; user time is t = -r forwards, r backwards
        self.reverse = not problem.reverse
        self.nfe = 0
        self.n_jacobian = 0
        self.n_switches = 0  # counted by the stiffness-switching methods, as on Term
        self.pure_field: PureField | None = None  # a traceable ``field`` for compiled steps, if one exists
        # torchdiffeq calls the field's callback_step_adjoint etc. from the backward solve
        found = StepCallbacks(
            problem.func,
            "_adjoint",
            lambda r: -r if self.reverse else r,
            unpack if unpack is not None else (lambda x: x),
            problem.y0.device,
        )
        self.callbacks = found if found else None

    def time(self, r: float, perturb: int = 0) -> torch.Tensor:
        return torch.tensor(-r if self.reverse else r, dtype=torch.float64)

    def __call__(self, r: float, x: torch.Tensor, perturb: int = 0) -> torch.Tensor:
        self.nfe += 1
        if perturb:
            # the user's field is evaluated one float off r (the backward solve honours perturb too)
            return self.field(r, x, perturb)
        return self.field(r, x)

    def left_limit(self, end: float) -> LeftLimit:
        """The field for a step that ends at a jump at ``end``: its left limit there."""
        return LeftLimit(self, end)  # type: ignore[arg-type]  # duck-typed: a term's interface


def norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an error norm of a ``dtype`` state is computed in: its real dtype, float32 for half
    precision, whose squares overflow from 256 on (as :func:`~hybrid_node.controllers.rms_norm`).

    Args:
        dtype: the state's dtype.

    Returns:
        A real floating dtype.
    """
    real = real_dtype(dtype)
    return torch.float32 if real in (torch.float16, torch.bfloat16) else real


class GroupRMS:
    """Max over channel groups of the RMS within each group (one reduction, no Python loop per group).

    Groups are the state tensors of each state channel and each parameter; ``seminorm`` keeps only
    the state channels (Kidger, Chen, Lyons, "'Hey, that's not an ODE': Faster ODE Adjoints via
    Seminorms", ICML 2021).

    Args:
        sizes: the number of elements of each group, in order.
        like: a tensor of the state's dtype and device.
        counts: the number of values each group's mean is over (default: ``sizes``); a complex
            parameter in a real augmented state takes two elements per value (:func:`channel_part`),
            and its RMS is over magnitudes, as torchdiffeq's norm of the parameter's own gradient.
    """

    def __init__(self, sizes: Sequence[int], like: torch.Tensor, counts: Sequence[int] | None = None):
        sizes = [n for n in sizes]
        counts = sizes if counts is None else list(counts)
        self.n = sum(sizes)
        ids = torch.repeat_interleave(
            torch.arange(len(sizes), device=like.device), torch.tensor(sizes, device=like.device)
        )
        self.ids = ids
        # real: a complex state's error is measured on magnitudes, as the forward solve's
        self.counts = torch.tensor([max(n, 1) for n in counts], dtype=norm_dtype(like.dtype), device=like.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        head = x[: self.n].reshape(-1)
        sq = (head.abs() if head.is_complex() else head).to(self.counts.dtype).pow(2)
        sums = torch.zeros_like(self.counts).index_add_(0, self.ids, sq)
        return (sums / self.counts).sqrt().max()


@dataclasses.dataclass(frozen=True)
class BackwardPlan:
    """Settings of one backward solve, derived once from the problem and the sensitivity settings.

    Attributes:
        solver, controller: the backward solver and controller (the forward ones unless the
            sensitivity names others).
        rtol, atol: backward tolerances (floats or tensors on the forward state).
        seminorm: leave the parameter channels out of the error norm.
        user_norm: a norm on the flat augmented state from the sensitivity's ``options``, else None.
        same_as_forward: the forward controller is reused (its grid, for fixed steps).
        tuple_norm: the sensitivity's own callable norm, called as torchdiffeq calls
            ``adjoint_options["norm"]``: on the tuple ``(t, *y, *adj_y, *adj_params)``; else None.
        jump_t: the jump times (user times) named in the sensitivity's own ``options``; None: the
            forward solve's (the backward solve integrates the same field, so it jumps at the same
            times; torchdiffeq copies the forward options, ``jump_t`` included, to the backward solve).
    """

    solver: Any
    controller: Any
    rtol: Any
    atol: Any
    seminorm: bool
    user_norm: Callable | None
    same_as_forward: bool
    tuple_norm: Callable | None = None
    jump_t: tuple[float, ...] | None = None


def backward_plan(problem: Problem, sensitivity) -> BackwardPlan:
    """Resolve the backward solve's solver, controller and tolerances from the sensitivity settings.

    Raises:
        ValueError: a tensor tolerance of the sensitivity that does not fit the state, a norm named
            inside its ``options``, or a partitioned (symplectic) backward method.
    """

    def pick(value, forward, default):
        if value is not None:
            return value
        return forward if forward is not None else default

    def own(value, name: str):
        # a tensor is read as the forward reads one: on a tuple state, per tensor or per joined element
        if not isinstance(value, torch.Tensor):
            return value
        return state_tolerance(value, problem.layout, problem.y0, f"the adjoint's {name}")

    rtol = pick(own(sensitivity.rtol, "rtol"), problem.rtol, PIDController.rtol)
    atol = pick(own(sensitivity.atol, "atol"), problem.atol, PIDController.atol)
    refuse_zero_tolerances(rtol, atol)  # one of them may be the forward's 0
    if sensitivity.rtol is not None or sensitivity.atol is not None:  # the forward's were looked at by the solve
        warn_unresolvable_tolerance(rtol, atol, problem.y0, "adjoint_")
    seminorm = isinstance(sensitivity.norm, str) and sensitivity.norm == "seminorm"
    tuple_norm = sensitivity.norm if callable(sensitivity.norm) else None
    same_method = sensitivity.method is None or sensitivity.method == problem.solver.name
    if same_method and sensitivity.options is None:
        # torchdiffeq's rule: a backward solve by the forward's method, without options of its own,
        # takes the forward's options (its step_size, first_step, ...), so naming the method changes nothing
        _refuse_partitioned(problem.solver)
        # the method's own use of the tolerances (a multistep method's step and order choice, a Newton
        # test) is the backward solve's: with the forward's, adams with adjoint_rtol 1e-9 after a forward
        # at 1e-6 planned steps for 1e-6 that the loop then rejected (33,100 evaluations against 840)
        solver = _with_tolerances(problem.solver, rtol, atol)
        return BackwardPlan(solver, problem.controller, rtol, atol, seminorm, None, True, tuple_norm)
    method = sensitivity.method if sensitivity.method is not None else problem.solver.name
    options = dict(sensitivity.options or {})
    user_norm = options.get("norm") if callable(options.get("norm")) else None
    if isinstance(options.get("norm"), str):
        raise ValueError(
            "set the backward norm with the sensitivity's norm='seminorm' (or adjoint_options="
            "{'norm': 'seminorm'} in odeint_adjoint), not inside its options."
        )
    jump_t = "jump_t" in options
    solver, controller, extras = build_solver(
        method,
        options,
        rtol if isinstance(rtol, float) else PIDController.rtol,
        atol if isinstance(atol, float) else PIDController.atol,
    )
    jumps = tuple(extras["jump_t"]) if jump_t else None
    solver = _with_tolerances(solver, rtol, atol)  # tensor tolerances too (build_solver takes floats)
    _refuse_partitioned(solver)
    return BackwardPlan(solver, controller, rtol, atol, seminorm, user_norm, False, tuple_norm, jumps)


def refuse_zero_tolerances(rtol, atol) -> None:
    """Refuse backward tolerances that are both 0 for some element; either one 0 alone is valid.

    The backward solve measures each error against ``atol + rtol * |y|``, as the forward one does: with
    both 0 no step passes (torchdiffeq's backward solve stops with "underflow in dt"). Tensors that do
    not broadcast against each other are left to the state's check, which names their shapes.

    Args:
        rtol, atol: the backward tolerances (numbers or tensors).

    Raises:
        ValueError: rtol + atol is 0 somewhere, naming the settings to change.
    """
    if isinstance(rtol, (int, float)) and isinstance(atol, (int, float)):
        zero = rtol + atol == 0
    else:
        try:
            total = torch.as_tensor(rtol).detach() + torch.as_tensor(atol).detach()
        except RuntimeError:
            return
        zero = bool((total == 0).any())
    if zero:
        raise ValueError(
            "the adjoint's rtol and atol are both 0 (for some state elements), which is not a valid tolerance: "
            "the backward solve measures each step's error against atol + rtol * |y|, so no step could pass. "
            "Give a positive adjoint_rtol or adjoint_atol (a tolerance left out is the forward solve's)."
        )


def _with_tolerances(solver, rtol, atol):
    """``solver`` with the backward solve's tolerances where it uses them itself (a scipy method has them
    from the solve's call instead)."""
    return solver if isinstance(solver, ExternalSolver) else solver.with_tolerances(rtol, atol)


def _refuse_partitioned(solver) -> None:
    """Refuse a partitioned (symplectic) backward method before the forward solve runs.

    Its steps need a state ``(q, p)``, and the augmented backward state (the state, its adjoint and the
    parameters' adjoint) is one flat vector: without this check the forward solve ran and the backward
    pass stopped with the method's "needs a tuple state y0 = (q, p)" about a state the user never passed.

    Raises:
        ValueError: ``solver`` is partitioned, naming a backward method to pass instead.
    """
    if getattr(solver, "partitioned", False):
        raise ValueError(
            f"the adjoint's backward solve cannot use the partitioned (symplectic) method {solver.name!r}: its "
            "augmented state is not a pair (q, p). Name a non-partitioned backward method, e.g. "
            "odeint_adjoint(..., adjoint_method='rk4', adjoint_options={'step_size': h}) or "
            "BacksolveAdjoint(method='rk4', options={'step_size': h}); or differentiate the symplectic solve "
            "directly with odeint (exact gradients of its steps)."
        )


def backward_jumps(problem: Problem, plan: BackwardPlan) -> tuple[float, ...]:
    """The jump times of the backward solve, in its time ``r = -s`` (``s`` the forward solver time).

    The backward solve must restart at the jumps too: a step across a discontinuity of the field is
    rejected again and again until it is tiny (the error estimate sees the jump), so restarting there,
    as the forward solve does, takes fewer evaluations and gives the one-sided derivatives (torchdiffeq's
    adjoint flips ``jump_t`` into its backward solve for the same reason).
    """
    if plan.jump_t is None:
        jumps: Sequence[float] = problem.jump_t
    else:
        sgn = problem.direction
        jumps = [sgn * x for x in plan.jump_t]
    return tuple(sorted(-s for s in jumps))


def channel_tolerance(tol, n_channels: int, state_like: torch.Tensor, n_params: int):
    """A tolerance on the augmented state: floats pass through; a per-component tensor is repeated for
    each state channel, and the parameter channel gets its smallest value."""
    if isinstance(tol, (int, float)):
        return float(tol)
    # a real tensor for a complex state too (its error test is on magnitudes)
    dtype = real_dtype(state_like.dtype)
    tol = torch.as_tensor(tol, device=state_like.device)
    tol = (tol.real if tol.is_complex() else tol).to(dtype)
    per_state = tol.expand(state_like.shape).reshape(-1)
    q = torch.full((n_params,), float(tol.min()), dtype=dtype, device=state_like.device)
    return torch.cat([per_state] * n_channels + [q])


def augmented_norm(problem: Problem, plan: BackwardPlan, n_channels: int, params: Sequence[torch.Tensor]):
    """The backward error norm: a user norm, else max of group RMS (seminorm: state channels only)."""
    if plan.user_norm is not None:
        return plan.user_norm
    if plan.tuple_norm is not None:
        return _tuple_norm(problem, plan.tuple_norm, n_channels, params)
    state_sizes = problem.layout.sizes if problem.layout is not None else [problem.y0.numel()]
    groups = [(n, n) for _ in range(n_channels) for n in state_sizes]
    if not plan.seminorm:
        groups += [(channel_size(p, problem.y0.dtype), p.numel()) for p in params]
    groups = [(n, c) for n, c in groups if n > 0]
    return GroupRMS([n for n, _ in groups], problem.y0, [c for _, c in groups])


def _tuple_norm(
    problem: Problem, norm: Callable, n_channels: int, params: Sequence[torch.Tensor], unpack_tuple: bool = True
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A user norm on torchdiffeq's augmented tuple ``(t, *y, *adj_y, *adj_params)``, as a norm on
    the flat augmented state.

    The state channels are unpacked to the user's layout (each tensor of a tuple state on its own;
    with ``unpack_tuple=False`` a tuple state stays one flat tensor, torchdiffeq's internal layout),
    the parameter channel to the parameters' shapes. hybrid_node's adjoint carries no time channel
    (it computes dL/dt separately), so ``t`` is a 0-d zero; the interpolating adjoint carries no
    state channel, so ``y`` is left out there.
    """
    n = problem.y0.numel()
    layout, shape = problem.layout, problem.y0.shape

    def unpack(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if layout is None:
            return (v.reshape(shape),)
        return layout.unflatten(v) if unpack_tuple else (v,)

    def flat_norm(x: torch.Tensor) -> torch.Tensor:
        parts: list[torch.Tensor] = [torch.zeros((), dtype=x.dtype, device=x.device)]
        for i in range(n_channels):
            parts.extend(unpack(x[i * n : (i + 1) * n]))
        parts.extend(split_params(x[n_channels * n :], params))
        return torch.as_tensor(norm(tuple(parts)))

    return flat_norm


class DefaultTupleNorm:
    """The default backward norm on torchdiffeq's tuple ``(t, *channels, *adj_params)``: the max of
    ``|t|`` and the RMS of every state tensor in every channel and (unless ``seminorm``) of every
    parameter gradient -- the same value as :class:`GroupRMS` on the flat augmented state.

    Each channel is a state in torchdiffeq's internal layout (a tuple state as one flat tensor).
    """

    def __init__(self, state_sizes: Sequence[int], n_channels: int, seminorm: bool):
        self.state_sizes = list(state_sizes)
        self.n_channels = n_channels
        self.seminorm = seminorm

    def __call__(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        t, channels, grads = parts[0], parts[1 : 1 + self.n_channels], parts[1 + self.n_channels :]
        groups = [g for c in channels for g in c.reshape(-1).split(self.state_sizes)]
        if not self.seminorm:
            groups += [g.reshape(-1) for g in grads]
        wide = norm_dtype(parts[1].dtype)
        rms = [g.abs().to(wide).pow(2).mean().sqrt() for g in groups if g.numel() > 0]  # magnitudes: complex states
        return torch.stack([t.abs().to(wide), *rms]).max()


class NormOption:
    """The backward norm a user may replace after the forward solve, as torchdiffeq allows through
    ``ys.grad_fn.adjoint_options["norm"]`` (:attr:`options` is that dict).

    A norm left in place is used as configured; a replaced one is called on torchdiffeq's internal
    tuple ``(t, y, adj_y, *adj_params)`` (a tuple state flat).
    """

    def __init__(self, problem: Problem, plan: BackwardPlan, n_channels: int, params: Sequence[torch.Tensor]):
        self.problem, self.plan, self.n_channels, self.params = problem, plan, n_channels, params
        state_sizes = problem.layout.sizes if problem.layout is not None else [problem.y0.numel()]
        self.initial: Callable = (
            plan.tuple_norm or plan.user_norm or DefaultTupleNorm(state_sizes, n_channels, plan.seminorm)
        )
        self.options: dict[str, Any] = {"norm": self.initial}

    def resolve(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The norm on the flat augmented state for the backward solve."""
        chosen = self.options["norm"]
        if chosen is self.initial:
            return augmented_norm(self.problem, self.plan, self.n_channels, self.params)
        return _tuple_norm(self.problem, chosen, self.n_channels, self.params, unpack_tuple=False)


def merge_times(points: Sequence[float], required: Sequence[float]) -> list[float]:
    """Sorted union of grid points and required times, dropping grid points that nearly coincide with a
    required time (they would make a step of rounding-error size)."""
    required = sorted(set(required))
    lo, hi = required[0], required[-1]
    scale = max(1.0, abs(lo), abs(hi))
    out = list(required)
    for p in points:
        if lo < p < hi and all(abs(p - q) > _MERGE * scale for q in required):
            out.append(p)
    return sorted(set(out))


def forward_grid(problem: Problem, ts: Sequence[float]) -> list[float]:
    """The forward fixed-step grid over the solver times ``ts`` (host floats)."""
    ctrl = problem.controller
    return ctrl.grid(problem.func, problem.y0, torch.tensor(ts, dtype=torch.float64), problem.direction)


def backward_grid(
    problem: Problem, plan: BackwardPlan, ts: Sequence[float], required_r: Sequence[float]
) -> list[float]:
    """The backward fixed-step grid in r: the mirrored forward grid (or the backward controller's own
    grid) merged with the times where the backward solve must stop."""
    if plan.same_as_forward and getattr(plan.controller, "grid_constructor", None) is not None:
        points = _constructed_backward_grid(problem, plan.controller, ts)
    elif plan.same_as_forward:
        points = [-g for g in reversed(forward_grid(problem, ts))]
    else:
        points = plan.controller.grid(None, None, torch.tensor([-ts[-1], -ts[0]], dtype=torch.float64))
    return merge_times(points, required_r)


def _constructed_backward_grid(problem: Problem, controller: ConstantStepSize, ts: Sequence[float]) -> list[float]:
    """The backward grid (in r) from the user's ``grid_constructor``, called as torchdiffeq calls it in
    the adjoint pass: once per output interval, last first, with that interval's two times in the
    backward direction (``t[i - 1:i + 1].flip(0)``, user time), so each call returns a grid from t[i] to
    t[i - 1]; the grids are joined at the output times.

    Each interval is the controller's own grid over backward times: r = -s runs from -s_i to -s_(i-1),
    and the user's time is ``-problem.direction`` times r.

    Raises:
        ValueError: a grid does not run monotonically from t[i] to t[i - 1].
    """
    points: list[float] = []
    for lo, hi in zip(reversed(ts[:-1]), reversed(ts[1:])):
        r = torch.tensor([-hi, -lo], dtype=torch.float64)
        try:
            piece = controller.grid(problem.func, problem.y0, r, -problem.direction)
        except ValueError as err:
            raise ValueError(
                "in the adjoint pass grid_constructor is called once per output interval with its two "
                "times backwards (t[i - 1:i + 1].flip(0), as torchdiffeq does) and must return a "
                "monotonic grid from t[i] to t[i - 1]."
            ) from err
        points.extend(piece if not points else piece[1:])
    return points


def run_backward(
    problem: Problem,
    plan: BackwardPlan,
    term: AugmentedTerm,
    x0: torch.Tensor,
    rs: Sequence[float],
    *,
    rtol,
    atol,
    norm,
    at_output: Callable,
    stops: Sequence[float] = (),
    ts: Sequence[float] = (),
    impulses: Impulses | None = None,
) -> Integration:
    """Solve the augmented system over the increasing backward times ``rs`` in one pass.

    Step-size control runs on through the output times: a step ends exactly at each of them, the
    cotangent is added there (``at_output``) and only the solver's derivative is re-evaluated.

    Args:
        problem, plan: forward problem and backward settings.
        term: the augmented field.
        x0: augmented state at rs[0].
        rs: backward output times (the mirrored forward output times).
        rtol, atol, norm: tolerances and error norm on the augmented state (adaptive solvers).
        at_output: impulse at the inner times of ``rs`` (adds the cotangents there).
        stops: further times where steps must end (checkpoint boundaries).
        ts: the forward solver times (for the mirrored fixed grid).
        impulses: ``at_output`` as tensors, for a backward solve run as one compiled graph (optional).

    Returns:
        The loop's Integration (the state at rs[-1] is its last output).

    Raises:
        SolverError: the backward solve failed (adaptive steps), or its state became NaN or infinite.
    """
    if isinstance(plan.solver, ExternalSolver):
        warn_unsupported_callbacks(problem.func, plan.solver.name, frozenset(), "_adjoint")
        return _check_finite(problem, _integrate_external(plan.solver, term, x0, rs, rtol, atol, at_output), rs)
    fixed = isinstance(plan.controller, ConstantStepSize)
    warn_unsupported_callbacks(
        problem.func, plan.solver.name, frozenset({"callback_step"} if fixed else CALLBACK_NAMES), "_adjoint"
    )
    if fixed:
        grid = backward_grid(problem, plan, ts, list(rs) + list(stops))
        # the backward steps land on the jumps too and restart there, as the forward steps do: a step
        # across one is of first order whatever the method
        jumps = backward_jumps(problem, plan)
        result = integrate_fixed(
            term,
            plan.solver,
            plan.controller,
            grid,
            x0,
            rs,
            jump_t=jumps,
            times_dtype=problem.t.dtype,
            at_output=at_output,
        )
        return _check_finite(problem, result, rs)
    try:
        return _integrate_adaptive(problem, plan, term, x0, rs, rtol, atol, norm, at_output, stops, impulses)
    except SolverError as err:
        raise in_backward(err) from err


def in_backward(err: SolverError) -> SolverError:
    """``err``, a failure of a backward solve, saying so: the inner detail (which step, which sample)
    and a known cause stay in the message.

    Args:
        err: the backward solve's failure.

    Returns:
        The error to raise from it.
    """
    where = "in the backward (adjoint) solve of the gradient" + (f": {err.detail}" if err.detail else "")
    return SolverError(err.status, err.t, where, err.cause)


def _integrate_adaptive(
    problem: Problem,
    plan: BackwardPlan,
    term: AugmentedTerm,
    x0: torch.Tensor,
    rs: Sequence[float],
    rtol,
    atol,
    norm,
    at_output: Callable,
    stops: Sequence[float],
    impulses: Impulses | None,
) -> Integration:
    """:func:`run_backward` with step-size control (arguments as there)."""
    jumps = backward_jumps(problem, plan)
    if impulses is not None and whole_impulses_apply(plan.solver, plan.controller, jumps, stops):
        # compile=True: the whole backward solve is one call of the whole-solve graph
        whole = integrate_whole_impulses(
            term, plan.solver, plan.controller, x0, rs, rtol=rtol, atol=atol, norm=norm, impulses=impulses
        )
        if whole is not None:
            return whole
    return integrate_adaptive(
        term,
        plan.solver,
        plan.controller,
        x0,
        rs,
        rtol=rtol,
        atol=atol,
        norm=norm,
        jump_t=jumps,
        step_t=tuple(stops),
        at_output=at_output,
        throw=True,
    )


def _check_finite(problem: Problem, result: Integration, rs: Sequence[float]) -> Integration:
    """``result`` of a backward solve without step-size control, once its outputs are found finite.

    Fixed steps and external solvers have no rejected step to stop at a NaN, which then ran on into
    every gradient; the forward fixed-step solve checks its outputs the same way.

    Raises:
        SolverError: an output is NaN or infinite (reported at the first such one, in the user's time).
    """
    finite = torch.isfinite(torch.stack([x.reshape(-1) for x in result.ys])).all(dim=1)
    if bool(finite.all()):
        return result
    j = int((~finite).nonzero()[0])
    sgn = 1.0 if problem.reverse else -1.0  # user time from backward time r = -s
    last = f"; the last finite one is at t={sgn * rs[j - 1]:.6g}" if j > 0 else ""
    raise SolverError(
        Status.NONFINITE,
        sgn * rs[j],
        "in the backward (adjoint) solve of the gradient: the adjoint or the state it reconstructs is not "
        f"finite at this output{last}; check the derivatives of the field there",
    )


def _integrate_external(
    solver: ExternalSolver, term: AugmentedTerm, x0: torch.Tensor, rs: Sequence[float], rtol, atol, at_output: Callable
) -> Integration:
    """The backward solve by a solver that runs its own loop (scipy), one output interval at a time.

    The black-box adjoint of Chen et al. (2018): the augmented system is just another ODE to the
    solver, so no derivative of the solver itself is needed. The cotangents are added between the
    intervals (``at_output``); scipy restarts there, as torchdiffeq's adjoint restarts per interval.
    """
    x = x0
    ys = [x0]
    for j in range(len(rs) - 1):
        x = solver.integrate(term, x, [rs[j], rs[j + 1]], rtol, atol)[-1]
        if j + 1 < len(rs) - 1:
            x = at_output(j + 1, x)
        ys.append(x)
    return Integration(ys, Stats(nfe=term.nfe), Status.SUCCESS, rs[-1])


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on the gradients a custom backward pass returns; differentiating them raises ``message``.

    Its inputs after the first ``n`` only connect the node to what those gradients depend on, so that
    every path of a second derivative through them reaches it.
    """

    @staticmethod
    def forward(ctx, message: str, n: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.message = message
        return tuple(x.clone() for x in tensors[:n])

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        raise RuntimeError(ctx.message)


def first_order_only(
    message: str, grads: Sequence[torch.Tensor | None], depends_on: Sequence[torch.Tensor | None]
) -> list[torch.Tensor | None]:
    """The gradients a custom backward pass returns, refusing to be differentiated again.

    The backward passes here compute without a graph, so under ``create_graph=True`` their gradients
    looked constant to autograd: a second derivative through them came out silently zero, or with
    only the terms of other paths. ``torch.autograd.function.once_differentiable`` does not prevent
    that: its error node hangs off detached copies, which ``torch.autograd.grad`` never reaches.
    Here the gradients pass through a node joined to ``depends_on`` (and to the gradients' own
    graph), whose backward raises ``message``.

    Args:
        message: the error, naming what to use instead.
        grads: the gradients the backward pass returns (None where an input gets none).
        depends_on: the tensors they depend on (the Function's inputs and ``grad_outputs``).

    Returns:
        ``grads`` unchanged when no graph is being recorded (no ``create_graph``) or nothing requires
        grad; else copies whose derivative raises.
    """
    if not torch.is_grad_enabled():
        return list(grads)
    links = [x for x in depends_on if isinstance(x, torch.Tensor) and x.requires_grad]
    present = [g for g in grads if g is not None]
    if not present or not (links or any(g.requires_grad for g in present)):
        return list(grads)
    guarded = iter(_FirstOrderOnly.apply(message, len(present), *present, *links))
    return [None if g is None else next(guarded) for g in grads]


def no_second_derivative(method: str) -> str:
    """The error of :func:`first_order_only` for a gradient method's backward pass."""
    return (
        f"{method} computes first derivatives only: its backward pass runs without a graph, so the gradient "
        "it returns cannot be differentiated again (create_graph=True, double backward, Hessians). Use "
        "hn.DirectBackprop() (hn.odeint with a torch method such as dopri5; scipy_solver is first-order only) for "
        "higher derivatives."
    )


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The real inner product of two tensors: ``sum(a * b)``, and ``Re(sum(conj(a) * b))`` for complex ones.

    For a gradient ``a`` of a real loss in torch's convention (``dL/dRe + i dL/dIm``) and a velocity
    ``b``, that is the rate of change of the loss.
    """
    a, b = a.reshape(-1), b.reshape(-1)
    if a.is_complex() or b.is_complex():
        return (a.conj() * b).real.sum()
    return (a * b).sum()


def vjp(g: torch.Tensor, inputs: Sequence[torch.Tensor], cotangent: torch.Tensor) -> list[torch.Tensor]:
    """Vector-Jacobian products of ``g`` with ``cotangent`` for every input (zeros where unused)."""
    if not g.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    # the gradient of the scalar <g, cotangent>: the same products, but autograd.grad gets no
    # grad_outputs, whose shape check costs a little per call and imports sympy (~2 s) on the first.
    # For a complex g the real inner product Re(sum(g * conj(cotangent))) gives what grad_outputs=cotangent
    # gives, torch's convention (the gradient of a real loss is dL/dRe + i dL/dIm)
    inner = (g * cotangent.conj()).real if g.is_complex() else g * cotangent
    # retain_graph: a func that uses a tensor computed from an adjoint parameter before the solve (w2 = 2 * w,
    # adjoint_params=(w,)) reaches w through that outer graph on every call; freed after the first, the next
    # failed with "Trying to backward through the graph a second time" (torchdiffeq retains it too). The
    # graph made inside this call is freed anyway when g goes out of scope.
    grads = torch.autograd.grad(torch.sum(inner), inputs, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(x) if gr is None else gr for x, gr in zip(inputs, grads)]


def channel_part(g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A parameter's gradient as its flat part of an augmented state of ``dtype``.

    A complex gradient in a real augmented state is stored as its real and imaginary parts
    (``torch.view_as_real``): cast to the real dtype it lost its imaginary part, and with it half
    of a complex parameter's gradient. A real gradient in a complex state has a zero imaginary part.

    Args:
        g: the gradient (a parameter's shape and dtype).
        dtype: the augmented state's dtype.

    Returns:
        A flat tensor of ``dtype``: ``channel_size(g, dtype)`` elements.
    """
    if g.is_complex() and not dtype.is_complex:
        return torch.view_as_real(g).reshape(-1).to(dtype)
    return g.reshape(-1).to(dtype)


def channel_size(p: torch.Tensor, dtype: torch.dtype) -> int:
    """The number of elements of parameter ``p``'s part of an augmented state of ``dtype``
    (:func:`channel_part`)."""
    return p.numel() * (2 if p.is_complex() and not dtype.is_complex else 1)


def flat_cat(tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The parameter channel of an augmented state of ``dtype`` (:func:`channel_part` of each tensor)."""
    return torch.cat([channel_part(t, dtype) for t in tensors]) if tensors else torch.zeros(0, dtype=dtype)


def split_params(q: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The flat parameter channel back to the parameters' shapes and dtypes (the channel is complex
    for a complex state; a real parameter's part of it has a zero imaginary part)."""
    out, start = [], 0
    for p in params:
        n = channel_size(p, q.dtype)
        part = q[start : start + n]
        if p.is_complex() and not part.is_complex():  # real and imaginary parts (channel_part)
            part = torch.complex(part[0::2], part[1::2])  # not view_as_complex: q's slice may start at odd offsets
        elif part.is_complex() and not p.is_complex():
            part = part.real
        out.append(part.reshape(p.shape).to(p.dtype))
        start += n
    return out


def reached_outputs(integration: Integration, ys: torch.Tensor) -> int:
    """How many leading outputs the forward solve reached: all, unless it failed under ``throw=False``.

    A failed solve pads the outputs it did not reach with NaN. The backward pass starts from the last
    reached one and drops the cotangents of the padding, as direct backpropagation does (the padding
    is a constant there); a backward solve started from the NaN state would fail on it instead.

    Args:
        integration: the forward solve's result.
        ys: its stacked outputs.

    Returns:
        The number of outputs, from the first, that the solve reached.
    """
    if integration.status in (Status.SUCCESS, Status.EVENT):
        return len(ys)
    finite = torch.isfinite(ys.reshape(len(ys), -1)).all(dim=1)
    return int(finite.long().cumprod(0).sum())


def time_gradients(
    problem: Problem, fterm, ts: Sequence[float], ys: torch.Tensor, grad_ys: torch.Tensor, a0: torch.Tensor, event: bool
) -> torch.Tensor:
    """dL/dt_i = <dL/dy_i, f(t_i, y_i)> for i > 0 and dL/dt_0 = -<a(t_0), f(t_0, y_0)>.

    ``a0`` is the adjoint at t_0 without the cotangent of the output y(t_0) = y0 (which does not move
    with t_0). For an event solve the second time is the event time, whose gradient is added by the
    implicit function theorem instead (see :mod:`hybrid_node.sensitivity.events`).
    """
    t = problem.t
    out = torch.zeros(len(t), dtype=t.dtype, device=t.device)
    with torch.no_grad():
        out[0] = -dot(a0, user_field(problem, fterm, ts[0], ys[0]))
        if not event:
            for i in range(1, len(ts)):
                out[i] = dot(grad_ys[i], user_field(problem, fterm, ts[i], ys[i]))
    return out


class AdjointRun:
    """What a continuous adjoint's solve keeps between its forward and backward passes, and the
    backward pass's bookkeeping that does not depend on what the augmented state carries.

    A subclass sets :attr:`method_name` and :attr:`n_channels` and writes ``forward``, ``adopt`` and
    ``backward``.

    Args:
        problem: the forward problem.
        plan: the backward solve's settings.
        params: the tensors to differentiate (all require grad).
        event_fn: terminal event of the forward solve, or None.
        throw: raise on a failed forward solve.
    """

    #: the gradient method, as error messages name it
    method_name: str
    #: state-sized channels of the augmented state (``[z, a, q]``: 2, ``[a, q]``: 1)
    n_channels: int

    def __init__(
        self,
        problem: Problem,
        plan: BackwardPlan,
        params: tuple[torch.Tensor, ...],
        event_fn: Callable | None,
        throw: bool,
    ):
        self.problem = problem
        self.plan = plan
        self.params = params
        self.event_fn = event_fn
        self.throw = throw
        self.integration: Integration | None = None
        self.ts: list[float] = list(problem.ts)
        self.norm = NormOption(problem, plan, self.n_channels, params)

    def adopt(self, states: dict[float, torch.Tensor], stats: Stats) -> None:
        """Take a forward solution computed elsewhere (an event loop) instead of running ``forward``.

        Args:
            states: the flat states (no graph) at increasing solver times, both ends included; the
                backward pass takes their cotangents (as the outputs') and resets what it holds of the
                forward state to them.
            stats: the solve's counters; the backward pass adds its work to them.
        """
        self.ts = sorted(states)
        self.integration = Integration([states[s] for s in self.ts], stats, Status.SUCCESS, self.ts[-1])

    def reached(self, ys: torch.Tensor, grad_ys: torch.Tensor) -> tuple[list[float], torch.Tensor, torch.Tensor]:
        """The output times, outputs and cotangents the forward solve reached (:func:`reached_outputs`).

        Args:
            ys, grad_ys: the stacked forward outputs and their cotangents.

        Returns:
            ``(ts, ys, grad_ys)`` cut to the reached outputs.
        """
        assert self.integration is not None  # set by forward or adopt
        k = reached_outputs(self.integration, ys)
        return self.ts[:k], ys[:k], grad_ys[:k]

    def end_state(
        self, ts: Sequence[float], ys: torch.Tensor, grad_ys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The adjoint and the (zero) parameter channel where the backward solve starts.

        Args:
            ts, ys, grad_ys: the reached output times, outputs and cotangents (:meth:`reached`).

        Returns:
            ``(a_end, q0)``: the last output's cotangent as the adjoint, and flat zeros for the
            parameter gradients.
        """
        q0 = flat_cat([torch.zeros_like(p) for p in self.params], ys.dtype).to(ys.device)
        # a lone output is y0 itself: its cotangent is added once, at the end, not also as the adjoint
        a_end = grad_ys[-1] if len(ts) > 1 else torch.zeros_like(grad_ys[-1])
        return a_end, q0

    def tolerances(self, state_like: torch.Tensor, n_params: int) -> dict[str, Any]:
        """The backward solve's ``rtol``, ``atol`` and ``norm`` on the augmented state.

        Args:
            state_like: one forward output (its size and dtype set the channels').
            n_params: the parameter channel's size.

        Returns:
            Keyword arguments for :func:`run_backward`.
        """
        return {
            "rtol": channel_tolerance(self.plan.rtol, self.n_channels, state_like, n_params),
            "atol": channel_tolerance(self.plan.atol, self.n_channels, state_like, n_params),
            "norm": self.norm.resolve(),
        }

    def field_vjp(
        self, fterm, r: float, z: torch.Tensor, a: torch.Tensor, perturb: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The field at backward time ``r`` and forward state ``z``, and its vector-Jacobian products
        with the adjoint ``a``: the right-hand side of the adjoint equations (Chen et al. 2018, eq. 4).

        Args:
            fterm: the forward term (solver time, without callbacks).
            r: backward time (``s = -r``).
            z, a: the forward state and the adjoint, both shaped as a forward output.
            perturb: the backward solver's one-float nudge of ``r`` (a left or right limit at a jump).

        Returns:
            ``(g, [a^T dg/dz, *(a^T dg/dp for p in params)])``, ``g`` still holding its graph.
        """
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            g = fterm(-r, z, -perturb)  # one float later in r is one float earlier in s
            return g, vjp(g, (z,) + self.params, a)

    def solve_backward(
        self,
        term: AugmentedTerm,
        x: torch.Tensor,
        ts: Sequence[float],
        ys: torch.Tensor,
        at_output: Callable,
        stops: Sequence[float] = (),
        impulses: Impulses | None = None,
    ) -> tuple[torch.Tensor, int]:
        """The eager backward solve of the augmented state ``x`` from the last reached output to the first.

        Args:
            term: the augmented field; x: the augmented state at the last output.
            ts, ys: the reached output times and outputs (:meth:`reached`).
            at_output, stops, impulses: as for :func:`run_backward`.

        Returns:
            ``(x at ts[0], accepted backward steps)``; ``(x, 0)`` for a lone output (nothing to solve).
        """
        if len(ts) < 2:
            return x, 0
        rs = [-s for s in reversed(ts)]
        n_params = x.numel() - self.n_channels * ys[0].numel()  # x: the state-sized channels, then q
        tol = self.tolerances(ys[0], n_params)
        result = run_backward(
            self.problem, self.plan, term, x, rs, at_output=at_output, stops=stops, ts=ts, impulses=impulses, **tol
        )
        return result.ys[-1], result.stats.n_accepted

    def gradients(
        self,
        need_t: bool,
        tterm,
        ts: Sequence[float],
        ys: torch.Tensor,
        grad_ys: torch.Tensor,
        a0: torch.Tensor,
        q: torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor, list[torch.Tensor]]:
        """What ``backward`` returns, from the adjoint and parameter channel at the first output.

        Args:
            need_t: whether the output times need gradients.
            tterm: the term that evaluates the field for the time gradients.
            ts, ys, grad_ys: the reached output times, outputs and cotangents (:meth:`reached`).
            a0: the adjoint at ``ts[0]`` (without the cotangent of the output ``y0``).
            q: the flat parameter channel at ``ts[0]``.

        Returns:
            ``(dL/dt or None, dL/dy0, [dL/dp for p in params])``.
        """
        assert self.integration is not None  # set by forward or adopt
        grad_t = None
        if need_t:
            # an event solve that found no event (throw=False) ends at t_end: its usual dL/dt there
            event = self.integration.event_t is not None
            grad_t = time_gradients(self.problem, tterm, ts, ys, grad_ys, a0, event=event)
        return grad_t, a0 + grad_ys[0], split_params(q, self.params)

    def count_backward(self, nfe: int, steps: int) -> None:
        """Add the backward pass's evaluations of the user's field and its accepted steps to the stats."""
        assert self.integration is not None  # set by forward or adopt
        stats = self.integration.stats
        stats.nfe_backward += nfe
        stats.n_steps_backward += steps


def traceable_vjp(problem: Problem, params: tuple[torch.Tensor, ...], dtype: torch.dtype, kind: str):
    """The vector-Jacobian product of the user's field written with ``torch.func`` so that a compiler
    can trace it, for the adjoints' traceable augmented fields.

    Available when the field is an ``nn.Module`` and ``params`` are exactly its parameters that require
    gradients, in order (the default of ``adjoint_params``).

    Args:
        problem: the forward problem; params: the differentiated parameters; dtype: the augmented
            state's dtype; kind: names the augmented field in the key.

    Returns:
        ``(vjp_at, vjp_by_grad, key)`` or None (the eager field then serves): ``vjp_at(module, r, z,
        a)`` gives ``(g, a^T dg/dz, [a^T dg/dp])`` for ``g`` the solver-time field at ``s = -r``
        (flat) by ``torch.func.vjp``; ``vjp_by_grad`` the same by ``torch.autograd.grad``, which
        per-step graphs trace where ``torch.func`` refuses the field (one that takes its own
        gradient); ``key`` identifies the traced function apart from the module.
    """
    func = problem.func
    if not isinstance(func, torch.nn.Module):
        return None
    named = [(name, p) for name, p in func.named_parameters() if p.requires_grad]
    if len(named) != len(params) or any(p is not q for (_, p), q in zip(named, params)):
        return None
    names = tuple(name for name, _ in named)
    shape = problem.y0.shape
    layout, reverse, t_dtype = problem.layout, problem.reverse, problem.t_dtype

    def vjp_at(module, r, z, a):
        def g(zz, pdict):
            def call(tt, y):
                return torch.func.functional_call(module, pdict, (tt, y))

            return solver_time_field(call, -r, zz, layout, reverse, t_dtype)

        pp = {name: p for name, p in module.named_parameters() if name in names}
        gz, pull = torch.func.vjp(g, z.reshape(shape), pp)  # type: ignore[misc]  # torch stubs: vjp's return includes the has_aux triple
        a_z, a_p = pull(a.reshape(shape))
        return gz.reshape(-1), a_z.reshape(-1), [channel_part(a_p[name], dtype) for name in names]

    def vjp_by_grad(module, r, z, a):
        with torch.enable_grad():
            zz = z.reshape(shape).detach().requires_grad_(True)
            gz = solver_time_field(module, -r, zz, layout, reverse, t_dtype)
            inputs = [zz] + [p for name, p in module.named_parameters() if name in names]
            grads = vjp(gz, inputs, a.reshape(shape))
        # detached: a returned tensor whose graph autograd.grad consumed is refused by the compiler
        return gz.detach().reshape(-1), grads[0].reshape(-1), [channel_part(g, dtype) for g in grads[1:]]

    shapes = None if layout is None else tuple(layout.shapes)
    key = (kind, names, tuple(shape), shapes, reverse, t_dtype, problem.y0.device, dtype)
    return vjp_at, vjp_by_grad, key
