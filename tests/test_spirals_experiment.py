"""Checkpoint/resume of training runs and the `hybrid-node spirals` path on a tiny budget."""

import dataclasses
import json
import os

import pytest
import torch

from hybrid_node._errors import CheckpointError
from hybrid_node.cli import main
from hybrid_node.data.spirals import SpiralConfig, make_spirals
from hybrid_node.experiments.spirals import (
    SpiralsSettings,
    build_model,
    inference_gap,
    learning_rate,
    predict,
    rmse,
    run_experiment,
    train_one,
)
from hybrid_node.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(**kw):
    base = {
        "ns": (10,),
        "iters": 6,
        "rnn_iters": 6,
        "nspiral": 12,
        "ntest": 6,
        "batch_size": 5,
        "rtol": 1e-3,
        "atol": 1e-4,
        "checkpoint_every": 3,
        "refine": (0, 2),
    }
    base.update(kw)
    return SpiralsSettings(**base)


@pytest.mark.parametrize("name", ["latent_ode", "rnn_gaps"])
def test_resume_from_checkpoint_gives_the_same_state(tmp_path, name):
    # Minibatches (batch_size < nspiral) and the latent ODE's reparameterisation both draw random
    # numbers, so this also checks that the generator states are restored.
    # The learning rate decays over the run and a validation set picks the kept iterate, so the
    # interruption must come mid-run (after the checkpoint of step 3), not from a smaller budget.
    data = make_spirals(SpiralConfig(nspiral=12), seed=0)
    train = data.subsample(10, seed=0)
    vdata = make_spirals(SpiralConfig(nspiral=4), seed=1)
    val = (vdata.subsample(10, seed=1), vdata.extrap_times[:5], vdata.extrap[:, :5])
    s = _settings(val_every=2)
    straight = train_one(name, 10, s, train, tmp_path / "a.pt", False, lambda k, loss: None, val)

    class Interrupted(Exception):
        pass

    calls = []

    def interrupt_at_step_4(k, loss):
        calls.append(k)
        if len(calls) == 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_one(name, 10, s, train, tmp_path / "b.pt", False, interrupt_at_step_4, val)
    assert load_checkpoint(tmp_path / "b.pt", restore_rng=False)["step"] == 3
    torch.rand(7)  # disturb the global generator, as anything between interruption and resume might
    resumed = train_one(name, 10, s, train, tmp_path / "b.pt", True, lambda k, loss: None, val)
    assert resumed.history == straight.history
    assert resumed.val_history == straight.val_history and resumed.best_step == straight.best_step
    for (k, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k


def test_learning_rate_schedules():
    s = _settings(lr=0.01, lr_final_ratio=0.1)
    for decay in ("cosine", "exp"):
        sd = dataclasses.replace(s, lr_decay=decay)
        lrs = [learning_rate(sd, k, 100) for k in range(101)]
        assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.001)
        assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert learning_rate(dataclasses.replace(s, lr_decay="cosine"), 50, 100) == pytest.approx(0.0055)
    assert learning_rate(dataclasses.replace(s, lr_decay="exp"), 50, 100) == pytest.approx(0.01 * 0.1**0.5)
    assert learning_rate(dataclasses.replace(s, lr_decay="none"), 70, 100) == 0.01


def test_gradient_clipping_bounds_the_step(tmp_path):
    # Adam divides by the gradient's running size, so only a clip far below the gradient norm shows:
    # with the norm clipped to 1e-12 the first step is eps-dominated (about lr * 1e-4), without it lr.
    data = make_spirals(SpiralConfig(nspiral=12), seed=0)
    train = data.subsample(10, seed=0)

    def moved(clip):
        s = _settings(iters=1, rnn_iters=1, lr=0.01, batch_size=12, grad_clip=clip)
        start = [
            p.detach().clone()
            for p in train_one(
                "rnn",
                10,
                dataclasses.replace(s, iters=0, rnn_iters=0),
                train,
                tmp_path / f"a{clip}.pt",
                False,
                lambda k, loss: None,
            ).parameters()
        ]
        model = train_one("rnn", 10, s, train, tmp_path / f"b{clip}.pt", False, lambda k, loss: None)
        return max(float((p.detach() - q).abs().max()) for p, q in zip(model.parameters(), start))

    assert moved(0.0) == pytest.approx(0.01, rel=1e-3)
    assert moved(1e-12) < 1e-5


