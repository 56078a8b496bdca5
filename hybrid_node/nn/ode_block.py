"""A continuous-depth layer: ``ODEBlock`` maps ``y(t0)`` to ``y(t1)`` by solving ``dy/dt = f(t, y)``.

The block replaces a stack of residual blocks ``y <- y + f(y)`` by the limit of infinitely many
infinitesimal ones (Chen et al. 2018). How it is solved (method, tolerances, gradient method, backend)
is an immutable :class:`SolveSettings`; training and evaluation may use different settings, which
the block picks from ``self.training``, e.g. a loose tolerance to train and a tight one to test.

The block counts evaluations of its vector field: ``nfe_forward`` after each forward pass and
``nfe_backward`` after the following ``backward()`` (zero for :class:`DirectBackprop`, whose
backward pass replays the recorded graph without calling the field). A field the Julia backend
evaluates natively (one with a translatable ``mlp_spec()``, :mod:`hybrid_node.julia.translate`) is
never called from Julia: its forward count is the Julia solve's, and its backward pass is not
counted (``nfe_backward`` stays 0).

Reference: Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations",
NeurIPS 2018.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from .._api import solve
from .._backend import BACKENDS, resolve_backend
from .._registry import build_solver, check_solve_settings
from .._settings_key import value_semantics
from .._solution import Solution
from .._traced_solve import in_users_graph, untraced
from .._tracing import traced
from .._transforms import is_batched
from ..sensitivity.settings import (
    BacksolveAdjoint,
    DirectBackprop,
    GaussAdjoint,
    InterpolatingAdjoint,
    QuadratureAdjoint,
)
from ._checks import positive_tolerance, refuse_inert_tolerances
from ._kept import kept_field
from .layers import MLPDynamics

SensitivityT = DirectBackprop | BacksolveAdjoint | InterpolatingAdjoint | GaussAdjoint | QuadratureAdjoint
_SENSITIVITIES = (DirectBackprop, BacksolveAdjoint, InterpolatingAdjoint, GaussAdjoint, QuadratureAdjoint)


#: SolveSettings' tolerances; set away from them with a fixed-step method, they are refused
_DEFAULT_TOLERANCES = {"rtol": 1e-3, "atol": 1e-3}


@value_semantics
@dataclasses.dataclass(frozen=True)
class SolveSettings:
    """How an :class:`ODEBlock` solves its ODE.

    Attributes:
        method: solver name as for :func:`hybrid_node.odeint` ("dopri5", "rk4", "euler", ...).
        rtol: relative tolerance of adaptive methods.
        atol: absolute tolerance of adaptive methods.
        options: solver options, e.g. ``{"step_size": 0.1}`` for fixed-step methods; copied (shallowly), so
            changing the given dict afterwards leaves the settings as built.
        sensitivity: how gradients are computed (:class:`DirectBackprop` backpropagates through the
            solver; :class:`BacksolveAdjoint` is the paper's O(1)-memory adjoint).
        backend: "torch", "julia" or None (the process default).

    Raises:
        TypeError: ``method`` is not a string, ``sensitivity`` is not a sensitivity object or
            ``options`` is not a mapping.
        ValueError: ``rtol`` or ``atol`` is not a finite positive number or is set with a fixed-step
            method (where it would change nothing), ``backend`` is unknown, or ``method`` or an option
            name is unknown (the message names the closest valid one).
        BackendError: ``method`` exists on the other backend only.
    """

    method: str = "dopri5"
    rtol: float = _DEFAULT_TOLERANCES["rtol"]
    atol: float = _DEFAULT_TOLERANCES["atol"]
    options: Mapping[str, Any] | None = None
    sensitivity: SensitivityT = dataclasses.field(default_factory=DirectBackprop)
    backend: str | None = None

    def __post_init__(self):
        if not isinstance(self.method, str):
            raise TypeError(f"method must be a solver name (str), got {type(self.method).__name__}.")
        for name in ("rtol", "atol"):
            positive_tolerance(name, getattr(self, name))
        if not isinstance(self.sensitivity, _SENSITIVITIES):
            raise TypeError(
                "sensitivity must be one of DirectBackprop(), BacksolveAdjoint(), "
                f"InterpolatingAdjoint(), GaussAdjoint(), QuadratureAdjoint(); got {self.sensitivity!r}."
            )
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {self.backend!r}.")
        if self.options is not None and not isinstance(self.options, Mapping):
            raise TypeError(f"options must be a mapping or None, got {type(self.options).__name__}.")
        check_solve_settings(self.method, self.options, self.backend)  # not only at the first forward pass
        given = {"rtol": self.rtol, "atol": self.atol}
        refuse_inert_tolerances("SolveSettings", self.method, self.options, given, _DEFAULT_TOLERANCES)
        if self.options is not None:
            # the settings are frozen and checked here: a later change to the caller's dict must not
            # change (and skip the check of) every block built with them
            object.__setattr__(self, "options", dict(self.options))


class _CountingField(nn.Module):
    """Calls ``func(t, y)`` and counts the calls in ``calls``.

    The count is a plain int attribute of a module, which the compiled graphs handle as they handle a
    field's own counter (``self.nfe += 1``, :mod:`hybrid_node.loop.counters`): shown to a graph as 0,
    restored inside a whole-solve loop and advanced by the evaluations the graph made, so a compiled
    solve counts as an eager one and no call compiles a graph again. A module (holding ``func`` as a
    submodule), so the adjoints' traceable fields, which need an ``nn.Module``, apply to it; the block
    keeps it across forward passes outside its own submodules (:func:`~hybrid_node.nn._kept.kept_field`).
    """

    def __init__(self, func: Callable):
        super().__init__()
        self.func = func
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.func(t, y)


def refuse_hidden_parameters(func: Callable, settings: SolveSettings, owner: str) -> None:
    """Refuse an adjoint sensitivity for a field that is not an ``nn.Module``.

    The blocks differentiate the parameters of their field module; a plain callable's tensors (a
    lambda's closure) are unknown to the adjoint's backward solve, which would leave their gradients
    None without a word (direct backpropagation records them in the graph and needs nothing).

    Args:
        func: the user's field (or acceleration).
        settings: the settings of the solve about to run.
        owner: how the message names ``func``, e.g. "ODEBlock's func".

    Raises:
        ValueError: ``func`` is not an ``nn.Module`` and ``settings`` use an adjoint sensitivity.
    """
    if isinstance(func, nn.Module) or isinstance(settings.sensitivity, DirectBackprop):
        return
    raise ValueError(
        f"{owner} is a plain callable ({type(func).__name__}), so {type(settings.sensitivity).__name__}() cannot "
        "know the tensors it uses and would leave their gradients None. Wrap it in an nn.Module whose "
        "forward uses those tensors as its nn.Parameter attributes, or use sensitivity=DirectBackprop()."
    )


#: what a traced program says when its output times fail the checks of :func:`_check_time_values`
_BAD_TRACED_TIMES = (
    "ODEBlock's output times t must be finite and strictly increasing or strictly decreasing; run the model "
    "untraced to see the values."
)


def _check_time_values(times: torch.Tensor) -> None:
    """Check that ``times`` are finite and strictly monotone: eagerly, or when a traced program runs.

    Times handed to a traced forward pass (an input of an exported program) have no values while it is
    traced, and reading them on the host is a data-dependent guard that ``torch.export`` refuses
    (``GuardOnDataDependentSymNode``, strict or not): there the program checks them when it runs
    (``torch._assert_async``, kept by ``torch.export`` and ``torch.compile``), with a message that cannot
    quote them.

    Args:
        times: 1-D floating tensor of at least two times.

    Raises:
        ValueError: eagerly, a time is not finite or the times are not strictly monotone.
        RuntimeError: when a traced program runs, the same (``_BAD_TRACED_TIMES``).
    """
    finite = torch.isfinite(times).all()
    diffs = times[1:] - times[:-1]
    monotone = (diffs > 0).all() | (diffs < 0).all()
    if traced():
        torch._assert_async(finite & monotone, _BAD_TRACED_TIMES)
        return
    if not bool(finite):
        raise ValueError(f"t must hold finite times (no NaN or inf), got {times.tolist()}.")
    if not bool(monotone):
        raise ValueError(f"t must be strictly increasing or strictly decreasing, got {times.tolist()}.")


def _as_times(t: Sequence[float] | torch.Tensor) -> torch.Tensor:
    given = torch.is_tensor(t)
    try:
        # numbers are made and checked on the CPU, whatever the default device: under
        # ``with torch.device("meta")`` (a model built empty, then filled by ``load_state_dict(..., assign=True)``
        # or ``to_empty``) they would have no values to check, and none to keep (t is in no state dict)
        times = torch.as_tensor(t, dtype=None if given else torch.float64, device=None if given else "cpu")
    except (TypeError, ValueError, RuntimeError) as err:  # e.g. a string, whose torch message names no argument
        raise TypeError(f"t must be a 1-D sequence of times (e.g. (0.0, 1.0)), got {t!r}.") from err
    if times.is_meta:
        raise ValueError("t is a meta tensor, which holds no times; pass the times as numbers, e.g. (0.0, 1.0).")
    if times.dim() != 1 or times.numel() < 2:
        raise ValueError(f"t must be a 1-D sequence of at least two times (e.g. (0.0, 1.0)), got {t!r}.")
    if not torch.is_floating_point(times):
        times = times.to(torch.get_default_dtype())
    _check_time_values(times)
    if given:
        return times
    default = torch.empty(()).device  # the default device, e.g. of a ``with torch.device(...)`` block
    return times if default.type == "meta" else times.to(default)


def integrate(
    func: Callable, y0: torch.Tensor, t: torch.Tensor, settings: SolveSettings, params: Sequence[torch.Tensor] = ()
) -> Solution:
    """Solve ``dy/dt = func(t, y)`` from ``y0``; ``ys`` of the solution are the states at ``t``.

    Args:
        func: the vector field ``f(t, y)``.
        y0: the initial state.
        t: 1-D tensor of output times.
        settings: a :class:`SolveSettings`.
        params: the parameters the adjoint methods differentiate with respect to.

    Returns:
        The :class:`~hybrid_node.Solution` (a tensor ``y0`` gives a tensor ``ys``).

    Raises:
        ValueError: for an unknown method or option.
        BackendError: for a sensitivity method the backend cannot run.
        SolverError: if the solve fails.
    """
    solver, controller, extras = build_solver(settings.method, settings.options, settings.rtol, settings.atol)
    return solve(
        func,
        y0,
        t,
        solver=solver,
        controller=controller,
        sensitivity=settings.sensitivity,
        backend=settings.backend,
        adjoint_params=tuple(params),
        jump_t=extras.get("jump_t", ()),
        step_t=extras.get("step_t", ()),
        t_dtype=extras.get("t_dtype"),
    )


class ODEBlock(nn.Module):
    """Continuous-depth layer: returns ``y(t1)`` (or the trajectory) of ``dy/dt = func(t, y)``, ``y(t0) = x``.

    Args:
        func: the vector field, a module called as ``func(t, y)`` returning a tensor shaped like ``y``.
        t: the integration interval ``(t0, t1)`` or a 1-D sequence of output times (default (0, 1)); a
            sequence of numbers is kept in float64 and solved in its own precision, as by ``odeint``.
        train_settings: :class:`SolveSettings` used in training mode (default: dopri5, rtol = atol = 1e-3,
            direct backpropagation).
        eval_settings: settings used in evaluation mode (``model.eval()``); None means the training ones.
        return_trajectory: return all states at ``t`` (shape (len(t), *x.shape)) instead of the last one.

    Attributes:
        nfe_forward: vector-field evaluations of the latest forward pass.
        nfe_backward: evaluations since that forward pass ended, i.e. of the backward pass once
            ``backward()`` has run (0 with direct backpropagation).

    Both count each thread's evaluations apart, but are one pair of attributes: with forward passes
    in several threads at once, they are those of the pass that ended last. Under ``nn.DataParallel``
    they are set on the per-pass replicas and lost with them, as torch documents for every attribute
    a forward pass sets: read them on the module itself (one process per device, e.g.
    ``DistributedDataParallel``).

    Raises:
        TypeError: if ``func`` is not callable or settings have the wrong type.
        ValueError: if ``t`` is not a strictly monotone sequence of at least two finite times, or ``func`` is
            not an ``nn.Module`` and a setting uses an adjoint sensitivity (whose gradients of the
            callable's tensors would be lost).

    Reference: Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018.
    """

    t: torch.Tensor  # a non-persistent buffer

    def __init__(
        self,
        func: nn.Module,
        t: Sequence[float] | torch.Tensor = (0.0, 1.0),
        *,
        train_settings: SolveSettings | None = None,
        eval_settings: SolveSettings | None = None,
        return_trajectory: bool = False,
    ):
        super().__init__()
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}.")
        for name, value in (("train_settings", train_settings), ("eval_settings", eval_settings)):
            if value is not None and not isinstance(value, SolveSettings):
                raise TypeError(f"{name} must be a SolveSettings or None, got {type(value).__name__}.")
        self.func = func
        self.register_buffer("t", _as_times(t), persistent=False)
        self.train_settings = train_settings if train_settings is not None else SolveSettings()
        self.eval_settings = eval_settings
        for settings in (self.train_settings, eval_settings):
            if settings is not None:
                refuse_hidden_parameters(func, settings, "ODEBlock's func")
        self.return_trajectory = bool(return_trajectory)
        # the counting wrapper of the latest forward pass and its count then: the backward pass calls
        # that wrapper even when ``func`` has been replaced since (a plain tuple, not a submodule)
        self._after_forward: tuple[_CountingField | None, int] = (None, 0)
        self.nfe_forward = 0

    @property
    def settings(self) -> SolveSettings:
        """The settings the next forward pass uses (depends on ``self.training``)."""
        if self.training or self.eval_settings is None:
            return self.train_settings
        return self.eval_settings

    def _apply(self, fn, recurse: bool = True):
        """Convert the parameters and buffers (``.to()``, ``.float()``, ``.cuda()`` ...); the times only move.

        ``.float()`` or ``.half()`` of a model converts its weights, not its integration interval: a
        float64 ``t`` rounded to float32 would shorten (1e4, 1e4 + 1e-3) by 2.3%, and a later ``.double()``
        cannot bring the digits back. The times keep their values and dtype and take the new device.
        """
        times = self.t
        super()._apply(fn, recurse)
        self.t = times.to(self.t.device)  # the same tensor when the device is unchanged
        return self

    @property
    def nfe_backward(self) -> int:
        counting, calls = self._after_forward
        return 0 if counting is None else counting.calls - calls

    def _counting(self) -> _CountingField:
        """The counting wrapper of ``self.func`` (a new one if ``func`` was replaced)."""
        return kept_field(self, ("counting", self.func), lambda: _CountingField(self.func))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Solve from ``x`` over ``t`` (default: the block's own times).

        Args:
            x: the initial state, any shape the vector field accepts.
            t: optional 1-D output times overriding the block's.

        Returns:
            ``y(t[-1])`` shaped like ``x``, or the trajectory (len(t), *x.shape) if ``return_trajectory``.

        Raises:
            TypeError: ``x`` is not a tensor.
            ValueError: the vector field is an :class:`MLPDynamics` of another ``dim`` than ``x.shape[-1]``,
                or a plain callable (not an ``nn.Module``) under an adjoint sensitivity, or the block's
                own times are batched by ``vmap`` (buffers stacked by ``torch.func.stack_module_state``).
        """
        if not torch.is_tensor(x):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}.")
        # again here: ``func`` and the settings are attributes that may have been replaced since __init__
        refuse_hidden_parameters(self.func, self.settings, "ODEBlock's func")
        # Only fields whose ``dim`` is known to be the state size (a user module's ``dim`` may mean an axis).
        dim = self.func.dim if isinstance(self.func, MLPDynamics) else None
        if dim is not None and (x.dim() < 1 or x.shape[-1] != dim):
            raise ValueError(
                f"ODEBlock's vector field ({type(self.func).__name__}) takes states of shape (..., {dim}), "
                f"got x of shape {tuple(x.shape)}; pass states with {dim} features in the last dimension or "
                f"build the field with dim={x.shape[-1] if x.dim() else 1}."
            )
        # Dynamo traces vmap itself and hands the traced code no functorch wrappers to inspect (strict
        # torch.export refused the wrapper query); the check runs wherever the code runs untraced
        if t is None and not torch.compiler.is_dynamo_compiling() and is_batched(self.t):
            raise ValueError(
                "ODEBlock's times (its buffer t) are batched by vmap: torch.func.stack_module_state stacks every "
                "buffer, and the models of one vmap share their output times. Pass one model's buffers unbatched, "
                "e.g. vmap(f, in_dims=(0, None, None))(params, {k: v[0] for k, v in buffers.items()}, x)."
            )
        times = self.t if t is None else _as_times(t)
        # moved, not cast to x's dtype: the solve keeps the times' own precision, as hn.odeint and
        # torchdiffeq's odeint do (cast to float32, the float64 times (1e4, 1e4 + 1e-3) of a float32
        # state would give an interval 2.3% short); MPS has no float64, so there the times take x's dtype
        mps = x.device.type == "mps" and times.dtype == torch.float64 and torch.is_floating_point(x)
        times = times.to(device=x.device, dtype=x.dtype if mps else times.dtype)
        params = [p for p in self.func.parameters() if p.requires_grad] if isinstance(self.func, nn.Module) else []
        if in_users_graph(self.func, x):
            # a solve traced into an exported or compiled program cannot carry the counter's side effect
            ys = integrate(self.func, x, times, self.settings, params).ys
            self.nfe_forward = 0
        else:
            # inside the user's torch.compile the counted solve runs untraced (the solve itself would):
            # traced, the counts are numbers the compiler guards on, and every step compiled again
            counted = _counted_solve_untraced if traced() else ODEBlock._counted_solve
            ys = counted(self, x, times, params)
        ys = cast(torch.Tensor, ys)  # a tensor x gives a tensor of states (only tuple states give a tuple)
        return ys if self.return_trajectory else ys[-1]

    def _counted_solve(self, x: torch.Tensor, times: torch.Tensor, params: list) -> torch.Tensor | tuple:
        """The states at ``times`` from ``x``, the evaluations counted (``nfe_forward``, ``nfe_backward``)."""
        if self._julia_native():
            # the counting wrapper would hide mlp_spec() and send every evaluation through callbacks
            sol = integrate(self.func, x, times, self.settings, params)
            self.nfe_forward = sol.stats.nfe
            self._after_forward = (None, 0)  # the backward pass is not counted
            return sol.ys
        counting = self._counting()
        start = counting.calls
        try:
            ys = integrate(counting, x, times, self.settings, params).ys
        except BaseException:
            # a forward pass that raised (a failed solve, the field's error, Ctrl-C) is counted in neither
            # number: they stay those of the latest complete pass, whose nfe_backward would otherwise grow
            # by the failed pass's evaluations (and leave 0 with direct backpropagation)
            done, calls = self._after_forward
            if done is counting:
                self._after_forward = (counting, calls + counting.calls - start)
            raise
        self._after_forward = (counting, counting.calls)
        self.nfe_forward = counting.calls - start
        return ys

    def _julia_native(self) -> bool:
        """Whether the Julia backend solves this block's field natively (never calling it)."""
        if resolve_backend(self.settings.backend) != "julia":
            return False
        from ..julia.translate import translate_mlp  # (no Julia needed; the torch backend never asks)

        return translate_mlp(self.func)[0] is not None

    def extra_repr(self) -> str:
        return (
            f"t={self.t.tolist()}, train_settings={self.train_settings}, eval_settings={self.eval_settings}, "
            f"return_trajectory={self.return_trajectory}"
        )


# The name used in the paper's text and by most users.
NeuralODE = ODEBlock


#: :meth:`ODEBlock._counted_solve` run by the interpreter when the user's torch.compile reaches it
_counted_solve_untraced = untraced(ODEBlock._counted_solve)


class BlockCounters:
    """The evaluation counters of a model built around one :class:`ODEBlock` (its ``block``): the
    block's ``nfe_forward`` and ``nfe_backward``, read-only."""

    block: ODEBlock

    @property
    def nfe_forward(self) -> int:
        """Vector-field evaluations of the block's latest forward pass."""
        return self.block.nfe_forward

    @property
    def nfe_backward(self) -> int:
        """Vector-field evaluations since that forward pass ended (its backward pass, once run)."""
        return self.block.nfe_backward
