"""CSV / TSV manifests: a table of ``image, label[, group][, split]`` rows next to a folder of images.

Columns are found by their common names (HAM10000's ``image_id`` / ``dx`` / ``lesion_id``, ChestX-ray14's
``Image Index``, ``path,label``) or given. Everything a table can get wrong is refused before any image is read,
with the row named: a missing column (the ones that exist are listed), files that do not exist (or, with
``skip_missing``, left out and listed), an image listed twice with two labels, an empty label, a split value that
is not train / val / test, a group spread over two splits. Images are not decoded here: that is the checker's job.

Multi-label tables (several findings per image, as ChestX-ray14 and CheXpert) come in two shapes: one label column
holding several labels (``Effusion|Mass``; ``;`` or ``,`` too where unambiguous), or one 0/1 column per label
(``1`` present, ``0`` absent, ``-1`` uncertain, blank missing). Their labels are tuples of floats in the order of
:attr:`Table.label_names` (the label names, sorted, as class names are): ``1.0``, ``0.0`` or NaN where the
``uncertain`` / ``missing`` policy says to ignore the entry.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sedensenet.data.images import DataError

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv")
IMAGE_COLUMNS = ("path", "file", "filename", "image", "image_id", "Image Index")
LABEL_COLUMNS = ("label", "class", "target", "dx", "labels", "Finding Labels")
GROUP_COLUMNS = ("lesion_id", "patient_id", "patient", "Patient ID")
SPLIT_COLUMNS = ("split",)
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_DELIMITERS = (",", ";", "\t")
_SHOW = 5  # rows named in an error before "and N more"
TASKS = ("auto", "single", "multi")
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
MISSING_POLICIES = ("ignore", "zeros")
_LABEL_DELIMITERS = ("|", ";", ",")
_BINARY = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0}
_BLANK = ("", "nan", "NaN", "NAN")


class TableSample(NamedTuple):
    """One row of a manifest: the image file, its label (the class name as written; in a multi-label table a tuple
    of ``1.0`` / ``0.0`` / NaN in the order of :attr:`Table.label_names`), its group and its split (``"train"``,
    ``"val"``, ``"test"`` or ``None`` without a split column); ``row`` is its line in the file."""

    path: Path
    label: str | tuple[float, ...]
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
    task: str = "single"
    """``"single"`` (one class per image) or ``"multi"`` (several labels per image)."""
    label_names: list[str] = field(default_factory=list)
    """Multi-label: the label names, sorted; the order of every sample's tuple."""
    label_cols: list[str] = field(default_factory=list)
    """Multi-label from 0/1 columns: those columns (else empty, and ``label_col`` is the one label column)."""

    @property
    def classes(self) -> list[str]:
        """The class names, sorted (as class folders are); the label names of a multi-label table."""
        if self.task == "multi":
            return list(self.label_names)
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
) -> tuple[str, str | list[str] | None, str | None, str | None]:  # fmt: skip
    """The image, label, group and split columns; the label is one column, a list of 0/1 columns (``"a,b,c"``
    names them), or None when no column has a label's name (then 0/1 columns may be found from the values)."""
    image = _find(header, image_col, IMAGE_COLUMNS, "image", "--image-col", path)
    if image is None:
        raise DataError(
            f"{path} has no image column: name one {'/'.join(IMAGE_COLUMNS)}, or give --image-col; "
            f"its columns are: {', '.join(header) or '(none)'}"
        )
    label: str | list[str] | None
    if label_col is not None and "," in label_col and label_col.lower() not in {h.lower() for h in header}:
        names = [n.strip() for n in label_col.split(",") if n.strip()]
        label = [_find(header, n, (), "label", "--label-col", path) for n in names]  # type: ignore[misc]
    else:
        label = _find(header, label_col, LABEL_COLUMNS, "label", "--label-col", path)
    group = _find(header, group_col, GROUP_COLUMNS, "group", "--group-col", path)
    split = _find(header, split_col, SPLIT_COLUMNS, "split", "--split-col", path)
    if group_col is None and group is not None:
        logger.info("%s: column %r groups the images (each group stays on one side of every split)", path.name, group)
    if split_col is None and split is not None:
        logger.info("%s: column %r gives each image's split", path.name, split)
    return image, label, group, split


