"""The scripts in examples/ run as a user runs them: in a subprocess, with their smallest settings.

Each runs in an empty working folder, which must hold only what the script says it writes. Covered
elsewhere: bouncing_balls.py's full run (tests/test_events_jumps.py, slow), spiral_demo.py's settings
errors (tests/test_cli_arguments.py) and spirals_inference_gap.py on a trained run
(tests/test_spirals_experiment.py).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_node.julia import runtime as julia_runtime

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(tmp_path: Path, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    # as a user runs them: compile=True with its default compiler, not the tests' (conftest.py)
    env = {k: v for k, v in os.environ.items() if k != "HYBRID_NODE_COMPILER"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_every_example_is_covered():
    # a new example needs a test here (or a note in the module docstring of where it is tested)
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "backend_switch.py",
        "bouncing_balls.py",
        "compiled_training.py",
        "neural_sde.py",
        "quickstart.py",
        "spiral_demo.py",
        "spirals_inference_gap.py",
        "stiff.py",
    ]


def test_quickstart_runs_and_its_numbers_hold(tmp_path):
    out = _run(tmp_path, "quickstart.py")
    assert out.returncode == 0, out.stderr
    assert "odeint: (6, 3, 2)" in out.stdout
    # dopri5 at rtol 1e-8, atol 1e-10 against the matrix exponential: the global error is a few 1e-8
    error = float(re.search(r"max error vs expm: (\S+)", out.stdout).group(1))
    assert error < 1e-6
    # RK4 with h = 0.01 on an oscillator of frequency ~1 over t <= 10: error ~ 10 * h^4 = 1e-7
    assert float(re.search(r"rk4, step 0.01: max error (\S+)", out.stdout).group(1)) < 1e-6
    assert "solve: SUCCESS" in out.stdout
    assert "blows up at t = 1: stopped at t=1.0000" in out.stdout  # y' = y^2, y(0) = 1: y = 1 / (1 - t)
    assert not any((tmp_path / "cwd").iterdir())  # writes nothing


def test_quickstart_help_and_unknown_options(tmp_path):
    out = _run(tmp_path, "quickstart.py", "--help")
    assert out.returncode == 0 and "usage:" in out.stdout and "odeint:" not in out.stdout  # the help, not a run
    out = _run(tmp_path, "quickstart.py", "--steps", "3")
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr


def test_spiral_demo_example_runs_with_tiny_settings(tmp_path):
    run = tmp_path / "run"
    args = ("--iters", "2", "--max-cycles", "1", "--batch-time", "3", "--no-progress", "--out", str(run))
    out = _run(tmp_path, "spiral_demo.py", *args)
    assert out.returncode == 0, out.stderr
    assert f"results and plots in {run}" in out.stdout
    for name in ("results.json", "results.md", "trajectories.png", "phase_portrait.png", "vector_field.png"):
        assert (run / name).is_file(), name
    assert not any((tmp_path / "cwd").iterdir())  # everything went into --out


@pytest.mark.parametrize(
    "args, message",
    [
        (("RUN", "10", "--series", "0"), "argument --series: must be >= 1, got 0"),  # was a table of NaN
        (("RUN", "10", "--series", "-3"), "argument --series: must be >= 1, got -3"),  # was a torch traceback
        (("RUN", "0"), "argument n: must be >= 1, got 0"),
        (("MISSING", "10"), "holds no results.json"),  # asked for read permission on a missing file
    ],
)
def test_spirals_inference_gap_refuses_bad_input(tmp_path, args, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    paths = {"RUN": str(tmp_path / "run"), "MISSING": str(tmp_path / "missing")}
    out = _run(tmp_path, "spirals_inference_gap.py", *(paths.get(a, a) for a in args))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert message in out.stderr


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        # the solves (20 s) ran first and savefig failed at the end with a traceback
        ("plots", "--out 'plots' is a file, not a folder"),
        # the solves ran first and mkdir failed at the end with a FileNotFoundError/NotADirectoryError traceback
        ("plots/run1", "cannot create the --out folder 'plots/run1'"),
    ],
)
def test_bouncing_balls_refuses_an_out_folder_it_cannot_use_before_solving(tmp_path, folder, message):
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "plots").write_text("")  # a file where the folder, or its parent, would be
    out = _run(tmp_path, "bouncing_balls.py", "--out", folder, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "impacts" not in out.stdout
    assert message in out.stderr


def test_compiled_training_refuses_too_few_iterations(tmp_path):
    out = _run(tmp_path, "compiled_training.py", "--iters", "1", timeout=60)
    assert out.returncode == 2 and "argument --iters: must be >= 3, got 1" in out.stderr


@pytest.mark.slow  # torch.compile takes about 40 s on a 2-core CPU; the compiled loop's first iteration
# runs uncompiled, the second waits for the worker's graphs, the third runs them
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None,
    reason="torch.compile needs a C++ compiler for CPU tensors",
)
def test_compiled_training_example_runs_and_both_loops_agree(tmp_path):
    out = _run(tmp_path, "compiled_training.py", "--iters", "3", timeout=600)
    assert out.returncode == 0, out.stderr
    losses = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+)\s.*final loss (\S+)$", out.stdout, re.M)}
    assert set(losses) == {"eager", "compiled"}
    # the same arithmetic fused: equal up to float32 rounding, printed to 5 decimals
    assert losses["compiled"] == pytest.approx(losses["eager"], abs=2e-5)


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("neural_sde.py", ("--iters", "0"), "--iters must be >= 1"),
        ("stiff.py", ("--t1", "0"), "--t1 must be in (0, 20], got 0.0"),
        ("backend_switch.py", ("--batch", "0"), "--batch must be >= 1, got 0"),
    ],
)
def test_new_examples_have_help_and_refuse_bad_settings(tmp_path, script, args, message):
    out = _run(tmp_path, script, "--help", timeout=60)
    assert out.returncode == 0 and "usage:" in out.stdout
    out = _run(tmp_path, script, *args, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr and message in out.stderr


def test_neural_sde_example_learns_the_ou_stationary_law(tmp_path):
    out = _run(tmp_path, "neural_sde.py")  # the default 150 iterations, about 15 s
    assert out.returncode == 0, out.stderr
    stats = {
        m[1]: (float(m[2]), float(m[3])) for m in re.finditer(r"stationary (\w+):\s+model (\S+)\s+OU (\S+)", out.stdout)
    }
    # the OU's analytic stationary law: mean mu = 0.5, std sigma / sqrt(2 theta) = 0.4 / 2
    assert stats["mean"][1] == 0.5 and stats["std"][1] == 0.2
    # Over seeds 0-4 at 150 iterations the model's values were at most 0.016 (mean) and 0.008 (std) off
    # (at 60 iterations up to 0.155 and 0.056); the 4000 evaluation paths alone leave standard errors of
    # 0.003 and 0.002. The bounds are three times the worst seen.
    assert abs(stats["mean"][0] - 0.5) < 0.05
    assert abs(stats["std"][0] - 0.2) < 0.025
    assert not any((tmp_path / "cwd").iterdir())  # writes nothing


def test_stiff_example_errors_steps_and_gradient(tmp_path):
    out = _run(tmp_path, "stiff.py", "--t1", "0.5")
    assert out.returncode == 0, out.stderr
    rows = {
        m[1]: (int(m[2]), float(m[3]))
        for m in re.finditer(r"^(\w+)\s+accepted\s+(\d+)\s+rejected\s+\d+\s+NFE\s+\d+\s+error (\S+)$", out.stdout, re.M)
    }
    assert set(rows) == {"bdf", "kvaerno5", "dopri5"}
    for name, (_, error) in rows.items():
        # rtol = atol = 1e-6 bound each step's local error; the global error at t1 sums them (with the
        # problem's contraction): docs/stiff.md measures 3e-5 for bdf on this problem to t = 3000. 1e-4
        # is 100x the tolerance; the reference (Radau at 1e-10) is ~1e-9 from the exact solution.
        assert error < 1e-4, name
    # stiffness shows in the step counts: dopri5's step is held by stability (measured 358 against 103, 21)
    assert 2 * rows["bdf"][0] < rows["dopri5"][0] and 2 * rows["kvaerno5"][0] < rows["dopri5"][0]
    m = re.search(r"bdf backprop (\S+)\s+Radau finite difference (\S+)", out.stdout)
    grad, fd = float(m[1]), float(m[2])
    # bdf at rtol 1e-8 against scipy's finite difference: 2.8e-6 relative to t1 = 0.5, 2e-4 to t1 = 1 or 2
    assert grad == pytest.approx(fd, rel=1e-3) and fd != 0
    assert not any((tmp_path / "cwd").iterdir())


def test_backend_switch_example_torch_half_and_honest_julia_half(tmp_path):
    out = _run(tmp_path, "backend_switch.py")
    assert out.returncode == 0, out.stderr
    assert "torch: ys (10, 16, 2), 194 gradient entries" in out.stdout  # y0 (16 x 2) and 162 weights
    # backprop and adjoint at rtol 1e-9 both approximate the exact gradient to ~1e-9: measured 5e-11
    diff = float(re.search(r"adjoint vs backprop gradients, max rel. difference (\S+)", out.stdout)[1])
    assert diff < 1e-6
    status = julia_runtime.probe()
    if status.ok:  # Julia installed: the script compared the backends itself
        assert "backends agree" in out.stdout
    else:  # the library's reason, and no Julia numbers
        assert f"julia: not available: The Julia backend is not available: {status.reason}" in out.stdout
        assert "julia vs torch" not in out.stdout
    assert not any((tmp_path / "cwd").iterdir())
