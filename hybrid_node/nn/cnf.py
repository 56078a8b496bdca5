"""Continuous normalizing flows (CNF) with exact or Hutchinson traces and RNODE regularisers.

A CNF moves samples of a base density N(0, sigma^2 I) with dz/dt = f(t, z) and tracks their log-density
with the instantaneous change of variables d log p(z(t)) / dt = -tr(df/dz) (Chen et al. 2018, Theorem 1).
Training maximises log p(x) of data, computed by integrating from the data to the base; sampling
integrates from the base to the data. Following FFJORD (Grathwohl et al. 2019) the trace is exact or
Hutchinson's estimate with noise fixed over one solve, each block has a learnable integration time T,
and blocks can be stacked. RNODE's regularisers (Finlay et al. 2020) are integrated alongside:
kinetic energy int ||f||^2 and Jacobian Frobenius norm int ||eps^T df/dz||^2.

Time convention: a block with integration time T is solved in the normalised time s in [0, 1] with
g(s, z) = T f(sT, z), so a learnable T needs no gradient through the solver's time grid and the
adjoint treats T like any other parameter. The regularisers are measured in that solver time,
int_0^1 ||g||^2 ds = T int_0^T ||f||^2 dt (and likewise for the Jacobian term); in general they measure
the smoothness the solver actually sees. For T = 1 they are RNODE's integrals up to its normalisation:
RNODE's code (cfinlay/ffjord-rnode) integrates 0.5 mean_i f_i^2 and mean_i (eps^T df/dz)_i^2, i.e.
||f||^2 / (2D) and ||eps^T df/dz||^2 / D, so its weights lambda_K, lambda_J are lambda_K / (2D) and
lambda_J / D here. It also leaves the two integrals out of the step-size control (tolerances of 1e20
on them); here they are part of the error norm like z and log p by default (a regularised solve may
take more steps), and ``CNFSolver(regularizers_in_error_norm=False)`` leaves them out as RNODE does.

Time direction: data sit at t = T and the base at t = 0, as in torchdiffeq's examples/cnf.py; FFJORD
puts data at t = 0 and the base at t = T, so its field f(t, z) is this library's -f(T - t, z).

Example:
    >>> from hybrid_node.nn.cnf import CNF
    >>> from hybrid_node.nn.cnf_fields import TimeMLPField
    >>> flow = CNF([TimeMLPField(2)], dim=2)
    >>> x, logq = flow.sample(16)
    >>> logp = flow.log_prob(x)          # equals logq up to the solver tolerance
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from .._api import odeint as _odeint
from .._api import odeint_adjoint as _odeint_adjoint
from .._errors import SolverError
from .._registry import METHOD_SPECS, build_solver
from .._settings_key import value_semantics
from ..controllers import ConstantStepSize, rms_norm
from ..solvers.symplectic import PartitionedComposition
from ._checks import no_single_forward, nonfinite_rows, positive_tolerance, refuse_inert_tolerances
from ._kept import kept_field
from .cnf_fields import PlanarCNFField, TimeMLPField
from .cnf_trace import NOISE_KINDS, exact_divergence, hutchinson_divergence, sample_noise

__all__ = [
    "CNF",
    "CNFBlock",
    "CNFSolver",
    "ExactTrace",
    "FlowResult",
    "HutchinsonTrace",
    "RNODERegularization",
]


@dataclasses.dataclass(frozen=True)
class ExactTrace:
    """Exact tr(df/dz) from the full Jacobian: D batched vector-Jacobian products (low dimensions)."""


@dataclasses.dataclass(frozen=True)
class HutchinsonTrace:
    """Hutchinson's estimate eps^T (df/dz) eps (Hutchinson 1990; Grathwohl et al. 2019).

    Attributes:
        noise: "rademacher" or "gaussian"; one draw per sample, fixed over one solve.
    """

    noise: str = "rademacher"

    def __post_init__(self):
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"Unknown noise {self.noise!r}; choose one of {', '.join(NOISE_KINDS)}.")


TraceEstimator = Union[ExactTrace, HutchinsonTrace]


@dataclasses.dataclass(frozen=True)
class RNODERegularization:
    """Weights of RNODE's regularisers (Finlay et al. 2020), added to the mean negative log-likelihood.

    The integrands are sums over the D coordinates, without RNODE's factor 0.5 and mean over
    coordinates: a weight lambda of RNODE's code is lambda / (2D) for ``kinetic`` and lambda / D for
    ``jacobian`` here (see the module docstring).

    Attributes:
        kinetic: weight of int ||f||^2 (kinetic energy of the flow).
        jacobian: weight of int ||eps^T df/dz||^2 (Frobenius norm of the Jacobian, estimated).
    """

    kinetic: float = 0.0
    jacobian: float = 0.0

    def __post_init__(self):
        for name in ("kinetic", "jacobian"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"RNODERegularization.{name} must be a finite number >= 0, got {value!r}.")

    @property
    def active(self) -> bool:
        return self.kinetic > 0 or self.jacobian > 0


#: CNFSolver's default tolerances (a tolerance away from them is refused for a fixed-step method)
_DEFAULT_TOLERANCES = {"rtol": 1e-5, "atol": 1e-5}


@value_semantics
@dataclasses.dataclass(frozen=True)
class CNFSolver:
    """How each block is integrated.

    Attributes:
        method: ODE method name as accepted by :func:`hybrid_node.odeint` on the torch backend (e.g.
            "dopri5", "rk4"). The partitioned symplectic methods ("leapfrog", "yoshida4", ...) are
            refused: they integrate a (q, p) pair with a separable field, and the CNF's state (z, log p)
            is not one.
        rtol, atol: tolerances of adaptive methods (FFJORD uses 1e-5 on toy data).
        options: solver options, copied (shallowly) when the solver is built. A fixed-step method
            needs {"step_size": ...} (or a ``grid_constructor``): the solver time of every block runs
            over [0, 1], so without one it would take a single step per block. The implicit and
            Rosenbrock methods get {"jacobian": "loop"} unless the options name another: the augmented
            dynamics call torch.autograd at every evaluation, which a vectorised Jacobian cannot trace
            (it would fall back to the loop at every Jacobian, after a failed attempt).
        adjoint: compute gradients with the adjoint method (O(1) memory) instead of backpropagating
            through the solver: those of the trainable parameters, and of the points when they need
            gradients (``d log p / dx`` of a frozen flow too).
        regularizers_in_error_norm: whether the two RNODE integrals count in an adaptive method's error
            norm, like z and log p (the default, as in FFJORD's code). False measures the error of z
            and log p only, as RNODE's code does (tolerances of 1e20 on the integrals): a regularised
            solve then takes the steps of the unregularised one and the integrals are only as accurate
            as those steps make them. Only the forward solve's norm changes; an adjoint's backward
            solve keeps its own.

    Raises:
        TypeError: ``method`` is not a string, or ``adjoint`` or ``regularizers_in_error_norm`` is not
            a bool.
        ValueError: ``rtol`` or ``atol`` is not a finite positive number; an unknown method or option;
            a method the CNF cannot use, or a fixed-step method without a step size, or with ``rtol`` or
            ``atol`` away from its default (a fixed-step solve measures no error);
            ``regularizers_in_error_norm=False`` with a norm of one's own in ``options`` or with a
            method whose error norm cannot be set (``scipy_solver``).
    """

    method: str = "dopri5"
    rtol: float = _DEFAULT_TOLERANCES["rtol"]
    atol: float = _DEFAULT_TOLERANCES["atol"]
    options: Mapping[str, Any] | None = None
    adjoint: bool = False
    regularizers_in_error_norm: bool = True

    def __post_init__(self):
        if not isinstance(self.method, str):
            raise TypeError(f"method must be a string such as 'dopri5', got {type(self.method).__name__}.")
        for name in ("rtol", "atol"):
            positive_tolerance(f"CNFSolver.{name}", getattr(self, name))
        if not isinstance(self.adjoint, bool):  # a string such as "no" would be truthy and pick the adjoint
            raise TypeError(f"CNFSolver.adjoint must be True or False, got {self.adjoint!r}.")
        if not isinstance(self.regularizers_in_error_norm, bool):
            raise TypeError(
                f"CNFSolver.regularizers_in_error_norm must be True or False, got {self.regularizers_in_error_norm!r}."
            )
        if isinstance(self.options, Mapping):
            # frozen and checked below: a later change to the caller's dict (emptied, a fixed-step
            # method would take one step per block) must not reach the solves unchecked
            object.__setattr__(self, "options", dict(self.options))
        self._check_method()
        # rk4 with rtol=1e-3 took the steps it takes at the default: a tolerance that looked used
        given = {"rtol": self.rtol, "atol": self.atol}
        refuse_inert_tolerances("CNFSolver", self.method, self.options, given, _DEFAULT_TOLERANCES)
        if "jacobian" in METHOD_SPECS[self.method].options and "jacobian" not in (self.options or {}):
            object.__setattr__(self, "options", {**(self.options or {}), "jacobian": "loop"})

    def _check_method(self) -> None:
        """Refuse, before any solve, what odeint would run to a wrong or confusing result for a CNF.

        Raises:
            ValueError: an unknown method or option (odeint's message), a partitioned method, or a
                fixed-step method without a step size or grid.
        """
        options = dict(self.options) if self.options else {}
        solver, controller, _ = build_solver(self.method, options, float(self.rtol), float(self.atol))
        if isinstance(solver, PartitionedComposition):
            raise ValueError(
                f"method {self.method!r} is a partitioned (symplectic) method for a (q, p) state with a separable "
                "field; a CNF's state is not one. Use an explicit Runge-Kutta method such as 'dopri5' or 'rk4'."
            )
        if (
            isinstance(controller, ConstantStepSize)
            and controller.step_size is None
            and controller.grid_constructor is None
        ):
            # The output times of a block are its solver times 0 and 1 (plus the path's), so the grid
            # would be one step per block, and another one when from_base is asked for a path.
            raise ValueError(
                f"method {self.method!r} takes fixed steps: give CNFSolver(options={{'step_size': ...}}) "
                "(each block is solved over the solver time [0, 1]), or use an adaptive method such as 'dopri5'."
            )
        if not self.regularizers_in_error_norm:
            if "norm" in options:
                # two answers to one question: which parts the step-size control measures
                raise ValueError(
                    "CNFSolver got both options['norm'] and regularizers_in_error_norm=False; give one: the "
                    "norm alone (it sees the whole state tuple, (z, log p, kinetic, jacobian) when regularised), "
                    "or regularizers_in_error_norm=False alone (the largest RMS of z and log p)."
                )
            if not isinstance(controller, ConstantStepSize):
                try:
                    build_solver(
                        self.method, {**options, "norm": _state_error_norm}, float(self.rtol), float(self.atol)
                    )
                except ValueError as err:
                    raise ValueError(
                        f"method {self.method!r} chooses its steps with an error norm that cannot be set, so "
                        "regularizers_in_error_norm=False cannot take effect; use an adaptive method such as "
                        "'dopri5', or leave regularizers_in_error_norm at True."
                    ) from err

    def _solve_options(self, regularize: bool) -> dict[str, Any] | None:
        """The options of one solve: ``options``, with the error norm of z and log p alone when the
        state carries the regularisers and they are to be left out of it.

        Args:
            regularize: the solve's state carries the two regulariser integrals.

        Returns:
            The options for :func:`hybrid_node.odeint`, or None for none.
        """
        options = dict(self.options) if self.options else {}
        if regularize and not self.regularizers_in_error_norm:
            solver_controller = build_solver(self.method, options, float(self.rtol), float(self.atol))[1]
            if not isinstance(solver_controller, ConstantStepSize):  # fixed steps measure no error
                options["norm"] = _state_error_norm
        return options or None


def _state_error_norm(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The error norm of a regularised CNF state (z, log p, kinetic, jacobian) without the integrals:
    the largest RMS of z and log p, which is the default norm of the unregularised state (z, log p).

    A module-level function, so that compiled graphs (cached per norm by identity) serve every solve.

    Args:
        parts: the scaled error of each part of the state tuple.

    Returns:
        A 0-d tensor.
    """
    return torch.stack([rms_norm(parts[0]), rms_norm(parts[1])]).max()


@dataclasses.dataclass
class FlowResult:
    """Outcome of pushing a batch through the flow.

    Attributes:
        z: end points, shape (B, D): base points for :meth:`CNF.to_base`, data for :meth:`CNF.from_base`.
        log_prob: log-density of the data points under the model, shape (B,).
        delta_logp: total change of log-density along the path, shape (B,).
        kinetic: int ||g||^2 ds summed over blocks, shape (B,), or None when not computed.
        jacobian: int ||eps^T dg/dz||^2 ds (exact ||dg/dz||_F^2 under :class:`ExactTrace`), or None.
        nfe: evaluations of the augmented dynamics over all blocks in the forward solves.
        path: states at the requested intermediate times, shape (K, B, D), or None.
    """

    z: torch.Tensor
    log_prob: torch.Tensor
    delta_logp: torch.Tensor
    kinetic: torch.Tensor | None = None
    jacobian: torch.Tensor | None = None
    nfe: int = 0
    path: torch.Tensor | None = None


class CNFBlock(nn.Module):
    """One continuous flow: a vector field and its integration time T = exp(log_end_time).

    log T is stored in the default dtype at construction, like any module's initial weights: a block
    built in float32 and then converted with ``.double()`` keeps the float32 rounding of log T
    (end_time=1.7 becomes T = 1.70000002). Build under ``torch.set_default_dtype(torch.float64)``
    when T must be exact to float64, e.g. to compare with an analytic solution.

    Args:
        field: module called as ``field(t, z)`` with scalar ``t`` and ``z`` of shape (B, D).
        end_time: initial T > 0.
        learn_end_time: make T a trained parameter (FFJORD).

    Raises:
        TypeError: ``field`` is not an ``nn.Module``.
        ValueError: ``end_time`` not a finite positive number.
    """

    def __init__(self, field: nn.Module, end_time: float = 1.0, learn_end_time: bool = True):
        super().__init__()
        if not isinstance(field, nn.Module):
            raise TypeError(f"field must be a torch.nn.Module called as field(t, z), got {type(field).__name__}.")
        # inf would pass "> 0" but make log T = inf and every solve NaN
        if not (end_time > 0 and math.isfinite(end_time)):
            raise ValueError(f"end_time must be a finite positive number, got {end_time}.")
        self.field = field
        log_t = torch.tensor(math.log(end_time))
        if learn_end_time:
            self.log_end_time = nn.Parameter(log_t)
        else:
            self.register_buffer("log_end_time", log_t)

    @property
    def end_time(self) -> torch.Tensor:
        return self.log_end_time.exp()


class _AugmentedDynamics(nn.Module):
    """Right-hand side of [z, log p, kinetic, jacobian] in solver time s for the solves of one block
    in one direction with one estimator.

    One per combination, kept by the CNF across solves (:func:`~hybrid_node.nn._kept.kept_field`), so
    that ``compile=True``'s graphs, cached per field object, serve every solve; the probe noise and the
    evaluation count are set before each solve. A module holding the block, so that its parameters are
    the adjoint's and the compiled graphs handle ``nfe`` as a field's own call counter.

    The adjoint's backward solve calls this object again, possibly after later solves have set other
    noise: :func:`_pin_noise` gives it back each solve's own noise just before that solve's backward.
    """

    def __init__(self, block: CNFBlock, *, reverse: bool, estimator: TraceEstimator, regularize: bool):
        super().__init__()
        self.block = block
        self.reverse = reverse
        self.estimator = estimator
        self.regularize = regularize
        self.noise: torch.Tensor | None = None
        self.nfe = 0

    def forward(self, s: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        self.nfe += 1
        z = state[0]
        keep_graph = torch.is_grad_enabled()
        T = self.block.end_time.to(z.dtype)
        # Reverse direction: z(s) follows the flow backwards from t = T to t = 0 as s goes 0 -> 1.
        t = T * (1 - s) if self.reverse else T * s
        scale = -T if self.reverse else T

        def g(zz: torch.Tensor) -> torch.Tensor:
            return scale * self.block.field(t, zz)

        if isinstance(self.estimator, ExactTrace):
            div = exact_divergence(g, z, create_graph=keep_graph)
        else:
            assert self.noise is not None, "a Hutchinson estimator is built with its noise"
            div = hutchinson_divergence(g, z, self.noise, create_graph=keep_graph)
        out = [div.f, -div.trace]
        if self.regularize:
            out += [div.f.pow(2).sum(-1), div.frobenius_sq]
        if not keep_graph:
            out = [o.detach() for o in out]
        return tuple(out)


class CNF(nn.Module):
    """A stack of continuous normalizing flow blocks over a Gaussian base density.

    Args:
        fields: one vector field per block (or a single module), each called as ``field(t, z)``.
        dim: data dimension D.
        end_time: initial integration time T of every block.
        learn_end_time: train T (FFJORD).
        trace: :class:`ExactTrace` or :class:`HutchinsonTrace`, used unless a call overrides it.
        solver: :class:`CNFSolver` settings.
        regularization: :class:`RNODERegularization` weights used by :meth:`loss`.
        base_std: standard deviation sigma of the base density N(0, sigma^2 I).

    Raises:
        TypeError / ValueError: bad settings, with the fix in the message.
    """

    def __init__(
        self,
        fields: nn.Module | Sequence[nn.Module],
        dim: int,
        *,
        end_time: float = 1.0,
        learn_end_time: bool = True,
        trace: TraceEstimator = ExactTrace(),
        solver: CNFSolver = CNFSolver(),
        regularization: RNODERegularization = RNODERegularization(),
        base_std: float = 1.0,
    ):
        super().__init__()
        if isinstance(fields, nn.Module):
            fields = [fields]
        fields = list(fields)
        if not fields:
            raise ValueError("A CNF needs at least one vector field.")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}.")
        _check_estimator(trace)
        if not isinstance(solver, CNFSolver):
            raise TypeError(f"solver must be a CNFSolver, got {type(solver).__name__}.")
        if not isinstance(regularization, RNODERegularization):
            raise TypeError(f"regularization must be an RNODERegularization, got {type(regularization).__name__}.")
        # inf would make every log-density -inf (and sample() return inf)
        if isinstance(base_std, bool) or not (base_std > 0 and math.isfinite(base_std)):
            raise ValueError(f"base_std must be a finite positive number, got {base_std}.")
        for i, field in enumerate(fields):
            field_dim = field.dim if isinstance(field, (PlanarCNFField, TimeMLPField)) else dim
            if field_dim != dim:
                raise ValueError(
                    f"fields[{i}] ({type(field).__name__}) is a {field_dim}-d vector field but the CNF has "
                    f"dim={dim}; build the field with dim={dim} or the CNF with dim={field_dim}."
                )
        self.dim = dim
        self.blocks = nn.ModuleList(CNFBlock(f, end_time, learn_end_time) for f in fields)
        self.trace = trace
        self.solver = solver
        self.regularization = regularization
        self.base_std = float(base_std)

    def forward(self, *args, **kwargs):
        """Refused: a flow has several entry points (:meth:`log_prob`, :meth:`loss`, :meth:`to_base`,
        :meth:`from_base`, :meth:`sample`), so ``flow(x)`` or ``torch.compile(flow)(x)`` would be ambiguous.

        Raises:
            NotImplementedError: always, naming those methods and how to compile one.
        """
        raise no_single_forward(self, ("log_prob", "loss", "to_base", "from_base", "sample"))

    # -- densities -------------------------------------------------------------------------------
    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, sigma^2 I) per row, shape (B,)."""
        var = self.base_std**2
        return -0.5 * z.pow(2).sum(-1) / var - 0.5 * self.dim * math.log(2 * math.pi * var)

    def to_base(
        self,
        x: torch.Tensor,
        *,
        trace: TraceEstimator | None = None,
        regularize: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> FlowResult:
        """Integrate data to the base density: log p(x) = log p_base(z) - delta_logp.

        Args:
            x: data, shape (B, D).
            trace: override of the trace estimator for this call.
            regularize: integrate the RNODE quantities; default: when the weights are non-zero.
            generator: torch Generator for the Hutchinson noise.

        Returns:
            :class:`FlowResult` with ``z`` the base points and ``log_prob`` the log-density of ``x``.

        Raises:
            ValueError: ``x`` has the wrong shape or non-finite values.
            TypeError: ``x`` is not a floating-point tensor.
            SolverError: a block's solve failed; its message and ``t`` name the flow time t (the
                solver's time s of [0, 1] is the error's ``__cause__``).
        """
        self._check_points(x, "x")
        regularize = self.regularization.active if regularize is None else bool(regularize)
        z, delta, reg, nfe, _ = self._run(
            x,
            list(reversed(self.blocks)),
            reverse=True,
            trace=trace,
            regularize=regularize,
            n_times=None,
            generator=generator,
        )
        return FlowResult(
            z=z,
            log_prob=self.base_log_prob(z) - delta,
            delta_logp=delta,
            kinetic=reg[0] if regularize else None,
            jacobian=reg[1] if regularize else None,
            nfe=nfe,
        )

    def log_prob(self, x: torch.Tensor, *, trace: TraceEstimator | None = None) -> torch.Tensor:
        """log-density of ``x`` (B, D) under the model, shape (B,).

        Args:
            x: data points.
            trace: the trace estimator for this call; by default the flow's own (``trace=`` of the
                constructor), so a flow trained with :class:`HutchinsonTrace` gives a stochastic
                estimate unless ``trace=ExactTrace()`` is passed.

        Returns:
            log p(x) for each row.
        """
        return self.to_base(x, trace=trace, regularize=False).log_prob

    def from_base(
        self,
        z: torch.Tensor,
        *,
        trace: TraceEstimator | None = None,
        n_times: int | None = None,
        generator: torch.Generator | None = None,
    ) -> FlowResult:
        """Integrate base points to data space: log q(x) = log p_base(z) + delta_logp.

        Args:
            z: base points, shape (B, D).
            trace: override of the trace estimator for this call.
            n_times: also return the path at ``n_times`` evenly spaced solver times per block (>= 2).
            generator: torch Generator for the Hutchinson noise.

        Returns:
            :class:`FlowResult` with ``z`` the data points and ``log_prob`` their log-density.

        Raises:
            ValueError: ``z`` has the wrong shape or non-finite values, or ``n_times`` < 2.
            TypeError: ``z`` is not a floating-point tensor.
            SolverError: a block's solve failed; its message and ``t`` name the flow time t (the
                solver's time s of [0, 1] is the error's ``__cause__``).
        """
        self._check_points(z, "z")
        if n_times is not None and (isinstance(n_times, bool) or not isinstance(n_times, int) or n_times < 2):
            raise ValueError(f"n_times must be an int >= 2 or None, got {n_times!r}.")
        x, delta, _, nfe, path = self._run(
            z, list(self.blocks), reverse=False, trace=trace, regularize=False, n_times=n_times, generator=generator
        )
        return FlowResult(z=x, log_prob=self.base_log_prob(z) + delta, delta_logp=delta, nfe=nfe, path=path)

    def sample(
        self, n: int, *, trace: TraceEstimator | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples and their log-densities.

        Returns:
            (x, log_prob) with shapes (n, D) and (n,).

        Raises:
            ValueError: ``n`` not a positive int.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}.")
        # A flow with a fixed T and fields of buffers only (a given matrix) has no parameters; its
        # floating-point buffers still say which dtype and device ``.double()`` or ``.to()`` gave it.
        tensors = itertools.chain(self.parameters(), (b for b in self.buffers() if b.is_floating_point()))
        p = next(tensors, None)
        dtype = p.dtype if p is not None else torch.get_default_dtype()
        device = p.device if p is not None else None
        z = torch.randn(n, self.dim, dtype=dtype, device=device, generator=generator) * self.base_std
        out = self.from_base(z, trace=trace, generator=generator)
        return out.z, out.log_prob

    def loss(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, FlowResult]:
        """Mean negative log-likelihood plus the weighted RNODE regularisers.

        Returns:
            (scalar loss, :class:`FlowResult` of the data-to-base solve).

        Raises:
            ValueError: ``x`` has the wrong shape, non-finite values or no rows (the mean of no
                log-densities is undefined: it came back as a NaN loss after a whole solve).
            TypeError: ``x`` is not a floating-point tensor.
        """
        self._check_points(x, "x")
        if x.shape[0] == 0:
            raise ValueError(
                f"x holds no points (shape {tuple(x.shape)}): the loss is a mean over the batch; pass at least one row."
            )
        res = self.to_base(x, generator=generator)
        loss = -res.log_prob.mean()
        w = self.regularization
        if w.active:
            # to_base integrates the regularisers whenever their weights are active.
            assert res.kinetic is not None and res.jacobian is not None
            loss = loss + w.kinetic * res.kinetic.mean() + w.jacobian * res.jacobian.mean()
        return loss, res

    # -- internals -------------------------------------------------------------------------------
    def _check_points(self, x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (batch, {self.dim}), got {type(x).__name__}.")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (batch, {self.dim}), got {tuple(x.shape)}.")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}.")
        # The solver would refuse it too, but name it "y0[0]", a part of the CNF's internal state.
        shown = nonfinite_rows(x)
        if shown is not None:
            raise ValueError(f"{name} contains NaN or infinite values ({shown}).")

    def _run(self, z, blocks, *, reverse, trace, regularize, n_times, generator):
        if torch.is_inference_mode_enabled():
            # inference mode records no graph even inside enable_grad, so the divergence's vector-Jacobian
            # products came out zero and log_prob lacked its trace integral (0.5 off per sample on a small
            # CNF), silently; the flow runs without inference mode (and without gradients) instead
            with torch.inference_mode(False), torch.no_grad():
                kwargs = dict(reverse=reverse, trace=trace, regularize=regularize, n_times=n_times)
                return self._run(z.clone(), blocks, generator=generator, **kwargs)
        estimator = self.trace if trace is None else trace
        _check_estimator(estimator)
        noise = None
        if isinstance(estimator, HutchinsonTrace):
            noise = sample_noise(estimator.noise, z, generator)
        zero = z.new_zeros(z.shape[0])
        delta, kinetic, jac = zero, zero, zero
        nfe = 0
        k = 2 if n_times is None else n_times
        s = torch.linspace(0.0, 1.0, k, dtype=z.dtype, device=z.device)
        path = [z] if n_times is not None else None
        for block in blocks:
            dyn = kept_field(
                self,
                ("augmented", block, reverse, estimator, regularize),
                functools.partial(
                    _AugmentedDynamics, block, reverse=reverse, estimator=estimator, regularize=regularize
                ),
            )
            dyn.noise, dyn.nfe = noise, 0
            state = (z, zero, zero, zero) if regularize else (z, zero)
            ys = self._solve(dyn, state, s, block)
            nfe += dyn.nfe
            z = ys[0][-1]
            delta = delta + ys[1][-1]
            if regularize:
                kinetic = kinetic + ys[2][-1]
                jac = jac + ys[3][-1]
            if path is not None:
                path.extend(ys[0][1:])
        return z, delta, (kinetic, jac), nfe, (torch.stack(path) if path is not None else None)

    def _solve(self, dyn, state, s, block):
        st = self.solver
        # The augmented dynamics differentiate the field with torch autograd at every evaluation, which
        # the Julia backend cannot translate; the CNF therefore always runs on the torch backend.
        kwargs: dict[str, Any] = dict(
            rtol=st.rtol,
            atol=st.atol,
            method=st.method,
            options=st._solve_options(regularize=len(state) > 2),
            backend="torch",
        )
        try:
            if st.adjoint:
                params = tuple(p for p in block.parameters() if p.requires_grad)
                # also without trainable parameters when the points need gradients (d log p / dx of a frozen
                # flow): that solve backpropagated through the solver, adjoint=True accepted and unused
                if torch.is_grad_enabled() and (params or any(part.requires_grad for part in state)):
                    ys = _odeint_adjoint(dyn, state, s, adjoint_params=params, **kwargs)
                    if dyn.noise is not None:
                        _pin_noise(ys, dyn, dyn.noise)
                    return ys
            return _odeint(dyn, state, s, **kwargs)
        except SolverError as err:
            index = next(i for i, b in enumerate(self.blocks) if b is block)
            raise _in_flow_time(err, index, float(block.end_time.detach()), dyn.reverse) from err


def _in_flow_time(err: SolverError, index: int, end_time: float, reverse: bool) -> SolverError:
    """``err`` of a block's solve, told in the flow's time t rather than the solver's time s.

    The solver sees s in [0, 1] (module docstring), which names no time of the user's flow: its
    ``t`` and every time its message names are translated to t = T s (base to data) or
    t = T (1 - s) (data to base).

    Args:
        err: the solver's error; its ``t`` is the solver time s it reached.
        index: the block's index in ``CNF.blocks``.
        end_time: the block's integration time T.
        reverse: the solve ran from data to base.

    Returns:
        A SolverError of the same status whose ``t`` is the flow time and whose message names it.
    """

    def flow_time(s: float) -> float:
        return end_time * (1 - s) if reverse else end_time * s

    message = str(err)
    prefix = f"Solve failed at t={err.t:.6g}: "
    rest = message[len(prefix) :] if message.startswith(prefix) else message
    # the details' times ("the last finite one is at t=...") are solver times too; "dt=" is not a time
    rest = _TIME.sub(lambda m: f"t={flow_time(float(m.group(1))):.6g}", rest)
    t = flow_time(err.t)
    direction = "data to base" if reverse else "base to data"
    translated = SolverError(err.status, t)
    translated.args = (
        f"Solve failed at flow time t={t:.6g} (CNF block {index}, T={end_time:.6g}, {direction}; the solver's "
        f"time s={err.t:.6g} of [0, 1]): {rest}",
    )
    return translated


#: a time in a solver message, as SolverError formats it (``t=0.25``, ``t=-1e-05``, ``t=nan``)
_TIME = re.compile(r"(?<![\w.])t=([-+]?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|nan|inf))")


def _pin_noise(outputs: Sequence[torch.Tensor], dyn: _AugmentedDynamics, noise: torch.Tensor) -> None:
    """Make the adjoint's backward solve of ``outputs`` see the probe noise of their own forward solve.

    The kept ``dyn`` holds the noise of the latest solve, but an adjoint's backward solve calls it again
    when ``backward()`` runs: after a second forward pass (a validation batch, another loss term) it
    would read that pass's noise, a different estimator than the forward solve integrated (wrong
    gradients, or a shape error for another batch size). A hook on the adjoint's own autograd node,
    which the engine runs immediately before that node's backward, sets the noise back. (A solve
    backpropagated directly needs nothing: its graph holds the noise it used.)

    Args:
        outputs: the outputs of an adjoint solve of ``dyn``.
        dyn: the kept dynamics the solve ran.
        noise: the probe noise of that solve.
    """

    def restore(grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
        dyn.noise = noise

    _adjoint_node(outputs).register_prehook(restore)


# The autograd Functions whose backward calls the field again: the torch adjoint's and the Julia backend's.
_SOLVE_FUNCTIONS = ("_AdjointFunction", "_JuliaSolve")


def _adjoint_node(outputs: Sequence[torch.Tensor]) -> torch.autograd.graph.Node:
    """The solve's autograd node behind its ``outputs`` (the library's own autograd Function: the
    torch adjoint's, or the Julia backend's), reached through the few views that split the flat
    solution into the state's parts."""
    todo = [y.grad_fn for y in outputs if y.grad_fn is not None]
    seen: set[int] = set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if getattr(getattr(node, "_forward_cls", None), "__qualname__", None) in _SOLVE_FUNCTIONS:
            return node
        todo.extend(f for f, _ in node.next_functions if f is not None)
    raise AssertionError("an adjoint solve's outputs come from the library's autograd node")


def _check_estimator(estimator) -> None:
    if not isinstance(estimator, (ExactTrace, HutchinsonTrace)):
        raise TypeError(f"trace must be ExactTrace() or HutchinsonTrace(noise=...), got {type(estimator).__name__}.")
