"""The method registry (every name ``odeint`` accepts, see :mod:`hybrid_node.solvers.registry`) and the
mapping of torchdiffeq-style method names and options to solver and controller objects."""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ._errors import BackendError
from ._memo import memoized
from .controllers import ConstantStepSize, PIDController
from .solvers.base import AbstractSolver, ExternalSolver, unread_controller_fields, unread_controller_settings
from .solvers.multistep import Nordsieck
from .solvers.newton import tolerances
from .solvers.registry import LOOPS as LOOPS
from .solvers.registry import METHOD_SPECS as METHOD_SPECS
from .solvers.registry import MethodSpec as MethodSpec
from .solvers.runge_kutta import COMPILERS

ADAPTIVE_OPTIONS = (
    "first_step",
    "safety",
    "ifactor",
    "dfactor",
    "max_num_steps",
    "step_t",
    "jump_t",
    "norm",
    "dtype",
    "min_step",
    "max_step",
    "pcoeff",
    "icoeff",
    "dcoeff",
    "per_sample",
    "compile",
    "device_loop",
    "sync_every",
)
_SHOWN = {"torch": "torch", "julia": "Julia"}  # backend names as the messages write them
FIXED_OPTIONS = ("step_size", "grid_constructor", "perturb", "interp", "dtype", "compile", "max_num_steps")


#: ``options={"compile": FULLGRAPH}``: as True, and direct backprop through the whole-solve graph too
#: (torch.compile's word for one graph of the entire function, ``fullgraph=True``)
FULLGRAPH = "fullgraph"


def compile_mode(value: Any) -> bool | str:
    """The checked value of ``options["compile"]``.

    Args:
        value: the option as given.

    Returns:
        False, True, :data:`FULLGRAPH` or one of :data:`~hybrid_node.solvers.runge_kutta.COMPILERS` (as
        True, with the CPU graphs compiled there).

    Raises:
        TypeError: another value (a string such as "no" is truthy, so it is refused rather than read
            as True), with the valid ones.
    """
    if isinstance(value, str) and value in (FULLGRAPH, *COMPILERS):
        return value
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise TypeError(
            f"options['compile'] must be True or False, {FULLGRAPH!r} (as True, and direct backprop "
            f"through the whole solve as one graph: slower first call, faster steps), 'background' "
            f"(as True, and no solve waits for the compiler: the graphs run uncompiled until ready) or "
            f"'in_process' (as True, compiled within the first call instead of by a worker process), "
            f"got {value!r}."
        )
    return bool(value)


def method_spec(method: str, backend: str) -> MethodSpec:
    """The registry entry of ``method`` for ``backend``.

    Args:
        method: the method name: exact on the torch backend; any case on the Julia backend, which also
            takes OrdinaryDiffEq's names ("Tsit5", "DP5").
        backend: "torch" or "julia".

    Returns:
        The method's :class:`MethodSpec`.

    Raises:
        BackendError: the method exists, but only on the other backend; on the Julia backend also an
            unknown method (the message lists the backend's methods).
        ValueError: an unknown method on the torch backend (the message lists its methods).
    """
    key = method if backend == "torch" else method.strip().lower()
    specs = METHOD_SPECS if backend == "torch" else {name.lower(): spec for name, spec in METHOD_SPECS.items()}
    spec = specs.get(key)
    if spec is not None and backend in spec.backends:
        return spec
    if spec is not None:
        other = "torch" if backend == "julia" else "julia"
        raise BackendError(
            f"Method {method!r} is available on the {_SHOWN[other]} backend only (use backend={other!r} for it). "
            f"The {_SHOWN[backend]} backend offers: {method_list(backend)}."
        )
    hint = did_you_mean(
        [key], [n if backend == "torch" else n.lower() for n, s in METHOD_SPECS.items() if backend in s.backends]
    )
    if backend == "torch":  # torchdiffeq's users know this as a ValueError
        raise ValueError(f"Unknown method {method!r}. Valid methods: {method_list(backend)}.{hint}")
    raise BackendError(f"Unknown method {method!r} for the Julia backend. Valid methods: {method_list(backend)}.{hint}")


