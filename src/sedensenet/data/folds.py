"""k-fold cross-validation splits: stratified by class, and group-aware (a patient's images, a cluster of
duplicates never straddle two folds).

Every image is held out exactly once. For fold ``f`` of ``k`` the held-out part is the run's ``test`` split; the
rest is split again into ``train`` and ``val`` (the val split picks the best epoch, a threshold, a temperature),
keeping the same units together, so nothing is ever chosen on the held-out part.

A multi-label set (tuple labels) is stratified over its labels instead, by iterative stratification
(:func:`sedensenet.data.stratify.iterative_split`), with the same units kept whole.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Hashable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from sedensenet.data.dedupe import DEFAULT_NEAR_DISTANCE
from sedensenet.data.groups import split_units
from sedensenet.data.images import DataError, Sample
from sedensenet.data.scan import DataSplits, linked_units, val_count
from sedensenet.data.stratify import iterative_split

logger = logging.getLogger(__name__)


def check_folds(labels: Sequence[int], units: Sequence[Hashable], folds: int, classes: Sequence[str]) -> None:
    """Refuse a fold count the data cannot fill: every class needs at least ``folds`` units (images, or groups
    when images are grouped) so that each fold holds out some of it, and training keeps some of it.

    Raises:
        DataError: naming the class, its count and the largest fold count that works.
    """
    per_class: dict[int, set[Hashable]] = {}
    for label, unit in zip(labels, units, strict=True):
        per_class.setdefault(label, set()).add(unit)
    _check_counts({f"class {classes[c]!r}": len(u) for c, u in per_class.items()}, units, folds, "class")


def assign_folds(labels: Sequence[int], units: Sequence[Hashable], folds: int, seed: int) -> list[int]:
    """The fold (0 to ``folds - 1``) of each sample: stratified by label, every unit in one fold.

    ``units`` gives each sample's unit (a group id, a duplicate cluster, or the sample itself); scikit-learn's
    ``StratifiedGroupKFold`` (shuffled by ``seed``) balances the class proportions across folds. The answer
    depends only on the samples' order, labels, units and the seed: pass samples sorted by path.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(labels)
    unit_ids = {u: i for i, u in enumerate(dict.fromkeys(units))}
    groups = np.asarray([unit_ids[u] for u in units])
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    fold_of = np.full(len(y), -1)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        fold_of[held_out] = fold
    return fold_of.tolist()


def _key(seed: int, path: Path) -> bytes:
    return hashlib.sha256(f"{seed}\0{path.as_posix()}".encode("utf-8", "surrogateescape")).digest()


def fold_units(splits: DataSplits, near_distance: int = DEFAULT_NEAR_DISTANCE) -> dict[Path, str]:
    """The files of ``splits.train`` and ``splits.val`` that must share a fold: each ``--groups`` group and each
    cluster of exact or near duplicates (the same units the train/val split keeps whole), as file -> unit."""
    per_class: dict[int, list[Path]] = {}
    for sample in splits.train + splits.val:
        per_class.setdefault(0 if isinstance(sample.label, tuple) else sample.label, []).append(sample.path)
    return linked_units({c: sorted(p) for c, p in per_class.items()}, splits.fingerprints, near_distance,
                        splits.groups)  # fmt: skip


def split_off_val(
    samples: Sequence[Sample], unit_of: dict[Path, str], val_split: float, seed: int, classes: Sequence[str]
) -> tuple[list[Sample], list[Sample]]:
    """Train and val from a fold's training part: per class about ``val_split`` of the images (rounded half up, at
    least one) in a seeded order, whole units only (the val split's own rule, :func:`split_units`)."""
    if val_split <= 0:
        return list(samples), []
    if samples and isinstance(samples[0].label, tuple):
        return _split_off_val_multi(samples, unit_of, val_split, seed)
    per_class: dict[int, list[tuple[Path, bytes]]] = {}
    for sample in samples:
        per_class.setdefault(sample.label, []).append((sample.path, _key(seed, sample.path)))
    n_val = {label: val_count(len(files), val_split) for label, files in per_class.items()}
    val_files, differs = split_units(per_class, n_val, unit_of)
    for label, count in differs.items():
        logger.info("%s: %d validation images instead of %d, to keep groups and duplicates on one side",
                    classes[label], count, n_val[label])  # fmt: skip
    train = [s for s in samples if s.path not in val_files]
    val = [s for s in samples if s.path in val_files]
    lost = sorted({classes[s.label] for s in samples} - {classes[s.label] for s in train})
    if lost:
        raise DataError(
            f"every training image of class(es) {lost} went to validation with its group or duplicate cluster: "
            "use fewer --folds, a smaller --val-split, or more groups of those classes"
        )
    return train, val


