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
