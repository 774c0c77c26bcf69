"""No function over 60 lines where the house is meant to be read top to bottom: cli.py, api.py, engine/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sedensenet"
LIMIT = 60
CHECKED = [SRC / "cli.py", SRC / "api.py", *sorted((SRC / "engine").glob("*.py"))]


def long_functions(path: Path, limit: int = LIMIT) -> list[str]:
    """Each function (or method) in ``path`` longer than ``limit`` lines, decorators and docstring included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = path.relative_to(SRC) if path.is_relative_to(SRC) else path.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - start + 1  # type: ignore[operator]
            if length > limit:
                found.append(f"{name}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(SRC)))
def test_no_function_over_60_lines(path: Path) -> None:
    assert long_functions(path) == []


def test_the_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    module = tmp_path / "m.py"
    module.write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n", encoding="utf-8")
    assert long_functions(module) == [f"m.py:5 long ({LIMIT + 1} lines)"]
