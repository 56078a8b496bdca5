"""The hnn subcommand on a tiny budget, and its data generator."""

from __future__ import annotations

import json

import pytest
import torch

from hybrid_node.cli import main
from hybrid_node.experiments.hnn import SYSTEMS, make_data


def test_data_derivatives_are_the_true_field_and_energies_in_range():
    system = SYSTEMS["pendulum"]
    data = make_data(system, n_traj=6, noise=0.0, seed=0)
    x, dx = data["x_train"], data["dx_train"]
    torch.testing.assert_close(dx[:, 0], x[:, 1])
    torch.testing.assert_close(dx[:, 1], -6.0 * torch.sin(x[:, 0]), rtol=1e-5, atol=1e-5)
    radius = data["y0_test"].norm(dim=1)
    assert bool(((radius >= 1.3) & (radius <= 2.6)).all())


@pytest.mark.slow  # ~30 s on a busy 2-core machine (plots, four trainings, rollouts)
def test_hnn_subcommand_tiny(tmp_path, one_thread):
    out = tmp_path / "hnn"
    argv = ["hnn", "--out", str(out), "--iters", "3", "--hidden", "8", "--trajectories", "4"]
    argv += ["--rollout-factor", "2", "--step-size", "0.1", "--no-progress"]
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["task"], r["model"]) for r in rows] == [
        ("spring", "baseline"),
        ("spring", "hnn"),
        ("pendulum", "baseline"),
        ("pendulum", "hnn"),
    ]
    assert all(r["paper energy MSE"] > 0 and r["test loss"] >= 0 for r in rows)
    for name in ("spring_trajectories.png", "spring_energy.png", "pendulum_energy.png", "results.md"):
        assert (out / name).exists()
