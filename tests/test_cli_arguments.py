"""Bad command-line values: one line naming the option on stderr, exit status 2, nothing written."""

from __future__ import annotations

import argparse

import pytest

from hybrid_node import cli
from hybrid_node.experiments._args import (
    SettingsError,
    checked_settings,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    random_seed,
)


def exit_status(argv: list[str]) -> int:
    """``hybrid-node argv``'s exit status: argparse's usage errors raise SystemExit, the others return."""
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


# Each was a traceback (ValueError from torch's Adam or from a settings check, ZeroDivisionError), or
# ran to the end on garbage (hnn --iters -1 scored untrained models; --trajectories 1 trained on no data).
BAD = [
    (["demo", "--iters", "-1"], "--iters"),
    (["demo", "--lr", "nan"], "--lr"),
    (["demo", "--rtol", "-1"], "--rtol"),
    (["demo", "--noise", "nan"], "--noise"),
    (["demo", "--batch-time", "1"], "batch_time"),
    (["anode", "--iters", "0"], "--iters"),
    (["anode", "--lr", "-1"], "--lr"),
    (["anode", "--hidden", "0"], "--hidden"),
    (["anode", "--tasks", "foo"], "--tasks"),
    (["cnf", "--lr", "nan"], "--lr"),
    (["cnf", "--tol", "-1"], "--tol"),
    (["cnf", "--kinetic-weight", "nan"], "--kinetic-weight"),
    (["cnf", "--hidden", "a,b"], "--hidden"),
    (["cnf", "--hidden", "8,0"], "hidden"),
    (["hnn", "--iters", "-1"], "--iters"),
    (["hnn", "--trajectories", "1"], "--trajectories"),
    (["hnn", "--step-size", "0"], "--step-size"),
    (["sde", "--lr", "nan"], "--lr"),
    (["sde", "--dt", "inf"], "--dt"),
    (["spirals", "--lr", "-1"], "--lr"),
    (["spirals", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["spirals", "--n", "150"], "--n"),
    (["spirals", "--grad-clip", "-1"], "--grad-clip"),
    (["mnist", "--lr", "nan"], "--lr"),
    (["mnist", "--train-subset", "0"], "--train-subset"),
    (["mnist", "--models", "foo"], "models"),
    (["nfe", "--eval-batch", "0"], "--eval-batch"),
    (["nfe", "--tolerances", "1e-3,nan"], "--tolerances"),
]
# A seed past 2**64 - 1 failed in torch.manual_seed, a negative one in numpy's default_rng (tracebacks).
BAD += [
    ([command, "--seed", seed], "--seed")
    for command, (path, _) in cli.SUBCOMMANDS.items()
    if ".experiments." in path
    for seed in ("-1", str(2**64))
]


@pytest.mark.parametrize(("argv", "names"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_line_errors(argv, names, tmp_path, capsys):
    out = tmp_path / "run"
    assert exit_status([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"hybrid-node {argv[0]}: error:" in err and names in err
    assert not out.exists()  # refused before the run folder is made or anything trains


def test_unwritable_out_folder_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert exit_status(["demo", "--iters", "1", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert "Cannot create the run folder" in err and str(blocker / "run") in err


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (positive_int, {"1": 1, "7": 7}, ["0", "-3", "1.5", "x"]),
        (nonnegative_int, {"0": 0, "4": 4}, ["-1", "nan"]),
        (positive_float, {"1e-3": 1e-3, "2": 2.0}, ["0", "-1", "nan", "inf", "-inf", "x"]),
        (nonnegative_float, {"0": 0.0, "0.5": 0.5}, ["-1e-9", "nan", "inf"]),
        (random_seed, {"0": 0, str(2**64 - 1): 2**64 - 1}, ["-1", str(2**64), "1.5"]),
    ],
)
def test_argument_types(kind, good, bad):
    for text, value in good.items():
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            kind(text)


def test_checked_settings_keeps_the_message_and_stays_a_value_error():
    with pytest.raises(SettingsError, match="iters must be >= 1") as info:
        with checked_settings():
            raise ValueError("iters must be >= 1, got 0.")
    assert isinstance(info.value, ValueError)
    with pytest.raises(TypeError):  # not a settings refusal: passes through unchanged
        with checked_settings():
            raise TypeError("a bug")


def test_the_demo_example_reports_settings_errors_as_the_command_does(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "spiral_demo.py"
    argv = [sys.executable, str(example), "--batch-time", "1", "--iters", "1", "--out", str(tmp_path / "run")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr  # was a SettingsError traceback
    assert "spiral_demo.py: error: batch_time must be in [2, data_size)" in out.stderr
