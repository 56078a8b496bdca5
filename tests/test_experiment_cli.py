"""The experiments' command lines: bad devices, another command's run folder, Ctrl-C, plotting few paths."""

from __future__ import annotations

import pytest
import torch

from hybrid_node import cli


def exit_status(argv: list[str]) -> int:
    """``hybrid-node argv``'s exit status: argparse's usage errors raise SystemExit, the others return."""
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


def commands_with(option: str) -> list[str]:
    """The subcommands whose parser takes ``option``."""
    found = []
    for name in cli.SUBCOMMANDS:
        parser = cli.build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        if option in sub._option_string_actions:
            found.append(name)
    return found


DEVICE_COMMANDS = commands_with("--device")


def test_the_commands_with_a_device_option_are_found():
    assert {"mnist", "nfe"} <= set(DEVICE_COMMANDS)


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
@pytest.mark.parametrize(
    ("device", "message"), [("cuda", "no CUDA device is available here"), ("foo", "unknown device")]
)
def test_a_device_this_machine_lacks_is_a_usage_error(command, device, message, monkeypatch, tmp_path, capsys):
    # `mnist --device cuda` on a CPU-only torch ended in an AssertionError traceback ("Torch not compiled
    # with CUDA enabled") once the data moved there; `--device foo` in a RuntimeError traceback.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    out = tmp_path / "run"
    assert exit_status([command, "--device", device, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "argument --device" in err and message in err
    assert not out.exists()  # refused while parsing: nothing is made or trained
