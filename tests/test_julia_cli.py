"""`hybrid-node doctor` and `hybrid-node julia-setup` without Julia."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import tomllib

from hybrid_node.commands import doctor
from hybrid_node.julia import runtime as julia_runtime


def test_doctor_reports_torch_and_why_julia_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(
        julia_runtime, "probe", lambda: julia_runtime.Availability(False, None, False, "juliacall is not installed")
    )
    assert doctor.run(argparse.Namespace(start=False, timeout=1.0)) == 0
    out = capsys.readouterr().out
    assert "torch  : OK" in out
    assert "julia  : NOT AVAILABLE (juliacall is not installed)" in out
    assert "julia-setup" in out


def test_doctor_reports_found_julia_without_starting_it(monkeypatch, capsys):
    monkeypatch.setattr(
        julia_runtime, "probe", lambda: julia_runtime.Availability(True, "/opt/julia/bin/julia", False, "")
    )
    doctor.run(argparse.Namespace(start=False, timeout=1.0))
    out = capsys.readouterr().out
    assert "probably OK" in out and "/opt/julia/bin/julia" in out


def test_probe_honours_the_executable_variable(monkeypatch, tmp_path):
    exe = tmp_path / "julia"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(exe))
    assert julia_runtime.find_julia_executable() == str(exe)


@pytest.mark.parametrize(
    "variables",
    [
        {"PYTHON_JULIACALL_EXE": "julia"},
        {"PYTHON_JULIACALL_BINDIR": "/opt/julia/bin"},
        {"PYTHON_JULIACALL_PROJECT": "/tmp/env"},
    ],
)
def test_doctor_reports_juliacall_variables_set_alone(variables, monkeypatch, capsys, tmp_path):
    # Issue 20 item 6: juliacall refuses an executable without a project (and the reverse). BINDIR alone is
    # an executable without a project from juliacall 0.9.35 on (see the 0.9.34 test below).
    for var in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_BINDIR", "PYTHON_JULIACALL_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(julia_runtime, "juliacall_version", lambda: (0, 9, 35), raising=False)
    for var, value in variables.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(julia_runtime.importlib.util, "find_spec", lambda name: object())
    status = julia_runtime.probe()
    assert not status.ok and "needs both together" in status.reason
    doctor.run(argparse.Namespace(start=False, timeout=1.0))
    out = capsys.readouterr().out
    assert "julia  : NOT AVAILABLE" in out and "needs both together" in out
    assert f"{next(iter(variables))}=" in out


def test_juliacall_variables_together_are_accepted(monkeypatch):
    monkeypatch.setenv("PYTHON_JULIACALL_EXE", "julia")
    monkeypatch.setenv("PYTHON_JULIACALL_PROJECT", "/tmp/env")
    assert julia_runtime.juliacall_variables_problem() == ""


def _juliacall_variables(monkeypatch, version: tuple[int, ...], **variables: str) -> None:
    """Set exactly ``variables`` of juliacall's executable/project variables, as juliacall ``version`` reads them."""
    for var in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_BINDIR", "PYTHON_JULIACALL_PROJECT", "PYTHON_JULIAPKG_EXE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in variables.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(julia_runtime, "juliacall_version", lambda: version, raising=False)


def test_with_juliacall_0_9_34_bindir_alone_is_not_an_executable_without_a_project(monkeypatch, tmp_path):
    # juliacall 0.9.34 (pysrc/juliacall/__init__.py) reads PYTHON_JULIACALL_BINDIR as Julia's --home only and takes
    # the executable from PYTHON_JULIACALL_EXE or juliapkg: BINDIR alone starts Julia. It was refused as "set
    # without PYTHON_JULIACALL_PROJECT", which is 0.9.35's rule (there exepath = {bindir}/julia).
    _juliacall_variables(monkeypatch, (0, 9, 34), PYTHON_JULIACALL_BINDIR=str(tmp_path))
    assert julia_runtime.juliacall_variables_problem() == ""
    # ... and the probe does not take {bindir}/julia for the executable juliacall would use
    (tmp_path / "julia").write_text("#!/bin/sh\n")
    (tmp_path / "julia").chmod(0o755)
    assert julia_runtime.find_julia_executable() != str(tmp_path / "julia")


def test_with_juliacall_0_9_34_bindir_and_project_lack_the_executable(monkeypatch, tmp_path):
    # 0.9.34 raises "Both PYTHON_JULIACALL_PROJECT and PYTHON_JULIACALL_EXE must be set together" here; it was
    # accepted, so doctor said OK and the solve failed inside juliacall's start-up.
    _juliacall_variables(monkeypatch, (0, 9, 34), PYTHON_JULIACALL_BINDIR=str(tmp_path), PYTHON_JULIACALL_PROJECT="/e")
    problem = julia_runtime.juliacall_variables_problem()
    assert "PYTHON_JULIACALL_PROJECT is set without PYTHON_JULIACALL_EXE" in problem
    assert "juliacall 0.9.34 does not take the executable from PYTHON_JULIACALL_BINDIR" in problem


@pytest.mark.parametrize("version", [(0, 9, 35), (0, 9, 37), None], ids=["0.9.35", "0.9.37", "unknown"])
def test_from_juliacall_0_9_35_bindir_is_the_executable(version, monkeypatch, tmp_path):
    _juliacall_variables(monkeypatch, version, PYTHON_JULIACALL_BINDIR=str(tmp_path), PYTHON_JULIACALL_PROJECT="/e")
    assert julia_runtime.juliacall_variables_problem() == ""
    _juliacall_variables(monkeypatch, version, PYTHON_JULIACALL_BINDIR=str(tmp_path))
    assert "without PYTHON_JULIACALL_PROJECT" in julia_runtime.juliacall_variables_problem()