def _no_label_column(header: list[str], path: Path) -> DataError:
    return DataError(
        f"{path} has no label column: name one {'/'.join(LABEL_COLUMNS)}, or give --label-col (a,b,c names one "
        f"0/1 column per label); its columns are: {', '.join(header) or '(none)'}"
    )


def _binary_columns(header: list[str], rows: list[tuple[int, list[str]]], taken: Sequence[str | None]) -> list[str]:
    """The columns (other than ``taken``) whose values all lie in {0, 1, -1, blank}, with at least one value."""
    out = []
    for i, name in enumerate(header):
        if name in taken or not name:
            continue
        values = {cells[i].strip() if i < len(cells) else "" for _, cells in rows}
        if values - set(_BLANK) and all(v in _BINARY or v in _BLANK for v in values):
            out.append(name)
    return out


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


class _Row(NamedTuple):
    line: int
    image: str
    labels: list[str]  # the label cell(s), stripped: one cell, or one per 0/1 column
    group: str | None
    split: str | None


@dataclass(frozen=True)
class LabelOptions:
    """How a multi-label table's cells read (see :func:`read_table`)."""

    task: str = "auto"
    label_delim: str = "|"
    none_label: str | None = None
    uncertain: str = "ignore"
    missing: str = "ignore"

    def __post_init__(self) -> None:
        for name, value, allowed in (("task", self.task, TASKS), ("uncertain", self.uncertain, UNCERTAIN_POLICIES),
                                     ("missing", self.missing, MISSING_POLICIES)):  # fmt: skip
            if value not in allowed:
                raise DataError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not isinstance(self.label_delim, str) or len(self.label_delim) != 1 or self.label_delim.isspace():
            raise DataError(f"label_delim must be one character such as | or ;, got {self.label_delim!r}")


def _raw_rows(
    rows: list[tuple[int, list[str]]], header: list[str], cols: tuple[str, list[str], str | None, str | None],
    path: Path,
) -> list[_Row]:  # fmt: skip
    image_at, label_at = header.index(cols[0]), [header.index(c) for c in cols[1]]
    group_at, split_at = (header.index(c) if c is not None else None for c in cols[2:])
    width = max(i for i in (image_at, *label_at, group_at, split_at) if i is not None) + 1
    out: list[_Row] = []
    for line, cells in rows:
        cells = cells + [""] * (width - len(cells)) if len(cells) < width else cells
        image = cells[image_at].strip()
        if not image:
            raise DataError(f"{path}, row {line}: the image cell ({cols[0]!r}) is empty")
        group = (cells[group_at].strip() or None) if group_at is not None else None
        split = None
        if split_at is not None:
            value = cells[split_at].strip()
            split = SPLIT_VALUES.get(value.lower())
            if split is None:
                raise DataError(
                    f"{path}, row {line}: split {value!r} ({cols[3]!r}) is not one of train, val (valid, "
                    "validation) or test"
                )
        out.append(_Row(line, image, [cells[i].strip() for i in label_at], group, split))
    return out


def _single(raw: list[_Row], column: str, path: Path) -> list[str]:
    for r in raw:
        if not r.labels[0]:
            raise DataError(
                f"{path}, row {r.line}: {r.image} has an empty label ({column!r}); give every image a class"
            )
    return [r.labels[0] for r in raw]


def _split_cell(cell: str, delim: str, others: Sequence[str], table_delim: str, where: str) -> list[str]:
    """The labels of one cell: split on ``delim``; else on the one other separator it holds, unless that is the
    table's own delimiter (a quoted ``"Mass, left"`` in a comma-separated table stays one label); a cell holding
    two other separators is ambiguous."""
    if delim in cell:
        parts = cell.split(delim)
    else:
        found = [d for d in others if d in cell]
        if len(found) > 1:
            raise DataError(f"{where}: the labels {cell!r} hold both {found[0]!r} and {found[1]!r}; separate them "
                            f"with {delim!r} (label_delim / --label-delim)")  # fmt: skip
        parts = cell.split(found[0]) if found and found[0] != table_delim else [cell]
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


