"""`hybrid-node mnist --resume`: an interrupted run continues to the same weights and losses, and refuses changes."""

import json

import pytest
import torch
from test_mnist_loader import make_folder

from hybrid_node._errors import ResumeError
from hybrid_node.cli import main
from hybrid_node.experiments import mnist
from hybrid_node.experiments.mnist import MNISTConfig, checkpoint_path, run_table1
from hybrid_node.training.checkpoint import load_checkpoint


class Interrupted(Exception):
    """Stands for a kill: raised from inside training, nothing after it runs."""


@pytest.fixture
def tiny_mnist(tmp_path):
    return make_folder(tmp_path, 40, 8)  # 40 training images, not conftest's 48: see the schedule below


# 40 images in batches of 16: 3 iterations per epoch (the last one short), 2 epochs; a checkpoint every
# 2 iterations falls mid-epoch. Adam's one-cycle schedule and random-crop augmentation make the result
# depend on the optimizer, scheduler and minibatch generator states, which a resume must all restore.
CFG = MNISTConfig(
    models=("resnet", "rknet"),
    channels=4,
    epochs=2,
    batch_size=16,
    optimizer="adam",
    lr=1e-2,
    lr_milestones=(),
    augment=True,
    test_subset=8,
    adjoint=False,
    checkpoint_every=2,
)


def final_state(folder, kind):
    return load_checkpoint(checkpoint_path(folder, kind), restore_rng=False)


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "train time (s)"} for r in rows]


def assert_same_run(a, b, folder_a, folder_b):
    """Bit-identical: every loss, NFE and result row, and every weight of each model's last checkpoint."""
    assert without_time(a["rows"]) == without_time(b["rows"])
    for kind in CFG.models:
        ha, hb = a["histories"][kind], b["histories"][kind]
        assert {k: v for k, v in ha.items() if k != "seconds"} == {k: v for k, v in hb.items() if k != "seconds"}
        sa, sb = final_state(folder_a, kind), final_state(folder_b, kind)
        assert sa["step"] == sb["step"] == 6
        for name, p in sa["model"].items():
            assert torch.equal(p, sb["model"][name]), name


