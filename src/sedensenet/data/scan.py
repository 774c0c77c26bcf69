"""Scan a class-per-folder image tree, check every file up front, and split it into train / val / test.

Two layouts are understood (class names are the sorted sub-folder names, as torchvision's ``ImageFolder`` and
Keras' ``image_dataset_from_directory`` do):

* ``root/<class>/<images>``: split into train and validation per class (stratified, seeded);
* ``root/train/<class>/...``, ``root/val/<class>/...`` (or ``validation/``), optional ``root/test/<class>/...``:
  used as given. Without ``val/`` the validation set is split off ``train/`` as in the first layout.

Every file with an image extension is decoded once before training; files that cannot be used are returned as
:class:`Skipped` with a short reason instead of failing the run in the middle of an epoch.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sedensenet.data.dedupe import DEFAULT_NEAR_DISTANCE, Fingerprint, check_near_distance, clusters, find_pairs
from sedensenet.data.dicom import DICOM_SUFFIXES, has_marker, is_dicom, local_salt, patient_groups
from sedensenet.data.groups import read_groups, split_units
from sedensenet.data.images import DEFAULT_MAX_PIXELS, DataError, Sample, inspect_image
from sedensenet.fileio import atomic_path

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")

_IGNORED_FILES = {"thumbs.db", "desktop.ini"}
_IGNORED_DIRS = {"__macosx"}
_VAL_NAMES = ("val", "validation")


@dataclass
class Skipped:
    """A file (or folder) left out of the data set, with a short human-readable reason."""

    path: Path
    reason: str


@dataclass
class DataSplits:
    """The result of :func:`scan_folder`: classes, the three splits (``test`` may be empty) and what was skipped."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    fingerprints: dict[Path, Fingerprint] = field(default_factory=dict, repr=False, compare=False)
    """Every usable file's fingerprint (hashes, size, mode, format), from the file check's own decode."""
    groups: dict[Path, str] = field(default_factory=dict, repr=False, compare=False)
    """Each file's group from a ``--groups`` CSV (empty without one)."""
    task: str = "single"
    """``"single"`` (a class index per sample) or ``"multi"`` (a tuple per sample; ``classes`` are the label
    names)."""

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: ``{"train": {"cats": 80, ...}, "val": {...}, "test": {...}}``; in a
        multi-label set, the images with each label present (an image counts once per label it has).

        Every split and every class is present (with 0 where empty), so the shape never changes.
        """
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            per_class = dict.fromkeys(self.classes, 0)
            for sample in getattr(self, split):
                if isinstance(sample.label, tuple):
                    for name, value in zip(self.classes, sample.label, strict=True):
                        per_class[name] += value == 1.0
                else:
                    per_class[self.classes[sample.label]] += 1
            out[split] = per_class
        return out


def is_image_file(name: str | os.PathLike) -> bool:
    """True when the file name ends with one of :data:`IMG_EXTENSIONS` or a DICOM suffix (``.dcm``, ``.dicom``;
    case-insensitive)."""
    return os.fspath(name).lower().endswith(IMG_EXTENSIONS + DICOM_SUFFIXES)


def is_image_path(path: str | os.PathLike) -> bool:
    """:func:`is_image_file`, or a file with no extension that carries DICOM's ``DICM`` marker (exports from
    PACS often name files by their UID alone)."""
    if is_image_file(path):
        return True
    name = os.path.basename(os.fspath(path))
    return "." not in name and os.path.isfile(path) and has_marker(path)


def _ignored_dir(name: str) -> bool:
    return name.startswith(".") or name.lower() in _IGNORED_DIRS


def _ignored_file(name: str) -> bool:
    # "._photo.jpg" files are macOS resource forks: hidden, and not images despite the extension.
    return name.startswith(".") or name.lower() in _IGNORED_FILES


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a symlinked class folder, as torchvision does
    except OSError:
        return False


def find_classes(directory: str | os.PathLike) -> list[str]:
    """Sorted names of the class sub-folders of ``directory`` (hidden folders and ``__MACOSX`` ignored).

    Raises:
        DataError: ``directory`` is missing, unreadable, or holds no class folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "does not exist"
        raise DataError(f"{directory} {what}: give a folder with one sub-folder of images per class")
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise DataError(f"cannot read folder {directory}: {exc.strerror or exc}") from exc
    classes = sorted(e.name for e in entries if _is_dir(e) and not _ignored_dir(e.name))
    if not classes:
        loose = sum(1 for e in entries if not _is_dir(e) and is_image_file(e.name))
        hint = f" It holds {loose} image files directly: move them into class sub-folders." if loose else ""
        raise DataError(
            f"{directory} has no class folders.{hint} Expected one sub-folder per class, "
            f"e.g. {directory / 'cats'}/1.jpg and {directory / 'dogs'}/2.jpg "
            "(or train/<class>/ and val/<class>/ folders)"
        )
    return classes


