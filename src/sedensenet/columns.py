"""The per-epoch metric columns of a run, declared once.

history.csv, ``History.history``, the log line, the Keras-shaped epoch line, TensorBoard, the run summary and the
curves all follow :data:`METRICS`, and the best epoch is judged by a column's ``direction``: a new column
(``val_auc``, say) is one more row here, plus the code that measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One metric measured every epoch."""

    name: str
    """Its key in history.csv, ``History.history``, TensorBoard and Keras' epoch line."""
    short: str
    """Its label in the log line (``acc`` for ``accuracy``)."""
    split: str
    """Where it is measured: ``train`` (the training pass) or ``val`` (NaN in a run without a val split)."""
    of: str
    """The attribute of that split's :class:`~sedensenet.engine.loop.EpochResult` it is read from."""
    direction: str
    """``max`` or ``min``: which way is better (``--monitor`` and the best epoch)."""
    panel: str | None
    """The panel of the curves figure it is drawn in (a :data:`PANELS` key), or None."""
    fmt: str = ".4f"
    """How the log line, the epoch line and the run summary write it."""
    legend: str = ""
    """Its line's name in the curves figure (default: ``Training`` / ``Validation`` and the panel's title word)."""


METRICS: tuple[Column, ...] = (
    Column("loss", "loss", "train", "loss", "min", "loss"),
    Column("accuracy", "acc", "train", "accuracy", "max", "accuracy"),
    Column("val_loss", "val_loss", "val", "loss", "min", "loss"),
    Column("val_accuracy", "val_acc", "val", "accuracy", "max", "accuracy"),
    Column("val_balanced_accuracy", "val_bacc", "val", "balanced_accuracy", "max", None),
    Column("val_auc", "val_auc", "val", "auc", "max", "ranking", legend="Validation AUROC"),
    Column("val_mAP", "val_mAP", "val", "mAP", "max", "ranking", legend="Validation mAP"),
)
"""The metric columns, in the order every output lists them. ``val_balanced_accuracy`` is the mean recall over
classes (multi-label: of each label's sensitivity and specificity at 0.5), ``val_auc`` the macro AUROC and
``val_mAP`` the mean average precision (one-vs-rest over classes, or over labels)."""

PANELS: dict[str, tuple[str, str]] = {"accuracy": ("Accuracy", "lower right"), "loss": ("Loss", "upper right"),
                                      "ranking": ("AUROC and mAP", "lower right")}  # fmt: skip
"""The curves figure, left to right: panel key -> (title word, legend position). ``ranking`` is drawn for
multi-label runs, whose accuracy says little."""

HISTORY_METRICS: tuple[str, ...] = ("lr", *(c.name for c in METRICS))
"""The per-epoch lists of ``History.history`` (Keras' keys, and the learning rate)."""

HISTORY_COLUMNS: tuple[str, ...] = ("epoch", *HISTORY_METRICS, "seconds")
"""history.csv's columns, in order."""

MONITORS: tuple[str, ...] = ("auto", *(c.name for c in METRICS))
"""What ``--monitor`` may name: any column, or ``auto`` (:func:`default_monitor`)."""


def default_monitor(*, multilabel: bool, class_weights: str) -> str:
    """``--monitor auto``: ``val_auc`` for a multi-label run; ``val_balanced_accuracy`` for a single-label one with
    ``--class-weights auto`` (an imbalanced set cannot pick its epoch by plain accuracy); else ``val_accuracy``."""
    if multilabel:
        return "val_auc"
    return "val_balanced_accuracy" if class_weights == "auto" else "val_accuracy"


def column(name: str) -> Column:
    """The column called ``name``; a KeyError naming the known ones otherwise."""
    for c in METRICS:
        if c.name == name:
            return c
    raise KeyError(f"no metric column {name!r}; known: {', '.join(c.name for c in METRICS)}")


def improved(monitor: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of column ``monitor`` beats ``best`` in the column's direction; NaN never does."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if column(monitor).direction == "max" else value < best
