"""Which images a job reads: the files of ``predict`` (folders expanded) and the labelled samples of a split,
mapped to a checkpoint's classes, as ``evaluate``, ``explain`` and quantization list them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sedensenet.checkpoint import CheckpointMeta
from sedensenet.config import ConfigError
from sedensenet.data import IMG_EXTENSIONS, DataError, DataSplits, Sample, resolve_data, scan_folder
from sedensenet.data.check import drop_duplicates_of_train
from sedensenet.data.folds import fold_splits, fold_units

log = logging.getLogger(__name__)


def expand_inputs(inputs: list[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, recursive, hidden files skipped)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS and not f.name.startswith(".")
            )
            files.extend(found)
        else:
            files.append(p)
    if not files:
        raise DataError(f"no image files found in {[str(i) for i in inputs]}")
    return files


def labelled_samples(
    meta: CheckpointMeta, data: str | os.PathLike, split: str, dedupe: str = "off"
) -> tuple[list[Sample], list[str]]:
    """The split's samples with labels mapped to the model's class indices by name (without the duplicates of
    training images when ``dedupe`` is ``exact`` or ``near``), and the data's own classes.

    The val split, folds and groups are rebuilt from what the checkpoint recorded (``meta.extra``), so ``val`` and
    a fold's ``test`` are the images the run held out."""
    extra, classes = meta.extra, list(meta.classes)
    val_split = float(extra.get("val_split", 0.2)) if split == "val" else 0.0
    seed = int(extra.get("seed", 123))
    folds = int(extra.get("folds", 0)) if split in ("val", "test") else 0
    groups = (extra.get("groups") or None) if val_split or folds else None
    if groups and not Path(groups).is_file():
        log.warning("the groups file %s the model was trained with is gone: the val split may differ", groups)
        groups = None
    splits = scan_folder(resolve_data(str(data)), val_split=0.0 if folds else val_split, seed=seed,
                         groups=groups)  # fmt: skip
    if folds:  # a cross-validation fold's model: its own held-out fold and val split
        splits = fold_splits(splits, folds, int(extra["fold"]), float(extra.get("val_split", 0.2)), seed,
                             fold_units(splits))  # fmt: skip
    kept, dropped = drop_duplicates_of_train(splits, dedupe)
    chosen = choose_split(kept, split)
    if dedupe != "off":
        if chosen is kept.train:
            raise DataError(f"--dedupe drops val/test images that duplicate training images, but {split!r} "
                             f"chose the training images of {splits.root}: use --split val or test")  # fmt: skip
        which = "test" if chosen is kept.test else "val"
        log.info("--dedupe %s: %d %s images left out as duplicates of training images", dedupe, dropped[which],
                 which)  # fmt: skip
    unknown = sorted(set(splits.classes) - set(classes))
    if unknown:
        raise DataError(
            f"{data}: class folder(s) {unknown} are not classes of this model ({classes}); "
            f"the folder names must match the classes the model was trained on"
        )
    index = {name: i for i, name in enumerate(classes)}
    return [Sample(s.path, index[splits.classes[s.label]]) for s in chosen], splits.classes


def choose_split(splits: DataSplits, split: str) -> list[Sample]:
    """``auto`` (test, else val, else train), ``all``, or one named split, which must not be empty."""
    if split == "auto":
        return splits.test or splits.val or splits.train
    if split == "all":
        return splits.train + splits.val + splits.test
    chosen = {"train": splits.train, "val": splits.val, "test": splits.test}.get(split)
    if chosen is None:
        raise ConfigError(f"unknown split {split!r}: choose auto, train, val, test or all")
    if not chosen:
        raise DataError(f"{splits.root} has no {split} split")
    return chosen
