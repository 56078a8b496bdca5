"""The benchmark scripts' command lines: a bad value is a usage error (exit status 2) before any work,
the options do what their help says, and the floors of benchmarks/floors.py count the right work."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import cpu_gemm, floors, run, torchdiffeq_suite
from benchmarks.workloads import Counted, Workload

ROOT = Path(__file__).resolve().parent.parent

#: the other arguments keep whatever work an old version did before failing small (none where it fails at once)
_RUN = ["--workloads", "none", "--frameworks", "hybrid_node"]
BAD_ARGUMENTS = [
    ("run", [*_RUN[:2], "--frameworks", "torchdifeq"]),  # a typo was reported as "skipped (not installed)"
    ("run", [*_RUN, "--repeats", "0"]),
    ("run", [*_RUN, "--threads", "0"]),
    ("run", [*_RUN, "--warmup", "-1"]),
    ("run", [*_RUN, "--memory-steps", "0"]),
    ("run", [*_RUN, "--memory-steps", "10", "none"]),
    ("run", [*_RUN, "--device", "no-such-device"]),
    ("per_sample", ["--repeats", "0", "--batch", "2", "--hidden", "2"]),
    ("per_sample", ["--batch", "0"]),
    ("sde", ["--methods", "eulr"]),  # printed an empty table
    ("sde", ["--dt", "0"]),
    ("stiff", ["--problems", "hire"]),  # KeyError
    ("stiff", ["--multistep", "--batches", "x,1"]),
    ("memory", ["--framework", "diffrax"]),  # its adapter has no fixed-step rk4
    ("memory", ["--framework", "hybrid_node+device"]),  # the device loop is adaptive only
    ("memory", ["--steps", "0"]),
    ("memory_vs_steps", ["--one", "bogus", "10"]),
    ("memory_vs_steps", ["--steps", "0", "--methods", "direct"]),
    ("accuracy", ["mlp-fw"]),
    ("accuracy", ["--quick"]),
    ("floors", ["--workloads", "mlp-fwd", "--repeats", "1"]),  # a forward workload has no backward floor
    ("floors", ["--repeats", "0", "--workloads", "mlp-train-direct"]),
    ("cpu_gemm", ["--repeats", "4"]),  # fewer than its 5 interleaved rounds
    ("adjoint_compile", ["--rounds", "0"]),
    ("events_adjoint", ["--repeats", "0"]),
    ("reversible_gradients", ["--step", "0"]),
    ("first_call", ["--workloads", "nope"]),
    ("tanh_fit", ["--quick"]),  # ran its whole minute of work, --help included
    ("torchdiffeq_suite", []),  # no --tests: a TypeError deep inside
]


@pytest.mark.parametrize(("module", "argv"), BAD_ARGUMENTS, ids=[f"{m} {' '.join(a)}" for m, a in BAD_ARGUMENTS])
def test_a_bad_argument_is_a_usage_error(module, argv, capsys):
    main = importlib.import_module(f"benchmarks.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["ab", "host_cost"])
def test_a_baseline_without_hybrid_node_is_a_usage_error(module, tmp_path, capsys):
    main = importlib.import_module(f"benchmarks.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--baseline", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no hybrid_node package" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_run_without_cuda_says_so(capsys):
    with pytest.raises(SystemExit):
        run.main(["--device", "cuda", "--workloads", "none"])
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("values", [["none"], []], ids=["none", "no value"])
def test_run_memory_steps_none_skips_the_memory_table(values, tmp_path):
    """--help says "none to skip"; `--memory-steps none` was refused as an invalid int."""
    assert (
        run.main(
            ["--workloads", "none", "--frameworks", "hybrid_node", "--memory-steps", *values, "--out", str(tmp_path)]
        )
        == 0
    )
    assert json.loads((tmp_path / "results.json").read_text())["memory"] == []


def test_cpu_gemm_refuses_a_cpu_without_avx512(monkeypatch, capsys):
    """The kernel is built with -mavx512f: on another CPU it died of SIGILL (exit status 132)."""
    monkeypatch.setattr(cpu_gemm.cpu_gemm, "supported", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        cpu_gemm.main(["--repeats", "10"])
    assert exit_info.value.code == 2
    assert "AVX-512" in capsys.readouterr().err


def test_torchdiffeq_suite_without_test_files_exits_2(tmp_path, capsys):
    """Its docstring: exit status 2 when the harness could not run the suite (no test files)."""
    assert torchdiffeq_suite.main(["--tests", str(tmp_path)]) == 2
    assert "no *_tests.py files" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["events_adjoint", "stiff", "memory_vs_steps", "reversible_gradients"])
def test_scripts_documented_as_files_run_as_files(script, tmp_path):
    """docs run these as `python benchmarks/<name>.py`: their shared argument types must import that way too."""
    bad = {"events_adjoint": "--repeats", "stiff": "--batch", "memory_vs_steps": "--steps"}.get(script, "--step")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), bad, "-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"argument {bad}: must be" in done.stderr  # the shared argument type, not a traceback


class _GradRecorder(Counted):
    """A linear field recording, per call, whether autograd was recording."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.with_grad: list[bool] = []

    def forward(self, t, y):
        self.nfe += 1
        self.with_grad.append(torch.is_grad_enabled())
        return self.linear(y)


def test_adjoint_floor_counts_the_forward_solve_as_plain_evaluations():
    """The adjoint's floor was NFE vector-Jacobian products, the forward solve's evaluations included: more
    than the work it bounds (hybrid_node's mlp-train-adjoint measured 0.98x of it)."""
    field = _GradRecorder()
    w = Workload("floor", field, torch.randn(4, 2), torch.tensor([0.0, 1.0]), 1e-5, 1e-6, "adjoint")
    floors._floor(w, nfe=10, nfe_forward=4)()
    assert field.with_grad == [False] * 4 + [True] * 6


def test_stiff_tables_warm_up_every_method_before_timing_it(monkeypatch):
    """run_problem timed each method's first solve: the first method of a run paid the process's
    one-time costs (rodas5p on robertson: 1.45 s, 0.11 s after a warm-up, against kencarp4's 0.18 s)."""
    from benchmarks import stiff

    calls = []
    solve = stiff.hn.solve

    def spy(f, y0, t, *, solver, **kwargs):
        calls.append((type(solver).__name__, float(t[-1])))
        return solve(f, y0, t, solver=solver, **kwargs)

    monkeypatch.setattr(stiff.hn, "solve", spy)
    rows = stiff.run_problem("hires", ["rodas5p"], 1e-3, 1e-6, dopri_cap=10)
    assert [r[0] for r in rows[:2]] == ["rodas5p", "dopri5"]
    end = stiff.PROBLEMS["hires"][2]
    for name in {c[0] for c in calls}:
        ends = [t1 for n, t1 in calls if n == name]
        assert len(ends) == 2 and ends[0] < end and ends[1] == pytest.approx(end), (name, ends)
