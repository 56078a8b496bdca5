"""Models used from several threads at once, replicated by ``nn.DataParallel`` or copied.

The models keep one wrapper around their dynamics across solves (:mod:`hybrid_node.nn._kept`) and set
per-solve state on it (the ODE-RNN's time gaps, the counting block's evaluation count): threads that
share a model must not see each other's state, and a replica must not disturb the original's fields.
"""

import copy
import io
import pickle
import sys
import threading
import weakref

import torch
from torch import nn

import hybrid_node as hn
from hybrid_node.nn.ode_block import ODEBlock, SolveSettings
from hybrid_node.nn.ode_rnn import ODERNN


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, t, y):
        return torch.tanh(self.lin(y)) - 0.5 * y


def _run_threads(target, n: int) -> None:
    errors: list[BaseException] = []

    def run(i):
        try:
            target(i)
        except BaseException as err:  # re-raised in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def test_ode_rnn_evolved_from_several_threads_gives_the_sequential_states():
    """Each thread evolves by its own time gaps: with one kept wrapper for all threads, a thread set its
    gaps and another's replaced them before the solve (114 of 120 results wrong, off by up to 0.66)."""
    torch.manual_seed(0)
    model = ODERNN(obs_dim=2, hidden=4, ode_hidden=8, method="rk4", options={"step_size": 0.05}).double()
    h0 = torch.randn(3, 4, dtype=torch.float64)
    gaps = [torch.full((3,), 0.3 * (i + 1), dtype=torch.float64) for i in range(4)]
    with torch.no_grad():
        want = [model.evolve(h0, g) for g in gaps]
        got: list[list[torch.Tensor]] = [[] for _ in gaps]
        start = threading.Barrier(len(gaps))

        def evolve(i):
            start.wait()
            for _ in range(20):
                got[i].append(model.evolve(h0, gaps[i]))

        _run_threads(evolve, len(gaps))
    for i, results in enumerate(got):
        for y in results:
            # the same arithmetic on the same inputs as the sequential solve: equal bit for bit
            assert torch.equal(y, want[i]), f"thread {i}: off by {float((y - want[i]).abs().max()):.3g}"


