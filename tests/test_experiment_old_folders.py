"""Run folders written before the experiments recorded their command (in ``results.json`` and each
checkpoint): ``--resume`` of, or a new run into, another command's old folder is refused by name, as for
a folder that records its command, and an old folder of the same command still resumes.

The old folders are made by running each command with ``Checkpoints.save`` as it was before the command
was recorded (commit 79c7687^) and without the ``command`` entry of ``results.json``. A run of that
commit's code (demo, anode, cnf, sde, hnn, mnist, nfe) wrote the same file names and the same keys as these
folders, less only those two entries.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybrid_node import cli
from hybrid_node.experiments import _output
from hybrid_node.experiments._output import recorded_command, stored_commands
from hybrid_node.training.checkpoint import object_state, save_checkpoint

# Tiny settings, so that making an old folder takes a second or two and a command that did not refuse a
# folder ends in seconds (they shape what it would train, not whether the folder is refused).
TINY = {
    "demo": ["--iters", "2"],
    "anode": ["--iters", "2", "--hidden", "4", "--tasks", "g1d"],
    "cnf": ["--quick", "--iters", "2", "--hidden", "4", "--width", "2", "--n-test", "16", "--grid", "4"],
    "sde": ["--iters", "2", "--n-paths", "4"],
    "mnist": ["--models", "resnet", "--iters", "1", "--channels", "2", "--test-subset", "8", "--threads", "1"],
    "nfe": ["--iters", "1", "--channels", "2", "--eval-batch", "4", "--tolerances", "1e-1", "--threads", "1"],
    "spirals": ["--quick", "--iters", "2", "--rnn-iters", "2", "--n", "30", "--models", "rnn", "--no-plots"],
}
#: the commands whose old folders another command's --resume took for its own
OLD = ("demo", "anode", "cnf", "sde", "mnist")


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def exit_status(argv: list[str]) -> int:
    """``hybrid-node argv``'s exit status: argparse's usage errors raise SystemExit, the others return."""
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


def old_save(self, path, step, total, objects, **extra):
    """``Checkpoints.save`` before the command was recorded: the same state, without ``"command"``."""
    if path is None:
        return
    state = {name: object_state(obj) for name, obj in objects.items()}
    save_checkpoint(path, {**state, **extra, "step": step, "total": total, "settings": self.settings})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what another command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def old_runs(tmp_path_factory) -> dict[str, Path]:
    """A finished old-format run folder of each command in :data:`OLD` and of nfe."""
    runs = {}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_output.Checkpoints, "save", old_save)
        for command in (*OLD, "nfe"):
            out = tmp_path_factory.mktemp(command) / "run"
            assert exit_status([command, *TINY[command], "--no-progress", "--out", str(out)]) == 0
            results = json.loads((out / "results.json").read_text())
            del results["meta"]["command"]
            (out / "results.json").write_text(json.dumps(results, indent=2))
            runs[command] = out
    torch.set_num_threads(1)  # as the commands left it (the autouse fixture restores it per test)
    return runs


def copy_run(source: Path, out: Path, with_results: bool = True) -> Path:
    """``source``'s files in ``out`` (without ``with_results``: its checkpoints only, as a run killed
    before its results were written leaves them)."""
    for name, data in snapshot(source).items():
        if with_results or name.startswith("checkpoints"):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
    return out


@pytest.mark.parametrize("old", OLD)
def test_an_old_folder_records_no_command_and_is_known_by_its_checkpoints(old, old_runs):
    assert recorded_command(old_runs[old]) is None
    assert stored_commands(old_runs[old]) == {old}


@pytest.mark.parametrize("with_results", [True, False], ids=["finished", "checkpoints only"])
@pytest.mark.parametrize("old", OLD)
@pytest.mark.parametrize("command", ["spirals", "nfe"])
def test_resume_of_another_commands_old_folder_is_refused_by_name(
    command, old, with_results, old_runs, tmp_path, capsys
):
    # Both trained into the folder: spirals wrote its results.json over the other run's and nfe its
    # checkpoints/odenet.pt beside them (an mnist folder's own odenet.pt aside), exit status 0.
    out = copy_run(old_runs[old], tmp_path / "run", with_results)
    before = snapshot(out)
    assert exit_status([command, *TINY[command], "--no-progress", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"this folder holds {_output.a_run(old)}" in err and f"hybrid-node {old} --resume" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("old", ["anode", "sde"])
def test_a_new_run_into_another_commands_old_folder_is_refused_by_name(old, old_runs, tmp_path, capsys):
    # mnist looks for its own checkpoints only: it wrote its results.json over the old run's.
    out = copy_run(old_runs[old], tmp_path / "run")
    before = snapshot(out)
    assert exit_status(["mnist", *TINY["mnist"], "--no-progress", "--out", str(out)]) == 2
    assert f"holds {_output.a_run(old)}; a new mnist run" in capsys.readouterr().err
    assert snapshot(out) == before


def test_an_old_odenet_checkpoint_alone_is_mnist_or_nfe(old_runs, tmp_path, capsys):
    """nfe and an mnist run of the ODE-Net alone write the same checkpoint: either may continue it (its
    settings are compared then), and another command is refused naming both."""
    out = copy_run(old_runs["nfe"], tmp_path / "run", with_results=False)
    assert stored_commands(out) == {"mnist", "nfe"}
    before = snapshot(out)
    assert exit_status(["spirals", *TINY["spirals"], "--no-progress", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "this folder holds an mnist or nfe run" in err and "`hybrid-node nfe --resume" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("old", ["anode", "mnist"])
def test_an_old_folder_of_the_same_command_still_resumes(old, old_runs, tmp_path):
    out = copy_run(old_runs[old], tmp_path / "run")
    assert exit_status([old, *TINY[old], "--no-progress", "--resume", "--out", str(out)]) == 0
