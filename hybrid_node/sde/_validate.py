"""Validate sdeint's inputs once, with messages that say how to fix them, and fill in the defaults."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .._problem import refuse_meta, warn_unresolvable_tolerance
from .._term import check_derivative
from .._transforms import _has_tangent, derivative_mode, forward_mode_active
from ..controllers import bool_or_complex
from ._sde import SDEView
from .brownian import BrownianInterval
from .solvers import DEFAULT_METHOD, build_solver
from .solvers.base import SDESolver

#: how a drift or diffusion of another dtype than y0 is fixed (a float32 model on a float64 state was
#: computed in float32 and promoted, without a word)
_DTYPE_HINT = "e.g. build the model with .to(y0.dtype)"


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A checked problem: the SDE view, solver, times as floats, Brownian motion and noise size."""

    sde: SDEView
    solver: SDESolver
    ts: list[float]
    bm: Any
    noise_size: int


def _is_real_number(value: Any) -> bool:
    """Whether ``value`` is one real number: a Python or NumPy int or float, or a one-element real tensor."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and bool_or_complex(value) is None
    return bool_or_complex(value) is None and isinstance(value, (int, float, np.integer, np.floating))


def _forward_tangent(value: Any) -> bool:
    """Whether ``value`` may carry a forward-mode tangent: a ``torch.func.jvp``/``jacfwd`` level's (read, or
    hidden under an inner transform) or a ``torch.autograd.forward_ad`` dual's."""
    if not isinstance(value, torch.Tensor):
        return False
    return derivative_mode(value) in ("forward", "unknown") or (forward_mode_active() and _has_tangent(value))


def refuse_time_tangents(ts: Any, steps: Mapping[str, Any]) -> None:
    """Refuse a forward-mode tangent on the output times or the step settings, which a solve would drop.

    The loop reads ``ts`` and the step settings as Python floats, so a tangent on them vanished and
    ``torch.func.jvp`` in ``ts`` returned 0 (for dy = -y dt, 0 instead of about -0.368 at ts[-1] = 1).
    Carrying it is not a fix: with a nonzero diffusion y(t) is nowhere differentiable in t (a Brownian
    path is not, Kloeden & Platen 1992, sec. 2.4), and a derivative in the step size is the solver's
    error, not the SDE's. Reverse mode on them is refused in :func:`_times` and :func:`prepare`.

    Args:
        ts: the output times as given; steps: the step settings by name (dt, rtol, atol, dt_min).

    Raises:
        ValueError: one of them carries a tangent; the message says what differentiates instead.
    """
    if _forward_tangent(ts):
        raise ValueError(
            "ts carries a forward-mode tangent (torch.func.jvp/jacfwd in ts, or a torch.autograd.forward_ad "
            "dual tensor), which an SDE solve cannot carry: the times are read as floats, and with a nonzero "
            "diffusion y(t) has no derivative in t (a Brownian path has none). Pass ts without a tangent. "
            "Forward mode works on y0 and the SDE's parameters (hn.sdeint); reverse mode on ts is refused "
            "as in torchsde. For dy(t_i)/dt_i of an SDE without noise, solve it with hn.odeint, which carries "
            "tangents on t (dy(t_i)/dt_i = f(t_i, y(t_i)))."
        )
    for name, value in steps.items():
        if _forward_tangent(value):
            raise ValueError(
                f"{name} carries a forward-mode tangent (torch.func.jvp/jacfwd or a torch.autograd.forward_ad "
                f"dual tensor), which the solve reads as a float and drops: no derivative flows to {name}. "
                "Pass a float; forward mode works on y0 and the SDE's parameters (hn.sdeint)."
            )


