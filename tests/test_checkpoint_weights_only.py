"""Checkpoints are read safely: ``torch.load(..., weights_only=True)``, which never runs code a file names.

torch >= 2.6 loads with ``weights_only=True`` by default. A checkpoint written by ``save_checkpoint``
held numpy's generator state as an array, which that load refuses, so ``torch.load(path)`` failed on
our own files, and ``load_checkpoint`` read every file with ``weights_only=False``: a checkpoint from
elsewhere could run any function while being loaded.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from hybrid_node._errors import CheckpointError
from hybrid_node.training.checkpoint import load_checkpoint, object_state, restore_object_state, save_checkpoint

#: set by _Payload's reducer when a load runs the code a pickle names
CALLS: list[str] = []


def _record(what: str) -> str:
    CALLS.append(what)
    return what


class _Payload:
    """An object whose unpickling calls a function of the file's choosing (here a harmless recorder)."""

    def __reduce__(self):
        return _record, ("code ran",)


def _training_state() -> dict:
    """What a training loop stores: a model, optimizer and schedule, generators, history and settings."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    schedule = torch.optim.lr_scheduler.StepLR(opt, 2)
    return {
        "model": object_state(model),
        "opt": object_state(opt),
        "schedule": object_state(schedule),
        "torch_gen": object_state(torch.Generator().manual_seed(1)),
        "pcg": object_state(np.random.default_rng(2)),
        "mt": object_state(np.random.Generator(np.random.MT19937(3))),  # its state holds an array key
        "history": [1.5, 1.25],
        "step": 7,
        "settings": {"lr": 1e-2, "sizes": (3, 2), "method": "dopri5", "resume": None},
    }


def test_a_checkpoint_loads_with_torchs_default_weights_only_load(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, _training_state())
    payload = torch.load(path, weights_only=True)  # torch >= 2.6's default
    assert payload["step"] == 7 and set(payload["rng"]) >= {"torch", "numpy", "python"}


def test_the_stored_generator_states_restore_the_same_draws(tmp_path):
    """The numpy states, stored as lists, give back the draws of the states they were read from."""
    path = tmp_path / "ck.pt"
    mt = np.random.Generator(np.random.MT19937(3))
    save_checkpoint(path, {"mt": object_state(mt)})
    expected = (np.random.rand(4).tolist(), random.random(), torch.rand(2).tolist(), mt.random(3).tolist())
    np.random.rand(9), random.random(), torch.rand(5), mt.random(5)  # move every generator on
    state = load_checkpoint(path)
    restore_object_state(mt, state["mt"])
    assert (np.random.rand(4).tolist(), random.random(), torch.rand(2).tolist(), mt.random(3).tolist()) == expected


def test_a_checkpoint_of_an_earlier_version_with_numpy_arrays_still_loads(tmp_path):
    """Earlier versions stored ``np.random.get_state()`` as it is (an array key): still read safely."""
    path = tmp_path / "old.pt"
    state = np.random.get_state()
    expected = np.random.rand(5).tolist()
    rng = {"torch": torch.get_rng_state(), "numpy": state, "python": random.getstate()}
    torch.save({"step": 1, "rng": rng}, path)
    np.random.rand(3)
    assert load_checkpoint(path)["step"] == 1
    assert np.random.rand(5).tolist() == expected


def test_a_checkpoint_that_names_code_to_run_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1, "extra": _Payload()})
    CALLS.clear()
    with pytest.raises(CheckpointError, match=r"_record.*weights_only=False") as info:
        load_checkpoint(path)
    assert CALLS == []  # refused before anything ran
    assert info.value.path == path and "damaged" not in str(info.value)  # not mistaken for a damaged file
    assert load_checkpoint(path, weights_only=False)["extra"] == "code ran" and CALLS == ["code ran"]


def test_a_damaged_checkpoint_is_still_reported_as_damaged(tmp_path):
    """The weights-only load's own errors are told apart from a file that is cut short."""
    path = tmp_path / "ck.pt"
    save_checkpoint(path, _training_state())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)
