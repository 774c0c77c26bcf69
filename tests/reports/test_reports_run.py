"""The run folder: naming, the write check, history CSV, metrics and tables."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from sedensenet.reports import (
    HISTORY_COLUMNS,
    RUN_FILES,
    RunDirError,
    check_writable,
    compute_metrics,
    new_run_dir,
    read_history_csv,
    write_classification_table,
    write_history_csv,
    write_metrics,
)
from sedensenet.reports import run as run_module


def test_new_run_dir_increments(tmp_path: Path) -> None:
    project = tmp_path / "runs"
    assert new_run_dir(project) == project / "train"
    assert new_run_dir(project) == project / "train2"
    assert new_run_dir(project) == project / "train3"
    assert new_run_dir(project, name="猫狗") == project / "猫狗"
    assert new_run_dir(project, name="猫狗") == project / "猫狗2"
    assert all(p.is_dir() for p in project.iterdir())


def test_new_run_dir_exist_ok_reuses(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path, name="exp")
    (first / "keep.txt").write_text("x")
    assert new_run_dir(tmp_path, name="exp", exist_ok=True) == first
    assert (first / "keep.txt").exists()
    assert new_run_dir(tmp_path, name="fresh", exist_ok=True) == tmp_path / "fresh"


def test_new_run_dir_skips_a_name_taken_concurrently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_mkdir = os.mkdir

    def racing_mkdir(path, *args, **kwargs):
        if Path(path).name == "train":  # another process wins "train" between our check and mkdir
            real_mkdir(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(run_module.os, "mkdir", racing_mkdir)
    assert new_run_dir(tmp_path) == tmp_path / "train2"


def test_new_run_dir_threads_get_distinct_folders(tmp_path: Path) -> None:
    results: list[Path] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(new_run_dir(tmp_path))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in results) == sorted(["train"] + [f"train{i}" for i in range(2, 9)])


def test_new_run_dir_skips_a_file_of_that_name(tmp_path: Path) -> None:
    (tmp_path / "train").write_text("not a folder")
    assert new_run_dir(tmp_path) == tmp_path / "train2"
    with pytest.raises(RunDirError, match="in the way"):
        new_run_dir(tmp_path, exist_ok=True)


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_new_run_dir_rejects_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="run name"):
        new_run_dir(tmp_path, name=name)


def test_check_writable_passes_and_leaves_nothing(tmp_path: Path) -> None:
    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_check_writable_read_only_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match="locked"):
            check_writable(locked)
    finally:
        locked.chmod(0o700)


def test_check_writable_permission_denied_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs as root too (where chmod cannot lock a folder): the error as the OS would raise it.
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(run_module.tempfile, "mkstemp", denied)
    with pytest.raises(RunDirError, match="permission denied") as info:
        check_writable(tmp_path)
    assert str(info.value) == f"cannot write to {tmp_path}: permission denied"


def test_check_writable_path_under_a_regular_file(tmp_path: Path) -> None:
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    with pytest.raises(RunDirError, match="file.txt"):
        check_writable(regular / "run")
    with pytest.raises(RunDirError, match="not a directory"):
        check_writable(regular)
    with pytest.raises(RunDirError, match="does not exist"):
        check_writable(tmp_path / "missing")


def test_check_writable_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_module.os, "fsync", full)
    with pytest.raises(RunDirError, match="disk full") as info:
        check_writable(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value, OSError)
    assert list(tmp_path.iterdir()) == []  # the probe is removed even when writing fails


def test_history_csv_round_trip(tmp_path: Path) -> None:
    rows = [
        {"epoch": 1, "lr": 1e-3, "loss": 0.9, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.45, "seconds": 12.5},
        {
            "epoch": 2,
            "lr": 5e-4,
            "loss": 0.7,
            "accuracy": 0.6,
            "val_loss": float("nan"),
            "val_accuracy": None,
            "seconds": np.float32(11.0),
            "lr_backbone": 1e-4,
        },
        {"seconds": 3.25, "epoch": 3, "note": "早停"},
    ]
    path = write_history_csv(rows, tmp_path / "history.csv")
    with open(path, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f))
    assert header == [*HISTORY_COLUMNS, "lr_backbone", "note"]

    back = read_history_csv(path)
    assert len(back) == 3
    new = dict.fromkeys(("val_balanced_accuracy", "val_auc", "val_mAP"))  # columns the rows did not give: empty
    assert back[0] == {**rows[0], **new, "lr_backbone": None, "note": None}
    assert isinstance(back[0]["epoch"], int)
    assert math.isnan(back[1]["val_loss"])
    assert back[1]["val_accuracy"] is None
    assert back[1]["seconds"] == 11.0
    assert back[1]["lr_backbone"] == 1e-4
    assert back[2]["note"] == "早停"
    assert back[2]["loss"] is None


def test_history_csv_without_rows_has_a_header(tmp_path: Path) -> None:
    path = write_history_csv([], tmp_path / "history.csv")
    assert path.read_text().splitlines() == [",".join(HISTORY_COLUMNS)]
    assert read_history_csv(path) == []


def _report():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    return compute_metrics([0, 0, 1, 1, 1], probs, ["猫", "狗"], loss=0.31)


def test_write_metrics_with_extra(tmp_path: Path) -> None:
    path = write_metrics(_report(), tmp_path / "metrics.json", extra={"split": "val", "epoch": np.int64(7)})
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["split"] == "val" and data["epoch"] == 7
    assert data["accuracy"] == pytest.approx(0.6)
    assert data["classes"] == ["猫", "狗"]
    assert "猫" in path.read_text(encoding="utf-8")  # kept readable, not \\u-escaped
    with pytest.raises(ValueError, match="accuracy"):
        write_metrics(_report(), tmp_path / "m2.json", extra={"accuracy": 1.0})


def test_write_classification_table(tmp_path: Path) -> None:
    report = _report()
    text_path, csv_path = write_classification_table(report, tmp_path / "classification_report.txt")
    text = text_path.read_text(encoding="utf-8")
    assert text == report.format_table() + "\n" + report.format_summary()
    assert "accuracy           0.600 [" in text  # the summary, with its interval
    assert csv_path == tmp_path / "per_class.csv"
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["猫", "狗"]
    assert float(rows[1]["precision"]) == pytest.approx(2 / 3)
    assert rows[0]["support"] == "2"


def test_run_files_names_what_reports_write() -> None:
    for name in (
        "history.csv",
        "curves.png",
        "metrics.json",
        "classification_report.txt",
        "per_class.csv",
        "confusion_matrix.png",
        "confusion_matrix_normalized.png",
        "roc.png",
        "pr.png",
        "calibration.png",
    ):
        assert name in RUN_FILES
