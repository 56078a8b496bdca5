"""Run torchsde's own test suite against hybrid_node, through a ``torchsde`` shim.

Usage::

    python -m benchmarks.torchsde_suite --tests /path/to/torchsde/tests
    python -m benchmarks.torchsde_suite --tests DIR --failures failures.md --json results.json
    python -m benchmarks.torchsde_suite --tests DIR --reference    # the installed torchsde, no shim

Nothing is fetched: ``--tests`` is a local copy of the ``tests/`` folder of the torchsde repository
(``test_sdeint.py``, ``test_adjoint.py``, ``test_brownian_*.py``, ``problems.py``, ``utils.py`` and its
``__init__.py``: the test files import their helpers relatively). None of it is part of this repository.

What it does, in a temporary directory (the same machinery as :mod:`benchmarks.torchdiffeq_suite`):

* writes a package named ``torchsde`` whose ``__init__`` re-exports torchsde's public API (the names of
  ``torchsde/__init__.py`` and its public submodules ``settings`` and ``types``) from hybrid_node: from
  ``hybrid_node`` itself where it has the name, else from ``hybrid_node.sde``. A public name hybrid_node
  lacks is left out (and listed); it is not written into the shim. The test files are scanned for every
  ``torchsde`` name they use; a test file that uses a private one (``torchsde._brownian``,
  ``torchsde._core``) is not run and is listed as "not public API";
* copies the tests folder (as the package ``tests``) and runs pytest on its ``test_*.py`` files in a
  subprocess whose ``sys.path`` starts with the shim (so an installed torchsde is shadowed) and then this
  repository's root (so the working tree's hybrid_node is tested). torchsde's test files drop
  ``sys.path[0]`` on import ("so that we always import the installed library"): that entry is the tests'
  own folder, so the shim stays in front;
* records every pytest report through the torchdiffeq harness's plugin (which also checks where
  ``torchsde`` and ``hybrid_node`` came from), enforcing ``--timeout`` per test with SIGALRM.

torchsde's tests are plain pytest functions, most of them parametrized: each parametrized case is one
"test function" in the counts (they have no subtests). ``--failures FILE`` writes every failure grouped by
its first error line with the digits masked; ``--json FILE`` writes everything in machine-readable form.

Exit status: 0 when the suite ran (whatever its failures), 2 when the harness could not run it (no test
files, nothing collected, the shim not in use, pytest crashed).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.torchdiffeq_suite import _PLUGIN as _TORCHDIFFEQ_PLUGIN
from benchmarks.torchdiffeq_suite import (
    add_run_arguments,
    finish,
    pytest_command,
    run_and_print_table,
    run_and_summarise,
    scan_from_imports,
    start_run,
)
from benchmarks.torchdiffeq_suite import check as check_run
from benchmarks.torchdiffeq_suite import format_table as format_table  # re-exported: the report's table
from benchmarks.torchdiffeq_suite import title_of as run_title

REPO_ROOT = Path(__file__).resolve().parent.parent

# torchsde 0.2.6's public API: the names of torchsde/__init__.py, and its submodules without a leading
# underscore (the tests import enums from ``settings`` and type aliases from ``types``).
PUBLIC_API = (
    "BaseBrownian",
    "BrownianInterval",
    "BrownianPath",
    "BrownianTree",
    "ReverseBrownian",
    "brownian_interval_like",
    "sdeint",
    "sdeint_adjoint",
    "BaseSDE",
    "SDEIto",
    "SDEStratonovich",
)
PUBLIC_MODULES = ("settings", "types")

_SHIM = '''\
"""torchsde's public API served by hybrid_node (written by benchmarks.torchsde_suite; not torchsde)."""

import importlib
import sys

{imports}
for _name in {modules!r}:  # ``import torchsde.settings`` finds the module hybrid_node provides
    sys.modules[__name__ + "." + _name] = importlib.import_module("hybrid_node.sde." + _name)
    globals()[_name] = sys.modules[__name__ + "." + _name]

