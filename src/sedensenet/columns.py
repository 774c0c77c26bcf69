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


METRICS: tuple[Column, ...] = (
    Column("loss", "loss", "train", "loss", "min", "loss"),
    Column("accuracy", "acc", "train", "accuracy", "max", "accuracy"),
    Column("val_loss", "val_loss", "val", "loss", "min", "loss"),
    Column("val_accuracy", "val_acc", "val", "accuracy", "max", "accuracy"),
)
"""The metric columns, in the order every output lists them."""

PANELS: dict[str, tuple[str, str]] = {"accuracy": ("Accuracy", "lower right"), "loss": ("Loss", "upper right")}
"""The curves figure, left to right: panel key -> (title word, legend position)."""

HISTORY_METRICS: tuple[str, ...] = ("lr", *(c.name for c in METRICS))
"""The per-epoch lists of ``History.history`` (Keras' keys, and the learning rate)."""

HISTORY_COLUMNS: tuple[str, ...] = ("epoch", *HISTORY_METRICS, "seconds")
"""history.csv's columns, in order."""

MONITORS: tuple[str, ...] = tuple(sorted(c.name for c in METRICS if c.split == "val"))
"""What ``--monitor`` may name: the validation columns."""


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
