"""The per-epoch columns are declared once (sedensenet.columns); what every output makes of them stays as it was."""

from __future__ import annotations

import pytest

from sedensenet.columns import HISTORY_COLUMNS, HISTORY_METRICS, METRICS, MONITORS, column, improved
from sedensenet.config import CHOICES
from sedensenet.engine import trainer

ROW = {"lr": 1e-3, "loss": 0.69314, "accuracy": 0.5, "val_loss": 0.6, "val_accuracy": 0.75, "seconds": 2.04}


def test_history_csv_columns_and_keras_keys_keep_their_order() -> None:
    assert HISTORY_COLUMNS == ("epoch", "lr", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
    assert HISTORY_METRICS == ("lr", "loss", "accuracy", "val_loss", "val_accuracy")
    assert [c.name for c in METRICS if c.panel == "loss"] == ["loss", "val_loss"]


def test_monitor_choices_are_the_validation_columns() -> None:
    assert MONITORS == CHOICES["monitor"] == ("val_accuracy", "val_loss")


@pytest.mark.parametrize(
    ("monitor", "value", "best", "expected"),
    [
        ("val_accuracy", 0.8, 0.7, True),
        ("val_accuracy", 0.7, 0.7, False),
        ("val_loss", 0.5, 0.6, True),
        ("val_loss", 0.7, 0.6, False),
        ("val_loss", float("nan"), None, False),
        ("val_loss", 3.0, None, True),
    ],
)
def test_improved_reads_the_direction_from_the_table(monitor: str, value: float, best: float | None, expected: bool):
    assert improved(monitor, value, best) is expected


def test_an_unknown_column_is_named_with_the_known_ones() -> None:
    with pytest.raises(KeyError, match="no metric column 'val_auc'; known: loss, accuracy, val_loss, val_accuracy"):
        column("val_auc")


def test_log_line_is_unchanged() -> None:
    line = trainer._LOG_LINE % (3, 10, *(ROW[c.name] for c in METRICS), ROW["lr"], ROW["seconds"], 120.4, "  *best*")
    assert line == (
        "epoch 3/10  loss 0.6931  acc 0.5000  val_loss 0.6000  val_acc 0.7500  lr 1.00e-03  2.0s (120 img/s)  *best*"
    )
