"""The ``stacklevel`` that points a library warning at the user's line."""

from __future__ import annotations

import os
import sys
import types

#: this package's folder, with its separator (a prefix of every one of its source files)
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def caller_stacklevel(skip: tuple[str, ...] = (PACKAGE_DIR,)) -> int:
    """The ``stacklevel`` for :func:`warnings.warn`, called in the function that calls this one, that
    names the first frame whose file lies outside the folders ``skip`` (the user's call, whichever
    entry point of the library led there; Python 3.12's ``skip_file_prefixes`` in a form that also
    runs on 3.10-3.11).

    Args:
        skip: folder prefixes (absolute, ending in the separator) whose frames are passed over.

    Returns:
        1 for the calling function itself, plus one for every skipped frame above it.
    """
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
        frame, level = frame.f_back, level + 1
    return level
