"""``compile=True`` in the library's models: the graphs compiled by the first call serve the later
ones, and the results are the eager model's.

The models build a field around their dynamics (the CNF's augmented dynamics, the ODE-RNN's
per-sample time scale, the latent ODE's intensity channel); the compiled graphs are cached per field
object, so such a wrapper made anew for every solve compiled the graphs anew for every solve (0.4 to
1.2 s per call for these small models). The models now keep one per setting
(:func:`hybrid_node.nn._kept.kept_field`).
"""

import pytest
import torch

from hybrid_node.nn.cnf import CNF, CNFSolver, ExactTrace, HutchinsonTrace
from hybrid_node.nn.cnf_fields import TimeMLPField
from hybrid_node.nn.latent_ode import LatentODE
from hybrid_node.nn.ode_rnn import ODERNN

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")

FALLBACK = "ignore:compile=True. this field cannot be compiled:RuntimeWarning"


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _pair(build):
    """``build(options)`` eagerly and with compile=True, with the same weights."""
    torch.manual_seed(0)
    eager, compiled = build(None), build({"compile": True})
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


@pytest.mark.parametrize(
    ("adjoint", "trace"),
    [
        pytest.param(False, ExactTrace(), id="direct-exact"),
        # the forward solve without autograd would be one loop graph, which cannot hold the trace's
        # torch.autograd.grad: it runs per-step graphs after the one fallback warning
        pytest.param(True, ExactTrace(), id="adjoint-exact", marks=pytest.mark.filterwarnings(FALLBACK)),
        pytest.param(False, HutchinsonTrace(), id="direct-hutchinson"),
    ],
)
def test_cnf_training_steps_compile_on_the_first_step_only(adjoint, trace):
    """Three training steps on new data: log-densities and gradients as the eager flow's (with the
    same probe noise for Hutchinson's estimator), and no graph compiled after the first step."""

    def build(options):
        solver = CNFSolver(rtol=1e-8, atol=1e-8, adjoint=adjoint, options=options)
        return CNF(TimeMLPField(2, (8,)), dim=2, trace=trace, solver=solver)

    eager, compiled = _pair(build)
    after_first = None
    for step in range(3):
        x = torch.randn(16, 2, generator=torch.Generator().manual_seed(step))
        results = []
        for flow in (eager, compiled):
            flow.zero_grad()
            out = flow.to_base(x, generator=torch.Generator().manual_seed(10 + step))
            (-out.log_prob.mean()).backward()
            results.append((out.log_prob.detach(), [p.grad.clone() for p in flow.parameters()]))
        if after_first is None:
            after_first = _graphs()
        (lp_e, g_e), (lp_c, g_c) = results
        torch.testing.assert_close(lp_c, lp_e, rtol=1e-9, atol=1e-9)
        for got, want in zip(g_c, g_e):
            torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    assert _graphs() == after_first


def _three_calls_on_one_graph(call):
    """``call(step) -> (compiled result, eager result)`` for three steps without autograd: equal, and
    no graph compiled after the first step."""
    after_first = None
    for step in range(3):
        with torch.no_grad():
            got, want = call(step)
        if after_first is None:
            after_first = _graphs()
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    assert _graphs() == after_first


def test_ode_rnn_evolves_every_gap_on_one_graph():
    """The per-sample gaps reach the kept field as a tensor the graph takes as an input."""
    eager, compiled = _pair(
        lambda options: ODERNN(obs_dim=1, hidden=4, ode_hidden=8, rtol=1e-9, atol=1e-11, options=options)
    )
    h = torch.randn(3, 4)

    def call(step):
        gaps = torch.rand(3, generator=torch.Generator().manual_seed(step)) * 2 - 0.5
        return compiled.evolve(h, gaps), eager.evolve(h, gaps)

    _three_calls_on_one_graph(call)


def test_latent_ode_with_an_intensity_channel_solves_on_one_graph():
    eager, compiled = _pair(lambda options: LatentODE(obs_dim=2, poisson=True, rtol=1e-9, atol=1e-11, options=options))
    times = torch.linspace(0.1, 2.0, 5)

    def call(step):
        z0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(step))
        return compiled.latent_trajectory(z0, times), eager.latent_trajectory(z0, times)

    _three_calls_on_one_graph(call)
