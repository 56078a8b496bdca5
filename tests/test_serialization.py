"""What users keep: modules by state dict, pickle and deep copy; solutions; Brownian motions.

Each model's outputs after a round trip are compared bit for bit with the original's (the same
weights run through the same arithmetic give the same bits); a copy trained one step must leave the
original's weights, outputs and evaluation counters as they were.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import hybrid_node as hn
from hybrid_node.irregular import IrregularBatch
from hybrid_node.nn import (
    CNF,
    AugmentedNeuralODE,
    DiagonalDiffusion,
    HamiltonianNN,
    HutchinsonTrace,
    LatentODE,
    LatentSDE,
    MLPDynamics,
    NeuralSDE,
    ODEBlock,
    SecondOrderNeuralODE,
    SolveSettings,
)
from hybrid_node.nn.cnf_fields import TimeMLPField

B = 3


class Acceleration(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, t, x, v):
        return self.lin(torch.cat([x, v], -1))


def _batch() -> IrregularBatch:
    values = torch.linspace(-1, 1, B * 3 * 2).reshape(B, 3, 2)
    return IrregularBatch(torch.tensor([[0.1, 0.4, 0.9]] * B), values, torch.ones_like(values))


def _bm(t0: float, t1: float, size: tuple, levy: str = "none") -> hn.BrownianInterval:
    return hn.BrownianInterval(t0, t1, size, entropy=5, levy_area_approximation=levy)


X = torch.linspace(-1, 1, B * 2).reshape(B, 2)
STEP = {"step_size": 0.1}

#: name -> (build the model, its scalar output); every model kind the package exports, with options
#: (an adjoint, fixed steps, compiled graphs) that keep state beside the module's parameters
MODELS = {
    "ode_block": (lambda: ODEBlock(MLPDynamics(2, 8)), lambda m: m(X)),
    "ode_block_adjoint": (
        lambda: ODEBlock(MLPDynamics(2, 8), train_settings=SolveSettings(sensitivity=hn.BacksolveAdjoint())),
        lambda m: m(X),
    ),
    "ode_block_compiled": (
        lambda: ODEBlock(MLPDynamics(2, 8), train_settings=SolveSettings("rk4", options={**STEP, "compile": True})),
        lambda m: m(X),
    ),
    "augmented": (lambda: AugmentedNeuralODE(MLPDynamics(3, 8), 1, dim=1), lambda m: m(X)),
    "second_order": (lambda: SecondOrderNeuralODE(Acceleration(), dim=1), lambda m: m(X)),
    "hamiltonian": (lambda: ODEBlock(HamiltonianNN(1, 8)), lambda m: m(X)),
    "cnf": (
        lambda: CNF([TimeMLPField(2, (8,))], dim=2, trace=HutchinsonTrace()),
        lambda m: m.loss(X, generator=torch.Generator().manual_seed(3))[0],
    ),
    "latent_ode": (lambda: LatentODE(), lambda m: m.elbo(_batch(), generator=torch.Generator().manual_seed(3)).loss),
    "neural_sde": (
        lambda: NeuralSDE(MLPDynamics(2, 8), DiagonalDiffusion(2)),
        lambda m: m(X, [0.0, 0.5, 1.0], bm=_bm(0.0, 1.0, (B, 2), "space-time")),
    ),
    "latent_sde": (
        lambda: LatentSDE(data_dim=2),
        lambda m: m(_batch().values.transpose(0, 1), [0.1, 0.4, 0.9], bm=_bm(0.1, 0.9, (B, 4))).loss,
    ),
}

#: the compiled block compiles on first use (seconds each): run with -m slow
MODEL_NAMES = [pytest.param(n, marks=pytest.mark.slow) if n == "ode_block_compiled" else n for n in sorted(MODELS)]
TRAINABLE = ("ode_block", "ode_block_adjoint", "ode_block_compiled", "latent_ode")


def _built(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name][0]()


def _output(name: str, model: nn.Module) -> torch.Tensor:
    torch.manual_seed(123)  # any draw a model makes (its z0 sample, its noise) is the same for both
    return MODELS[name][1](model)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_saved_state_dict_gives_a_fresh_module_the_same_outputs(name):
    model, fresh = _built(name, 1), _built(name, 2)
    want = _output(name, model)
    state = model.state_dict()
    assert all(torch.is_tensor(v) for v in state.values())  # no solver state or settings in it
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(_output(name, fresh), want, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_pickled_saved_and_copied_modules_give_the_same_outputs(name):
    model = _built(name, 1)
    want = _output(name, model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        torch.testing.assert_close(_output(name, other), want, rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if getattr(n, "values", [n])[0] in TRAINABLE])
def test_training_a_deep_copy_leaves_the_original_alone(name):
    model = _built(name, 1)
    want = _output(name, model)
    counts = getattr(model, "nfe_forward", None), getattr(model, "nfe_backward", None)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    other = copy.deepcopy(model)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    _output(name, other).sum().backward()
    opt.step()
    _output(name, other)
    assert (getattr(model, "nfe_forward", None), getattr(model, "nfe_backward", None)) == counts
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, weights[k]) for k, v in other.state_dict().items())
    torch.testing.assert_close(_output(name, model), want, rtol=0, atol=0)


def test_a_compiled_blocks_state_dict_loads_into_an_eager_block():
    """compile=True changes how the steps run, not the module: its weights fit the eager block, whose
    rk4 steps then agree with the compiled ones to float32 rounding (fused kernels round otherwise)."""
    compiled = ODEBlock(MLPDynamics(2, 8), train_settings=SolveSettings("rk4", options={**STEP, "compile": True}))
    eager = ODEBlock(MLPDynamics(2, 8), train_settings=SolveSettings("rk4", options=STEP))
    eager.load_state_dict(compiled.state_dict())
    torch.testing.assert_close(eager(X), compiled(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: hn.BrownianInterval(0.0, 1.0, (B, 2), entropy=7),
        lambda: hn.BrownianInterval(0.0, 1.0, (B, 2), entropy=7, dt=0.1),
        lambda: hn.BrownianInterval(0.0, 1.0, (B, 2), entropy=7, levy_area_approximation="foster"),
        lambda: hn.BrownianTree(0.0, torch.zeros(B, 2), 1.0, entropy=7),
    ],
)
@pytest.mark.parametrize("how", ["pickle", "deepcopy", "torch.save"])
def test_a_copied_brownian_motion_continues_the_same_path(make, how):
    """Queries after the copy, new knots included, see the increments the original gives."""
    bm = make()
    bm(0.3, 0.5)
    if how == "pickle":
        other = pickle.loads(pickle.dumps(bm))
    elif how == "deepcopy":
        other = copy.deepcopy(bm)
    else:
        buffer = io.BytesIO()
        torch.save(bm, buffer)
        buffer.seek(0)
        other = torch.load(buffer, weights_only=False)
    area = bm.levy_area_approximation == "foster"
    for ta, tb in ((0.1, 0.2), (0.25, 0.35), (0.6, 0.9), (0.3, 0.5)):
        want, got = bm(ta, tb, return_A=area), other(ta, tb, return_A=area)
        for w, g in zip(want if area else (want,), got if area else (got,)):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def _solution_with_graph() -> hn.Solution:
    def field(t, y):  # a rotation: y[:, 1] of every sample crosses zero before t = 2
        return torch.stack([y[:, 1], -y[:, 0]], 1)

    y0 = X.clone().requires_grad_()
    apex = hn.Event(lambda t, y: y[:, 1])  # recorded crossings, each with a differentiable time and state
    return hn.solve(field, y0, torch.tensor([0.0, 0.5, 2.0]), event=apex, controller=hn.PIDController(1e-6, 1e-8))


def test_a_detached_solution_copies_pickles_and_keeps_its_values():
    sol = _solution_with_graph()
    assert sol.ys.requires_grad and sol.events
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(sol)  # torch's rule: why detach() is needed
    kept = sol.detach()
    assert not kept.ys.requires_grad and all(not r.t.requires_grad and not r.y.requires_grad for r in kept.events)
    for other in (copy.deepcopy(kept), pickle.loads(pickle.dumps(kept))):
        torch.testing.assert_close(other.ys, sol.ys.detach(), rtol=0, atol=0)
        assert [r.index for r in other.events] == [r.index for r in sol.events]
        assert other.stats == sol.stats and other.status == sol.status
    kept.stats.nfe += 1  # its own counters
    assert kept.stats.nfe == sol.stats.nfe + 1


def test_a_solution_converts_like_a_module():
    """A dtype converts floating (and complex) tensors only; integer and bool ones keep theirs."""
    fired = torch.tensor([True, False])
    sol = hn.Solution(
        ts=torch.tensor([0.0, 1.0]),
        ys=(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.complex64) * (1 + 2j)),
        stats=hn.Stats(nfe=4),
        event_fired=fired,
        t_final=torch.tensor([0.5, float("nan")]),
    )
    wide = sol.to(torch.float64)
    assert wide.ts.dtype == wide.ys[0].dtype == wide.t_final.dtype == torch.float64
    assert wide.ys[1].dtype == torch.complex128 and torch.equal(wide.ys[1], sol.ys[1].to(torch.complex128))
    assert wide.event_fired.dtype == torch.bool and torch.equal(wide.event_fired, fired)
    assert sol.ys[0].dtype == torch.float32  # the original is left as it is
    assert sol.to("cpu").ys[0].device.type == "cpu"
    with pytest.raises(TypeError, match="floating-point or complex dtype"):
        sol.to(torch.int64)


def test_an_ensemble_of_blocks_by_stack_module_state_says_how_to_pass_the_times():
    """torch.func's ensembling recipe stacks every buffer, the block's times too: the solve then saw
    batched output times and said "t is batched", a t the user never passed. The block names its
    buffer and the fix, and the fix gives each model's own outputs."""
    torch.manual_seed(0)
    models = [ODEBlock(MLPDynamics(2, 4)) for _ in range(3)]
    params, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def call(p, b, x):
        return torch.func.functional_call(base, (p, b), (x,))

    with pytest.raises(ValueError, match=r"buffer t\) are batched by vmap.*stack_module_state"):
        torch.vmap(call, in_dims=(0, 0, None))(params, buffers, X)
    one = {k: v[0] for k, v in buffers.items()}
    got = torch.vmap(call, in_dims=(0, None, None))(params, one, X)
    for model, out in zip(models, got):
        # batched matmuls may sum in another order: float32 rounding of the steps, 1e-6 absolute
        torch.testing.assert_close(out, model(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fill", ["assign", "to_empty"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_module_built_on_the_meta_device_and_filled_from_a_state_dict_gives_the_same_outputs(name, fill):
    """torch's recipe for building a model without memory: construct under ``torch.device("meta")``, then
    load the weights with ``assign=True`` or after ``to_empty``. An ODE block checked its times with
    ``.item()``, which a meta tensor cannot answer, and the times (in no state dict) had no values."""
    model = _built(name, 1)
    want = _output(name, model)
    with torch.device("meta"):
        empty = _built(name, 2)
    if fill == "assign":
        empty.load_state_dict(model.state_dict(), assign=True)
    else:
        empty.to_empty(device="cpu")
        empty.load_state_dict(model.state_dict())
    torch.testing.assert_close(_output(name, empty), want, rtol=0, atol=0)


def test_a_meta_tensor_of_times_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="meta tensor, which holds no times"):
        ODEBlock(MLPDynamics(2, 4), t=torch.zeros(2, device="meta"))
