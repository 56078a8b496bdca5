"""The interface of a gradient (sensitivity) method: settings that say which backends have them and
run their own solve on the torch backend."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import torch

from .._problem import Problem
from .._solution import Solution


class AbstractSensitivity(abc.ABC):
    """How gradients of a solve are computed; an immutable settings object.

    ``backends`` declares where the method exists (("torch",), ("julia",) or both); the Julia backend
    maps the object to SciMLSensitivity's adjoint of the same name, the torch backend calls
    :meth:`solve`.
    """

    #: the backends that have this gradient method
    backends: tuple[str, ...] = ()

    @abc.abstractmethod
    def solve(
        self,
        problem: Problem,
        adjoint_params: Sequence[torch.Tensor] | None,
        event_fn: Callable | None = None,
        throw: bool = True,
    ) -> Solution:
        """Solve ``problem`` on the torch backend so that its gradients are computed this way.

        Args:
            problem: the validated problem (solver, controller, tolerances, times).
            adjoint_params: the tensors the adjoint differentiates (None: ``func.parameters()``).
            event_fn: terminal event, or None.
            throw: raise SolverError on a failed solve, else return the status.

        Returns:
            The Solution, differentiable with respect to y0, t and the parameters.

        Raises:
            BackendError: the method does not exist on the torch backend.
            SolverError: the solve failed (with ``throw``).
        """