def did_you_mean(unknown: Iterable[str], valid: Iterable[str]) -> str:
    """The end of an error message naming, for each unknown name, the closest valid one.

    A misspelt name (``step_sise``) is found among the valid ones by :func:`difflib.get_close_matches`
    (a similarity ratio of at least 0.6, its default), so the message says what to write instead.

    Args:
        unknown: the names that were not recognised.
        valid: the names that are.

    Returns:
        ``" Did you mean 'step_size' (for 'step_sise')?"`` (several names where they are equally close),
        or "" where no valid name is close.
    """
    valid = [name for name in valid if isinstance(name, str)]
    pairs = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=3) if isinstance(name, str) else []
        if close:
            # names as close as the closest (dopri5 and dopri8 for "dopri") are all named, alphabetically
            best = difflib.SequenceMatcher(None, name, close[0]).ratio()
            ties = sorted(c for c in close if difflib.SequenceMatcher(None, name, c).ratio() == best)
            pairs.append(" or ".join(map(repr, ties)) + f" (for {name!r})")
    return f" Did you mean {', '.join(pairs)}?" if pairs else ""


def refuse_unknown_options(
    options: Iterable[Any],
    valid: Iterable[str],
    method: str | None,
    where: str = "",
    others: Callable[[], Iterable[str]] | None = None,
) -> None:
    """Refuse option names that ``method`` does not take: the one check of every solver's option names.

    Args:
        options: the option names given (a mapping's keys).
        valid: the names the method takes.
        method: the method, for the message (None: any method, where it is not known yet).
        where: more context for the message, e.g. " on the Julia backend".
        others: returns the names other methods take (called only for the message): such a name is no
            misspelling, so no look-alike is offered for it (dopri5's ``step_t`` for rk4's ``step_size``
            would mislead).

    Raises:
        ValueError: naming the unknown options, the valid ones, and the closest valid name of each.
    """
    valid = sorted(set(valid))
    unknown = sorted(set(options) - set(valid), key=str)
    if unknown:
        elsewhere = [name for name in unknown if others is not None and name in set(others())]
        raise ValueError(
            f"Unknown options {unknown} for {'any method' if method is None else f'method {method!r}'}{where}. "
            f"The valid options are {valid}."
            + (f" {elsewhere} belong to other methods." if elsewhere else "")
            + did_you_mean([name for name in unknown if name not in elsewhere], valid)
        )


def method_list(backend: str) -> str:
    """The names of the methods ``backend`` has, sorted and comma-separated (for error messages)."""
    return ", ".join(sorted(name for name, spec in METHOD_SPECS.items() if backend in spec.backends))


