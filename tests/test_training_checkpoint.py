"""Generator states in checkpoints: every generator that rng_state reads is restored and recognised."""

import random

import numpy as np
import torch

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
