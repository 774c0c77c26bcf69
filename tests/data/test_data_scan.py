"""scan_folder: layouts, stratified seeded splits, and the errors that name what is wrong."""

from __future__ import annotations

import csv
import logging
import os
import random
from pathlib import Path

import pytest

from sedensenet.data import DataError, Sample, Skipped, find_classes, scan_folder, write_skipped_csv


def rel(samples: list[Sample], root: Path) -> set[str]:
    return {s.path.relative_to(root).as_posix() for s in samples}


# ------------------------------------------------------------------------------------------------ find_classes


def test_find_classes_sorted_and_ignores_hidden(tmp_path: Path) -> None:
    for name in ["dogs", "cats", "Birds", ".git", "__MACOSX", "_extra"]:
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert find_classes(tmp_path) == ["Birds", "_extra", "cats", "dogs"]


def test_find_classes_without_folders_names_directory_and_layout(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "b.png")
    with pytest.raises(DataError) as info:
        find_classes(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "2 image files directly" in message
    assert "one sub-folder per class" in message


def test_find_classes_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        find_classes(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------ layout A splits


def test_stratified_split_counts(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"a": 10, "b": 20, "c": 5, "d": 7})
    splits = scan_folder(tmp_path, val_split=0.2, seed=1)
    assert splits.classes == ["a", "b", "c", "d"]
    # per class: round-half-up of n * 0.2 -> 2, 4, 1, 1 (7 * 0.2 = 1.4)
    assert splits.counts() == {
        "train": {"a": 8, "b": 16, "c": 4, "d": 6},
        "val": {"a": 2, "b": 4, "c": 1, "d": 1},
        "test": {"a": 0, "b": 0, "c": 0, "d": 0},
    }
    assert splits.skipped == []
    assert rel(splits.train, tmp_path).isdisjoint(rel(splits.val, tmp_path))
    assert all(s.path.parent.name == splits.classes[s.label] for s in splits.train + splits.val)
    assert [(s.label, s.path) for s in splits.train] == sorted((s.label, s.path) for s in splits.train)


def test_small_val_split_keeps_one_image_per_class_in_val(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"a": 4, "b": 30})
    counts = scan_folder(tmp_path, val_split=0.05).counts()
    assert counts["val"] == {"a": 1, "b": 2}  # 4 * 0.05 rounds to 0: raised to 1
    assert counts["train"] == {"a": 3, "b": 28}


def test_split_is_deterministic_and_independent_of_creation_order(tmp_path: Path, make_tree) -> None:
    counts = {"cats": 12, "dogs": 9}
    first = make_tree(tmp_path / "one", counts)
    order = list(range(21))
    random.Random(7).shuffle(order)
    second = make_tree(tmp_path / "two", counts, order=order)

    a = scan_folder(first, val_split=0.3, seed=5)
    b = scan_folder(first, val_split=0.3, seed=5)
    c = scan_folder(second, val_split=0.3, seed=5)
    assert a == b
    assert rel(a.val, first) == rel(c.val, second)
    assert rel(a.train, first) == rel(c.train, second)

    other = scan_folder(first, val_split=0.3, seed=6)
    assert rel(other.val, first) != rel(a.val, first)
    assert other.counts() == a.counts()


def test_val_split_zero_gives_no_val(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"a": 3, "b": 1})
    splits = scan_folder(tmp_path, val_split=0)
    assert splits.val == []
    assert len(splits.train) == 4


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan")])
def test_val_split_out_of_range(tmp_path: Path, make_tree, value: float) -> None:
    make_tree(tmp_path, {"a": 3, "b": 3})
    with pytest.raises(DataError, match=r"val_split must be in \[0, 1\)"):
        scan_folder(tmp_path, val_split=value)


def test_one_class_only_error(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"cats": 5})
    with pytest.raises(DataError, match="only one class folder \\('cats'\\)"):
        scan_folder(tmp_path)


