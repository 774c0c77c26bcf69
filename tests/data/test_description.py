"""The data description: JSON round trip, validation, and resolve() for folders and manifests, groups kept whole."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sedensenet.data.description import DataDescription, TableColumns, resolve
from sedensenet.data.images import DataError
from sedensenet.data.scan import scan_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import make_folder  # noqa: E402


def manifest(root: Path, rows: list[tuple[str, str, str | None, str | None]], *, name: str = "labels.csv") -> Path:
    """Empty placeholder files and a table of them (check_images=False never opens them)."""
    header = ["path", "label", "patient_id", "split"]
    keep = [i for i in range(4) if any(r[i] is not None for r in rows)]
    lines = [",".join(header[i] for i in keep)]
    for row in rows:
        (root / row[0]).parent.mkdir(parents=True, exist_ok=True)
        (root / row[0]).write_bytes(b"")
        lines.append(",".join(row[i] or "" for i in keep))
    path = root / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def patients_table(root: Path, *, n_patients: int = 24, seed: int = 0, split: bool = False) -> Path:
    """Several images per patient (1 to 4), each patient with one class; a test split by patient when asked."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "sick" if p % 2 else "well"
        where = ("test" if p % 6 == 5 else "train") if split else None
        rows += [(f"img/p{p}_{i}.png", label, f"P{p}", where) for i in range(int(rng.integers(1, 5)))]
    return manifest(root, rows)


def sides(splits) -> dict[str, set[str]]:
    group = splits.groups
    return {name: {group[s.path] for s in getattr(splits, name)} for name in ("train", "val", "test")}


# ---------------------------------------------------------------------------------------------------------------
# The description itself
# ---------------------------------------------------------------------------------------------------------------


def test_json_round_trip_is_exact(tmp_path: Path) -> None:
    d = DataDescription.for_data(tmp_path / "labels.csv", columns=TableColumns(image="image_id", group="lesion_id"),
                                 image_ext=".jpg", val_split=0.25, split_seed=7, folds=5, fold=2, dedupe="near",
                                 max_pixels=1000, dicom_window=(40, 400))  # fmt: skip
    assert d.source == "table" and d.path == str(tmp_path / "labels.csv") and d.dicom_window == (40.0, 400.0)
    text = d.to_json()
    assert json.loads(text)["version"] == 1 and json.loads(text)["columns"]["image"] == "image_id"
    assert DataDescription.from_json(text) == d
    assert DataDescription.for_data(tmp_path).source == "folder"
    assert DataDescription.for_data("builtin:digits").path == "builtin:digits"
    with pytest.raises(AttributeError):
        d.val_split = 0.5  # frozen


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"val_split": 1.0}, r"val_split must be in \[0, 1\)"),
        ({"folds": 5}, "folds and fold go together"),
        ({"folds": 5, "fold": 6}, "fold must be between 1 and folds"),
        ({"dedupe": "fuzzy"}, "dedupe must be one of off, exact, near"),
        ({"dicom_window": (40, 0)}, r"dicom_window: a DICOM window is \(center, width\) with a finite width >= 1"),
        ({"groups_file": "g.csv", "columns": TableColumns(group="patient_id")}, r"both a groups file \(g.csv\) and"),
    ],
)
def test_bad_descriptions_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        DataDescription.for_data("labels.csv", **settings)


def test_unknown_fields_and_versions_are_refused() -> None:
    good = DataDescription.for_data("x.csv").to_dict()
    with pytest.raises(DataError, match="unknown data description fields: colour"):
        DataDescription.from_dict({**good, "colour": "red"})
    with pytest.raises(DataError, match="version 2 is not understood"):
        DataDescription.from_dict({**good, "version": 2})


# ---------------------------------------------------------------------------------------------------------------
# Folders: what training did before
# ---------------------------------------------------------------------------------------------------------------