def methods_table() -> str:
    """The method table of docs/solvers.md (markdown), rendered from the registry.

    Returns:
        One row per method name: its order (with the embedded order of an adaptive pair), whether it
        chooses its own steps, the backends that have it (with the Julia algorithm), the torch loop
        strategies that can run it, and notes.
    """
    rows = [
        "| method | order | adaptive | torch | julia | torch loops | notes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, spec in METHOD_SPECS.items():
        order, adaptive = "—", "—"
        if spec.solver is not None:
            solver = spec.solver()
            adaptive = "yes" if solver.adaptive else "no"
            if isinstance(solver, AbstractSolver):
                order = str(solver.order) + (f"({solver.error_order})" if solver.adaptive else "")
        torch_has = "yes" if "torch" in spec.backends else "no"
        julia = f"`{spec.julia}`" if spec.julia is not None else "no"
        loops = ", ".join(spec.loops) or "—"
        rows.append(f"| `{name}` | {order} | {adaptive} | {torch_has} | {julia} | {loops} | {spec.notes} |")
    return "\n".join(rows) + "\n"


def check_solve_settings(method: str | None, options: Any, backend: str | None = None, name: str = "options") -> None:
    """Check a method name and its option names where they are stored, before the first solve.

    The constructors that keep solve settings (``SolveSettings``, the adjoints, the models) call this,
    so that a misspelt method or option fails where it is written instead of at the first solve (or,
    for a method only the first solve's backend resolves, not at all). Option values are checked by
    the solve, which knows the state they apply to.

    Args:
        method: the method name; None: a method chosen later (an adjoint's default, the forward
            method), so names some method takes are accepted.
        options: the options (a mapping or None).
        backend: "torch" or "julia"; None: the process default, which may change before the solve,
            so names either backend takes for ``method`` are accepted.
        name: the argument's name, for the messages ("options", "adjoint_options").

    Raises:
        TypeError: ``method`` is not a string or ``options`` is not a mapping.
        ValueError: an unknown method or option; the message names the closest valid one.
        BackendError: the method exists on the other backend only.
    """
    if method is not None and not isinstance(method, str):
        raise TypeError(f"method must be a method name (str) such as 'dopri5', got {type(method).__name__}.")
    options = check_options(options, name)
    if method is None:
        pass
    elif backend is not None:
        method_spec(method, backend)
    elif method not in METHOD_SPECS and method.strip().lower() not in {n.lower() for n in METHOD_SPECS}:
        method_spec(method, "torch")  # raises the unknown method's ValueError
    # event_t_end (where a terminal event's search ends) is set by odeint_event, not a method's option
    given = [key for key in options if key != "event_t_end"]
    refuse_unknown_options(given, option_names(method, backend), method, others=_every_option_name)


@functools.cache
def option_names(method: str | None, backend: str | None = None) -> frozenset[str]:
    """Every option name a solve by ``method`` on ``backend`` may take, for the checks before a solve.

    The solve itself checks the names again against the method's mode (adaptive or fixed steps), which
    its options can switch; this is the union over modes, so it refuses only names no solve would take.

    Args:
        method: a registry method name (any case for the Julia backend); None: every method's names.
        backend: "torch", "julia", or None for both.

    Returns:
        The option names.
    """
    if method is None:
        return frozenset().union(*(option_names(name, backend) for name in METHOD_SPECS))
    spec = METHOD_SPECS.get(method) or {n.lower(): s for n, s in METHOD_SPECS.items()}.get(method.strip().lower())
    names: set[str] = set()
    if spec is None:
        return frozenset(names)
    if backend in (None, "torch") and spec.solver is not None:
        names.update(spec.options, ("dtype",))
        solver = spec.solver()
        if not isinstance(solver, ExternalSolver):
            if solver.adaptive or "adaptive" in spec.options:
                names.update(ADAPTIVE_OPTIONS)
            if not solver.adaptive or solver.fixed_steps() is not solver:
                names.update(FIXED_OPTIONS)
    if backend in (None, "julia") and "julia" in spec.backends:
        from .julia import backend as julia  # noqa: PLC0415 (it imports this module)

        switches = spec.julia in julia.FIXED_UNLESS_ADAPTIVE
        if switches or spec.julia in julia.FIXED_STEP_ALGORITHMS:
            names.update(julia.FIXED_STEP_OPTIONS)
        if switches or spec.julia not in julia.FIXED_STEP_ALGORITHMS:
            names.update(julia.ADAPTIVE_OPTIONS)
        if switches:
            names.add("adaptive")
    return frozenset(names)


def _every_option_name() -> frozenset[str]:
    """The option names some method takes on some backend (for :func:`refuse_unknown_options`)."""
    return option_names(None)


def check_options(options: Any, name: str) -> Mapping[str, Any]:
    """``options`` as a mapping (None: empty), or a TypeError that names the argument.

    Args:
        options: what the caller passed as ``name``.
        name: the argument's name, for the message ("options", "adjoint_options").

    Returns:
        The mapping.

    Raises:
        TypeError: ``options`` is not a mapping (e.g. ``options=0.1`` meant as a step size).
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(
            f"{name} must be a dict of option names to values, such as {{'step_size': 0.1}} or "
            f"{{'max_num_steps': 1000}}, got {type(options).__name__} {options!r}."
        )
    return options


def refuse_inert_step_settings(method: str, inert: list[str]) -> None:
    """Refuse step-size settings a Nordsieck method (adams, bdf, lsoda) would accept and not use.

    These methods choose step and order from their own error estimates at orders q-1, q and q+1
    (Hindmarsh 1983, LSODE; Hairer, Nørsett, Wanner I, III.7), and the loop takes their step in
    place of the controller's proposal, so the PID formula's settings changed nothing (the same
    steps with any of them). ``odeint``'s options and ``solve``'s ``PIDController`` are refused by
    this one check, with one message.

    Args:
        method: the method's name, for the message.
        inert: the names of the settings given (an option, or a controller field away from its default).

    Raises:
        ValueError: ``inert`` is not empty; the message names the settings and those that do apply.
    """
    if inert:
        # accepted, they changed nothing (the same steps with any of them): a setting that looks used
        raise ValueError(
            f"method {method!r} chooses its own step size and order (Nordsieck form), so the PID settings "
            f"{inert} have no effect on it; drop them (first_step, min_step, max_step and max_num_steps "
            "do apply)."
        )


def inert_controller_settings(solver: Any, controller: Any) -> list[str]:
    """The fields of ``controller`` that ``solver`` would not use and that differ from their defaults.

    Args:
        solver: the solve's solver.
        controller: the solve's controller.

    Returns:
        The names, sorted, of :func:`~hybrid_node.solvers.base.unread_controller_settings` (for a
        Nordsieck method and a PIDController the step-size formula's settings and its proposal rules,
        ``shrink_after_accept`` and ``grow_after_reject``, away from their defaults); none for an
        external solver, which refuses its own when it takes the controller.
    """
    if isinstance(solver, ExternalSolver):
        return []  # it refuses what it does not read when it takes the controller (ScipySolver.with_controller)
    return sorted(unread_controller_settings(solver, controller))


def refuse_replaced_tolerances(solver: Any, controller: Any) -> None:
    """Refuse tolerances set on a solver (adams, bdf, lsoda, auto) that the solve's PIDController replaces.

    The loop hands such a method the controller's tolerances (``with_tolerances``), so
    ``hn.BDF(rtol=1e-3)`` under ``hn.PIDController()`` ran at the controller's 1e-7: accepted, and not
    used. Tolerances equal to the controller's (as ``odeint`` builds them) are fine.

    Args:
        solver: the solve's solver.
        controller: the solve's controller.

    Raises:
        ValueError: the method's ``rtol`` or ``atol`` is away from its default and not what the
            controller hands it.
    """
    names = {f.name for f in dataclasses.fields(solver)} if dataclasses.is_dataclass(solver) else set()
    if not ({"rtol", "atol"} <= names and isinstance(controller, PIDController)):
        return
    tuned = solver.with_tolerances(controller.rtol, controller.atol)
    defaults = {f.name: f.default for f in dataclasses.fields(solver)}
    given = [
        n for n in ("rtol", "atol") if getattr(solver, n) != defaults[n] and getattr(tuned, n) != getattr(solver, n)
    ]
    if given:
        raise ValueError(
            f"method {solver.name!r} takes its tolerances from the PIDController, so {given} set on the solver "
            f"would not be used; pass them as hn.PIDController(rtol=..., atol=...) instead."
        )


def _time_dtype_option(dtype: Any) -> None:
    """Check ``options["dtype"]``: torchdiffeq's precision of the solver's internal time.

    torchdiffeq keeps its time in ``promote_types(dtype, state dtype)`` (float64 by default) and hands
    ``func`` the time in the state's dtype whatever ``dtype`` is. hybrid_node's loops always keep
    their time as float64 host floats, at least as precise as any ``dtype``, so the option is
    accepted and has nothing left to change.

    Args:
        dtype: the option's value, or None when not given.

    Raises:
        ValueError: ``dtype`` is not a floating torch dtype.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"options['dtype'] must be a floating torch dtype such as torch.float64, got {dtype!r}.")