def _delimited(
    raw: list[_Row], column: str, opts: LabelOptions, table_delim: str, path: Path
) -> tuple[str, list[str], list]:
    """(task, label names, each row's label) for one label column: a class name, or a tuple in a multi-label
    table (auto: multi when a cell names several labels, or names ``none_label``)."""
    if opts.task == "single":
        return "single", [], _single(raw, column, path)
    others = [d for d in _LABEL_DELIMITERS if d != opts.label_delim]
    sets = [_split_cell(r.labels[0], opts.label_delim, others, table_delim, f"{path}, row {r.line} ({column!r})")
            if r.labels[0]
            else None for r in raw]  # fmt: skip
    none = opts.none_label
    multi = opts.task == "multi" or any(labels is not None and (len(labels) > 1 or labels == [none]) for labels in sets)
    if not multi:
        return "single", [], _single(raw, column, path)
    names = sorted({n for labels in sets if labels for n in labels if n != none})
    index = {n: i for i, n in enumerate(names)}
    blank = math.nan if opts.missing == "ignore" else 0.0
    out = []
    for r, labels in zip(raw, sets, strict=True):
        if labels is None:
            out.append((blank,) * len(names))
            continue
        if none is not None and none in labels and len(labels) > 1:
            raise DataError(f"{path}, row {r.line}: {r.image} is labelled {none!r} (none_label) and "
                            f"{', '.join(n for n in labels if n != none)} at once: keep one")  # fmt: skip
        row = [0.0] * len(names)
        for n in labels:
            if n != none:
                row[index[n]] = 1.0
        out.append(tuple(row))
    return "multi", names, out


def _binary(raw: list[_Row], columns: list[str], opts: LabelOptions, path: Path) -> tuple[list[str], list]:
    """(label names, each row's tuple) for 0/1 columns: -1 and blank follow ``uncertain`` and ``missing``."""
    if opts.task == "single":
        raise DataError(f"{path}: the labels are 0/1 columns ({', '.join(columns)}), a multi-label table: use "
                        "task auto or multi (--task), or name one label column (--label-col)")  # fmt: skip
    uncertain = {"ignore": math.nan, "zeros": 0.0, "ones": 1.0}[opts.uncertain]
    blank = math.nan if opts.missing == "ignore" else 0.0
    order = sorted(range(len(columns)), key=lambda i: columns[i])
    out = []
    for r in raw:
        row = []
        for i in order:
            cell = r.labels[i]
            value = _BINARY.get(cell)
            if value is None and cell not in _BLANK:
                raise DataError(f"{path}, row {r.line}: {r.image} has {cell!r} in label column {columns[i]!r}; "
                                "use 1 (present), 0 (absent), -1 (uncertain) or leave it blank")  # fmt: skip
            row.append(blank if value is None else uncertain if value == -1.0 else value)
        out.append(tuple(row))
    return [columns[i] for i in order], out


def _same(a: str | tuple[float, ...], b: str | tuple[float, ...]) -> bool:
    """Equal labels, NaN equal to NaN."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))
    return a == b


def _shown(value: str | tuple[float, ...] | None, names: Sequence[str]) -> str:
    """A label as an error shows it: a class name, or a multi-label row's present labels (``'a|b'``)."""
    if isinstance(value, tuple):
        return repr("|".join(n for n, v in zip(names, value, strict=True) if v == 1.0) or "(none)")
    return repr(value)


