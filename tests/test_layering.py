"""The house rules of DESIGN.md, checked on the source: data flows one way.

models imports nothing else of ours; data knows nothing of models; reports reads results and writes files
(no engine, CLI or torch, and never pyplot's global state); only cli.py parses argv. Every module has a layer
(:data:`LAYERS`) and imports only from its own layer or below, lazy imports inside functions included; the
import graph of the package has no cycle.
"""

from __future__ import annotations

import ast
import sys
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


LAYERS = [
    ("errors", "fileio", "columns", "config", "display"),
    ("models", "model_summary", ""),  # "": the package's __init__ (it exposes the models)
    ("data", "reports"),
    ("checkpoint", "inference", "keras_convert"),
    ("engine",),
    ("export", "explain", "quantize", "tracking", "mlflow_model"),
    ("api",),
    ("compare", "cv", "serve", "tune"),  # commands built on the API (compare, cv and tune train through api.train)
    ("cli", "__main__"),
]
"""The package's layers, lowest first: a module may import from its own layer and those below, never above."""


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def imported_modules(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Every name an import statement of ``path`` mentions (``module`` and ``module.name``), function bodies
    included; ``runtime_only`` leaves out imports under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if runtime_only:
        for node in ast.walk(tree):
            for block in ("body", "orelse"):
                stmts = getattr(node, block, None)
                if isinstance(stmts, list):
                    setattr(node, block, [s for s in stmts if not _type_checking_only(s)])
    names: set[str] = set()
    for node in ast.walk(tree):
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports at run time (``from pkg import sub`` counts as ``pkg.sub``)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = {n for n in imported_modules(path, runtime_only=True) if n in modules and n != name}
        # "from sedensenet.engine import session" names both the package and its submodule: keep the submodule
        graph[name] = {n for n in found if not any(m.startswith(n + ".") for m in found)}
    return graph


def layer_of(module: str) -> int:
    top = module.removeprefix("sedensenet").removeprefix(".").split(".")[0]
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module} has no layer: add it to LAYERS in {Path(__file__).name}")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    )


def test_every_module_imports_only_its_own_layer_or_below() -> None:
    graph = import_graph()
    assert len(graph) >= 30
    assert upward_imports(graph) == []


@pytest.mark.parametrize("upper", ["api", "cli", "export", "explain", "compare", "cv", "serve", "tracking", "tune"])
def test_the_engine_never_imports_the_layers_above_it(upper: str) -> None:
    forbidden = f"sedensenet.{upper}"
    bad = sorted(
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in (PACKAGE / "engine").rglob("*.py")
        for name in imported_modules(path)
        if name == forbidden or name.startswith(forbidden + ".")
    )
    assert bad == []


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles a depth-first walk of ``graph`` meets, each as a path that ends where it starts."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return cycles


def test_the_import_graph_has_no_cycle() -> None:
    assert find_cycles(import_graph()) == []


def test_the_checks_see_the_cycle_this_file_was_written_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "sedensenet"
    (package / "engine").mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "api.py").write_text("def f():\n    from sedensenet.engine import predictor\n", encoding="utf-8")
    (package / "engine" / "__init__.py").write_text("", encoding="utf-8")
    (package / "engine" / "predictor.py").write_text("def g():\n    from sedensenet.api import f\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    graph = import_graph()
    assert graph == {
        "sedensenet": set(),
        "sedensenet.api": {"sedensenet.engine.predictor"},
        "sedensenet.engine": set(),
        "sedensenet.engine.predictor": {"sedensenet.api"},
    }
    assert find_cycles(graph) == [["sedensenet.api", "sedensenet.engine.predictor", "sedensenet.api"]]
    assert upward_imports(graph) == ["sedensenet.engine.predictor (layer 4) imports sedensenet.api (layer 6)"]


def test_names_that_moved_down_stay_importable_from_their_old_homes() -> None:
    from sedensenet import api, checkpoint, export, inference
    from sedensenet.engine import predictor

    assert api.resolve_checkpoint is checkpoint.resolve_checkpoint
    assert api.Prediction is predictor.Prediction
    assert api.probabilities_to_rows is predictor.probabilities_to_rows
    assert export.OnnxModel is inference.OnnxModel
    assert inference.BACKENDS == ("auto", "onnxruntime", "onnxruntime-int8", "eager", "compile", "reference")
