"""Figures a reviewer asks for beside the ROC curve: the precision-recall curve and the reliability diagram."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from sedensenet.reports.calibration import ECE_BINS, expected_calibration_error, reliability_bins
from sedensenet.reports.plots import _figure_writer, _new_figure, _save


@_figure_writer
def plot_pr(
    is_positive: Sequence[bool],
    scores_positive: Sequence[float],
    path: str | os.PathLike,
    pos_label_name: str,
    threshold: float | None = None,
) -> Path:
    """Draw the precision-recall curve of the positive class, its average precision, the prevalence baseline
    and, when given, the operating point of ``threshold``.

    Returns:
        The path written.
    """
    y = np.asarray(is_positive, dtype=bool).reshape(-1)
    scores = np.asarray(scores_positive, dtype=np.float64).reshape(-1)
    if len(y) != len(scores):
        raise ValueError(f"is_positive has {len(y)} labels but scores_positive has {len(scores)} scores")
    fig = _new_figure((5.5, 5))
    ax = fig.add_subplot()
    prevalence = float(y.mean()) if len(y) else 0.0
    ax.axhline(prevalence, linestyle="--", color="0.6", linewidth=1, label=f"chance (prevalence {prevalence:.3f})")
    if y.any() and np.all(np.isfinite(scores)):
        precision, recall, _ = precision_recall_curve(y, scores)
        ap = average_precision_score(y, scores)
        ax.step(recall, precision, where="post", linewidth=2, label=f"{pos_label_name} (AP = {ap:.3f})")
        if threshold is not None:
            called = scores >= threshold
            tp = int(np.sum(called & y))
            p_op = tp / called.sum() if called.any() else 1.0
            ax.plot([tp / y.sum()], [p_op], "o", color="C3", label=f"threshold {threshold:.3f}")
    else:
        ax.text(0.5, 0.5, "PR curve undefined: no positive sample", ha="center", transform=ax.transAxes)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (PPV)")
    ax.set_title(f"Precision-recall: {pos_label_name}")
    ax.legend(loc="lower left")
    return _save(fig, path)


@_figure_writer
def plot_reliability(
    y_true: Sequence[int],
    probs: np.ndarray,
    path: str | os.PathLike,
    uncalibrated: np.ndarray | None = None,
    bins: int = ECE_BINS,
) -> Path:
    """Reliability diagram: accuracy against top-label confidence per bin, the diagonal of perfect calibration,
    ECE in the legend; with ``uncalibrated``, the outputs before temperature scaling as a second series.

    Returns:
        The path written.
    """
    fig = _new_figure((5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    series = [("before scaling", uncalibrated, "0.55"), ("after scaling", probs, "C0")]
    if uncalibrated is None:
        series = [("model", probs, "C0")]
    width = 1 / bins
    for i, (name, p, color) in enumerate(series):
        b = reliability_bins(y_true, p, bins)
        used = b["count"] > 0
        shift = (i - (len(series) - 1) / 2) * width / len(series)
        ece = expected_calibration_error(y_true, p, bins)
        ax.bar(
            (b["edges"][:-1] + width / 2 + shift)[used], b["accuracy"][used], width=width / len(series),
            color=color, alpha=0.8, edgecolor="white", label=f"{name} (ECE = {ece:.3f})",
        )  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(f"Confidence of the predicted class ({bins} bins)")
    ax.set_ylabel("Accuracy")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    return _save(fig, path)