# ---------------------------------------------------------------------------------------------------------------
# Scanning a tree
# ---------------------------------------------------------------------------------------------------------------


def _check_val_split(val_split: float) -> None:
    if not isinstance(val_split, int | float) or math.isnan(val_split) or not 0 <= val_split < 1:
        raise DataError(f"val_split must be in [0, 1) (a fraction such as 0.2), got {val_split!r}")


def _layout(root: Path) -> dict[str, Path | None]:
    """``{"train": dir, "val": dir | None, "test": dir | None}``; layout A is ``{"train": root}``."""
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data folder {root} {what}")
    subdirs = {name.lower(): root / name for name in find_classes(root)}
    if "train" not in subdirs:
        return {"train": root, "val": None, "test": None}
    vals = [subdirs[n] for n in _VAL_NAMES if n in subdirs]
    others = sorted(p.name for n, p in subdirs.items() if n not in ("train", "test", *_VAL_NAMES))
    if others:
        raise DataError(
            f"{root} mixes split folders (train/) with other folders ({', '.join(others)}): use either "
            f"{root}/<class>/<images> or {root}/train/<class>/ with {root}/val/<class>/ (and test/)"
        )
    if len(vals) > 1:
        raise DataError(f"{root} has both val/ and validation/: keep one of them")
    return {"train": subdirs["train"], "val": vals[0] if vals else None, "test": subdirs.get("test")}


def _common_classes(dirs: dict[str, Path | None]) -> list[str]:
    train_dir = dirs["train"]
    classes = find_classes(train_dir)
    for split in ("val", "test"):
        split_dir = dirs[split]
        if split_dir is None:
            continue
        other = find_classes(split_dir)
        if set(other) != set(classes):
            only_train = sorted(set(classes) - set(other))
            only_other = sorted(set(other) - set(classes))
            raise DataError(
                f"{split_dir} and {train_dir} must hold the same class folders; "
                f"only in {train_dir.name}/: {', '.join(only_train) or '-'}; "
                f"only in {split_dir.name}/: {', '.join(only_other) or '-'}"
            )
    if len(classes) < 2:
        raise DataError(
            f"{train_dir} has only one class folder ({classes[0]!r}); a classifier needs at least two: "
            "add a sub-folder of images for each other class"
        )
    return classes


