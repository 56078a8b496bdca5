"""The user-facing pages name methods that ``odeint`` accepts: a misspelt name (``radau5`` for
``radauIIA5``) sends a reader to a ``ValueError``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hybrid_node as hn

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/getting-started.md", "docs/solvers.md", "docs/models.md"]
#: ``method="x"``-style arguments and options whose value is a method name
_METHOD_ARG = re.compile(r"""\b(?:method|adjoint_method|stiff_method)\s*=\s*["'](\w+)["']""")
#: a code span shaped like a method name: letters then digits (rk4, gl4, rodas5p's stem, kvaerno5)
_METHOD_LIKE = re.compile(r"`([a-z]+\d+[a-z]?)`")
#: code spans of that shape that are no method: the names of time, step and state arguments
_NOT_METHODS = {"t0", "t1", "dt0", "y0", "y1"}


def method_names_on(text: str) -> set[str]:
    """The method names a page's text uses: in ``method=`` arguments and in name-shaped code spans."""
    found = set(_METHOD_ARG.findall(text)) | set(_METHOD_LIKE.findall(text))
    return found - _NOT_METHODS


@pytest.mark.parametrize("page", PAGES)
def test_pages_name_registered_methods(page):
    unknown = sorted(method_names_on((ROOT / page).read_text()) - set(hn.METHODS))
    assert not unknown, f"{page} names methods odeint does not have: {unknown}"


def test_the_check_sees_a_misspelt_name():
    assert method_names_on('`gl4` and `radau5`, method="rk45"') == {"gl4", "radau5", "rk45"}
    assert method_names_on("`t0`, `dt0`, `rk4`") == {"rk4"}
