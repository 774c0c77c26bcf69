"""Which images a job reads: the files of ``predict`` (folders expanded) and the labelled samples of a split,
mapped to a checkpoint's classes, as ``evaluate``, ``explain`` and quantization list them."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from pathlib import Path

from sedensenet.checkpoint import CheckpointMeta
from sedensenet.config import ConfigError
from sedensenet.data import DataError, DataSplits, Sample
from sedensenet.data.check import drop_duplicates_of_train
from sedensenet.data.description import DataDescription, check_split_csv, resolve
from sedensenet.data.scan import is_image_path

log = logging.getLogger(__name__)


def expand_inputs(inputs: list[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, recursive, hidden files skipped)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".") and is_image_path(f))
            files.extend(found)
        else:
            files.append(p)
    if not files:
        raise DataError(f"no image files found in {[str(i) for i in inputs]}")
    return files


def split_description(meta: CheckpointMeta, data: str | os.PathLike | None, split: str) -> DataDescription:
    """The description that lists ``split`` of ``data`` (default: the run's data) for a checkpoint's model.

    The run's own description (:meth:`CheckpointMeta.description`) with the data swapped when another is given: so
    ``val`` and a fold's ``test`` are the images the run held out. ``train``, ``all`` and ``auto`` without folds
    take no val share (``auto``: the test split, else the val split, else every image)."""
    run = meta.description()
    if data is None:
        if run is None:
            raise DataError("this checkpoint names no training data (written before runs recorded it): give --data")
        base = run
    else:
        given = DataDescription.for_data(data)
        base = given if run is None else replace(run, source=given.source, path=given.path)
    folds = base.folds if split in ("val", "test") else None
    changes: dict = {"dedupe": "off", "folds": folds, "fold": base.fold if folds else None}
    if split != "val" and not folds:
        changes["val_split"] = 0.0
    if base.groups_file and not Path(base.groups_file).is_file():
        log.warning("the groups file %s the model was trained with is gone: the val split may differ",
                    base.groups_file)  # fmt: skip
        changes["groups_file"] = None
    return replace(base, **changes)


def labelled_samples(
    meta: CheckpointMeta,
    data: str | os.PathLike | None,
    split: str,
    dedupe: str = "off",
    *,
    split_record: str | os.PathLike | None = None,
) -> tuple[list[Sample], list[str]]:
    """The split's samples with labels mapped to the model's class indices by name (without the duplicates of
    training images when ``dedupe`` is ``exact`` or ``near``), and the data's own classes.

    The split comes from the run's data description (:func:`split_description`); ``data`` None means the run's own
    data. ``split_record``: the run's ``split.csv``, checked against the images when given and the data is the run's
    (:func:`~sedensenet.data.description.check_split_csv`)."""
    classes = list(meta.classes)
    description = split_description(meta, data, split)
    splits = resolve(description)
    run = meta.description()
    if split_record is not None and Path(split_record).is_file() and run is not None and run.path == description.path:
        same = all(getattr(description, k) == getattr(run, k) for k in ("val_split", "folds", "groups_file"))
        check_split_csv(split_record, splits, compare_split=same)
    if dedupe == "off" and split in ("val", "test") and run is not None and run.path == description.path:
        dedupe = run.dedupe  # the run's own held-out images: without the duplicates it dropped
    kept, dropped = drop_duplicates_of_train(splits, dedupe)
    chosen = choose_split(kept, split)
    if dedupe != "off":
        if chosen is kept.train:
            raise DataError(f"--dedupe drops val/test images that duplicate training images, but {split!r} "
                             f"chose the training images of {splits.root}: use --split val or test")  # fmt: skip
        which = "test" if chosen is kept.test else "val"
        log.info("--dedupe %s: %d %s images left out as duplicates of training images", dedupe, dropped[which],
                 which)  # fmt: skip
    if meta.multilabel:
        return relabel(chosen, splits.classes, classes, source=str(description.path)), splits.classes
    unknown = sorted(set(splits.classes) - set(classes))
    if unknown:
        raise DataError(
            f"{description.path}: class(es) {unknown} are not classes of this model ({classes}); "
            f"the class names must match the classes the model was trained on"
        )
    index = {name: i for i, name in enumerate(classes)}
    return [Sample(s.path, index[splits.classes[s.label]]) for s in chosen], splits.classes


def relabel(samples: list[Sample], data_labels: list[str], model_labels: list[str], *, source: str) -> list[Sample]:
    """Multi-label samples with their label vectors in the model's label order (a label the data lacks: NaN, so it
    counts in no metric).

    Raises:
        DataError: a label the model does not know, or single-label data (``source`` names where it came from).
    """
    unknown = sorted(set(data_labels) - set(model_labels))
    if unknown:
        raise DataError(f"{source}: label(s) {unknown} are not labels of this model ({model_labels})")
    if any(not isinstance(s.label, tuple | list) for s in samples):
        raise DataError(f"{source}: a multi-label model is judged on multi-label data (a label vector per image), "
                        f"not on class folders; its labels: {model_labels}")  # fmt: skip
    where = [data_labels.index(name) if name in data_labels else None for name in model_labels]
    return [Sample(s.path, tuple(math.nan if i is None else float(s.label[i]) for i in where)) for s in samples]


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
