"""Step settings as inputs of the whole-solve graph (``options={"compile": True}``, hybrid_node.loop.whole).

A user varies ``first_step``, ``min_step``, ``max_step``, ``max_num_steps`` or the PID numbers
(``pcoeff``, ``icoeff``, ``dcoeff``, ``safety``, ``ifactor``, ``dfactor``) between solves; each new
value must reuse the compiled graph, and each solve must take the eager solver's steps. The compiling
tests are marked slow (a while_loop graph compiles in tens of seconds on a small shared CPU).
"""

import math
import warnings

import pytest
import torch
from conftest import CountingMLP

import hybrid_node as hn
from hybrid_node.loop import core, graph_inputs


@pytest.fixture
def field(float64_default, one_thread):
    torch.manual_seed(0)
    return CountingMLP()


def _solve(func, y0, t, compiled: bool, **ctrl):
    solver = hn.Dopri5().compiled() if compiled else hn.Dopri5()
    return hn.solve(func, y0, t, solver=solver, controller=hn.PIDController(**ctrl), throw=False)


def _control(**ctrl) -> core.StepControl:
    return core.StepControl.of(hn.PIDController(**ctrl), 4, torch.float64)


def test_the_graph_key_leaves_out_the_settings_it_takes_as_inputs():
    """Controls that differ only in max_step, max_num_steps, a positive min_step or the PID formula's
    numbers key one graph; a positive min_step against none is a branch of the step decision, and
    shrink_after_accept / grow_after_reject choose the proposal's operations: other graphs."""
    base = graph_inputs.graph_control(_control(min_step=0.01))
    numbers = (
        dict(min_step=0.2),
        dict(min_step=0.01, max_step=0.3),
        dict(min_step=0.01, max_num_steps=7),
        dict(min_step=0.01, safety=0.8, ifactor=5.0, dfactor=0.3),
        dict(min_step=0.01, pcoeff=0.3, icoeff=0.4, dcoeff=0.1),
        dict(min_step=0.01, icoeff=8.0),  # exponents above 1: the ratio bounds are inputs too
    )
    for other in numbers:
        assert graph_inputs.graph_control(_control(**other)) == base
    assert graph_inputs.graph_control(_control()) != base
    for rule in (dict(shrink_after_accept=False), dict(grow_after_reject=False)):
        assert graph_inputs.graph_control(_control(min_step=0.01, **rule)) != base


def _vector(**ctrl) -> list:
    controller = hn.PIDController(**ctrl)
    return graph_inputs.settings_vector(controller, _control(**ctrl), torch.zeros(3)).tolist()


def test_settings_vector_holds_the_clamped_first_step_the_limits_and_the_pid_numbers():
    """One float64 (1-d: a 0-d input restarts Dynamo's analysis, see ``whole.pack``) vector; the given
    first step clamped to [min_step, max_step] as the host loop clamps it; 0 where the graph computes
    it; the exponents as PIDController.exponents computes them for the eager loop; the ratio bounds
    of large gains, or (0, inf)."""
    ctrl = dict(first_step=0.5, min_step=0.01, max_step=0.2, max_num_steps=9, safety=0.8, ifactor=4.0, dfactor=0.3)
    v = _vector(**ctrl)
    assert len(v) == 12
    e1, e2, e3 = hn.PIDController().exponents(4)
    assert v == [0.2, 0.01, 0.2, 9.0, e1, e2, e3, 0.8, 4.0, 0.3, 0.0, math.inf]
    assert _vector()[:4] == [0.0, 0.0, math.inf, float(hn.PIDController().max_num_steps)]
    pid = dict(pcoeff=0.3, icoeff=0.4, dcoeff=0.1)
    assert _vector(**pid)[4:7] == list(hn.PIDController(**pid).exponents(4))
    # icoeff 8 with k = 5: e1 = -1.6, held where ratio ** e1 stays within [1e-300, 1e300]
    bound = 10.0 ** (300.0 / 1.6)
    assert _vector(icoeff=8.0)[10:] == [1.0 / bound, bound]


