"""Metrics against numbers worked out by hand on small fixed examples."""

from __future__ import annotations

import json
import math
import unicodedata

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sedensenet.reports import ClassificationReport, compute_metrics, normalize_confusion_matrix

# y_true = [0, 0, 1, 1, 1]; argmax of probs = [0, 1, 1, 0, 1]
Y_TRUE = [0, 0, 1, 1, 1]
PROBS = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])


def test_binary_against_hand_computed_numbers() -> None:
    report = compute_metrics(Y_TRUE, PROBS, ["cat", "dog"], loss=0.25)

    # confusion: true 0 -> [1 right, 1 as dog]; true 1 -> [1 as cat, 2 right]
    assert report.confusion_matrix == [[1, 1], [1, 2]]
    assert report.accuracy == pytest.approx(3 / 5)
    cat, dog = report.per_class
    assert cat == {"class": "cat", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert dog["precision"] == pytest.approx(2 / 3)  # TP 2, FP 1
    assert dog["recall"] == pytest.approx(2 / 3)  # TP 2, FN 1
    assert dog["f1"] == pytest.approx(2 / 3)
    assert dog["support"] == 3
    assert report.macro_precision == pytest.approx(7 / 12)
    assert report.macro_recall == pytest.approx(7 / 12)
    assert report.macro_f1 == pytest.approx(7 / 12)
    assert report.weighted_f1 == pytest.approx((2 * 0.5 + 3 * 2 / 3) / 5)
    assert report.balanced_accuracy == pytest.approx((0.5 + 2 / 3) / 2)
    # AUC: positive scores {.7, .2, .9} vs negative {.1, .6}: 5 of the 6 pairs ranked correctly
    assert report.roc_auc == pytest.approx(5 / 6)
    assert report.loss == 0.25
    assert report.num_samples == 5
    assert report.classes == ["cat", "dog"]


def test_absent_class_keeps_its_row_and_disables_auc() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    report = compute_metrics([0, 1, 1, 0], probs, ["a", "b", "c"])  # nothing is truly "c"

    assert report.confusion_matrix == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]
    c = report.per_class[2]
    assert c == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report.roc_auc is None
    # balanced accuracy averages recall over the classes present: (1 + 0.5) / 2
    assert report.balanced_accuracy == pytest.approx(0.75)
    assert report.accuracy == pytest.approx(0.75)


def test_multiclass_auc_is_macro_one_vs_rest() -> None:
    rng = np.random.default_rng(0)
    y = np.tile([0, 1, 2], 10)
    logits = rng.normal(size=(30, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    report = compute_metrics(y.tolist(), probs, ["x", "y", "z"])
    assert report.roc_auc == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_binary_with_one_class_present_has_no_auc() -> None:
    report = compute_metrics([1, 1], np.array([[0.2, 0.8], [0.6, 0.4]]), ["neg", "pos"])
    assert report.roc_auc is None
    assert report.confusion_matrix == [[0, 0], [1, 1]]


@pytest.mark.parametrize(
    ("y_true", "probs", "message"),
    [
        ([], np.zeros((0, 2)), "non-empty"),
        ([0, 1], np.zeros((2, 3)), "shape"),
        ([0, 2], np.zeros((2, 2)), "outside"),
    ],
)
def test_bad_inputs_raise(y_true: list[int], probs: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(y_true, probs, ["a", "b"])


def test_to_dict_is_strict_json_and_round_trips() -> None:
    report = compute_metrics(Y_TRUE, PROBS, ["猫", "狗"], loss=float("nan"))
    data = report.to_dict()
    text = json.dumps(data, allow_nan=False, ensure_ascii=False)
    assert json.loads(text)["loss"] is None
    assert ClassificationReport.from_dict({**data, "split": "val"}).confusion_matrix == report.confusion_matrix


def _width(line: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in line)


def test_format_table_layout() -> None:
    report = compute_metrics(Y_TRUE, PROBS, ["猫", "dog"], loss=0.5)
    lines = report.format_table().splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert rows["猫"].split()[1:] == ["0.50", "0.50", "0.50", "2"]
    assert rows["dog"].split()[1:] == ["0.67", "0.67", "0.67", "3"]
    table = [line for line in lines if line and not line.startswith(("balanced", "ROC", "loss"))]
    assert len({_width(line) for line in table}) == 1  # columns line up, CJK counted as two
    assert any(line.split()[:2] == ["accuracy", "0.60"] for line in lines)
    assert "ROC AUC: 0.8333" in lines


def test_normalize_confusion_matrix_rows_sum_to_one_and_empty_rows_stay_zero() -> None:
    normalized = normalize_confusion_matrix([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    np.testing.assert_allclose(normalized.sum(axis=1), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(normalized[0], [0.75, 0.25, 0.0])
    assert not np.isnan(normalized).any()
    assert math.isclose(normalized[2, 2], 0.5)
    with pytest.raises(ValueError, match="square"):
        normalize_confusion_matrix([[1, 2, 3]])
