"""Models through what users do with torch modules: state dicts, whole-module saves, copies, dtype moves,
the options dicts they were given, DataLoader workers.

The references are the model itself (a save or copy must solve bit for bit as the original: the same
float operations in the same order), a model built in float64 (``.double()`` must leave no tensor of the
model behind in float32) and, for the options, an analytic evaluation count: classical RK4 takes 4
evaluations per step, so a solve over a unit interval with step 0.25 makes 16.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hybrid_node import BacksolveAdjoint
from hybrid_node.irregular import IrregularBatch, collate, from_sequences, select
from hybrid_node.nn import (
    CNF,
    AugmentedNeuralODE,
    CNFSolver,
    ConvDynamics,
    DiagonalDiffusion,
    HamiltonianNN,
    HutchinsonTrace,
    LatentODE,
    LatentSDE,
    MLPDynamics,
    NeuralSDE,
    ODEBlock,
    RNODERegularization,
    SecondOrderNeuralODE,
    SolveSettings,
)
from hybrid_node.nn.cnf_fields import TimeMLPField
from hybrid_node.nn.ode_rnn import ODERNN
from hybrid_node.nn.planar_flow import PlanarFlow


def _series(dtype: torch.dtype = torch.float32) -> IrregularBatch:
    gen = torch.Generator().manual_seed(1)
    times = [torch.tensor([0.1, 0.4, 0.9], dtype=dtype), torch.tensor([0.2, 0.3], dtype=dtype)]
    values = [torch.randn(3, 2, generator=gen, dtype=dtype), torch.randn(2, 2, generator=gen, dtype=dtype)]
    return from_sequences(times, values)


def _cnf_loss(flow: CNF, dtype: torch.dtype) -> torch.Tensor:
    x = torch.linspace(-1.0, 1.0, 6, dtype=dtype).reshape(3, 2)
    return flow.loss(x, generator=torch.Generator().manual_seed(0))[0]


class _Acceleration(nn.Module):
    """a(t, x, v) = W [x, v] + b, the acceleration of a second-order model."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, t: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([x, v], dim=-1))


#: name -> (build, call): every model the docs show, with a call that runs its solve
MODELS = {
    "ode_block_conv": (
        lambda: ODEBlock(ConvDynamics(4, groups=2)),
        lambda m, dt: m(torch.linspace(-1, 1, 2 * 4 * 5 * 5, dtype=dt).reshape(2, 4, 5, 5)),
    ),
    "augmented": (
        lambda: AugmentedNeuralODE(MLPDynamics(2 + 3, hidden=8), augment_dim=3),
        lambda m, dt: m(torch.linspace(-1, 1, 8, dtype=dt).reshape(4, 2)),
    ),
    "second_order": (
        lambda: SecondOrderNeuralODE(_Acceleration(2)),
        lambda m, dt: m(torch.linspace(-1, 1, 6, dtype=dt).reshape(3, 2)),
    ),
    "cnf_rnode": (
        lambda: CNF(
            [TimeMLPField(2, hidden=(8,))], dim=2, trace=HutchinsonTrace(), regularization=RNODERegularization(0.1, 0.1)
        ),
        _cnf_loss,
    ),
    "latent_ode": (
        lambda: LatentODE(obs_dim=2, latent_dim=3, rec_hidden=5, encoder="ode-rnn", poisson=True),
        lambda m, dt: m(_series(dt)),
    ),
    "ode_rnn": (lambda: ODERNN(2, hidden=4, ode_hidden=8), lambda m, dt: m(_series(dt))),
    "hnn": (
        lambda: HamiltonianNN(1, hidden=8),
        lambda m, dt: m(torch.tensor(0.0, dtype=dt), torch.linspace(-1, 1, 6, dtype=dt).reshape(3, 2)),
    ),
    "neural_sde": (
        lambda: NeuralSDE(MLPDynamics(2, hidden=8), DiagonalDiffusion(2), method="euler", dt=0.1),
        lambda m, dt: m(torch.linspace(-1, 1, 6, dtype=dt).reshape(3, 2), torch.linspace(0, 1, 3, dtype=dt)),
    ),
    "latent_sde": (
        lambda: LatentSDE(1, 3, hidden=8, context_dim=4, obs_std=0.1, dt=0.1),
        lambda m, dt: m(torch.linspace(-1, 1, 6, dtype=dt).reshape(3, 2, 1), torch.linspace(0, 1, 3, dtype=dt)).loss,
    ),
    "planar_flow": (
        lambda: PlanarFlow(2, 3),
        lambda m, dt: m.log_prob(torch.linspace(-1, 1, 6, dtype=dt).reshape(3, 2)),
    ),
}