def _list_images(class_dir: Path, skipped: list[Skipped]) -> tuple[list[Path], int]:
    """Image-extension files under ``class_dir`` (recursive, sorted) and the number of other files ignored."""
    files: list[Path] = []
    ignored = 0
    seen: set[tuple[int, int]] = set()

    def on_error(exc: OSError) -> None:
        skipped.append(Skipped(Path(exc.filename or class_dir), f"unreadable folder: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False, onerror=on_error):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a bind mount or a loop: never walk a folder twice
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if not _ignored_dir(d)]
        for name in filenames:
            if _ignored_file(name):
                continue
            if is_image_path(os.path.join(dirpath, name)):
                files.append(Path(dirpath, name))
            else:
                ignored += 1
    return sorted(files), ignored


def _check_all(
    paths: Sequence[Path], max_pixels: int, workers: int | None
) -> list[tuple[str | None, Fingerprint | None]]:
    """:func:`inspect_image` over ``paths`` in a thread pool (PIL releases the GIL while decoding)."""
    workers = min(8, os.cpu_count() or 1) if workers is None else workers

    def check(path: Path) -> tuple[str | None, Fingerprint | None]:
        return inspect_image(path, max_pixels)

    start = time.perf_counter()
    # Our own pixel check reports large images; PIL's warning for them would only add noise. The filter is
    # changed here in the calling thread, around the whole pool, since catch_warnings is not thread-safe.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if workers <= 1 or len(paths) < 2:
            results = [check(p) for p in paths]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check_image") as pool:
                results = list(pool.map(check, paths))
    logger.debug("checked %d files with %d workers in %.1fs", len(paths), workers, time.perf_counter() - start)
    return results


def _split_key(seed: int, class_dir: Path, path: Path) -> bytes:
    # A hash of the path relative to its class folder: the split depends on the file names and the seed only,
    # not on the listing order, the platform or where the data folder lives; a new file moves at most one other.
    rel = path.relative_to(class_dir).as_posix()
    return hashlib.sha256(f"{seed}\0{rel}".encode("utf-8", "surrogateescape")).digest()


def val_count(n: int, val_split: float) -> int:
    """Images of a class (of ``n``) that go to validation: rounded half up, at least 1 and at most n - 1."""
    if val_split == 0:
        return 0
    return min(max(math.floor(n * val_split + 0.5), 1), n - 1)


def _gather(
    dirs: dict[str, Path | None], classes: list[str]
) -> tuple[dict[tuple[str, int], list[Path]], list[Skipped], int]:
    """Candidate files per (split, class), folders that could not be read, and how many non-images were seen."""
    found: dict[tuple[str, int], list[Path]] = {}
    skipped: list[Skipped] = []
    ignored = 0
    for split, split_dir in dirs.items():
        if split_dir is None:
            continue
        for label, name in enumerate(classes):
            found[split, label], n_ignored = _list_images(split_dir / name, skipped)
            ignored += n_ignored
    return found, skipped, ignored


def _keep_readable(
    found: dict[tuple[str, int], list[Path]], dirs: dict[str, Path | None], classes: list[str], reasons: Iterable
) -> tuple[dict[tuple[str, int], list[Path]], list[Skipped]]:
    reasons = iter(reasons)
    good: dict[tuple[str, int], list[Path]] = {}
    skipped: list[Skipped] = []
    for (split, label), paths in found.items():
        good[split, label] = []
        for path in paths:
            reason, _ = next(reasons)
            if reason is None:
                good[split, label].append(path)
            else:
                skipped.append(Skipped(path, reason))
        if not good[split, label]:
            class_dir = dirs[split] / classes[label]
            bad = len(paths)
            raise DataError(
                f"{class_dir} has no readable images ({bad} skipped): add {'/'.join(IMG_EXTENSIONS)} files to "
                "it, or remove the folder"
            )
    return good, skipped


def scan_folder(
    root: str | os.PathLike,
    val_split: float = 0.2,
    seed: int = 123,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    groups: str | os.PathLike | None = None,
    near_distance: int = DEFAULT_NEAR_DISTANCE,
) -> DataSplits:
    """Find the classes and images under ``root``, check every image, and split them.

    Args:
        root: ``root/<class>/...`` or ``root/train/<class>/...`` + ``root/val/<class>/...`` (+ ``test/``).
        val_split: fraction of each class kept for validation when there is no ``val/`` folder; 0 for none.
            Rounded half up per class, and at least one image of every class when above 0.
        seed: the split depends only on this seed and the file names (relative to their class folder).
        max_pixels: images with more pixels (width * height, read from the header) are skipped.
        workers: threads that decode files; default ``min(8, os.cpu_count())``, 0 or 1 for none.
        groups: a CSV of ``file,group`` (e.g. a patient id): each group stays on one side of the split.
        near_distance: perceptual-hash bits within which two images may be near duplicates; clusters of exact
            and near duplicates always stay on one side of the split.

    Returns:
        The classes (sorted folder names), train / val / test samples sorted by class and path, the files that
        were skipped with their reasons, and every usable file's fingerprint.

    Raises:
        DataError: a missing folder, a bad layout, train/val/test folders with different classes, a class
            without readable images (or too few to split), fewer than two classes, or a bad ``val_split``.
        GroupsError: a groups file that misses images or names unknown files.
    """
    _check_val_split(val_split)
    check_near_distance(near_distance)
    root = Path(os.path.abspath(os.path.expanduser(root)))
    dirs = _layout(root)
    classes = _common_classes(dirs)
    found, skipped, ignored = _gather(dirs, classes)
    paths = [p for group in found.values() for p in group]
    group_of = read_groups(groups, root, paths) if groups else _patients(paths)
    logger.info("checking %d image files in %d classes under %s", len(paths), len(classes), root)
    checked = _check_all(paths, max_pixels, workers)
    fingerprints = {p: fp for p, (_, fp) in zip(paths, checked, strict=True) if fp is not None}
    good, bad = _keep_readable(found, dirs, classes, checked)
    skipped.extend(bad)

    splits: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for (split, label), split_paths in good.items():
        if split != "train" or dirs["val"] is not None:
            splits[split] += [Sample(p, label) for p in split_paths]
    if dirs["val"] is None:
        train_paths = {label: ps for (split, label), ps in good.items() if split == "train"}
        units = linked_units(train_paths, fingerprints, near_distance, group_of) if val_split > 0 else {}
        splits["train"], splits["val"] = _split(train_paths, dirs["train"], classes, val_split, seed, units)
    else:
        logger.info("validation images come from %s (val_split is not used)", dirs["val"])

    result = DataSplits(root, classes, splits["train"], splits["val"], splits["test"], skipped, fingerprints,
                        group_of)  # fmt: skip
    _log_summary(result, ignored)
    return result


def _patients(paths: Sequence[Path]) -> dict[Path, str]:
    """In a folder with DICOM files, each patient's films are one group (a keyed hash of ``PatientID``, never the
    id itself), so a patient never straddles train and val without a groups file."""
    dicom = [p for p in paths if p.suffix.lower() in DICOM_SUFFIXES or (not p.suffix and is_dicom(p))]
    if not dicom:
        return {}
    from sedensenet.data.builtin import default_cache_dir  # builtin writes folders with this module's helpers

    groups = patient_groups(dicom, salt=local_salt(default_cache_dir()))
    if groups:
        logger.info("%d DICOM files of %d patients: each patient's images stay on one side of every split",
                    len(groups), len(set(groups.values())))  # fmt: skip
    return groups


def linked_units(
    per_class: dict[int, list[Path]],
    fingerprints: dict[Path, Fingerprint],
    near_distance: int,
    group_of: dict[Path, str],
) -> dict[Path, str]:
    """The files that must share a side of the split: joined by a group or by being copies (exact or near)."""
    files = [p for label in sorted(per_class) for p in per_class[label]]
    pairs = find_pairs([fingerprints.get(p) for p in files], "near", near_distance)
    links = [(p.a, p.b) for p in pairs]
    first: dict[str, int] = {}
    for i, path in enumerate(files):
        if path in group_of:
            links.append((first.setdefault(group_of[path], i), i))
    roots = clusters(len(files), links)
    linked = {i for link in links for i in link}
    if pairs:
        copies = len({i for p in pairs for i in (p.a, p.b)})
        logger.info("%d files have copies among the training images: each cluster stays on one side", copies)
    return {files[i]: f"\0unit{roots[i]}" for i in linked}


def _split(
    per_class: dict[int, list[Path]],
    train_dir: Path,
    classes: list[str],
    val_split: float,
    seed: int,
    unit_of: dict[Path, str],
) -> tuple[list[Sample], list[Sample]]:
    """Stratified, seeded train/val split that keeps each group and duplicate cluster on one side."""
    n_val = {}
    keyed = {}
    for label, paths in per_class.items():
        class_dir = train_dir / classes[label]
        if val_split > 0 and len(paths) < 2:
            raise DataError(
                f"{class_dir} has only {len(paths)} readable image; with val_split={val_split} every class needs "
                "at least 2 (one to train on, one to validate): add images, or use val_split=0"
            )
        n_val[label] = val_count(len(paths), val_split)
        keyed[label] = [(p, _split_key(seed, class_dir, p)) for p in paths]
    val_files, differs = split_units(keyed, n_val, unit_of)
    for label, count in differs.items():
        level = logging.WARNING if count == 0 else logging.INFO
        logger.log(level, "%s: %d validation images instead of %d, to keep groups and duplicates on one side",
                   classes[label], count, n_val[label])  # fmt: skip
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(per_class):
        paths = sorted(per_class[label])
        kept = [Sample(p, label) for p in paths if p not in val_files]
        if not kept:
            raise DataError(
                f"every image of {train_dir / classes[label]} went to validation with its group or duplicate "
                "cluster: add images of this class from other groups, or use a train/ and val/ folder"
            )
        train += kept
        val += [Sample(p, label) for p in paths if p in val_files]
    return train, val


def _log_summary(splits: DataSplits, ignored: int) -> None:
    sizes = ", ".join(f"{split} {len(getattr(splits, split))}" for split in SPLITS if getattr(splits, split))
    logger.info(
        "%s: %d classes; %s; %d files skipped; %d non-image files ignored",
        splits.root,
        len(splits.classes),
        sizes,
        len(splits.skipped),
        ignored,
    )
    for item in splits.skipped[:5]:
        logger.warning("skipped %s: %s", item.path, item.reason)
    if len(splits.skipped) > 5:
        logger.warning("... and %d more skipped files", len(splits.skipped) - 5)


def write_skipped_csv(skipped: Iterable[Skipped], path: str | os.PathLike) -> Path:
    """Write ``path,reason`` rows (UTF-8, with a header) atomically; returns the path written."""
    with atomic_path(path) as tmp:
        # backslashreplace: a file name that is not valid UTF-8 must not stop the report from being written
        with open(tmp, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "reason"])
            for item in skipped:
                writer.writerow([os.fspath(item.path), item.reason])
    return Path(path)
