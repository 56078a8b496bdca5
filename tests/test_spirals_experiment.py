"""Checkpoint/resume of training runs and the `hybrid-node spirals` path on a tiny budget."""
import json
import os

import pytest
import torch

from hybrid_node.cli import main
from hybrid_node.data.spirals import SpiralConfig, make_spirals
from hybrid_node.experiments.spirals import SpiralsSettings, train_one
from hybrid_node.training.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _settings(**kw):
    base = {"ns": (10,), "iters": 6, "rnn_iters": 6, "nspiral": 12, "ntest": 6, "batch_size": 5, "rtol": 1e-3, "atol": 1e-4, "checkpoint_every": 3}
    base.update(kw)
    return SpiralsSettings(**base)


@pytest.mark.parametrize("name", ["latent_ode", "rnn_gaps"])
def test_resume_from_checkpoint_gives_the_same_state(tmp_path, name):
    # Minibatches (batch_size < nspiral) and the latent ODE's reparameterisation both draw random
    # numbers, so this also checks that the generator states are restored.
    train = make_spirals(SpiralConfig(nspiral=12), seed=0).subsample(10, seed=0)
    straight = train_one(name, 10, _settings(), train, tmp_path / "a.pt", False, lambda k, loss: None)
    train_one(name, 10, _settings(iters=3, rnn_iters=3), train, tmp_path / "b.pt", False, lambda k, loss: None)
    torch.rand(7)  # disturb the global generator, as anything between interruption and resume might
    resumed = train_one(name, 10, _settings(), train, tmp_path / "b.pt", True, lambda k, loss: None)
    assert resumed.history == straight.history
    for (k, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("interrupted while writing")

    with pytest.raises(RuntimeError, match="interrupted"):
        save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(path, restore_rng=False)["step"] == 1  # the old file is intact
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temporary files left behind
    assert load_checkpoint(tmp_path / "missing.pt") is None


def test_cli_tiny_budget_writes_table_plots_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["spirals", "--n", "10", "30", "--iters", "2", "--rnn-iters", "2", "--nspiral", "8", "--ntest", "6",
            "--rtol", "1e-3", "--atol", "1e-4", "--out", str(out), "--checkpoint-every", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "0.3937" in printed and "0.1642" in printed  # the paper's numbers are shown beside ours
    results = json.loads((out / "results.json").read_text())
    assert set(results["rmse"]) == {f"{m}/n={n}" for m in ("latent_ode", "rnn", "rnn_gaps") for n in (10, 30)}
    assert all(v["rmse"] > 0 for v in results["rmse"].values())
    for name in ("table2.md", "spirals_n10.png", "spirals_n30.png"):
        assert (out / name).stat().st_size > 0
    # Resume with a larger budget: training continues from step 2 of the stored checkpoints.
    assert main(args[:5] + ["3", "--rnn-iters", "3"] + args[8:] + ["--resume", "--no-plots"]) == 0
    state = torch.load(out / "checkpoints" / "latent_ode-n10.pt", weights_only=False)
    assert state["step"] == 3 and len(state["history"]) == 3


def test_cli_rejects_bad_budget(tmp_path):
    with pytest.raises(ValueError, match="--n"):
        main(["spirals", "--n", "150", "--out", str(tmp_path)])
