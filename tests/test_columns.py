"""The per-epoch columns are declared once (sedensenet.columns); what every output makes of them stays as it was."""

from __future__ import annotations

import pytest

from sedensenet.columns import HISTORY_COLUMNS, HISTORY_METRICS, METRICS, MONITORS, column, default_monitor, improved
from sedensenet.config import CHOICES
from sedensenet.engine import trainer

ROW = {"lr": 1e-3, "loss": 0.69314, "accuracy": 0.5, "val_loss": 0.6, "val_accuracy": 0.75,
       "val_balanced_accuracy": 0.7, "val_auc": 0.8125, "val_mAP": 0.79, "seconds": 2.04}  # fmt: skip
NEW = ("val_balanced_accuracy", "val_auc", "val_mAP")


def test_history_csv_columns_and_keras_keys_keep_their_order() -> None:
    # the tutorial's columns first, in Keras' order; the new ones only added after them
    assert HISTORY_COLUMNS == ("epoch", "lr", "loss", "accuracy", "val_loss", "val_accuracy", *NEW, "seconds")
    assert HISTORY_METRICS == ("lr", "loss", "accuracy", "val_loss", "val_accuracy", *NEW)
    assert [c.name for c in METRICS if c.panel == "loss"] == ["loss", "val_loss"]
    assert [c.name for c in METRICS if c.panel == "ranking"] == ["val_auc", "val_mAP"]


def test_monitor_takes_any_column_or_auto() -> None:
    assert MONITORS == CHOICES["monitor"] == ("auto", "loss", "accuracy", "val_loss", "val_accuracy", *NEW)


@pytest.mark.parametrize(
    ("multilabel", "class_weights", "expected"),
    [(True, "none", "val_auc"), (True, "auto", "val_auc"), (False, "auto", "val_balanced_accuracy"),
     (False, "none", "val_accuracy")],
)  # fmt: skip
def test_auto_monitor(multilabel: bool, class_weights: str, expected: str) -> None:
    assert default_monitor(multilabel=multilabel, class_weights=class_weights) == expected


@pytest.mark.parametrize(
    ("monitor", "value", "best", "expected"),
    [
        ("val_accuracy", 0.8, 0.7, True),
        ("val_accuracy", 0.7, 0.7, False),
        ("val_loss", 0.5, 0.6, True),
        ("val_loss", 0.7, 0.6, False),
        ("val_loss", float("nan"), None, False),
        ("val_loss", 3.0, None, True),
        ("val_auc", 0.9, 0.8, True),
        ("val_mAP", 0.7, 0.8, False),
        ("val_balanced_accuracy", 0.6, 0.5, True),
        ("loss", 0.2, 0.3, True),
    ],
)
def test_improved_reads_the_direction_from_the_table(monitor: str, value: float, best: float | None, expected: bool):
    assert improved(monitor, value, best) is expected


def test_an_unknown_column_is_named_with_the_known_ones() -> None:
    with pytest.raises(KeyError, match="no metric column .val_f1.; known: loss, accuracy, val_loss, val_acc"):
        column("val_f1")


def test_log_line_is_unchanged() -> None:
    line = trainer._LOG_LINE % (3, 10, *(ROW[c.name] for c in METRICS), ROW["lr"], ROW["seconds"], 120.4, "  *best*")
    assert line == (
        "epoch 3/10  loss 0.6931  acc 0.5000  val_loss 0.6000  val_acc 0.7500  val_bacc 0.7000  val_auc 0.8125  "
        "val_mAP 0.7900  lr 1.00e-03  2.0s (120 img/s)  *best*"
    )