def test_ode_block_counts_each_threads_own_evaluations():
    """A forward pass in another thread, run to its end while this thread's pass is under way, is not
    counted in this pass's ``nfe_forward`` (the counter shared by the threads counted 26 + 26 = 52 instead of 26)."""
    torch.manual_seed(0)
    block = ODEBlock(Field().double(), train_settings=SolveSettings(rtol=1e-6, atol=1e-6))
    x = torch.randn(3, 2, dtype=torch.float64)
    block(x)
    alone = block.nfe_forward
    other: list[int] = []

    class Interleaving(nn.Module):
        """The block's field, which runs a whole forward pass in a second thread at its first call."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.started = False

        def forward(self, t, y):
            if not self.started and threading.current_thread() is threading.main_thread():
                self.started = True

                def solve(_):
                    block(x)
                    other.append(block.nfe_forward)

                _run_threads(solve, 1)
            return self.inner(t, y)

    block.func = Interleaving(block.func)
    block(x)
    assert other == [alone] and block.nfe_forward == alone > 0


def test_a_data_parallel_replica_leaves_the_blocks_kept_field():
    """``nn.DataParallel`` replicates the block for every forward pass (``replicate`` copies each
    module's ``__dict__`` shallowly and puts replicas of its submodules in): the replica's solve
    dropped the original's counting wrapper from the dict they shared, as that of a field no longer its
    own, and kept the replica's (with its parameter copies) there instead."""
    torch.manual_seed(0)
    block = ODEBlock(Field())
    x = torch.randn(4, 2)
    want = block(x)
    kept = block._counting()
    replica = block._replicate_for_data_parallel()
    replica.func = block.func._replicate_for_data_parallel()  # as torch.nn.parallel.replicate does
    torch.testing.assert_close(replica(x), want, rtol=0, atol=0)  # the same weights and arithmetic
    assert replica.nfe_forward == block.nfe_forward > 0
    assert block._counting() is kept
    assert all(f.func is block.func for f in block.__dict__["_kept_fields"].values())


def test_a_block_used_from_a_thread_pickles_copies_and_saves():
    """The kept fields are per thread (threads cannot be pickled): pickling, deep-copying and
    ``torch.save`` of a block that solved in a worker thread work and give the same results."""
    torch.manual_seed(0)
    block = ODEBlock(Field(), train_settings=SolveSettings(sensitivity=hn.BacksolveAdjoint()))
    x = torch.randn(4, 2)
    _run_threads(lambda _: block(x), 1)
    want = block(x)
    buffer = io.BytesIO()
    torch.save(block, buffer)
    buffer.seek(0)
    copies = [pickle.loads(pickle.dumps(block)), copy.deepcopy(block), torch.load(buffer, weights_only=False)]
    for other in copies:
        got = other(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # same weights, same arithmetic
        assert other.nfe_forward == block.nfe_forward
        got.sum().backward()
        assert other.nfe_backward > 0 and other.func.lin.weight.grad is not None


def test_memo_filled_from_several_threads_at_once_stays_consistent():
    """Threads missing the solver memos at once (:mod:`hybrid_node._memo`): one thread's eviction of the
    oldest entry raised KeyError or "dictionary changed size during iteration" in another (3 of 4
    threads failed in every run) and left the memo over its limit."""
    from hybrid_node._memo import memoized

    cache: dict = {}
    limit = 4
    got: list[list[int]] = [[] for _ in range(4)]

    def fill(i):
        for k in range(5000):
            got[i].append(memoized(cache, (i, k), lambda k=k: k, limit))
            assert len(cache) <= limit

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so that the misses overlap
    try:
        _run_threads(fill, len(got))
    finally:
        sys.setswitchinterval(interval)
    assert got == [list(range(5000))] * len(got)


def test_threads_compiling_one_field_at_once_share_its_graph_cache(monkeypatch):
    """Two threads that miss a field's graph cache together get one dict: each made its own, and the
    graphs compiled into the one that lost were compiled again."""
    from hybrid_node.loop import compiled_step

    both_missed = threading.Barrier(2)
    waited = set()

    class MissTogether(weakref.WeakKeyDictionary):
        def get(self, key, default=None):
            found = super().get(key, default)
            me = threading.get_ident()
            if me not in waited:  # each thread's first lookup misses before either thread enters the field
                waited.add(me)
                both_missed.wait(timeout=10)
            return found

    monkeypatch.setattr(compiled_step, "_CACHE", MissTogether())
    field = torch.nn.Linear(2, 2)
    got = []
    threads = [threading.Thread(target=lambda: got.append(compiled_step.graphs_of(field))) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got) == 2 and got[0] is got[1]
    assert compiled_step._CACHE[field] is got[0]


def test_a_probe_leaves_what_another_threads_compiled_solve_adds_to_a_counter():
    """compile=True finds a field's call counters by two eager evaluations and then puts the numbers back
    as they were: another thread's compiled solve of the same field that ended meanwhile (its caller adding
    its 5 evaluations to ``nfe``) had its count erased (nfe 10 instead of 15), and the probe, seeing 6
    then 1 added, took ``nfe`` for no counter (step None: later whole-solve graphs did not count it)."""
    from hybrid_node._term import Term
    from hybrid_node.loop.counters import advance, frozen_counters, probe

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.nfe = 10
            self.during: list = []  # run once, inside the probe's first evaluation

        def forward(self, t, y):
            self.nfe += 1
            while self.during:
                self.during.pop()()
            return self.lin(y)

    field = Counting()
    counters = [(weakref.ref(field), "nfe", 1)]  # as an earlier probe of this field found them

    def other_solve():  # a whole-solve graph's end in another thread (see loop/whole.py)
        with frozen_counters(counters):
            pass
        advance(counters, 5)

    other = threading.Thread(target=other_solve)

    def start_other():
        other.start()
        # Not joined: the other thread's counting waits for the probe to end. 1 s is ample for it to
        # finish when nothing holds it back (the old behaviour this test catches).
        other.join(timeout=1.0)

    field.during.append(start_other)
    y0 = torch.zeros(1, 2)
    effects = probe(field, Term(field, y0, torch.float32), 0.0, y0)
    other.join()
    assert field.nfe == 15
    assert [(ref() is field, k, step) for ref, k, step in effects.counters] == [(True, "nfe", 1)]
