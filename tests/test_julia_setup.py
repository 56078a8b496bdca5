"""``hybrid-node julia-setup``: options are checked first, and every failure is reported on stderr."""

from __future__ import annotations

import argparse
import sys
import types

import pytest

from hybrid_node import cli
from hybrid_node.julia import setup as julia_setup


def exit_status(argv: list[str]) -> int:
    """``hybrid-node argv``'s exit status: argparse's usage errors raise SystemExit, the others return."""
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


@pytest.fixture
def no_juliacall(monkeypatch):
    """As on a machine without the Julia extra: neither juliacall nor juliapkg is found."""
    monkeypatch.setattr(julia_setup.importlib.util, "find_spec", lambda name: None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--project", "relative/env"], "argument --project: must be an absolute path, got 'relative/env'"),
        (["--project", ""], "argument --project: must be an absolute path"),
        (["--julia", "/no/such/julia"], "argument --julia: '/no/such/julia' is not an executable file"),
    ],
)
def test_a_bad_option_is_a_usage_error_before_juliacall_is_looked_for(argv, message, no_juliacall, capsys):
    # A relative --project was refused only after the juliacall check, so without juliacall the user was told
    # to install it first (exit 1), and the refusal itself went to stdout.
    assert exit_status(["julia-setup", *argv]) == 2
    printed = capsys.readouterr()
    assert message in printed.err and "pip install" not in printed.err + printed.out and printed.out == ""


def test_run_checks_the_options_of_a_namespace_of_its_own(no_juliacall, capsys):
    args = argparse.Namespace(julia=None, project="relative/env", offline=False, update=False)
    assert julia_setup.run(args) == 2
    printed = capsys.readouterr()
    assert "argument --project: must be an absolute path" in printed.err and printed.out == ""


def test_missing_juliacall_is_reported_on_stderr(no_juliacall, capsys):
    assert exit_status(["julia-setup", "--project", "/tmp/env"]) == 1
    printed = capsys.readouterr()
    assert "pip install 'hybrid_node[julia]'" in printed.err and printed.out == ""


def _fail(*args, **kwargs):
    raise Exception("could not find Julia ^1.10")  # juliapkg raises bare Exceptions


def test_a_failed_resolve_is_reported_on_stderr(monkeypatch, capsys):
    juliapkg = pytest.importorskip("juliapkg", reason="juliapkg is not installed")
    monkeypatch.setattr(julia_setup.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(juliapkg, "resolve", _fail)
    args = argparse.Namespace(julia=None, project=None, offline=False, update=False)
    assert julia_setup.run(args) == 1
    printed = capsys.readouterr()
    assert "julia-setup failed while resolving the Julia environment: Exception: could not find Julia" in printed.err
    assert "--julia /path/to/julia" in printed.err and "Traceback" not in printed.err
    assert "failed" not in printed.out  # stdout keeps the progress lines only


def _julia_that_cannot_load_the_package(monkeypatch):
    """juliapkg resolves an environment, but the Julia of a stand-in juliacall fails to load the package
    (never starts a real Julia); the test is skipped without juliapkg."""
    juliapkg = pytest.importorskip("juliapkg", reason="juliapkg is not installed")
    monkeypatch.setattr(julia_setup.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(juliapkg, "resolve", lambda **kwargs: None)
    monkeypatch.setattr(juliapkg, "executable", lambda: "/opt/julia/bin/julia")
    monkeypatch.setattr(juliapkg, "project", lambda: "/tmp/env")
    monkeypatch.setitem(sys.modules, "juliacall", types.SimpleNamespace(Main=types.SimpleNamespace(seval=_fail)))


def test_a_failed_load_is_reported_on_stderr(monkeypatch, capsys):
    _julia_that_cannot_load_the_package(monkeypatch)
    args = argparse.Namespace(julia=None, project=None, offline=False, update=False)
    assert julia_setup.run(args) == 1
    printed = capsys.readouterr()
    assert "julia-setup failed while loading HybridNODE" in printed.err and "failed" not in printed.out
    assert "doctor --start" in printed.err


def test_an_executable_on_path_is_accepted(tmp_path, monkeypatch):
    exe = tmp_path / "julia"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert julia_setup.julia_executable("julia") == "julia"
    assert julia_setup.julia_executable(str(exe)) == str(exe)


def test_a_failed_offline_load_does_not_claim_the_packages_were_installed(monkeypatch, capsys):
    # juliapkg installs nothing offline (deps.py, resolve: `if not STATE["offline"]`); the hint said "The packages
    # are installed but did not load; run julia-setup --update", which offline neither is true nor helps.
    _julia_that_cannot_load_the_package(monkeypatch)
    monkeypatch.delenv("PYTHON_JULIAPKG_OFFLINE", raising=False)  # run() sets it for --offline
    args = argparse.Namespace(julia=None, project=None, offline=True, update=False)
    assert julia_setup.run(args) == 1
    err = capsys.readouterr().err
    assert "julia-setup failed while loading HybridNODE" in err
    assert "without --offline" in err and "are installed but" not in err


def test_update_with_offline_is_a_usage_error(no_juliacall, capsys):
    # Offline juliapkg updates nothing, so --update --offline reported success without updating.
    assert exit_status(["julia-setup", "--offline", "--update"]) == 2
    assert "argument --update: not allowed with --offline" in capsys.readouterr().err