__version__ = "hybrid_node-shim"
HYBRID_NODE_SHIM = True
'''

# The torchdiffeq harness's plugin, with its environment variables and the module it checks renamed.
_PLUGIN = _TORCHDIFFEQ_PLUGIN.replace("TORCHDIFFEQ_SUITE", "TORCHSDE_SUITE").replace("torchdiffeq", "torchsde")
assert "torchdiffeq" not in _PLUGIN.lower() and '"torchsde", "hybrid_node", "torch"' in _PLUGIN

_PYTEST_INI = """\
[pytest]
python_files = test_*.py
python_classes = Test*
python_functions = test*
addopts =
"""


def scan_torchsde_names(files):
    """Every ``torchsde`` attribute or submodule the files use: {name: [file, ...]}."""
    used = collections.defaultdict(set)
    for path in files:
        text = path.read_text()
        for match in re.finditer(r"\btorchsde((?:\.\w+)+)", text):
            used[match.group(1)[1:]].add(path.name)
        for name in scan_from_imports(text, "torchsde"):
            used[name].add(path.name)
    return {name: sorted(files) for name, files in sorted(used.items())}


def _is_private(name):
    return any(part.startswith("_") for part in name.split("."))


def _shim_sources():
    """{public name: "hybrid_node" or "hybrid_node.sde"} for the names hybrid_node provides, and the
    public submodules ``hybrid_node.sde`` has (imported in a subprocess: this process stays torch-free)."""
    code = (
        "import importlib, json, hybrid_node, hybrid_node.sde as sde\n"
        f"names = {{n: 'hybrid_node' if hasattr(hybrid_node, n) else 'hybrid_node.sde' for n in {PUBLIC_API!r}\n"
        "         if hasattr(hybrid_node, n) or hasattr(sde, n)}\n"
        "mods = []\n"
        f"for m in {PUBLIC_MODULES!r}:\n"
        "    try:\n"
        "        importlib.import_module('hybrid_node.sde.' + m)\n"
        "        mods.append(m)\n"
        "    except ImportError:\n"
        "        pass\n"
        "print(json.dumps([names, mods]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    names, modules = json.loads(out.stdout.strip().splitlines()[-1])
    return names, modules


def _write_shim(directory, names, modules):
    by_source = collections.defaultdict(list)
    for name, source in names.items():
        by_source[source].append(name)
    imports = "\n".join(f"from {source} import {', '.join(sorted(ns))}" for source, ns in sorted(by_source.items()))
    shim = directory / "torchsde"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text(_SHIM.format(imports=imports, modules=tuple(modules)))


def run_suite(tests, **options):
    """Run the suite; returns ``(result, info)`` where ``info`` has the shim, the names and the log path.

    Args:
        tests: torchsde's tests folder.
        options: see :class:`benchmarks.torchdiffeq_suite.RunOptions`.
    """
    run = start_run("torchsde", tests, "test_*.py", _PLUGIN, options)
    tmp, reference = run.tmp, run.options.reference
    # the test files import their helpers relatively (``from . import problems``): the copy is a package
    (run.copied / "__init__.py").touch()
    (tmp / "pytest.ini").write_text(_PYTEST_INI)

    used = scan_torchsde_names(sorted(run.tests.glob("*.py")))
    not_public = {name: files for name, files in used.items() if _is_private(name)}
    # a test file reaching into torchsde's private modules tests torchsde's internals, not its API
    excluded = sorted({f for files in not_public.values() for f in files if f.startswith("test_")})
    path = [str(run.plugin_dir)]
    names, modules = {}, []
    if not reference:
        names, modules = _shim_sources()
        _write_shim(tmp / "shim", names, modules)
        path += [str(tmp / "shim"), str(REPO_ROOT)]
    public = set(PUBLIC_API) | set(PUBLIC_MODULES)
    missing = [n for n in PUBLIC_API + PUBLIC_MODULES if n not in names and n not in modules] if not reference else []
    missing_used = {name: files for name, files in used.items() if name.split(".")[0] in missing}
    other = {name: files for name, files in used.items() if name.split(".")[0] not in public and not _is_private(name)}

    cmd = pytest_command(
        run,
        "tests",
        ini=tmp / "pytest.ini",
        rootdir=tmp,
        # a file that cannot import (a missing name) must not stop the rest
        options=("--continue-on-collection-errors",),
        after=[arg for name in excluded for arg in ("--ignore", str(run.copied / name))],
    )
    extra = {
        "shim_names": names,
        "shim_modules": modules,
        "missing_public_api": missing,
        "missing_public_api_used": missing_used,
        "torchsde_names_used": used,
        "not_public_api": not_public,
        "excluded_files": excluded,
        "unknown_names": other,
    }
    return run_and_summarise(run, cmd, cwd=tmp, path=path, strip=tmp, extra=extra)


def check(result, info):
    """Reasons the run does not count (an empty list when it does); files that fail to import count."""
    return check_run(result, info, "torchsde", collect_errors_count=True)


def title_of(result, info):
    return run_title(result, info, "torchsde")


def format_names(info):
    """What the shim serves, what it lacks and what was not run, for the report."""
    lines = []
    if not info["reference"]:
        served = [f"{n} ({src})" for n, src in info["shim_names"].items()]
        served += [f"{m} (hybrid_node.sde.{m})" for m in info["shim_modules"]]
        lines.append(f"shim serves: {', '.join(served) or 'nothing'}")
        if info["missing_public_api"]:
            lines.append(f"public API hybrid_node lacks (not in the shim): {', '.join(info['missing_public_api'])}")
        for name, files in info["missing_public_api_used"].items():
            lines.append(f"  torchsde.{name} used by {', '.join(files)}")
    for name, files in info["not_public_api"].items():
        lines.append(f"not public API: torchsde.{name} ({', '.join(files)})")
    for name in info["excluded_files"]:
        lines.append(f"not run (reaches into torchsde's private modules): {name}")
    for name, files in info["unknown_names"].items():
        lines.append(f"not torchsde's API at all: torchsde.{name} ({', '.join(files)})")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, "torchsde", "seconds a test may run before it is interrupted")
    args = parser.parse_args(argv)
    if args.tests is None:
        parser.error("--tests DIR is needed (a local copy of torchsde's tests/ folder)")
    ran = run_and_print_table(args, "torchsde", run_suite, title_of)
    if ran is None:
        return 2
    result, info, title = ran
    print(format_names(info))
    return finish(args, result, info, title, check(result, info))


if __name__ == "__main__":
    sys.exit(main())
