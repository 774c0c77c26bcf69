"""The run folder: its name (``runs/train``, ``runs/train2``, …), a write check, and the files in it.

Every file is written through :mod:`sedensenet.fileio` (temporary file, fsync, rename), so a run that
is killed leaves each file either complete or absent, never half-written.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sedensenet.columns import HISTORY_COLUMNS
from sedensenet.errors import UserError
from sedensenet.fileio import atomic_write_json, atomic_write_text
from sedensenet.reports.metrics import ClassificationReport

logger = logging.getLogger(__name__)

RUN_FILES: dict[str, str] = {
    "config.yaml": "every resolved setting; `--config` re-runs it",
    "classes.json": "the class names, in index order",
    "history.csv": f"one row per epoch: {', '.join(HISTORY_COLUMNS)}",
    "curves.png": "accuracy and loss, training vs validation (the tutorial's figure)",
    "weights/best.safetensors": "best weights + metadata: preset/config, classes, image size, mean/std, metrics",
    "weights/last.safetensors": "weights after the last epoch, same metadata",
    "state/last.pt": "optimizer, scheduler, scaler, RNG, epoch: for --resume",
    "metrics.json": "ClassificationReport.to_dict() of the evaluation, plus extras (split, epoch, …)",
    "classification_report.txt": "the per-class precision/recall/F1 table and the summary with intervals, as printed",
    "per_class.csv": "class, precision, recall, f1, support",
    "confusion_matrix.png": "confusion matrix, counts",
    "confusion_matrix_normalized.png": "confusion matrix, each row divided by its total (recall per class)",
    "roc.png": "ROC curve of the positive class (two classes only)",
    "pr.png": "precision-recall curve of the positive class, with the operating threshold (two classes only)",
    "calibration.png": "reliability diagram: accuracy vs confidence, before and after temperature scaling",
    "top_losses.png": "the validation images with the highest loss",
    "predictions.csv": "one row per validation image: path, true and predicted class, each class's probability",
    "train.log": "the log of the run",
    "duplicates.csv": "exact copies across splits or under two classes, found by the file check",
}
"""Relative path inside a run folder -> what it holds."""


PER_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "support")

_MAX_RUN_NUMBER = 100_000

_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device (disk full)",
    getattr(errno, "EDQUOT", -1): "disk quota exceeded",
    errno.ENOENT: "it does not exist",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EEXIST: "a file of that name is in the way",
}


class RunNameError(UserError, ValueError):
    """A run name that is not a plain folder name (empty, ``.``, ``..`` or with a path separator)."""


class RunDirError(UserError, OSError):
    """A run folder that cannot be created or written; the message names it and says why.

    ``errno`` and ``filename`` carry the underlying error's code and the folder, when known.
    """

    def __init__(self, message: str, code: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno = code
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0])  # OSError would print "[Errno N] None: path" once errno is set


def _run_dir_error(action: str, directory: Path, exc: OSError) -> RunDirError:
    reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    return RunDirError(f"cannot {action} {directory}: {reason}", exc.errno, str(directory))


def new_run_dir(project: str | os.PathLike = "runs", name: str = "train", exist_ok: bool = False) -> Path:
    """Create and return a new run folder: ``project/name``, else ``name2``, ``name3``, … (never reused).

    Creation is race-safe: each candidate is made with ``os.mkdir``, and one that another process
    created first is skipped.

    Args:
        project: the folder that holds runs (created if needed).
        name: the run name; any characters but path separators.
        exist_ok: reuse ``project/name`` when it exists instead of numbering a new one.

    Returns:
        The run folder's path.

    Raises:
        RunNameError: (a ValueError) for an empty name or one with a path separator.
        RunDirError: when the folder cannot be created.
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise RunNameError(f"run name must be a plain folder name without path separators, got {name!r}")
    root = Path(project)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _run_dir_error("create the project folder", root, exc) from exc
    if exist_ok:
        path = root / name
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise _run_dir_error("create the run folder", path, exc) from exc
        return path
    for number in range(1, _MAX_RUN_NUMBER):
        path = root / (name if number == 1 else f"{name}{number}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue  # taken, by an earlier run or a concurrent one: try the next number
        except OSError as exc:
            raise _run_dir_error("create the run folder", path, exc) from exc
        logger.debug("created run folder %s", path)
        return path
    raise RunDirError(f"cannot create a run folder in {root}: {name} to {name}{_MAX_RUN_NUMBER - 1} all exist")


def check_writable(directory: str | os.PathLike) -> None:
    """Write, fsync and delete a small probe file in ``directory``.

    Raises:
        RunDirError: naming the folder and the reason (permissions, read-only, disk full, missing).
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"cannot write to {path}: it is a file, not a directory")
    probe = None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=path)
        with os.fdopen(fd, "wb") as f:
            f.write(b"sedensenet write probe\n" * 16)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise _run_dir_error("write to", path, exc) from exc
    finally:
        if probe is not None:
            Path(probe).unlink(missing_ok=True)


def write_history_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write per-epoch rows to CSV (atomically).

    Columns are :data:`~sedensenet.columns.HISTORY_COLUMNS`, then any other keys in the order first seen; a missing
    or None value is an empty cell.

    Returns:
        The path written.
    """
    rows = list(rows)
    columns = list(HISTORY_COLUMNS)
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(value) for key, value in row.items()})
    return atomic_write_text(path, buffer.getvalue())


