"""The ``hybrid-node cnf`` experiment on a tiny budget: every output is written and sensible."""

import json
import math
import re

import pytest
import torch

from hybrid_node.cli import main
from hybrid_node.experiments.cnf import CNFExperimentConfig, checkpoints


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


TINY = ["--iters", "1", "--quick", "--hidden", "4", "--n-test", "16", "--grid", "4", "--batch-size", "8"]


def test_cnf_experiment_fixed_step_method_takes_step_size(tmp_path, capsys):
    # CNFSolver refuses a fixed-step method without a step size, so '--method rk4' used to stop with a
    # traceback; --step-size is the step in each block's solver time s in [0, 1].
    out = tmp_path / "rk4"
    assert main(["cnf", "--method", "rk4", "--step-size", "0.25", *TINY, "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["meta"]["method"] == "rk4" and result["meta"]["step_size"] == 0.25
    # 1 / 0.25 = 4 steps of rk4's 4 stages over the block: 16 evaluations (one step would be 4)
    assert result["rows"][0]["test NFE"] == 16
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "rk4"], r"--method rk4 takes fixed steps: give --step-size"),
        (["--step-size", "0.1"], r"--step-size is for fixed-step methods .*; --method dopri5 chooses its own steps"),
        (["--method", "euler", "--step-size", "1.5"], r"step_size must be in \(0, 1\]"),
        (["--method", "leapfrog", "--step-size", "0.1"], r"'leapfrog' is a partitioned \(symplectic\) method"),
        (
            ["--method", "scipy_solver"],
            r"--method scipy_solver computes no gradients by backpropagation: add --adjoint",
        ),
        (["--method", "vern7"], r"available on the Julia backend only"),
    ],
)
def test_cnf_experiment_refuses_method_settings_it_cannot_run(tmp_path, capsys, argv, message):
    # refused with one line and exit status 2 before anything is trained or written
    assert main(["cnf", *argv, *TINY, "--out", str(tmp_path / "run")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_cnf_step_size_is_left_out_of_adaptive_runs_resume_settings():
    # runs from before --step-size stored no step_size: an adaptive run must still resume them
    assert "step_size" not in checkpoints(CNFExperimentConfig(), None).settings
    assert checkpoints(CNFExperimentConfig(method="rk4", step_size=0.5), None).settings["step_size"] == 0.5


def test_cnf_test_nll_and_nfe_are_the_density_solves():
    # The regularised solve also controls the error of the two integrals, so it can take more steps than
    # log_prob; the reported test NFE and NLL must be the density solve's (RNODE's test-time solve).
    from hybrid_node.experiments.cnf import _test_data, build_cnf, evaluate_cnf
    from hybrid_node.nn.cnf import ExactTrace

    cfg = CNFExperimentConfig(hidden=(32, 32), n_test=64, rtol=1e-4, atol=1e-4)
    torch.manual_seed(0)
    model = build_cnf(cfg)
    with torch.no_grad():
        for p in model.parameters():  # a field that moves the points enough to need some steps
            p.mul_(2.5)
    row = evaluate_cnf(model, cfg, {"nfe": [1.0], "seconds": [1.0]}, "CNF")
    x = _test_data(cfg)  # the test set evaluate_cnf measures
    with torch.no_grad():
        density = model.to_base(x, trace=ExactTrace(), regularize=False)
        regularised = model.to_base(x, trace=ExactTrace(), regularize=True)
    assert regularised.nfe > density.nfe  # the case this test is about
    assert row["test NFE"] == density.nfe
    assert row["test NLL"] == -density.log_prob.mean().item()
    assert row["kinetic"] == regularised.kinetic.mean().item()