#: controllers whose proposals the graph inputs must reproduce: the I controller (torchdiffeq's numbers
#: and others), a PID with dcoeff != 0, gains whose exponents exceed 1 (the ratio bounds), and both rules
_PROPOSAL_CONTROLLERS = [
    dict(),
    dict(shrink_after_accept=False),
    dict(safety=0.8, ifactor=5.0, dfactor=0.3),
    dict(pcoeff=0.3, icoeff=0.4, dcoeff=0.1, safety=0.85),
    dict(pcoeff=0.5, icoeff=7.0, dcoeff=0.5, ifactor=3.0),
    dict(pcoeff=0.2, icoeff=0.6, dcoeff=0.05, shrink_after_accept=False, grow_after_reject=False),
]


@pytest.mark.parametrize("ctrl", _PROPOSAL_CONTROLLERS)
@pytest.mark.parametrize("order", [4, 2])
def test_the_graph_inputs_propose_the_host_loops_steps_bit_for_bit(ctrl, order):
    """The proposal from the settings vector (0-d float64 tensors, as inside a graph) equals the host
    loop's float64 Python arithmetic exactly, over ratios from 0 to inf and NaN, accepted and not, and
    memories that hold a rejection (negative r1): the same operations in the same order."""
    controller = hn.PIDController(**ctrl)
    c = core.StepControl.of(controller, order, torch.float64)
    settings = graph_inputs.settings_vector(controller, c, torch.zeros(3))
    control = graph_inputs.with_settings(graph_inputs.graph_control(c), settings)

    def f64(x: float) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float64)

    ratios = (0.0, 1e-14, 3e-4, 0.3, 0.97, 1.0, 1.3, 40.0, 1e9, math.inf, math.nan)
    memories = [(1.0, 1.0), (0.45, 0.8), (1e-10, 3e-3)]
    if not controller.grow_after_reject:  # only that rule remembers a rejection as a negative r1
        memories.append((-0.7, 0.2))
    for ratio in ratios:
        for accepted in {ratio <= 1.0, False}:
            for r1, r2 in memories:
                host = core.propose(core.FLOAT, c, 0.125, ratio, accepted, r1, r2)
                tensor = core.propose(
                    core.TENSOR, control, f64(0.125), f64(ratio), torch.tensor(accepted), f64(r1), f64(r2)
                )
                assert [float(x) for x in tensor] == list(host), (ratio, accepted, r1, r2)


def _variants_against_eager(field, variants, **tols):
    """Solve with each controller setting of ``variants`` (:func:`_check_against_eager`, no fallback to
    per-step graphs allowed) and return each eager solve's (status, nfe, accepted, rejected) and how
    many graphs Dynamo compiled after the first solve's."""
    y0, t = torch.randn(8, 2), torch.linspace(0.0, 2.0, 5)
    counters = torch._dynamo.utils.counters
    outcomes = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to per-step graphs
        for i, ctrl in enumerate(variants):
            eager = _check_against_eager(field, y0, t, **tols, **ctrl)
            outcomes.append((eager.status, eager.stats.nfe, eager.stats.n_accepted, eager.stats.n_rejected))
            if i == 0:  # the one compilation
                graphs = counters["stats"]["unique_graphs"]
    return outcomes, counters["stats"]["unique_graphs"] - graphs


def _check_against_eager(field, y0, t, **ctrl):
    """The compiled solve with ``ctrl`` takes the eager solve's steps (same counts and status) and its
    outputs agree to 1e-12 relative: the compiled kernels may round the field's sums differently
    (docs/compiled_solve.md), about 1e-16 per step over a few hundred steps."""
    with torch.no_grad():
        eager = _solve(field, y0, t, False, **ctrl)
        comp = _solve(field, y0, t, True, **ctrl)
    assert comp.status == eager.status
    assert (comp.stats.nfe, comp.stats.n_accepted, comp.stats.n_rejected) == (
        eager.stats.nfe,
        eager.stats.n_accepted,
        eager.stats.n_rejected,
    )
    finite = torch.isfinite(eager.ys)
    assert torch.equal(finite, torch.isfinite(comp.ys))  # a failed solve's unreached rows are NaN in both
    scale = float(eager.ys[finite].abs().max())
    assert float((comp.ys[finite] - eager.ys[finite]).abs().max()) <= 1e-12 * scale
    return eager


