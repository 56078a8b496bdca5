"""`--resume` of the training experiments (anode, cnf, demo, hnn, nfe, sde): an interrupted run continues to
the same weights, histories and results as one that was never interrupted, keeps its finished models, and
refuses changed settings. (mnist and spirals: test_mnist_resume.py and test_reliability.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybrid_node.cli import main
from hybrid_node.training.checkpoint import load_checkpoint


class Interrupted(Exception):
    """Stands for a kill: raised from inside a training step, nothing after it runs."""


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def adam_steps(monkeypatch):
    """Counts the Adam steps of every experiment (all of them train with Adam); ``stop_at`` interrupts one."""
    calls = {"n": 0, "stop_at": None, "error": Interrupted}
    step = torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise calls["error"]
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    return calls


# Each case: the command line (every model trains a few iterations, checkpointed every 2), the Adam step at
# which the run is interrupted, the steps a resumed run still takes (all steps less those in the finished
# models and in the interrupted one's last checkpoint), a changed setting and the refusal it gets.
CASES = {
    # 4 models of 5 steps; the 8th step is the second model's 3rd: the first is finished, the second saved at 2.
    "anode": (["anode", "--iters", "5", "--hidden", "4"], 8, 20 - 5 - 2, ["--lr", "0.5"], "--lr 0.001 (now 0.5)"),
    # CNF, CNF + RNODE and planar NF, 5 steps each; the Hutchinson trace draws its noise from the global
    # generator, the batches come from a numpy generator: both are restored.
    "cnf": (
        ["cnf", "--quick", "--iters", "5", "--hidden", "4,4", "--width", "2", "--n-test", "32", "--grid", "8"]
        + ["--batch-size", "16", "--compare-nf", "--regularize", "--trace", "hutchinson"],
        8,
        15 - 5 - 2,
        ["--lr", "0.5"],
        "--lr (--quick) 0.005 (now 0.5)",
    ),
    # Cosine cycles of 3 steps, restarted while the target (0: never met) is missed: the 4th step opens the
    # second cycle (resumed from the checkpoint at the end of the first, with a fresh schedule).
    "demo cycle start": (
        ["demo", "--iters", "3", "--target-mae", "0", "--no-progress"],
        4,
        9 - 3,
        ["--lr", "0.5"],
        "--lr 0.01 (now 0.5)",
    ),
    # The 6th step is the second cycle's last: resumed from step 4, mid-cycle (the schedule's state restored).
    "demo mid-cycle": (
        ["demo", "--iters", "3", "--target-mae", "0", "--no-progress"],
        6,
        9 - 4,
        ["--seed", "1"],
        "--seed 0 (now 1)",
    ),
    "hnn": (
        ["hnn", "--tasks", "spring", "--iters", "5", "--hidden", "4", "--trajectories", "4"]
        + ["--rollout-factor", "1", "--step-size", "0.1", "--no-progress"],
        8,
        10 - 5 - 2,
        ["--noise", "0.2"],
        "--noise 0.1 (now 0.2)",
    ),
    # The latent SDE draws its posterior noise from the global generator: restored with the checkpoint.
    "sde": (
        ["sde", "--iters", "5", "--n-paths", "8", "--no-progress"],
        4,
        5 - 2,
        ["--dt", "0.05"],
        "--dt 0.04 (now 0.05)",
    ),
    # The ODE-Net's training (mnist's loop); the tolerance sweep after it is measured again.
    "nfe": (
        ["nfe", "--iters", "3", "--channels", "4", "--eval-batch", "8", "--tolerances", "1e-1", "--threads", "1"],
        3,
        3 - 2,
        ["--channels", "8"],
        "--channels 4 (now 8)",
    ),
}
#: result columns and history entries that are wall-clock times, which no two runs share
TIMES = {"time (s)", "train s", "ms/iter", "train_seconds", "forward time (ms)", "seconds"}


def rows(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMES} for r in json.loads((out / "results.json").read_text())["rows"]
    ]


def checkpoints(out: Path) -> dict[str, dict]:
    return {p.name: load_checkpoint(p, restore_rng=False) for p in sorted((out / "checkpoints").glob("*.pt"))}


def assert_same_training(a: Path, b: Path) -> None:
    """Bit-identical: every weight and every recorded loss of every model's final checkpoint, and the results."""
    ca, cb = checkpoints(a), checkpoints(b)
    assert list(ca) == list(cb) and ca
    for name, sa in ca.items():
        sb = cb[name]
        assert sa["step"] == sa["total"] == sb["step"] == sb["total"], name
        for key, p in sa["model"].items():
            assert torch.equal(p, sb["model"][key]), (name, key)
        ha, hb = sa["history"], sb["history"]
        if isinstance(ha, dict):
            ha, hb = ({k: v for k, v in h.items() if k not in TIMES} for h in (ha, hb))
        assert ha == hb, name
    assert rows(a) == rows(b)


