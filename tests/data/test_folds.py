"""Cross-validation folds: stratified, disjoint, group-respecting, every image held out exactly once; bad fold
counts refused with the class and its count."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sedensenet.data import DataError, DataSplits, Sample
from sedensenet.data.folds import assign_folds, check_folds, fold_splits, split_off_val


def _samples(counts: dict[int, int]) -> list[Sample]:
    return [Sample(Path(f"/d/c{label}/{i:03d}.png"), label) for label, n in counts.items() for i in range(n)]


def _splits(samples: list[Sample]) -> DataSplits:
    return DataSplits(Path("/d"), ["猫", "狗", "鸟"][: len({s.label for s in samples})], samples, [])


@pytest.mark.parametrize(("counts", "k"), [({0: 7, 1: 13}, 3), ({0: 100, 1: 37, 2: 5}, 5), ({0: 5, 1: 5}, 5)])
def test_folds_are_stratified_and_cover_every_sample_once(counts: dict[int, int], k: int) -> None:
    samples = _samples(counts)
    labels = [s.label for s in samples]
    fold_of = assign_folds(labels, [str(s.path) for s in samples], k, seed=3)
    assert sorted(set(fold_of)) == list(range(k))
    for label, n in counts.items():
        per_fold = Counter(f for f, y in zip(fold_of, labels, strict=True) if y == label)
        sizes = [per_fold[f] for f in range(k)]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1, (label, sizes)  # stratified: within one image


def test_fold_runs_are_disjoint_and_hold_out_every_file_exactly_once() -> None:
    samples = _samples({0: 23, 1: 17})
    splits = _splits(samples)
    held_out: list[Path] = []
    for fold in range(1, 5):
        f = fold_splits(splits, 4, fold, val_split=0.2, seed=7)
        parts = [{s.path for s in part} for part in (f.train, f.val, f.test)]
        assert sum(map(len, parts)) == 40 and len(set().union(*parts)) == 40  # train, val, test disjoint, complete
        assert {s.label for s in f.val} == {0, 1} and {s.label for s in f.test} == {0, 1}
        assert len(f.val) == round(0.2 * 23 * 3 / 4) + round(0.2 * 17 * 3 / 4)  # 0.2 of each class's training part
        held_out += [s.path for s in f.test]
    assert sorted(held_out) == sorted(s.path for s in samples)  # each file held out exactly once
    again = fold_splits(splits, 4, 2, val_split=0.2, seed=7)
    assert again.test == fold_splits(splits, 4, 2, val_split=0.2, seed=7).test  # deterministic
    assert {s.path for s in fold_splits(splits, 4, 2, val_split=0.2, seed=8).test} != {s.path for s in again.test}


def test_groups_never_straddle_folds_or_the_inner_val_split() -> None:
    samples = _samples({0: 30, 1: 30})
    rng = np.random.default_rng(0)
    units = {s.path: f"patient{rng.integers(0, 12)}" for s in samples}  # patients with images of both classes
    splits = _splits(samples)
    held_out: dict[str, set[int]] = {}
    for fold in range(1, 4):
        f = fold_splits(splits, 3, fold, val_split=0.25, seed=1, units=units)
        for s in f.test:
            held_out.setdefault(units[s.path], set()).add(fold)
        train_units = {units[s.path] for s in f.train}
        assert not train_units & {units[s.path] for s in f.val}
        assert not train_units & {units[s.path] for s in f.test}
        assert not {units[s.path] for s in f.val} & {units[s.path] for s in f.test}
    assert all(len(folds) == 1 for folds in held_out.values())  # each patient in exactly one held-out fold
    assert sum(len(fold_splits(splits, 3, k, 0.25, 1, units).test) for k in (1, 2, 3)) == 60


def test_inner_split_keeps_a_unit_spanning_classes_on_one_side() -> None:
    samples = _samples({0: 6, 1: 6})
    units = {s.path: f"u{i % 6}" for i, s in enumerate(samples)}  # u0 holds c0/000 and c1/000, and so on
    train, val = split_off_val(samples, units, 0.34, seed=0, classes=["猫", "狗"])
    assert val and not {units[s.path] for s in val} & {units[s.path] for s in train}


def test_too_many_folds_for_the_smallest_class_is_refused_naming_it() -> None:
    samples = _samples({0: 10, 1: 3})
    with pytest.raises(DataError, match="--folds 4 is more than class '狗' can fill: it has 3 images.*--folds 3"):
        fold_splits(_splits(samples), 4, 1, 0.2, 0)
    units = [f"g{i // 4}" for i in range(13)]  # class 0 in g0-g2; class 1 in g2 and g3: its 3 images, 2 groups
    with pytest.raises(DataError, match="--folds 3 is more than class '狗' can fill: it has 2 groups.*--folds 2"):
        check_folds([s.label for s in samples], units, 3, ["猫", "狗"])
    with pytest.raises(DataError, match="at least 2"):
        check_folds([0, 1], ["a", "b"], 1, ["猫", "狗"])
    with pytest.raises(DataError, match="--fold must be between 1 and --folds 3, got 4"):
        fold_splits(_splits(samples), 3, 4, 0.2, 0)