@pytest.mark.slow
@pytest.mark.parametrize(
    "variants",
    [
        # Hairer's initial step, no floor: the step cap and the step budget vary
        [dict(), dict(max_step=0.05), dict(max_step=0.03), dict(max_num_steps=8), dict(max_step=0.1, max_num_steps=15)],
        # a given first step and a floor: all four vary (min_step 0.25 floors the steps rtol asks for)
        [
            dict(first_step=0.1, min_step=1e-4),
            dict(first_step=0.01, min_step=1e-4),
            dict(first_step=0.5, min_step=0.25),
            dict(first_step=0.05, min_step=1e-3, max_step=0.1, max_num_steps=10),
        ],
    ],
    ids=["heuristic", "given-first-step-and-floor"],
)
def test_new_step_settings_reuse_the_graph_and_take_the_eager_steps(field, variants):
    """Each new first_step, min_step, max_step or max_num_steps compiles nothing (before, each new
    value was a graph of its own: a new key, and a constant of the loop body), and every solve is
    the eager one with the same settings."""
    outcomes, new_graphs = _variants_against_eager(field, variants, rtol=1e-10, atol=1e-12)
    assert new_graphs == 0
    # the settings did change the solves: each its own steps, and a step budget that ran out
    assert len({(status, acc, rej) for status, _, acc, rej in outcomes}) == len(variants)
    assert {status for status, _, _, _ in outcomes} == {hn.Status.SUCCESS, hn.Status.MAX_STEPS}


