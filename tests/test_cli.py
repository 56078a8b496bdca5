"""The ``hybrid-node`` command: help, and the spiral demo on a tiny budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from hybrid_node import cli
from hybrid_node.experiments import spiral_demo


def test_help_lists_the_demo():
    out = subprocess.run([sys.executable, "-m", "hybrid_node", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: hybrid-node" in out.stdout and "demo" in out.stdout


def test_demo_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--iters" in text and "--out" in text and "--adjoint" in text


def test_demo_runs_on_a_tiny_budget(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["demo", "--iters", "3", "--out", str(out)]) == 0
    for name in (
        "trajectories.png",
        "phase_portrait.png",
        "vector_field.png",
        "loss.png",
        "results.md",
        "results.json",
    ):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr()
    assert "final loss" in printed.out and str(out) in printed.out
    assert "spiral demo" not in printed.err  # no progress bar: output is captured, not a terminal
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows[0]["iterations"] == 9  # 3 cycles of 3: a tiny budget never reaches the target
    assert "budget used (9 iterations)" in printed.out
    assert rows[0]["trajectory_mae"] > 0 and rows[0]["noise_mae"] > 0


def test_demo_with_adjoint_gradients():
    s = spiral_demo.DemoSettings(iters=2, adjoint=True, test_every=2, data_size=200)
    result = spiral_demo.train(s, progress=False)
    assert len(result["history"]["loss"]) == 2 and result["metrics"]["trajectory_mae"] > 0


def test_demo_data_is_the_spiral_with_noise():
    s = spiral_demo.DemoSettings(data_size=5000, noise=0.05)
    t, y_true, y_obs = spiral_demo.make_data(s)
    assert t.shape == (5000,) and y_true.shape == (5000, 2) and y_obs.shape == (5000, 2)
    torch.testing.assert_close(y_true[0], torch.tensor([2.0, 0.0]))
    noise = y_obs - y_true
    assert 0.03 < float(noise.std()) < 0.07
    # the true trajectory satisfies dy/dt = (y^3) A (central differences on the fine grid)
    dt = float(t[1] - t[0])
    deriv = (y_true[2:] - y_true[:-2]) / (2 * dt)
    field = spiral_demo.true_field(torch.tensor(0.0), y_true[1:-1])
    assert float((deriv - field).abs().max()) < 0.05 * float(field.abs().max())


def test_training_reduces_the_loss():
    s = spiral_demo.DemoSettings(iters=80, lr=1e-2, test_every=80, data_size=300, seed=1)
    result = spiral_demo.train(s, progress=False)
    loss = result["history"]["loss"]
    first, last = sum(loss[:10]) / 10, sum(loss[-10:]) / 10
    assert last < 0.7 * first, (first, last)


def test_demo_settings_are_validated():
    with pytest.raises(ValueError, match="batch_time"):
        spiral_demo.DemoSettings(batch_time=1)
    with pytest.raises(ValueError, match="iters"):
        spiral_demo.DemoSettings(iters=0)


def test_progress_bars_are_off_without_a_terminal():
    from hybrid_node.experiments._progress import progress_bar

    # under pytest standard output is captured, not a terminal: no bar, whatever the command asked for
    assert progress_bar(range(3), enabled=True).disable
    assert progress_bar(range(3), enabled=False).disable


def test_unknown_method_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["demo", "--method", "nope"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [c for c, (path, _) in cli.SUBCOMMANDS.items() if ".experiments." in path])
def test_every_experiment_takes_no_progress(command):
    args = cli.build_parser(command).parse_args([command, "--no-progress"])
    assert args.no_progress is True


def test_no_progress_hides_bars_even_on_a_terminal(monkeypatch):
    from hybrid_node.experiments import _progress

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.delenv(_progress.NO_PROGRESS_ENV, raising=False)
    assert _progress.interactive()  # a terminal: bars show
    monkeypatch.setenv(_progress.NO_PROGRESS_ENV, "1")
    assert not _progress.interactive() and _progress.progress_bar(range(3)).disable


def test_cli_no_progress_sets_the_switch(monkeypatch, tmp_path):
    from hybrid_node.experiments import _progress

    monkeypatch.delenv(_progress.NO_PROGRESS_ENV, raising=False)  # also removes what cli.main sets, afterwards
    seen = {}

    def fake_run(args):
        seen["switch"] = os.environ.get(_progress.NO_PROGRESS_ENV)
        return 0

    monkeypatch.setattr(spiral_demo, "run", fake_run)
    assert cli.main(["demo", "--no-progress", "--out", str(tmp_path)]) == 0
    assert seen["switch"] == "1"
    monkeypatch.delenv(_progress.NO_PROGRESS_ENV, raising=False)