def test_class_with_one_image_needs_val_split_zero(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"cats": 5, "dogs": 1})
    with pytest.raises(DataError) as info:
        scan_folder(tmp_path, val_split=0.2)
    assert str(tmp_path / "dogs") in str(info.value)
    assert "at least 2" in str(info.value)
    assert scan_folder(tmp_path, val_split=0).counts()["train"] == {"cats": 5, "dogs": 1}


def test_empty_class_error_names_folder(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"cats": 4, "dogs": 4})
    (tmp_path / "birds").mkdir()
    for i in range(3):
        (tmp_path / "birds" / f"{i}.jpg").write_bytes(b"")
    with pytest.raises(DataError) as info:
        scan_folder(tmp_path)
    assert f"{tmp_path / 'birds'} has no readable images (3 skipped)" in str(info.value)


def test_workers_do_not_change_result(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"a": 6, "b": 6})
    (tmp_path / "a" / "bad.png").write_text("not a png")
    assert scan_folder(tmp_path, workers=0) == scan_folder(tmp_path, workers=4)


def test_recurses_into_sub_folders(tmp_path: Path, make_tree, make_image) -> None:
    make_tree(tmp_path, {"a": 2, "b": 2})
    make_image(tmp_path / "a" / "2024" / "deep" / "x.png")
    assert scan_folder(tmp_path, val_split=0).counts()["train"] == {"a": 3, "b": 2}


def test_symlink_loop_terminates(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"a": 2, "b": 2})
    try:
        os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
        os.symlink(tmp_path, tmp_path / "b" / "up")
    except OSError:  # Windows without the symlink privilege
        pytest.skip("cannot create symbolic links here")
    splits = scan_folder(tmp_path, val_split=0)
    assert splits.counts()["train"] == {"a": 2, "b": 2}


def test_logs_summary(tmp_path: Path, make_tree, caplog: pytest.LogCaptureFixture) -> None:
    make_tree(tmp_path, {"a": 5, "b": 5})
    (tmp_path / "a" / "bad.png").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="sedensenet.data"):
        scan_folder(tmp_path)
    text = caplog.text
    assert "2 classes; train 8, val 2; 1 files skipped" in text
    assert "bad.png: empty file (0 bytes)" in text


# ------------------------------------------------------------------------------------------------ layout B


def test_layout_train_val_test(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path / "train", {"cats": 6, "dogs": 4})
    make_tree(tmp_path / "validation", {"cats": 2, "dogs": 3})
    make_tree(tmp_path / "test", {"cats": 1, "dogs": 2})
    splits = scan_folder(tmp_path, val_split=0.5)  # ignored: val/ is given
    assert splits.classes == ["cats", "dogs"]
    assert splits.counts() == {
        "train": {"cats": 6, "dogs": 4},
        "val": {"cats": 2, "dogs": 3},
        "test": {"cats": 1, "dogs": 2},
    }
    assert all(s.path.parts[-3] == "validation" for s in splits.val)


def test_layout_train_and_test_splits_val_from_train(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path / "train", {"cats": 10, "dogs": 5})
    make_tree(tmp_path / "test", {"cats": 2, "dogs": 2})
    counts = scan_folder(tmp_path, val_split=0.2).counts()
    assert counts["train"] == {"cats": 8, "dogs": 4}
    assert counts["val"] == {"cats": 2, "dogs": 1}
    assert counts["test"] == {"cats": 2, "dogs": 2}


def test_train_val_class_mismatch_names_classes(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path / "train", {"cats": 2, "dogs": 2, "fish": 2})
    make_tree(tmp_path / "val", {"cats": 1, "dogs": 1, "birds": 1})
    with pytest.raises(DataError) as info:
        scan_folder(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "val") in message
    assert "only in train/: fish" in message
    assert "only in val/: birds" in message


