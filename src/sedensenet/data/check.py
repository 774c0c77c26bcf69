"""Is the data sound? Counts, image properties, unusable files and duplicates of a data folder, before training.

:func:`check_data` scans a folder with the same file check ``train`` uses (:func:`~sedensenet.data.scan_folder`),
then looks for exact and near duplicates among *all* images: within a class, across classes (the same image under
two labels) and across splits (leakage: a test image that is also a training image). A multi-label set also gets
its label counts per split, the co-occurrence of labels, the images with no label and the ignored entries. It returns a
:class:`DataCheck` of plain values; ``sedensenet.reports.data_report`` turns it into files, ``cli`` into a summary.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sedensenet.data.dedupe import (
    DEFAULT_NEAR_DISTANCE,
    DedupeError,
    DuplicatePair,
    clusters,
    duplicates_of,
    exact_pairs,
    find_pairs,
)
from sedensenet.data.images import Sample
from sedensenet.data.scan import SPLITS, DataSplits, scan_folder
from sedensenet.fileio import atomic_write_text

logger = logging.getLogger(__name__)

IMBALANCE_WARNING = 3.0
"""A split whose largest class has this many times the images of its smallest gets a verdict line."""

_LEAKS = (("train", "val"), ("train", "test"), ("val", "test"))


@dataclass
class FileRef:
    """One usable image: where it is, its split and class (a multi-label image's labels joined by ``|``)."""

    path: str
    split: str
    label: str


@dataclass
class Verdict:
    """One problem (or the absence of problems), counted, with what to do about it."""

    problem: str
    count: int
    message: str


@dataclass
class DataCheck:
    """Everything ``check-data`` found; :meth:`to_dict` is the JSON report."""

    root: str
    classes: list[str]
    near_distance: int
    counts: dict[str, dict[str, int]]
    imbalance: dict[str, float]
    properties: dict[str, dict[str, Any]]
    skipped: list[dict[str, str]]
    files: list[FileRef]
    pairs: list[dict[str, Any]]
    clusters: list[list[int]]
    """Indices into ``files`` of every group of more than two copies."""
    problems: dict[str, list[int]]
    """Problem name -> indices into ``files`` of the images concerned (e.g. ``test duplicates train``)."""
    groups_across_splits: dict[str, list[str]] = field(default_factory=dict)
    """Groups of the ``--groups`` CSV with images in more than one split -> those splits."""
    verdicts: list[Verdict] = field(default_factory=list)
    multilabel: LabelStats | None = None
    """A multi-label set's label statistics (``counts`` then holds each label's images with it present)."""

    def to_dict(self) -> dict[str, Any]:
        extra = {"task": "multi", "multilabel": asdict(self.multilabel)} if self.multilabel else {"task": "single"}
        return {
            "root": self.root,
            "classes": self.classes,
            "near_distance": self.near_distance,
            "counts": self.counts,
            "imbalance": self.imbalance,
            "properties": self.properties,
            "skipped": self.skipped,
            "verdicts": [v.__dict__ for v in self.verdicts],
            "pairs": self.pairs,
            "clusters": [[self.files[i].path for i in c] for c in self.clusters],
            "problems": {k: [self.files[i].path for i in v] for k, v in self.problems.items()},
            "groups_across_splits": self.groups_across_splits,
            "files": len(self.files),
            **extra,
        }


@dataclass
class LabelStats:
    """What a multi-label set holds, over every split together."""

    cooccurrence: list[list[int]]
    """K x K: images with both labels present (the diagonal: images with the label)."""
    no_label: dict[str, int]
    """Per split: images with no label present (all absent or ignored)."""
    ignored: dict[str, int]
    """Per label: entries ignored (uncertain or blank under the ``ignore`` policy: NaN)."""


def label_text(label: int | tuple[float, ...], classes: Sequence[str]) -> str:
    """A sample's class name, or a multi-label sample's present labels joined by ``|`` (empty: none)."""
    if isinstance(label, tuple):
        return "|".join(name for name, value in zip(classes, label, strict=True) if value == 1.0)
    return classes[label]


def label_stats(splits: DataSplits) -> LabelStats:
    """Co-occurrence, images with no label per split, and ignored entries per label of a multi-label set."""
    k = len(splits.classes)
    every = [s.label for split in SPLITS for s in getattr(splits, split)]
    y = np.asarray(every, dtype=np.float64).reshape(len(every), k)
    present = (y == 1.0).astype(np.int64)
    no_label = {split: sum(not any(v == 1.0 for v in s.label) for s in getattr(splits, split)) for split in SPLITS}
    return LabelStats(
        cooccurrence=(present.T @ present).tolist(),
        no_label=no_label,
        ignored={name: int(n) for name, n in zip(splits.classes, np.isnan(y).sum(axis=0), strict=True)},
    )


def _samples(splits: DataSplits) -> list[tuple[str, Sample]]:
    return [(split, s) for split in SPLITS for s in getattr(splits, split)]


def _properties(splits: DataSplits, samples: list[tuple[str, Sample]]) -> dict[str, dict[str, Any]]:
    """Per split: image sizes (min/median/max of width and height), modes, formats, EXIF-rotated files."""
    out: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        fps = [splits.fingerprints[s.path] for sp, s in samples if sp == split and s.path in splits.fingerprints]
        if not fps:
            continue
        widths, heights = [f.width for f in fps], [f.height for f in fps]
        out[split] = {
            "width": [min(widths), int(statistics.median(widths)), max(widths)],
            "height": [min(heights), int(statistics.median(heights)), max(heights)],
            "modes": dict(Counter(f.mode for f in fps).most_common()),
            "formats": dict(Counter(f.format or "?" for f in fps).most_common()),
            "exif_rotated": sum(f.exif_rotated for f in fps),
        }
    return out


def _imbalance(counts: dict[str, dict[str, int]]) -> dict[str, float]:
    out = {}
    for split, per_class in counts.items():
        n = list(per_class.values())
        if sum(n):
            out[split] = round(max(n) / max(min(n), 1), 2)
    return out


def _pair_record(pair: DuplicatePair, files: list[FileRef]) -> dict[str, Any]:
    a, b = files[pair.a], files[pair.b]
    where = []
    if a.label != b.label:
        where.append("conflicting labels")
    if a.split != b.split:
        where.append(
            f"{a.split}/{b.split}" if SPLITS.index(a.split) < SPLITS.index(b.split) else f"{b.split}/{a.split}"
        )
    if not where:
        where.append("within class")
    return {
        "a": a.path, "b": b.path, "a_split": a.split, "b_split": b.split, "a_class": a.label, "b_class": b.label,
        "kind": pair.kind, "distance": pair.distance, "similarity": round(pair.similarity, 4), "where": where,
    }  # fmt: skip


def _problems(files: list[FileRef], roots: list[int], linked: set[int]) -> dict[str, list[int]]:
    """Which images are affected by each problem, judged by their cluster of copies."""
    members: dict[int, list[int]] = {}
    for i in sorted(linked):
        members.setdefault(roots[i], []).append(i)
    out: dict[str, list[int]] = {}
    for group in members.values():
        splits = {files[i].split for i in group}
        for early, late in _LEAKS:
            if early in splits and late in splits:
                out.setdefault(f"{late} duplicates {early}", []).extend(i for i in group if files[i].split == late)
        if len({files[i].label for i in group}) > 1:
            out.setdefault("conflicting labels", []).extend(group)
        per_place = Counter((files[i].split, files[i].label) for i in group)
        extra = [i for i in group if per_place[files[i].split, files[i].label] > 1]
        if extra:
            out.setdefault("copies within a class", []).extend(extra)
    return {k: sorted(v) for k, v in out.items()}


def groups_across_splits(splits: DataSplits) -> dict[str, list[str]]:
    """Groups (from ``--groups``) whose images sit in more than one split, with those splits."""
    where: dict[str, set[str]] = {}
    for split, sample in _samples(splits):
        if sample.path in splits.groups:
            where.setdefault(splits.groups[sample.path], set()).add(split)
    return {g: sorted(s, key=SPLITS.index) for g, s in sorted(where.items()) if len(s) > 1}


def check_data(
    root: str | os.PathLike,
    near_distance: int = DEFAULT_NEAR_DISTANCE,
    max_pixels: int | None = None,
    workers: int | None = None,
    groups: str | os.PathLike | None = None,
    splits: DataSplits | None = None,
) -> DataCheck:
    """Check every file under ``root`` and find its duplicates; see the module docstring.

    ``splits``: images already listed and checked (a manifest's, resolved by
    :func:`sedensenet.data.description.resolve`) instead of scanning ``root``.

    A folder without ``train/`` is checked as one split ("train"); ``--val-split`` at training time keeps each
    duplicate cluster on one side, so only copies within and across classes matter there.

    Raises:
        DataError: the folder is missing, empty or badly laid out (as for ``train``).
        ValueError: ``near_distance`` out of range.
    """
    kwargs: dict[str, Any] = {} if max_pixels is None else {"max_pixels": max_pixels}
    if splits is None:
        splits = scan_folder(root, val_split=0.0, near_distance=near_distance, workers=workers, groups=groups,
                             **kwargs)  # fmt: skip
    samples = _samples(splits)
    files = [FileRef(_rel(s.path, splits.root), split, label_text(s.label, splits.classes)) for split, s in samples]
    logger.info("looking for duplicates among %d images", len(files))
    pairs = find_pairs([splits.fingerprints.get(s.path) for _, s in samples], "near", near_distance)
    roots = clusters(len(files), [(p.a, p.b) for p in pairs])
    linked = {i for p in pairs for i in (p.a, p.b)}
    sizes = Counter(roots[i] for i in linked)
    big = [sorted(i for i in linked if roots[i] == r) for r, n in sorted(sizes.items()) if n > 2]
    counts = splits.counts()
    check = DataCheck(
        root=str(splits.root), classes=splits.classes, near_distance=near_distance, counts=counts,
        imbalance=_imbalance(counts), properties=_properties(splits, samples),
        skipped=[{"path": _rel(s.path, splits.root), "reason": s.reason} for s in splits.skipped],
        files=files, pairs=[_pair_record(p, files) for p in pairs], clusters=big,
        problems=_problems(files, roots, linked), groups_across_splits=groups_across_splits(splits),
        multilabel=label_stats(splits) if splits.task == "multi" else None,
    )  # fmt: skip
    check.verdicts = verdicts(check)
    return check


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _near_or_exact(check: DataCheck, indices: Sequence[int]) -> str:
    chosen = {check.files[i].path for i in indices}
    near = any(p["kind"] == "near" and (p["a"] in chosen or p["b"] in chosen) for p in check.pairs)
    return "near" if near else "exact"


def _images(count: int, split: str = "") -> str:
    """ "3 test images", "1 test image"."""
    return f"{count} {split + ' ' if split else ''}image{'' if count == 1 else 's'}"


def _verb(count: int, one: str, many: str) -> str:
    return one if count == 1 else many


def verdicts(check: DataCheck) -> list[Verdict]:
    """One line per problem, with its count and what to do; a single "no problem found" line otherwise."""
    out = []
    for early, late in _LEAKS:
        n = len(idx := check.problems.get(f"{late} duplicates {early}", []))
        if n:
            scores = "validation scores (and the best epoch they pick)" if late == "val" else "scores on test"
            fix = (
                f"`--dedupe {_near_or_exact(check, idx)}` drops them from val/test"
                if early == "train"
                else "the epoch chosen on validation is tested on images it was chosen on; remove them from test"
            )
            out.append(Verdict(f"{late} duplicates {early}", n, (
                f"{_images(n, late)} {_verb(n, 'duplicates', 'duplicate')} {early} images: {scores} will be "
                f"optimistic; {fix}"
            )))  # fmt: skip
    n = len(check.groups_across_splits)
    if n:
        out.append(Verdict("groups across splits", n, (
            f"{n} group{'' if n == 1 else 's'} (e.g. {next(iter(check.groups_across_splits))}) "
            f"{_verb(n, 'has', 'have')} images in more than one split: a model tested on a patient it was trained "
            "on scores higher than on a new one; move each group's images into one split"
        )))  # fmt: skip
    n = len(check.problems.get("conflicting labels", []))
    if n:
        out.append(Verdict("conflicting labels", n, (
            f"{_images(n)} {_verb(n, 'is a copy', 'are copies')} of an image filed under another class: decide "
            "each one's class (or remove them); the model is taught two answers for one image"
        )))  # fmt: skip
    n = len(check.problems.get("copies within a class", []))
    if n:
        out.append(Verdict("copies within a class", n, (
            f"{_images(n)} {_verb(n, 'has', 'have')} a copy in the same class and split: copies count twice in "
            "training and in scores; remove the extra copies unless they are meant to weigh more"
        )))  # fmt: skip
    if check.skipped:
        out.append(Verdict("unusable files", len(check.skipped), (
            f"{len(check.skipped)} files cannot be used (unreadable, truncated, empty, not images or too large): "
            "train skips them; fix or remove them"
        )))  # fmt: skip
    out += _label_verdicts(check)
    if not out:
        out.append(Verdict("none", 0, "no duplicates, leaks, label conflicts or unusable files found"))
    return out


def _label_verdicts(check: DataCheck) -> list[Verdict]:
    """Imbalance between classes (labels of a multi-label set), and labels that no image has."""
    out = []
    for split, ratio in check.imbalance.items():
        if ratio < IMBALANCE_WARNING:
            continue
        if check.multilabel is None:
            message = (f"{split}: the largest class has {ratio:g}x the images of the smallest: accuracy hides the "
                       "small classes; read per-class recall, and consider `--class-weights auto`")  # fmt: skip
        else:
            message = (f"{split}: the most common label has {ratio:g}x the images of the rarest: the mean AUROC hides "
                       "the rare labels; read the per-label table, and consider `--class-weights auto`")  # fmt: skip
        out.append(Verdict(f"imbalance in {split}", 1, message))
    if check.multilabel is not None:
        absent = [name for i, name in enumerate(check.classes) if check.multilabel.cooccurrence[i][i] == 0]
        if absent:
            out.append(Verdict("labels without images", len(absent), (
                f"no image has the label(s) {', '.join(absent)}: the model cannot learn them and their AUROC is "
                "undefined; drop those columns (--label-col a,b,c names the others) or add images"
            )))  # fmt: skip
    return out


DEDUPE_MODES = ("off", "exact", "near")


def drop_duplicates_of_train(
    splits: DataSplits, mode: str, near_distance: int = DEFAULT_NEAR_DISTANCE
) -> tuple[DataSplits, dict[str, int]]:
    """``splits`` without the val and test images that duplicate a training image, and how many each lost.

    ``exact``: the same decoded pixels; ``near``: also near duplicates (see :mod:`sedensenet.data.dedupe`).
    """
    if mode not in DEDUPE_MODES:
        raise DedupeError(f"dedupe must be one of {', '.join(DEDUPE_MODES)}, got {mode!r}")
    if mode == "off":
        return splits, {}
    train = [splits.fingerprints.get(s.path) for s in splits.train]
    kept: dict[str, list[Sample]] = {}
    dropped: dict[str, int] = {}
    for split in ("val", "test"):
        samples = getattr(splits, split)
        dup = duplicates_of(train, [splits.fingerprints.get(s.path) for s in samples], mode, near_distance)
        kept[split] = [s for s, d in zip(samples, dup, strict=True) if not d]
        dropped[split] = len(samples) - len(kept[split])
    out = replace(splits, val=kept["val"], test=kept["test"])
    return out, dropped


def exact_leaks(splits: DataSplits) -> list[dict[str, str]]:
    """The cheap check ``train`` runs: pairs of files with the same pixels in two splits or under two classes."""
    samples = _samples(splits)
    pairs = exact_pairs([splits.fingerprints.get(s.path) for _, s in samples])
    rows = []
    for pair in pairs:
        (split_a, a), (split_b, b) = samples[pair.a], samples[pair.b]
        if split_a != split_b or label_text(a.label, splits.classes) != label_text(b.label, splits.classes):
            rows.append({
                "file": str(a.path), "split": split_a, "class": label_text(a.label, splits.classes),
                "copy": str(b.path), "copy_split": split_b, "copy_class": label_text(b.label, splits.classes),
                "kind": pair.kind,
            })  # fmt: skip
    return rows


def write_leaks_csv(rows: list[dict[str, str]], path: str | os.PathLike) -> Path:
    """Write :func:`exact_leaks`'s rows as CSV (UTF-8, header always), atomically; returns the path."""
    columns = ["file", "split", "class", "copy", "copy_split", "copy_class", "kind"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())
