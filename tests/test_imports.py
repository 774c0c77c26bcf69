"""No lazy import that buys nothing: a function never imports from a module its file already imports at the top.

An import inside a function is for a heavy or optional dependency, or to keep the layers acyclic; when the module
is already imported at the top (at run time, not only under ``if TYPE_CHECKING:``), the inner import only hides
the dependency and repeats it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import sedensenet

PACKAGE = Path(sedensenet.__file__).parent

KNOWN_REPEATS: set[str] = set()
"""Repeats allowed for now: none (the last went when issue 24's rewrites merged); the set may only shrink."""


def _module_of(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The absolute module names an import statement reads (relative imports resolved against ``package``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not node.level:
        return [node.module or ""]
    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
    return [".".join([*parts, node.module] if node.module else parts)]


def _bound_names(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.asname or alias.name.split(".")[0] for alias in node.names}
    return {alias.asname or alias.name for alias in node.names}


def _top_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module level, inside top-level ``if``/``try`` blocks, not
    under ``if TYPE_CHECKING:``."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        stmt = pending.pop()
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            yield stmt
        elif isinstance(stmt, ast.If) and not ast.unparse(stmt.test).endswith("TYPE_CHECKING"):
            pending.extend([*stmt.body, *stmt.orelse])
        elif isinstance(stmt, ast.Try):
            pending.extend([*stmt.body, *stmt.orelse, *stmt.finalbody])
            pending.extend(s for handler in stmt.handlers for s in handler.body)


def repeated_imports(path: Path, *, root: Path, package: str) -> list[str]:
    """``file: statement`` for every import inside a function of ``path`` that reads a module, or binds a name,
    the file already imports at the top."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_modules: set[str] = set()
    top_names: set[str] = set()
    for node in _top_level_imports(tree):
        top_modules.update(_module_of(node, package))
        top_names.update(_bound_names(node))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import | ast.ImportFrom) and (
                set(_module_of(node, package)) & top_modules or _bound_names(node) & top_names
            ):
                found.append(f"{path.relative_to(root).as_posix()}: {ast.unparse(node)}")
    return found


def _package_of(path: Path) -> str:
    parts = ("sedensenet", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1])


def all_repeated_imports() -> set[str]:
    return {
        site
        for path in sorted(PACKAGE.rglob("*.py"))
        for site in repeated_imports(path, root=PACKAGE, package=_package_of(path))
    }


def test_no_function_reimports_what_its_module_imports_at_the_top() -> None:
    assert sorted(all_repeated_imports() - KNOWN_REPEATS) == []


def test_known_repeats_only_shrink() -> None:
    """An entry of KNOWN_REPEATS that no longer occurs must leave the set, so it cannot hide a new one later."""
    assert sorted(KNOWN_REPEATS - all_repeated_imports()) == []


def test_the_check_sees_a_repeat(tmp_path: Path) -> None:
    """The checker itself: a repeat (by module or by name) is found; a lazy import of something new, a relative
    import of another module and a TYPE_CHECKING-only import are not."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import json\n"
        "from sedensenet.config import TrainConfig\n"
        "from .sibling import helper\n"
        "if TYPE_CHECKING:\n"
        "    from sedensenet.data import Sample\n"
        "def f():\n"
        "    import json\n"
        "    from sedensenet.config import load_yaml\n"
        "    from sedensenet.data import Sample\n"
        "    from .other import thing\n"
        "    from sedensenet.sibling import helper as h\n"
        "    import numpy\n"
        "async def g():\n"
        "    from elsewhere import TrainConfig\n",
        encoding="utf-8",
    )
    assert repeated_imports(source, root=tmp_path, package="sedensenet") == [
        "mod.py: import json",
        "mod.py: from sedensenet.config import load_yaml",
        "mod.py: from sedensenet.sibling import helper as h",
        "mod.py: from elsewhere import TrainConfig",
    ]


def test_no_module_imports_a_private_name_of_another() -> None:
    """A leading underscore means "this module's own": a helper another module needs is public where it lives
    (reports/figures.py holds what the plot modules share)."""
    private = sorted(
        f"{path.relative_to(PACKAGE).as_posix()}: {ast.unparse(node)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        and (node.level or (node.module or "").startswith("sedensenet"))
        and any(alias.name.startswith("_") and not alias.name.startswith("__") for alias in node.names)
    )
    assert private == []