#: build_solver's results for calls made of plain values (a training loop repeats one call): the
#: solver and controller are frozen dataclasses, so a repeated call may share them
_BUILT: dict = {}
_BUILT_MAX = 64
_PLAIN = (bool, int, float, str, type(None), torch.dtype)


def _times_option(key: str, value: Any) -> tuple[float, ...]:
    """``options['jump_t']`` or ``options['step_t']`` as host floats (a tensor of any shape is flattened).

    Raises:
        TypeError: ``value`` holds something other than real numbers (a bool or complex tensor, strings).
    """
    if not (isinstance(value, torch.Tensor) and (value.is_complex() or value.dtype == torch.bool)):
        try:
            return tuple(torch.as_tensor(value, dtype=torch.float64).reshape(-1).tolist())
        except (TypeError, ValueError, RuntimeError):  # torch's own error names neither the option nor its type
            pass
    raise TypeError(
        f"options[{key!r}] must be a tensor or a sequence of times (real numbers), got "
        f"{type(value).__name__} {value!r}."
    )


def build_solver(method: str | None, options: Mapping[str, Any] | None, rtol, atol):
    """Map torchdiffeq-style ``method`` and ``options`` to (solver, controller, extras).

    A call with a method name, float tolerances and options whose values are plain numbers, strings,
    None or dtypes returns the objects built for the first such call (building them costs ~50 us
    inside a loop of solves); any other call builds them afresh.

    Args:
        method: a method name of the registry (None: "dopri5").
        options: the method and step-size options (torchdiffeq's names).
        rtol, atol: the solve's tolerances.

    Returns:
        solver, controller, and a dict with ``jump_t`` and ``step_t`` (adaptive torch methods).

    Raises:
        ValueError: for an unknown method or option (the message lists the valid ones).
        BackendError: the method exists on the Julia backend only (a ValueError too).
    """
    key = _plain_call(method, options, rtol, atol)
    if key is None:
        return _build_solver(method, options, rtol, atol)
    solver, controller, extras = memoized(_BUILT, key, lambda: _build_solver(method, options, rtol, atol), _BUILT_MAX)
    return solver, controller, dict(extras)


