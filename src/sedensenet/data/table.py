"""CSV / TSV manifests: a table of ``image, label[, group][, split]`` rows next to a folder of images.

Columns are found by their common names (HAM10000's ``image_id`` / ``dx`` / ``lesion_id``, ChestX-ray14's
``Image Index``, ``path,label``) or given. Everything a table can get wrong is refused before any image is read,
with the row named: a missing column (the ones that exist are listed), files that do not exist (or, with
``skip_missing``, left out and listed), an image listed twice with two labels, an empty label, a split value that
is not train / val / test, a group spread over two splits. Images are not decoded here: that is the checker's job.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sedensenet.data.images import DataError

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv")
IMAGE_COLUMNS = ("path", "file", "filename", "image", "image_id", "Image Index")
LABEL_COLUMNS = ("label", "class", "target", "dx")
GROUP_COLUMNS = ("lesion_id", "patient_id", "patient", "Patient ID")
SPLIT_COLUMNS = ("split",)
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_DELIMITERS = (",", ";", "\t")
_SHOW = 5  # rows named in an error before "and N more"


class TableSample(NamedTuple):
    """One row of a manifest: the image file, its label (the class name as written), its group and its split
    (``"train"``, ``"val"``, ``"test"`` or ``None`` without a split column); ``row`` is its line in the file."""

    path: Path
    label: str
    group: str | None
    split: str | None
    row: int


@dataclass
class Table:
    """A parsed, checked manifest."""

    source: Path
    image_root: Path
    columns: list[str]
    image_col: str
    label_col: str
    group_col: str | None
    split_col: str | None
    samples: list[TableSample]
    missing: list[TableSample] = field(default_factory=list)
    """Rows whose file does not exist, left out with ``skip_missing=True``."""

    @property
    def classes(self) -> list[str]:
        """The label names, sorted (as class folders are)."""
        return sorted({s.label for s in self.samples})


def is_table(path: str | os.PathLike) -> bool:
    """True for a path named ``*.csv`` or ``*.tsv`` (case-insensitive)."""
    return os.fspath(path).lower().endswith(TABLE_SUFFIXES)


# ---------------------------------------------------------------------------------------------------------------
# Text to rows
# ---------------------------------------------------------------------------------------------------------------


def _decode(data: bytes, path: Path, encoding: str) -> str:
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(codec)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r} for {path}: use e.g. utf-8, gbk, cp1252") from None
    except UnicodeDecodeError as exc:
        guess = next((c for c in ("gbk", "cp1252") if c != codec and _decodes(data, c)), None)
        hint = f'it looks like {guess.upper()}: pass encoding="{guess}" (--encoding {guess}), or ' if guess else ""
        raise DataError(
            f"{path} is not {encoding} text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"{hint}save it as UTF-8 CSV"
        ) from None


def _decodes(data: bytes, codec: str) -> bool:
    try:
        data.decode(codec)
    except UnicodeDecodeError:
        return False
    return True


def _delimiter(text: str, path: Path) -> str:
    """Tab for ``.tsv``; otherwise whichever of ``,`` ``;`` tab splits the header into the most fields (Excel
    writes ``;`` where the decimal mark is a comma), ``,`` on a tie."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    header = text.lstrip("\r\n").split("\n", 1)[0].rstrip("\r")
    if header.lower().startswith("sep=") and len(header) == 5:  # Excel's own hint line, e.g. "sep=;"
        return header[4]
    counts = {d: len(next(csv.reader([header], delimiter=d), [])) for d in _DELIMITERS}
    return max(_DELIMITERS, key=lambda d: (counts[d], d == ","))


