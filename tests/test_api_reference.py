"""docs/api.md says it lists every public name of ``hybrid_node`` and ``hybrid_node.nn``: check it does."""

from __future__ import annotations

import importlib
import re
import types
from pathlib import Path

import hybrid_node
import hybrid_node.nn

API_MD = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def _documented() -> set[str]:
    text = API_MD.read_text()
    # "::: hybrid_node.X" directives, plus names given their own heading (METHODS is a mapping, not an object)
    return set(re.findall(r"^::: (hybrid_node\.[\w.]+)$", text, flags=re.M)) | {
        f"hybrid_node.{name}" for name in re.findall(r"^### `(\w+)`$", text, flags=re.M)
    }


def test_every_public_name_has_a_reference_entry():
    public = {f"hybrid_node.{name}" for name in hybrid_node.__all__ if name != "nn"}
    public |= {
        f"hybrid_node.nn.{name}"
        for name in dir(hybrid_node.nn)
        if not name.startswith("_") and not isinstance(getattr(hybrid_node.nn, name), types.ModuleType)
    }
    missing = sorted(public - _documented())
    assert not missing, f"docs/api.md lacks entries for {missing}"


def test_every_reference_entry_names_a_public_object():
    # a stale entry would break the generated page; entries of submodules (the page's last section)
    # name their module in full
    for dotted in _documented():
        module, _, name = dotted.rpartition(".")
        owner = importlib.import_module(module)
        assert hasattr(owner, name) and not name.startswith("_"), dotted


def test_the_submodule_names_the_models_page_uses_have_entries():
    # docs/models.md imports these by their modules; a reader looks them up on the reference page
    # (hybrid_node.data has no __init__.py, which mkdocstrings cannot collect from: its page describes it)
    models_page = (API_MD.parent / "models.md").read_text()
    used = set(re.findall(r"from (hybrid_node\.(?:irregular|nn\.\w+)) import (\w+)", models_page))
    used = {f"{module}.{name}" for module, name in used if module != "hybrid_node.nn"}
    assert used, "the pattern found no imports on docs/models.md"
    missing = sorted(used - _documented())
    assert not missing, f"docs/api.md lacks entries for {missing}"