@pytest.mark.parametrize(("text", "version"), [("0.9.34", (0, 9, 34)), ("0.9.37rc1", (0, 9, 37)), ("1.0", (1, 0))])
def test_juliacall_version_is_read_from_its_metadata(text, version, monkeypatch):
    monkeypatch.setattr(julia_runtime.importlib.metadata, "version", lambda name: text)
    assert julia_runtime.juliacall_version() == version


def test_cli_lists_both_subcommands():
    from hybrid_node import cli

    parser = cli.build_parser()
    help_text = parser.format_help()
    assert "doctor" in help_text and "julia-setup" in help_text


@pytest.mark.parametrize(
    "variables",
    [
        {"PYTHON_JULIAPKG_EXE": "/no/such/julia"},
        {"PYTHON_JULIACALL_EXE": "/no/such/julia", "PYTHON_JULIACALL_PROJECT": "/tmp/env"},
    ],
)
def test_probe_names_an_executable_variable_that_points_nowhere(variables, monkeypatch):
    # The reason said "no Julia executable found (juliacall would download one; run julia-setup)",
    # but with the variable set neither juliacall nor juliapkg downloads or looks elsewhere.
    for var in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_BINDIR", "PYTHON_JULIACALL_PROJECT", "PYTHON_JULIAPKG_EXE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in variables.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(julia_runtime.importlib.util, "find_spec", lambda name: object())
    status = julia_runtime.probe()
    var = next(iter(variables))
    assert status.reason == f"{var}=/no/such/julia is not a Julia executable (correct the path, or unset {var})"


@pytest.mark.parametrize("version", [(0, 9, 33), (0, 10, 0), (1, 0)], ids=["0.9.33", "0.10.0", "1.0"])
def test_a_juliacall_outside_the_supported_range_is_reported_before_julia_starts(version, monkeypatch, tmp_path):
    # juliacall pins PythonCall to its own version; outside HybridNODE's PythonCall compat the failure came only
    # from juliapkg's resolution while Julia started. The probe said the backend was probably OK.
    exe = tmp_path / "julia"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    _juliacall_variables(monkeypatch, version, PYTHON_JULIAPKG_EXE=str(exe))
    monkeypatch.setattr(julia_runtime.importlib.util, "find_spec", lambda name: object())
    reason = julia_runtime.probe().reason
    assert f"juliacall {'.'.join(map(str, version))} is installed" in reason
    assert "pip install 'juliacall>=0.9.34,<0.10'" in reason


@pytest.mark.parametrize("version", [(0, 9, 34), (0, 9, 37), None], ids=["0.9.34", "0.9.37", "unknown"])
def test_a_supported_juliacall_passes_the_probe(version, monkeypatch, tmp_path):
    exe = tmp_path / "julia"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    _juliacall_variables(monkeypatch, version, PYTHON_JULIAPKG_EXE=str(exe))
    monkeypatch.setattr(julia_runtime.importlib.util, "find_spec", lambda name: object())
    assert julia_runtime.probe().ok


def test_the_supported_juliacall_range_is_the_one_project_toml_and_the_extra_declare():
    root = Path(__file__).resolve().parents[1]
    low, high = julia_runtime.JULIACALL_SUPPORTED
    # Project.toml: PythonCall = "0.9.34" is Pkg's caret range [0.9.34, 0.10)
    compat = tomllib.loads((root / "Project.toml").read_text())["compat"]["PythonCall"]
    assert tuple(int(x) for x in compat.split(".")) == low and high == (low[0], low[1] + 1)
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["julia"]
    bounds = re.fullmatch(r"juliacall>=([\d.]+),<([\d.]+)", next(r for r in extra if r.startswith("juliacall")))
    assert bounds is not None
    assert tuple(int(x) for x in bounds.group(1).split(".")) == low
    assert tuple(int(x) for x in bounds.group(2).split(".")) == high


def test_a_bindir_that_does_not_exist_is_named(monkeypatch, tmp_path):
    # juliacall reads PYTHON_JULIACALL_BINDIR with check_exists=True: a missing directory fails its import.
    exe = tmp_path / "julia"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    missing = str(tmp_path / "nowhere")
    variables = dict(PYTHON_JULIACALL_BINDIR=missing, PYTHON_JULIACALL_EXE=str(exe), PYTHON_JULIACALL_PROJECT="/e")
    _juliacall_variables(monkeypatch, (0, 9, 34), **variables)
    monkeypatch.setattr(julia_runtime.importlib.util, "find_spec", lambda name: object())
    reason = julia_runtime.probe().reason
    assert reason == f"PYTHON_JULIACALL_BINDIR={missing} is not a directory (correct the path, or unset it)"


def test_from_juliacall_0_9_35_a_bindir_without_julia_is_named(monkeypatch, tmp_path):
    _juliacall_variables(monkeypatch, (0, 9, 35), PYTHON_JULIACALL_BINDIR=str(tmp_path), PYTHON_JULIACALL_PROJECT="/e")
    monkeypatch.setattr(julia_runtime.importlib.util, "find_spec", lambda name: object())
    assert "holds no julia executable" in julia_runtime.probe().reason
    (tmp_path / "julia").write_text("#!/bin/sh\n")
    (tmp_path / "julia").chmod(0o755)
    assert julia_runtime.probe().ok
