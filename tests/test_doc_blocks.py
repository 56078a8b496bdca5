"""Every ```python block of README.md and docs/ runs as written, each alone in a fresh process.

A block indented under a list item counts too (its code is dedented). A block that cannot run here is
marked in the Markdown by an HTML comment on the line before its fence:
``<!-- skip: needs Julia -->`` skips it with that reason; ``<!-- slow -->`` runs it only with ``-m slow``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 180  # a budget per block on a loaded 2-core machine; the default blocks take seconds each
_FENCE = re.compile(r"^\s*```python\s*$")  # indented too: a block inside a list item
_MARK = re.compile(r"^<!--\s*(skip|slow)\s*(?::\s*(.*?))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None
    slow: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file with the skip/slow marks on the lines just above them."""
    lines = path.read_text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if _FENCE.match(lines[i]):
            start = i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            skip, slow = None, False
            k = start - 1
            while k >= 0 and (m := _MARK.match(lines[k].strip())):
                if m.group(1) == "skip":
                    skip = m.group(2) or "marked skip"
                else:
                    slow = True
                k -= 1
            code = textwrap.dedent("\n".join(lines[start + 1 : j]) + "\n")
            blocks.append(Block(path, start + 1, code, skip, slow))
            i = j + 1
        else:
            i += 1
    return blocks


def _all_blocks() -> list[Block]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [b for f in files for b in python_blocks(f)]


def _param(block: Block):
    marks = [pytest.mark.slow] if block.slow else []
    if block.skip:
        marks.append(pytest.mark.skip(reason=block.skip))
    return pytest.param(block, id=block.id, marks=marks)


@pytest.mark.parametrize("block", [_param(b) for b in _all_blocks()])
def test_code_block_runs(block: Block, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "HYBRID_NODE_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    # a warning raised at a line of the block itself (e.g. float() of a tensor that requires grad) is an
    # example teaching a habit torch complains about: fail; warnings from inside libraries stay warnings
    env["PYTHONWARNINGS"] = "error::UserWarning:__main__"
    script = tmp_path / "block.py"
    script.write_text(block.code)
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id} ran past {TIMEOUT_S} s; mark it <!-- slow --> or make it smaller")
    assert proc.returncode == 0, f"{block.id} failed:\n{proc.stderr[-3000:]}"


def test_marks_are_parsed(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n<!-- skip: needs Julia -->\n```python\nimport juliacall\n```\n\n<!-- slow -->\n```python\nx = 1\n```\n"
    )
    skipped, slow = python_blocks(page)
    assert (skipped.skip, skipped.slow, skipped.code, skipped.line) == ("needs Julia", False, "import juliacall\n", 3)
    assert (slow.skip, slow.slow, slow.code) == (None, True, "x = 1\n")


def test_blocks_in_list_items_are_found_and_dedented(tmp_path: Path):
    """A block indented under a list item was not collected at all, so it was never run."""
    page = tmp_path / "page.md"
    page.write_text("* item\n\n  <!-- slow -->\n  ```python\n  if True:\n      x = 1\n  ```\n")
    (block,) = python_blocks(page)
    assert (block.code, block.slow, block.line) == ("if True:\n    x = 1\n", True, 4)
