"""Scan a class-per-folder image tree, check every file up front, split it, and load images.

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
import errno
import hashlib
import logging
import math
import os
import re
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from sedensenet.errors import UserError
from sedensenet.fileio import atomic_path

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: 1024 * 1024 * 1024 // 4 // 3
SPLITS = ("train", "val", "test")

_IGNORED_FILES = {"thumbs.db", "desktop.ini"}
_IGNORED_DIRS = {"__macosx"}
_VAL_NAMES = ("val", "validation")


class DataError(UserError, ValueError):
    """A problem with the user's data: the message names the folder or file and says what to do."""


@dataclass
class Sample:
    """One usable image and its class index."""

    path: Path
    label: int


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

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: ``{"train": {"cats": 80, ...}, "val": {...}, "test": {...}}``.

        Every split and every class is present (with 0 where empty), so the shape never changes.
        """
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            per_class = dict.fromkeys(self.classes, 0)
            for sample in getattr(self, split):
                per_class[self.classes[sample.label]] += 1
            out[split] = per_class
        return out


def is_image_file(name: str | os.PathLike) -> bool:
    """True when the file name ends with one of :data:`IMG_EXTENSIONS` (case-insensitive)."""
    return os.fspath(name).lower().endswith(IMG_EXTENSIONS)


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
# Checking one file
# ---------------------------------------------------------------------------------------------------------------


def _unreadable(exc: OSError) -> str:
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return "unreadable: permission denied"
    if isinstance(exc, FileNotFoundError):
        return "unreadable: file not found (deleted, or a broken link)"
    return f"unreadable: {exc.strerror or exc}"


def _too_large(exc: Exception, max_pixels: int) -> str:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    if match is None:
        return f"too large: {exc}"
    pixels = int(match.group(1))
    if pixels > max_pixels:
        return f"too large: {pixels} pixels > limit {max_pixels}"
    # The caller allowed more than PIL does: PIL's own limit refused it while opening.
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return f"too large: {pixels} pixels > PIL limit {limit} (raise PIL.Image.MAX_IMAGE_PIXELS as well)"


def check_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Decode ``path`` fully and return ``None`` when it is usable, else a short reason to skip it.

    The pixel count is read from the header and checked before any pixel is decoded, so a decompression
    bomb costs nothing. Never raises; special files (pipes, devices) are refused without being opened.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        return _unreadable(exc)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as im:  # reads only the header
            pixels = im.width * im.height
            if pixels > max_pixels:
                return f"too large: {pixels} pixels > limit {max_pixels}"
            im.load()  # full decode: catches truncated and corrupt data
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _too_large(exc, max_pixels)
    except UnidentifiedImageError:
        return "not an image (cannot identify image file)"
    except (PermissionError, FileNotFoundError) as exc:
        return _unreadable(exc)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on bad data
        detail = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        return f"truncated or corrupt image: {detail}"
    return None


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
            if is_image_file(name):
                files.append(Path(dirpath, name))
            else:
                ignored += 1
    return sorted(files), ignored


def _check_all(paths: Sequence[Path], max_pixels: int, workers: int | None) -> list[str | None]:
    """:func:`check_image` over ``paths`` in a thread pool (PIL releases the GIL while decoding)."""
    workers = min(8, os.cpu_count() or 1) if workers is None else workers

    def check(path: Path) -> str | None:
        return check_image(path, max_pixels)

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


def _n_val(n: int, val_split: float) -> int:
    """Images of a class (of ``n``) that go to validation: rounded half up, at least 1 and at most n - 1."""
    if val_split == 0:
        return 0
    return min(max(math.floor(n * val_split + 0.5), 1), n - 1)


def _split_class(
    paths: list[Path], class_dir: Path, label: int, val_split: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    if val_split > 0 and len(paths) < 2:
        raise DataError(
            f"{class_dir} has only {len(paths)} readable image; with val_split={val_split} every class needs at "
            "least 2 (one to train on, one to validate): add images, or use val_split=0"
        )
    ordered = sorted(paths, key=lambda p: _split_key(seed, class_dir, p))
    n_val = _n_val(len(paths), val_split)
    val = sorted(ordered[:n_val])
    train = sorted(ordered[n_val:])
    return [Sample(p, label) for p in train], [Sample(p, label) for p in val]


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
            reason = next(reasons)
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
) -> DataSplits:
    """Find the classes and images under ``root``, check every image, and split them.

    Args:
        root: ``root/<class>/...`` or ``root/train/<class>/...`` + ``root/val/<class>/...`` (+ ``test/``).
        val_split: fraction of each class kept for validation when there is no ``val/`` folder; 0 for none.
            Rounded half up per class, and at least one image of every class when above 0.
        seed: the split depends only on this seed and the file names (relative to their class folder).
        max_pixels: images with more pixels (width * height, read from the header) are skipped.
        workers: threads that decode files; default ``min(8, os.cpu_count())``, 0 or 1 for none.

    Returns:
        The classes (sorted folder names), train / val / test samples sorted by class and path, and the
        files that were skipped with their reasons.

    Raises:
        DataError: a missing folder, a bad layout, train/val/test folders with different classes, a class
            without readable images (or too few to split), fewer than two classes, or a bad ``val_split``.
    """
    _check_val_split(val_split)
    root = Path(os.path.abspath(os.path.expanduser(root)))
    dirs = _layout(root)
    classes = _common_classes(dirs)
    found, skipped, ignored = _gather(dirs, classes)
    paths = [p for group in found.values() for p in group]
    logger.info("checking %d image files in %d classes under %s", len(paths), len(classes), root)
    good, bad = _keep_readable(found, dirs, classes, _check_all(paths, max_pixels, workers))
    skipped.extend(bad)

    splits: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for (split, label), split_paths in good.items():
        if split == "train" and dirs["val"] is None:
            train, val = _split_class(split_paths, dirs["train"] / classes[label], label, val_split, seed)
            splits["train"] += train
            splits["val"] += val
        else:
            splits[split] += [Sample(p, label) for p in split_paths]
    if dirs["val"] is not None:
        logger.info("validation images come from %s (val_split is not used)", dirs["val"])

    result = DataSplits(root, classes, splits["train"], splits["val"], splits["test"], skipped)
    _log_summary(result, ignored)
    return result


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


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def _target_mode(in_chans: int) -> str:
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
    return {1: "L", 3: "RGB", 4: "RGBA"}.get(in_chans, "RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images to 8-bit ``L`` by scaling, never by clipping."""
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        in_unit = arr.size == 0 or (arr.min() >= 0 and arr.max() <= 1)
        lo, hi = (0.0, 1.0) if in_unit else (float(arr.min()), float(arr.max()))
    elif im.mode.startswith("I;16") or (arr.size and arr.min() >= 0 and arr.max() <= 65535):
        lo, hi = 0.0, 65535.0  # the full 16-bit range: the same as dividing by 257
    else:
        lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _convert(im: Image.Image, mode: str) -> Image.Image:
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    elif im.mode in ("P", "PA"):
        # Palette transparency is expanded first (PIL warns when it is dropped by a direct convert).
        has_alpha = im.mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    if im.mode == mode:
        return im
    try:
        return im.convert(mode)
    except ValueError:  # a conversion PIL has no direct path for (e.g. LAB to L): go through RGB
        return im.convert("RGB").convert(mode)


