"""A checkpoint or results file that exists but cannot be opened is not called damaged, nor to be deleted."""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path

import pytest
import torch

from hybrid_node._errors import CheckpointError
from hybrid_node.training.atomic import atomic_write_json, read_json
from hybrid_node.training.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def forbid(monkeypatch):
    """``forbid(path)`` takes the read permission of ``path`` away (root ignores modes: refuse its open)."""
    taken: list[Path] = []

    def take_away(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0)
            taken.append(path)
            return
        real = io.open

        def refusing(file, *args, **kwargs):
            if os.fspath(file) == os.fspath(path):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing)
        monkeypatch.setattr(io, "open", refusing)

    yield take_away
    for path in taken:
        path.chmod(0o600)


def test_an_unreadable_checkpoint_is_left_alone(tmp_path, forbid):
    # Was: "... cannot be loaded: PermissionError ... It is damaged ... Delete it to train that model
    # again from the start" for an intact checkpoint (measured with chmod 000 as another user).
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"weight": torch.ones(3), "step": 7})
    forbid(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "cannot be opened (PermissionError" in message and str(path) in message and "permission" in message
    assert "damaged" not in message and "Delete" not in message and path.exists()


def test_an_unreadable_results_file_is_left_alone(tmp_path, forbid):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"rows": []})
    forbid(path)
    with pytest.raises(CheckpointError) as info:
        read_json(path, "results file", "Delete it and resume again.")
    message = str(info.value)
    assert "results file" in message and "cannot be opened (PermissionError" in message
    assert "damaged" not in message and "Delete" not in message


def test_a_readable_checkpoint_still_loads_and_a_damaged_one_is_still_damaged(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"weight": torch.ones(3), "step": 7})
    assert load_checkpoint(path)["step"] == 7
    path.write_bytes(path.read_bytes()[:100])  # cut short
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_a_missing_file_is_said_to_be_missing(tmp_path, kind):
    """A missing results file was reported as one to give read permission to (load_checkpoint returns None
    for a missing checkpoint and calls a folder damaged before it opens anything)."""
    path = tmp_path / "results.json"
    if kind == "folder":
        path.mkdir()
    found = "does not exist" if kind == "missing" else "is a folder"
    with pytest.raises(CheckpointError, match=found) as caught:
        read_json(path)
    assert "permission" not in str(caught.value)
