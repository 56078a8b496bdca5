"""Progress bars that show only on a terminal, so logs and pipes get no carriage-return floods."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

#: set to any non-empty value to hide every progress bar (``hybrid-node <command> --no-progress`` sets it)
NO_PROGRESS_ENV = "HYBRID_NODE_NO_PROGRESS"


def interactive() -> bool:
    """Whether bars may show: standard output and error are terminals and ``NO_PROGRESS_ENV`` is unset."""
    return sys.stdout.isatty() and sys.stderr.isatty() and not os.environ.get(NO_PROGRESS_ENV)


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable``, disabled when ``enabled`` is false or output is not a terminal.

    Args:
        iterable: what to iterate over (None with ``total=`` for a bar updated by hand).
        enabled: the command's own switch (``--no-progress``).
        **kwargs: passed to tqdm (``desc``, ``total``, ``leave``, ...).
    """
    return tqdm(iterable, disable=not (enabled and interactive()), **kwargs)