def _dedupe(samples: list[TableSample], path: Path, names: Sequence[str] = ()) -> list[TableSample]:
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
            if not _same(a, b):
                raise DataError(
                    f"{path}: {s.path.name} is listed twice with two {what}, {_shown(a, names)} (row {seen.row}) and "
                    f"{_shown(b, names)} (row {s.row}): keep one row per image"
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
    labels: LabelOptions | None = None,
) -> Table:
    """Parse and check a CSV / TSV manifest; no image is decoded.

    Args:
        path: the table (``.tsv``: tab-separated; otherwise ``,``, or ``;`` / tab when the header says so).
        image_col, label_col, group_col, split_col: column names; by default found by their common names
            (:data:`IMAGE_COLUMNS`, :data:`LABEL_COLUMNS`, :data:`GROUP_COLUMNS`, ``split``), case-insensitive.
            ``label_col="a,b,c"`` names one 0/1 column per label. Without a label column found by name, every
            column whose values all lie in {0, 1, -1, blank} (other than the image, group and split columns) is
            a label (multi-label; the log lists them).
        image_root: the folder image paths are relative to (default: the table's folder).
        image_ext: appended to image names that do not end with it (tables of ids, e.g. ``".jpg"``).
        encoding: the text encoding (UTF-8 with or without a BOM by default; ``"gbk"`` for a Chinese Excel export).
        skip_missing: leave out rows whose file does not exist (listed in :attr:`Table.missing`) instead of failing.
        labels: the task (auto: multi-label when a cell names several labels, or the labels are 0/1 columns), the
            separator of several labels in a cell (``;`` and ``,`` also read where unambiguous), the label that
            means "no finding" (all zeros), and what uncertain (-1) and blank entries become (ignored: NaN).

    Raises:
        DataError: naming the row and what to change (see the module's docstring).
    """
    opts = labels or LabelOptions()
    path = Path(os.path.abspath(os.path.expanduser(path)))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read table {path}: {exc.strerror or exc}") from None
    text = _decode(data, path, encoding)
    delimiter = _delimiter(text, path)
    header, rows = _rows(text, delimiter)
    if not header:
        raise DataError(f"{path} is empty: give a header row (e.g. 'image,label') and one row per image")
    image, label, group, split = _columns(header, path, image_col=image_col, label_col=label_col,
                                          group_col=group_col, split_col=split_col)  # fmt: skip
    if label is None:
        label = _binary_columns(header, rows, (image, group, split)) if opts.task != "single" else []
        label = [c for c in label if c != opts.none_label]  # CheXpert's "No Finding" column: all zeros, not a label
        if not label:
            raise _no_label_column(header, path)
        logger.info("%s: no label column by name; the 0/1 columns %s are the labels", path.name, ", ".join(label))
    raw = _raw_rows(rows, header, (image, [label] if isinstance(label, str) else label, group, split), path)
    label_cols: list[str] = []
    if isinstance(label, str):
        task, names, values = _delimited(raw, label, opts, delimiter, path)
    else:
        names, values = _binary(raw, label, opts, path)
        task, label_cols, label = "multi", label, ",".join(label)
    root = Path(os.path.abspath(os.path.expanduser(image_root))) if image_root is not None else path.parent
    resolve = _resolver(root, image_ext)
    samples = [TableSample(resolve(r.image), v, r.group, r.split, r.line) for r, v in zip(raw, values, strict=True)]
    samples = _dedupe(samples, path, names)
    if not samples:
        raise DataError(f"{path} lists no images: add one row per image under the header")
    _check_groups(samples, path, group, split)
    samples, missing = _existing(samples, path, root, skip_missing)
    if not samples:
        raise DataError(f"none of the {len(missing)} images listed in {path} exist under {root}")
    table = Table(path, root, header, image, label, group, split, samples, missing, task, names, label_cols)
    _log_table(table)
    return table


def _log_table(table: Table) -> None:
    if table.task == "single":
        logger.info("%s: %d images, %d classes", table.source.name, len(table.samples), len(table.classes))
        return
    logger.info("%s: %d images, multi-label: %d labels (%s)", table.source.name, len(table.samples),
                len(table.label_names), ", ".join(table.label_names))  # fmt: skip
    for name in table.label_names:
        if name.lower().replace("_", " ") in NONE_NAMES:  # ChestX-ray14's "No Finding" trained as a finding
            logger.warning("%s: label %r is trained as a finding of its own; if it means that the image has none, "
                           "pass none_label=%r (--none-label %r)", table.source.name, name, name, name)  # fmt: skip


NONE_NAMES = ("no finding", "no findings", "none", "normal")
"""Label names that usually mean "nothing found": a warning suggests ``--none-label`` when one is trained as a label."""


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
