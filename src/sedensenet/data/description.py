"""One typed, frozen description of a data set and its split, and the one function that turns it into samples.

A :class:`DataDescription` says where the images are (a class-folder tree or a CSV / TSV manifest), how the table
reads, and how the split is made (val split, seed, fold, groups, dedupe, pixel limit, DICOM window). It goes
to JSON and back unchanged, so a checkpoint can store it and ``evaluate RUN`` / ``export --quantize`` rebuild the
run's exact split. :func:`resolve` is the only way from a description to train / val / test samples:

* ``folder``: :func:`sedensenet.data.scan.scan_folder` as training has always called it (unchanged);
* ``table``: :func:`sedensenet.data.table.read_table`, then the split column as given (val carved out of train
  when only train and test are given) or, without one, the same stratified, seeded val split as for folders;
  groups (a group column, or a ``--groups`` file) and duplicate clusters stay whole on one side.

With ``folds``, fold ``fold`` is held out as test and train / val come from the rest (test rows of a table stay
out of every fold). A new kind of source is one more branch of :func:`resolve` returning the same
:class:`~sedensenet.data.scan.DataSplits`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from sedensenet.data.builtin import TABLES, builtin_table, is_builtin, resolve_data
from sedensenet.data.check import DEDUPE_MODES, drop_duplicates_of_train, label_text
from sedensenet.data.dedupe import DEFAULT_NEAR_DISTANCE, Fingerprint
from sedensenet.data.dicom import DicomOptions
from sedensenet.data.folds import fold_splits, fold_units
from sedensenet.data.groups import read_groups, split_units
from sedensenet.data.images import DEFAULT_MAX_PIXELS, DataError, Sample, inspect_image
from sedensenet.data.scan import DataSplits, Skipped, linked_units, scan_folder, val_count
from sedensenet.data.stratify import iterative_split
from sedensenet.data.table import LabelOptions, Table, TableSample, is_table, read_table

logger = logging.getLogger(__name__)

SOURCES = ("folder", "table")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TableColumns:
    """The columns of a manifest; ``None``: found by the common names (see :mod:`sedensenet.data.table`)."""

    image: str | None = None
    label: str | None = None
    group: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class DataDescription:
    """Where the images are and how they are split; frozen, and the same after a JSON round trip."""

    source: str
    """``"folder"`` (class sub-folders, or train/val/test folders) or ``"table"`` (a CSV / TSV manifest)."""
    path: str
    """The folder (or ``"builtin:NAME"``, kept as given), or the table file: absolute."""
    image_root: str | None = None
    """Table only: the folder image paths are relative to (``None``: the table's folder)."""
    image_ext: str | None = None
    """Table only: appended to image names without it (tables of ids)."""
    columns: TableColumns = field(default_factory=TableColumns)
    encoding: str = "utf-8"
    skip_missing: bool = False
    groups_file: str | None = None
    """A ``file,group`` CSV (``--groups``); for a table, only when it has no group column."""
    val_split: float = 0.2
    split_seed: int = 123
    folds: int | None = None
    fold: int | None = None
    dedupe: str = "off"
    max_pixels: int = DEFAULT_MAX_PIXELS
    dicom_window: tuple[float, float] | None = None
    task: str = "auto"
    """``"auto"`` (a table is multi-label when a cell names several labels or the labels are 0/1 columns),
    ``"single"`` or ``"multi"``; folders are single-label."""
    label_delim: str = "|"
    """Table: the separator of several labels in one cell (``;`` and ``,`` are read too where unambiguous)."""
    none_label: str | None = None
    """Table: the label that means "no finding" (all zeros, not a class), e.g. ``"No Finding"``."""
    uncertain: str = "ignore"
    """Multi-label: what an uncertain (-1) entry becomes: ``ignore`` (NaN, masked), ``zeros`` or ``ones``."""
    missing: str = "ignore"
    """Multi-label: what a blank entry becomes: ``ignore`` (NaN, masked) or ``zeros``."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise DataError(f"unknown data source {self.source!r}; choose one of: {', '.join(SOURCES)}")
        self.label_options()  # validates task, label_delim, uncertain, missing
        if self.source == "folder" and self.task == "multi":
            raise DataError("a folder of class sub-folders is single-label: task 'multi' needs a CSV / TSV manifest "
                            "(one label column with several labels per cell, or one 0/1 column per label)")  # fmt: skip
        vs = self.val_split
        if not isinstance(vs, int | float) or isinstance(vs, bool) or math.isnan(vs) or not 0 <= vs < 1:
            raise DataError(f"val_split must be in [0, 1) (a fraction such as 0.2), got {vs!r}")
        if (self.folds is None) != (self.fold is None):
            raise DataError("folds and fold go together: give both (fold 1 to folds) or neither")
        if self.folds is not None and not (self.folds >= 2 and 1 <= self.fold <= self.folds):
            raise DataError(f"fold must be between 1 and folds (at least 2), got fold {self.fold} of {self.folds}")
        if self.dedupe not in DEDUPE_MODES:
            raise DataError(f"dedupe must be one of {', '.join(DEDUPE_MODES)}, got {self.dedupe!r}")
        if self.source == "table" and self.groups_file and self.columns.group:
            raise DataError(
                f"both a groups file ({self.groups_file}) and a group column ({self.columns.group!r}) were given: "
                "keep one of them"
            )
        if self.dicom_window is not None:
            try:
                window = DicomOptions(window=tuple(self.dicom_window)).window
            except (TypeError, ValueError) as exc:
                raise DataError(f"dicom_window: {exc}") from None
            object.__setattr__(self, "dicom_window", window)

    def label_options(self) -> LabelOptions:
        """How the table's label cells read (:func:`~sedensenet.data.table.read_table`'s ``labels``)."""
        return LabelOptions(task=self.task, label_delim=self.label_delim, none_label=self.none_label or None,
                            uncertain=self.uncertain, missing=self.missing)  # fmt: skip

    @classmethod
    def for_data(cls, data: str | os.PathLike, **settings: Any) -> DataDescription:
        """The description of ``data``: a table when it is named ``*.csv`` / ``*.tsv`` or is a built-in table set
        (``"builtin:digit-pairs"``, kept as given), else a folder (a ``"builtin:NAME"`` set is written on first
        use)."""
        path = data if is_builtin(data) else os.path.abspath(os.path.expanduser(data))
        columns = settings.pop("columns", None) or TableColumns()
        table = is_table(path) or (is_builtin(path) and str(path).split(":", 1)[1] in TABLES)
        return cls(source="table" if table else "folder", path=path, columns=columns, **settings)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, with a ``version``."""
        out = asdict(self)
        out["dicom_window"] = list(self.dicom_window) if self.dicom_window is not None else None
        return {"version": FORMAT_VERSION, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataDescription:
        """The inverse of :meth:`to_dict`; unknown keys or a newer version are refused (naming them)."""
        data = dict(data)
        version = data.pop("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise DataError(f"data description version {version} is not understood (this sedensenet reads 1)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"unknown data description fields: {', '.join(unknown)}")
        data["columns"] = TableColumns(**(data.get("columns") or {}))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DataDescription:
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------------------------
# Resolving
# ---------------------------------------------------------------------------------------------------------------


def resolve(description: DataDescription, *, check_images: bool = True, workers: int | None = None) -> DataSplits:
    """The train / val / test samples (and classes, skipped files, groups) that ``description`` describes.

    Args:
        check_images: decode every listed image of a table once (as folders always are), leaving out unusable
            ones as skipped and fingerprinting the rest, so duplicate clusters stay whole and ``dedupe`` works;
            ``False`` checks only that the files exist.
        workers: threads that decode files (default ``min(8, cpu count)``).

    Raises:
        DataError: a problem with the data, naming the folder, row or class.
    """
    if description.source == "folder":
        splits = _resolve_folder(description, workers)
    else:
        splits = _resolve_table(description, check_images=check_images, workers=workers)
    splits, dropped = drop_duplicates_of_train(splits, description.dedupe)
    if description.dedupe != "off":
        logger.info("dedupe %s: dropped %d val and %d test images that duplicate training images",
                    description.dedupe, dropped["val"], dropped["test"])  # fmt: skip
    return splits


def _resolve_folder(d: DataDescription, workers: int | None) -> DataSplits:
    """Exactly what training does with a folder: scan (val split 0 under folds), then the fold."""
    groups = d.groups_file or None
    val_split = 0 if d.folds else d.val_split
    splits = scan_folder(resolve_data(d.path), val_split=val_split, seed=d.split_seed, max_pixels=d.max_pixels,
                         workers=workers, groups=groups)  # fmt: skip
    if d.folds:
        splits = fold_splits(splits, d.folds, d.fold, d.val_split, d.split_seed, fold_units(splits))
    return splits


def _read(d: DataDescription) -> Table:
    c = d.columns
    path = builtin_table(d.path) or d.path  # a built-in table set is written on first use
    return read_table(path, image_col=c.image, label_col=c.label, group_col=c.group, split_col=c.split,
                      image_root=d.image_root, image_ext=d.image_ext, encoding=d.encoding,
                      skip_missing=d.skip_missing, labels=d.label_options())  # fmt: skip


def _table_groups(d: DataDescription, table: Table) -> dict[Path, str]:
    if not d.groups_file:
        return {s.path: s.group for s in table.samples if s.group is not None}
    if table.group_col is not None:
        raise DataError(
            f"both a groups file ({d.groups_file}) and a group column ({table.group_col!r} in {table.source.name}) "
            "were found: keep one of them"
        )
    return read_groups(d.groups_file, table.image_root, [s.path for s in table.samples])


def _check(samples: list[TableSample], max_pixels: int, workers: int | None) -> list[tuple[str | None, Any]]:
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    paths = [s.path for s in samples]
    if workers <= 1 or len(paths) < 2:
        return [inspect_image(p, max_pixels) for p in paths]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check_image") as pool:
        return list(pool.map(lambda p: inspect_image(p, max_pixels), paths))


def _checked(
    table: Table, d: DataDescription, *, check_images: bool, workers: int | None
) -> tuple[list[TableSample], list[Skipped], dict[Path, Fingerprint]]:
    """The table's usable rows, the files left out (missing or unusable) and the usable files' fingerprints."""
    skipped = [Skipped(s.path, f"listed in {table.source.name} (row {s.row}) but not found") for s in table.missing]
    samples = table.samples
    fingerprints: dict[Path, Fingerprint] = {}
    if check_images:
        kept = []
        for s, (reason, fp) in zip(samples, _check(samples, d.max_pixels, workers), strict=True):
            if reason is None:
                kept.append(s)
                if fp is not None:
                    fingerprints[s.path] = fp
            else:
                skipped.append(Skipped(s.path, reason))
        samples = kept
    return samples, skipped, fingerprints


def _resolve_table(d: DataDescription, *, check_images: bool, workers: int | None) -> DataSplits:
    table = _read(d)
    samples, skipped, fingerprints = _checked(table, d, check_images=check_images, workers=workers)
    if table.task == "multi":
        return _resolve_multi(d, table, samples, skipped, fingerprints)
    classes = sorted({s.label for s in samples})
    if len(classes) < 2:
        raise DataError(f"{table.source} has {len(classes)} usable class(es) ({', '.join(classes)}): a classifier "
                        "needs at least two")  # fmt: skip
    index = {name: i for i, name in enumerate(classes)}
    groups = _table_groups(d, table)
    by_split: dict[str | None, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (index[s.label], str(s.path))):
        by_split.setdefault(s.split, []).append(Sample(s.path, index[s.label]))
    test = by_split.pop("test", [])
    given_val = by_split.pop("val", [])
    pool = by_split.pop("train", []) + by_split.pop(None, [])
    splits = DataSplits(table.image_root, classes, pool, given_val, test, skipped, fingerprints, groups)
    if d.folds:
        return fold_splits(splits, d.folds, d.fold, d.val_split, d.split_seed, fold_units(splits))
    if given_val or d.val_split == 0:
        _require_train(splits, table)
        return splits
    train, val = _carve_val(pool, table, classes, fingerprints, groups, d)
    splits = replace(splits, train=train, val=val)
    _require_train(splits, table)
    return splits


def _resolve_multi(
    d: DataDescription, table: Table, samples: list[TableSample], skipped: list[Skipped],
    fingerprints: dict[Path, Fingerprint],
) -> DataSplits:  # fmt: skip
    """A multi-label table's splits: test (and val) from the split column as given; otherwise val carved out of
    train by iterative stratification over the labels, groups and duplicate clusters kept whole."""
    if not table.label_names:
        raise DataError(f"{table.source}: no label is present in any row: a multi-label table needs at least one")
    groups = _table_groups(d, table)
    by_split: dict[str | None, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: str(s.path)):
        by_split.setdefault(s.split, []).append(Sample(s.path, s.label))
    test, given_val = by_split.pop("test", []), by_split.pop("val", [])
    pool = sorted(by_split.pop("train", []) + by_split.pop(None, []), key=lambda s: str(s.path))
    splits = DataSplits(table.image_root, list(table.label_names), pool, given_val, test, skipped, fingerprints,
                        groups, task="multi")  # fmt: skip
    if d.folds:
        splits = fold_splits(splits, d.folds, d.fold, d.val_split, d.split_seed, fold_units(splits))
    elif not given_val and d.val_split > 0 and pool:
        units = linked_units({0: [s.path for s in pool]}, fingerprints, DEFAULT_NEAR_DISTANCE, groups)
        labels = np.asarray([s.label for s in pool], dtype=np.float64).reshape(len(pool), -1)
        part = iterative_split(labels, [units.get(s.path) for s in pool], (1 - d.val_split, d.val_split),
                               d.split_seed)  # fmt: skip
        splits = replace(splits, train=[s for s, p in zip(pool, part, strict=True) if p == 0],
                         val=[s for s, p in zip(pool, part, strict=True) if p == 1])  # fmt: skip
    _warn_absent(splits)
    return splits


def _warn_absent(splits: DataSplits) -> None:
    """Warn of labels no training image has: nothing teaches them, and their AUROC is undefined."""
    counts = splits.counts()["train"]
    absent = [name for name, n in counts.items() if n == 0]
    if absent:
        logger.warning("no training image has the label(s) %s: the model cannot learn them", ", ".join(absent))


def _require_train(splits: DataSplits, table: Table) -> None:
    lacking = [c for i, c in enumerate(splits.classes) if not any(s.label == i for s in splits.train)]
    if lacking:
        raise DataError(f"{table.source}: no training images of class(es) {', '.join(lacking)}: every class needs "
                        "some rows in the train split")  # fmt: skip


def _key(seed: int, root: str, path: Path) -> bytes:
    # The path relative to the image root: the split depends on the seed and the file names only. String
    # operations, not pathlib: this runs once per row of tables with 100,000 rows.
    text = os.fspath(path)
    rel = (text[len(root) :] if text.startswith(root) else text).replace(os.sep, "/")
    return hashlib.sha256(f"{seed}\0{rel}".encode("utf-8", "surrogateescape")).digest()


def _carve_val(
    pool: list[Sample], table: Table, classes: list[str], fingerprints: dict[Path, Fingerprint],
    groups: dict[Path, str], d: DataDescription,
) -> tuple[list[Sample], list[Sample]]:  # fmt: skip
    """Per class about ``val_split`` of the images (rounded half up, at least one) go to val, in a seeded order,
    whole groups and duplicate clusters only: the folder split's rule (:func:`split_units`)."""
    per_class: dict[int, list[Path]] = {}
    for s in pool:
        per_class.setdefault(s.label, []).append(s.path)
    for label, paths in per_class.items():
        if len(paths) < 2:
            raise DataError(
                f"{table.source}: class {classes[label]!r} has only {len(paths)} usable training image; with "
                f"val_split={d.val_split} every class needs at least 2: add rows, or use val_split=0"
            )
    units = linked_units(per_class, fingerprints, DEFAULT_NEAR_DISTANCE, groups)
    root = os.path.join(os.fspath(table.image_root), "")
    keyed = {label: [(p, _key(d.split_seed, root, p)) for p in paths] for label, paths in per_class.items()}
    n_val = {label: val_count(len(paths), d.val_split) for label, paths in per_class.items()}
    val_files, differs = split_units(keyed, n_val, units)
    for label, count in differs.items():
        logger.info("%s: %d validation images instead of %d, to keep groups and duplicates on one side",
                    classes[label], count, n_val[label])  # fmt: skip
    return [s for s in pool if s.path not in val_files], [s for s in pool if s.path in val_files]


# ---------------------------------------------------------------------------------------------------------------
# split.csv: every image's split, written by a run and checked by ``evaluate RUN``
# ---------------------------------------------------------------------------------------------------------------

SPLIT_CSV = "split.csv"
SPLIT_COLUMNS = ("path", "split", "class", "group")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return os.path.relpath(path, root).replace(os.sep, "/")


def split_rows(splits: DataSplits) -> list[dict[str, str]]:
    """One row per image: its path relative to the data root (``/``-separated), split, class (a multi-label
    sample's present labels joined by ``|``) and group."""
    return [
        {"path": _relative(s.path, splits.root), "split": name, "class": label_text(s.label, splits.classes),
         "group": splits.groups.get(s.path, "")}
        for name in ("train", "val", "test")
        for s in getattr(splits, name)
    ]  # fmt: skip


def write_split_csv(splits: DataSplits, dest: str | os.PathLike) -> Path:
    """``split.csv`` (UTF-8): every image of ``splits`` with its split, class and group (a DICOM patient's group is
    a salted hash, never the patient id)."""
    import csv

    dest = Path(dest)
    with open(dest, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SPLIT_COLUMNS)
        writer.writeheader()
        writer.writerows(split_rows(splits))
    return dest


def read_split_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows :func:`write_split_csv` wrote."""
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def check_split_csv(path: str | os.PathLike, splits: DataSplits, *, compare_split: bool) -> None:
    """Stop when the images of ``splits`` are no longer those the run listed in ``path`` (its ``split.csv``).

    Images listed but gone (or now unreadable), images that are new, and images whose class (or, with
    ``compare_split``, split) differs are named, the first few of each.

    Raises:
        DataError: naming the files that changed, and ``path``.
    """
    recorded = {r["path"]: r for r in read_split_csv(path)}
    now = {r["path"]: r for r in split_rows(splits)}
    gone = sorted(set(recorded) - set(now))
    new = sorted(set(now) - set(recorded))
    keys = ("class", "split") if compare_split else ("class",)
    moved = sorted(p for p in set(now) & set(recorded) if any(now[p][k] != recorded[p][k] for k in keys))
    problems = [
        f"{len(files)} {what} (e.g. {', '.join(files[:3])})"
        for files, what in ((gone, "listed image(s) gone or unreadable"), (new, "new image(s)"),
                            (moved, "image(s) now in another class or split"))
        if files
    ]  # fmt: skip
    if problems:
        raise DataError(
            f"the images under {splits.root} are no longer those the run used (its {Path(path).name}): "
            f"{'; '.join(problems)}. Evaluate the run on the data as it was, or pass --data to evaluate on this data"
        )
