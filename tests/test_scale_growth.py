"""Cost and memory that must not grow per step faster than linearly (benchmarks/scale.py measures the times).

These tests count instead of timing: tensors kept alive after a solve (found through the garbage
collector, which tracks torch tensors), autograd nodes of a direct-backprop graph, and calls of the
dense output's batched evaluation. Each runs in about a second.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from unittest import mock

import pytest
import torch

import hybrid_node as hn
from hybrid_node.loop import host

torchdiffeq = pytest.importorskip("torchdiffeq")


def _live_tensors() -> dict[int, weakref.ref]:
    """Torch tensors alive in this process (tensors are gc-tracked, so gc.get_objects lists them), by id."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance reads deprecated attributes of some torch modules
        warnings.simplefilter("ignore")
        return {id(o): weakref.ref(o) for o in gc.get_objects() if isinstance(o, torch.Tensor)}


def _new(after: dict[int, weakref.ref], before: dict[int, weakref.ref]) -> int:
    """Tensors of ``after`` that ``before`` did not hold (an id ``before`` saw may have been reused by a
    new tensor: compared by identity). Counting only these, a cache of an earlier test that lets go of
    its tensors meanwhile does not offset what the run keeps."""
    return sum(1 for i, ref in after.items() if i not in before or before[i]() is not ref())


def _decay(t, y):
    return -y


def _solve_no_grad(method: str, n: int) -> torch.Tensor:
    """y' = -y on 4 states over [0, 1] in n steps, without autograd."""
    y0 = torch.ones(4, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    if method == "rk4":
        opts: dict = {"step_size": 1.0 / n}
        kw: dict = {}
    else:
        opts, kw = {"max_step": 1.0 / n, "max_num_steps": 10 * n}, {"rtol": 1e-3, "atol": 1e-6}
    with torch.no_grad():
        return hn.odeint(_decay, y0, t, method=method, options=opts, **kw)


def _kept_per_run(run, small: int, large: int) -> tuple[int, int]:
    """Tensors that ``run(small)`` and ``run(large)`` leave alive while their results are held.

    Both runs go first once (first-call caches: tableaus, bdf's coefficients per order reached, are
    not per step); three scans of the collector's objects, the slow part, count the rest.
    """
    run(small), run(large)
    before = _live_tensors()
    first = run(small)
    middle = _live_tensors()
    second = run(large)
    after = _live_tensors()
    del first, second
    return _new(middle, before), _new(after, middle)


@pytest.mark.parametrize("method", ["dopri5", "rk4", "bdf"])
def test_a_no_grad_solve_keeps_no_tensor_per_step(method):
    # a loop that kept a tensor per step (stats lists, step records, dense segments nobody asked for,
    # an autograd graph) would keep ten times as many after ten times the steps; the result itself is
    # the one tensor both keep
    small, large = _kept_per_run(lambda n: _solve_no_grad(method, n), 10, 100)
    assert small == large <= 2


def test_an_sde_solve_with_a_brownian_interval_keeps_no_tensor_per_step():
    # the Brownian interval's tree is O(steps) by nature while it lives; it must go with the solve
    def run(n: int):
        bm = hn.BrownianInterval(t0=0.0, t1=1.0, size=(2, 4), dtype=torch.float64, entropy=0)

        class OU(torch.nn.Module):
            noise_type, sde_type = "diagonal", "ito"

            def f(self, t, y):
                return -y

            def g(self, t, y):
                return 0.1 * torch.ones_like(y)

        y0 = torch.ones(2, 4, dtype=torch.float64)
        with torch.no_grad():
            return hn.sdeint(OU(), y0, torch.tensor([0.0, 1.0], dtype=torch.float64), dt=1.0 / n, bm=bm, method="euler")

    small, large = _kept_per_run(run, 10, 100)
    assert small == large <= 2


def _graph_nodes(ys: torch.Tensor) -> int:
    """Autograd nodes reachable from ``ys`` (the graph a backward pass walks and keeps alive until then)."""
    seen, stack = set(), [ys.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return len(seen)


def _direct_rk4(odeint, n: int) -> torch.Tensor:
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    return odeint(lambda t, y: -theta * y, y0, t, method="rk4", options={"step_size": 1.0 / n})


def test_the_direct_backprop_graph_is_linear_in_the_steps_and_no_larger_than_torchdiffeqs():
    # direct backprop keeps every step's graph by nature: it must grow by the same number of nodes
    # per step at any length (a graph that re-recorded the history, e.g. torch.cat of all earlier
    # states each step, would grow faster), and by no more per step than torchdiffeq's rk4 graph
    # (26 nodes per step on this field, measured with the same count)
    sizes = (50, 100, 200)
    nodes = [_graph_nodes(_direct_rk4(hn.odeint, n)) for n in sizes]
    per_step = (nodes[2] - nodes[1]) / (sizes[2] - sizes[1])
    assert nodes[1] - nodes[0] == per_step * (sizes[1] - sizes[0])
    peer = [_graph_nodes(_direct_rk4(torchdiffeq.odeint, n)) for n in sizes[1:]]
    peer_per_step = (peer[1] - peer[0]) / (sizes[2] - sizes[1])
    assert per_step <= peer_per_step


def test_many_output_times_are_evaluated_once_per_step_not_once_per_time():
    # 1000 output times inside 10 rk4 steps: each step evaluates its interpolant once, batched over
    # its output times (a call per output time would make the Python cost per output the
    # interpolant's, about 100 us, where the batched call costs a few us per output)
    calls = []
    many = host.DenseSegment.many

    def counting(self, ts):
        calls.append(len(ts))
        return many(self, ts)

    t = torch.linspace(0.0, 1.0, 1000, dtype=torch.float64)
    with mock.patch.object(host.DenseSegment, "many", counting), torch.no_grad():
        ys = hn.odeint(_decay, torch.ones(4, dtype=torch.float64), t, method="rk4", options={"step_size": 0.1})
    assert len(calls) <= 10 and sum(calls) >= 1000 - 11  # the step ends are the steps' own states
    # and the outputs are the interpolated solution: rk4 with h = 0.1 and linear interpolation between
    # step ends (torchdiffeq's fixed-grid default) is within h^2/8 * max|y''| = 1.25e-3 of exp(-t)
    assert torch.allclose(ys[:, 0], torch.exp(-t), atol=1.3e-3)