def run_killed_at(monkeypatch, root, folder, call: int) -> None:
    """``run_table1(CFG, root, folder)`` killed inside its ``call``-th augmentation (1-based: 3 per epoch,
    6 per model); the augmentation is put back afterwards."""
    calls = {"n": 0}
    shift = mnist._random_shift

    def interrupting_shift(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise Interrupted
        return shift(*args, **kwargs)

    monkeypatch.setattr(mnist, "_random_shift", interrupting_shift)
    with pytest.raises(Interrupted):
        run_table1(CFG, root, folder)
    monkeypatch.setattr(mnist, "_random_shift", shift)


def record_builds(monkeypatch) -> list:
    """The list that the kinds of the models built from now on (so trained) are appended to."""
    trained: list = []
    build = mnist.build_model
    monkeypatch.setattr(mnist, "build_model", lambda kind, *a, **k: trained.append(kind) or build(kind, *a, **k))
    return trained


@pytest.mark.parametrize("where", ["first model, mid-epoch", "second model"])
def test_an_interrupted_run_resumes_to_the_same_weights_and_losses(tiny_mnist, tmp_path, monkeypatch, where):
    straight = run_table1(CFG, tiny_mnist, tmp_path / "straight")

    # Kill the run inside the augmentation of one training iteration: the resnet's 4th (after its
    # checkpoint at iteration 2, so iteration 3 is lost and done again), or the rknet's 2nd (the resnet
    # finished and its row is in results.json).
    folder = tmp_path / "interrupted"
    run_killed_at(monkeypatch, tiny_mnist, folder, 4 if where == "first model, mid-epoch" else 6 + 2)
    assert final_state(folder, "resnet")["step"] == (2 if where == "first model, mid-epoch" else 6)

    trained = record_builds(monkeypatch)
    torch.rand(5)  # move the global generator on, as anything between the kill and the resume might
    resumed = run_table1(CFG, tiny_mnist, folder, resume=True)
    # A finished model is not trained again.
    assert trained == (["resnet", "rknet"] if where == "first model, mid-epoch" else ["rknet"])
    assert_same_run(straight, resumed, tmp_path / "straight", folder)
    stored = json.loads((folder / "results.json").read_text())["rows"]
    assert [r["model"] for r in stored] == ["ResNet", "RK-Net"]


def cli_args(root, out, *extra):
    return [
        "mnist",
        "--data-root",
        str(root),
        "--out",
        str(out),
        "--models",
        "resnet",
        "--channels",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--checkpoint-every",
        "1",
        *extra,
    ]


def test_resume_refuses_changed_settings_and_overwriting(tiny_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(cli_args(tiny_mnist, out)) == 0
    before = (out / "results.json").read_bytes()
    capsys.readouterr()

    # A setting that shapes the weights: refused with one line naming the option and both values.
    assert main(cli_args(tiny_mnist, out, "--resume", "--lr", "0.5")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--lr 0.1 (now 0.5)" in err and "Cannot resume" in err
    assert main(cli_args(tiny_mnist, out, "--resume", "--quick")) == 2
    assert "--quick (optimizer) sgd (now adam)" in capsys.readouterr().err
    # Without --resume the run is not overwritten; --resume with nothing there is refused.
    assert main(cli_args(tiny_mnist, out)) == 2
    assert "already holds an mnist run" in capsys.readouterr().err
    assert main(cli_args(tiny_mnist, tmp_path / "nothing", "--resume")) == 2
    assert "Nothing to resume" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before

    # What may change (how often to checkpoint): the finished model is kept as it was.
    assert main(cli_args(tiny_mnist, out, "--resume", "--checkpoint-every", "5")) == 0
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(before)["rows"]


def test_a_checkpoint_from_other_settings_is_refused(tiny_mnist, tmp_path):
    folder = tmp_path / "run"
    run_table1(MNISTConfig(**{**CFG.__dict__, "models": ("resnet",), "epochs": 1}), tiny_mnist, folder)
    (folder / "results.json").unlink()  # only the checkpoint records the settings now
    with pytest.raises(ResumeError, match=r"--channels 4 \(now 8\)"):
        run_table1(MNISTConfig(**{**CFG.__dict__, "channels": 8}), tiny_mnist, folder, resume=True)


def test_resume_may_change_the_models_and_keeps_the_others(tiny_mnist, tmp_path, monkeypatch):
    """`--models` is not a setting of the trained weights (as spirals' `--models`): a resumed run trains the
    models it is given, keeps the rows of the others, and leaves an interrupted model that it is not given
    to a later resume, which continues it to the weights of a run that was never interrupted."""
    straight = run_table1(CFG, tiny_mnist, tmp_path / "straight")
    folder = tmp_path / "run"
    run_killed_at(monkeypatch, tiny_mnist, folder, 6 + 4)  # the rknet's 4th iteration, after its checkpoint at 2
    interrupted = checkpoint_path(folder, "rknet").read_bytes()

    trained = record_builds(monkeypatch)
    only_resnet = run_table1(MNISTConfig(**{**CFG.__dict__, "models": ("resnet",)}), tiny_mnist, folder, resume=True)
    assert trained == [] and [r["model"] for r in only_resnet["rows"]] == ["ResNet"]
    assert checkpoint_path(folder, "rknet").read_bytes() == interrupted  # left for a later resume

    only_rknet = run_table1(MNISTConfig(**{**CFG.__dict__, "models": ("rknet",)}), tiny_mnist, folder, resume=True)
    assert trained == ["rknet"]
    assert [r["model"] for r in only_rknet["rows"]] == ["RK-Net", "ResNet"]  # the given models first
    assert without_time(only_rknet["rows"]) == without_time(straight["rows"][::-1])
    for kind in CFG.models:
        for name, p in final_state(tmp_path / "straight", kind)["model"].items():
            assert torch.equal(p, final_state(folder, kind)["model"][name]), (kind, name)
