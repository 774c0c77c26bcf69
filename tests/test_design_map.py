"""docs/design.md's module map and the package tree agree: one line per module, no line for a module that is gone.

A map line is a list item that starts with the module's path in backticks, relative to ``src/sedensenet``:
``- `data/images.py`: ...``. A sub-package's ``__init__.py`` needs none (its folder's heading says what the
folder owns); a path ending in ``/`` names a folder of package data (``serve/static/``), which must exist.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import sedensenet

PACKAGE = Path(sedensenet.__file__).parent
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"
ENTRY = re.compile(r"^- `([^`]+)`", re.MULTILINE)


def map_entries(text: str) -> list[str]:
    """The paths the ``## Module map`` section of ``text`` lists, in order, repeats kept."""
    _, found, rest = text.partition("\n## Module map\n")
    assert found, "docs/design.md has no '## Module map' section"
    section = rest.split("\n## ", 1)[0]
    return ENTRY.findall(section)


def package_modules() -> set[str]:
    return {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if not (path.name == "__init__.py" and path.parent != PACKAGE)
    }


def test_every_module_has_exactly_one_map_line() -> None:
    counts = collections.Counter(map_entries(DESIGN.read_text(encoding="utf-8")))
    assert sorted(m for m in package_modules() if counts[m] != 1) == []


def test_every_map_line_names_what_exists() -> None:
    entries = map_entries(DESIGN.read_text(encoding="utf-8"))
    folders = [e for e in entries if e.endswith("/")]
    assert sorted(e for e in entries if not e.endswith("/") and e not in package_modules()) == []
    assert [f for f in folders if not (PACKAGE / f).is_dir() or not any((PACKAGE / f).iterdir())] == []


def test_the_map_reader_sees_repeats_and_only_its_section() -> None:
    text = (
        "# Notes\n- `ignored.py`: before the map\n\n## Module map\n\n**Base**\n- `a.py`: one\n  - `nested.py` is"
        " not an entry\n- `sub/b.py`: two\n- `a.py`: again\n- `static/`: assets\n\n## Later\n- `c.py`: after\n"
    )
    assert map_entries(text) == ["a.py", "sub/b.py", "a.py", "static/"]
