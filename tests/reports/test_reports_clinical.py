"""Sensitivity and friends, thresholds, bootstrap intervals and calibration, against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sedensenet.config import ThresholdRule
from sedensenet.reports import (
    ClassificationReport,
    apply_temperature,
    binary_metrics,
    bootstrap_intervals,
    choose_threshold,
    compute_metrics,
    decide_binary,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    parse_threshold,
    positive_index,
)
from sedensenet.reports.calibration import reliability_bins
from sedensenet.reports.clinical import _auc_rows, pr_auc

# y_true = [0, 0, 1, 1, 1]; argmax of probs = [0, 1, 1, 0, 1]
Y_TRUE = [0, 0, 1, 1, 1]
PROBS = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])


def test_binary_metrics_by_hand() -> None:
    # positive 1: TP 2 (idx 2, 4), FP 1 (idx 1), TN 1 (idx 0), FN 1 (idx 3)
    m = binary_metrics(Y_TRUE, [0, 1, 1, 0, 1], positive=1)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["ppv"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 / 3)
    # the other class as positive swaps the roles
    m0 = binary_metrics(Y_TRUE, [0, 1, 1, 0, 1], positive=0)
    assert (m0["sensitivity"], m0["specificity"], m0["ppv"], m0["npv"]) == pytest.approx((1 / 2, 2 / 3, 1 / 2, 2 / 3))
    assert m0["f1"] == pytest.approx(1 / 2)


def test_undefined_ratios_are_none() -> None:
    m = binary_metrics([0, 1], [0, 0], positive=1)  # nothing called positive: PPV has no denominator
    assert m["ppv"] is None and m["sensitivity"] == 0.0 and m["npv"] == pytest.approx(0.5)


def test_pr_auc_by_hand() -> None:
    # scores of class 1, descending: .9 P, .7 P, .6 N, .2 P, .1 N -> AP = 1/3 * 1 + 1/3 * 1 + 1/3 * 3/4
    assert pr_auc(np.array(Y_TRUE) == 1, PROBS[:, 1]) == pytest.approx(11 / 12)
    assert pr_auc([False, False], [0.2, 0.3]) is None


def test_compute_metrics_with_a_threshold_by_hand() -> None:
    # P(dog) = [.1, .6, .7, .2, .9]; threshold .65 -> [0, 0, 1, 0, 1]: TP 2, FN 1, TN 2, FP 0
    report = compute_metrics(Y_TRUE, PROBS, ["cat", "dog"], threshold=0.65, resamples=0)
    assert report.confusion_matrix == [[2, 0], [1, 2]]
    assert report.accuracy == pytest.approx(4 / 5)
    assert report.positive_class == "dog" and report.threshold == 0.65
    b = report.binary
    assert (b["sensitivity"], b["specificity"], b["ppv"], b["npv"]) == pytest.approx((2 / 3, 1, 1, 2 / 3))
    assert report.pr_auc == pytest.approx(11 / 12)
    assert report.roc_auc == pytest.approx(5 / 6)  # a threshold does not move the ranking
    assert report.intervals == {}


def test_positive_class_zero_gives_its_auc_and_metrics() -> None:
    report = compute_metrics(Y_TRUE, PROBS, ["cat", "dog"], positive=0, resamples=0)
    assert report.positive_class == "cat"
    assert report.binary["sensitivity"] == pytest.approx(1 / 2)
    assert report.roc_auc == pytest.approx(5 / 6)
    # cat scores descending: .9 P, .8 N, .4 P, .3 N, .1 N -> AP = 1/2 * 1 + 1/2 * 2/3
    assert report.pr_auc == pytest.approx(1 / 2 + 1 / 3)


def test_report_round_trips_and_prints_intervals() -> None:
    report = compute_metrics(Y_TRUE, PROBS, ["cat", "dog"], resamples=200, seed=3)
    back = ClassificationReport.from_dict(report.to_dict())
    assert back == report
    text = report.format_summary("validation (used for selection: optimistic)")
    lo, hi = report.intervals["accuracy"]
    assert f"accuracy           0.600 [{lo:.3f}, {hi:.3f}]" in text
    assert text.splitlines()[0] == "validation (used for selection: optimistic)"
    assert "sensitivity (dog)" in text and "specificity (cat)" in text and "decision: argmax" in text


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("argmax", ThresholdRule("argmax")),
        ("youden", ThresholdRule("youden")),
        ("sens=0.95", ThresholdRule("sens", 0.95)),
        ("SPEC=0.9", ThresholdRule("spec", 0.9)),
        ("sens=1", ThresholdRule("sens", 1.0)),
        ("0.3", ThresholdRule("fixed", 0.3)),
    ],
)
def test_parse_threshold(text: str, rule: ThresholdRule) -> None:
    assert parse_threshold(text) == rule


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sens=0", r"sens= must be in \(0, 1\]"),
        ("sens=1.5", r"sens= must be in \(0, 1\]"),
        ("spec=-0.1", r"spec= must be in \(0, 1\]"),
        ("ppv=0.9", r"unknown rule 'ppv'"),
        ("1.2", r"'1.2'.*probability in \[0, 1\]"),
        ("nan", "finite"),
        ("best", r"'best' is not valid; allowed: argmax, youden"),
    ],
)
def test_parse_threshold_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_threshold(text)


def test_positive_index() -> None:
    assert positive_index(["a", "b"]) == 1
    assert positive_index(["a", "b"], "a") == 0
    with pytest.raises(ValueError, match=r"'c' is not a class; choose one of \['a', 'b'\]"):
        positive_index(["a", "b"], "c")
    with pytest.raises(ValueError, match="two-class problem; this one has 3 classes"):
        positive_index(["a", "b", "c"], "a")


# positives score .9 .8 .7 .4, negatives .6 .5 .2 .1. Thresholds (descending) and (TPR, FPR):
# .9 (1/4, 0)  .8 (2/4, 0)  .7 (3/4, 0)  .6 (3/4, 1/4)  .5 (3/4, 2/4)  .4 (1, 2/4)  .2 (1, 3/4)  .1 (1, 1)
POS = np.array([True] * 4 + [False] * 4)
SCORES = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.5, 0.2, 0.1])


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("youden", 0.7),  # J = 3/4 at .7; .4 gives 1/2
        ("sens=1", 0.4),  # the highest threshold that finds every positive
        ("sens=0.75", 0.7),
        ("sens=0.5", 0.8),
        ("spec=1", 0.7),  # no false positive, and the most positives found
        ("spec=0.75", 0.7),  # .6 also keeps specificity 3/4 but finds no more positives: the higher one wins
        ("spec=0.5", 0.4),
        ("0.55", 0.55),
    ],
)
def test_threshold_selectors(rule: str, expected: float) -> None:
    assert choose_threshold(POS, SCORES, parse_threshold(rule)) == expected


def test_threshold_above_every_score_when_nothing_may_be_positive() -> None:
    scores = np.array([0.3, 0.2, 0.9, 0.1])  # the top score is a negative
    pos = np.array([True, True, False, False])
    t = choose_threshold(pos, scores, parse_threshold("spec=1"))
    assert 0.3 < t and t > 0.9 and math.isfinite(t)  # only above .9 is there no false positive
    assert decide_binary(np.stack([1 - scores, scores], 1), 1, t).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="needs both classes"):
        choose_threshold([True, True], [0.2, 0.3], parse_threshold("youden"))


def test_decide_binary_by_hand() -> None:
    assert decide_binary(PROBS, 1, 0.65).tolist() == [0, 0, 1, 0, 1]
    assert decide_binary(PROBS, 1, 0.6).tolist() == [0, 1, 1, 0, 1]  # at the threshold counts as positive
    assert decide_binary(PROBS, 0, 0.35).tolist() == [0, 0, 1, 0, 1]


def test_bootstrap_is_deterministic_per_seed() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    probs = np.clip(0.5 + 0.3 * (2 * y - 1)[:, None] * [-1, 1] + rng.normal(0, 0.3, (60, 1)) * [1, -1], 0, 1)
    pred = probs.argmax(1)
    a = bootstrap_intervals(y, pred, probs, seed=7)
    assert a == bootstrap_intervals(y, pred, probs, seed=7)
    assert a != bootstrap_intervals(y, pred, probs, seed=8)
    assert set(a) == {"confidence", "resamples", "seed", "accuracy", "balanced_accuracy", "recall", "roc_auc"}
    acc = float((pred == y).mean())
    assert a["accuracy"][0] <= acc <= a["accuracy"][1]
    assert a["resamples"] == 1000 and a["confidence"] == 0.95


def test_bootstrap_keeps_each_class_count() -> None:
    # one class always right, the other always wrong: stratified resamples cannot move either recall
    y = np.array([0] * 7 + [1] * 3)
    pred = np.zeros(10, dtype=int)
    ci = bootstrap_intervals(y, pred, num_classes=2, resamples=300, seed=0)
    assert ci["recall"] == {0: [1.0, 1.0], 1: [0.0, 0.0]}
    assert ci["accuracy"] == [0.7, 0.7] and ci["balanced_accuracy"] == [0.5, 0.5]


def test_bootstrap_interval_covers_the_true_accuracy_95_percent_of_the_time() -> None:
    """500 synthetic test sets (100 + 100 samples, true recalls .80 and .90): the 95% interval of accuracy
    should contain the true .85 in 93-97% of them."""
    rng = np.random.default_rng(2026)
    y = np.repeat([0, 1], 100)
    covered = 0
    for rep in range(500):
        correct = rng.random(200) < np.where(y == 0, 0.80, 0.90)
        pred = np.where(correct, y, 1 - y)
        lo, hi = bootstrap_intervals(y, pred, num_classes=2, seed=rep)["accuracy"]
        covered += lo <= 0.85 <= hi
    assert 0.93 <= covered / 500 <= 0.97


def test_vectorised_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(6, 40)) / 4  # many ties
    labels = np.tile(np.repeat([False, True], 20), (6, 1))
    expected = [roc_auc_score(labels[i], scores[i]) for i in range(6)]
    assert _auc_rows(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_ece_on_a_constructed_case() -> None:
    # confidences .9 (right), .9 (wrong), .65 (right), .65 (right): bins 13 and 9 of 15
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.65, 0.35], [0.35, 0.65]])
    y = [0, 0, 0, 1]
    bins = reliability_bins(y, probs)
    assert bins["count"].tolist() == [0] * 9 + [2, 0, 0, 0, 2, 0]
    # bin of .9: accuracy 1/2, confidence .9 -> |.5 - .9| * 2/4; bin of .65: |1 - .65| * 2/4
    assert expected_calibration_error(y, probs) == pytest.approx(0.4 * 0.5 + 0.35 * 0.5)
    perfect = np.array([[0.75, 0.25]] * 4)  # 3 of 4 right at confidence .75
    assert expected_calibration_error([0, 0, 0, 1], perfect) == pytest.approx(0.0)


def test_nll_and_temperature_by_hand() -> None:
    probs = np.array([[0.5, 0.5], [0.2, 0.8]])
    assert negative_log_likelihood([0, 1], probs) == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2)
    # T = 2 takes square roots before normalising: .8 : .2 -> 2 : 1
    assert apply_temperature(np.array([[0.8, 0.2]]), 2.0) == pytest.approx(np.array([[2 / 3, 1 / 3]]))
    assert apply_temperature(probs, None) is probs
    zero = apply_temperature(np.array([[1.0, 0.0, 0.0]], dtype=np.float32), 3.0)
    assert zero.tolist() == [[1.0, 0.0, 0.0]]


def test_temperature_scaling_does_not_increase_nll_on_its_fitting_set() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.0 * np.eye(3)[y]
    logits *= 4  # overconfident
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    t = fit_temperature(y, probs)
    assert t > 1.5  # an overconfident model is softened
    assert negative_log_likelihood(y, apply_temperature(probs, t)) < negative_log_likelihood(y, probs)
    assert (apply_temperature(probs, t).argmax(1) == probs.argmax(1)).all()
    for scale in (0.25, 1.0):  # underconfident, and already about right: never worse than no scaling
        p = np.exp(logits * scale / 4)
        p /= p.sum(1, keepdims=True)
        assert negative_log_likelihood(y, apply_temperature(p, fit_temperature(y, p))) <= negative_log_likelihood(y, p)


def test_calibration_in_the_report_before_and_after() -> None:
    scaled = apply_temperature(PROBS, 2.0)
    report = compute_metrics(Y_TRUE, scaled, ["cat", "dog"], uncalibrated=PROBS, temperature=2.0, resamples=0)
    cal = report.calibration
    assert cal["nll_before"] == pytest.approx(negative_log_likelihood(Y_TRUE, PROBS))
    assert cal["nll"] == pytest.approx(negative_log_likelihood(Y_TRUE, scaled))
    assert cal["ece_before"] == pytest.approx(0.38)  # worked out in test_reports_metrics' example
    assert cal["temperature"] == 2.0 and cal["bins"] == 15
    assert "calibration: ECE 0.380 ->" in report.format_summary()