def _times(ts: Any, y0: torch.Tensor) -> list[float]:
    if isinstance(ts, torch.Tensor):
        if ts.requires_grad:
            raise ValueError(
                "gradients with respect to ts are not supported (torchsde refuses them too): pass ts.detach(). "
                "To learn a time scale c, scale the SDE instead (same law): drift c f and diffusion sqrt(c) g."
            )
        if ts.ndim != 1:
            raise ValueError(f"ts must be a 1-D tensor of times, got shape {tuple(ts.shape)}.")
        if bool_or_complex(ts) is not None:  # else False/True read as the times 0 and 1, complex fails in float()
            raise ValueError(f"ts must hold real times, got a {ts.dtype} tensor; use e.g. torch.linspace(0, 1, 10).")
        refuse_meta("ts", ts)
        out = [float(v) for v in ts.detach().cpu().tolist()]
    elif isinstance(ts, (list, tuple)) and all(isinstance(v, (int, float)) for v in ts):
        out = [float(v) for v in ts]
    else:
        raise ValueError("ts must be a 1-D tensor or a list/tuple of floats.")
    if len(out) < 1:
        raise ValueError("ts must hold at least one time.")
    if not all(math.isfinite(v) for v in out):
        # NaN passes the increasing check below, and an infinite end time made the solve take no step
        raise ValueError(f"ts must be finite, got {[v for v in out if not math.isfinite(v)][:5]} among them.")
    if any(b <= a for a, b in zip(out[:-1], out[1:])):
        raise ValueError("ts must be strictly increasing (to solve backwards in time, reverse the SDE instead).")
    return out


def check_tolerances(rtol: Any, atol: Any, prefix: str = "") -> None:
    """Refuse tolerances that are not one finite non-negative real number each, or that are both zero; one
    of them may be 0 (as in torchsde).

    Args:
        rtol, atol: the tolerances: Python or NumPy numbers, or one-element tensors (torchsde's ``Scalar``).
        prefix: prepended to their names in the message (e.g. "adjoint_").

    Raises:
        ValueError: a value that is not one real number (a bool, a complex number, a string, None, a tensor
            of several values), a negative, NaN or infinite one, or both zero. An infinite tolerance
            accepted every step: the solve ran at the step sizes' upper bound without a word.
    """
    for name, value in ((prefix + "rtol", rtol), (prefix + "atol", atol)):
        if isinstance(value, torch.Tensor):
            if value.numel() != 1 or bool_or_complex(value) is not None:
                raise ValueError(
                    f"{name} must be one real number, got a {value.dtype} tensor of shape {tuple(value.shape)}; "
                    "sdeint takes one tolerance for all components (to weigh them differently, scale the state)."
                )
            value = float(value.detach())
        elif bool_or_complex(value) is not None or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be one real number, got {value!r}.")
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be non-negative and finite, got {value}.")
    if rtol == 0 and atol == 0:
        raise ValueError(f"{prefix}rtol and {prefix}atol must not both be 0 (no step would pass the error test).")


def _bm_interval(bm: Any) -> tuple[float, float] | None:
    """The interval [t0, t1] a Brownian motion is defined on, or None where it does not say.

    hybrid_node's motions have ``start``/``end``; torchsde's BrownianInterval (and its BrownianPath and
    BrownianTree subclasses) keep them as ``_start``/``_end``; a ReverseBrownian mirrors its base's.
    """
    base = getattr(bm, "base_brownian", None)
    if base is not None:
        inner = _bm_interval(base)
        return None if inner is None else (-inner[1], -inner[0])
    for lo, hi in (("start", "end"), ("_start", "_end")):
        a, b = getattr(bm, lo, None), getattr(bm, hi, None)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return float(a), float(b)
    return None


def _check_bm_covers(bm: Any, times: Sequence[float]) -> None:
    """Raise unless the Brownian motion is defined over [ts[0], ts[-1]].

    torchsde's BrownianInterval warns and clamps a query outside its interval, so a solve past its end saw
    no noise there and returned a wrong answer with only a warning; hybrid_node's raises at the first
    query outside. Refusing before the solve says which end is short. A miss of a millionth of the
    interval (float32 rounding of the times) is let through: the motion clamps it.

    Raises:
        ValueError: ts[0] before the motion's t0 or ts[-1] after its t1.
    """
    interval = _bm_interval(bm)
    if interval is None or len(times) < 2:
        return
    t0, t1 = interval
    slack = 1e-6 * (t1 - t0)
    if times[0] < t0 - slack or times[-1] > t1 + slack:
        raise ValueError(
            f"bm covers [{t0}, {t1}] but ts runs over [{times[0]}, {times[-1]}]; create the Brownian motion "
            f"over the whole solve, e.g. BrownianInterval(t0={times[0]}, t1={times[-1]}, ...), or pass bm=None."
        )


def _default_levy(solver: SDESolver) -> str:
    # torchsde's defaults: Foster's area for log_ode, the space-time area for srk.
    if solver.needs_full_levy_area:
        return "foster"
    return "space-time" if solver.needs_levy_area else "none"


