"""A field's own call counters (``self.nfe += 1``) around compiled graphs.

Dynamo guards a compiled graph on the plain number attributes of the modules it reads: a counter
the field advances on every call fails that guard on the next call, and the graph is compiled again
(first with the number as a constant, then as a symbolic input). Here the counters are found once,
by one eager evaluation (:func:`find_counters`), and shown to every call of the graph as 0
(:func:`frozen_counters`): the guard then holds on every call, and what the graph added to them is
added to their real values afterwards.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence

import torch

#: a counter: a weak reference to its module and the attribute's name
Counter = tuple[weakref.ref, str]


def number_modules(owner) -> list:
    """The modules of ``owner`` whose plain number attributes a compiled graph may read (none for a
    field that is not an ``nn.Module``)."""
    return list(owner.modules()) if isinstance(owner, torch.nn.Module) else []


def _numbers(modules: Sequence[torch.nn.Module]) -> dict:
    """The plain int and float attributes of ``modules``, as ``{(index, name): value}``."""
    return {(i, k): v for i, m in enumerate(modules) for k, v in vars(m).items() if type(v) in (int, float)}


def find_counters(owner, term, t0: float, y0: torch.Tensor) -> list[Counter]:
    """The number attributes of ``owner``'s modules that one evaluation at (t0, y0) changes.

    The evaluation goes through ``term`` (which checks the result's shape, dtype and device, so a
    wrong field fails with the eager solver's message rather than a compiler error); it is no part
    of the solve: ``term.nfe`` and the field's number attributes are put back afterwards.

    Args:
        owner: the field (its modules are searched).
        term: the solve's term, called as ``term(t0, y0)``.
        t0, y0: where to evaluate.

    Returns:
        ``(weak reference to the module, name)`` pairs, for :func:`frozen_counters`.
    """
    modules = number_modules(owner)
    before = _numbers(modules)
    nfe = term.nfe
    try:
        with torch.no_grad():
            term(t0, y0)
    finally:
        term.nfe = nfe
        after = _numbers(modules)
        for (i, k), v in before.items():
            if after.get((i, k)) != v:
                setattr(modules[i], k, v)
    return [(weakref.ref(modules[i]), k) for (i, k), v in after.items() if before.get((i, k)) != v]


@contextlib.contextmanager
def frozen_counters(counters: Sequence[Counter]):
    """Show the ``counters`` to a compiled graph as 0; afterwards each is its value before plus what
    the graph added to it.

    A per-step graph replays the field's increments (its counter reads 0 + the evaluations); a
    whole-solve loop puts the field's numbers back after every evaluation inside the graph, so its
    counters end as they were. The modules are held by reference, not by their place in
    ``owner.modules()``, so a field whose submodules are added or reordered later still gets its
    own counters frozen; a counter that is gone (its module or the attribute) is skipped.

    Args:
        counters: ``(weak reference to the module, name)`` pairs, as :func:`find_counters` returns them.
    """
    # plain instance attributes (found with ``vars``): written to the instance dict directly, without
    # nn.Module.__setattr__'s checks for parameters, buffers and submodules
    saved = []
    for ref, k in counters:
        module = ref()
        attributes = {} if module is None else vars(module)
        if type(attributes.get(k)) in (int, float):
            saved.append((attributes, k, attributes[k]))
    for d, k, _ in saved:
        d[k] = 0
    try:
        yield
    finally:
        for d, k, v in saved:
            d[k] = v + d[k]
