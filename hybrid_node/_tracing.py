"""Whether the running solve is being traced into a graph (``torch.compile`` or ``torch.export``)."""

from __future__ import annotations

import torch


def traced() -> bool:
    """Whether this call is being traced: by Dynamo (``torch.compile``, strict ``torch.export``) or by a
    non-strict ``torch.export``, in this thread.

    ``torch.compiler.is_compiling()`` is one flag for the whole process, set for as long as any
    thread compiles: an eager solve in another thread read it as traced and ran the traced loop
    eagerly, waiting for that compilation to end first (torch's eager ``while_loop`` compiles under
    the same lock), and the device loop's dense output took its compiled form.
    ``torch.compiler.is_dynamo_compiling()`` is a constant that Dynamo folds to True in the code it
    traces, False everywhere else. ``torch.compiler.is_exporting()`` (non-strict export runs the
    Python code) is process-wide too; the fake-tensor mode such an export runs the code under is the
    exporting thread's own, so both together say that this thread is exported.

    Returns:
        True inside a trace.
    """
    if torch.compiler.is_dynamo_compiling():
        return True
    fake = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)
    return torch.compiler.is_exporting() and fake is not None
