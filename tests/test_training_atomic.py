"""Atomic writes remove only the temporary files of their own interrupted writes."""

from __future__ import annotations

import os
import subprocess
import sys

from hybrid_node.training.atomic import atomic_write_json, stale_temp_files
from hybrid_node.training.checkpoint import load_checkpoint, save_checkpoint


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_files_a_user_named_like_temporaries_are_kept(tmp_path):
    # Were deleted by the next write of results.json / ck.pt: the pattern took any ".<word>.tmp".
    path = tmp_path / "results.json"
    keep = [tmp_path / f"results.json.{word}.tmp" for word in ("backup", "old", "v2", "Draft_1")]
    keep.append(tmp_path / f"results.json.{_dead_pid()}-notes.tmp")
    stale = [tmp_path / f"results.json.{_dead_pid()}-0a1b2c3d.tmp", tmp_path / "results.json.dh51l9vr.tmp"]
    for f in keep + stale:
        f.write_text("mine")
    assert sorted(stale_temp_files(path)) == sorted(stale)
    atomic_write_json(path, {"a": 1})
    assert sorted(os.listdir(tmp_path)) == sorted(["results.json", *(f.name for f in keep)])


def test_a_write_killed_mid_way_leaves_the_old_checkpoint_and_its_temporary_is_removed(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})
    child = (
        "import os, sys, torch\n"
        "from hybrid_node.training import checkpoint\n"
        "def killed(obj, f):\n"
        "    f.write(b'partial')\n"
        "    f.flush()\n"
        "    os._exit(9)  # dies before the rename, as a SIGKILL would\n"
        "checkpoint.torch.save = killed\n"
        "checkpoint.save_checkpoint(sys.argv[1], {'step': 2})\n"
    )
    assert subprocess.run([sys.executable, "-c", child, str(path)], timeout=120).returncode == 9
    assert len(stale_temp_files(path)) == 1
    assert load_checkpoint(path, restore_rng=False)["step"] == 1
    assert os.listdir(tmp_path) == ["ck.pt"]
