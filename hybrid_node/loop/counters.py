"""A field's own call counters (``self.nfe += 1``) around compiled graphs.

Dynamo guards a compiled graph on the plain number attributes of the modules it reads: a counter
the field advances on every call fails that guard on the next call, and the graph is compiled again
(first with the number as a constant, then as a symbolic input). Here the counters are found once,
by two eager evaluations (:func:`probe`), and shown to every call of the graph as 0
(:func:`frozen_counters`): the guard then holds on every call, and what the graph added to them is
added to their real values afterwards. A whole-solve loop cannot carry a Python attribute from one
iteration to the next, so it leaves them as they were; its caller then adds what the eager solver's
evaluations would have added (:func:`advance`), so that ``func.nfe`` counts a compiled solve as it
counts an eager one (torchdiffeq's examples and the Neural ODE paper's NFE plots read it).

A field shared by threads: the probe puts the numbers back as they were before its evaluations, so it
holds its modules' locks (:func:`_holding`) from its first reading to its last writing, and
:func:`frozen_counters` and :func:`advance` hold them while they change the numbers. What another
thread's compiled solve adds to a counter (when its graph returns, or its caller advances it) then
waits for the probe to end instead of being erased by it, and two probes do not count each other's
evaluations. An increment made by the field itself in another thread while the probe evaluates it
(an eager solve, or a per-step graph replaying the field's increments) takes no lock: it cannot be
told from the probe's own, and is put back with them (and that counter gets no step).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Sequence
from typing import NamedTuple

import torch

#: a counter: a weak reference to its module, the attribute's name and what one evaluation adds to it
#: (None when two evaluations added different amounts: such a number is not advanced by :func:`advance`)
Counter = tuple[weakref.ref, str, "int | float | None"]


#: One lock per module whose numbers :func:`probe`, :func:`frozen_counters` and :func:`advance` change
#: (kept off the module itself, which must stay picklable and copyable).
_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _holding(modules: Sequence[torch.nn.Module]):
    """Hold the locks of ``modules`` (re-entrant: a nested solve of the same field in the same thread
    takes them again), taken in one order (by ``id``) so that two threads never wait for each other."""
    with _LOCKS_GUARD:
        locks = [_LOCKS.setdefault(m, threading.RLock()) for m in sorted({id(m): m for m in modules}.values(), key=id)]
    with contextlib.ExitStack() as held:
        for lock in locks:
            held.enter_context(lock)
        yield


def number_modules(owner) -> list:
    """The modules of ``owner`` whose plain number attributes a compiled graph may read (none for a
    field that is not an ``nn.Module``)."""
    return list(owner.modules()) if isinstance(owner, torch.nn.Module) else []


def _numbers(modules: Sequence[torch.nn.Module]) -> dict:
    """The plain int and float attributes of ``modules``, as ``{(index, name): value}``."""
    return {(i, k): v for i, m in enumerate(modules) for k, v in vars(m).items() if type(v) in (int, float)}


class Effects(NamedTuple):
    """What evaluating a field changes besides its result, as :func:`probe` finds it.

    Attributes:
        counters: ``(weak reference to the module, name, step)`` of each call counter, for
            :func:`frozen_counters` and :func:`advance`.
        writes_buffers: an evaluation writes a buffer of the field (a ``BatchNorm`` in training
            mode updates its running statistics): a whole-solve loop would drop those writes.
    """

    counters: list[Counter]
    writes_buffers: bool


def probe(owner, term, t0: float, y0: torch.Tensor) -> Effects:
    """The number attributes of ``owner``'s modules that an evaluation at (t0, y0) changes and by
    how much, and whether it writes their buffers.

    The field is evaluated twice, through ``term`` (which checks the result's shape, dtype and
    device, so a wrong field fails with the eager solver's message rather than a compiler error);
    an attribute both evaluations advance by the same amount is a counter with that step. The
    evaluations are no part of the solve: ``term.nfe``, the field's number attributes and its
    buffers are put back afterwards.

    Args:
        owner: the field (its modules are searched).
        term: the solve's term, called as ``term(t0, y0)``.
        t0, y0: where to evaluate.

    Returns:
        The field's :class:`Effects`.
    """
    modules = number_modules(owner)
    with _holding(modules):
        before = _numbers(modules)
        buffers = _buffers(modules)
        nfe = term.nfe
        try:
            with torch.no_grad():
                term(t0, y0)
                once = _numbers(modules)
                term(t0, y0)
        finally:
            term.nfe = nfe
            after = _numbers(modules)
            for (i, k), v in before.items():
                if after.get((i, k)) != v:
                    setattr(modules[i], k, v)
            written = _restore_buffers(modules, buffers)
    counters = []
    for (i, k), v in after.items():
        b, o = before.get((i, k)), once.get((i, k))
        if b != v:
            step = None if b is None or o is None or o - b != v - o else o - b
            counters.append((weakref.ref(modules[i]), k, step))
    return Effects(counters, written)


def _buffers(modules: Sequence[torch.nn.Module]) -> dict:
    """The buffers of ``modules``: ``{(index, name): (tensor, a copy)}``."""
    return {
        (i, k): (b, b.detach().clone()) for i, m in enumerate(modules) for k, b in m._buffers.items() if b is not None
    }


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN equal to NaN (a write counter would not do: the batch-norm kernel updates
    the running statistics in place without advancing theirs)."""
    return torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))


def _restore_buffers(modules: Sequence[torch.nn.Module], saved: dict) -> bool:
    """Put back the buffers :func:`_buffers` saved; returns whether any was written or replaced."""
    written = False
    for (i, k), (b, copy) in saved.items():
        if modules[i]._buffers.get(k) is not b:
            modules[i]._buffers[k] = b
            written = True
        if not _same(b, copy):
            with torch.no_grad():
                b.copy_(copy)
            written = True
    return written


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
        counters: as :func:`probe` finds them.
    """
    live = _live(counters)
    modules = [m for m, _, _, _ in live]
    # The locks are held while the numbers are read and written, not while the graph runs: graphs of
    # the same field in several threads still run at once (each adds what its own graph added).
    with _holding(modules):
        saved = [(d, k, d[k]) for _, d, k, _ in live]
        for d, k, _ in saved:
            d[k] = 0
    try:
        yield
    finally:
        with _holding(modules):
            for d, k, v in saved:
                d[k] = v + d[k]


def advance(counters: Sequence[Counter], evaluations: int) -> None:
    """Add to each counter what ``evaluations`` eager evaluations would have added (its step times
    ``evaluations``), after a whole-solve graph that made them.

    Args:
        counters: as :func:`probe` finds them; those without a step are left alone.
        evaluations: the field's evaluations inside the graph.
    """
    live = _live(counters)
    with _holding([m for m, _, _, _ in live]):
        for _, attributes, k, step in live:
            if step is not None:
                attributes[k] += step * evaluations


def _live(counters: Sequence[Counter]) -> list:
    """``(module, attribute dict, name, step)`` of each counter whose module and plain number
    attribute still exist (a module reordered or removed since the probe is skipped)."""
    # plain instance attributes (found with ``vars``): written to the instance dict directly, without
    # nn.Module.__setattr__'s checks for parameters, buffers and submodules
    live = []
    for ref, k, step in counters:
        module = ref()
        attributes = {} if module is None else vars(module)
        if type(attributes.get(k)) in (int, float):
            live.append((module, attributes, k, step))
    return live