def prepare(
    sde: Any,
    y0: Any,
    ts: Any,
    bm: Any,
    method: str | None,
    dt: float,
    adaptive: bool,
    rtol: float,
    atol: float,
    dt_min: float,
    options: Mapping[str, Any] | None,
    names: Mapping[str, str] | None,
    logqp: bool,
    autocast: tuple[str, torch.dtype] | None = None,
) -> Prepared:
    """Check every input of sdeint and build the solver and (if not given) the Brownian motion.

    Args:
        As :func:`hybrid_node.sde.sdeint`; autocast: the caller's autocast, which the SDE's functions
        run under (:class:`~hybrid_node.sde._sde.SDEView`).

    Returns:
        A :class:`Prepared` problem.

    Raises:
        ValueError: the message names the bad input and how to fix it.
    """
    view = SDEView(sde, names, autocast)
    if not isinstance(y0, torch.Tensor) or y0.ndim != 2:
        shape = tuple(y0.shape) if isinstance(y0, torch.Tensor) else type(y0).__name__
        # y0[None] fixes a 1-D state only; a state of more dimensions must be flattened per batch member
        fix = (
            "flatten it to (batch, state) with y0.reshape(y0.shape[0], -1) and reshape inside f and g"
            if isinstance(y0, torch.Tensor) and y0.ndim > 2
            else "add a batch dimension with y0[None]"
        )
        raise ValueError(f"y0 must be a tensor of shape (batch, state), got {shape}; {fix}.")
    if not y0.is_floating_point():
        raise ValueError(f"y0 must be a floating-point tensor, got {y0.dtype}.")
    refuse_meta("y0", y0)
    if not bool(torch.isfinite(y0).all()):
        # Otherwise the whole solve runs on NaN and fails at ts[-1] with a message about the vector field.
        bad = (~torch.isfinite(y0)).any(-1).nonzero().flatten().tolist()
        raise ValueError(f"y0 has NaN or infinite entries (batch rows {bad[:10]}); check the initial state.")
    refuse_time_tangents(ts, {"dt": dt, "rtol": rtol, "atol": atol, "dt_min": dt_min})
    times = _times(ts, y0)
    for name, value in (("dt", dt), ("rtol", rtol), ("atol", atol), ("dt_min", dt_min)):
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise ValueError(f"{name} must not require gradients (no gradient flows to it): pass a float.")
    check_tolerances(rtol, atol)
    if adaptive:
        warn_unresolvable_tolerance(float(rtol), float(atol), y0)
    for name, value in (("dt", dt), ("dt_min", dt_min)):
        if not _is_real_number(value):  # else "0.1" or None fails in the comparison below
            raise ValueError(f"{name} must be a positive number, got {type(value).__name__} {value!r}.")
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}.")
    method = DEFAULT_METHOD[(view.sde_type, view.noise_type)] if method is None else method
    if options is not None and not isinstance(options, Mapping):  # dict() of a list of names fails unhelpfully
        raise ValueError(
            f"options must be a dict of method options, e.g. {{'grad_free': True}}, got {type(options).__name__}."
        )
    solver = build_solver(method, view.sde_type, view.noise_type, dict(options or {}))
    if adaptive and solver.name == "euler" and view.noise_type != "additive":
        # torchsde warns here too (same first sentence, so its warning filters apply). Step doubling reads
        # Euler's error as g g' dW1 dW2 and accepts the steps where that is small, which biases the
        # accepted steps' Milstein term: on Ito GBM (dy = 0.5 y dt + 0.8 y dW, 60 paths) the mean error
        # at t = 1 stays at 0.18-0.21 from rtol 1e-1 to 1e-3, while milstein's falls from 0.096 to 0.011.
        warnings.warn(
            "Numerical solution is not guaranteed to converge to the correct solution when using adaptive "
            "time-stepping with the Euler--Maruyama method with non-additive noise. (Use method='milstein' "
            "or 'srk' with adaptive=True, or fixed steps with euler.)",
            stacklevel=3,
        )
    if solver.needs_diffusion_matrix and not view.has_g:
        raise ValueError(
            f"method {method!r} needs the diffusion matrix: define g(t, y) or f_and_g(t, y), not only g_prod."
        )
    batch, d = y0.shape
    t0 = torch.tensor(times[0], dtype=y0.dtype, device=y0.device)
    noise_size = None
    with torch.no_grad():
        if view._f is not None or view._fg is not None:  # else only f_and_g_prod gives the drift
            f = view.f(t0, y0)
            check_derivative(f, y0, _DTYPE_HINT, role="the drift", state="y0", same_shape=False, error=ValueError)
            if tuple(f.shape) != (batch, d):
                raise ValueError(f"the drift must have the shape of y0, {(batch, d)}, got {tuple(f.shape)}.")
        if view.has_g:
            g = view.g(t0, y0)
            check_derivative(g, y0, _DTYPE_HINT, role="the diffusion", state="y0", same_shape=False, error=ValueError)
            if view.noise_type == "diagonal":
                if tuple(g.shape) != (batch, d):
                    raise ValueError(
                        f"with noise_type 'diagonal' the diffusion must have shape (batch, state) = {(batch, d)}, "
                        f"got {tuple(g.shape)}; for a (batch, state, noise) matrix use noise_type 'general'."
                    )
                noise_size = d
            else:
                if g.ndim != 3 or tuple(g.shape[:2]) != (batch, d):
                    raise ValueError(
                        f"with noise_type {view.noise_type!r} the diffusion must have shape (batch, state, noise) = "
                        f"({batch}, {d}, m), got {tuple(g.shape)}; for a (batch, state) diffusion use 'diagonal'."
                    )
                noise_size = g.shape[2]
                if view.noise_type == "scalar" and noise_size != 1:
                    raise ValueError(
                        f"scalar noise needs a diffusion of shape ({batch}, {d}, 1), got {tuple(g.shape)}."
                    )
    if bm is not None:
        if not callable(bm):  # else a tensor of increments fails in the first step
            raise ValueError(
                f"bm must be a Brownian motion callable as bm(ta, tb), such as hn.BrownianInterval(t0, t1, "
                f"(batch, noise), dtype=y0.dtype), got {type(bm).__name__}."
            )
        shape = tuple(getattr(bm, "shape", ()))
        if len(shape) != 2 or shape[0] != batch or (noise_size is not None and shape[1] != noise_size):
            hint = ""
            if logqp and view.noise_type == "diagonal" and shape == (batch, d + 1):
                # torchsde solves the KL term as an extra state with its own (unused) noise channel
                hint = (
                    " (torchsde's logqp wants one channel more for its KL state; here the KL term is "
                    "integrated beside the solve and takes no noise: drop the last channel)"
                )
            raise ValueError(f"bm must have shape (batch, noise) = ({batch}, {noise_size or 'm'}), got {shape}{hint}.")
        noise_size = shape[1]
        # a Brownian motion of another dtype promoted the whole solve to its dtype (a float64 one made
        # float32 states float64); one on another device cannot step the state
        dtype, device = getattr(bm, "dtype", y0.dtype), getattr(bm, "device", y0.device)
        if dtype != y0.dtype:
            raise ValueError(
                f"bm has dtype {dtype} but y0 has {y0.dtype}; create the Brownian motion with dtype=y0.dtype."
            )
        device = torch.device(device)  # "cuda" (the current device) matches y0's "cuda:0"
        if device.type != y0.device.type or device.index not in (None, y0.device.index):
            raise ValueError(
                f"bm is on {device} but y0 is on {y0.device}; create the Brownian motion with device=y0.device."
            )
        _check_bm_covers(bm, times)
        levy = getattr(bm, "levy_area_approximation", "none")
        if solver.needs_full_levy_area and levy not in ("davie", "foster"):
            raise ValueError(
                f"method {method!r} needs a Levy area: create the Brownian motion with "
                "levy_area_approximation='foster' (or 'davie'), or pass bm=None."
            )
        if solver.needs_levy_area and levy == "none":
            raise ValueError(
                f"method {method!r} needs a space-time Levy area: create the Brownian motion with "
                "levy_area_approximation='space-time', or pass bm=None."
            )
    if noise_size is None:
        raise ValueError("cannot tell the number of noise channels from g_prod alone; pass bm explicitly.")
    if logqp:
        with torch.no_grad():
            view.h(t0, y0)  # raises with a clear message if the prior drift is missing
    if bm is None and len(times) > 1:
        bm = BrownianInterval(
            times[0],
            times[-1],
            (batch, noise_size),
            dtype=y0.dtype,
            device=y0.device,
            levy_area_approximation=_default_levy(solver),
            dt=None if adaptive else dt,
        )
    return Prepared(view, solver, times, bm, noise_size)
