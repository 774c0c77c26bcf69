"""What a clinician or reviewer asks of a classifier: sensitivity and specificity of a positive class, an
operating threshold chosen on validation, PR-AUC, and stratified bootstrap confidence intervals.

Plain numpy on labels and probabilities (sklearn for the curves); nothing here knows about models.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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

    ``youden`` maximises sensitivity + specificity - 1; ``f1`` maximises F1 = 2TP / (2TP + FP + FN);
    ``sens=X`` keeps sensitivity >= X at the best specificity; ``spec=X`` keeps specificity >= X at the best
    sensitivity. The candidates are the distinct scores (and one above them all); ties go to the higher threshold.

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
    elif rule.kind == "f1":
        positives = int(y.sum())
        tp, fp = np.rint(tpr * positives), np.rint(fpr * (len(y) - positives))  # counts, exact from the rates
        f1 = 2 * tp / (tp + fp + positives)  # 2TP / (2TP + FP + FN), as FN = positives - TP
        i = int(np.argmax(f1))  # thresholds descend: the first maximum is the highest threshold
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
    check_bootstrap(resamples, confidence)
    groups = [np.flatnonzero(y == c) for c in range(num_classes)]
    present = [c for c in range(num_classes) if len(groups[c])]
    scores = None if probs is None else np.asarray(probs, dtype=np.float64)
    with_auc = scores is not None and len(present) == num_classes >= 2 and bool(np.all(np.isfinite(scores)))
    rng = np.random.default_rng(seed)
    parts = [
        _resample_stats(idx, y, correct, groups, present, scores if with_auc else None)
        for idx in stratified_draws([groups[c] for c in present], resamples, rng)
    ]
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    interval = {k: percentile_interval(stats[k], confidence) for k in stats}
    out: dict[str, Any] = {"confidence": confidence, "resamples": resamples, "seed": seed}
    out["accuracy"] = interval["accuracy"]
    out["balanced_accuracy"] = interval["balanced_accuracy"]
    out["recall"] = {c: interval[f"recall_{c}"] for c in present}
    if "roc_auc" in interval:
        out["roc_auc"] = interval["roc_auc"]
    return out


def check_bootstrap(resamples: int, confidence: float) -> None:
    """Refuse a bootstrap without resamples or a confidence outside (0, 1)."""
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and confidence in (0, 1), got {resamples} and {confidence}")


def stratified_draws(
    groups: Sequence[np.ndarray], resamples: int, rng: np.random.Generator, *, width: int | None = None
) -> Iterator[np.ndarray]:
    """The bootstrap's resamples as (b, n) index matrices, one block at a time: ``b`` rows of ``n`` draws.

    Each group (e.g. the indices of one class) is resampled on its own and keeps its size: columns
    ``[offset_g, offset_g + n_g)`` of every row are group g's draws. One group of all indices is the plain
    bootstrap. Blocks hold about ``_CHUNK_ELEMENTS`` elements of ``width`` columns (default ``n``: a caller
    that widens each row, e.g. to every label of an image, says so), which bounds the memory.
    """
    groups = [g for g in groups if len(g)]
    n = sum(len(g) for g in groups)
    block = max(1, _CHUNK_ELEMENTS // max(1, width or n))
    for start in range(0, resamples, block):
        b = min(block, resamples - start)
        yield np.concatenate([g[rng.integers(0, len(g), size=(b, len(g)))] for g in groups], 1)


def draw_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` samples is drawn in each resample: (b, n) float64 weights from (b, m) indices."""
    rows = np.arange(idx.shape[0])[:, None] * n
    return np.bincount((idx + rows).ravel(), minlength=idx.shape[0] * n).reshape(idx.shape[0], n).astype(np.float64)


def percentile_interval(values: np.ndarray, confidence: float) -> list[float]:
    """The central ``confidence`` percentile interval ``[lo, hi]`` of resampled values (NaNs left out: a resample
    where the statistic is undefined); ``[nan, nan]`` when none is defined."""
    q = [(1 - confidence) / 2, 1 - (1 - confidence) / 2]
    finite = values[np.isfinite(values)]
    return [float(v) for v in np.quantile(finite, q)] if len(finite) else [math.nan, math.nan]


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


@dataclass(frozen=True)
class RankedScores:
    """One binary column sorted once, so that each bootstrap resample of it costs a few cumulative sums.

    ``positives``/``negatives``: the samples' indices in ascending score order. For each positive: how many
    negatives score below it (``neg_below``) or at most as high (``neg_upto``), and how many positives score below
    it (``pos_below``).
    """

    positives: np.ndarray
    negatives: np.ndarray
    neg_below: np.ndarray
    neg_upto: np.ndarray
    pos_below: np.ndarray


def rank_scores(is_positive: np.ndarray, scores: np.ndarray) -> RankedScores:
    """Sort a column's positives and negatives by score, for :func:`weighted_auc_ap`."""
    y = np.asarray(is_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    positives, negatives = (
        order[np.argsort(s[order], kind="stable")] for order in (np.flatnonzero(y), np.flatnonzero(~y))
    )
    sp, sn = s[positives], s[negatives]
    below, upto = np.searchsorted(sn, sp, "left"), np.searchsorted(sn, sp, "right")
    return RankedScores(positives, negatives, below, upto, np.searchsorted(sp, sp, "left"))


def weighted_auc_ap(
    ranked: RankedScores, pos_weights: np.ndarray, neg_weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision of every bootstrap resample, given as weights: how often each sample is drawn.

    A resample is the original samples each counted as often as drawn, so the samples are sorted once
    (:func:`rank_scores`) and a resample costs cumulative sums and look-ups instead of a sort: 1,000 resamples of
    14 labels x 2,000 images take well under a second. Both equal sklearn's on the resample itself: AUC is
    Mann-Whitney U with ties counted half (exact: the weights are integers), AP is ``sum_t (R_t - R_t+) P_t``
    over the distinct scores t, as ``average_precision_score``.

    Args:
        ranked: the column, sorted.
        pos_weights: (b, n1) draws of each positive, in ``ranked.positives`` order.
        neg_weights: (b, n0) draws of each negative, in ``ranked.negatives`` order.

    Returns:
        Two (b,) arrays; NaN in a row without positives (both) or without negatives (AUC).
    """
    b = pos_weights.shape[0]
    cum_neg = np.concatenate([np.zeros((b, 1)), np.cumsum(neg_weights, 1)], 1)  # (b, n0 + 1)
    cum_pos = np.concatenate([np.zeros((b, 1)), np.cumsum(pos_weights, 1)], 1)  # (b, n1 + 1)
    n_neg, n_pos = cum_neg[:, -1], cum_pos[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        u = (pos_weights * (cum_neg[:, ranked.neg_below] + cum_neg[:, ranked.neg_upto])).sum(1) / 2
        auc = u / (n_pos * n_neg)
        tp = n_pos[:, None] - cum_pos[:, ranked.pos_below]  # called positive at a positive's score: it and above
        called = tp + n_neg[:, None] - cum_neg[:, ranked.neg_below]
        precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
        ap = (pos_weights * precision).sum(1) / n_pos
    return auc, ap
