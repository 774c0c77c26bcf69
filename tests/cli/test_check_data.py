"""`sedensenet check-data` as a user runs it, and the duplicate checks `train` and `evaluate` make."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES, make_planted_folder, pattern_image  # noqa: E402

from sedensenet.cli import main  # noqa: E402


def test_check_data_prints_verdicts_and_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "chest"
    make_planted_folder(data)
    assert main(["check-data", str(data), "--project", str(tmp_path / "runs"), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"{data}: 52 usable images in 2 classes, 0 files skipped, 8 duplicate pairs" in out
    assert "- 2 test images duplicate train images: scores on test will be optimistic" in out
    report = tmp_path / "runs" / "check-data" / "chest"
    assert sorted(p.name for p in report.iterdir()) == ["data_report.json", "data_report.md", "montage.png"]
    data_json = json.loads((report / "data_report.json").read_text(encoding="utf-8"))
    assert len(data_json["pairs"]) == 8 and data_json["counts"]["test"] == {"normal": 7, "肺炎": 6}
    assert data_json["problems"]["test duplicates val"] == ["test/肺炎/copy_q60.jpg"]
    md = (report / "data_report.md").read_text(encoding="utf-8")
    assert "## Verdict" in md and "### Test images that are also training images (2 pairs)" in md
    assert "| train/normal/001.png | train / normal | val/normal/copy_q60.jpg | val / normal | near | 2 |" in md
    assert main(["check-data", str(data), "--project", str(tmp_path / "runs"), "-q", "--strict"]) == 1
    assert (tmp_path / "runs" / "check-data" / "chest2" / "data_report.md").is_file()  # run-folder numbering


@pytest.mark.parametrize("distance", ["-1", "33"])
def test_check_data_refuses_a_distance_out_of_range(tmp_path: Path, distance: str, capsys) -> None:  # noqa: ANN001
    make_planted_folder(tmp_path / "d", {"train": 7, "val": 1, "test": 1})
    assert main(["check-data", str(tmp_path / "d"), "--near-distance", distance, "--project", str(tmp_path)]) == 2
    assert f"near distance {distance} is out of range: allowed 0 to 32" in capsys.readouterr().err
    assert not (tmp_path / "check-data").exists()  # refused before any work


def test_check_data_on_an_empty_folder_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["check-data", str(tmp_path / "empty"), "--project", str(tmp_path / "runs")]) == 2
    assert f"{tmp_path / 'empty'} has no class folders" in capsys.readouterr().err


def _leaky_folder(root: Path) -> None:
    """train/val/test of pattern images; one training image copied into test, one filed under both classes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 4), ("test", 4)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pattern_image(label, rng).save(root / split / name / f"{i}.png")
    (root / "test" / CLASSES[0] / "leak.png").write_bytes((root / "train" / CLASSES[0] / "0.png").read_bytes())
    (root / "train" / CLASSES[1] / "twin.png").write_bytes((root / "train" / CLASSES[0] / "1.png").read_bytes())


def test_train_warns_of_exact_leaks_and_evaluate_dedupe_drops_them(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    data = tmp_path / "data"
    _leaky_folder(data)
    argv = ["train", "--data", str(data), "--model", "se_densenet_tiny", "--image-size", "16", "--epochs", "1",
            "--batch-size", "4", "--workers", "0", "--project", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "1 exact copies across splits" in err and "1 exact copies under another class" in err
    assert "duplicates.csv" in err and "--dedupe exact drops them from val/test" in err
    run = tmp_path / "runs" / "train"
    with open(run / "duplicates.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((Path(r["copy"]).name, r["copy_split"], r["copy_class"]) for r in rows) == [
        ("leak.png", "test", CLASSES[0]),
        ("twin.png", "train", CLASSES[1]),
    ]
    base = ["evaluate", str(run), "--data", str(data), "--split", "test", "--device", "cpu", "-q"]
    assert main([*base, "--output", str(tmp_path / "all")]) == 0
    assert main([*base, "--output", str(tmp_path / "dedup"), "--dedupe", "exact"]) == 0
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text(encoding="utf-8")) for d in ("all", "dedup")]
    assert [m["num_samples"] for m in metrics] == [9, 8]
    assert metrics[1]["dedupe"] == "exact"
