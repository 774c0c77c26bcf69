"""`check-data` on a multi-label manifest: label counts per split, co-occurrence, images with no label and ignored
entries, in the JSON and Markdown reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sedensenet.cli import main


def test_check_data_reports_labels_cooccurrence_no_label_and_ignored(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    rows = [  # image, split, 积液 (effusion), mass, edema: 1 present, 0 absent, -1 uncertain, blank missing
        ("train", "1", "1", "0"), ("train", "1", "0", "-1"), ("train", "0", "0", "0"), ("train", "", "1", "1"),
        ("train", "1", "1", "1"), ("test", "0", "1", "0"), ("test", "0", "0", ""), ("test", "1", "0", "0"),
    ]  # fmt: skip
    lines = ["image,split,积液,mass,edema"]
    for i, (split, *values) in enumerate(rows):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"图{i}.png")
        lines.append(f"图{i}.png,{split}," + ",".join(values))
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["check-data", str(tmp_path / "labels.csv"), "--output", str(tmp_path / "report"), "-q"]
    assert main(argv) == 0
    assert "8 usable images in 3 classes" in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "data_report.json").read_text(encoding="utf-8"))
    assert report["task"] == "multi" and report["classes"] == ["edema", "mass", "积液"]
    assert report["counts"]["train"] == {"edema": 2, "mass": 3, "积液": 3}
    assert report["counts"]["test"] == {"edema": 0, "mass": 1, "积液": 1}
    stats = report["multilabel"]
    assert stats["cooccurrence"] == [[2, 2, 1], [2, 4, 2], [1, 2, 4]]
    assert stats["no_label"] == {"train": 1, "val": 0, "test": 1} and stats["ignored"] == {"edema": 2, "mass": 0,
                                                                                             "积液": 1}  # fmt: skip
    md = (tmp_path / "report" / "data_report.md").read_text(encoding="utf-8")
    assert "8 usable images in 3 labels" in md
    assert "| label | train | test | ignored (uncertain or blank) |" in md and "| 积液 | 3 | 1 | 1 |" in md
    assert "| images with no label | 1 | 1 |  |" in md
    assert "| | edema | mass | 积液 |" in md.replace("|  |", "| |") and "| mass | 2 | 4 | 2 |" in md


@pytest.mark.parametrize("policy", ["zeros", "ignore"])
def test_split_csv_class_column_lists_present_labels(tmp_path: Path, policy: str) -> None:
    from sedensenet.data.description import DataDescription, resolve, split_rows

    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "t.csv").write_text("path,x,y\na.png,1,-1\nb.png,,1\n", encoding="utf-8")
    splits = resolve(DataDescription.for_data(tmp_path / "t.csv", val_split=0, uncertain=policy, missing=policy),
                     check_images=False)  # fmt: skip
    assert [(r["path"], r["class"]) for r in split_rows(splits)] == [("a.png", "x"), ("b.png", "y")]
