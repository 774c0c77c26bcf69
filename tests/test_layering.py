"""The house rules of DESIGN.md, checked on the source: data flows one way.

models imports nothing else of ours; data knows nothing of models; reports reads results and writes files
(no engine, CLI or torch, and never pyplot's global state); only cli.py parses argv.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sedensenet

PACKAGE = Path(sedensenet.__file__).parent
RULES = {
    "models": ("sedensenet.data", "sedensenet.engine", "sedensenet.reports", "sedensenet.cli", "sedensenet.api",
               "sedensenet.checkpoint", "sedensenet.config"),
    "data": ("sedensenet.models", "sedensenet.engine", "sedensenet.reports", "sedensenet.cli", "sedensenet.api"),
    "reports": ("sedensenet.engine", "sedensenet.cli", "sedensenet.api", "matplotlib.pyplot", "torch"),
}  # fmt: skip


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer", sorted(RULES))
def test_imports_follow_the_flow(layer: str) -> None:
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert len(files) >= 3
    bad = sorted(
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in files
        for name in imported_modules(path)
        for forbidden in RULES[layer]
        if name == forbidden or name.startswith(forbidden + ".")
    )
    assert bad == []


def test_only_the_cli_parses_arguments() -> None:
    users = sorted(p.name for p in PACKAGE.rglob("*.py") if "argparse" in imported_modules(p))
    assert users == ["cli.py"]
