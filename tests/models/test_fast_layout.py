"""The fast paths depend on the reference modules only for type hints: no run-time import back into densenet."""

import ast
from pathlib import Path

import sedensenet.models

MODELS = Path(sedensenet.models.__file__).parent


def _runtime_imports(path: Path) -> set[str]:
    """Modules imported by ``path`` outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hidden = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_fast_modules_never_import_densenet_at_run_time() -> None:
    files = sorted(MODELS.glob("fast*.py"))
    assert [f.name for f in files] == ["fast.py", "fast_infer.py", "fast_memeff.py", "fast_norm.py", "fast_storage.py"]
    for path in files:
        imports = _runtime_imports(path)
        assert not any(name.startswith("sedensenet.models.densenet") for name in imports), (path.name, sorted(imports))
    assert "sedensenet.models.densenet" in {  # the check sees the TYPE_CHECKING import when it is not hidden
        n.module for n in ast.walk(ast.parse((MODELS / "fast.py").read_text(encoding="utf-8")))
        if isinstance(n, ast.ImportFrom)
    }  # fmt: skip