def test_empty_class_in_val_names_folder(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path / "train", {"cats": 2, "dogs": 2})
    make_tree(tmp_path / "val", {"cats": 1})
    (tmp_path / "val" / "dogs").mkdir()
    (tmp_path / "val" / "dogs" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=f"{tmp_path / 'val' / 'dogs'} has no readable images \\(0 skipped\\)"):
        scan_folder(tmp_path)


def test_mixed_layout_error(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path / "train", {"cats": 2, "dogs": 2})
    make_tree(tmp_path, {"cats": 2})
    with pytest.raises(DataError, match="mixes split folders .* \\(cats\\)"):
        scan_folder(tmp_path)


def test_root_missing_or_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is not a folder"):
        scan_folder(tmp_path / "file.png")


# ------------------------------------------------------------------------------------------------ files


def test_bad_files_are_skipped_with_reasons(tmp_path: Path, make_tree, make_image, make_huge_png) -> None:
    make_tree(tmp_path, {"a": 3, "b": 3})
    good = make_image(tmp_path / "a" / "full.jpg", size=(64, 64))
    (tmp_path / "a" / "truncated.jpg").write_bytes(good.read_bytes()[:400])
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "b" / "text.png").write_text("hello, I am not an image", encoding="utf-8")
    make_huge_png(tmp_path / "b" / "bomb.png")

    splits = scan_folder(tmp_path, val_split=0)
    reasons = {s.path.name: s.reason for s in splits.skipped}
    assert set(reasons) == {"truncated.jpg", "empty.png", "text.png", "bomb.png"}
    assert reasons["truncated.jpg"].startswith("truncated or corrupt image: ")
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert reasons["text.png"] == "not an image (cannot identify image file)"
    assert reasons["bomb.png"] == "too large: 10000000000 pixels > limit 89478485"
    assert splits.counts()["train"] == {"a": 4, "b": 3}


def test_hidden_and_non_image_files_ignored_silently(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "a" / "._img_0.png").write_bytes(b"\0\5\x16\7")  # macOS resource fork
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "b" / "desktop.ini").write_text("[x]")
    (tmp_path / "b" / "labels.csv").write_text("a,b")
    (tmp_path / "b" / ".cache").mkdir()
    (tmp_path / "b" / ".cache" / "broken.png").write_bytes(b"")
    splits = scan_folder(tmp_path, val_split=0)
    assert splits.skipped == []
    assert {s.path.name for s in splits.train} == {"img_0.png", "img_1.png"}


def test_uppercase_extensions_count(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "a" / "ONE.PNG")
    make_image(tmp_path / "a" / "two.Jpeg")
    make_image(tmp_path / "b" / "three.TIF")
    assert scan_folder(tmp_path, val_split=0).counts()["train"] == {"a": 2, "b": 1}


def test_chinese_names_and_spaces(tmp_path: Path, make_image) -> None:
    root = tmp_path / "我的 数据"
    make_image(root / "猫" / "小 猫 1.jpg", value=1)  # distinct pixels: copies would stay on one side
    make_image(root / "猫" / "小 猫 2.png", value=2)
    make_image(root / "狗" / "my dog.png", value=3)
    make_image(root / "狗" / "狗 2.png", value=4)
    (root / "狗" / "坏 图.png").write_bytes(b"")
    splits = scan_folder(root, val_split=0.5)
    assert splits.classes == sorted(["猫", "狗"])
    assert splits.counts()["val"] == {"狗": 1, "猫": 1}
    assert [s.path.name for s in splits.skipped] == ["坏 图.png"]

    out = write_skipped_csv(splits.skipped, tmp_path / "报告" / "skipped.csv")
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["path", "reason"], [str(root / "狗" / "坏 图.png"), "empty file (0 bytes)"]]


def test_write_skipped_csv_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "skipped.csv"
    target.write_text("old")
    write_skipped_csv([Skipped(Path("a, b.png"), "not an image (cannot identify image file)")], target)
    assert target.read_text(encoding="utf-8").splitlines() == [
        "path,reason",
        '"a, b.png",not an image (cannot identify image file)',
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["skipped.csv"]
