"""Iterative stratification that keeps groups whole: prevalence per label in every part, groups never split, one
answer per seed; the val carve-out and the k folds of a multi-label table use it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sedensenet.data.description import DataDescription, resolve
from sedensenet.data.images import DataError
from sedensenet.data.stratify import iterative_split

PREVALENCE = (0.05, 0.12, 0.2, 0.3, 0.4)
NAMES = ("atelectasis", "edema", "effusion", "mass", "nodule")


def generated(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """(n, 5) labels with the prevalences above (5% of entries NaN) and patients of 1 to 4 images."""
    rng = np.random.default_rng(seed)
    groups: list[str] = []
    while len(groups) < n:
        groups += [f"P{len(set(groups))}"] * int(rng.integers(1, 5))
    y = (rng.random((n, len(PREVALENCE))) < np.asarray(PREVALENCE)).astype(np.float64)
    y[rng.random(y.shape) < 0.05] = np.nan
    return y, groups[:n]


def prevalence(y: np.ndarray) -> np.ndarray:
    """Per label, the share (in points) of images with it present among those not ignored."""
    return 100 * np.nansum(y, axis=0) / np.sum(~np.isnan(y), axis=0)


def test_prevalence_within_two_points_of_train_and_no_group_crosses() -> None:
    y, groups = generated()
    for seed in range(3):
        part = iterative_split(y, groups, (0.7, 0.15, 0.15), seed)
        train, val, test = (prevalence(y[part == p]) for p in range(3))
        assert np.abs(val - train).max() < 2 and np.abs(test - train).max() < 2, (train, val, test)
        assert np.abs(np.bincount(part) / len(part) - (0.7, 0.15, 0.15)).max() < 0.01
        side: dict[str, int] = {}
        assert all(side.setdefault(g, p) == p for g, p in zip(groups, part, strict=True))


def test_one_answer_per_seed_nan_counts_as_absent_and_images_without_group_are_units() -> None:
    y, groups = generated(300, seed=1)
    a, b = iterative_split(y, groups, (0.8, 0.2), 5), iterative_split(y, groups, (0.8, 0.2), 5)
    assert (a == b).all() and not (a == iterative_split(y, groups, (0.8, 0.2), 6)).all()
    # a label present only as NaN is never counted: the split is the one with that column all zero
    masked = np.column_stack([y, np.full(len(y), math.nan)])
    zero = np.column_stack([y, np.zeros(len(y))])
    assert (iterative_split(masked, groups, (0.8, 0.2), 5) == iterative_split(zero, groups, (0.8, 0.2), 5)).all()
    alone = iterative_split(np.eye(4), [None] * 4, (0.5, 0.5), 0)
    assert sorted(np.bincount(alone).tolist()) == [2, 2]
    with pytest.raises(DataError, match=r"labels must be \(N, K\) with N = 3 groups given, got shape \(4, 4\)"):
        iterative_split(np.eye(4), [None] * 3, (0.5, 0.5), 0)
    with pytest.raises(DataError, match="fractions must be non-negative with a positive sum"):
        iterative_split(np.eye(4), [None] * 4, (0.5, -0.5), 0)


def write_table(root: Path, y: np.ndarray, groups: list[str]) -> Path:
    """A 0/1-column manifest of empty placeholder files (resolve(check_images=False) never opens them)."""
    (root / "img").mkdir()
    cell = {1.0: "1", 0.0: "0"}
    lines = ["image,patient_id," + ",".join(NAMES)]
    for i, (row, group) in enumerate(zip(y, groups, strict=True)):
        (root / "img" / f"{i:04d}.png").write_bytes(b"")
        lines.append(f"img/{i:04d}.png,{group}," + ",".join(cell.get(v, "") for v in row.tolist()))
    path = root / "labels.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def figures(splits) -> dict[str, np.ndarray]:
    return {
        name: prevalence(np.asarray([s.label for s in getattr(splits, name)]))
        for name in ("train", "val", "test")
        if getattr(splits, name)
    }


def test_a_multi_label_table_gets_stratified_val_and_folds_with_patients_whole(tmp_path: Path) -> None:
    y, groups = generated()
    csv = write_table(tmp_path, y, groups)
    splits = resolve(DataDescription.for_data(csv, val_split=0.2, split_seed=3), check_images=False)
    assert splits.task == "multi" and splits.classes == sorted(NAMES) and len(splits.train) + len(splits.val) == 2000
    p = figures(splits)
    assert np.abs(p["val"] - p["train"]).max() < 2 and abs(len(splits.val) - 400) <= 10
    assert not {splits.groups[s.path] for s in splits.train} & {splits.groups[s.path] for s in splits.val}
    held: list[str] = []
    for fold in (1, 2, 3, 4, 5):
        f = resolve(DataDescription.for_data(csv, val_split=0.2, folds=5, fold=fold), check_images=False)
        p = figures(f)
        assert np.abs(p["val"] - p["train"]).max() < 2 and np.abs(p["test"] - p["train"]).max() < 2, p
        sides = [{f.groups[s.path] for s in getattr(f, name)} for name in ("train", "val", "test")]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        held += [s.path.name for s in f.test]
    assert sorted(held) == sorted(f"{i:04d}.png" for i in range(2000))  # every image held out exactly once


def test_folds_refuse_a_label_too_rare_to_fill_them(tmp_path: Path) -> None:
    y = np.zeros((12, 2))
    y[:, 0] = 1
    y[:2, 1] = 1
    csv = write_table(tmp_path, y, [f"P{i}" for i in range(12)])
    description = DataDescription.for_data(csv, folds=3, fold=1)
    with pytest.raises(DataError, match=r"--folds 3 is more than label 'edema' can fill: 2 images have it.*--folds 2"):
        resolve(description, check_images=False)


def test_duplicate_images_stay_on_one_side_of_the_val_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = ["path,label"]
    for i in range(16):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) if i % 4 else np.full((8, 8, 3), 7, np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")  # 0, 4, 8 and 12: four copies of one image
        lines.append(f"{i}.png,{'a|b' if i % 2 else 'a'}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for seed in range(4):
        splits = resolve(DataDescription.for_data(tmp_path / "t.csv", val_split=0.25, split_seed=seed), workers=1)
        copies_in_val = sum(s.path.name in ("0.png", "4.png", "8.png", "12.png") for s in splits.val)
        assert copies_in_val in (0, 4) and len(splits.val) + len(splits.train) == 16
