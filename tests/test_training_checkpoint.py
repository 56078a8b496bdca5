"""Generator states in checkpoints: every generator that rng_state reads is restored and recognised."""

import random

import numpy as np
import pytest
import torch

from hybrid_node._errors import CheckpointError
from hybrid_node.training.checkpoint import _is_rng_state, load_checkpoint, rng_state, save_checkpoint


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_a_checkpoint_restores_every_generator(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})
    expected = draws()
    draws()  # move every generator on
    state = load_checkpoint(path)
    assert draws() == expected
    assert _is_rng_state(state["rng"]) and _is_rng_state(rng_state())
    # A loaded checkpoint can be saved again as it is: its "rng" is recognised as generator states.
    save_checkpoint(path, state)
    assert not _is_rng_state({**rng_state(), "extra": 0}) and not _is_rng_state({"torch": 0})


class FakeCuda:
    """Stands for ``torch.cuda`` with ``n`` initialised devices: each device's generator is a CPU
    ``torch.Generator``, read and set through the four functions checkpoint.py calls."""

    def __init__(self, monkeypatch, n: int, seed: int = 0):
        self.devices = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.devices))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [g.get_state() for g in self.devices])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set_all)

    def set_all(self, states) -> None:
        for g, s in zip(self.devices, states, strict=False):  # as torch's: device i gets states[i]
            g.set_state(s)
        # torch's would fail (or queue a failing call) for a state beyond the last device
        assert len(list(states)) <= len(self.devices)

    def draws(self) -> list[list[float]]:
        return [torch.rand(3, generator=g).tolist() for g in self.devices]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the real torch.cuda of a machine without CUDA")
def test_without_cuda_no_cuda_state_is_saved_and_a_stored_one_is_left_unused(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})
    assert set(load_checkpoint(path, restore_rng=False)["rng"]) == {"torch", "numpy", "python"}
    # A checkpoint saved where CUDA was in use, resumed on this machine: the other generators are restored.
    with monkeypatch.context() as m:
        FakeCuda(m, 2)
        save_checkpoint(path, {"step": 1})
    assert len(load_checkpoint(path, restore_rng=False)["rng"]["cuda"]) == 2
    expected = draws()
    draws()
    load_checkpoint(path)
    assert draws() == expected


def test_the_cuda_generators_are_saved_and_restored(tmp_path, monkeypatch):
    cuda = FakeCuda(monkeypatch, 2)
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})
    expected, expected_cpu = cuda.draws(), draws()
    cuda.draws()
    state = load_checkpoint(path)
    assert cuda.draws() == expected and draws() == expected_cpu
    assert _is_rng_state(state["rng"]) and len(state["rng"]["cuda"]) == 2
    save_checkpoint(path, state)  # a loaded checkpoint's "rng" with CUDA states is generator states too


@pytest.mark.parametrize("devices", [1, 3])
def test_cuda_states_go_to_the_devices_both_machines_have(tmp_path, monkeypatch, devices):
    """Saved with 2 devices, loaded with 1 (the second state is dropped) or 3 (the third device keeps its own)."""
    path = tmp_path / "ck.pt"
    with monkeypatch.context() as m:
        saved = FakeCuda(m, 2)
        save_checkpoint(path, {"step": 1})
        expected = saved.draws()
    cuda = FakeCuda(monkeypatch, devices, seed=10)
    # what the devices beyond the saved ones draw from their own states (seeded 10 + index)
    own = [torch.rand(3, generator=torch.Generator().manual_seed(10 + i)).tolist() for i in range(2, devices)]
    load_checkpoint(path)
    assert cuda.draws() == expected[:devices] + own


def test_a_checkpoint_without_cuda_states_leaves_the_cuda_generators(tmp_path, monkeypatch):
    """Checkpoints of older versions (and of runs that never initialised CUDA) hold none: still loaded."""
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})  # on this machine: no CUDA states unless CUDA is in use
    state = load_checkpoint(path, restore_rng=False)
    state["rng"].pop("cuda", None)
    save_checkpoint(path, state, include_rng=False)
    cuda = FakeCuda(monkeypatch, 2)
    before = [g.get_state() for g in cuda.devices]
    load_checkpoint(path)
    assert all(torch.equal(g.get_state(), b) for g, b in zip(cuda.devices, before))


def test_damaged_cuda_states_are_reported_as_a_damaged_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})
    state = load_checkpoint(path, restore_rng=False)
    state["rng"]["cuda"] = 5
    assert not _is_rng_state(state["rng"])
    save_checkpoint(path, state, include_rng=False)
    with pytest.raises(CheckpointError, match="generator states are invalid"):
        load_checkpoint(path)