def load_image(path: str | os.PathLike, in_chans: int = 3) -> Image.Image:
    """Open an image as the model will see it.

    The EXIF orientation is applied; an animated GIF/WebP/TIFF gives its first frame. Every mode is converted
    to ``L`` for ``in_chans=1``, ``RGB`` for 3 and ``RGBA`` for 4; other counts get ``RGB`` and
    :class:`ImageFolderDataset` repeats its channels. RGBA to RGB drops the alpha channel (as torchvision's
    and Keras' loaders do), 16-bit images are scaled to 8 bits (divided by 257), float images from [0, 1]
    (or their own range), CMYK and palette images converted by PIL.

    Raises:
        OSError, ValueError, PIL.Image.DecompressionBombError: the file cannot be decoded.
    """
    mode = _target_mode(in_chans)
    with Image.open(path) as im:
        im.load()  # the pixels stay in memory after the file is closed
        try:
            ImageOps.exif_transpose(im, in_place=True)
        except Exception as exc:  # malformed EXIF: use the pixels as stored
            logger.debug("ignoring bad EXIF orientation in %s: %s", path, exc)
        return _convert(im, mode)


class ImageFolderDataset(Dataset):
    """Samples from :func:`scan_folder` as ``(tensor C x H x W float32, label)`` pairs.

    Without a transform, images become tensors in [0, 1] at their own size. When ``in_chans`` is not 1, 3 or
    4, the RGB channels are repeated in turn (R, G, B, R, ...) to ``in_chans`` after the transform.

    A file that passed the scan but fails to load later (changed or deleted on disk) does not stop an epoch:
    a warning is logged once for it, its index is remembered as bad, and the next good sample is returned in
    its place (so the batch keeps its size; the label is that sample's). With ``DataLoader`` workers each
    worker keeps its own set of bad indices.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        in_chans: int = 3,
    ) -> None:
        _target_mode(in_chans)
        self.samples = list(samples)
        self.transform = transform
        self.in_chans = in_chans
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in order."""
        return [s.label for s in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        for step in range(n):
            i = (index + step) % n
            if i in self.bad:
                continue
            sample = self.samples[i]
            try:
                image = load_image(sample.path, self.in_chans)
            except Exception as exc:  # any decode failure: the file changed after the scan
                self.bad.add(i)
                logger.warning("cannot load %s (%s); using the next image instead", sample.path, exc)
                continue
            return self._to_tensor(image), sample.label
        raise DataError(f"none of the {n} images could be loaded: were they moved or deleted after the scan?")

    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        if self.transform is not None:
            x = self.transform(image)
        else:
            x = torch.from_numpy(np.array(image, dtype=np.float32, copy=True) / 255.0)
            x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()  # (C, H, W)
        if isinstance(x, torch.Tensor) and x.ndim == 3 and x.shape[0] != self.in_chans:
            x = x[[c % x.shape[0] for c in range(self.in_chans)]]  # (in_chans, H, W)
        return x