def _plain_call(method, options, rtol, atol) -> tuple | None:
    """The memo key of a :func:`build_solver` call made of plain values, else None (types are part of
    it: ``max_num_steps=1`` and ``1.0`` are told apart as the checks would tell them)."""
    if type(rtol) is not float or type(atol) is not float or not (method is None or type(method) is str):
        return None
    if options is None:
        return (method, (), rtol, atol)
    if type(options) is not dict or any(type(v) not in _PLAIN for v in options.values()):
        return None
    return (method, tuple((k, type(v), v) for k, v in options.items()), rtol, atol)


def _build_solver(method: str | None, options: Mapping[str, Any] | None, rtol, atol):
    method = "dopri5" if method is None else method
    options = dict(check_options(options, "options"))
    event_t_end = options.pop("event_t_end", None)
    spec = method_spec(method, "torch")
    solver_keys = spec.options
    solver_kwargs = {k: options.pop(k) for k in solver_keys if k in options}
    if spec.uses_tolerances:  # the Adams corrector stops on the solve's tolerances (the smallest where they vary)
        for key, value in zip(("rtol", "atol"), tolerances(rtol, atol)):
            solver_kwargs.setdefault(key, value)
    assert spec.solver is not None  # method_spec checked that the torch backend has the method
    solver = spec.solver(**solver_kwargs)
    if isinstance(solver, ExternalSolver):
        refuse_unknown_options(options, solver_keys + ("dtype",), method, others=_every_option_name)
        _time_dtype_option(options.get("dtype"))
        return solver, PIDController(rtol=rtol, atol=atol), {}
    fixed_options = sorted({"step_size", "grid_constructor"} & set(options))
    if solver_kwargs.get("adaptive") is True and fixed_options:
        # the step options switched the method to fixed steps, so adaptive=True was accepted and overruled
        raise ValueError(
            f"options adaptive=True and {fixed_options} contradict each other for method {method!r}: adaptive "
            "steps are chosen from the error estimate; drop adaptive=True for fixed steps, or drop "
            f"{fixed_options} (first_step sets the first adaptive step)."
        )
    if solver.adaptive and fixed_options:
        # e.g. trbdf2: torchdiffeq's fixed-step meaning when a step is given; methods without a
        # fixed-step variant return themselves and the step options are reported as unknown below
        solver = solver.fixed_steps()
    _time_dtype_option(options.pop("dtype", None))
    extras: dict[str, Any] = {"jump_t": (), "step_t": (), "event_t_end": event_t_end}
    compiled = compile_mode(options.pop("compile", False))
    if compiled:
        # raises ValueError, naming the method, where supports_compile is False
        where = compiled if compiled in COMPILERS else None
        solver = solver.compiled(fullgraph=compiled == FULLGRAPH, compiler=where)
    if solver.adaptive:
        nordsieck = isinstance(solver, Nordsieck)
        # the options among the controller fields it does not read (a Nordsieck method's: the PID formula's);
        # its proposal rules are no odeint options, so they stay unknown options below
        unread = unread_controller_fields(solver).intersection(ADAPTIVE_OPTIONS)
        refuse_inert_step_settings(method, sorted(unread.intersection(options)))
        valid = [k for k in ADAPTIVE_OPTIONS if k not in unread] + list(solver_keys)
        refuse_unknown_options(options, valid, method, others=_every_option_name)
        for key in ("jump_t", "step_t"):
            if key in options:
                extras[key] = _times_option(key, options.pop(key))
        # torchdiffeq's rule: an accepted step never shrinks the next one (its steps, not Hairer's); a
        # Nordsieck method proposes its own steps, so there it stays at the default that solve() accepts
        rule: dict[str, Any] = {} if nordsieck else {"shrink_after_accept": False}
        controller: PIDController | ConstantStepSize = PIDController(rtol=rtol, atol=atol, **rule, **options)
    else:
        refuse_unknown_options(options, FIXED_OPTIONS + solver_keys, method, others=_every_option_name)
        step = options.get("step_size")
        if (isinstance(step, (int, float)) and not isinstance(step, bool)) or (
            isinstance(step, torch.Tensor) and step.numel() == 1 and step.is_floating_point()
        ):
            options["step_size"] = float(step)
        # anything else goes to ConstantStepSize as given, which refuses it by name: float() would take "0.1"
        # and True (a step of 1), and fail on two values with torch's "only one element tensors can be converted"
        controller = ConstantStepSize(**options)
    return solver, controller, extras
