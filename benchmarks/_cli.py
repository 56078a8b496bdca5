"""Argument types shared by the benchmark scripts, so that a bad value is a usage error, not a traceback."""

from __future__ import annotations

import argparse

import torch


def positive_int(text: str) -> int:
    """An integer >= 1 (repeats, rounds, threads, steps, batch sizes).

    Args:
        text: the command-line value.

    Returns:
        The integer.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not an integer >= 1.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (warm-up rounds).

    Args:
        text: the command-line value.

    Returns:
        The integer.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not an integer >= 0.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (step sizes).

    Args:
        text: the command-line value.

    Returns:
        The number.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not a finite number > 0.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return value


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
