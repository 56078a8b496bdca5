"""Argument types shared by the benchmark scripts, so that a bad value is a usage error, not a traceback."""

from __future__ import annotations

import argparse

import torch

# the command's own argument types: one line naming the bad value, exit status 2
from hybrid_node.experiments._args import nonnegative_int as non_negative_int
from hybrid_node.experiments._args import positive_float, positive_int

__all__ = ["check_device", "non_negative_int", "positive_float", "positive_int"]


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Stop with a usage error when ``device`` cannot be used by torch in this process.

    Args:
        parser: the script's parser (its ``error`` exits with status 2).
        device: the ``--device`` value.
    """
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        parser.error(f"--device {device!r}: {e}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device!r}: CUDA is not available in this torch build or on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        parser.error(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type not in ("cpu", "cuda"):
        parser.error(f"--device {device!r}: the benchmarks run on 'cpu' or 'cuda'")