def write_predictions(
    path: str | os.PathLike,
    files: Iterable[Any],
    targets: Iterable[int],
    probs: np.ndarray,
    classes: list[str],
    predicted: Iterable[int] | None = None,
) -> Path:
    """One row per image (atomically): ``path, label, predicted``, then ``p_<class>`` for every class.

    ``predicted``: the decided class indices (a threshold's); default the argmax of the probabilities. The
    columns are those :func:`read_predictions` reads back.
    """
    probs = np.asarray(probs)
    decided = probs.argmax(1) if predicted is None else np.asarray(list(predicted))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "predicted", *(f"p_{c}" for c in classes)])
    for file, target, pred, p in zip(files, targets, decided, probs, strict=True):
        writer.writerow([os.fspath(file), classes[int(target)], classes[int(pred)], *(f"{v:.6g}" for v in p)])
    return atomic_write_text(path, buffer.getvalue())


def read_predictions(
    path: str | os.PathLike, classes: list[str]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """A ``predictions.csv`` back: the paths, the true and the predicted labels as class indices, the probabilities."""
    index = {c: i for i, c in enumerate(classes)}
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [r["path"] for r in rows]
    labels = np.asarray([index[r["label"]] for r in rows], dtype=np.int64)
    predicted = np.asarray([index[r["predicted"]] for r in rows], dtype=np.int64)
    probs = np.asarray([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=np.float64)
    return paths, labels, predicted, probs.reshape(-1, len(classes))


def read_history_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a history CSV back: numbers become int or float, empty cells None, other text stays str."""
    with open(path, encoding="utf-8", newline="") as f:
        return [{key: _parse_cell(value) for key, value in row.items()} for row in csv.DictReader(f)]


def write_metrics(report: ClassificationReport, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``report.to_dict()`` as JSON (atomically), with the keys of ``extra`` added at the top level.

    Raises:
        ValueError: when a key of ``extra`` would replace one of the report's.

    Returns:
        The path written.
    """
    data = report.to_dict()
    if extra:
        clash = sorted(set(extra) & set(data))
        if clash:
            raise ValueError(f"extra keys {clash} would overwrite report fields; rename them")
        data.update(_jsonable(extra))
    return atomic_write_json(path, data)


def write_classification_table(
    report: ClassificationReport,
    path: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
) -> tuple[Path, Path]:
    """Write the text table and summary (classification_report.txt) and the per-class CSV beside it (per_class.csv).

    Args:
        report: the evaluation report.
        path: where the text table goes.
        csv_path: where the CSV goes; default ``per_class.csv`` in the same folder.

    Returns:
        The paths of the text table and the CSV.
    """
    text_path = atomic_write_text(path, report.format_text())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(PER_CLASS_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(report.per_class)
    table_path = Path(path).with_name("per_class.csv") if csv_path is None else Path(csv_path)
    return text_path, atomic_write_text(table_path, buffer.getvalue())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _parse_cell(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