@pytest.mark.parametrize("case", list(CASES))
def test_an_interrupted_run_resumes_to_the_same_result(case, tmp_path, tiny_mnist, adam_steps, capsys):
    argv, stop_at, remaining, changed, refusal = CASES[case]
    base = argv + (["--data-root", str(tiny_mnist)] if argv[0] == "nfe" else [])
    argv = base + ["--checkpoint-every", "2"]
    straight, out = tmp_path / "straight", tmp_path / "interrupted"
    assert main(argv + ["--out", str(straight)]) == 0
    total = adam_steps["n"]

    adam_steps.update(n=0, stop_at=stop_at)
    with pytest.raises(Interrupted):
        main(argv + ["--out", str(out)])
    assert not (out / "results.json").exists()
    adam_steps.update(n=0, stop_at=None)
    torch.rand(5)  # move the global generator on, as anything between the kill and the resume might
    assert main(argv + ["--out", str(out), "--resume"]) == 0
    # Finished models are not trained again; the interrupted one continues from its last checkpoint.
    assert adam_steps["n"] == remaining < total
    assert_same_training(straight, out)
    capsys.readouterr()

    # A setting that shapes the weights is refused, with one line naming it, before anything is trained.
    assert main(argv + ["--out", str(out), "--resume", *changed]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Cannot resume" in err and refusal in err, err
    # Without --resume the run is not overwritten; --resume with nothing there is refused.
    assert main(argv + ["--out", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "Nothing to resume" in capsys.readouterr().err
    # What may change (how often to checkpoint): a finished run is evaluated again, nothing is trained.
    assert main(base + ["--checkpoint-every", "3", "--out", str(out), "--resume"]) == 0
    assert adam_steps["n"] == remaining
    assert rows(out) == rows(straight)


@pytest.mark.parametrize("case", ["anode", "demo mid-cycle", "hnn", "sde"])
def test_a_ctrl_c_mid_epoch_keeps_the_last_checkpoint_and_resumes_exactly(case, tmp_path, adam_steps, capsys):
    """Ctrl-C (a KeyboardInterrupt, which ``except Exception`` does not see) inside a training step: the command
    ends with status 130, the checkpoint on disk is the last one written before the interrupt, untouched, and
    ``--resume`` continues from it to the bits of an uninterrupted run."""
    argv, stop_at, remaining, _, _ = CASES[case]
    argv = argv + ["--checkpoint-every", "2"]
    straight, out = tmp_path / "straight", tmp_path / "interrupted"
    assert main(argv + ["--out", str(straight)]) == 0

    # the same run stopped one step earlier, normally, by the test's own exception: the checkpoints it left
    adam_steps.update(n=0, stop_at=stop_at, error=Interrupted)
    with pytest.raises(Interrupted):
        main(argv + ["--out", str(tmp_path / "killed")])
    kept = list(checkpoints(tmp_path / "killed"))

    adam_steps.update(n=0, stop_at=stop_at, error=KeyboardInterrupt)
    assert main(argv + ["--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert not (out / "results.json").exists()
    # nothing written on the way out of the interrupt: the same files, each holding the same state
    assert list(checkpoints(out)) == kept
    for name in kept:
        a = load_checkpoint(out / "checkpoints" / name, restore_rng=False)
        b = load_checkpoint(tmp_path / "killed" / "checkpoints" / name, restore_rng=False)
        assert a["step"] == b["step"], name
        assert all(torch.equal(p, b["model"][k]) for k, p in a["model"].items()), name
    assert not list(out.rglob("*.tmp"))  # no temporary of an interrupted write left behind

    adam_steps.update(n=0, stop_at=None, error=Interrupted)
    assert main(argv + ["--out", str(out), "--resume"]) == 0
    assert adam_steps["n"] == remaining
    assert_same_training(straight, out)


@pytest.mark.parametrize("command", ["anode", "cnf", "demo", "hnn", "nfe", "sde", "mnist", "spirals"])
def test_every_training_experiment_takes_resume_and_checkpoint_every(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--resume" in text and "--checkpoint-every" in text


def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, capsys):
    argv = ["demo", "--iters", "2", "--max-cycles", "1", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "demo.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # cut short, as by a disk problem
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(ckpt) in err and "damaged" in err
    assert ".." not in err  # torch's reason ends with a full stop of its own