@pytest.mark.parametrize("select", ["val_loss", "val_rmse", "last"])
def test_kept_iterate_is_the_best_by_validation(tmp_path, select):
    data = make_spirals(SpiralConfig(nspiral=12), seed=0)
    vdata = make_spirals(SpiralConfig(nspiral=6), seed=1)
    val = (vdata.subsample(10, seed=1), vdata.extrap_times[:20], vdata.extrap[:, :20])
    s = _settings(iters=8, rnn_iters=8, lr=0.05, val_every=2, select=select)
    model = train_one("rnn", 10, s, data.subsample(10, seed=0), tmp_path / "c.pt", False, lambda k, loss: None, val)
    steps, losses, scores = zip(*model.val_history)
    assert steps == (2, 4, 6, 8)
    by = {"val_loss": losses, "val_rmse": scores, "last": None}[select]
    expected = steps[by.index(min(by))] if by else 8
    assert model.best_step == expected
    # The returned weights really are that iterate: re-scoring gives the recorded validation numbers.
    row = model.val_history[steps.index(expected)]
    assert rmse(predict("rnn", model, val[0], val[1]), val[2]) == pytest.approx(row[2], rel=1e-6)
    with torch.no_grad():
        assert float(model.loss(val[0])) == pytest.approx(row[1], rel=1e-6)


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
    args = [
        "spirals",
        "--n",
        "10",
        "30",
        "--iters",
        "2",
        "--rnn-iters",
        "2",
        "--nspiral",
        "8",
        "--ntest",
        "6",
        "--rtol",
        "1e-3",
        "--atol",
        "1e-4",
        "--out",
        str(out),
        "--checkpoint-every",
        "1",
        "--refine-steps",
        "0",
        "3",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "0.3937" in printed and "0.1642" in printed  # the paper's numbers are shown beside ours
    assert "Latent ODE, z0 refined" in printed and "Latent ODE, empirical prior" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["rmse"]) == {f"{m}/n={n}" for m in ("latent_ode", "rnn", "rnn_gaps") for n in (10, 30)}
    assert all(v["rmse"] > 0 for v in results["rmse"].values())
    # The generator-aware floor is in the table, and no (barely trained) model is below it.
    assert "Bayes-optimal (knows the generator)" in printed
    for n in (10, 30):
        assert (
            0
            < results["bayes_optimal"][str(n)]
            < min(results["rmse"][f"{m}/n={n}"]["rmse"] for m in ("rnn", "rnn_gaps"))
        )
    for name in ("table2.md", "spirals_n10.png", "spirals_n30.png"):
        assert (out / name).stat().st_size > 0
    # Resume with a larger budget: training continues from step 2 of the stored checkpoints.
    assert main(args[:5] + ["3", "--rnn-iters", "3"] + args[8:] + ["--resume", "--no-plots"]) == 0
    state = torch.load(out / "checkpoints" / "latent_ode-n10.pt", weights_only=False)
    assert state["step"] == 3 and len(state["history"]) == 3
    resumed = json.loads((out / "results.json").read_text())["rmse"]
    assert all(resumed[k]["seconds"] > results["rmse"][k]["seconds"] for k in resumed)  # time adds up


