"""The ``hybrid-node`` command: one subcommand per experiment or tool.

Each subcommand lives in its own module, which defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Only the module of the subcommand that runs is imported, so ``--help`` and
light subcommands start fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ._errors import HybridNodeError

#: subcommand -> (module, one-line summary shown by ``hybrid-node --help``)
SUBCOMMANDS = {
    "demo": ("hybrid_node.experiments.spiral_demo", "train a Neural ODE on a 2-D spiral (the classic demo)"),
    "mnist": ("hybrid_node.experiments.mnist", "ODE-Net vs ResNet vs RK-Net on MNIST (paper's Table 1)"),
    "nfe": ("hybrid_node.experiments.nfe", "error, time and NFE vs tolerance and training (paper's Figure 3)"),
    "anode": ("hybrid_node.experiments.anode", "plain vs augmented Neural ODEs (Dupont et al. 2019)"),
    "cnf": ("hybrid_node.experiments.cnf", "continuous normalizing flows on toy 2-D densities"),
    "spirals": ("hybrid_node.experiments.spirals", "latent ODE vs RNNs on irregular spirals (paper's Table 2)"),
    "hnn": ("hybrid_node.experiments.hnn", "Hamiltonian NN vs baseline on mass-spring and pendulum (Greydanus 2019)"),
    "sde": ("hybrid_node.experiments.latent_sde", "latent SDE on noisy Ornstein-Uhlenbeck paths (Li et al. 2020)"),
    "doctor": ("hybrid_node.commands.doctor", "show which backends work on this machine and why not"),
    "julia-setup": ("hybrid_node.julia.setup", "install and precompile the Julia backend"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; the options of ``command`` (if given) are loaded from its module."""
    parser = argparse.ArgumentParser(prog="hybrid-node", description="Neural ODE experiments and tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (path, summary) in SUBCOMMANDS.items():
        if name == command:
            module = importlib.import_module(path)
            p = sub.add_parser(name, help=summary, description=module.HELP)
            module.add_arguments(p)
            if path.startswith("hybrid_node.experiments.") and "--no-progress" not in p._option_string_actions:
                # every experiment takes --no-progress, also those whose module has no switch of its own
                p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
            p.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hybrid-node`` with ``argv`` (default: the process arguments).

    Args:
        argv: the arguments after the program name.

    Returns:
        The exit status: the subcommand's, or 2 when it stopped with a :class:`HybridNodeError` (bad
        input, a damaged checkpoint, nothing to resume, ...), whose message is printed to stderr
        without a traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
    if getattr(args, "no_progress", False):  # only the experiments define the flag
        from .experiments._progress import NO_PROGRESS_ENV  # imported only when asked: --help stays light

        os.environ[NO_PROGRESS_ENV] = "1"
    try:
        return int(args._run(args) or 0)
    except HybridNodeError as e:
        print(f"hybrid-node {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
