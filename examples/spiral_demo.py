"""The classic Neural ODE demo from Python: learn dy/dt = (y^3) A from one noisy spiral trajectory.

The same as `hybrid-node demo`; run: python examples/spiral_demo.py [--iters N] [--out DIR]
"""

import argparse

from hybrid_node import HybridNodeError
from hybrid_node.experiments import spiral_demo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=spiral_demo.HELP)
    spiral_demo.add_arguments(parser)
    args = parser.parse_args()
    try:
        status = spiral_demo.run(args)
    except HybridNodeError as e:  # settings that do not fit together: one line and status 2, as the command
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    raise SystemExit(status)
