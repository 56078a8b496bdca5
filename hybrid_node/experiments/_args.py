"""Argument types shared by the subcommands: a bad value stops argparse with one line, not a traceback.

Values that are wrong on their own (a negative size, a NaN learning rate) are refused by the types
below while the command line is parsed. Settings that are only wrong together (a time window longer
than the data) are checked where the settings are built, inside :func:`checked_settings`, which turns
the ``ValueError`` into a :class:`SettingsError`: ``hybrid-node`` prints its message and exits with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from .._errors import HybridNodeError, SolverError
from .._registry import METHOD_SPECS
from ..solvers.base import ExternalSolver


class SettingsError(HybridNodeError, ValueError):
    """A command's settings do not fit together; the message names the option to change."""


@contextlib.contextmanager
def diverged_if_solve_fails(iteration: int, lr: float) -> Iterator[None]:
    """Report a solve that fails during training, after the weights have moved, as a diverged run.

    A too large ``--lr`` throws the weights to where the learned field overflows (a NaN state) or
    turns so stiff that the step size underflows; the solver's own advice (an implicit method, a
    ``jump_t``) is then beside the point. At ``iteration`` 1 the weights are still the initial ones,
    so the solver's error is passed on unchanged.

    Args:
        iteration: the training iteration about to run (1-based, counted over the whole run).
        lr: the learning rate, named in the message.

    Raises:
        SettingsError: a :class:`~hybrid_node.SolverError` after iteration 1; it names the iteration,
            the solver's symptom and ``--lr``, with the solver's error as its cause.
    """
    try:
        yield
    except SolverError as err:
        if iteration <= 1:
            raise
        raise SettingsError(
            f"training diverged at iteration {iteration}: the solve failed at t={err.t:.6g} "
            f"({err.status.symptom.lower()}) with the weights of the previous step; lower --lr (now {lr:g})."
        ) from err


def method_name(value: str) -> str:
    """An ``odeint`` method name from the registry (``hybrid_node.METHODS``)."""
    if value not in METHOD_SPECS:
        raise argparse.ArgumentTypeError(f"unknown method {value!r}; choose one of: {', '.join(METHOD_SPECS)}")
    return value


def device_name(value: str) -> str:
    """A torch device this machine has: ``cpu``, ``cuda`` or ``cuda:<index>``, or ``mps``.

    Checked while the command line is parsed: torch itself fails only when the first tensor moves
    there, with a traceback ("Torch not compiled with CUDA enabled", an AssertionError).
    """
    try:
        device = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {value!r}; use cpu, cuda, cuda:<index> or mps") from None
    if device.type == "cpu":
        return value
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{value!r}: no CUDA device is available here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(
                f"{value!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return value
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{value!r}: MPS is not available here; use --device cpu")
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: the experiments run on cpu, cuda or mps")


def check_backprop(method: str, solver, adjoint: bool) -> None:
    """Refuse a solver that runs its own loop (``scipy_solver``) for training without ``--adjoint``.

    Args:
        method: the ``--method`` name; solver: its solver; adjoint: whether ``--adjoint`` was given.

    Raises:
        ValueError: an external solver without the adjoint: autograd cannot go through its steps.
    """
    if isinstance(solver, ExternalSolver) and not adjoint:
        raise ValueError(
            f"--method {method} computes no gradients by backpropagation: add --adjoint (the adjoint "
            "system is solved the same way), or use a torch method such as dopri5."
        )


def given_settings(args: argparse.Namespace, quick: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The settings a command builds its config from: ``quick`` under ``--quick`` (else none), with the
    flags of ``names`` given on the command line on top (a flag left out is None and keeps the default).

    Args:
        args: the parsed command line (with ``quick``).
        quick: the settings of a quick run.
        names: the flags (as attributes of ``args``) that default to None.

    Returns:
        A new dict of the settings to pass on.
    """
    values = dict(quick) if args.quick else {}
    for name in names:
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    return values


def _integer(value: str, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < low or (high is not None and number > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise argparse.ArgumentTypeError(f"must be {bounds}, got {number}")
    return number


def positive_int(value: str) -> int:
    """A whole number >= 1 (a size, a count of iterations)."""
    return _integer(value, 1)


def nonnegative_int(value: str) -> int:
    """A whole number >= 0."""
    return _integer(value, 0)


def random_seed(value: str) -> int:
    """A random seed: a whole number from 0 to 2**64 - 1, the range torch's and NumPy's generators both take.

    A larger one failed inside ``torch.manual_seed`` ("Overflow when unpacking long long"), a negative
    one inside ``numpy.random.default_rng``.
    """
    return _integer(value, 0, 2**64 - 1)


def _real(value: str, strict: bool) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    # NaN fails both comparisons, so it is refused here too.
    if not math.isfinite(number) or not (number > 0 if strict else number >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} 0, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """A finite number > 0 (a learning rate, a tolerance, a step size)."""
    return _real(value, strict=True)


def nonnegative_float(value: str) -> float:
    """A finite number >= 0 (a noise level, a regularisation weight)."""
    return _real(value, strict=False)


@contextlib.contextmanager
def checked_settings() -> Iterator[None]:
    """Report a ``ValueError`` raised while a command's settings are built as a :class:`SettingsError`.

    Raises:
        SettingsError: the settings were refused; its message is the refusal's.
    """
    try:
        yield
    except HybridNodeError:
        raise
    except ValueError as e:
        raise SettingsError(str(e)) from e
