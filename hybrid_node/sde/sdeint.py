"""sdeint and sdeint_adjoint: torchsde's entry points on hybrid_node's solvers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from .._problem import warn_unresolvable_tolerance
from .._transforms import inside_transform, is_batched
from ..sensitivity._backward import param_tensors
from ._loop import integrate
from ._sde import field_autocast_of
from ._validate import Prepared, check_tolerances, prepare
from .adjoint import BackwardSteps, solve_stochastic_adjoint
from .reversible_adjoint import solve_reversible_adjoint


def _finish(ys: torch.Tensor, log_ratios: list[torch.Tensor], extra_state: Any, logqp: bool, extra: bool):
    out: list[Any] = [ys]
    if logqp:
        lr = torch.stack(log_ratios)
        out.append(lr[1:] - lr[:-1])  # torchsde returns the increment over each output interval
    if extra:
        out.append(extra_state)
    return out[0] if len(out) == 1 else tuple(out)


def _check_extra_state(p: Prepared, y0: torch.Tensor, extra_solver_state: Any) -> None:
    """Raise unless ``extra_solver_state`` has the layout of the solver's own extra state at ts[0]."""
    with torch.no_grad():
        expected = p.solver.init(p.sde, p.ts[0], y0)
    shapes = [tuple(x.shape) for x in expected]
    given = (
        [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in extra_solver_state]
        if isinstance(extra_solver_state, (tuple, list))
        else type(extra_solver_state).__name__
    )
    if given != shapes:
        # A wrong layout failed inside the solver step ("not enough values to unpack"), and a state given
        # to a method without one was silently ignored.
        raise ValueError(
            f"extra_solver_state for method {p.solver.name!r} must be a tuple of tensors of shapes {shapes}, "
            f"got {given}; pass the extra state that sdeint(..., extra=True) returned for the same method "
            "and shapes (or leave it out to start from y0)."
        )


def _check_transform(y0: Any, adjoint: bool) -> None:
    """Refuse, with the fix, what a ``torch.func`` transform cannot run through an SDE solve.

    Inside ``vmap`` the Brownian motion's cache is searched by comparing times and states on the host,
    which a batched ``y0`` turns into "data-dependent control flow" inside torch; the adjoints' autograd
    Functions have no ``setup_context``/``vmap`` rule. ``grad``, ``jacrev``, ``vjp`` and ``jvp`` of
    sdeint, and ``jacfwd(..., randomness="same")``, differentiate the steps as reverse mode does.

    Raises:
        ValueError: ``y0`` is batched by ``vmap``, or ``adjoint`` (sdeint_adjoint) inside a transform.
    """
    if not inside_transform():
        return
    if adjoint:
        raise ValueError(
            "sdeint_adjoint cannot run inside torch.func transforms (vmap, grad, jacrev, jvp, jacfwd, hessian): its "
            "gradients come from a custom backward pass the transforms cannot follow. Use hn.sdeint inside the "
            "transform, or sdeint_adjoint with torch.autograd.grad outside it."
        )
    if isinstance(y0, torch.Tensor) and is_batched(y0):
        raise ValueError(
            "sdeint cannot run under vmap over y0: a batch of SDE solves is one solve with a batch dimension. Stack "
            "the members along y0's first dimension (batch, state) instead, with a BrownianInterval of that size."
        )


@contextlib.contextmanager
def _solver_precision(y0: Any) -> Iterator[tuple[str, torch.dtype] | None]:
    """Run the body with the caller's autocast off on the state's device, yielding that autocast.

    Under ``torch.autocast`` the SDE's drift and diffusion run in its dtype and their outputs are cast
    back to the state's (:class:`~hybrid_node.sde._sde.SDEView`); the solver's own arithmetic (the
    increments, step-doubling errors, Milstein and log-ODE corrections) stays in the state's dtype.

    Args:
        y0: the initial state.

    Yields:
        (device type, autocast dtype) of the caller's autocast, or None where it is off.
    """
    autocast = field_autocast_of(y0)
    if autocast is None:
        yield None
        return
    with torch.autocast(autocast[0], enabled=False):
        yield autocast


