"""reports reads results and writes files: it must not reach back into the engine or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import sedensenet.reports

FORBIDDEN = ("sedensenet.engine", "sedensenet.cli", "sedensenet.api", "matplotlib.pyplot", "torch")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_reports_imports_follow_the_flow() -> None:
    package = Path(sedensenet.reports.__file__).parent
    files = sorted(package.rglob("*.py"))
    assert files
    for path in files:
        for name in _imports(path):
            bad = [f for f in FORBIDDEN if name == f or name.startswith(f + ".")]
            assert not bad, f"{path.name} imports {name}"
