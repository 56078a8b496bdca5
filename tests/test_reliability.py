"""Issue 19: bad input and interrupted runs are answered with clear errors, and nothing is lost.

Damaged checkpoints and results files, resuming nothing or with other settings, temporary files of killed
writes, shape errors at the model boundary, an invalid HYBRID_NODE_BACKEND in ``doctor``, and a fault test
that kills the CLI with SIGKILL during its writes and checks that resuming gives the uninterrupted result.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybrid_node._errors import CheckpointError, HybridNodeError
from hybrid_node.cli import main
from hybrid_node.commands import doctor
from hybrid_node.experiments._output import write_results
from hybrid_node.irregular import IrregularBatch
from hybrid_node.nn import ODEBlock
from hybrid_node.nn.cnf import CNF
from hybrid_node.nn.cnf_fields import PlanarCNFField, TimeMLPField
from hybrid_node.nn.latent_ode import LatentODE
from hybrid_node.nn.layers import MLPDynamics, TimeLinear
from hybrid_node.training.atomic import atomic_write_json, read_json, stale_temp_files
from hybrid_node.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]

# A spirals run of a few seconds: one RNN, n = 10, four steps, a checkpoint after each.
TINY = [
    "spirals",
    "--models",
    "rnn",
    "--n",
    "10",
    "--iters",
    "0",
    "--rnn-iters",
    "4",
    "--nspiral",
    "8",
    "--ntest",
    "6",
    "--nval",
    "4",
    "--val-every",
    "2",
    "--batch-size",
    "4",
    "--restarts",
    "1",
    "--checkpoint-every",
    "1",
    "--refine-steps",
    "0",
    "--threads",
    "1",
    "--no-plots",
]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- 7: damaged checkpoints ------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not_a_dict"])
def test_damaged_checkpoint_raises_one_clear_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(200)}, "step": 3})
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x80\x02garbage bytes, not a checkpoint" * 3)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="cannot be loaded") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "Delete it" in message and "earlier copy" in message
    assert info.value.path == path and isinstance(info.value, HybridNodeError)


def test_cli_resume_from_a_truncated_checkpoint_names_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    ckpt = out / "checkpoints" / "rnn-n10.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    capsys.readouterr()
    assert main(TINY + ["--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "Delete it" in err and "Traceback" not in err


# -- 8: results.json written atomically, a damaged one named ------------------------------------------
def test_damaged_results_file_gives_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    results = out / "results.json"
    results.write_text(results.read_text()[:40])
    capsys.readouterr()
    assert main(TINY + ["--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(results) in err and "JSONDecodeError" in err and "Delete it and resume again" in err
    # The fix the message gives works: the finished model is scored again from its checkpoint.
    results.unlink()
    assert main(TINY + ["--out", str(out), "--resume"]) == 0
    assert json.loads(results.read_text())["rmse"]["rnn/n=10"]["iterations"] == 4


def test_atomic_writes_keep_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"a": 1})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": Unserialisable()})
    assert read_json(path) == {"a": 1} and os.listdir(tmp_path) == ["results.json"]

    def fail(*args, **kwargs):
        raise OSError("disk full")

    write_results(tmp_path, "table", [{"x": 1.0}], ["x"])
    before = (tmp_path / "table.json").read_text()
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_results(tmp_path, "table", [{"x": 2.0}], ["x"])
    monkeypatch.undo()
    assert (tmp_path / "table.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["results.json", "table.json", "table.md"]


def test_read_json_names_a_damaged_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"a": ')
    with pytest.raises(CheckpointError, match="r.json") as info:
        read_json(path, "results file", "Delete it.")
    assert "results file" in str(info.value) and str(info.value).endswith("Delete it.")


# -- 9: nothing to resume ----------------------------------------------------------------------------
def test_resume_into_a_missing_or_empty_folder_is_refused(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(TINY + ["--out", str(missing), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Nothing to resume" in err and str(missing) in err and "drop --resume" in err
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(TINY + ["--out", str(empty), "--resume"]) == 2
    assert "Nothing to resume" in capsys.readouterr().err


def test_a_new_run_does_not_overwrite_an_old_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    before = (out / "checkpoints" / "rnn-n10.pt").read_bytes()
    capsys.readouterr()
    assert main(TINY + ["--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "checkpoints" / "rnn-n10.pt").read_bytes() == before


# -- 10: resuming with other settings ----------------------------------------------------------------
def test_resume_with_other_settings_names_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    capsys.readouterr()
    assert main(TINY + ["--out", str(out), "--resume", "--cell", "rnn", "--lr", "0.02"]) == 2
    err = capsys.readouterr().err
    assert "--cell gru (now rnn)" in err and "--lr 0.01 (now 0.02)" in err and "Unexpected key" not in err
    # The check is in the checkpoint too (results.json gone): the same message, naming the checkpoint.
    (out / "results.json").unlink()
    assert main(TINY + ["--out", str(out), "--resume", "--cell", "rnn"]) == 2
    err = capsys.readouterr().err
    assert "rnn-n10.pt" in err and "--cell gru (now rnn)" in err
    # A larger budget is a legitimate resume.
    more = list(TINY)
    more[more.index("--rnn-iters") + 1] = "6"
    assert main(more + ["--out", str(out), "--resume"]) == 0


def test_checkpoint_without_settings_that_does_not_fit_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    ckpt = out / "checkpoints" / "rnn-n10.pt"
    state = torch.load(ckpt, weights_only=False)
    del state["settings"]  # as written by older versions
    torch.save(state, ckpt)
    (out / "results.json").unlink()
    capsys.readouterr()
    assert main(TINY + ["--out", str(out), "--resume", "--cell", "rnn"]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "does not fit" in err and "--cell" in err


# -- 11: temporary files of killed writes -------------------------------------------------------------
def test_stale_temp_files_are_removed_on_the_next_save_and_load(tmp_path):
    path = tmp_path / "ck.pt"
    dead = tmp_path / f"ck.pt.{_dead_pid()}-0a1b2c3d.tmp"
    old_style = tmp_path / "ck.pt.k2j3h4_x.tmp"  # mkstemp's names, from older versions
    alive = tmp_path / f"ck.pt.{os.getppid()}-0a1b2c3d.tmp"  # a running writer's: kept
    other = tmp_path / "other.pt.123-0a1b2c3d.tmp"  # another file's: not ours to judge here
    for f in (dead, old_style, alive, other):
        f.write_bytes(b"partial")
    assert sorted(stale_temp_files(path)) == sorted([dead, old_style])
    save_checkpoint(path, {"step": 1})
    assert sorted(os.listdir(tmp_path)) == sorted(["ck.pt", alive.name, other.name])
    dead.write_bytes(b"partial")
    assert load_checkpoint(path, restore_rng=False)["step"] == 1
    assert not dead.exists()


def test_save_checkpoint_refuses_a_state_key_it_would_overwrite(tmp_path):
    path = tmp_path / "ck.pt"
    with pytest.raises(ValueError, match='key "rng".*include_rng=False'):
        save_checkpoint(path, {"rng": 7, "step": 1})
    assert not path.exists()
    save_checkpoint(path, {"rng": 7, "step": 1}, include_rng=False)  # nothing to overwrite
    assert load_checkpoint(path, restore_rng=False)["rng"] == 7
    loaded = load_checkpoint(path, restore_rng=False)
    save_checkpoint(path, {"step": 2})
    again = load_checkpoint(path, restore_rng=False)
    save_checkpoint(path, again)  # a loaded checkpoint saved again: its generator states are replaced
    assert load_checkpoint(path, restore_rng=False)["step"] == 2 and loaded["step"] == 1


# -- 12: shapes checked at the model boundary ----------------------------------------------------------
def test_latent_ode_names_the_expected_and_given_channels():
    model = LatentODE(obs_dim=2)
    batch = IrregularBatch(
        times=torch.linspace(0, 1, 5).expand(3, 5), values=torch.zeros(3, 5, 3), mask=torch.ones(3, 5, 3)
    )
    with pytest.raises(ValueError, match=r"obs_dim=2 channels, but batch has 3 .*\(3, 5, 3\)"):
        model(batch)
    with pytest.raises(ValueError, match="obs_dim=2"):
        model.predict(batch, torch.linspace(1, 2, 4))


@pytest.mark.parametrize("field", [TimeMLPField(2), PlanarCNFField(2, 4)])
def test_cnf_rejects_a_field_of_another_dimension_at_construction(field):
    with pytest.raises(ValueError, match=r"2-d vector field but the CNF has dim=3"):
        CNF(field, dim=3)


def test_ode_block_reports_the_state_shape_without_the_time_column():
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\), got x of shape \(4, 3\)"):
        ODEBlock(MLPDynamics(2))(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"TimeLinear expects x of shape \(\.\.\., 2\).*got \(4, 3\)"):
        ODEBlock(TimeLinear(2, 2))(torch.zeros(4, 3))


# -- 15: doctor and an invalid HYBRID_NODE_BACKEND ----------------------------------------------------
def test_doctor_fails_on_an_invalid_backend_variable(monkeypatch, capsys):
    monkeypatch.setenv("HYBRID_NODE_BACKEND", "jullia")
    assert doctor.run(argparse.Namespace(start=False, timeout=1.0)) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "'jullia'" in out and "unset HYBRID_NODE_BACKEND" in out
    monkeypatch.setenv("HYBRID_NODE_BACKEND", "torch")
    assert doctor.run(argparse.Namespace(start=False, timeout=1.0)) == 0
    assert "default: torch" in capsys.readouterr().out


# -- fault test: SIGKILL during writes, then resume ----------------------------------------------------
# The child kills itself with SIGKILL at its KILL_AT-th file replacement, after cutting the complete
# temporary file in half: what a kill in the middle of writing it leaves behind.
_CHILD = """
import os, signal, sys
kill_at = int(os.environ.get("KILL_AT", "0"))
calls = [0]
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if str(src).endswith(".tmp"):
        calls[0] += 1
        if calls[0] == kill_at:
            size = os.path.getsize(src)
            with open(src, "r+b") as f:
                f.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
