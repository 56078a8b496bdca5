"""The Julia package ships inside the wheel, where juliapkg.json's path must find it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["package-data"]["hybrid_node"]


def test_package_data_covers_the_julia_package():
    pkg = ROOT / "hybrid_node"
    matched = {p.resolve() for pattern in _package_data() for p in pkg.glob(pattern)}
    wanted = {(ROOT / "Project.toml").resolve(), (pkg / "juliapkg.json").resolve()}
    wanted |= {p.resolve() for p in (ROOT / "julia").glob("*.jl")}
    assert wanted <= matched


def test_package_data_ships_py_typed():
    assert (ROOT / "hybrid_node" / "py.typed").is_file()
    assert "py.typed" in _package_data()


def test_bundled_package_is_the_repository_one():
    bundled = ROOT / "hybrid_node" / "_julia" / "HybridNODE"
    assert (bundled / "Project.toml").read_bytes() == (ROOT / "Project.toml").read_bytes()
    for source in (ROOT / "julia").glob("*.jl"):
        assert (bundled / "src" / source.name).read_bytes() == source.read_bytes()


@pytest.mark.slow
def test_built_wheel_contains_the_julia_package(tmp_path):
    if importlib.util.find_spec("build") is None:
        pytest.skip("needs the `build` package")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "-o", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("*.whl"))  # built from the sdist, so the sdist is checked too
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "hybrid_node/py.typed" in names
        manifest = json.loads(zf.read("hybrid_node/juliapkg.json"))
        entry = manifest["packages"]["HybridNODE"]
        pkg_dir = PurePosixPath("hybrid_node") / entry["path"]
        assert str(pkg_dir / "Project.toml") in names
        assert str(pkg_dir / "src" / "HybridNODE.jl") in names
        for source in (ROOT / "julia").glob("*.jl"):
            assert zf.read(str(pkg_dir / "src" / source.name)) == source.read_bytes()
        assert zf.read(str(pkg_dir / "Project.toml")) == (ROOT / "Project.toml").read_bytes()


def test_julia_extra_does_not_pull_in_diffeqpy():
    # diffeqpy is never imported, and its juliapkg.json would merge DifferentialEquations,
    # ModelingToolkit and Sundials into the Julia project HybridNODE runs in (issue 20).
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = config["project"]["optional-dependencies"]["julia"]
    assert not any(req.lower().startswith("diffeqpy") for req in extra)
    assert any(req.startswith("juliacall") for req in extra)
    assert "diffeqpy is not a dependency" in (ROOT / "docs" / "julia.md").read_text()