def test_a_folder_resolves_as_scan_folder_splits_it(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", per_class=6)
    splits = resolve(DataDescription.for_data(root, val_split=0.25, split_seed=5), workers=1)
    direct = scan_folder(root, val_split=0.25, seed=5, workers=1)
    assert (splits.classes, splits.train, splits.val, splits.test) == (direct.classes, direct.train, direct.val, [])
    fold = resolve(DataDescription.for_data(root, val_split=0.25, split_seed=5, folds=3, fold=1), workers=1)
    assert len(fold.test) == 4 and len(fold.train) + len(fold.val) == 8


# ---------------------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------------------


def test_split_column_used_as_given(tmp_path: Path) -> None:
    rows = [("a.png", "x", None, "train"), ("b.png", "y", None, "train"), ("c.png", "x", None, "val"),
            ("d.png", "y", None, "Validation"), ("e.png", "x", None, "test")]  # fmt: skip
    splits = resolve(DataDescription.for_data(manifest(tmp_path, rows)), check_images=False)
    names = {k: [s.path.name for s in getattr(splits, k)] for k in ("train", "val", "test")}
    assert names == {"train": ["a.png", "b.png"], "val": ["c.png", "d.png"], "test": ["e.png"]}
    assert splits.classes == ["x", "y"] and [s.label for s in splits.train] == [0, 1]


def test_only_train_and_test_given_val_is_carved_out_of_train(tmp_path: Path) -> None:
    rows = [(f"{c}{i}.png", c, None, "train") for c in "xy" for i in range(5)] + [("t.png", "x", None, "test")]
    splits = resolve(DataDescription.for_data(manifest(tmp_path, rows), val_split=0.2), check_images=False)
    assert [s.path.name for s in splits.test] == ["t.png"]
    assert len(splits.val) == 2 and sorted(s.label for s in splits.val) == [0, 1] and len(splits.train) == 8


def test_the_split_depends_only_on_seed_and_names(tmp_path: Path) -> None:
    rows = [(f"{c}{i}.png", c, None, None) for c in "xy" for i in range(10)]
    a = resolve(DataDescription.for_data(manifest(tmp_path / "a", rows), split_seed=3), check_images=False)
    b = resolve(DataDescription.for_data(manifest(tmp_path / "b", rows[::-1]), split_seed=3), check_images=False)
    assert [s.path.name for s in a.val] == [s.path.name for s in b.val] and len(a.val) == 4
    c = resolve(DataDescription.for_data(manifest(tmp_path / "a", rows), split_seed=4), check_images=False)
    assert [s.path.name for s in c.val] != [s.path.name for s in a.val]


@pytest.mark.parametrize("seed", range(12))
def test_no_patient_is_on_both_sides_of_the_val_split(tmp_path: Path, seed: int) -> None:
    table = patients_table(tmp_path, seed=seed)
    splits = resolve(DataDescription.for_data(table, val_split=0.3, split_seed=seed), check_images=False)
    s = sides(splits)
    assert s["train"] and s["val"] and not (s["train"] & s["val"])
    assert len(splits.train) + len(splits.val) == sum(1 for _ in (tmp_path / "img").iterdir())


@pytest.mark.parametrize("folds", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_patient_is_on_two_sides_of_any_fold(tmp_path: Path, folds: int, seed: int) -> None:
    table = patients_table(tmp_path, n_patients=30, seed=seed, split=True)
    held_out: list[set[str]] = []
    for fold in range(1, folds + 1):
        d = DataDescription.for_data(table, val_split=0.2, split_seed=seed, folds=folds, fold=fold)
        splits = resolve(d, check_images=False)
        s = sides(splits)
        assert not (s["train"] & s["val"]) and not (s["train"] & s["test"]) and not (s["val"] & s["test"])
        assert not any(g for g in s["test"] if int(g[1:]) % 6 == 5)  # the table's test rows stay out of every fold
        held_out.append(s["test"])
    assert all(not (a & b) for i, a in enumerate(held_out) for b in held_out[i + 1 :])
    assert set().union(*held_out) == {f"P{p}" for p in range(30) if p % 6 != 5}  # every patient held out once


def test_a_groups_file_works_for_a_table_without_a_group_column(tmp_path: Path) -> None:
    rows = [(f"{c}{i}.png", c, None, None) for c in "xy" for i in range(6)]
    table = manifest(tmp_path, rows)
    groups = tmp_path / "groups.csv"
    groups.write_text("file,group\n" + "".join(f"{c}{i}.png,G{i % 2}{c}\n" for c in "xy" for i in range(6)))
    splits = resolve(DataDescription.for_data(table, groups_file=str(groups), val_split=0.5), check_images=False)
    s = sides(splits)
    assert not (s["train"] & s["val"]) and len(s["val"]) == 2
    with_col = manifest(tmp_path, [("a.png", "x", "P1", None), ("b.png", "y", "P2", None)], name="g.csv")
    with pytest.raises(DataError, match=r"both a groups file .* and a group column \('patient_id' in g.csv\)"):
        resolve(DataDescription.for_data(with_col, groups_file=str(groups)), check_images=False)


def test_images_are_checked_and_unusable_ones_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for c in "xy":
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"{c}{i}.png")
            rows.append(f"{c}{i}.png,{c}")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "t.csv").write_text("path,label\n" + "\n".join(rows) + "\nbad.png,x\ngone.png,y\n")
    d = DataDescription.for_data(tmp_path / "t.csv", skip_missing=True, val_split=0)
    splits = resolve(d, workers=1)
    assert len(splits.train) == 6 and splits.val == [] and len(splits.fingerprints) == 6
    assert sorted((s.path.name, s.reason.split(" (")[0]) for s in splits.skipped) == [
        ("bad.png", "not an image"),
        ("gone.png", "listed in t.csv"),
    ]


def test_a_class_without_training_rows_is_an_error(tmp_path: Path) -> None:
    rows = [("a.png", "x", None, "train"), ("b.png", "x", None, "train"), ("c.png", "y", None, "test")]
    with pytest.raises(DataError, match=r"no training images of class\(es\) y"):
        resolve(DataDescription.for_data(manifest(tmp_path, rows)), check_images=False)