def _build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name][0]()


def _call(name: str, model: nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    torch.manual_seed(123)  # the SDE models' Brownian motion and the latent models' z0 draw
    return MODELS[name][1](model, dtype)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_state_dict_loads_strictly_into_a_fresh_model_and_solves_bit_for_bit(name):
    """A solve leaves no counter or cached tensor in the state dict, so a model that has never run loads
    a trained one's strictly and then gives its outputs exactly."""
    model = _build(name)
    keys_before = list(model.state_dict())
    want = _call(name, model)
    state = model.state_dict()
    assert list(state) == keys_before
    fresh = _build(name, seed=1)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(_call(name, fresh), want)


def _saved(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_copies_of_a_model_that_has_run_solve_as_it_does(name, how):
    model = _build(name)
    want = _call(name, model)  # run first: the copy then carries whatever a solve left on the model
    copy_of = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)), "torch.save": _saved}
    assert torch.equal(_call(name, copy_of[how](model)), want)


def test_a_copied_block_counts_its_own_evaluations():
    torch.manual_seed(0)
    block = ODEBlock(MLPDynamics(3, hidden=8), train_settings=SolveSettings(sensitivity=BacksolveAdjoint()))
    y = block(torch.ones(2, 3))
    twin = copy.deepcopy(block)
    y.sum().backward()  # the original's backward pass: counted on the original only
    assert block.nfe_backward > 0 and twin.nfe_backward == 0
    twin(torch.full((2, 3), 2.0)).sum().backward()
    assert (block.nfe_forward, block.nfe_backward) != (0, 0) and twin.nfe_backward > 0
    assert twin.__dict__["_kept_fields"] is not block.__dict__["_kept_fields"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_double_matches_a_model_built_in_float64(name):
    """After ``.double()`` the model computes in float64 throughout: given the same (float64) weights, a
    model built under a float64 default gives the same numbers, bit for bit."""
    converted = _build(name).double()
    assert all(t.dtype == torch.float64 for t in converted.state_dict().values() if t.is_floating_point())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        native = _build(name)
    finally:
        torch.set_default_dtype(previous)
    native.load_state_dict(converted.state_dict())
    got = _call(name, converted, torch.float64)
    assert got.dtype == torch.float64
    assert torch.equal(got, _call(name, native, torch.float64))


# -- the options a model is given ---------------------------------------------------------------


def _rk4_quarter() -> dict:
    return {"step_size": 0.25}


def test_solve_settings_keep_the_options_they_were_built_with():
    """The settings are frozen and their options checked when built: the caller's dict, changed later,
    used to change the block's solve (and to skip the check)."""
    options = _rk4_quarter()
    block = ODEBlock(MLPDynamics(2, hidden=4), train_settings=SolveSettings("rk4", options=options))
    x = torch.ones(3, 2)
    want = block(x)
    assert block.nfe_forward == 16  # 4 RK4 steps of 4 evaluations over (0, 1)
    options["step_size"] = 0.5
    options["step_sise"] = 0.1  # a misspelt name is refused when settings are built, never by a later change
    assert torch.equal(block(x), want) and block.nfe_forward == 16
    assert block.train_settings.options == _rk4_quarter()


def test_adjoint_settings_keep_the_options_they_were_built_with():
    options = _rk4_quarter()
    sensitivity = BacksolveAdjoint(method="rk4", options=options)
    block = ODEBlock(MLPDynamics(2, hidden=4), train_settings=SolveSettings(sensitivity=sensitivity))
    options["step_size"] = 0.5
    block(torch.ones(3, 2)).sum().backward()
    assert block.nfe_backward == 16  # the backward solve's 4 RK4 steps over (1, 0)


def test_cnf_solver_keeps_the_options_it_was_built_with():
    """A fixed-step CNFSolver without a step size is refused when built (one step per block); emptying
    the caller's dict afterwards used to give that one-step solve silently."""
    options = _rk4_quarter()
    flow = CNF([TimeMLPField(2, hidden=(4,))], dim=2, solver=CNFSolver("rk4", options=options))
    x = torch.linspace(-1.0, 1.0, 4).reshape(2, 2)
    want = flow.to_base(x)
    assert want.nfe == 16
    options.clear()
    got = flow.to_base(x)
    assert got.nfe == 16 and torch.equal(got.log_prob, want.log_prob)


@pytest.mark.parametrize("kind", ["latent_ode", "ode_rnn"])
def test_recurrent_models_keep_the_options_they_were_built_with(kind):
    def build(options):
        torch.manual_seed(0)
        if kind == "latent_ode":
            return LatentODE(obs_dim=2, latent_dim=3, method="rk4", options=options)
        return ODERNN(2, hidden=3, method="rk4", options=options)

    def run(model):
        if kind == "latent_ode":
            return model.predict(_series(), torch.linspace(0.0, 1.0, 3))
        return model(_series())

    options = _rk4_quarter()
    model = build(options)
    options["step_size"] = 0.5
    assert torch.equal(run(model), run(build(_rk4_quarter())))
    model.options = {"step_size": 0.5}  # the attribute itself is the way to change the solve
    assert torch.equal(run(model), run(build({"step_size": 0.5})))


# -- data across worker processes -----------------------------------------------------------------


class _Series(Dataset):
    """One series per item, as a user wraps an :class:`IrregularBatch` for a DataLoader."""

    def __init__(self, batch: IrregularBatch):
        self.batch = batch

    def __len__(self) -> int:
        return self.batch.batch_size

    def __getitem__(self, i: int) -> IrregularBatch:
        return select(self.batch, torch.tensor([i]))


def test_series_batches_from_worker_processes_are_those_of_the_main_process():
    from hybrid_node.data.periodic import PeriodicConfig, make_periodic

    data, _ = make_periodic(PeriodicConfig(n_traj=10, n_points=5, shared_times=False))

    def batches(workers: int) -> list[IrregularBatch]:
        gen = torch.Generator().manual_seed(3)
        loader = DataLoader(
            _Series(data), batch_size=4, shuffle=True, num_workers=workers, collate_fn=collate, generator=gen
        )
        return list(loader)

    main, workers = batches(0), batches(2)
    assert len(main) == len(workers) == 3
    for a, b in zip(main, workers):
        assert torch.equal(a.times, b.times) and torch.equal(a.values, b.values) and torch.equal(a.mask, b.mask)


# -- modes and the user's torch.compile -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_mode_changes_nothing_without_eval_settings(name):
    """Only an ODE block reads ``training`` (to pick ``eval_settings``); no model switches a tolerance,
    a regulariser or a sample draw with the mode (docs/models.md)."""
    model = _build(name)
    want = _call(name, model.train())
    assert torch.equal(_call(name, model.eval()), want)


@pytest.mark.parametrize("name", ["augmented", "hnn"])
def test_torch_compile_of_a_whole_model_gives_the_eager_answer(name):
    """Dynamo traces the models (the solves run untraced, behind graph breaks); the ``eager`` backend
    keeps the test fast, and with the same draws the outputs are the eager ones exactly."""
    model = _build(name)
    want = _call(name, model)
    assert torch.equal(_call(name, torch.compile(model, backend="eager")), want)


@pytest.mark.parametrize("name", ["cnf_rnode", "planar_flow"])
def test_calling_a_flow_names_its_methods_and_how_to_compile_one(name):
    """A flow has no ``forward``: ``torch.compile(flow)(x)`` ended in torch's "missing the required
    forward function", which names nothing to call instead."""
    flow = _build(name)
    x = torch.linspace(-1.0, 1.0, 6).reshape(3, 2)
    for called in (flow, torch.compile(flow, backend="eager")):
        with pytest.raises(NotImplementedError, match=r"log_prob\(\.\.\.\).*torch\.compile\(model\.log_prob\)"):
            called(x)
    torch.manual_seed(0)  # the same Hutchinson probe for both
    want = flow.log_prob(x)  # the advice works: the compiled method gives the eager answer
    torch.manual_seed(0)
    assert torch.equal(torch.compile(flow.log_prob, backend="eager")(x), want)
