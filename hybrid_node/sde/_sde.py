"""A uniform view of a user's SDE object: drift, diffusion and diffusion-times-noise for every noise type.

The user's object follows torchsde: methods ``f(t, y)`` and ``g(t, y)`` (or ``f_and_g``, ``g_prod``,
``f_and_g_prod``; other names through ``names``) and attributes ``noise_type`` and ``sde_type``.
Shapes, for y of shape (batch, d): drift (batch, d); diffusion (batch, d) for diagonal noise, else
(batch, d, m), with m = 1 for scalar noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .._autocast import autocast_dtype, full_precision

NOISE_TYPES = ("diagonal", "additive", "scalar", "general")
SDE_TYPES = ("ito", "stratonovich")

#: torchsde's ``names`` keys -> the default method name they rename.
NAME_KEYS = {
    "drift": "f",
    "diffusion": "g",
    "prior_drift": "h",
    "drift_and_diffusion": "f_and_g",
    "diffusion_prod": "g_prod",
    "drift_and_diffusion_prod": "f_and_g_prod",
}


def noise_product(noise_type: str, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The diffusion applied to a noise vector, g v, for the given noise type.

    Args:
        noise_type: one of NOISE_TYPES.
        g: diffusion, (batch, d) for diagonal noise, else (batch, d, m).
        v: noise, (batch, d) for diagonal noise, else (batch, m).

    Returns:
        (batch, d).
    """
    if noise_type == "diagonal":
        return g * v
    if noise_type == "scalar":
        return g[..., 0] * v  # v is (batch, 1): broadcasting is cheaper than a batched matmul
    with full_precision(g.device.type):  # under autocast a bmm ran in bfloat16 (1.2e-3 off an Euler solve)
        return torch.bmm(g, v.unsqueeze(-1)).squeeze(-1)


def field_autocast_of(y0: Any) -> tuple[str, torch.dtype] | None:
    """The caller's autocast on the state's device, which the drift and diffusion run under, or None.

    Args:
        y0: the initial state (its device picks the autocast; a non-tensor is checked later, read as CPU).

    Returns:
        (device type, autocast dtype), or None where autocast is off there.
    """
    device_type = y0.device.type if isinstance(y0, torch.Tensor) else "cpu"
    dtype = autocast_dtype(device_type)
    return None if dtype is None else (device_type, dtype)


def _cast_back(out: Any, y: torch.Tensor, low: torch.dtype) -> Any:
    """``out`` (a tensor or a tuple of them) with each part autocast left in ``low`` in ``y``'s dtype.

    Any other dtype stays as it is, for the solvers' dtype check to refuse with its hint.
    """
    if isinstance(out, torch.Tensor):
        return out.to(y.dtype) if out.dtype == low and y.dtype != low and y.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_cast_back(o, y, low) for o in out)
    return out


def _under_autocast(fn: Callable | None, autocast: tuple[str, torch.dtype] | None) -> Callable | None:
    """``fn(t, y, ...)`` run under the caller's autocast, its outputs cast back to the state's dtype.

    The solve itself runs with autocast off (:func:`hybrid_node.sde.sdeint`), so only the user's
    functions compute in the lower precision and the state stays the full-precision master copy
    (Micikevicius et al., "Mixed precision training", ICLR 2018), as :func:`hybrid_node.odeint` does.

    Args:
        fn: a user's drift, diffusion or product function, or None.
        autocast: (device type, dtype) of the caller's autocast (:func:`field_autocast_of`), or None.

    Returns:
        ``fn`` itself where it is None or autocast is off, else the wrapped function.
    """
    if fn is None or autocast is None:
        return fn
    device_type, low = autocast

    def call(t, y: torch.Tensor, *rest: Any) -> Any:
        with torch.autocast(device_type, dtype=low):
            out = fn(t, y, *rest)
        return _cast_back(out, y, low)

    return call


class _TimeCache:
    """The 0-d time tensor of the last float time asked for: f and g of one stage share one tensor.

    torchsde hands the vector fields a 0-d tensor (user code may call torch functions on it); building
    one per call costs as much as a small tensor operation."""

    __slots__ = ("key", "value")

    def __init__(self):
        self.key: tuple | None = None
        self.value: torch.Tensor | None = None

    def __call__(self, t, y: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.Tensor):
            return t
        key = (t, y.dtype, y.device)
        if key != self.key or self.value is None:
            self.key, self.value = key, torch.tensor(t, dtype=y.dtype, device=y.device)
        return self.value