def _labels(samples: Sequence[Sample]) -> np.ndarray:
    return np.asarray([s.label for s in samples], dtype=np.float64).reshape(len(samples), -1)


def _split_off_val_multi(
    samples: Sequence[Sample], unit_of: dict[Path, str], val_split: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Train and val of a multi-label set: iterative stratification over the labels, whole units only."""
    part = iterative_split(_labels(samples), [unit_of.get(s.path) for s in samples], (1 - val_split, val_split), seed)
    train = [s for s, p in zip(samples, part, strict=True) if p == 0]
    return train, [s for s, p in zip(samples, part, strict=True) if p == 1]


def check_folds_multi(labels: np.ndarray, units: Sequence[Hashable], folds: int, names: Sequence[str]) -> None:
    """:func:`check_folds` for a multi-label set: every label needs positives in at least ``folds`` units.

    Raises:
        DataError: naming the label, its count and the largest fold count that works.
    """
    present = np.nan_to_num(labels, nan=0.0) > 0
    counts = {f"label {names[k]!r}": len({u for u, p in zip(units, present[:, k], strict=True) if p})
              for k in range(labels.shape[1])}  # fmt: skip
    _check_counts(counts, units, folds, "label")


def _check_counts(counts: dict[str, int], units: Sequence[Hashable], folds: int, kind: str) -> None:
    """Refuse ``folds`` when a class or label (``counts``: its name -> the units that have it) or the data as a whole
    has fewer units than folds, naming the smallest such and the fold count that works."""
    if folds < 2:
        raise DataError(f"--folds must be at least 2 (each image is held out once), got {folds}")
    what = "groups (of images kept together)" if len(set(units)) < len(units) else "images"
    for name in sorted(counts, key=lambda c: (counts[c], c)):
        n = counts[name]
        if n < folds:
            advice = f"use --folds {n} or fewer" if n >= 2 else f"cross-validation needs at least 2 per {kind}"
            has = f"{n} {what} have it" if kind == "label" else f"it has {n} {what}"
            raise DataError(
                f"--folds {folds} is more than {name} can fill: {has}, and every fold must hold out at least one; "
                f"{advice}"
            )
    total = len(set(units))
    if total < folds:
        raise DataError(f"--folds {folds} is more than the {total} {what} of the data; use --folds {total} or fewer")


def _assign(pool: list[Sample], unit_list: list, folds: int, seed: int, classes: Sequence[str]) -> list[int]:
    """Each sample's fold (0-based), stratified by class, or over the labels of a multi-label set."""
    if pool and isinstance(pool[0].label, tuple):
        labels = _labels(pool)
        check_folds_multi(labels, unit_list, folds, classes)
        return iterative_split(labels, [str(u) for u in unit_list], [1.0] * folds, seed).tolist()
    labels = [s.label for s in pool]
    check_folds(labels, unit_list, folds, classes)
    return assign_folds(labels, unit_list, folds, seed)


def fold_splits(
    splits: DataSplits,
    folds: int,
    fold: int,
    val_split: float,
    seed: int,
    units: dict | None = None,
) -> DataSplits:
    """The splits of fold ``fold`` (1 to ``folds``): its held-out images as ``test``, the rest as train and val.

    Every image of ``splits.train`` and ``splits.val`` is pooled (a ``test/`` folder is kept out of
    cross-validation, with a warning). ``units`` maps a file to its unit (group or duplicate cluster); files not in
    it are units of their own.
    """
    if not 1 <= fold <= folds:
        raise DataError(f"--fold must be between 1 and --folds {folds}, got {fold}")
    multi = splits.task == "multi"
    pool = sorted(splits.train + splits.val, key=lambda s: str(s.path) if multi else (s.label, str(s.path)))
    if splits.test:
        logger.warning("%d images of the test split (a test/ folder, or a manifest's test rows) are left out of "
                       "cross-validation", len(splits.test))  # fmt: skip
    unit_of = units or {}
    unit_list = [unit_of.get(s.path, f"\0{s.path}") for s in pool]
    fold_of = _assign(pool, unit_list, folds, seed, splits.classes)
    rest = [s for s, f in zip(pool, fold_of, strict=True) if f != fold - 1]
    test = [s for s, f in zip(pool, fold_of, strict=True) if f == fold - 1]
    train, val = split_off_val(rest, unit_of, val_split, seed, splits.classes)
    logger.info("fold %d of %d: train %d, val %d, held out %d", fold, folds, len(train), len(val), len(test))
    return replace(splits, train=train, val=val, test=test)
