"""Demo data sets that ship inside installed packages, written out as ordinary PNG class folders or tables.

``builtin:digits`` is scikit-learn's handwritten digits (1,797 8x8 grayscale images, classes "0" to "9");
``builtin:faces`` is scikit-image's LFW subset (200 25x25 grayscale images: 100 faces, then 100 non-faces).
They are written once into a cache folder and then go through :func:`~sedensenet.data.scan_folder` like any
user's data.

``builtin:digit-pairs`` is the multi-label demo: 1,800 32x32 mosaics of 2x2 tiles, each holding one of those
digits (upscaled 2x) or nothing, labelled with the 1-3 distinct digits they show. It is a table (``labels.csv``:
``image,labels`` with the digits joined by ``|``, e.g. ``3|7``) beside an ``images/`` folder;
:func:`builtin_table` names the table.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sedensenet.data.images import DataError

logger = logging.getLogger(__name__)

PREFIX = "builtin:"
MARKER = ".sedensenet-complete"  # written last: a folder without it is rebuilt

# Settings the trainer applies to a built-in set unless the user gives their own.
BUILTIN: dict[str, dict[str, Any]] = {
    # Recommended settings, applied unless a flag or config file sets them. Digits: an SE-DenseNet-BC at
    # 16 px reaches 98-99% validation accuracy in 8 epochs of about 8 s each on 2 CPU cores.
    "digits": {
        "model": "se_densenet_bc_100",
        "image_size": 16,
        "in_chans": 1,
        "epochs": 8,
        "batch_size": 64,
        "lr": 1e-3,
        "scheduler": "cosine",
        "augment": "none",
    },
    # Faces vs non-faces, two classes like the tutorial's task; 200 images of 25x25.
    "faces": {
        "model": "se_densenet_bc_100",
        "image_size": 32,
        "in_chans": 1,
        "epochs": 15,
        "batch_size": 32,
        "lr": 1e-3,
        "scheduler": "cosine",
        "augment": "light",
    },
    # Multi-label: which of the ten digits a 2x2 mosaic shows (1-3 of them); 1,800 images of 32x32. At 16 px each
    # tile is back at the digits' own 8x8 (the PNGs are 2x upscaled): nothing lost, a quarter of 32 px's work. A
    # plain BCE loop of this model at 16 px reached a mean validation AUROC of 0.95 after 3 epochs, 0.98 after 4
    # (the rarest digits, 8 and 9, last). No augmentation: a mirrored 2 is no 2.
    "digit-pairs": {
        "model": "se_densenet_bc_100",
        "image_size": 16,
        "in_chans": 1,
        "epochs": 12,
        "batch_size": 64,
        "lr": 1e-3,
        "scheduler": "cosine",
        "augment": "none",
    },
}

TABLES: dict[str, str] = {"digit-pairs": "labels.csv"}
"""The built-in sets that are tables, and their manifest's file name inside the set's folder."""


def _save_pngs(dest: Path, images: np.ndarray, labels: Sequence[int], classes: Sequence[str]) -> int:
    for name in classes:
        (dest / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(dest / classes[label] / f"{i:04d}.png")
    return len(images)


def _write_digits(dest: Path) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts 0..16 (of a 4x4 block); stretched to 0..255.
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (1797, 8, 8)
    return _save_pngs(dest, images, [int(t) for t in digits.target], [str(d) for d in range(10)])


def _write_faces(dest: Path) -> int:
    try:
        from skimage.data import lfw_subset
    except ImportError as exc:
        raise DataError("builtin:faces needs scikit-image: pip install scikit-image") from exc
    images = np.asarray(lfw_subset())  # (200, 25, 25): the first 100 are faces, the last 100 are not
    if images.dtype.kind == "f":  # float in [0, 1] (the docstring says uint8; accept both)
        images = np.rint(images * 255.0).clip(0, 255).astype(np.uint8)
    labels = [0 if i < 100 else 1 for i in range(len(images))]
    return _save_pngs(dest, images.astype(np.uint8), labels, ["face", "non_face"])


# digit-pairs: how many digits a mosaic shows (1, 2, 3), and how often each digit is drawn (so prevalences vary
# from about 1 image in 10 to 1 in 3: each label's AUROC rests on a different number of positives).
_PAIRS_COUNT, _PAIRS_K, _PAIRS_SEED = 1800, (0.35, 0.40, 0.25), 20261207
_PAIRS_WEIGHTS = (0.16, 0.14, 0.13, 0.115, 0.10, 0.09, 0.08, 0.07, 0.06, 0.055)


def _pairs_mosaics(count: int, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """``count`` 32x32 uint8 mosaics of 2x2 tiles and the sorted digits each shows: every mosaic draws 1-3
    distinct digits, each from a random image of that digit, into random tiles; the other tiles stay black."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    tiles = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    tiles = tiles.repeat(2, axis=1).repeat(2, axis=2)  # (1797, 16, 16): each pixel as a 2x2 block
    by_digit = [np.flatnonzero(digits.target == d) for d in range(10)]
    rng = np.random.default_rng(seed)
    weights = np.asarray(_PAIRS_WEIGHTS) / sum(_PAIRS_WEIGHTS)
    mosaics = np.zeros((count, 32, 32), dtype=np.uint8)
    labels: list[list[int]] = []
    for i in range(count):
        k = int(rng.choice(len(_PAIRS_K), p=_PAIRS_K)) + 1
        chosen = rng.choice(10, size=k, replace=False, p=weights)
        for digit, cell in zip(chosen, rng.permutation(4)[:k], strict=True):
            row, col = divmod(int(cell), 2)
            mosaics[i, row * 16 : row * 16 + 16, col * 16 : col * 16 + 16] = tiles[rng.choice(by_digit[digit])]
        labels.append(sorted(int(d) for d in chosen))
    return mosaics, labels