def test_cli_rejects_bad_budget(tmp_path, capsys):
    # Out of range on its own: argparse's usage error; only wrong with the window: the command's error.
    with pytest.raises(SystemExit) as stop:
        main(["spirals", "--grad-clip", "-1", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "--grad-clip" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["spirals", "--refine-steps", "0", "-2", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "--refine-steps" in capsys.readouterr().err
    assert main(["spirals", "--n", "150", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--n values must lie between 2 and 100" in err and "Traceback" not in err


def test_cell_setting_reaches_every_recurrent_network():
    gru = _settings(cell="gru")
    assert isinstance(build_model("latent_ode", gru).encoder.gru, torch.nn.GRUCell)
    assert all(isinstance(build_model(m, gru).cell, torch.nn.GRUCell) for m in ("rnn", "rnn_gaps"))
    assert isinstance(build_model("rnn", _settings(cell="rnn")).cell, torch.nn.RNNCell)


def test_inference_gap_recovers_a_z0_the_model_can_reach():
    # Targets decoded by the model itself from known z0: the per-series fit must reproduce them
    # almost exactly, while the (untrained) encoder's z0 is far off; the weights stay untouched.
    torch.manual_seed(0)
    data = make_spirals(SpiralConfig(nspiral=6), seed=0)
    model = build_model("latent_ode", _settings(rtol=1e-6, atol=1e-8))
    with torch.no_grad():
        decoded = model.decode(0.5 * torch.randn(6, 4), torch.cat([data.times, data.extrap_times]))
    w = data.times.numel()
    data = dataclasses.replace(data, clean=decoded[:, :w], extrap=decoded[:, w:])
    before = [p.clone() for p in model.parameters()]
    gap = inference_gap(model, data, data.subsample(20, seed=0), steps=150, lr=0.05)
    assert gap["fitted"] < 0.1 * gap["encoder"] and gap["fitted_window"] < 0.1 * gap["encoder_window"]
    assert all(torch.equal(p, q) and p.requires_grad for p, q in zip(model.parameters(), before))


def test_restarts_are_independent_and_the_best_by_validation_is_scored(tmp_path):
    s = _settings(ns=(10,), models=("latent_ode", "rnn_gaps"), iters=3, rnn_iters=3, nval=5, val_every=1, restarts=3)
    results = run_experiment(s, tmp_path, plots=False, progress=False)
    for name in s.models:
        entry = results["rmse"][f"{name}/n=10"]
        runs = entry["restarts"]
        assert len(runs) == 3 and len({r["test_rmse"] for r in runs}) == 3  # three different initialisations
        losses = [r["val"][0] for r in runs]
        assert entry["restart"] == losses.index(min(losses))
        assert entry["rmse"] == runs[entry["restart"]]["test_rmse"]
    assert (tmp_path / "checkpoints" / "latent_ode-n10-r2.pt").exists()


def test_refinement_steps_are_chosen_on_validation_and_scored_on_test(tmp_path):
    s = _settings(models=("latent_ode",), nval=6, refine=(0, 3, 8))
    entry = run_experiment(s, tmp_path, plots=False, progress=False)["rmse"]["latent_ode/n=10"]
    refined = entry["refined"]
    assert set(refined["val_rmse"]) == set(refined["test_rmse"]) == {0, 3, 8}
    assert refined["steps"] == min(refined["val_rmse"], key=refined["val_rmse"].get)
    assert refined["rmse"] == refined["test_rmse"][refined["steps"]]
    assert refined["test_rmse"][0] == pytest.approx(entry["rmse"], rel=1e-6)  # 0 steps: the encoder's mean
    assert len(set(refined["test_rmse"].values())) == 3  # the steps move z0
    empirical = entry["empirical_prior"]
    assert set(empirical) == {"rmse", "val_rmse"} and all(0 < v < float("inf") for v in empirical.values())


@pytest.mark.parametrize("select", ["val_loss", "last"])
def test_the_kept_model_is_loaded_back_as_scored(tmp_path, select):
    # examples/spirals_inference_gap.py loaded restart 0's best iterate whatever the run had scored:
    # with --restarts 2 the scored model can be restart 1, and with --select last the last iterate.
    import subprocess
    import sys
    from pathlib import Path

    from hybrid_node.experiments.spirals import load_kept_model

    s = _settings(models=("latent_ode",), iters=4, nval=5, val_every=1, restarts=2, select=select, ntest=8)
    results = run_experiment(s, tmp_path, plots=False, progress=False)
    entry = results["rmse"]["latent_ode/n=10"]
    test_data = make_spirals(SpiralConfig(nspiral=s.ntest), seed=s.seed + 10_000)
    test = test_data.subsample(10, seed=s.seed + 10_000 + 10)
    for r in range(s.restarts):  # as if the run had chosen restart r
        results["rmse"]["latent_ode/n=10"]["restart"] = r
        (tmp_path / "results.json").write_text(json.dumps(results))
        model, loaded = load_kept_model(tmp_path, "latent_ode", 10)
        assert loaded == s
        # The same weights and the same computation as the run's scoring: equal up to summation order.
        score = rmse(predict("latent_ode", model, test, test_data.extrap_times), test_data.extrap)
        assert score == pytest.approx(entry["restarts"][r]["test_rmse"], rel=1e-6)
    # Restart 1 is now the recorded choice: the example must report its encoder RMSE.
    example = Path(__file__).parents[1] / "examples" / "spirals_inference_gap.py"
    argv = [sys.executable, str(example), str(tmp_path), "10", "--series", "8"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    encoder_row = next(line for line in out.stdout.splitlines() if line.startswith("| encoder"))
    assert encoder_row.split("|")[3].strip() == f"{entry['restarts'][1]['test_rmse']:.4f}"
    with pytest.raises(CheckpointError, match="has no scored rnn"):
        load_kept_model(tmp_path, "rnn", 10)
