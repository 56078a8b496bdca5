"""``--device``: a device this machine lacks is a one-line usage error, not a traceback from torch."""

from __future__ import annotations

import argparse

import pytest
import torch

from hybrid_node.experiments._args import device_name


@pytest.fixture
def cuda_devices(monkeypatch):
    """``cuda_devices(n)`` makes torch report ``n`` CUDA devices (0: none, as on a CPU-only build)."""

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_count


def test_cpu_and_existing_cuda_devices_are_accepted(cuda_devices):
    cuda_devices(2)
    assert [device_name(v) for v in ("cpu", "cuda", "cuda:0", "cuda:1")] == ["cpu", "cuda", "cuda:0", "cuda:1"]


@pytest.mark.parametrize(
    ("value", "count", "message"),
    [
        ("cuda", 0, "no CUDA device is available here; use --device cpu"),
        ("cuda:0", 0, "no CUDA device is available here"),
        ("cuda:3", 2, "has 2 CUDA device(s), cuda:0 to cuda:1"),
        ("foo", 2, "unknown device 'foo'"),
        ("meta", 2, "run on cpu, cuda or mps"),
    ],
)
def test_devices_this_machine_lacks_are_refused(value, count, message, cuda_devices):
    cuda_devices(count)
    with pytest.raises(argparse.ArgumentTypeError) as info:
        device_name(value)
    assert message in str(info.value)


def test_a_parser_reports_it_in_one_line(cuda_devices, capsys):
    # `hybrid-node mnist --device cuda` on a CPU-only torch was an AssertionError traceback ("Torch not
    # compiled with CUDA enabled") once the first tensor moved; `--device foo` a RuntimeError traceback.
    cuda_devices(0)
    parser = argparse.ArgumentParser(prog="hybrid-node mnist")
    parser.add_argument("--device", type=device_name, default="cpu")
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--device", "cuda"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "argument --device: 'cuda': no CUDA device is available here" in err
