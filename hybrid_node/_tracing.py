"""Whether the running solve is being traced into a graph (``torch.compile`` or ``torch.export``)."""

from __future__ import annotations

import torch


def traced() -> bool:
    """Whether this call is being traced: by Dynamo (``torch.compile``, strict ``torch.export``) in this
    thread, or by ``torch.export``.

    ``torch.compiler.is_compiling()`` is one flag for the whole process, set for as long as any
    thread compiles: an eager solve in another thread read it as traced and ran the traced loop
    eagerly, waiting for that compilation to end first (torch's eager ``while_loop`` compiles under
    the same lock), and the device loop's dense output took its compiled form.
    ``torch.compiler.is_dynamo_compiling()`` is a constant that Dynamo folds to True in the code it
    traces, False everywhere else. ``torch.export`` (non-strict by default, which runs the Python
    code) keeps a process-wide flag of its own.

    Returns:
        True inside a trace.
    """
    return torch.compiler.is_dynamo_compiling() or torch.compiler.is_exporting()