#: the PID formula's numbers a user tunes, under each of the two proposal rules (graphs of their own):
#: the I controller with its default numbers and others, a PID with dcoeff != 0, and gains whose
#: exponents exceed 1 (the ratio bounds); the second list starts from torchdiffeq's I controller
#: (odeint's rule: an accepted step never shrinks the next one)
_NUMBER_VARIANTS = {
    "solve-rule": [
        dict(),
        dict(safety=0.7),
        dict(ifactor=2.0, dfactor=0.5),
        dict(pcoeff=0.3, icoeff=0.4, dcoeff=0.1, safety=0.85),
        dict(pcoeff=0.5, icoeff=7.0, dcoeff=0.5, ifactor=3.0),
    ],
    "torchdiffeq-rule": [
        dict(shrink_after_accept=False),
        dict(shrink_after_accept=False, safety=0.8, ifactor=1.5),
        dict(shrink_after_accept=False, pcoeff=0.2, icoeff=0.6, dcoeff=0.05, dfactor=0.4),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("rule", list(_NUMBER_VARIANTS))
def test_new_pid_numbers_reuse_the_graph_and_take_the_eager_steps(field, rule):
    """Each new pcoeff, icoeff, dcoeff, safety, ifactor or dfactor compiles nothing (before, each was
    a constant of the loop body and a new key: 14-29 s of compilation here), and every solve takes
    the eager solve's steps (equal counts) with its outputs to 1e-12 relative."""
    variants = _NUMBER_VARIANTS[rule]
    outcomes, new_graphs = _variants_against_eager(field, variants, rtol=1e-8, atol=1e-10)
    assert new_graphs == 0
    assert len({(nfe, acc, rej) for _, nfe, acc, rej in outcomes}) == len(variants)  # the numbers changed the steps


def _adjoint_gradients(field, compiled: bool, sensitivity, **settings):
    """One training step's gradients (y0 and the parameters) through ``sensitivity`` with the controller
    ``settings``, and the solve's counters."""
    torch.manual_seed(1)
    y0 = torch.randn(8, 2, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 4)
    target = torch.randn(4, 8, 2)
    field.zero_grad()
    solver = hn.Dopri5().compiled() if compiled else hn.Dopri5()
    ctrl = hn.PIDController(rtol=1e-8, atol=1e-10, **settings)
    sol = hn.solve(field, y0, t, solver=solver, controller=ctrl, sensitivity=sensitivity)
    ((sol.ys - target) ** 2).sum().backward()
    return sol.stats, [y0.grad.clone()] + [p.grad.clone() for p in field.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "sensitivity",
    [hn.BacksolveAdjoint(), hn.InterpolatingAdjoint(checkpoints=5)],
    ids=["backsolve-impulses-graph", "interpolating-segment-graph"],
)
def test_a_new_max_step_or_pid_numbers_reuse_the_adjoint_backward_graph(field, sensitivity):
    """An adjoint training step with another max_step, or other PID numbers (a PID with dcoeff != 0,
    another safety), compiles nothing: the backward graph (the backsolve's "impulses" graph, the
    checkpointed adjoint's segment graph) takes the step settings and the controller's numbers as
    inputs, as the forward graph does (before, each new value was a backward graph of its own).
    Each step takes the eager backward pass's steps and gives its gradients to rtol 1e-9, atol 1e-11,
    the tolerance of the compiled-vs-eager adjoint tests (test_whole_solve.py, test_whole_segments.py):
    the compiled kernels round the vector-Jacobian products' sums differently, about 1e-16 per step."""
    counters = torch._dynamo.utils.counters
    outcomes = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to per-step graphs
        # caps that bind (12 forward steps without one: 15 and 22 with them) within 8 to 23 steps:
        # the segment graph's table of re-solved steps is sized from that count (whole_segments.table_rows,
        # 32 rows here), and another size is another graph whatever the settings
        pid = dict(pcoeff=0.3, icoeff=0.4, dcoeff=0.1, safety=0.8)
        for i, settings in enumerate((dict(max_step=0.15), dict(max_step=0.1), dict(max_step=0.15, **pid))):
            stats, grads = _adjoint_gradients(field, True, sensitivity, **settings)
            if i == 0:  # the forward graph and the backward graph
                graphs = counters["stats"]["unique_graphs"]
            eager_stats, eager = _adjoint_gradients(field, False, sensitivity, **settings)
            assert stats.n_steps_backward == eager_stats.n_steps_backward
            for a, b in zip(grads, eager):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
            outcomes.append(eager_stats.n_steps_backward)
    assert counters["stats"]["unique_graphs"] == graphs
    assert outcomes[0] < outcomes[1]  # the smaller cap did bind: the backward steps changed
    assert outcomes[2] != outcomes[0]  # so did the PID numbers


@pytest.mark.slow  # about 45 s of compilation on a 2-core CPU (test_device_loop.py)
def test_a_new_max_step_or_pid_numbers_reuse_the_device_loop_run(field):
    """The device loop's compiled run takes the step settings and the PID numbers as inputs too:
    another max_step, max_num_steps, safety or PID gains compile nothing (before, each was a run
    graph of its own), and each solve takes
    the eager device loop's steps with its outputs to 1e-11 relative, the tolerance of
    test_device_loop.py's compiled-vs-eager test."""
    y0, t = torch.randn(8, 2), torch.linspace(0.0, 3.0, 7)
    counters = torch._dynamo.utils.counters
    outcomes = []
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager runs
        pid = dict(max_step=0.2, pcoeff=0.3, icoeff=0.4, dcoeff=0.1, safety=0.8)
        for i, ctrl in enumerate((dict(max_step=0.2), dict(max_step=0.05), dict(max_num_steps=6), pid)):
            options = dict(rtol=1e-7, atol=1e-9, device_loop=True, sync_every=4, **ctrl)
            eager = hn.solve(field, y0, t, controller=hn.PIDController(**options), throw=False)
            fast = hn.solve(
                field, y0, t, solver=hn.Dopri5().compiled(), controller=hn.PIDController(**options), throw=False
            )
            if i == 0:
                graphs = counters["stats"]["unique_graphs"]
            assert fast.status == eager.status
            assert (fast.stats.n_accepted, fast.stats.n_rejected) == (eager.stats.n_accepted, eager.stats.n_rejected)
            finite = torch.isfinite(eager.ys)
            assert torch.equal(finite, torch.isfinite(fast.ys))
            torch.testing.assert_close(fast.ys[finite], eager.ys[finite], rtol=1e-11, atol=1e-12)
            outcomes.append((eager.status, eager.stats.n_accepted))
    assert counters["stats"]["unique_graphs"] == graphs
    assert len(set(outcomes)) == 4 and outcomes[2][0] == hn.Status.MAX_STEPS  # the settings took effect
