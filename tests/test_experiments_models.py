"""The mnist, nfe and anode subcommands on tiny budgets, and the anode claim on g1d."""

import json

import torch

from hybrid_node.cli import main
from hybrid_node.experiments.anode import g1d_data, spheres_data, train_flow
from hybrid_node.experiments.mnist import (
    SavedActivationMeter,
    build_model,
    count_parameters,
    measure_training_memory,
)


def test_mnist_subcommand_tiny(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    rc = main(
        [
            "mnist",
            "--data-root",
            str(tiny_mnist),
            "--out",
            str(out),
            "--iters",
            "2",
            "--channels",
            "4",
            "--batch-size",
            "16",
            "--epochs",
            "1",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["ResNet", "RK-Net", "ODE-Net"]
    for r in rows:
        assert 0.0 <= r["test error (%)"] <= 100.0 and r["iterations"] == 2 and r["memory (MB)"] > 0
    assert rows[1]["NFE fwd (train)"] == 16  # rk4, 4 steps
    assert rows[2]["NFE fwd (train)"] > 0 and rows[2]["NFE bwd (train)"] > 0
    assert (out / "results.md").is_file() and (out / "mnist_loss.png").is_file() and (out / "mnist_nfe.png").is_file()


def test_nfe_subcommand_tiny(tiny_mnist, tmp_path):
    out = tmp_path / "nfe"
    rc = main(
        [
            "nfe",
            "--data-root",
            str(tiny_mnist),
            "--out",
            str(out),
            "--iters",
            "2",
            "--channels",
            "4",
            "--eval-batch",
            "8",
            "--tolerances",
            "1e-1,1e-4",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["tolerance"] for r in rows] == [1e-1, 1e-4]
    assert rows[1]["NFE forward"] >= rows[0]["NFE forward"] and rows[1]["NFE backward"] > 0
    assert rows[1]["max abs error"] <= rows[0]["max abs error"]
    assert (out / "nfe_figure3.png").is_file()


def test_anode_subcommand_tiny(tmp_path):
    out = tmp_path / "anode"
    assert main(["anode", "--out", str(out), "--iters", "3", "--hidden", "8"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["task"], r["model"][:5]) for r in rows] == [
        ("g1d", "NODE"),
        ("g1d", "ANODE"),
        ("spheres", "NODE"),
        ("spheres", "ANODE"),
    ]
    for name in ("anode_loss_nfe.png", "g1d_trajectories.png", "spheres_trajectories.png"):
        assert (out / name).is_file()


def test_g1d_plain_node_fails_augmented_succeeds():
    # A 1-D flow preserves order, so mapping -1 -> 1 and 1 -> -1 is impossible: the loss of a plain Neural
    # ODE stays near its lower bound 1 (both points sent to 0); with 5 augmented dimensions it is learnable.
    torch.manual_seed(0)
    plain = train_flow("g1d", 0, iters=80, lr=2e-2)
    augmented = train_flow("g1d", 5, iters=80, lr=2e-2)
    assert plain["loss"] > 0.9
    assert augmented["loss"] < 0.05


def test_toy_data_shapes():
    x, y = g1d_data()
    assert x.shape == y.shape == (2, 1)
    x, y = spheres_data(50, 150)
    r = x.norm(dim=1)
    assert x.shape == (200, 2) and (r[:50] <= 0.5).all() and ((r[50:] >= 1.0) & (r[50:] <= 1.5)).all()
    assert y[:50].eq(-1).all() and y[50:].eq(1).all()


def test_table1_models_parameter_counts_and_memory_order():
    # With 64 channels the three models have the sizes of Table 1 (0.60M ResNet, 0.22M RK-Net/ODE-Net).
    counts = {k: count_parameters(build_model(k, 64)) for k in ("resnet", "rknet", "odenet")}
    assert abs(counts["resnet"] / 1e6 - 0.60) < 0.03 and abs(counts["odenet"] / 1e6 - 0.22) < 0.02
    assert counts["rknet"] == counts["odenet"]
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    mem = {k: measure_training_memory(build_model(k, 8), x, y) for k in ("resnet", "rknet", "odenet")}
    # ODE-Net with the adjoint stores only the stem and head: less than 6 residual blocks or 16 RK stages.
    assert mem["odenet"] < mem["resnet"] < mem["rknet"]


def test_saved_activation_meter_counts_bytes():
    w = torch.randn(3, 3, requires_grad=True)
    x = torch.randn(100, 3)
    with SavedActivationMeter([w]) as meter:
        (x @ w).tanh().sum()
    # matmul saves x (1200 bytes, w excluded); tanh saves its output (100 x 3 float32 = 1200 bytes)
    assert meter.total == 2400


def test_mnist_quick_trains_odenet_without_adjoint_unless_asked():
    import argparse

    from hybrid_node.experiments.mnist import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args([])).adjoint is True  # the paper's recipe
    assert config_from_args(parser.parse_args(["--quick"])).adjoint is False
    assert config_from_args(parser.parse_args(["--quick", "--adjoint"])).adjoint is True
    assert config_from_args(parser.parse_args(["--no-adjoint"])).adjoint is False
