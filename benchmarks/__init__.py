"""Benchmarks of hybrid_node against its peers (docs/performance.md).

They time solves once the compiled graphs are in use, and a compilation apart from them, so
``compile=True`` compiles in the process here (``HYBRID_NODE_COMPILER``, unless set): with the default
worker a graph's first solve would run it uncompiled and the second wait for it, inside the timed
calls. ``benchmarks.first_call`` measures each compiler explicitly.
"""

import os

os.environ.setdefault("HYBRID_NODE_COMPILER", "in_process")
