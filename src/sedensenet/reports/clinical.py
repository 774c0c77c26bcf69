"""What a clinician or reviewer asks of a classifier: sensitivity and specificity of a positive class, an
operating threshold chosen on validation, PR-AUC, and stratified bootstrap confidence intervals.

Plain numpy on labels and probabilities (sklearn for the curves); nothing here knows about models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_curve

from sedensenet.config import ConfigError, ThresholdRule

BOOTSTRAP_RESAMPLES = 1000
_CHUNK_ELEMENTS = 4_000_000  # resamples x samples per vectorised block: bounds the bootstrap's memory


def positive_index(classes: Sequence[str], positive: str | None = None) -> int:
    """Index of the positive class of a two-class problem: ``positive`` by name, else the second class.

    Raises:
        ConfigError: for a problem that is not two-class, or a name that is not one of ``classes``.
    """
    if len(classes) != 2:
        raise ConfigError(
            f"a positive class and an operating threshold need a two-class problem; this one has "
            f"{len(classes)} classes ({list(classes)[:10]}): drop --positive and --threshold"
        )
    if positive is None or positive == "":
        return 1
    if positive not in classes:
        raise ConfigError(f"--positive {positive!r} is not a class; choose one of {list(classes)}")
    return list(classes).index(positive)


def choose_threshold(is_positive: Sequence[bool], scores: Sequence[float], rule: ThresholdRule) -> float:
    """The probability at or above which a sample is called positive, chosen by ``rule`` on these scores.

    ``youden`` maximises sensitivity + specificity - 1; ``sens=X`` keeps sensitivity >= X at the best
    specificity; ``spec=X`` keeps specificity >= X at the best sensitivity. Ties go to the higher threshold.

    Raises:
        ConfigError: when ``rule`` needs both classes and one is missing, or for ``argmax``.
    """
    if rule.kind == "fixed":
        return float(rule.value)  # type: ignore[arg-type]
    if rule.kind == "argmax":
        raise ConfigError("argmax is not a threshold rule; it has no threshold to choose")
    y = np.asarray(is_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        raise ConfigError(f"--threshold {rule} needs both classes in the validation split; it has only one")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    eps = 1e-12  # the rates are ratios of counts: compare them with a little slack for rounding
    if rule.kind == "youden":
        i = int(np.argmax(tpr - fpr))
    elif rule.kind == "sens":
        i = int(np.flatnonzero(tpr >= rule.value - eps)[0])  # type: ignore[operator]
    else:
        allowed = fpr <= 1 - rule.value + eps  # type: ignore[operator]
        i = int(np.flatnonzero(allowed & (tpr == tpr[allowed].max()))[0])
    threshold = float(thresholds[i])
    # roc_curve's first threshold is +inf (nothing called positive): keep it finite, just above every score
    return threshold if math.isfinite(threshold) else float(np.nextafter(s.max(), np.inf))


def decide_binary(probs: np.ndarray, positive: int, threshold: float) -> np.ndarray:
    """Class indices of a two-class problem: ``positive`` where its probability >= ``threshold``, else the other."""
    p = np.asarray(probs)
    return np.where(p[:, positive] >= threshold, positive, 1 - positive).astype(np.int64)


def binary_metrics(y_true: Sequence[int], y_pred: Sequence[int], positive: int) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV and F1 of class ``positive``, and the four counts.

    A ratio whose denominator is zero (e.g. PPV when nothing is called positive) is None.
    """
    y = np.asarray(y_true) == positive
    p = np.asarray(y_pred) == positive
    tp, fp = int(np.sum(y & p)), int(np.sum(~y & p))
    tn, fn = int(np.sum(~y & ~p)), int(np.sum(y & ~p))
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def pr_auc(is_positive: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the precision-recall curve as average precision (sklearn); None without a positive sample."""
    y = np.asarray(is_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any() or not np.all(np.isfinite(s)):
        return None
    return float(average_precision_score(y, s))


def bootstrap_intervals(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    probs: np.ndarray | None = None,
    *,
    num_classes: int | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Percentile intervals from a stratified bootstrap (each resample keeps every class's count).

    Covers accuracy, balanced accuracy, each present class's recall, and ROC-AUC when ``probs`` are given
    and every class is present (two classes: AUC of class 1; more: macro one-vs-rest). The resamples are
    drawn as one index matrix per block, so 1,000 resamples of thousands of samples take milliseconds.

    Returns:
        ``{"confidence", "resamples", "seed", "accuracy": [lo, hi], "balanced_accuracy": [lo, hi],
        "recall": {class_index: [lo, hi]}, "roc_auc": [lo, hi] (when computed)}``.
    """
    y = np.asarray(y_true, dtype=np.int64)
    correct = np.asarray(y_pred) == y
    num_classes = int(num_classes or (y.max() + 1))
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and confidence in (0, 1), got {resamples} and {confidence}")
    groups = [np.flatnonzero(y == c) for c in range(num_classes)]
    present = [c for c in range(num_classes) if len(groups[c])]
    scores = None if probs is None else np.asarray(probs, dtype=np.float64)
    with_auc = scores is not None and len(present) == num_classes >= 2 and bool(np.all(np.isfinite(scores)))
    rng = np.random.default_rng(seed)
    block = max(1, _CHUNK_ELEMENTS // len(y))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, resamples, block):
        b = min(block, resamples - start)
        # (b, N) indices, grouped by class: columns [offset_c, offset_c + n_c) are class c's draws
        idx = np.concatenate([groups[c][rng.integers(0, len(groups[c]), size=(b, len(groups[c])))] for c in present], 1)
        parts.append(_resample_stats(idx, y, correct, groups, present, scores if with_auc else None))
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    q = [(1 - confidence) / 2, 1 - (1 - confidence) / 2]
    interval = {k: [float(v) for v in np.quantile(stats[k], q)] for k in stats}
    out: dict[str, Any] = {"confidence": confidence, "resamples": resamples, "seed": seed}
    out["accuracy"] = interval["accuracy"]
    out["balanced_accuracy"] = interval["balanced_accuracy"]
    out["recall"] = {c: interval[f"recall_{c}"] for c in present}
    if "roc_auc" in interval:
        out["roc_auc"] = interval["roc_auc"]
    return out


def _resample_stats(
    idx: np.ndarray,
    y: np.ndarray,
    correct: np.ndarray,
    groups: list[np.ndarray],
    present: list[int],
    scores: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Each statistic of each resample (a row of ``idx``)."""
    hits = correct[idx]  # (b, N)
    stats = {"accuracy": hits.mean(1)}
    offset = 0
    recalls = []
    for c in present:
        n = len(groups[c])
        stats[f"recall_{c}"] = hits[:, offset : offset + n].mean(1)
        recalls.append(stats[f"recall_{c}"])
        offset += n
    stats["balanced_accuracy"] = np.mean(recalls, axis=0)
    if scores is not None:
        labels = y[idx]
        columns = [1] if scores.shape[1] == 2 else range(scores.shape[1])
        stats["roc_auc"] = np.mean([_auc_rows(labels == c, scores[idx, c]) for c in columns], axis=0)
    return stats


def _auc_rows(is_positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC of every row (Mann-Whitney U with mid-ranks for ties), rows of (b, N) arrays."""
    ranks = rankdata(scores, axis=1)
    n1 = is_positive.sum(1)
    n0 = is_positive.shape[1] - n1
    return (np.where(is_positive, ranks, 0).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
