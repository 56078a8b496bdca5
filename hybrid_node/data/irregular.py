"""Old import path of :mod:`hybrid_node.irregular`, kept so that existing imports keep working."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("hybrid_node.irregular")