from hybrid_node.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_child(args: list[str], kill_at: int = 0) -> int:
    env = dict(os.environ, KILL_AT=str(kill_at), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode in (0, 2, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode


def _scores(out: Path) -> dict:
    rmse = json.loads((out / "results.json").read_text())["rmse"]
    return {k: {f: v for f, v in entry.items() if f != "seconds"} for k, entry in rmse.items()}


@pytest.mark.slow
def test_killed_writes_then_resume_give_the_uninterrupted_result(tmp_path):
    args = [a for a in TINY if a != "--no-plots"]  # plots too: every kind of file the run writes
    straight = tmp_path / "straight"
    assert _run_child(args + ["--out", str(straight)]) == 0
    interrupted = tmp_path / "interrupted"
    run = args + ["--out", str(interrupted)]
    # Each run's writes, in order: results.json, one checkpoint per step still to do (4 in all),
    # results.json, table2.md, the plot. The kill comes in the KILL_AT-th write of that run.
    # Killed in its first write: only a temporary file, nothing to resume, so a new run starts.
    assert _run_child(run, kill_at=1) == -signal.SIGKILL
    assert list(interrupted.glob("*.tmp")) and not (interrupted / "results.json").exists()
    assert _run_child(run + ["--resume"]) != 0  # refused: nothing to resume
    assert _run_child(run, kill_at=3) == -signal.SIGKILL  # in checkpoint 2 (checkpoint 1 is kept)
    assert list((interrupted / "checkpoints").glob("*.tmp"))
    assert _run_child(run + ["--resume"], kill_at=4) == -signal.SIGKILL  # in checkpoint 4
    assert torch.load(interrupted / "checkpoints" / "rnn-n10.pt", weights_only=False)["step"] == 3
    assert _run_child(run + ["--resume"], kill_at=3) == -signal.SIGKILL  # in the final results.json
    assert _run_child(run + ["--resume"], kill_at=4) == -signal.SIGKILL  # in the plot
    assert _run_child(run + ["--resume"]) == 0
    assert _scores(interrupted) == _scores(straight)
    assert not list(interrupted.rglob("*.tmp")), "temporary files of the killed writes remain"
    assert (interrupted / "spirals_n10.png").stat().st_size > 0
