"""What a reader of the rendered book sees first, and what it may point to.

- The Colab install cell of every chapter (and of the harness notebook) is tagged ``hide-input``: the page
  opens on the narrative, not on pip.
- Every chapter of Part I ends its teaching material with a "Further reading" section.
- Nothing a reader gets (the book's pages, the notebooks, the package's docstrings) points at the developers'
  ``shared/`` notes, which are not part of the project: what a reader needs is in the book's own words
  ("Sources and what was verified").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))
INSTALL = 'importlib.util.find_spec("lamb") is None'


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


@pytest.mark.parametrize("path", CHAPTERS + [ROOT / "notebooks" / "training_harness.ipynb"],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_install_cell_is_hidden(path):
    install = [c for c in _cells(path) if c["cell_type"] == "code" and INSTALL in _source(c)]
    assert len(install) == 1, f"{path.name}: expected one install cell, found {len(install)}"
    assert "hide-input" in install[0].get("metadata", {}).get("tags", []), f"{path.name}: tag it hide-input"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_chapter_has_further_reading(path):
    headings = [line for c in _cells(path) if c["cell_type"] == "markdown"
                for line in _source(c).splitlines() if line.startswith("## ")]
    assert "## Further reading" in headings, f"{path.name}: no '## Further reading' section"
    entry = [c for c in _cells(path) if "## Further reading" in _source(c)][0]
    assert "{cite}" in _source(entry), f"{path.name}: the further reading cites nothing"


def _reader_facing_files():
    for pattern in ("book/*.md", "book/*.ipynb", "notebooks/*.ipynb", "lamb/**/*.py", "lamb/**/*.cpp", "lamb/**/*.toml", "_toc.yml"):
        yield from sorted(ROOT.glob(pattern))


def test_nothing_points_at_the_developers_notes():
    pointer = re.compile(r"shared/(paper|research|DESIGN)|\.\./shared/")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in _reader_facing_files()
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1) if pointer.search(line)]
    assert not hits, "the book and the package must not send readers to shared/: " + ", ".join(hits)
