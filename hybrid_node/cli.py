"""The ``hybrid-node`` command: one subcommand per experiment or tool.

Each subcommand lives in its own module, which defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; modules are imported only when their subcommand runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

SUBCOMMANDS = {
    "demo": "hybrid_node.experiments.spiral_demo",
    "mnist": "hybrid_node.experiments.mnist",
    "nfe": "hybrid_node.experiments.nfe",
    "anode": "hybrid_node.experiments.anode",
    "cnf": "hybrid_node.experiments.cnf",
    "spirals": "hybrid_node.experiments.spirals",
    "doctor": "hybrid_node.backends.doctor",
    "julia-setup": "hybrid_node.backends.julia_setup",
}


def _available() -> dict:
    found = {}
    for name, path in SUBCOMMANDS.items():
        try:
            found[name] = importlib.import_module(path)
        except ModuleNotFoundError as e:
            if e.name != path:  # a real missing dependency inside the module: surface it
                raise
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid-node", description="Neural ODE experiments and tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in _available().items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
