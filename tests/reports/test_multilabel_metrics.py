"""Multi-label metrics and decisions: against sklearn on small arrays, masked entries that change nothing of other
labels, one-class labels, thresholds per rule, temperatures per label, the bootstrap, the table and its files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    hamming_loss,
    roc_auc_score,
)

from sedensenet.config import ConfigError, ThresholdRule
from sedensenet.display import display_width
from sedensenet.reports import (
    MultiLabelReport,
    apply_label_temperatures,
    binary_accuracy,
    choose_label_thresholds,
    choose_threshold,
    epoch_scores,
    fit_label_temperatures,
    multilabel_report,
    parse_threshold,
    plot_label_curves,
    write_per_label_csv,
)
from sedensenet.reports.clinical import _auc_rows, draw_counts, rank_scores, weighted_auc_ap

LABELS = ["Effusion", "Mass", "胸腔积液"]


def _data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) targets with prevalences about .2/.4/.5 and informative, tied scores (two decimals)."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < [0.2, 0.4, 0.5]).astype(np.float64)
    probs = np.round(np.clip(0.5 + 0.25 * (2 * targets - 1) + rng.normal(0, 0.25, (n, 3)), 0.01, 0.99), 2)
    return targets, probs


def test_parse_threshold_f1() -> None:
    rule = parse_threshold(" F1 ")
    assert rule == ThresholdRule("f1") and rule.needs_validation and str(rule) == "f1"


def test_f1_threshold_by_hand_and_ties_to_the_higher() -> None:
    # descending: .9 P, .8 N, .7 P, .6 P, .4 N, .3 P, .2 N (4 positives); F1 = 2TP / (TP + FP + 4) at each cut:
    # .9: 2/5, .8: 2/6, .7: 4/7, .6: 6/8, .4: 6/9, .3: 8/10 (best), .2: 8/11
    scores = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2]
    positive = [True, False, True, True, False, True, False]
    assert choose_threshold(positive, scores, parse_threshold("f1")) == 0.3
    best = max(f1_score(positive, np.array(scores) >= c) for c in scores)
    assert f1_score(positive, np.array(scores) >= 0.3) == pytest.approx(best)
    # .9 P, .8 N, .7 N, .6 P, .1 N: F1 2/3 at .9 and at .6: the higher threshold wins
    assert choose_threshold([True, False, False, True, False], [0.9, 0.8, 0.7, 0.6, 0.1], ThresholdRule("f1")) == 0.9


def test_label_thresholds_per_rule_on_unmasked_entries() -> None:
    targets, probs = _data()
    targets[:10, 0] = np.nan
    targets[:, 2] = 0.0  # one class only on validation
    for text in ("f1", "youden", "sens=0.8", "spec=0.9"):
        thresholds, notes = choose_label_thresholds(targets, probs, parse_threshold(text))
        known = ~np.isnan(targets[:, 0])
        assert thresholds[0] == choose_threshold(targets[known, 0] == 1, probs[known, 0], parse_threshold(text))
        assert thresholds[1] == choose_threshold(targets[:, 1] == 1, probs[:, 1], parse_threshold(text))
        assert thresholds[2] == 0.5 and notes[:2] == [None, None]
        assert notes[2] == f"only negatives on validation: threshold 0.5 instead of {text}"
    assert choose_label_thresholds(targets, probs, parse_threshold("0.3")) == ([0.3] * 3, [None] * 3)
    with pytest.raises(ConfigError, match="argmax is not a multi-label rule"):
        choose_label_thresholds(targets, probs, parse_threshold("argmax"))


def test_report_against_sklearn() -> None:
    targets, probs = _data()
    thresholds = [0.4, 0.5, 0.6]
    r = multilabel_report(targets, probs, LABELS, thresholds, resamples=200, seed=3)
    y = targets.astype(int)
    decided = (probs >= thresholds).astype(int)
    for k, name in enumerate(LABELS):
        m = r.per_label[name]
        assert m["auroc"] == pytest.approx(roc_auc_score(y[:, k], probs[:, k]), abs=1e-12)
        assert m["ap"] == pytest.approx(average_precision_score(y[:, k], probs[:, k]), abs=1e-12)
        assert m["f1"] == pytest.approx(f1_score(y[:, k], decided[:, k]), abs=1e-12)
        assert m["prevalence"] == pytest.approx(y[:, k].mean()) and m["n"] == 60 and m["ignored"] == 0
        assert m["tp"] + m["fn"] == m["positives"] and m["tn"] + m["fp"] == m["negatives"]
        assert m["threshold"] == thresholds[k] and m["note"] is None
        for key in ("auroc", "ap"):
            lo, hi = m[f"{key}_ci"]
            assert lo <= m[key] <= hi and lo < hi
    assert r.macro_auroc == pytest.approx(roc_auc_score(y, probs, average="macro"), abs=1e-12)
    assert r.macro_map == pytest.approx(average_precision_score(y, probs, average="macro"), abs=1e-12)
    assert r.micro_auroc == pytest.approx(roc_auc_score(y, probs, average="micro"), abs=1e-12)
    assert r.micro_map == pytest.approx(average_precision_score(y, probs, average="micro"), abs=1e-12)
    assert r.labels_averaged == r.labels_averaged_map == 3
    assert r.subset_accuracy == pytest.approx(accuracy_score(y, decided))
    assert r.hamming_loss == pytest.approx(hamming_loss(y, decided))
    assert r.sample_f1 == pytest.approx(f1_score(y, decided, average="samples", zero_division=1))
    for key in ("macro_auroc", "macro_map", "micro_auroc", "micro_map"):
        lo, hi = getattr(r, f"{key}_ci")
        assert lo <= getattr(r, key) <= hi
    assert multilabel_report(targets, probs, LABELS, thresholds, resamples=200, seed=3) == r
    other = multilabel_report(targets, probs, LABELS, thresholds, resamples=200, seed=4)
    assert other.per_label["Mass"]["auroc_ci"] != r.per_label["Mass"]["auroc_ci"]


def test_masked_entries_change_no_metric_of_another_label() -> None:
    targets, probs = _data(n=80, seed=1)
    thresholds = [0.5, 0.45, 0.55]
    before = multilabel_report(targets, probs, LABELS, thresholds, resamples=100, seed=0)
    masked = targets.copy()
    masked[::3, 0] = np.nan  # label A loses a third of its entries
    masked[::2, 0] = 1.0 - masked[::2, 0]  # and its remaining even rows flip: A itself must change
    after = multilabel_report(masked, probs, LABELS, thresholds, resamples=100, seed=0)
    for name in LABELS[1:]:
        assert after.per_label[name] == before.per_label[name]  # every value, intervals included
    a = after.per_label["Effusion"]
    assert a["auroc"] != before.per_label["Effusion"]["auroc"]
    keep = ~np.isnan(masked[:, 0])
    assert a["ignored"] == 27 and a["n"] == 53
    assert a["auroc"] == pytest.approx(roc_auc_score(masked[keep, 0], probs[keep, 0]), abs=1e-12)
    # the per-image figures skip the masked entries: masking every entry of a wrong decision makes it right
    decided = probs >= thresholds
    wrong = (decided != (targets == 1)) & ~np.isnan(targets)
    all_masked = np.where(wrong, np.nan, targets)
    clean = multilabel_report(all_masked, probs, LABELS, thresholds, resamples=0)
    assert (clean.subset_accuracy, clean.hamming_loss, clean.sample_f1) == (1.0, 0.0, 1.0)
    assert clean.intervals == {} and clean.per_label["Mass"]["auroc_ci"] is None and clean.macro_auroc_ci is None


def test_one_class_label_is_null_with_a_note_and_left_out_of_the_means(tmp_path) -> None:
    targets, probs = _data()
    targets[:, 1] = 0.0  # Mass: no positive in this split
    targets[:, 2] = 1.0  # 胸腔积液: only positives
    r = multilabel_report(targets, probs, LABELS, [0.5] * 3, resamples=100)
    mass, cjk = r.per_label["Mass"], r.per_label["胸腔积液"]
    assert mass["auroc"] is None and mass["ap"] is None and mass["auroc_ci"] is None and mass["ap_ci"] is None
    assert mass["note"] == "no positive in this split: no AUROC or AP"
    assert cjk["auroc"] is None and cjk["ap"] == 1.0 and cjk["note"] == "only positives in this split: no AUROC"
    assert (r.labels_averaged, r.labels_averaged_map) == (1, 2)
    assert r.macro_auroc == r.per_label["Effusion"]["auroc"]
    assert r.macro_map == pytest.approx((r.per_label["Effusion"]["ap"] + 1.0) / 2)
    text = r.format_text()
    assert "over 1 of 3 labels" in text and "note: Mass: no positive in this split" in text
    data = json.loads(json.dumps(r.to_dict()))
    assert data["per_label"]["Mass"]["auroc"] is None and MultiLabelReport.from_dict(data) == r


def test_weighted_bootstrap_statistics_equal_sklearn_and_the_rank_auc() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(50) < 0.3
    s = rng.integers(0, 6, 50) / 5  # many ties
    ranked = rank_scores(y, s)
    idx = rng.integers(0, 50, (25, 50))
    counts = draw_counts(idx, 50)
    auc, ap = weighted_auc_ap(ranked, counts[:, ranked.positives], counts[:, ranked.negatives])
    assert np.array_equal(auc, _auc_rows(y[idx], s[idx]))  # the same U statistic, bit for bit
    expected = [average_precision_score(y[i], s[i]) if y[i].any() else np.nan for i in idx]
    np.testing.assert_allclose(ap, expected, atol=1e-12)


def test_label_temperatures_reduce_the_nll_and_skip_what_cannot_be_fitted() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2000, 3))
    targets = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(np.float64)  # calibrated at T = 1
    probs = 1 / (1 + np.exp(-3 * logits))  # over-confident by a factor 3: the fitted temperatures should be 3
    targets[:, 2] = 1.0  # one class only: cannot be fitted
    targets[:300, 0] = np.nan

    def nll(p: np.ndarray, k: int) -> float:
        known = ~np.isnan(targets[:, k])
        y, q = targets[known, k], np.clip(p[known, k], 1e-15, 1 - 1e-15)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    temps = fit_label_temperatures(targets, probs)
    assert temps[0] == pytest.approx(3, rel=0.15) and temps[1] == pytest.approx(3, rel=0.15) and temps[2] == 1.0
    scaled = apply_label_temperatures(probs, temps)
    assert nll(scaled, 0) < nll(probs, 0) and nll(scaled, 1) < nll(probs, 1)
    assert np.array_equal(scaled[:, 2], probs[:, 2])
    order = np.argsort(probs[:, 0])
    assert np.all(np.diff(scaled[order, 0]) >= 0)  # the ranking within a label never changes
    assert np.array_equal(apply_label_temperatures(probs, [None, 1, 1.0]), probs)


def test_epoch_scores_single_label_against_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 50)
    probs = rng.dirichlet(np.ones(3), 50)
    s = epoch_scores(y, probs, "single")
    assert s["val_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert s["val_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert s["val_mAP"] == pytest.approx(np.mean([average_precision_score(y == c, probs[:, c]) for c in range(3)]))
    binary = epoch_scores(y % 2, probs[:, :2] / probs[:, :2].sum(1, keepdims=True), "single")
    assert binary["val_auc"] == pytest.approx(roc_auc_score(y % 2, probs[:, 1] / probs[:, :2].sum(1)))
    present = y != 2  # class 2 absent: the means run over classes 0 and 1
    part = epoch_scores(y[present], probs[present], "single")
    assert part["val_auc"] == pytest.approx(
        np.mean([roc_auc_score(y[present] == c, probs[present, c]) for c in (0, 1)])
    )
    one = epoch_scores(np.zeros(5, dtype=int), probs[:5], "single")
    assert math.isnan(one["val_auc"]) and one["val_balanced_accuracy"] == np.mean(probs[:5].argmax(1) == 0)
    assert all(math.isnan(v) for v in epoch_scores(y, np.full((50, 3), np.nan), "single").values())


def test_epoch_scores_and_binary_accuracy_multi_label() -> None:
    targets, probs = _data()
    targets[:, 1] = 0.0
    targets[:20, 0] = np.nan
    s = epoch_scores(targets, probs, "multi")
    keep = ~np.isnan(targets[:, 0])
    y0, p0, y2, p2 = targets[keep, 0], probs[keep, 0], targets[:, 2], probs[:, 2]
    assert s["val_auc"] == pytest.approx((roc_auc_score(y0, p0) + roc_auc_score(y2, p2)) / 2)
    assert s["val_mAP"] == pytest.approx((average_precision_score(y0, p0) + average_precision_score(y2, p2)) / 2)
    bal = [balanced_accuracy_score(y, p >= 0.5) for y, p in ((y0, p0), (y2, p2))]
    assert s["val_balanced_accuracy"] == pytest.approx(np.mean(bal))
    t = np.array([[1.0, np.nan], [0.0, 1.0]])
    assert binary_accuracy(t, np.array([[0.7, 0.0], [0.5, 0.2]])) == pytest.approx(1 / 3)
    assert math.isnan(binary_accuracy(np.full((2, 2), np.nan), np.zeros((2, 2))))


def test_table_csv_and_figure(tmp_path) -> None:
    targets, probs = _data()
    targets[:5, 2] = np.nan
    thresholds = [0.4, 0.5, 0.6]
    r = multilabel_report(targets, probs, LABELS, thresholds, resamples=50)
    rows = r.format_text().splitlines()
    table = rows[: 2 + len(LABELS)]
    assert len({display_width(line) for line in table}) == 1  # CJK names keep the columns aligned
    assert table[4].startswith("胸腔积液") and f"{r.per_label['Mass']['auroc']:.3f} [" in table[3]
    with open(write_per_label_csv(r, tmp_path / "per_label.csv"), encoding="utf-8", newline="") as f:
        parsed = list(csv.DictReader(f))
    assert [row["label"] for row in parsed] == LABELS
    assert float(parsed[2]["auroc"]) == r.per_label["胸腔积液"]["auroc"] and parsed[2]["ignored"] == "5"
    assert float(parsed[0]["auroc_ci_low"]) == r.per_label["Effusion"]["auroc_ci"][0] and parsed[0]["note"] == ""
    path = plot_label_curves(targets, probs, LABELS, tmp_path / "label_curves.png", thresholds=thresholds)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
