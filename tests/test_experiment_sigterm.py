"""SIGTERM (what a batch scheduler or `kill` sends) stops a command as Ctrl-C does: one line saying how
to resume, status 143, and the run continues with --resume; before, the process died on the spot."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

_SELF_TERMINATING = """
import argparse, os, signal, sys, time
from hybrid_node.experiments._output import interruptible

@interruptible("demo")
def run(args):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # the signal arrives here
    return 0

sys.exit(run(argparse.Namespace()))
"""


def test_sigterm_ends_a_command_with_status_143_and_the_interrupt_line():
    done = subprocess.run([sys.executable, "-c", _SELF_TERMINATING], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stderr
    assert "hybrid-node demo: interrupted before its run folder was made" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_sigterm_handler_is_removed_after_the_command():
    from hybrid_node.experiments._output import interruptible

    before = signal.getsignal(signal.SIGTERM)
    seen = []
    interruptible("demo")(lambda args: seen.append(signal.getsignal(signal.SIGTERM)) or 0)(None)
    assert seen[0] is not before and signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_a_demo_stopped_by_sigterm_resumes_to_the_uninterrupted_result(tmp_path: Path):
    """Kill after the first checkpoint; the resumed run's weights equal a run never stopped."""
    import torch

    args = ["--iters", "40", "--max-cycles", "1", "--checkpoint-every", "2", "--no-progress", "--batch-size", "4"]
    cmd = [sys.executable, "-m", "hybrid_node", "demo", *args]
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    proc = subprocess.Popen([*cmd, "--out", str(stopped)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = stopped / "checkpoints" / "demo.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert f"--resume --out {stopped}" in err
    assert not [p for p in ckpt.parent.iterdir() if p.name != "demo.pt"]  # no temporary left behind
    subprocess.run([*cmd, "--out", str(stopped), "--resume"], check=True, capture_output=True, timeout=300)
    subprocess.run([*cmd, "--out", str(whole)], check=True, capture_output=True, timeout=300)
    a = torch.load(stopped / "checkpoints" / "demo.pt", weights_only=False)["model"]
    b = torch.load(whole / "checkpoints" / "demo.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
