"""The benchmark matrix's cells and the table generated from its raw results (no timing is run here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def modules():  # noqa: ANN201 - the two benchmark scripts, imported from benchmarks/
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _worker
        import matrix
        import matrix_table

        yield matrix, matrix_table, _worker
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_matrix_covers_every_family_precision_and_work(modules) -> None:  # noqa: ANN001
    matrix, _, _ = modules
    ids = [c[0] for c in matrix.cells(quick=False, only="")]
    assert len(ids) == len(set(ids)) == 6 * 2 * 3  # 6 family/size pairs x {float32, bf16} x 3 kinds of work
    assert "bc100 64/32 bf16 train memory-efficient" in ids and "201 224/32 float32 infer" in ids
    assert [c[0] for c in matrix.cells(quick=True, only="")] == [
        "bc100 32/64 bf16 train", "121 128/32 bf16 train", "121 224/32 bf16 infer",
    ]  # fmt: skip


def test_twin_has_our_topology_and_parameter_count(modules) -> None:  # noqa: ANN001
    _, _, worker = modules
    from sedensenet import create_model
    from sedensenet.models.densenet import count_parameters

    for name in ("densenet_bc_100", "densenet121"):
        twin = worker.twin(name, num_classes=10, memory_efficient=False)
        assert count_parameters(twin) == count_parameters(create_model(name, num_classes=10))
    assert count_parameters(worker.twin("densenet_bc_100", num_classes=10, memory_efficient=False)) == 769_162


def test_table_is_generated_from_raw_results(modules, tmp_path: Path) -> None:  # noqa: ANN001
    _, table, _ = modules

    def row(name: str, ratios: list[float], rate: float, mem: float) -> dict:
        return {"config": name, "ratios": ratios, "ratio": sorted(ratios)[1], "images_per_s": rate,
                "memory_vs_twin": mem, "error": None}  # fmt: skip

    raw = {
        "started": "2026-12-07T0700", "machine": "Test CPU, 2 cores", "threads": 2, "clock": "wall", "steps": 3,
        "command": "python benchmarks/matrix.py --quick", "wall_s": 90.0,
        "cells": [{"cell": "bc100 32/64 bf16 train", "family": "DenseNet-BC-100", "size": 32, "batch": 64,
                   "precision": "bf16", "work": "train", "loadavg_before": ["1.0", "1.1", "1.2"],
                   "rows": [row("twin", [1, 1, 1], 60.0, 1.0), row("ours", [1.3, 1.4, 1.5], 84.0, 0.97),
                            row("se", [1.2, 1.33, 1.4], 80.0, 0.98)]}],
    }  # fmt: skip
    path = tmp_path / "matrix-test.json"
    path.write_text(json.dumps(raw))
    snippet = tmp_path / "snippet.md"
    assert table.main([str(path), "--snippet", str(snippet)]) == 0
    text = path.with_suffix(".md").read_text()
    assert "Test CPU, 2 cores" in text and "wall clock" in text
    line = text.splitlines()[-1]
    assert line.startswith("| DenseNet-BC-100 | 32/64 | bf16 | train | 60.0 | 84.0 | **1.40x** (1.30-1.50) |")
    assert "**1.33x** (1.20-1.40) | +5% | 0.97x / 0.98x |" in line  # SE cost: 1 - 1.33 / 1.40
    assert snippet.read_text().endswith(text)


def test_compact_table_groups_the_works_of_one_family_size_and_precision(modules, tmp_path: Path) -> None:  # noqa: ANN001
    _, table, _ = modules

    def row(ratio: float, mem: float) -> dict:
        return {"ratios": [ratio], "ratio": ratio, "memory_vs_twin": mem, "error": None}

    def cell(work: str, plain: float, se: float) -> dict:
        batch = 32 if work == "infer" else 16
        return {"family": "DenseNet-121", "size": 224, "precision": "bf16", "work": work, "batch": batch,
                "rows": [row(1.0, 1.0), row(plain, 0.8), row(se, 0.85)]}  # fmt: skip

    raw = {"started": "2026-12-07T1200", "machine": "Test CPU", "bf16_units": "avx512_bf16 (no AMX)", "threads": 1,
           "clock": "cpu", "steps": 5, "command": "python benchmarks/matrix.py",
           "cells": [cell("train", 1.5, 1.44), cell("infer", 3.0, 2.97)]}  # fmt: skip
    lines = table.compact_table([raw]).splitlines()
    assert lines[-1] == (
        "| DenseNet-121 | 224 (16/32) | bf16 | 1.50x / 1.44x | not measured | 3.00x / 2.97x | +4%, -, +1% "
        "| 0.80-0.85x |"
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{table.BEGIN} old.json -->\nstale\n{table.END}\nafter\n", encoding="utf-8")
    table.replace_readme_table(readme, [tmp_path / "matrix-new.json", tmp_path / "matrix-more.json"], [raw])
    text = readme.read_text(encoding="utf-8")
    assert "stale" not in text and text.startswith("intro\n") and text.endswith(f"{table.END}\nafter\n")
    assert f"{table.BEGIN} matrix-new.json + matrix-more.json;" in text and lines[-1] in text
    assert table.readme_raw_names(text) == ["matrix-new.json", "matrix-more.json"]


def test_readme_speed_table_is_the_one_its_raw_results_give(modules) -> None:  # noqa: ANN001
    """The README's matrix table names a committed raw file and equals what matrix_table.py makes of it: no
    figure in it was typed by hand, and each traces to a file and the command inside it."""
    _, table, _ = modules
    readme = (BENCHMARKS.parent / "README.md").read_text(encoding="utf-8")
    raws = [json.loads((BENCHMARKS / "results" / name).read_text()) for name in table.readme_raw_names(readme)]
    block = readme[readme.index(table.BEGIN) :].partition("\n")[2]
    assert block[: block.index(table.END)] == table.compact_table(raws)
