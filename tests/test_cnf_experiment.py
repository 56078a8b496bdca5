"""The ``hybrid-node cnf`` experiment on a tiny budget: every output is written and sensible."""

import json
import math

import pytest
import torch

from hybrid_node.cli import main


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_cnf_experiment_tiny_budget(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "cnf",
            "--data",
            "two_moons",
            "--iters",
            "2",
            "--quick",
            "--hidden",
            "8,8",
            "--width",
            "4",
            "--n-test",
            "64",
            "--grid",
            "12",
            "--batch-size",
            "32",
            "--compare-nf",
            "--regularize",
            "--trace",
            "hutchinson",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for name in ("results.md", "results.json", "density.png", "samples.png", "flow_evolution.png", "training.png"):
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["CNF (MLP)", "CNF (MLP) + RNODE", "planar NF, K=4"]
    for r in rows:
        assert math.isfinite(r["test NLL"]) and r["test NLL"] > 0
    assert rows[0]["test NFE"] >= 6 and rows[1]["kinetic"] >= 0
    assert "test NLL" in capsys.readouterr().out


def test_cnf_experiment_planar_model_and_bad_flags(tmp_path, capsys):
    assert (
        main(
            [
                "cnf",
                "--data",
                "two_circles",
                "--model",
                "planar",
                "--iters",
                "1",
                "--quick",
                "--width",
                "3",
                "--n-test",
                "32",
                "--grid",
                "8",
                "--batch-size",
                "16",
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    assert main(["cnf", "--iters", "1", "--hidden", "a,b", "--out", str(tmp_path / "q")]) == 2
    assert "comma-separated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cnf", "--data", "moons"])