class SDEView:
    """Normalised access to a user's SDE object (its settings fixed at construction).

    Within :meth:`reusing` the drift and diffusion at one given (t, y) are evaluated once, whoever asks.

    Args:
        sde: the user's object.
        names: optional torchsde-style renaming, e.g. ``{"drift": "my_f"}``.
        autocast: the caller's autocast (:func:`field_autocast_of`) to run the user's functions under,
            their outputs cast back to the state's dtype; None: call them as they are.

    Raises:
        ValueError: missing or unknown noise_type/sde_type, no drift or no diffusion, unknown ``names`` keys.
    """

    def __init__(
        self, sde: Any, names: Mapping[str, str] | None = None, autocast: tuple[str, torch.dtype] | None = None
    ):
        if names is not None and not isinstance(names, Mapping):
            # dict() of a list of names would fail with "dictionary update sequence element #0 has length 5"
            raise TypeError(
                f"names must be a dict from method roles to attribute names, e.g. {{'drift': 'f_post'}}, got "
                f"{type(names).__name__} {names!r}."
            )
        names = dict(names or {})
        unknown = set(names) - set(NAME_KEYS)
        if unknown:
            raise ValueError(f"unknown keys in names: {sorted(unknown)}; valid keys are {sorted(NAME_KEYS)}.")
        for key, attr in names.items():
            if not isinstance(attr, str):  # getattr's "attribute name must be string" named neither
                raise TypeError(f"names[{key!r}] must be the name of a method of the sde object (a str), got {attr!r}.")
            if not callable(getattr(sde, attr, None)):
                # else the role is silently missing, and the later error says the sde object defines no drift
                raise ValueError(
                    f"names[{key!r}] = {attr!r}, but the sde object has no method {attr!r}; name one of its methods."
                )
        for attr, valid in (("noise_type", NOISE_TYPES), ("sde_type", SDE_TYPES)):
            value = getattr(sde, attr, None)
            if value not in valid:
                raise ValueError(f"the sde object needs an attribute {attr} in {valid}, got {value!r}.")
        self.sde = sde
        self.noise_type: str = sde.noise_type
        self.sde_type: str = sde.sde_type

        def get(key: str):
            return _under_autocast(getattr(sde, names.get(key, NAME_KEYS[key]), None), autocast)

        self._f, self._g, self._h = get("drift"), get("diffusion"), get("prior_drift")
        self._fg, self._gp, self._fgp = (
            get("drift_and_diffusion"),
            get("diffusion_prod"),
            get("drift_and_diffusion_prod"),
        )
        if self._f is None and self._fg is None and self._fgp is None:
            raise ValueError("the sde object must define a drift: f(t, y), f_and_g(t, y) or f_and_g_prod(t, y, v).")
        if self._g is None and self._fg is None and self._gp is None and self._fgp is None:
            raise ValueError("the sde object must define a diffusion: g(t, y), f_and_g(t, y) or g_prod(t, y, v).")
        self.has_g = self._g is not None or self._fg is not None
        #: the diffusion matrix is the only way to the noise term (no user g_prod), so solvers may fuse it
        self.plain_g = self.has_g and self._gp is None and self._fgp is None
        self._time = _TimeCache()
        #: (t, y, {"f": ..., "g": ...}) while :meth:`reusing` is active
        self._memo: tuple[float, torch.Tensor, bool, dict[str, torch.Tensor]] | None = None

    @contextlib.contextmanager
    def reusing(self, t: float, y: torch.Tensor) -> Iterator[None]:
        """Within the block, f and g at this time and this very tensor ``y`` are evaluated at most once.

        The KL rate of ``logqp`` is taken at a step's start (t, y), where the step evaluates f and g too
        (torchsde evaluates them once for both). The values are kept for the block only: outside it the
        parameters may change between two calls with the same ``y``.

        Args:
            t: the time (a float, as the solvers pass it).
            y: the state; another tensor, even an equal one, is evaluated anew (it may carry another graph).
                So is a call in another grad mode: Milstein's derivative of g needs g's graph even in a
                solve without gradients.
        """
        self._memo = (t, y, torch.is_grad_enabled(), {})
        try:
            yield
        finally:
            self._memo = None

    def _kept(self, t, y: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The values kept for (t, y) by :meth:`reusing`, or None outside it or for another (t, y)."""
        memo = self._memo
        if memo is None or y is not memo[1] or not isinstance(t, float) or t != memo[0]:
            return None
        return memo[3] if torch.is_grad_enabled() == memo[2] else None

    def _reused(self, part: int, t, y: torch.Tensor, alone: Callable | None, missing: str) -> torch.Tensor:
        """f (``part`` 0) or g (1) at (t, y): the value :meth:`reusing` kept, else the user's function of it
        alone, else its part of ``f_and_g``; kept while the block is active.

        Args:
            part: 0 for the drift, 1 for the diffusion matrix (their places in ``f_and_g``'s pair).
            t, y: the time as the solver gives it and the state.
            alone: the user's function of that value alone, or None.
            missing: the message when the SDE gives the value neither alone nor through ``f_and_g``.

        Returns:
            The value at (t, y).

        Raises:
            ValueError: ``missing``, where the SDE gives the value only through a product with the noise.
        """
        key = "fg"[part]
        kept = self._kept(t, y)
        if kept is not None and key in kept:
            return kept[key]
        s = self._time(t, y)
        if alone is not None:
            out = alone(s, y)
        elif self._fg is not None:
            out = self._fg(s, y)[part]
        else:
            raise ValueError(missing)
        if kept is not None:
            kept[key] = out
        return out

    def f(self, t, y: torch.Tensor) -> torch.Tensor:
        return self._reused(0, t, y, self._f, "this method needs the drift alone; define f(t, y) on the sde object.")

    def g(self, t, y: torch.Tensor) -> torch.Tensor:
        missing = "this method needs the diffusion matrix; define g(t, y) or f_and_g(t, y) on the sde object."
        return self._reused(1, t, y, self._g, missing)

    def f_and_g(self, t, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept = self._kept(t, y)
        if self._fg is not None and not (kept is not None and "f" in kept and "g" in kept):
            f, g = self._fg(self._time(t, y), y)
            if kept is not None:
                kept["f"], kept["g"] = f, g
            return f, g
        return self.f(t, y), self.g(t, y)

    # g_prod and f_and_g_prod hand f and g the time as given (a float), so that :meth:`reusing` recognises it
    def g_prod(self, t, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self._gp is not None:
            return self._gp(self._time(t, y), y, v)
        if self._fgp is not None and not self.has_g:
            return self._fgp(self._time(t, y), y, v)[1]
        return noise_product(self.noise_type, self.g(t, y), v)

    def f_and_g_prod(self, t, y: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._fgp is not None:
            return self._fgp(self._time(t, y), y, v)
        return self.f(t, y), self.g_prod(t, y, v)

    def h(self, t, y: torch.Tensor) -> torch.Tensor:
        t = self._time(t, y)
        if self._h is None:
            raise ValueError(
                "logqp=True needs the prior drift h(t, y) on the sde object (or names={'prior_drift': ...})."
            )
        return self._h(t, y)

    def prod(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return noise_product(self.noise_type, g, v)

    def increment(
        self, y: torch.Tensor, f: torch.Tensor, h: float, g: torch.Tensor, v: torch.Tensor, c: float = 1.0
    ) -> torch.Tensor:
        """y + c (f h + g v) in two fused operations (one autograd node each) for diagonal noise.

        Args:
            y: state; f: drift; h: step; g: the diffusion matrix; v: noise; c: a scale.

        Returns:
            (batch, d).
        """
        if self.noise_type == "diagonal":
            return torch.addcmul(torch.add(y, f, alpha=c * h), g, v, value=c)
        return self.increment_prod(y, f, h, noise_product(self.noise_type, g, v), c)

    @staticmethod
    def increment_prod(y: torch.Tensor, f: torch.Tensor, h: float, gv: torch.Tensor, c: float = 1.0) -> torch.Tensor:
        """y + c (f h + gv) for a given noise term gv = g v (from ``g_prod``), in two fused operations.

        The same operations as :meth:`increment` for non-diagonal noise, so an SDE given by ``g_prod`` and
        one given by ``g`` step to the same bits (torchsde's guarantee; ``y + f * h + gv`` rounded apart).

        Args:
            y: state; f: drift; h: step; gv: the noise term; c: a scale.

        Returns:
            (batch, d).
        """
        return torch.add(torch.add(y, f, alpha=c * h), gv, alpha=c)
