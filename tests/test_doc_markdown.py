"""The Markdown of README.md and docs/ renders as the structure it is written as (mkdocs' Python-Markdown).

Python-Markdown differs from GitHub's renderer in two ways the pages ran into: a list needs a blank
line after the paragraph before it (otherwise its items are the paragraph's text, "- " included), and
a block inside a list item (a fenced code block) needs four spaces of indentation (with two, the list
ends before it and the next item becomes literal text after the block).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

markdown = pytest.importorskip("markdown")
pytest.importorskip("pymdownx")

ROOT = Path(__file__).resolve().parent.parent
#: mkdocs.yml's markdown_extensions that shape blocks (toc only adds anchors)
EXTENSIONS = ["tables", "admonition", "pymdownx.highlight", "pymdownx.superfences"]
_PRE = re.compile(r"<pre.*?</pre>", re.S)
_LITERAL_ITEM = re.compile(r"^(?:<p>)?(?:[-*]|\d+\.) \S", re.M)


def literal_list_items(text: str) -> list[str]:
    """Lines of the rendered ``text`` (code blocks left out) that start with a list marker: items that
    did not become a list."""
    html = _PRE.sub("", markdown.markdown(text, extensions=EXTENSIONS))
    return [m.group(0) for m in _LITERAL_ITEM.finditer(html)]


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))], ids=lambda p: str(p.relative_to(ROOT))
)
def test_lists_render_as_lists(page: Path):
    found = literal_list_items(page.read_text())
    assert not found, f"{page.relative_to(ROOT)}: list items rendered as text: {found[:5]}"


def test_the_check_sees_both_mistakes():
    after_paragraph = "Remarks:\n- one\n- two\n"
    two_space_fence = "* item\n\n  ```python\n  x = 1\n  ```\n* next item\n"
    assert literal_list_items(after_paragraph) and literal_list_items(two_space_fence)
    assert not literal_list_items("Remarks:\n\n- one\n- two\n")
    assert not literal_list_items("* item\n\n    ```python\n    x = 1\n    ```\n\n* next item\n")