def sdeint(
    sde: Any,
    y0: torch.Tensor,
    ts: torch.Tensor | Sequence[float],
    bm: Any = None,
    method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: Mapping[str, Any] | None = None,
    names: Mapping[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: tuple | None = None,
):
    """Solve dy = f(t, y) dt + g(t, y) dW from y(ts[0]) = y0; gradients by backprop through the solver.

    Args:
        sde: object with ``f(t, y)`` and ``g(t, y)`` (or ``f_and_g``, ``g_prod``), ``noise_type`` in
            {"diagonal", "additive", "scalar", "general"} and ``sde_type`` in {"ito", "stratonovich"}.
        y0: initial state (batch, d).
        ts: strictly increasing output times (1-D tensor or list of floats).
        bm: Brownian motion over [ts[0], ts[-1]] of shape (batch, m) (default: a new BrownianInterval).
        method: "euler", "milstein", "srk" (Ito); "euler_heun", "heun", "midpoint", "reversible_heun",
            "milstein", "log_ode" (Stratonovich). Default: torchsde's (srk for Ito diagonal/additive/scalar noise,
            euler for Ito general noise, midpoint for Stratonovich).
        dt: step size (the initial one when adaptive).
        adaptive, rtol, atol, dt_min: step doubling with these tolerances and minimum step (one of rtol
            and atol may be 0, as in torchsde).
        options: method options, e.g. ``{"grad_free": True}`` for milstein.
        names: rename the SDE's methods, e.g. ``{"drift": "f_post", "prior_drift": "h"}``.
        logqp: also return the KL rate integral between the posterior (f) and prior (h) SDE per output interval.
        extra: also return the solver's final extra state (reversible_heun: (f, g, z), torchsde's order).
        extra_solver_state: the solver's extra state at ts[0] (default: computed from y0).

    Returns:
        ys of shape (len(ts), batch, d); with logqp ``(ys, log_ratio)`` with log_ratio (len(ts) - 1, batch);
        with extra the extra state last.

    Raises:
        ValueError: bad shapes, non-increasing ts, unknown methods/options or a method that does not fit
            the SDE (the message says which do), an extra_solver_state of another layout than the method's.
        SolverError: the state became non-finite.

    Reference:
        P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992.
    """
    _check_transform(y0, adjoint=False)
    # under torch.autocast only the drift and diffusion run in its dtype (SDEView), the solver in y0's
    with _solver_precision(y0) as autocast:
        p = prepare(sde, y0, ts, bm, method, dt, adaptive, rtol, atol, dt_min, options, names, logqp, autocast)
        if extra_solver_state is not None:
            _check_extra_state(p, y0, extra_solver_state)
        if len(p.ts) == 1:
            # no step: the extra state is the one at ts[0], as torchsde returns it (its init, if not given)
            if extra and extra_solver_state is None:
                extra_solver_state = p.solver.init(p.sde, p.ts[0], y0)
            return _finish(y0.unsqueeze(0), [y0.new_zeros(y0.shape[0])], extra_solver_state, logqp, extra)
        traj = integrate(
            p.solver,
            p.sde,
            p.bm,
            y0,
            p.ts,
            dt=dt,
            adaptive=adaptive,
            rtol=rtol,
            atol=atol,
            dt_min=dt_min,
            logqp=logqp,
            extra0=extra_solver_state,
        )
        return _finish(torch.stack(traj.ys), traj.log_ratios, traj.extra, logqp, extra)


def sdeint_adjoint(
    sde: Any,
    y0: torch.Tensor,
    ts: torch.Tensor | Sequence[float],
    bm: Any = None,
    method: str | None = None,
    adjoint_method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    adjoint_adaptive: bool = False,
    rtol: float = 1e-5,
    adjoint_rtol: float = 1e-5,
    atol: float = 1e-4,
    adjoint_atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: Mapping[str, Any] | None = None,
    adjoint_options: Mapping[str, Any] | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    names: Mapping[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: tuple | None = None,
):
    """As :func:`sdeint`, with gradients by an adjoint SDE solved backwards on the same Brownian path.

    method="reversible_heun" (with adjoint_method None or "adjoint_reversible_heun") uses the
    algebraically reversible adjoint of Kidger et al. 2021: each step is undone exactly and
    differentiated locally, so gradients equal direct backprop to floating-point precision. Any other
    method uses the stochastic adjoint of Li et al. 2020: the forward states are not stored (only those
    at the output times), the augmented Stratonovich SDE for (y, dL/dy, dL/dparams) is solved backwards
    with the midpoint method on the forward step grid (or, with adjoint_adaptive=True, with step doubling
    on the same Brownian path); gradients converge to the true ones as dt -> 0 (or the tolerances -> 0).

    Args:
        sde: as for sdeint; an ``nn.Module``'s parameters are the default ``adjoint_params``, any
            other SDE object needs ``adjoint_params``.
        adjoint_method: "midpoint" (the default for the stochastic adjoint) or "adjoint_reversible_heun".
        adjoint_adaptive: solve the backward adjoint SDE with step doubling (stochastic adjoint only): it
            starts with step dt, keeps the error ratio of (y, dL/dy, dL/dparams) within adjoint_rtol and
            adjoint_atol, never steps below dt_min, and stops where output cotangents enter.
        adjoint_rtol, adjoint_atol: its tolerances.
        adjoint_options: must be empty (the adjoint solvers take no options).
        adjoint_params: tensors to differentiate (default: sde.parameters()).
        logqp: as for sdeint; the KL integral's gradient is taken backwards too (exactly, with the
            reversible adjoint).
        extra: also return the solver's final extra state. With the reversible adjoint it is an output
            with gradients (a loss on it, or a solve continued from it, differentiates back through this
            solve); with the stochastic adjoint it is returned detached, as torchsde ignores its cotangents.
        extra_solver_state: the solver's extra state at ts[0] (default: computed from y0), the layout
            sdeint takes. The forward solve starts from it. The reversible adjoint returns exact gradients
            to its tensors (f0, g0, z0), as torchsde's adjoint of reversible Heun; the stochastic adjoint
            gives them none (torchsde's neither), only y0 and the parameters get gradients.
        The others: as for :func:`sdeint`.

    Returns:
        As :func:`sdeint`.

    Raises:
        ValueError: as for sdeint (an extra_solver_state of another layout than the method's included);
            also a non-Module sde without adjoint_params, unknown adjoint methods or options, Ito SDEs with
            general noise (stochastic adjoint), adjoint_adaptive with the reversible adjoint, negative adjoint
            tolerances or both zero.

    Reference:
        X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud, "Scalable Gradients for Stochastic Differential
        Equations", AISTATS 2020. P. Kidger, J. Foster, X. Li, T. Lyons, "Efficient and Accurate Gradients
        for Neural SDEs", NeurIPS 2021.
    """
    _check_transform(y0, adjoint=True)
    if adjoint_params is None:
        if not isinstance(sde, torch.nn.Module):
            raise ValueError(
                "sdeint_adjoint needs sde to be an nn.Module, or the tensors to differentiate in adjoint_params."
            )
        adjoint_params = tuple(sde.parameters())
    # each tensor once (as the ODE adjoints): listed twice, its gradient would be summed twice
    params = tuple({id(p): p for p in param_tensors(adjoint_params) if p.requires_grad}.values())
    if adjoint_options:
        raise ValueError(f"unknown adjoint_options {sorted(adjoint_options)}; the adjoint solvers take none.")
    with _solver_precision(y0) as autocast:
        p = prepare(sde, y0, ts, bm, method, dt, adaptive, rtol, atol, dt_min, options, names, logqp, autocast)
        if extra_solver_state is not None:
            _check_extra_state(p, y0, extra_solver_state)
        if len(p.ts) == 1:
            state = extra_solver_state
            if extra and state is None:
                state = p.solver.init(p.sde, p.ts[0], y0)  # as sdeint's
            return _finish(y0.unsqueeze(0), [y0.new_zeros(y0.shape[0])], state, logqp, extra)
        settings = dict(dt=dt, adaptive=adaptive, rtol=rtol, atol=atol, dt_min=dt_min, logqp=logqp)
        reversible = p.solver.name == "reversible_heun" and adjoint_method in (None, "adjoint_reversible_heun")
        if adjoint_adaptive and reversible:
            raise ValueError(
                "adjoint_adaptive=True does not apply to the reversible adjoint, which undoes the forward steps "
                "exactly; drop it, or use adjoint_method='midpoint' (the stochastic adjoint)."
            )
        check_tolerances(adjoint_rtol, adjoint_atol, "adjoint_")
        if adjoint_adaptive:
            warn_unresolvable_tolerance(float(adjoint_rtol), float(adjoint_atol), y0, "adjoint_")
        control = BackwardSteps(adjoint_adaptive, dt, adjoint_rtol, adjoint_atol, dt_min)
        if reversible:
            ys, log_ratios, extra_state = solve_reversible_adjoint(p, y0, params, settings, extra_solver_state)
        elif adjoint_method in (None, "midpoint"):
            # the forward solve starts from the given extra state; as in torchsde, no gradient reaches it
            start = None if extra_solver_state is None else tuple(x.detach() for x in extra_solver_state)
            ys, log_ratios, extra_state = solve_stochastic_adjoint(
                p, y0, params, {**settings, "extra0": start}, control
            )
        elif adjoint_method == "adjoint_reversible_heun":  # torchsde's name, with another forward method
            raise ValueError(
                f"adjoint_method='adjoint_reversible_heun' undoes reversible Heun steps, so it needs "
                f"method='reversible_heun' (got method={p.solver.name!r}); or use adjoint_method='midpoint' "
                "(the stochastic adjoint) with this method."
            )
        else:
            raise ValueError(
                f"unknown adjoint_method {adjoint_method!r}: use 'midpoint' (stochastic adjoint), or "
                "'adjoint_reversible_heun' with method='reversible_heun'."
            )
        return _finish(ys, list(log_ratios), extra_state, logqp, extra)
