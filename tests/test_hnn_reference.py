"""HNN model, data and training against Greydanus et al.'s code (github.com/greydanus/hamiltonian-nn).

The reference's ``hnn.py`` and ``nn_models.py`` run with our weights: the same field ``J grad H`` (its
permutation matrix M puts ``dH/dp`` first and ``-dH/dq`` second) and the same baseline. Its
``experiment-*/data.py`` generate the same trajectories, derivatives, times and initial radii as our
``make_data``, and its ``experiment-spring/train.py`` takes the same optimizer steps as our
``train_model`` on its data. The repository is read from ``HNN_REPO`` (a checkout or a bare git
directory); without it, or without ``autograd`` (the reference's data generators differentiate H with
it), the tests skip.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from _reference_code import load_module, read_source, repository

from hybrid_node.experiments.hnn import SYSTEMS, exact_trajectories, make_data, train_model
from hybrid_node.nn import BaselineODE, HamiltonianNN

#: Greydanus et al.'s repository (a checkout or a bare git directory)
HNN_REPO = repository("HNN_REPO", "/work/.mirror/greydanus+hamiltonian-nn/repo")
WHAT = "the hamiltonian-nn repository"
#: our task names -> the reference's experiment folders
FOLDERS = {"spring": "experiment-spring", "pendulum": "experiment-pend"}
#: the reference's top-level modules, imported by their plain names (``from nn_models import MLP``)
MODULES = ("hnn", "nn_models", "utils", "data")


@pytest.fixture
def reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """The reference's ``hnn``, ``nn_models``, both ``data`` modules and the spring's ``train``, from copies."""
    pytest.importorskip("autograd", reason="the reference's data.py differentiates H with autograd")
    files = ["hnn.py", "nn_models.py", "utils.py", "experiment-spring/train.py"]
    files += [f"{folder}/data.py" for folder in FOLDERS.values()]
    for rel in files:
        dest = tmp_path / rel
        dest.parent.mkdir(exist_ok=True)
        dest.write_text(read_source(HNN_REPO, rel, "HNN_REPO", WHAT))
    for name in ("imageio", "scipy.misc"):  # utils.py imports them for its gif writer alone (one is deprecated)
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    for key in MODULES:  # another test's module of one of these common names must not be picked up
        if key in sys.modules:
            monkeypatch.delitem(sys.modules, key)
    monkeypatch.syspath_prepend(str(tmp_path / "experiment-spring"))  # train.py's `from data import ...`
    monkeypatch.syspath_prepend(str(tmp_path))  # undone after the test, with train.py's own append
    try:
        hnn, nn_models = importlib.import_module("hnn"), importlib.import_module("nn_models")
        train = load_module(tmp_path / "experiment-spring/train.py", "hnn_reference_train")
    finally:  # entered anew so that the monkeypatch removes them after the test
        for key in MODULES:
            if key in sys.modules:
                monkeypatch.setitem(sys.modules, key, sys.modules.pop(key))
    data = {
        task: load_module(tmp_path / f"{folder}/data.py", f"hnn_reference_{task}") for task, folder in FOLDERS.items()
    }
    return types.SimpleNamespace(hnn=hnn, nn_models=nn_models, data=data, train=train)


def _copy_mlp(ours: torch.nn.Module, mlp: torch.nn.Module, output_rows: slice) -> None:
    """The reference MLP's weights into our ``net`` (its last layer has no bias: ours is zeroed and frozen)."""
    with torch.no_grad():
        for mine, theirs in ((ours.net[0], mlp.linear1), (ours.net[2], mlp.linear2)):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        ours.net[4].weight.copy_(mlp.linear3.weight[output_rows])
        ours.net[4].bias.zero_()
    ours.net[4].bias.requires_grad_(False)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_field_equals_the_reference_time_derivative(reference, dim):
    torch.manual_seed(0)
    mlp = reference.nn_models.MLP(2 * dim, 32, 2, "tanh").double()
    ref = reference.hnn.HNN(2 * dim, differentiable_model=mlp)  # field_type="solenoidal", canonical coords
    ref.M = ref.M.double()  # a plain attribute, which .double() leaves in float32
    # the solenoidal field is dF2 @ M^T with the second output F2 as the energy
    ours = HamiltonianNN(dim, hidden=32).double()
    _copy_mlp(ours, mlp, slice(1, 2))
    x = torch.randn(16, 2 * dim, dtype=torch.float64, requires_grad=True)
    # the same layers and gradients; M's entries are 0 and +-1, so equal up to summation order
    torch.testing.assert_close(ours(torch.zeros(()), x), ref.time_derivative(x), rtol=0, atol=1e-14)
    q, p = x.detach().split(dim, dim=-1)
    dq, dp = ours(torch.zeros(()), (q, p))  # the pair state: the same field
    torch.testing.assert_close(torch.cat([dq, dp], -1), ref.time_derivative(x), rtol=0, atol=1e-14)

    base_mlp = reference.nn_models.MLP(2 * dim, 32, 2 * dim, "tanh").double()
    base_ref = reference.hnn.HNN(2 * dim, differentiable_model=base_mlp, baseline=True)
    base = BaselineODE(dim, hidden=32).double()
    _copy_mlp(base, base_mlp, slice(None))
    torch.testing.assert_close(base(torch.zeros(()), x), base_ref.time_derivative(x), rtol=0, atol=1e-14)