def _rows(text: str, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    stream = io.StringIO(text, newline="")
    first = stream.readline()
    skipped = int(first.lower().startswith("sep=") and len(first.rstrip("\r\n")) == 5)
    if not skipped:
        stream.seek(0)  # no "sep=" line: the first line is the header
    reader = csv.reader(stream, delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
        else:
            rows.append((reader.line_num + skipped, cells))
    return header or [], rows


# ---------------------------------------------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------------------------------------------


def _find(header: list[str], given: str | None, names: Sequence[str], what: str, flag: str, path: Path) -> str | None:
    lower = {h.lower(): h for h in reversed(header)}
    if given is not None:
        if given in header:
            return given
        if given.lower() in lower:
            return lower[given.lower()]
        raise DataError(f"{path} has no column {given!r} ({flag}); its columns are: {', '.join(header)}")
    return next((lower[n.lower()] for n in names if n.lower() in lower), None)


def _columns(
    header: list[str], path: Path, *, image_col: str | None, label_col: str | None, group_col: str | None,
    split_col: str | None,
) -> tuple[str, str, str | None, str | None]:  # fmt: skip
    image = _find(header, image_col, IMAGE_COLUMNS, "image", "--image-col", path)
    label = _find(header, label_col, LABEL_COLUMNS, "label", "--label-col", path)
    for found, names, flag in ((image, IMAGE_COLUMNS, "--image-col"), (label, LABEL_COLUMNS, "--label-col")):
        if found is None:
            raise DataError(
                f"{path} has no {flag[2:-4]} column: name one {'/'.join(names)}, or give {flag}; "
                f"its columns are: {', '.join(header) or '(none)'}"
            )
    group = _find(header, group_col, GROUP_COLUMNS, "group", "--group-col", path)
    split = _find(header, split_col, SPLIT_COLUMNS, "split", "--split-col", path)
    if group_col is None and group is not None:
        logger.info("%s: column %r groups the images (each group stays on one side of every split)", path.name, group)
    if split_col is None and split is not None:
        logger.info("%s: column %r gives each image's split", path.name, split)
    return image, label, group, split


# ---------------------------------------------------------------------------------------------------------------
# Rows to samples
# ---------------------------------------------------------------------------------------------------------------


def _listing(items: Sequence[str]) -> str:
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def _resolver(image_root: Path, image_ext: str | None):
    ext = None if not image_ext else (image_ext if image_ext.startswith(".") else "." + image_ext)
    root = os.fspath(image_root)

    def resolve(cell: str) -> Path:
        name = cell.strip().replace("\\", "/")
        if ext is not None and not name.lower().endswith(ext.lower()):
            name += ext
        return Path(name if os.path.isabs(name) else os.path.join(root, name))  # one parse per row, not two

    return resolve


def _samples(
    rows: list[tuple[int, list[str]]], header: list[str], cols: tuple[str, str, str | None, str | None],
    resolve, path: Path,
) -> list[TableSample]:  # fmt: skip
    index = [header.index(c) if c is not None else None for c in cols]
    width = max(i for i in index if i is not None) + 1
    out: list[TableSample] = []
    for line, cells in rows:
        cells = cells + [""] * (width - len(cells)) if len(cells) < width else cells
        image, label = cells[index[0]].strip(), cells[index[1]].strip()
        if not image:
            raise DataError(f"{path}, row {line}: the image cell ({cols[0]!r}) is empty")
        if not label:
            raise DataError(f"{path}, row {line}: {image} has an empty label ({cols[1]!r}); give every image a class")
        group = (cells[index[2]].strip() or None) if index[2] is not None else None
        split = None
        if index[3] is not None:
            value = cells[index[3]].strip()
            split = SPLIT_VALUES.get(value.lower())
            if split is None:
                raise DataError(
                    f"{path}, row {line}: split {value!r} ({cols[3]!r}) is not one of train, val (valid, "
                    "validation) or test"
                )
        out.append(TableSample(resolve(image), label, group, split, line))
    return out


def _dedupe(samples: list[TableSample], path: Path) -> list[TableSample]:
    """One sample per file: the same file twice with the same label and split is kept once; with two labels or two
    splits it is an error naming both rows."""
    first: dict[Path, TableSample] = {}
    repeats = 0
    for s in samples:
        seen = first.setdefault(s.path, s)
        if seen is s:
            continue
        for what, a, b in (("labels", seen.label, s.label), ("splits", seen.split, s.split),
                           ("groups", seen.group, s.group)):  # fmt: skip
            if a != b:
                raise DataError(
                    f"{path}: {s.path.name} is listed twice with two {what}, {a!r} (row {seen.row}) and {b!r} "
                    f"(row {s.row}): keep one row per image"
                )
        repeats += 1
    if repeats:
        logger.warning("%s: %d rows repeat an image already listed with the same label; each is used once",
                       path.name, repeats)  # fmt: skip
    return list(first.values())


def _check_groups(samples: list[TableSample], path: Path, group_col: str | None, split_col: str | None) -> None:
    if group_col is None or split_col is None:
        return
    where: dict[str, TableSample] = {}
    for s in samples:
        if s.group is None:
            continue
        seen = where.setdefault(s.group, s)
        if seen.split != s.split:
            raise DataError(
                f"{path}: group {s.group!r} ({group_col!r}) is in {seen.split} (row {seen.row}) and in {s.split} "
                f"(row {s.row}): a group must stay on one side of the split; fix the {split_col!r} column"
            )


def _existing(samples: list[TableSample], path: Path, root: Path, skip_missing: bool) -> tuple[list, list]:
    missing = [s for s in samples if not os.path.isfile(s.path)]
    if missing and not skip_missing:
        named = [f"row {s.row}: {s.path.relative_to(root) if s.path.is_relative_to(root) else s.path}" for s in missing]
        raise DataError(
            f"{path}: {len(missing)} of the {len(samples)} images listed do not exist under {root}: "
            f"{_listing(named)}; fix the paths (image_root / --image-root, image_ext / --image-ext), or pass "
            "skip_missing=True (--skip-missing) to leave them out"
        )
    if missing:
        gone = {s.path for s in missing}
        logger.warning("%s: %d listed images do not exist and are left out: %s", path.name, len(missing),
                       _listing([f"row {s.row}: {s.path.name}" for s in missing]))  # fmt: skip
        samples = [s for s in samples if s.path not in gone]
    return samples, missing


def read_table(
    path: str | os.PathLike,
    *,
    image_col: str | None = None,
    label_col: str | None = None,
    group_col: str | None = None,
    split_col: str | None = None,
    image_root: str | os.PathLike | None = None,
    image_ext: str | None = None,
    encoding: str = "utf-8",
    skip_missing: bool = False,
) -> Table:
    """Parse and check a CSV / TSV manifest; no image is decoded.

    Args:
        path: the table (``.tsv``: tab-separated; otherwise ``,``, or ``;`` / tab when the header says so).
        image_col, label_col, group_col, split_col: column names; by default found by their common names
            (:data:`IMAGE_COLUMNS`, :data:`LABEL_COLUMNS`, :data:`GROUP_COLUMNS`, ``split``), case-insensitive.
        image_root: the folder image paths are relative to (default: the table's folder).
        image_ext: appended to image names that do not end with it (tables of ids, e.g. ``".jpg"``).
        encoding: the text encoding (UTF-8 with or without a BOM by default; ``"gbk"`` for a Chinese Excel export).
        skip_missing: leave out rows whose file does not exist (listed in :attr:`Table.missing`) instead of failing.

    Raises:
        DataError: naming the row and what to change (see the module's docstring).
    """
    path = Path(os.path.abspath(os.path.expanduser(path)))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read table {path}: {exc.strerror or exc}") from None
    text = _decode(data, path, encoding)
    header, rows = _rows(text, _delimiter(text, path))
    if not header:
        raise DataError(f"{path} is empty: give a header row (e.g. 'image,label') and one row per image")
    cols = _columns(header, path, image_col=image_col, label_col=label_col, group_col=group_col, split_col=split_col)
    root = Path(os.path.abspath(os.path.expanduser(image_root))) if image_root is not None else path.parent
    samples = _dedupe(_samples(rows, header, cols, _resolver(root, image_ext), path), path)
    if not samples:
        raise DataError(f"{path} lists no images: add one row per image under the header")
    _check_groups(samples, path, cols[2], cols[3])
    samples, missing = _existing(samples, path, root, skip_missing)
    if not samples:
        raise DataError(f"none of the {len(missing)} images listed in {path} exist under {root}")
    logger.info("%s: %d images, %d classes", path.name, len(samples), len({s.label for s in samples}))
    return Table(path, root, header, cols[0], cols[1], cols[2], cols[3], samples, missing)


def read_image_list(
    path: str | os.PathLike,
    *,
    image_col: str | None = None,
    image_root: str | os.PathLike | None = None,
    image_ext: str | None = None,
    encoding: str = "utf-8",
) -> tuple[list[Path], list[dict[str, str]]]:
    """The image files a manifest lists (in row order, labels optional: ``predict`` reads it) and each row's other
    columns, to be written through next to the predictions.

    Raises:
        DataError: an unreadable or empty table, or no image column (naming the columns that exist).
    """
    path = Path(os.path.abspath(os.path.expanduser(path)))
    try:
        text = _decode(path.read_bytes(), path, encoding)
    except OSError as exc:
        raise DataError(f"cannot read table {path}: {exc.strerror or exc}") from None
    header, rows = _rows(text, _delimiter(text, path))
    column = _find(header, image_col, IMAGE_COLUMNS, "image", "--image-col", path)
    if column is None:
        raise DataError(f"{path} has no image column: name one {'/'.join(IMAGE_COLUMNS)}, or give --image-col; "
                        f"its columns are: {', '.join(header) or '(none)'}")  # fmt: skip
    root = Path(os.path.abspath(os.path.expanduser(image_root))) if image_root is not None else path.parent
    resolve, at = _resolver(root, image_ext), header.index(column)
    files, others = [], []
    for _, cells in rows:
        cells = cells + [""] * (len(header) - len(cells))
        if cells[at].strip():
            files.append(resolve(cells[at]))
            others.append({h: c for h, c in zip(header, cells, strict=False) if h != column})
    if not files:
        raise DataError(f"{path} lists no images: add one row per image under the header")
    return files, others


def is_dataframe(data: Any) -> bool:
    """True for a pandas DataFrame (checked without importing pandas)."""
    return type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame"


def write_dataframe(frame: Any, dest: str | os.PathLike) -> Path:
    """Write a pandas DataFrame as a UTF-8 CSV manifest (no index column), so a run made from it can be redone
    from its run folder; returns ``dest``. Read it back with ``read_table(dest, image_root=...)``: relative paths in
    a DataFrame are relative to the notebook's working folder, not to ``dest``."""
    if not is_dataframe(frame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(dest, index=False, encoding="utf-8")
    return dest
