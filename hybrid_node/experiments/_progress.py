"""Progress bars that show only on a terminal, so logs and pipes get no carriage-return floods."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def interactive() -> bool:
    """Whether both standard output and standard error are terminals."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable``, disabled when ``enabled`` is false or output is not a terminal.

    Args:
        iterable: what to iterate over (None with ``total=`` for a bar updated by hand).
        enabled: the command's own switch (``--no-progress``).
        **kwargs: passed to tqdm (``desc``, ``total``, ``leave``, ...).
    """
    return tqdm(iterable, disable=not (enabled and interactive()), **kwargs)
