"""Argument types shared by the subcommands: a bad value stops argparse with one line, not a traceback."""

from __future__ import annotations

import argparse

from .._registry import METHOD_SPECS


def method_name(value: str) -> str:
    """An ``odeint`` method name from the registry (``hybrid_node.METHODS``)."""
    if value not in METHOD_SPECS:
        raise argparse.ArgumentTypeError(f"unknown method {value!r}; choose one of: {', '.join(METHOD_SPECS)}")
    return value