@pytest.mark.parametrize("task", list(FOLDERS))
def test_trajectories_follow_the_reference_generator(reference, task):
    # the paper's equations (m = l = k = 1, g = 3) made the spring twice as slow and p twice as large
    # on both systems; the pendulum's window was [0, 5] with 75 points instead of the code's [0, 3], 45
    system = SYSTEMS[task]
    y0 = np.array([0.6, -0.8]) * system.radius[1]  # its largest orbit, the most nonlinear pendulum
    q, p, dq, dp, t = reference.data[task].get_trajectory(radius=system.radius[1], y0=y0, noise_std=0.0)
    ours_t = torch.linspace(0.0, system.t_end, system.n_points, dtype=torch.float64)
    torch.testing.assert_close(ours_t, torch.from_numpy(t), rtol=0, atol=1e-15)
    q0, p0 = torch.tensor(y0[:1]), torch.tensor(y0[1:])
    ours_q, ours_p = exact_trajectories(system, q0, p0, ours_t)
    # the reference passes solve_ivp rtol 1e-10 but leaves atol at its default 1e-6: its RK45 is off
    # by up to 2e-6 (spring, against the exact solution) and 4e-5 (pendulum), yoshida6 by below 1e-6
    torch.testing.assert_close(ours_q[:, 0], torch.from_numpy(q), rtol=0, atol=1e-4)
    torch.testing.assert_close(ours_p[:, 0], torch.from_numpy(p), rtol=0, atol=1e-4)
    ours_dq, ours_dp = system.field(ours_t, (ours_q, ours_p))
    torch.testing.assert_close(ours_dq[:, 0], torch.from_numpy(dq[0]), rtol=0, atol=3e-4)  # 2 and 3 x those
    torch.testing.assert_close(ours_dp[:, 0], torch.from_numpy(dp[0]), rtol=0, atol=3e-4)


class _NoSolve:
    """Stands in for the reference's solve_ivp: the trajectory is its initial state (only the draw is compared)."""

    def __call__(self, fun, t_span, y0, t_eval, **kwargs):
        return {"y": np.asarray(y0, dtype=float)[:, None]}


@pytest.mark.parametrize("task", list(FOLDERS))
def test_initial_radii_span_the_reference_range(reference, task, monkeypatch):
    # the pendulum's radii were drawn from [1.3, 2.6]; the paper and its code draw them from [1.3, 2.3]
    module = reference.data[task]
    monkeypatch.setattr(module, "solve_ivp", _NoSolve())
    np.random.seed(0)
    theirs = np.array([np.hypot(*module.get_trajectory(noise_std=0.0)[:2]).item() for _ in range(400)])
    data = make_data(SYSTEMS[task], 400, 0.0, seed=0)
    ours = data["y0_test"].double().norm(dim=1).numpy()
    lo, hi = SYSTEMS[task].radius
    for radii in (theirs, ours):
        # 200 or more uniform draws reach within 0.03 of both ends of a range of width 0.9 or 1 with
        # probability above 1 - 2 * (1 - 0.03 / 1) ** 200 > 0.99 (and the seeds are fixed)
        assert lo - 1e-6 <= radii.min() < lo + 0.03 and hi - 0.03 < radii.max() <= hi + 1e-6, (radii.min(), radii.max())


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("baseline", [False, True])
def test_training_equals_the_reference_train_loop(reference, baseline, monkeypatch):
    # the optimizer had no weight decay; the paper (Appendix A) and train.py use 1e-4: over 11 Adam
    # steps the weights then differed by up to 1e-2 where the loss's gradient is small
    dataset = reference.data["spring"].get_dataset(seed=0, samples=6)  # the full 50 take seconds to solve
    monkeypatch.setattr(reference.train, "get_dataset", lambda seed: dataset)
    steps, hidden = 10, 32
    args = argparse.Namespace(
        input_dim=2,
        hidden_dim=hidden,
        learn_rate=1e-3,
        nonlinearity="tanh",
        total_steps=steps,
        baseline=baseline,
        use_rk4=False,
        verbose=False,
        field_type="solenoidal",
        seed=0,
    )
    ref_model, stats = reference.train.train(args)
    torch.manual_seed(0)  # train() seeds before building its MLP: the same initial weights
    mlp = reference.nn_models.MLP(2, hidden, 2, "tanh")  # two outputs: the derivatives, or F1 and F2
    ours = BaselineODE(1, hidden=hidden) if baseline else HamiltonianNN(1, hidden=hidden)
    _copy_mlp(ours, mlp, slice(None) if baseline else slice(1, 2))
    data = {
        "x_train": torch.tensor(dataset["x"], dtype=torch.float32),
        "dx_train": torch.tensor(dataset["dx"], dtype=torch.float32),
        "x_test": torch.tensor(dataset["test_x"], dtype=torch.float32),
        "dx_test": torch.tensor(dataset["test_dx"], dtype=torch.float32),
    }
    fit = train_model(ours, data, steps + 1, 1e-3, progress=False, label="")  # its loop runs total_steps + 1
    # the same float32 operations in the same order: equal up to rounding (measured: bit-identical)
    np.testing.assert_allclose(fit["history"], stats["train_loss"], rtol=1e-6, atol=0)
    theirs = ref_model.differentiable_model
    mine = [ours.net[0].weight, ours.net[2].weight, ours.net[4].weight]
    want = [
        theirs.linear1.weight,
        theirs.linear2.weight,
        theirs.linear3.weight[slice(None) if baseline else slice(1, 2)],
    ]
    for a, b in zip(mine, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
