"""The per-epoch columns are declared once (sedensenet.columns); what every output makes of them stays as it was."""

from __future__ import annotations

import pytest

from sedensenet.columns import HISTORY_COLUMNS, HISTORY_METRICS, METRICS, MONITORS, column, improved
from sedensenet.config import CHOICES


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
