"""The data package knows nothing of models, training, reports or the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import sedensenet.data

FORBIDDEN = ("sedensenet.models", "sedensenet.engine", "sedensenet.reports", "sedensenet.cli", "sedensenet.api")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_data_does_not_import_against_the_flow() -> None:
    files = sorted(Path(sedensenet.data.__file__).parent.rglob("*.py"))
    assert len(files) >= 4
    bad = {
        f"{path.name}: {name}"
        for path in files
        for name in imported_modules(path)
        if name.startswith(FORBIDDEN) or name in ("sedensenet", "sedensenet.models")
    }
    assert bad == set()