def _write_digit_pairs(dest: Path) -> int:
    mosaics, labels = _pairs_mosaics(_PAIRS_COUNT, _PAIRS_SEED)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    lines = ["image,labels"]
    for i, (mosaic, digits) in enumerate(zip(mosaics, labels, strict=True)):
        name = f"images/{i:04d}.png"
        Image.fromarray(mosaic).save(dest / name)
        lines.append(f"{name},{'|'.join(str(d) for d in digits)}")
    (dest / TABLES["digit-pairs"]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(mosaics)


_WRITERS: dict[str, Callable[[Path], int]] = {
    "digits": _write_digits,
    "faces": _write_faces,
    "digit-pairs": _write_digit_pairs,
}


def is_builtin(spec: str | os.PathLike) -> bool:
    """True for a ``"builtin:NAME"`` data spec (a path object never is one)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def default_cache_dir() -> Path:
    """``$SEDENSENET_HOME`` when set, else ``~/.cache/sedensenet``."""
    home = os.environ.get("SEDENSENET_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "sedensenet"


def _builtin_name(spec: str) -> str:
    name = spec[len(PREFIX) :].strip().lower()
    if name not in BUILTIN:
        valid = ", ".join(PREFIX + n for n in BUILTIN)
        raise DataError(f"unknown built-in data set {spec!r}; choose one of: {valid}")
    return name


def write_builtin(name: str, dest: str | os.PathLike) -> Path:
    """Write the built-in set ``name`` (PNG class folders, or a table) into ``dest``, replacing an incomplete one.

    The files are written into a temporary folder beside ``dest`` and renamed into place with the marker file
    inside, so an interrupted write never looks complete. Several processes may call this at once.
    """
    name = _builtin_name(PREFIX + name)
    dest = Path(dest)
    if (dest / MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        count = _WRITERS[name](tmp)
        (tmp / MARKER).write_text(json.dumps({"name": name, "files": count}) + "\n", encoding="utf-8")
        _move_into_place(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote built-in data set %r (%d images) to %s", name, count, dest)
    return dest


def _move_into_place(tmp: Path, dest: Path) -> None:
    error: OSError | None = None
    for _ in range(3):
        if (dest / MARKER).is_file():
            return  # another process finished first; ours is discarded
        try:
            os.replace(tmp, dest)
            return
        except OSError as exc:  # dest exists: an interrupted earlier write, or another process's
            error = exc
            if not (dest / MARKER).is_file():
                shutil.rmtree(dest, ignore_errors=True)
    if not (dest / MARKER).is_file():
        raise DataError(f"cannot write the built-in data set to {dest}: {error}")


def resolve_data(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder a data spec names: ``"builtin:NAME"`` is written once into the cache, a path is returned.

    Args:
        spec: ``"builtin:digits"``, ``"builtin:faces"``, ``"builtin:digit-pairs"`` (a folder holding a table: see
            :func:`builtin_table`) or a folder path (``~`` is expanded).
        cache_dir: where built-in sets go (as ``cache_dir/datasets/NAME``); default :func:`default_cache_dir`.

    Raises:
        DataError: an unknown built-in name, or scikit-image missing for ``builtin:faces``.
    """
    if not is_builtin(spec):
        return Path(spec).expanduser()
    name = _builtin_name(spec)
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return write_builtin(name, base / "datasets" / name)


def builtin_table(data: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The manifest of a built-in set that is a table (``builtin:digit-pairs``: ``cache_dir/datasets/digit-pairs/
    labels.csv``), written on first use as :func:`resolve_data` writes it; ``None`` for a built-in folder set and
    for anything that is not ``"builtin:NAME"``.

    Raises:
        DataError: an unknown built-in name.
    """
    if not is_builtin(data):
        return None
    name = _builtin_name(str(data))
    if name not in TABLES:
        return None
    return resolve_data(PREFIX + name, cache_dir) / TABLES[name]
